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
#define LMSCHED_VERSION_MINOR 2
#define LMSCHED_VERSION_PATCH 0
#define LMSCHED_VERSION "0.2.0"
#define LMSCHED_VERSION_NUM 0x000200


/* Default for timeouts given as <= 0: ten minutes, long enough for a slow
 * local model to answer a long prompt behind a full queue. */
#define LMSCHED_DEFAULT_TIMEOUT_MS 600000

/* Runtime version of the library, e.g. "0.2.0". */
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
 * Closes the client. Requests still in flight, streams included, complete
 * with LMSCHED_ECLOSED (their callbacks run, and lmsched_wait calls on
 * other threads return, before close returns); results kept for
 * lmsched_wait that nobody collected are freed. Accepts NULL. Must not be
 * called from inside a callback of the same client.
 */
LMSCHED_DECL void lmsched_client_close(lmsched_client *c);

/* ---- requests ---------------------------------------------------------- */

typedef struct lmsched_request lmsched_request;
/* The outcome of one chat request: a reply or an error (see "results"). */
typedef struct lmsched_result lmsched_result;

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

/*
 * Why the last setter called on req failed ("tools[1].function.name: missing
 * or not a string", "max_tokens: 0 is out of range 1..1048576"), or "" when
 * it succeeded. Owned by req; valid until the next setter call on it.
 */
LMSCHED_DECL const char *lmsched_request_last_error(const lmsched_request *req);

/* ---- tools, structured output, extra body fields ----
 *
 * The JSON fields take JSON text, checked here for its shape (a tool list is
 * an array of objects, ...) and refused with LMSCHED_EINVAL otherwise (see
 * lmsched_request_last_error); what the LLM server makes of the contents is
 * the server's to judge. The text is copied. NULL removes the field. */

/* Tool definitions, OpenAI's shape: a JSON array of
 * {"type":"function","function":{"name","description","parameters"}}. */
LMSCHED_DECL int lmsched_request_set_tools(lmsched_request *req, const char *json);
/* "auto", "none", "required" (as bare words or JSON strings), or JSON text
 * of an object such as {"type":"function","function":{"name":"f"}}. */
LMSCHED_DECL int lmsched_request_set_tool_choice(lmsched_request *req,
                                                 const char *choice);
/* tool_choice naming one function: {"type":"function","function":{"name":name}}. */
LMSCHED_DECL int lmsched_request_set_tool_choice_function(lmsched_request *req,
                                                          const char *name);
/* A JSON object: {"type":"json_object"} or {"type":"json_schema","json_schema":
 * {"name","schema","strict"}}. */
LMSCHED_DECL int lmsched_request_set_response_format(lmsched_request *req,
                                                     const char *json);
/* 1 or 0: sent as true or false; < 0: not sent (the server's default). */
LMSCHED_DECL int lmsched_request_set_parallel_tool_calls(lmsched_request *req, int on);
/*
 * More fields of the LLM server's request body, merged into it verbatim
 * (top_k, min_p, repeat_penalty, logprobs, ...): a JSON object, replacing
 * every extra field set before. The keys the daemon sets itself (model,
 * messages, stream, stream_options, id_slot, cache_prompt) and those with a
 * setter of their own (max_tokens, temperature, top_p, stop, seed, tools,
 * tool_choice, response_format, parallel_tool_calls) are refused.
 */
LMSCHED_DECL int lmsched_request_set_extra(lmsched_request *req, const char *json);
/* Set one extra field, keeping the others (the same keys are refused); a
 * key set twice keeps its first position and the last value. _json takes
 * any JSON text as the value; _bool takes 0 or non-zero; _double refuses NaN
 * and infinities. */
LMSCHED_DECL int lmsched_request_set_extra_int(lmsched_request *req, const char *key,
                                               int64_t v);
LMSCHED_DECL int lmsched_request_set_extra_double(lmsched_request *req, const char *key,
                                                  double v);
LMSCHED_DECL int lmsched_request_set_extra_bool(lmsched_request *req, const char *key,
                                                int v);
LMSCHED_DECL int lmsched_request_set_extra_string(lmsched_request *req, const char *key,
                                                  const char *v);
LMSCHED_DECL int lmsched_request_set_extra_json(lmsched_request *req, const char *key,
                                                const char *json);

/* ---- structured messages ----
 *
 * Appended after the messages already added, like lmsched_request_add_message. */

