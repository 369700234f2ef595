/*
 * main - the `lmsched` command: `serve` runs the daemon (serve.c); `status`
 * and `chat` are clients of it (cli/).
 */
#include <stdio.h>
#include <string.h>

#include "lmsched/agent.h"
#include "scheduler/cli/cli.h"
#include "scheduler/serve.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: lmsched <command> [options]\n"
        "\n"
        "Shares one local LLM server (LM Studio, llama.cpp) between many agent processes.\n"
        "\n"
        "commands:\n"
        "  serve     run the scheduler daemon (lmsched serve --help)\n"
        "  status    show what the daemon is doing (lmsched status --help)\n"
        "  chat      send one chat request through the daemon (lmsched chat --help)\n"
        "\n"
        "  --help, --version\n"
        "\n"
        "Exit status: 0 success, 1 the request or daemon failed, 2 usage error,\n"
        "3 daemon not reachable or no reply in time, 4 serve refused to start.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return serve_main(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cli_status_main(argc - 1, argv + 1);
    if (strcmp(cmd, "chat") == 0)
        return cli_chat_main(argc - 1, argv + 1);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("lmsched %s (protocol %d)\n", lmsched_version(), LMSCHED_PROTOCOL_VERSION);
        return 0;
    }
    fprintf(stderr, "lmsched: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
