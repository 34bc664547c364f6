/* UTF-8 in a request's string fields. See pbstrings.h for the contract.
 *
 * The protobuf wire format is a sequence of (tag, value): the tag a varint, field number << 3
 * | wire type; the value a varint (type 0), 8 bytes (1), a varint length and that many bytes
 * (2: strings, bytes, nested messages, map entries, packed repeated scalars), or 4 bytes (5).
 * Only type 2 values of fields the descriptor calls strings or messages are looked into; the
 * rest is skipped by its wire type. Groups (3, 4) are refused, as protobuf-c refuses them.
 * Recursion is bounded by PBSTR_MAX_DEPTH; every length is checked against what is left of
 * its enclosing value before it is used. */
#include "snapshot/pbstrings.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"
#include "util/utf8.h"

#define SHOWN_BYTES 48 /* of a refused string, escaped, in WHY */

/* Reads a varint at *P (before END) into *RET, advancing *P. false when it runs past END or
 * past 10 bytes. */
static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret) {
        uint64_t v = 0;
        for (unsigned shift = 0; shift < 70; shift += 7) {
                if (*p >= end)
                        return false;
                uint8_t b = *(*p)++;
                v |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *ret = v;
                        return true;
                }
        }
        return false;
}

/* The path PREFIX.NAME into OUT (CAP bytes). */
static void join_path(const char *prefix, const char *name, char *out, size_t cap) {
        if (prefix[0])
                snprintf(out, cap, "%s.%s", prefix, name);
        else
                snprintf(out, cap, "%s", name);
}

static int refuse_string(const char *path, const uint8_t *s, size_t n, const char *what, char *why,
                         size_t cap) {
        char shown[4 * SHOWN_BYTES + 3];
        log_escape((const char *)s, n < SHOWN_BYTES ? n : SHOWN_BYTES, true, shown, sizeof(shown));
        snprintf(why, cap, "field %s %s: \"%s\"%s", path, what, shown,
                 n > SHOWN_BYTES ? "..." : "");
        return -EILSEQ;
}

static int check_string(const char *path, const uint8_t *s, size_t n, char *why, size_t cap) {
        if (!utf8_valid(s, n))
                return refuse_string(path, s, n, "is not UTF-8", why, cap);
        if (memchr(s, 0, n))
                return refuse_string(path, s, n, "holds a NUL byte", why, cap);
        return 0;
}

static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p, const uint8_t *end,
                const char *path, unsigned depth, char *why, size_t cap) {
        if (depth > PBSTR_MAX_DEPTH) {
                snprintf(why, cap, "messages nested deeper than %d at %s", PBSTR_MAX_DEPTH, path);
                return -EBADMSG;
        }
        while (p < end) {
                uint64_t tag, v;
                if (!read_varint(&p, end, &tag) || tag >> 3 > UINT32_MAX) {
                        snprintf(why, cap, "bad tag in %s", path[0] ? path : "the request");
                        return -EBADMSG;
                }
                if (tag >> 3 == 0) { /* protobuf-c skips it when its varint is not minimal */
                        snprintf(why, cap, "field number 0 in %s", path[0] ? path : "the request");
                        return -EBADMSG;
                }
                unsigned wire = (unsigned)(tag & 7);
                const ProtobufCFieldDescriptor *f =
                        protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
                bool ok = true;
                switch (wire) {
                case 0:
                        ok = read_varint(&p, end, &v);
                        break;
                case 1:
                case 5: {
                        size_t n = wire == 1 ? 8 : 4;
                        ok = (size_t)(end - p) >= n;
                        if (ok)
                                p += n;
                        break;
                }
                case 2: {
                        ok = read_varint(&p, end, &v) && v <= (uint64_t)(end - p);
                        if (!ok)
                                break;
                        const uint8_t *val = p;
                        p += v;
                        if (!f || (f->type != PROTOBUF_C_TYPE_STRING &&
                                   f->type != PROTOBUF_C_TYPE_MESSAGE))
                                break;
                        char sub[256];
                        join_path(path, f->name, sub, sizeof(sub));
                        int r = f->type == PROTOBUF_C_TYPE_STRING
                                        ? check_string(sub, val, (size_t)v, why, cap)
                                        : walk(f->descriptor, val, val + v, sub, depth + 1, why,
                                               cap);
                        if (r < 0)
                                return r;
                        break;
                }
                default: /* groups (3, 4), and 6, 7 that do not exist */
                        ok = false;
                }
                if (!ok) {
                        snprintf(why, cap, "bad field %u in %s", (unsigned)(tag >> 3),
                                 path[0] ? path : "the request");
                        return -EBADMSG;
                }
        }
        return 0;
}

int pbstr_check(const ProtobufCMessageDescriptor *desc, const uint8_t *buf, size_t len, char *why,
                size_t cap) {
        if (cap)
                why[0] = '\0';
        if (len == 0)
                return 0; /* every field at its default (and BUF may be NULL) */
        return walk(desc, buf, buf + len, "", 0, why, cap);
}
