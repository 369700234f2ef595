/*
 * lmsched/wire.h - what travels on the wire between agents and the lmsched
 * daemon that a program may need by name: the protocol version, its limits,
 * and the error codes every error reply carries. Owned by the wire format
 * (proto/); <lmsched/agent.h> includes it, as nng.h carries nng_err.
 *
 * Includes nothing; usable from C and C++.
 */
#ifndef LMSCHED_WIRE_H
#define LMSCHED_WIRE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Visibility of the library's exported functions (set by the build; a user
 * of the static library defines LMSCHED_STATIC_LIB). */
#ifndef LMSCHED_DECL
#if defined(LMSCHED_STATIC_LIB)
#define LMSCHED_DECL
#elif defined(__GNUC__)
#define LMSCHED_DECL __attribute__((visibility("default")))
#else
#define LMSCHED_DECL
#endif
#endif

/* The wire protocol version spoken by this library (see docs/protocol.md). */
#define LMSCHED_PROTOCOL_VERSION 1

/* The largest max_tokens a request may carry (2^20); the wire protocol,
 * lmsched_request_set_max_tokens and `lmsched chat --max-tokens` all take
 * 1 .. LMSCHED_MAX_TOKENS_MAX. */
#define LMSCHED_MAX_TOKENS_MAX 1048576

/* The daemon's default limits on what one request may hold
 * (docs/protocol.md#limits): the whole encoded message, and one text (the
 * system prompt, one message's content, a reply's content). */
#define LMSCHED_MAX_MESSAGE_BYTES (16u * 1024 * 1024)
#define LMSCHED_MAX_TEXT_BYTES (4u * 1024 * 1024)

/*
 * Error codes. These numbers are part of the wire protocol (error replies
 * carry them) and of the ABI: they are never renumbered, and a retired code
 * stays as a placeholder.
 */
typedef enum lmsched_err {
    LMSCHED_OK = 0,
    LMSCHED_EINVAL = 1,          /* invalid argument from the caller */
    LMSCHED_ENOMEM = 2,          /* out of memory */
    LMSCHED_EPROTO = 3,          /* malformed or invalid protocol message */
    LMSCHED_EVERSION = 4,        /* protocol version not supported */
    LMSCHED_EBUSY = 5,           /* scheduler queue full, try again later */
    LMSCHED_EDEADLINE = 6,       /* request deadline passed before it ran */
    LMSCHED_ETIMEDOUT = 7,       /* no reply within the caller's timeout */
    LMSCHED_ENODAEMON = 8,       /* scheduler daemon not reachable */
    LMSCHED_ECLOSED = 9,         /* client handle closed */
    LMSCHED_ESHUTDOWN = 10,      /* scheduler shutting down */
    LMSCHED_EBACKEND_DOWN = 11,  /* LLM server unreachable */
    LMSCHED_EBACKEND_TIMEOUT = 12, /* LLM server did not answer in time */
    LMSCHED_EBACKEND_HTTP = 13,  /* LLM server answered with an HTTP error */
    LMSCHED_EBACKEND_CRASH = 14, /* model crashed ("Channel Error") */
    LMSCHED_EBACKEND_STREAM = 15, /* broken or malformed response stream */
    LMSCHED_ETOOLARGE = 16,      /* message or field over a configured limit */
    LMSCHED_EINTERNAL = 17,      /* internal error in the scheduler */
    LMSCHED_ECANCELED = 18,      /* request canceled */
    LMSCHED_EAUTH = 19,          /* authentication required or refused */
} lmsched_err;

/* A short English description of an error code; never NULL. */
LMSCHED_DECL const char *lmsched_strerror(int err);

/* A short stable identifier of an error code, for logs, JSON and bindings:
 * "ok", "invalid", "nomem", "proto", "version", "busy", "deadline",
 * "timeout", "no_daemon", "closed", "shutdown", "backend_down",
 * "backend_timeout", "backend_http", "backend_crash", "backend_stream",
 * "too_large", "internal", "canceled", "auth"; "unknown" for any other
 * number. These are the names `lmsched status` uses. Never NULL. */
LMSCHED_DECL const char *lmsched_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif /* LMSCHED_WIRE_H */
