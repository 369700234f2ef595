/*
 * request - the request and result objects of the agent library: a
 * lmsched_request wraps the wire-format chat request it will be encoded as,
 * a lmsched_result carries either a decoded reply or an error. agent.c is
 * the only user of these library-internal functions.
 */
#ifndef LMSCHED_AGENTLIB_REQUEST_H
#define LMSCHED_AGENTLIB_REQUEST_H

#include "lmsched/agent.h"
#include "proto/proto.h"

/* The chat request a lmsched_request describes; owned by req. */
const lms_chat_req *lma_request_chat(const lmsched_request *req);

/*
 * A new error result with code err and a printf-style message. Returns NULL
 * only when out of memory. The caller owns the result.
 */
lmsched_result *lma_result_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets the field an error reply named (copied; NULL: none). Returns 0, or
 * -1 when out of memory (the result is left without it). */
int lma_result_set_field(lmsched_result *res, const char *field);

/*
 * A new result for a decoded chat reply. Takes the strings and arrays out
 * of *reply (they become the result's, and *reply is left without them);
 * on failure returns NULL and *reply is untouched.
 */
lmsched_result *lma_result_reply(lms_chat_reply *reply);

/*
 * A new result holding a status document. Takes *json (set to NULL) on
 * success; on failure returns NULL and *json is untouched.
 */
lmsched_result *lma_result_status(char **json);

/* Takes the status document out of a result made by lma_result_status
 * (NULL for any other result). The caller frees it with free(). */
char *lma_result_take_status(lmsched_result *res);

#endif /* LMSCHED_AGENTLIB_REQUEST_H */
