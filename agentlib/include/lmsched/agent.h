/*
 * lmsched/agent.h - the client library for agents that send chat requests
 * through the lmsched scheduler instead of talking to the LLM server directly.
 *
 * This is the public header of liblmsched-agent. It includes only <stddef.h>,
 * <stdint.h>, <stdbool.h> and <lmsched/wire.h> (the protocol's constants and
 * error codes, installed beside it); every object is opaque and built with
 * typed setters.
 *
 * Threads: every function may be called from any thread, and one client
 * handle may be shared by many threads at once. No function blocks forever:
 * blocking calls take a timeout in milliseconds (a value <= 0 means the
 * library default, LMSCHED_DEFAULT_TIMEOUT_MS).
 *
 * Ownership: objects returned through an output pointer belong to the caller,
 * who frees them with the matching _free/_close call. Strings passed in are
 * copied; the caller keeps ownership of its own buffers. Strings returned by
 * accessors belong to the object they came from and live as long as it.
 */
#ifndef LMSCHED_AGENT_H
#define LMSCHED_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The protocol's constants and the error codes (owned by the wire format). */
#include <lmsched/wire.h>

#ifdef __cplusplus
extern "C" {
#endif


/* Version of this header. CMake reads these three lines. */
#define LMSCHED_VERSION_MAJOR 0
#define LMSCHED_VERSION_MINOR 1
#define LMSCHED_VERSION_PATCH 0
#define LMSCHED_VERSION "0.1.0"
#define LMSCHED_VERSION_NUM 0x000100


/* Default for timeouts given as <= 0: ten minutes, long enough for a slow
 * local model to answer a long prompt behind a full queue. */
#define LMSCHED_DEFAULT_TIMEOUT_MS 600000

/* Runtime version of the library, e.g. "0.1.0". */
LMSCHED_DECL const char *lmsched_version(void);


/* ---- client ----------------------------------------------------------- */

typedef struct lmsched_client lmsched_client;

/*
 * Writes the default daemon URL into buf: $LMSCHED_URL if set, else
 * "ipc://$XDG_RUNTIME_DIR/lmsched.sock", else "ipc:///tmp/lmsched.sock".
 * Returns LMSCHED_OK, or LMSCHED_ETOOLARGE if len is too small.
 */
LMSCHED_DECL int lmsched_default_url(char *buf, size_t len);

/*
 * Opens a client connected to the daemon at url (NULL: the default URL).
 * The connection is made in the background and re-made after the daemon
 * restarts; open itself does not fail when the daemon is down. Requests sent
 * while no daemon is reachable fail with LMSCHED_ENODAEMON once the connect
 * timeout (default 2000 ms) passes. Returns LMSCHED_OK and sets *clientp, or
 * an error (LMSCHED_EINVAL for a bad URL).
 */
LMSCHED_DECL int lmsched_client_open(lmsched_client **clientp, const char *url);

/* How long a request waits for a connection to the daemon before failing
 * with LMSCHED_ENODAEMON. */
LMSCHED_DECL int lmsched_client_set_connect_timeout(lmsched_client *c, int ms);

/*
 * Sets the access token sent with every later request of this client (the
 * "auth" field, see docs/security.md); token is copied, NULL or "" sends
 * none. A daemon started with --auth-token-file answers requests without
 * the right token with LMSCHED_EAUTH. lmsched_client_open starts with the
 * value of the environment variable LMSCHED_AUTH_TOKEN when it is set and
 * not empty. Requests already started keep the token they were sent with.
 * Returns LMSCHED_OK, LMSCHED_EINVAL (c is NULL) or LMSCHED_ENOMEM.
 */
LMSCHED_DECL int lmsched_client_set_auth(lmsched_client *c, const char *token);

/*
 * Closes the client. Requests still in flight complete with LMSCHED_ECLOSED
 * (their callbacks run before close returns). Accepts NULL. Must not be
 * called from inside a completion callback of the same client.
 */
LMSCHED_DECL void lmsched_client_close(lmsched_client *c);

/* ---- requests ---------------------------------------------------------- */

typedef struct lmsched_request lmsched_request;

LMSCHED_DECL int lmsched_request_alloc(lmsched_request **reqp);
LMSCHED_DECL void lmsched_request_free(lmsched_request *req);

/* The system prompt: the shared prefix, sent to the LLM server byte for byte
 * as the first message. */
LMSCHED_DECL int lmsched_request_set_system(lmsched_request *req, const char *text);
/* Appends a message after the system prompt; role is "user", "assistant" ... */
LMSCHED_DECL int lmsched_request_add_message(lmsched_request *req, const char *role,
                                             const char *content);
LMSCHED_DECL int lmsched_request_set_model(lmsched_request *req, const char *model);
LMSCHED_DECL int lmsched_request_set_max_tokens(lmsched_request *req, int32_t n);
LMSCHED_DECL int lmsched_request_set_temperature(lmsched_request *req, double t);
LMSCHED_DECL int lmsched_request_set_top_p(lmsched_request *req, double p);
LMSCHED_DECL int lmsched_request_add_stop(lmsched_request *req, const char *stop);
LMSCHED_DECL int lmsched_request_set_seed(lmsched_request *req, int64_t seed);
/* 0 (lowest) to 9 (highest); default 5. */
LMSCHED_DECL int lmsched_request_set_priority(lmsched_request *req, int priority);
/* Milliseconds from the daemon receiving the request by which it must have
 * started; 0 (default) means no deadline. */
LMSCHED_DECL int lmsched_request_set_deadline_ms(lmsched_request *req, uint32_t ms);
LMSCHED_DECL int lmsched_request_set_agent(lmsched_request *req, const char *name);
LMSCHED_DECL int lmsched_request_set_client_id(lmsched_request *req, const char *id);

/* ---- results ----------------------------------------------------------- */

/* The outcome of one chat request: a reply or an error. */
typedef struct lmsched_result lmsched_result;

LMSCHED_DECL void lmsched_result_free(lmsched_result *res);
/* LMSCHED_OK for a reply, else the error code. */
LMSCHED_DECL int lmsched_result_error(const lmsched_result *res);
/* Error message (never NULL for an error; NULL for a reply). */
LMSCHED_DECL const char *lmsched_result_message(const lmsched_result *res);
LMSCHED_DECL const char *lmsched_result_content(const lmsched_result *res);
LMSCHED_DECL const char *lmsched_result_finish_reason(const lmsched_result *res);
LMSCHED_DECL const char *lmsched_result_model(const lmsched_result *res);
/* Token counts as the LLM server reported them; -1 when not reported. */
LMSCHED_DECL int64_t lmsched_result_prompt_tokens(const lmsched_result *res);
LMSCHED_DECL int64_t lmsched_result_completion_tokens(const lmsched_result *res);
LMSCHED_DECL int64_t lmsched_result_cached_tokens(const lmsched_result *res);
/* Milliseconds: time queued in the scheduler, time to first token (from
 * dispatch to the LLM server), and total time inside the scheduler. */
LMSCHED_DECL double lmsched_result_queue_ms(const lmsched_result *res);
LMSCHED_DECL double lmsched_result_ttft_ms(const lmsched_result *res);
LMSCHED_DECL double lmsched_result_total_ms(const lmsched_result *res);
/* Times the scheduler retried the request against the LLM server. */
LMSCHED_DECL uint32_t lmsched_result_retries(const lmsched_result *res);

/* ---- calls --------------------------------------------------------------- */

/*
 * Sends one chat request and waits for its outcome, at most timeout_ms.
 * Returns the outcome's code (LMSCHED_OK for a reply). *resp is set to a
 * result the caller frees, for errors too (it carries the message), except
 * when the return is LMSCHED_EINVAL or LMSCHED_ENOMEM, when it is NULL.
 * The request is copied; the caller may free it once this returns.
 */
LMSCHED_DECL int lmsched_chat(lmsched_client *c, const lmsched_request *req, int timeout_ms,
                              lmsched_result **resp);

/*
 * Completion callback of lmsched_chat_async. It runs exactly once per
 * accepted call, on a library thread (never the caller's), and owns res:
 * free it with lmsched_result_free. It must not block for long, and must not
 * call lmsched_client_close on the same client.
 */
typedef void (*lmsched_chat_cb)(lmsched_result *res, void *arg);

/*
 * Starts a chat request and returns at once; one thread may keep thousands
 * in flight. The request is copied. Returns LMSCHED_OK when the callback will
 * run, or an error (the callback will not run).
 */
LMSCHED_DECL int lmsched_chat_async(lmsched_client *c, const lmsched_request *req,
                                    int timeout_ms, lmsched_chat_cb cb, void *arg);

/*
 * Sends n independent requests concurrently and waits for all of them, at
 * most timeout_ms each. results[i] receives the outcome of reqs[i] (a reply
 * or an error; free each). Returns LMSCHED_OK when every outcome is in, even
 * if some are errors; an error only when the batch could not be started.
 */
LMSCHED_DECL int lmsched_chat_batch(lmsched_client *c, const lmsched_request *const *reqs,
                                    size_t n, int timeout_ms, lmsched_result **results);

/*
 * Asks the daemon for its status document, the JSON described in
 * docs/status.md. *jsonp is a NUL-terminated string freed with lmsched_free.
 * On error, *errmsg (if errmsg is not NULL) receives a message freed with
 * lmsched_free, or NULL.
 */
LMSCHED_DECL int lmsched_status(lmsched_client *c, int timeout_ms, char **jsonp,
                                char **errmsg);

LMSCHED_DECL void lmsched_free(void *p);

#ifdef __cplusplus
}
#endif
#endif /* LMSCHED_AGENT_H */