/* A message whose content is a JSON array of parts, OpenAI's shape:
 * {"type":"text","text":...}, {"type":"image_url","image_url":{"url":...}}. */
LMSCHED_DECL int lmsched_request_add_message_parts(lmsched_request *req, const char *role,
                                                   const char *parts_json);
/* An assistant message that called tools: tool_calls_json is a JSON array
 * of {"id","type":"function","function":{"name","arguments"}} (arguments
 * is JSON text in a string); content may be NULL. */
LMSCHED_DECL int lmsched_request_add_tool_calls(lmsched_request *req, const char *content,
                                                const char *tool_calls_json);
/* A tool message: the result (content) of the call tool_call_id; name (the
 * function's, may be NULL) is passed through. */
LMSCHED_DECL int lmsched_request_add_tool_result(lmsched_request *req,
                                                 const char *tool_call_id,
                                                 const char *name, const char *content);
/* Any message as an OpenAI message object in JSON: role, content (a string,
 * an array of parts, or null with tool_calls), tool_calls, tool_call_id,
 * name. Other keys are refused (the protocol does not carry them). */
LMSCHED_DECL int lmsched_request_add_message_json(lmsched_request *req, const char *json);
/* The assistant turn of a reply, as the conversation's next message: its
 * content and its tool calls (not its reasoning). res must be a reply. */
LMSCHED_DECL int lmsched_request_add_reply(lmsched_request *req,
                                           const lmsched_result *res);
/* Removes every message (the other fields stay); accepts NULL. */
LMSCHED_DECL void lmsched_request_clear_messages(lmsched_request *req);
/* The messages added so far (0 for NULL). */
LMSCHED_DECL size_t lmsched_request_message_count(const lmsched_request *req);

/* ---- results ----------------------------------------------------------- */

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
/* For an error the daemon refused a field of the request for: that field
 * ("messages[2].content", "extra.stream"); else NULL. */
LMSCHED_DECL const char *lmsched_result_error_field(const lmsched_result *res);
/* What a reasoning model thought before answering, where the server
 * separates it (llama.cpp's reasoning_content); NULL when none. */
LMSCHED_DECL const char *lmsched_result_reasoning(const lmsched_result *res);
/* The tool calls of the answer (finish_reason "tool_calls"): how many, and
 * call i's id, type ("function"), function name and arguments (JSON text,
 * as the model wrote it). NULL for an index past the count. */
LMSCHED_DECL size_t lmsched_result_tool_call_count(const lmsched_result *res);
LMSCHED_DECL const char *lmsched_result_tool_call_id(const lmsched_result *res, size_t i);
LMSCHED_DECL const char *lmsched_result_tool_call_type(const lmsched_result *res,
                                                       size_t i);
LMSCHED_DECL const char *lmsched_result_tool_call_name(const lmsched_result *res,
                                                       size_t i);
LMSCHED_DECL const char *lmsched_result_tool_call_arguments(const lmsched_result *res,
                                                            size_t i);
/* The same calls as a JSON array in OpenAI's shape ([{"id","type","function":
 * {"name","arguments"}}]), what lmsched_request_add_tool_calls takes; NULL
 * when there are none. */
LMSCHED_DECL const char *lmsched_result_tool_calls_json(const lmsched_result *res);
/* The server's logprobs.content array as JSON text, when the request asked
 * for them (lmsched_request_set_extra_bool(req, "logprobs", 1)); else NULL. */
LMSCHED_DECL const char *lmsched_result_logprobs_json(const lmsched_result *res);

/* ---- calls --------------------------------------------------------------- */

/*
 * Sends one chat request and waits for its outcome, at most timeout_ms.
 * Returns the outcome's code (LMSCHED_OK for a reply). *resp is set to a
 * result the caller frees, for errors too (it carries the message), except
 * when the return is LMSCHED_EINVAL or LMSCHED_ENOMEM, when it is NULL.
 * The request is copied; the caller may free it once this returns.
 */
LMSCHED_DECL int lmsched_chat(lmsched_client *c, const lmsched_request *req,
                              int timeout_ms, lmsched_result **resp);

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

/* ---- streaming, call ids and cancellation ------------------------------ */

/* What a delta carries (the kind argument of lmsched_delta_cb). */
enum lmsched_delta_kind {
    LMSCHED_DELTA_CONTENT = 1,   /* a piece of the answer's text */
    LMSCHED_DELTA_REASONING = 2, /* a piece of a reasoning model's thoughts */
    LMSCHED_DELTA_TOOL_CALL = 3, /* a tool call's head or a piece of its arguments */
};

