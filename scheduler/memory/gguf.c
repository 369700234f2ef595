/*
 * gguf - the GGUF header reader and the KV-bytes-per-token formula (see
 * gguf.h and docs/memory-budget.md). The path comes from the user's
 * --model-path, so the file is parsed as hostile input.
 *
 * Design notes: a GGUF file starts with magic "GGUF", a uint32 version, a
 * uint64 tensor count and a uint64 metadata count, then the metadata
 * key/value pairs; everything is little-endian, and versions 2 and 3 share
 * this layout (version 1 used 32-bit lengths). We stop before the tensor
 * infos. Nothing is allocated: values we want are small and land in fixed
 * buffers, everything else (tokenizer vocabularies of 150k strings, merges)
 * is skipped. Every declared length is checked against a cap and against
 * the bytes left in the file before it is acted on, so a lying header fails
 * as "truncated" or "too long" instead of driving a huge read or seek.
 *
 * The metadata is scanned twice: once to find general.architecture, which
 * names the prefix of every key we need ("llama.block_count"), and once to
 * read those keys. The format does not promise that the architecture comes
 * first, and a file may carry keys of other prefixes (a vision tower's
 * "clip.vision.block_count"), so matching on the suffix alone would be
 * wrong. The first scan usually stops at key 0.
 */
#include "scheduler/memory/gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_HEADER_SIZE 24u             /* magic, version, tensor and kv counts */
#define GGUF_MAX_STRING (1u << 20)       /* 1 MiB: far above any real value */
#define GGUF_MAX_KEY 65535u              /* the spec's limit on key length */
#define GGUF_MAX_ARRAY 100000000u        /* 100M elements */
#define GGUF_MAX_DEPTH 8                 /* nested arrays */
#define GGUF_SKIP_READ_MAX (64u * 1024u) /* skip by reading up to this, else seek */

/* Caps on the architecture numbers: far above any real model, and low
 * enough that n_layer * n_head_kv * (key + value length) * 4 cannot
 * overflow 64 bits (2^16 * 2^16 * 2^21 * 2^2 = 2^55). */
#define GGUF_MAX_LAYERS (1LL << 16)
#define GGUF_MAX_HEADS (1LL << 16)
#define GGUF_MAX_EMBD (1LL << 24)
#define GGUF_MAX_HEAD_DIM (1LL << 20)

enum gguf_type {
    GGUF_T_UINT8 = 0,
    GGUF_T_INT8 = 1,
    GGUF_T_UINT16 = 2,
    GGUF_T_INT16 = 3,
    GGUF_T_UINT32 = 4,
    GGUF_T_INT32 = 5,
    GGUF_T_FLOAT32 = 6,
    GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8,
    GGUF_T_ARRAY = 9,
    GGUF_T_UINT64 = 10,
    GGUF_T_INT64 = 11,
    GGUF_T_FLOAT64 = 12,
    GGUF_T_COUNT = 13,
};

static const char *const gguf_type_names[GGUF_T_COUNT] = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

