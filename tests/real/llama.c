/*
 * llama - a real llama-server for the real suite (see llama.h).
 */
#include "real/llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kit/fs.h"

const char *rl_unusable(void)
{
    const char *script = getenv("LMSCHED_LLAMA_SCRIPT");
    const char *root = getenv("LMSCHED_LLAMA_ROOT");
    char path[600];
    struct stat st;
    if (root == NULL || *root == '\0')
        root = "/var/cache/lmsched/sid";
    if (script == NULL || access(script, X_OK) != 0)
        return "LMSCHED_LLAMA_URL not set and scripts/llama-server not found "
               "(LMSCHED_LLAMA_SCRIPT)";
    if (geteuid() != 0)
        return "LMSCHED_LLAMA_URL not set and not root (scripts/llama-server needs it)";
    snprintf(path, sizeof(path), "%s/usr/bin/llama-server", root);
    bool ok = access(path, X_OK) == 0;
    snprintf(path, sizeof(path), "%s/models/tiny.gguf", root);
    if (!ok || stat(path, &st) != 0)
        return "LMSCHED_LLAMA_URL not set and no llama-server chroot "
               "(run scripts/llama-server setup as root)";
    return NULL;
}

int rl_init(rl_server *s, const char *name)
{
    memset(s, 0, sizeof(*s));
    const char *script = getenv("LMSCHED_LLAMA_SCRIPT");
    snprintf(s->script, sizeof(s->script), "%s", script != NULL ? script : "");
    const char *st = getenv("LMSCHED_REAL_STATE");
    if (st != NULL && *st != '\0') {
        if (name != NULL)
            snprintf(s->state, sizeof(s->state), "%s/%s", st, name);
        else
            snprintf(s->state, sizeof(s->state), "%s", st);
        mkdir(s->state, 0700);
        return 0;
    }
    snprintf(s->state, sizeof(s->state), "/tmp/lmsched-real-XXXXXX");
    if (mkdtemp(s->state) == NULL) {
        perror("real: mkdtemp");
        return -1;
    }
    s->made_state = true;
    return 0;
}

int rl_script(const rl_server *s, const char *args)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "LMSCHED_LLAMA_STATE='%s' timeout %d '%s' %s", s->state,
             RL_SCRIPT_WAIT_S, s->script, args);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

long rl_state_long(const rl_server *s, const char *name)
{
    char path[320];
    long v = -1;
    snprintf(path, sizeof(path), "%s/%s", s->state, name);
    return kit_fs_read_long(path, &v) == 0 ? v : -1;
}

int rl_start(rl_server *s, int port, const char *extra)
{
    return rl_start_cache(s, port, "0", extra);
}

int rl_start_cache(rl_server *s, int port, const char *cache_ram, const char *extra)
{
    char args[256], portarg[32] = "", cachearg[48] = "";
    if (port > 0)
        snprintf(portarg, sizeof(portarg), "--port %d ", port);
    if (cache_ram != NULL)
        snprintf(cachearg, sizeof(cachearg), "--cache-ram %s", cache_ram);
    snprintf(args, sizeof(args), "start %s%s%s%s >/dev/null", portarg, cachearg,
             extra != NULL ? " -- " : "", extra != NULL ? extra : "");
    if (rl_script(s, args) != 0) {
        fprintf(stderr, "real: scripts/llama-server %s failed (log %s/log)\n", args, s->state);
        return -1;
    }
    s->port = (int)rl_state_long(s, "port");
    if (s->port <= 0)
        return -1;
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
    return 0;
}

void rl_fini(rl_server *s)
{
    if (s->state[0] == '\0')
        return;
    rl_script(s, "stop >/dev/null 2>&1");
    if (s->made_state)
        kit_fs_rm_tree(s->state);
    s->state[0] = '\0';
}