/*
 * Called for each piece of a streamed answer, in order, never twice at once
 * for one call. kind is an lmsched_delta_kind. text is the piece (content,
 * reasoning, or a piece of tool call index's arguments; "" when a tool
 * call's head carries none; never NULL). index is the tool call's position
 * (0 for content and reasoning). id and name are the tool call's, in its
 * first delta only; NULL otherwise. The strings live until the callback
 * returns. Return 0 to go on; anything else cancels the call (it completes
 * with LMSCHED_ECANCELED, and the daemon frees the backend slot).
 */
typedef int (*lmsched_delta_cb)(int kind, const char *text, int index, const char *id,
                                const char *name, void *arg);

/*
 * Sends req as a stream and waits for its end, at most timeout_ms for the
 * whole call (as lmsched_chat; see lmsched_client_set_stream_idle_timeout
 * for a limit on each wait). on_delta runs on the caller's thread as the
 * pieces arrive; the library asks for the next pieces when it returns, so a
 * slow callback slows the stream (and one that keeps the daemon waiting
 * longer than its --stream-timeout, 30 s by default, has its request
 * canceled). The outcome is as for lmsched_chat: *resp gets the whole answer
 * (content, reasoning, tool calls, usage, timings), the same a non-streamed
 * call returns, or the error. Returns its code.
 */
LMSCHED_DECL int lmsched_chat_stream(lmsched_client *c, const lmsched_request *req,
                                     int timeout_ms, lmsched_delta_cb on_delta, void *arg,
                                     lmsched_result **resp);

/*
 * Starts a chat request and returns at once, with its call id in *idp (if
 * idp is not NULL) for lmsched_cancel and lmsched_wait; ids are never 0 and
 * never reused by one client. The request is copied.
 *
 * on_delta NULL: the answer comes whole; otherwise it is streamed and
 * on_delta runs for each piece on a library thread (see lmsched_delta_cb).
 * on_done NULL: the result is kept for lmsched_wait; otherwise on_done runs
 * exactly once, after the last on_delta, on a library thread, and owns the
 * result (as lmsched_chat_async's callback). arg goes to both callbacks.
 * timeout_ms bounds the whole call. Returns LMSCHED_OK when the call
 * started (on_done will run, or lmsched_wait will return its result), or
 * an error (no callback runs, *idp is 0).
 */
LMSCHED_DECL int lmsched_chat_start(lmsched_client *c, const lmsched_request *req,
                                    int timeout_ms, lmsched_delta_cb on_delta,
                                    lmsched_chat_cb on_done, void *arg, uint64_t *idp);

/*
 * Waits for the call id, started by lmsched_chat_start with on_done NULL,
 * and sets *resp to its result (the caller frees it; for errors too).
 * Blocks at most until the call's own timeout (and no longer than a close
 * of the client). Returns the result's code, or LMSCHED_EINVAL when id is
 * not such a call of c or is already waited for (then *resp is NULL).
 * Must not be called from a library callback.
 */
LMSCHED_DECL int lmsched_wait(lmsched_client *c, uint64_t id, lmsched_result **resp);

/*
 * Cancels the call id of c, from any thread (a library callback too): a
 * call started by lmsched_chat_start, streamed or not. The call completes at
 * once with LMSCHED_ECANCELED (its on_done runs, or lmsched_wait returns),
 * exactly once; the daemon is told, so a queued request leaves the queue and
 * a running one has its backend transfer closed, which frees its slot.
 * Returns LMSCHED_OK when the call was in flight (it will complete as
 * canceled), LMSCHED_EINVAL when c is NULL or id names no call of c in
 * flight (it has completed, or never existed), LMSCHED_ECLOSED when the
 * client is closing. Does not block.
 */
LMSCHED_DECL int lmsched_cancel(lmsched_client *c, uint64_t id);

/*
 * The longest a stream waits for its next pieces once the first came (its
 * idle timeout), in ms; <= 0 (the default): no such limit, only the call's
 * own timeout. A stream that waits longer fails with LMSCHED_ETIMEDOUT and
 * is canceled in the daemon. Applies to streams started afterwards.
 */
LMSCHED_DECL int lmsched_client_set_stream_idle_timeout(lmsched_client *c, int ms);

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
