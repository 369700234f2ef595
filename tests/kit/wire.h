/*
 * wire - the daemon's protocol spoken by hand, for tests of the wire and of
 * what agentlib does not expose: a raw nng REQ socket, one exchange per
 * context, messages encoded and decoded with proto/.
 */
#ifndef LMSCHED_KIT_WIRE_H
#define LMSCHED_KIT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

#include "proto/proto.h"

typedef struct kit_wire {
    nng_socket sock;
    uint64_t next_id;
    int timeout_ms; /* per exchange */
} kit_wire;

/* Dials url (a held exchange is never resent). Returns 0 or an nng error. */
int kit_wire_open(kit_wire *w, const char *url, int timeout_ms);
void kit_wire_close(kit_wire *w);

/* One exchange on a context of its own: m's id is set here (returned),
 * the reply decoded into r (the caller finis it). Returns 0, or an nng or
 * lmsched error code (then r is not set). */
int kit_wire_xchg(kit_wire *w, lms_msg *m, lms_msg *r, uint64_t *id);

/* A chat message with one user turn, as views of the caller's strings
 * (never finied): msg is the caller's storage for the message. */
void kit_wire_chat(lms_msg *m, lms_chat_msg *msg, const char *system, const char *user,
                   int max_tokens, bool stream);

/* A whole stream: sends m (a chat with stream set), asks with chat_next
 * until the end; the content deltas concatenated go to text (cap bytes),
 * the final chat_reply to *final (the caller finis it). *exchanges counts
 * the exchanges, *first_ms the time to the first reply. Returns 0, or the
 * error code of an error reply (its message in text). */
int kit_wire_stream(kit_wire *w, lms_msg *m, char *text, size_t cap, lms_msg *final,
                    unsigned *exchanges, double *first_ms);

#endif /* LMSCHED_KIT_WIRE_H */
