/*
 * cli - the client commands of `lmsched`: `status` and `chat`. They talk to
 * the daemon through the public agent library only, as any agent would.
 * docs/cli.md describes the flags and the exit codes.
 *
 * Threads: each function is meant for the main thread of the `lmsched`
 * process; the two *_main functions parse argv with getopt_long, which keeps
 * global state, so they must not run concurrently.
 */
#ifndef LMSCHED_CLI_H
#define LMSCHED_CLI_H

#include <stdio.h>

/* `lmsched status ...` and `lmsched chat ...` (argv[0] is the subcommand
 * name). Print to stdout/stderr and return the process exit code: 0 success,
 * 1 the request failed, 2 usage error, 3 daemon not reachable or no reply in
 * time. They block for at most the --timeout given (chat's default is the
 * library default, ten minutes). */
int cli_status_main(int argc, char **argv);
int cli_chat_main(int argc, char **argv);

/* Renders the status JSON as the human table to out. Returns 0, or -1 if the JSON
 * is not a status document (then prints nothing). json stays the caller's. */
int cli_render_status(const char *json, FILE *out);

#endif /* LMSCHED_CLI_H */
