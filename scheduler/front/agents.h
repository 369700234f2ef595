/*
 * agents - the front door of the agents that link agentlib: their msgpack
 * messages (proto/) read from the nng REP socket (rep.c), turned into chat
 * requests for the core, and the core's answers written back as replies.
 * It is a sink of the core: a request's one answer comes back through
 * agents_sink and goes out on the context that brought it.
 *
 * Loop thread only, after agents_open.
 */
#ifndef LMSCHED_FRONT_AGENTS_H
#define LMSCHED_FRONT_AGENTS_H

#include <stdbool.h>

#include "scheduler/core/config.h"
#include "scheduler/core/sched.h"

typedef struct agents_front agents_front;

/* Listens on cfg->listen with cfg's access rules and adds itself to s's
 * fronts. Returns 0, or 4 with the reason printed (it cannot listen, the
 * socket group or token file is unusable). */
int agents_open(agents_front **wp, sched *s, const sched_config *cfg);

/* Whether requests must carry the access token (for the start-up log). */
bool agents_auth_required(const agents_front *w);

/* Stops receiving and frees everything. Accepts NULL. */
void agents_close(agents_front *w);

#endif /* LMSCHED_FRONT_AGENTS_H */