/* Size in bytes of a fixed-size value, 0 for string and array. */
static uint64_t gguf_type_size(uint32_t t)
{
    switch (t) {
    case GGUF_T_UINT8:
    case GGUF_T_INT8:
    case GGUF_T_BOOL:
        return 1;
    case GGUF_T_UINT16:
    case GGUF_T_INT16:
        return 2;
    case GGUF_T_UINT32:
    case GGUF_T_INT32:
    case GGUF_T_FLOAT32:
        return 4;
    case GGUF_T_UINT64:
    case GGUF_T_INT64:
    case GGUF_T_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static bool gguf_type_is_int(uint32_t t)
{
    return t <= GGUF_T_INT32 || t == GGUF_T_UINT64 || t == GGUF_T_INT64;
}

/* The architecture keys we read, as suffixes of "<arch>". */
enum gguf_want {
    GGUF_W_BLOCKS,
    GGUF_W_HEADS,
    GGUF_W_HEADS_KV,
    GGUF_W_EMBD,
    GGUF_W_KEY_LEN,
    GGUF_W_VALUE_LEN,
    GGUF_W_CONTEXT,
    GGUF_W_COUNT,
};

static const struct gguf_want_spec {
    const char *suffix;
    bool per_layer; /* may be an integer array, one value per layer */
    int64_t min, max;
} gguf_wants[GGUF_W_COUNT] = {
    [GGUF_W_BLOCKS] = {".block_count", false, 1, GGUF_MAX_LAYERS},
    [GGUF_W_HEADS] = {".attention.head_count", true, 1, GGUF_MAX_HEADS},
    [GGUF_W_HEADS_KV] = {".attention.head_count_kv", true, 1, GGUF_MAX_HEADS},
    [GGUF_W_EMBD] = {".embedding_length", false, 1, GGUF_MAX_EMBD},
    [GGUF_W_KEY_LEN] = {".attention.key_length", false, 1, GGUF_MAX_HEAD_DIM},
    [GGUF_W_VALUE_LEN] = {".attention.value_length", false, 1, GGUF_MAX_HEAD_DIM},
    [GGUF_W_CONTEXT] = {".context_length", false, 0, INT64_MAX},
};

/* Reader state for one gguf_read_info call. */
typedef struct gguf_rd {
    FILE *f;
    uint64_t size; /* bytes in the file */
    uint64_t pos;  /* bytes consumed so far */
    bool in_kv;    /* past the header, reading metadata key kv_index */
    uint64_t kv_index;
    char key[80]; /* sanitized (prefix of the) current key, for messages */
    char *err;
    size_t errlen;
    bool failed; /* the first error wins; later ones are consequences */
} gguf_rd;

/* What the second scan collects. */
typedef struct gguf_found {
    int64_t val[GGUF_W_COUNT];
    bool seen[GGUF_W_COUNT];
    bool seen_arch;
    bool seen_name;
} gguf_found;

static void gguf_fail(gguf_rd *rd, const char *fmt, ...)
{
    if (rd->failed)
        return;
    rd->failed = true;
    if (rd->err == NULL || rd->errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rd->err, rd->errlen, fmt, ap);
    va_end(ap);
}

/* " at metadata key N (name)" or "" in the header, for messages. */
static const char *gguf_where(const gguf_rd *rd, char *buf, size_t len)
{
    if (!rd->in_kv)
        snprintf(buf, len, " in header");
    else if (rd->key[0] != '\0')
        snprintf(buf, len, " at metadata key %" PRIu64 " (%s)", rd->kv_index, rd->key);
    else
        snprintf(buf, len, " at metadata key %" PRIu64, rd->kv_index);
    return buf;
}

static void gguf_fail_truncated(gguf_rd *rd)
{
    char w[128];
    gguf_fail(rd, "truncated%s", gguf_where(rd, w, sizeof w));
}

/* Copies n bytes of untrusted text into dst (size dstlen) for display:
 * bytes outside printable ASCII become '?', so a message or log line never
 * carries control characters from the file. */
static void gguf_sanitize(char *dst, size_t dstlen, const char *src, size_t n)
{
    size_t i;
    if (dstlen == 0)
        return;
    for (i = 0; i < n && i + 1 < dstlen; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[i] = '\0';
}

static int gguf_read(gguf_rd *rd, void *buf, size_t n)
{
    if (n > rd->size - rd->pos) {
        gguf_fail_truncated(rd);
        return -1;
    }
    if (n > 0 && fread(buf, 1, n, rd->f) != n) {
        if (ferror(rd->f))
            gguf_fail(rd, "read error: %s", strerror(errno));
        else
            gguf_fail_truncated(rd); /* the file shrank under us */
        return -1;
    }
    rd->pos += n;
    return 0;
}

/* Skips n bytes. Short skips read through a small buffer (a vocabulary is
 * 150k tiny strings, and a seek per string would throw away stdio's buffer
 * each time); long ones seek. Either way n was checked against the file
 * size first, so a seek never lands past the end. */
static int gguf_skip(gguf_rd *rd, uint64_t n)
{
    char scratch[4096];
    if (n > rd->size - rd->pos) {
        gguf_fail_truncated(rd);
        return -1;
    }
    if (n > GGUF_SKIP_READ_MAX) {
        if (fseeko(rd->f, (off_t)n, SEEK_CUR) != 0) {
            gguf_fail(rd, "seek error: %s", strerror(errno));
            return -1;
        }
        rd->pos += n;
        return 0;
    }
    while (n > 0) {
        size_t chunk = n < sizeof scratch ? (size_t)n : sizeof scratch;
        if (gguf_read(rd, scratch, chunk) != 0)
            return -1;
        n -= chunk;
    }
    return 0;
}

static int gguf_read_u32(gguf_rd *rd, uint32_t *out)
{
    unsigned char b[4];
    if (gguf_read(rd, b, sizeof b) != 0)
        return -1;
    *out = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
           (uint32_t)b[3] << 24;
    return 0;
}

static int gguf_read_u64(gguf_rd *rd, uint64_t *out)
{
    unsigned char b[8];
    if (gguf_read(rd, b, sizeof b) != 0)
        return -1;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    *out = v;
    return 0;
}

/* Reads a string's length and checks it against cap. */
static int gguf_read_len(gguf_rd *rd, uint64_t cap, const char *what, uint64_t *len)
{
    char w[128];
    if (gguf_read_u64(rd, len) != 0)
        return -1;
    if (*len > cap) {
        gguf_fail(rd, "%s of %" PRIu64 " bytes%s exceeds the %" PRIu64 "-byte cap", what,
                  *len, gguf_where(rd, w, sizeof w), cap);
        return -1;
    }
    return 0;
}

/* Reads a string value into buf (NUL-terminated, at most buflen - 1 bytes
 * kept, the rest skipped). *full is the declared length. */
static int gguf_read_string(gguf_rd *rd, char *buf, size_t buflen, uint64_t *full)
{
    uint64_t len;
    if (gguf_read_len(rd, GGUF_MAX_STRING, "string", &len) != 0)
        return -1;
    size_t keep = len < buflen ? (size_t)len : buflen - 1;
    if (gguf_read(rd, buf, keep) != 0)
        return -1;
    buf[keep] = '\0';
    *full = len;
    return gguf_skip(rd, len - keep);
}

static int gguf_check_type(gguf_rd *rd, uint32_t t)
{
    char w[128];
    if (t >= GGUF_T_COUNT) {
        gguf_fail(rd, "bad value type %" PRIu32 "%s", t, gguf_where(rd, w, sizeof w));
        return -1;
    }
    return 0;
}

/* Reads an array's element type and count, checking both. */
static int gguf_read_array_head(gguf_rd *rd, uint32_t *etype, uint64_t *count)
{
    char w[128];
    if (gguf_read_u32(rd, etype) != 0 || gguf_check_type(rd, *etype) != 0)
        return -1;
    if (gguf_read_u64(rd, count) != 0)
        return -1;
    if (*count > GGUF_MAX_ARRAY) {
        gguf_fail(rd, "array of %" PRIu64 " elements%s exceeds the %u-element cap",
                  *count, gguf_where(rd, w, sizeof w), GGUF_MAX_ARRAY);
        return -1;
    }
    return 0;
}

/* Skips one value of type t without allocating. depth counts the arrays
 * we are inside, so a file of arrays nested a million deep cannot exhaust
 * the stack. */
static int gguf_skip_value(gguf_rd *rd, uint32_t t, int depth)
{
    char w[128];
    uint64_t size = gguf_type_size(t);
    if (size > 0)
        return gguf_skip(rd, size);
    if (t == GGUF_T_STRING) {
        uint64_t len;
        if (gguf_read_len(rd, GGUF_MAX_STRING, "string", &len) != 0)
            return -1;
        return gguf_skip(rd, len);
    }
    if (t != GGUF_T_ARRAY)
        return gguf_check_type(rd, t);
    if (depth >= GGUF_MAX_DEPTH) {
        gguf_fail(rd, "arrays nested more than %d deep%s", GGUF_MAX_DEPTH,
                  gguf_where(rd, w, sizeof w));
        return -1;
    }
    uint32_t etype;
    uint64_t count;
    if (gguf_read_array_head(rd, &etype, &count) != 0)
        return -1;
    uint64_t esize = gguf_type_size(etype);
    if (esize > 0)
        return gguf_skip(rd, count * esize); /* <= 8 * 100M: no overflow */
    /* Strings and arrays: each element consumes at least 8 bytes or fails,
     * so this loop is bounded by the file's size, not by the count. */
    for (uint64_t i = 0; i < count; i++) {
        if (gguf_skip_value(rd, etype, depth + 1) != 0)
            return -1;
    }
    return 0;
}

/* Reads one integer of type t (checked by the caller) as int64. */
static int gguf_read_int(gguf_rd *rd, uint32_t t, const char *key, int64_t *out)
{
    unsigned char b[8];
    uint64_t size = gguf_type_size(t);
    if (gguf_read(rd, b, (size_t)size) != 0)
        return -1;
    uint64_t u = 0;
    for (int i = (int)size - 1; i >= 0; i--)
        u = u << 8 | b[i];
    bool is_signed =
        t == GGUF_T_INT8 || t == GGUF_T_INT16 || t == GGUF_T_INT32 || t == GGUF_T_INT64;
    if (is_signed && size < 8 && (u >> (size * 8 - 1)) != 0)
        u |= ~0ULL << (size * 8); /* sign-extend */
    if (!is_signed && u > INT64_MAX) {
        gguf_fail(rd, "%s = %" PRIu64 " is out of range", key, u);
        return -1;
    }
    /* Two's complement conversion, done with memcpy to stay defined. */
    memcpy(out, &u, sizeof *out);
    return 0;
}

/* Reads the value of one architecture key (type t already read) into
 * fd->val[w]: an integer, or for per-layer keys an integer array whose
 * largest element is taken. */
static int gguf_read_want(gguf_rd *rd, uint32_t t, enum gguf_want w, const char *key,
                          gguf_found *fd)
{
    const struct gguf_want_spec *ws = &gguf_wants[w];
    int64_t v;
    if (fd->seen[w]) {
        gguf_fail(rd, "duplicate key %s", key);
        return -1;
    }
    if (gguf_type_is_int(t)) {
        if (gguf_read_int(rd, t, key, &v) != 0)
            return -1;
    } else if (t == GGUF_T_ARRAY && ws->per_layer) {
        uint32_t etype;
        uint64_t count;
        if (gguf_read_array_head(rd, &etype, &count) != 0)
            return -1;
        if (!gguf_type_is_int(etype)) {
            gguf_fail(rd, "%s is an array of %s, expected integers", key,
                      gguf_type_names[etype]);
            return -1;
        }
        if (count == 0) {
            gguf_fail(rd, "%s is an empty array", key);
            return -1;
        }
        v = INT64_MIN;
        for (uint64_t i = 0; i < count; i++) {
            int64_t e;
            if (gguf_read_int(rd, etype, key, &e) != 0)
                return -1;
            if (e < 0) {
                gguf_fail(rd, "%s has a negative element %" PRId64, key, e);
                return -1;
            }
            if (e > v)
                v = e;
        }
    } else {
        gguf_fail(rd, "%s has type %s, expected an integer", key, gguf_type_names[t]);
        return -1;
    }
    if (v < ws->min || v > ws->max) {
        gguf_fail(rd, "%s = %" PRId64 " is out of range (%" PRId64 "..%" PRId64 ")", key,
                  v, ws->min, ws->max);
        return -1;
    }
    fd->val[w] = v;
    fd->seen[w] = true;
    return 0;
}

/* Reads general.architecture's value (type t) into out->arch. */
static int gguf_read_arch(gguf_rd *rd, uint32_t t, gguf_model_info *out)
{
    uint64_t len;
    if (t != GGUF_T_STRING) {
        gguf_fail(rd, "general.architecture has type %s, expected a string",
                  gguf_type_names[t]);
        return -1;
    }
    if (gguf_read_string(rd, out->arch, sizeof out->arch, &len) != 0)
        return -1;
    /* The name becomes part of key names and messages: accept only a
     * plain, complete, printable token. */
    bool ok = len > 0 && len < sizeof out->arch && strlen(out->arch) == len;
    for (size_t i = 0; ok && out->arch[i] != '\0'; i++) {
        unsigned char c = (unsigned char)out->arch[i];
        ok = c > 0x20 && c < 0x7f;
    }
    if (!ok) {
        char shown[64];
        gguf_sanitize(shown, sizeof shown, out->arch, strlen(out->arch));
        gguf_fail(rd,
                  "general.architecture \"%s\" (%" PRIu64 " bytes) is not a valid name",
                  shown, len);
        return -1;
    }
    return 0;
}

/* Reads general.name into out->name, cut at a UTF-8 character boundary and
 * with control bytes replaced, since it ends up in logs. A name of another
 * type is ignored: it is informational. */
static int gguf_read_name(gguf_rd *rd, uint32_t t, gguf_model_info *out)
{
    uint64_t len;
    char raw[sizeof out->name];
    if (t != GGUF_T_STRING)
        return gguf_skip_value(rd, t, 0);
    if (gguf_read_string(rd, raw, sizeof raw, &len) != 0)
        return -1;
    size_t n = strlen(raw); /* stops at an embedded NUL */
    if (len > sizeof raw - 1 && n == sizeof raw - 1) {
        /* Cut short: drop a multi-byte character the cut left incomplete.
         * Walk back over continuation bytes to its lead byte, whose high
         * bits give the character's length. */
        size_t lead = n;
        while (lead > 0 && n - lead < 4 && ((unsigned char)raw[lead - 1] & 0xC0) == 0x80)
            lead--;
        if (lead > 0) {
            unsigned char c = (unsigned char)raw[lead - 1];
            size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (lead - 1 + want > n)
                n = lead - 1;
        }
    }
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)raw[i];
        out->name[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out->name[i] = '\0';
    return 0;
}

/* One scan over the metadata. With arch_only, stops as soon as
 * general.architecture is read (*arch_found set); otherwise reads the
 * architecture keys into fd and general.name into out. */
static int gguf_scan(gguf_rd *rd, uint64_t n_kv, bool arch_only, gguf_model_info *out,
                     gguf_found *fd, bool *arch_found)
{
    /* Long enough for any key we match: general.architecture, or a
     * 63-byte architecture plus the longest suffix. */
    char key[128];
    size_t arch_len = strlen(out->arch);
    for (uint64_t i = 0; i < n_kv; i++) {
        uint64_t klen;
        uint32_t t;
        rd->in_kv = true;
        rd->kv_index = i;
        rd->key[0] = '\0';
        if (gguf_read_len(rd, GGUF_MAX_KEY, "key", &klen) != 0)
            return -1;
        /* Keep the key's head for matching and messages; a key too long
         * to match anything we want is kept only for messages. */
        size_t keep = klen < sizeof key ? (size_t)klen : sizeof key - 1;
        if (gguf_read(rd, key, keep) != 0 || gguf_skip(rd, klen - keep) != 0)
            return -1;
        key[keep] = '\0';
        gguf_sanitize(rd->key, sizeof rd->key, key, keep);
        /* An embedded NUL or an overlong key must not match by prefix. */
        bool matchable = keep == klen && strlen(key) == klen;
        if (gguf_read_u32(rd, &t) != 0 || gguf_check_type(rd, t) != 0)
            return -1;

        if (matchable && strcmp(key, "general.architecture") == 0) {
            if (arch_only) {
                if (gguf_read_arch(rd, t, out) != 0)
                    return -1;
                *arch_found = true;
                return 0;
            }
            if (fd->seen_arch) {
                gguf_fail(rd, "duplicate key general.architecture");
                return -1;
            }
            fd->seen_arch = true;
            if (gguf_skip_value(rd, t, 0) != 0)
                return -1;
            continue;
        }
        if (!arch_only && matchable && strcmp(key, "general.name") == 0) {
            if (fd->seen_name) {
                gguf_fail(rd, "duplicate key general.name");
                return -1;
            }
            fd->seen_name = true;
            if (gguf_read_name(rd, t, out) != 0)
                return -1;
            continue;
        }
        int want = -1;
        if (!arch_only && matchable && klen > arch_len &&
            memcmp(key, out->arch, arch_len) == 0) {
            for (int w = 0; w < GGUF_W_COUNT; w++) {
                if (strcmp(key + arch_len, gguf_wants[w].suffix) == 0) {
                    want = w;
                    break;
                }
            }
        }
        if (want >= 0) {
            if (gguf_read_want(rd, t, (enum gguf_want)want, rd->key, fd) != 0)
                return -1;
        } else if (gguf_skip_value(rd, t, 0) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Reads and checks the 24-byte header; returns the metadata count. */
static int gguf_read_header(gguf_rd *rd, uint64_t *n_kv)
{
    char magic[4];
    uint32_t version;
    uint64_t n_tensors;
    /* Too short to hold the magic reads as "not a GGUF file", not as a
     * truncated one: an empty file is not a model. */
    if (rd->size < sizeof magic) {
        gguf_fail(rd, "not a GGUF file");
        return -1;
    }
    if (gguf_read(rd, magic, sizeof magic) != 0)
        return -1;
    if (memcmp(magic, GGUF_MAGIC, sizeof magic) != 0) {
        gguf_fail(rd, "not a GGUF file");
        return -1;
    }
    if (gguf_read_u32(rd, &version) != 0)
        return -1;
    if (version != 2 && version != 3) {
        uint32_t swapped = (version >> 24) | ((version >> 8) & 0xFF00u) |
                           ((version << 8) & 0xFF0000u) | (version << 24);
        if (swapped == 2 || swapped == 3)
            gguf_fail(rd, "big-endian GGUF files are not supported");
        else
            gguf_fail(rd, "GGUF version %" PRIu32 " is not supported (only 2 and 3)",
                      version);
        return -1;
    }
    if (gguf_read_u64(rd, &n_tensors) != 0 || gguf_read_u64(rd, n_kv) != 0)
        return -1;
    return 0;
}

/* Fills the derived fields of out from what the second scan found. */
static int gguf_resolve(gguf_rd *rd, const gguf_found *fd, gguf_model_info *out)
{
    const char *a = out->arch;
    if (!fd->seen[GGUF_W_BLOCKS]) {
        gguf_fail(rd, "missing %s%s", a, gguf_wants[GGUF_W_BLOCKS].suffix);
        return -1;
    }
    if (!fd->seen[GGUF_W_HEADS]) {
        gguf_fail(rd, "missing %s%s", a, gguf_wants[GGUF_W_HEADS].suffix);
        return -1;
    }
    out->n_layer = fd->val[GGUF_W_BLOCKS];
    out->n_head = fd->val[GGUF_W_HEADS];
    /* No head_count_kv means no grouped-query attention: one KV head per
     * query head. */
    out->n_head_kv = fd->seen[GGUF_W_HEADS_KV] ? fd->val[GGUF_W_HEADS_KV] : out->n_head;
    out->n_embd = fd->seen[GGUF_W_EMBD] ? fd->val[GGUF_W_EMBD] : -1;
    out->context_length = fd->seen[GGUF_W_CONTEXT] ? fd->val[GGUF_W_CONTEXT] : -1;

    bool need_default = !fd->seen[GGUF_W_KEY_LEN] || !fd->seen[GGUF_W_VALUE_LEN];
    int64_t head_dim = 0;
    if (need_default) {
        if (out->n_embd < 0) {
            gguf_fail(rd, "missing %s%s", a, gguf_wants[GGUF_W_EMBD].suffix);
            return -1;
        }
        head_dim = out->n_embd / out->n_head;
        if (head_dim < 1) {
            gguf_fail(rd, "%s%s %" PRId64 " is smaller than %s%s %" PRId64, a,
                      gguf_wants[GGUF_W_EMBD].suffix, out->n_embd, a,
                      gguf_wants[GGUF_W_HEADS].suffix, out->n_head);
            return -1;
        }
    }
    out->key_length = fd->seen[GGUF_W_KEY_LEN] ? fd->val[GGUF_W_KEY_LEN] : head_dim;
    out->value_length = fd->seen[GGUF_W_VALUE_LEN] ? fd->val[GGUF_W_VALUE_LEN] : head_dim;
    return 0;
}

int gguf_read_info(const char *path, gguf_model_info *out, char *errbuf, size_t errlen)
{
    gguf_rd rd = {.err = errbuf, .errlen = errlen};
    gguf_found fd = {0};
    uint64_t n_kv = 0;
    bool arch_found = false;
    struct stat st;

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (path == NULL || out == NULL) {
        gguf_fail(&rd, "no path given");
        goto fail;
    }
    memset(out, 0, sizeof *out);
    rd.f = fopen(path, "rb");
    if (rd.f == NULL) {
        gguf_fail(&rd, "cannot open: %s", strerror(errno));
        goto fail;
    }
    if (fstat(fileno(rd.f), &st) != 0) {
        gguf_fail(&rd, "cannot stat: %s", strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        gguf_fail(&rd, "is a directory");
        goto fail;
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 0) {
        gguf_fail(&rd, "not a regular file");
        goto fail;
    }
    rd.size = (uint64_t)st.st_size;
    out->file_size = rd.size;

    if (gguf_read_header(&rd, &n_kv) != 0)
        goto fail;
    if (gguf_scan(&rd, n_kv, true, out, &fd, &arch_found) != 0)
        goto fail;
    if (!arch_found) {
        gguf_fail(&rd, "missing general.architecture");
        goto fail;
    }
    if (fseeko(rd.f, (off_t)GGUF_HEADER_SIZE, SEEK_SET) != 0) {
        gguf_fail(&rd, "seek error: %s", strerror(errno));
        goto fail;
    }
    rd.pos = GGUF_HEADER_SIZE;
    rd.in_kv = false;
    if (gguf_scan(&rd, n_kv, false, out, &fd, &arch_found) != 0)
        goto fail;
    if (gguf_resolve(&rd, &fd, out) != 0)
        goto fail;
    fclose(rd.f);
    return 0;

fail:
    if (rd.f != NULL)
        fclose(rd.f);
    return -1;
}

/* Bytes per block of each cache type and elements per block: ggml's
 * quantized types store 32 elements per block with an f16 scale (and, for
 * the _1 types, an f16 minimum). */
static const struct gguf_cache_type {
    const char *name;
    uint64_t block_bytes;
    uint64_t block_elems;
} gguf_cache_types[] = {
    {"f32", 4, 1},    {"f16", 2, 1},    {"bf16", 2, 1},   {"q8_0", 34, 32},
    {"q4_0", 18, 32}, {"q4_1", 20, 32}, {"q5_0", 22, 32}, {"q5_1", 24, 32},
};

/* a * b into *out, false if it would not fit. */
static bool gguf_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return false;
    *out = a * b;
    return true;
}

/* Bytes of one layer's cache row of n elements: whole blocks, since a row
 * (all KV heads of one token in one layer) is stored in whole blocks. */
static bool gguf_row_bytes(uint64_t n, const struct gguf_cache_type *ct, uint64_t *out)
{
    uint64_t blocks = n / ct->block_elems + (n % ct->block_elems != 0);
    return gguf_mul(blocks, ct->block_bytes, out);
}

uint64_t gguf_kv_bytes_per_token(const gguf_model_info *mi, const char *cache_type)
{
    const struct gguf_cache_type *ct = NULL;
    if (mi == NULL || cache_type == NULL)
        return 0;
    for (size_t i = 0; i < sizeof gguf_cache_types / sizeof gguf_cache_types[0]; i++) {
        if (strcasecmp(cache_type, gguf_cache_types[i].name) == 0)
            ct = &gguf_cache_types[i];
    }
    if (ct == NULL || mi->n_layer <= 0 || mi->n_head_kv <= 0 || mi->key_length <= 0 ||
        mi->value_length <= 0)
        return 0;
    uint64_t k_elems, v_elems, k_bytes, v_bytes, total;
    if (!gguf_mul((uint64_t)mi->n_head_kv, (uint64_t)mi->key_length, &k_elems) ||
        !gguf_mul((uint64_t)mi->n_head_kv, (uint64_t)mi->value_length, &v_elems) ||
        !gguf_row_bytes(k_elems, ct, &k_bytes) ||
        !gguf_row_bytes(v_elems, ct, &v_bytes) || k_bytes > UINT64_MAX - v_bytes ||
        !gguf_mul((uint64_t)mi->n_layer, k_bytes + v_bytes, &total))
        return 0;
    return total;
}
