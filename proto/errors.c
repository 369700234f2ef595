/*
 * errors.c - text for the lmsched_err codes: lmsched_strerror (public, for
 * people) and lmsched_err_name (public, stable identifiers for logs, the status
 * JSON and bindings).
 * Both switch over the enum with no default, so -Wswitch names any code
 * added to lmsched/wire.h and not described here.
 */
#include "proto/proto.h"

const char *lmsched_strerror(int err)
{
    switch ((lmsched_err)err) {
    case LMSCHED_OK:
        return "success";
    case LMSCHED_EINVAL:
        return "invalid argument";
    case LMSCHED_ENOMEM:
        return "out of memory";
    case LMSCHED_EPROTO:
        return "malformed or invalid protocol message";
    case LMSCHED_EVERSION:
        return "protocol version not supported";
    case LMSCHED_EBUSY:
        return "scheduler queue is full";
    case LMSCHED_EDEADLINE:
        return "request deadline passed before it could run";
    case LMSCHED_ETIMEDOUT:
        return "no reply within the timeout";
    case LMSCHED_ENODAEMON:
        return "lmsched daemon is not reachable";
    case LMSCHED_ECLOSED:
        return "client handle is closed";
    case LMSCHED_ESHUTDOWN:
        return "scheduler is shutting down";
    case LMSCHED_EBACKEND_DOWN:
        return "the LLM server is not reachable";
    case LMSCHED_EBACKEND_TIMEOUT:
        return "the LLM server did not answer in time";
    case LMSCHED_EBACKEND_HTTP:
        return "the LLM server answered with an HTTP error";
    case LMSCHED_EBACKEND_CRASH:
        return "the model crashed on the LLM server";
    case LMSCHED_EBACKEND_STREAM:
        return "broken or malformed response from the LLM server";
    case LMSCHED_ETOOLARGE:
        return "message or field exceeds a size limit";
    case LMSCHED_EINTERNAL:
        return "internal error in the scheduler";
    case LMSCHED_ECANCELED:
        return "request canceled";
    case LMSCHED_EAUTH:
        return "authentication required or refused";
    }
    return "unknown error";
}

const char *lmsched_err_name(int code)
{
    switch ((lmsched_err)code) {
    case LMSCHED_OK:
        return "ok";
    case LMSCHED_EINVAL:
        return "invalid";
    case LMSCHED_ENOMEM:
        return "nomem";
    case LMSCHED_EPROTO:
        return "proto";
    case LMSCHED_EVERSION:
        return "version";
    case LMSCHED_EBUSY:
        return "busy";
    case LMSCHED_EDEADLINE:
        return "deadline";
    case LMSCHED_ETIMEDOUT:
        return "timeout";
    case LMSCHED_ENODAEMON:
        return "no_daemon";
    case LMSCHED_ECLOSED:
        return "closed";
    case LMSCHED_ESHUTDOWN:
        return "shutdown";
    case LMSCHED_EBACKEND_DOWN:
        return "backend_down";
    case LMSCHED_EBACKEND_TIMEOUT:
        return "backend_timeout";
    case LMSCHED_EBACKEND_HTTP:
        return "backend_http";
    case LMSCHED_EBACKEND_CRASH:
        return "backend_crash";
    case LMSCHED_EBACKEND_STREAM:
        return "backend_stream";
    case LMSCHED_ETOOLARGE:
        return "too_large";
    case LMSCHED_EINTERNAL:
        return "internal";
    case LMSCHED_ECANCELED:
        return "canceled";
    case LMSCHED_EAUTH:
        return "auth";
    }
    return "unknown";
}
