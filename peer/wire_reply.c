/* The announce reply's JSON (wire_reply.h). Beside wire.c rather than in it: a small,
 * separate body with its own parser, built and read with jansson as wire.c's are. */
#include "peer/wire_reply.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peer/wire.h"
#include "peer/wire_int.h"

#define RETRY_MAX ((uint64_t)1 << 53) /* exact in a JSON number read as a double */

int wire_reply_add(struct wire_reply *r, const struct digest *d, uint64_t retry_ms) {
        if (r->nfull >= WIRE_REPLY_MAX_FULL)
                return -ENOSPC;
        /* Grown by doubling: the array's capacity is the next power of two >= nfull. */
        if ((r->nfull & (r->nfull - 1)) == 0) {
                size_t cap = r->nfull ? (size_t)r->nfull * 2 : 4;
                struct wire_full *v = realloc(r->full, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                r->full = v;
        }
        r->full[r->nfull++] = (struct wire_full){.digest = *d, .retry_ms = retry_ms};
        return 0;
}

uint32_t wire_reply_ranges(const uint8_t *map, uint32_t nchunks, uint32_t limit) {
        uint32_t n = 0;
        bool prev = false;
        for (uint32_t i = 0; i < nchunks && n <= limit; i++) {
                if (i % 8 == 0 && nchunks - i >= 8 && map[i / 8] == (prev ? 0xff : 0x00)) {
                        i += 7; /* a whole byte that neither starts nor ends a run */
                        continue;
                }
                bool on = wire_bit(map, i);
                n += on && !prev;
                prev = on;
        }
        return n;
}

int wire_reply_add_covered(struct wire_reply *r, const struct digest *d, uint64_t retry_ms,
                           const uint8_t *covered, uint32_t nchunks) {
        if (nchunks == 0 || nchunks > WIRE_MAX_CHUNKS ||
            wire_reply_ranges(covered, nchunks, WIRE_REPLY_MAX_RANGES) > WIRE_REPLY_MAX_RANGES)
                return -EINVAL;
        size_t bytes = ((size_t)nchunks + 7) / 8;
        uint8_t *map = malloc(bytes);
        if (!map)
                return -ENOMEM;
        memcpy(map, covered, bytes);
        if (nchunks % 8) /* bits past the end stay clear: they are compared */
                map[bytes - 1] &= (uint8_t)((1u << (nchunks % 8)) - 1);
        int err = wire_reply_add(r, d, retry_ms);
        if (err < 0) {
                free(map);
                return err;
        }
        r->full[r->nfull - 1].covered = map;
        r->full[r->nfull - 1].nchunks = nchunks;
        return 0;
}

void wire_reply_free(struct wire_reply *r) {
        if (!r)
                return;
        for (uint32_t i = 0; i < r->nfull; i++)
                free(r->full[i].covered);
        free(r->full);
        r->full = NULL;
        r->nfull = 0;
}

int wire_reply_build(const struct wire_reply *r, char **ret, size_t *ret_len) {
        if (r->nfull > WIRE_REPLY_MAX_FULL)
                return -EINVAL;
        json_t *root = json_object(), *arr = json_array(), *cov = json_array();
        int err = -ENOMEM;
        if (!root || !arr || !cov || json_object_set(root, "full", arr) < 0)
                goto out;
        for (uint32_t i = 0; i < r->nfull; i++) {
                const struct wire_full *f = &r->full[i];
                char s[7 + DIGEST_HEX_LEN + 1], hex[DIGEST_HEX_LEN + 1];
                if (f->retry_ms == 0 || f->retry_ms > RETRY_MAX ||
                    (f->covered && (f->nchunks == 0 || f->nchunks > WIRE_MAX_CHUNKS))) {
                        err = -EINVAL;
                        goto out;
                }
                digest_to_hex(&f->digest, hex);
                snprintf(s, sizeof(s), "sha256:%s", hex);
                json_t *e =
                        json_pack("{s:s,s:I}", "digest", s, "retry_ms", (json_int_t)f->retry_ms);
                if (e && f->covered &&
                    (json_object_set_new(e, "chunks", json_integer(f->nchunks)) < 0 ||
                     json_object_set_new(e, "present", wr_ranges_json(f->covered, f->nchunks)) <
                             0)) {
                        json_decref(e);
                        goto out;
                }
                if (json_array_append_new(f->covered ? cov : arr, e) < 0)
                        goto out;
        }
        /* Only when there is one: an older sender reads "full" alone either way. */
        if (json_array_size(cov) && json_object_set(root, "covered", cov) < 0)
                goto out;
        char *text = json_dumps(root, JSON_COMPACT);
        if (!text)
                goto out;
        *ret = text;
        if (ret_len)
                *ret_len = strlen(text);
        err = 0;
out:
        json_decref(cov);
        json_decref(arr);
        json_decref(root);
        return err;
}

/* Appends the entries of ARR ("full", or with COVERED "covered") to R. 0 or -EINVAL, -ENOMEM,
 * -ENOSPC (R keeps what was added; the caller frees it). */
static int parse_list(json_t *arr, bool covered, struct wire_reply *r) {
        size_t bytes = 0; /* of "covered" bitmaps kept: the home's word sizes them */
        if (!arr)
                return 0;
        if (!json_is_array(arr) || json_array_size(arr) > WIRE_REPLY_MAX_FULL)
                return -EINVAL;
        for (size_t i = 0; i < json_array_size(arr); i++) {
                json_t *e = json_array_get(arr, i);
                json_t *d = json_object_get(e, "digest"), *t = json_object_get(e, "retry_ms");
                struct digest dg;
                uint64_t nchunks = 0;
                uint8_t *map = NULL;
                char why[64];
                int err;
                if (!json_is_object(e) || !json_is_string(d) || !json_is_integer(t) ||
                    digest_parse(json_string_value(d), &dg) < 0)
                        return -EINVAL;
                json_int_t ms = json_integer_value(t);
                if (ms <= 0 || (uint64_t)ms > RETRY_MAX)
                        return -EINVAL;
                if (!covered) {
                        if ((err = wire_reply_add(r, &dg, (uint64_t)ms)) < 0)
                                return err;
                        continue;
                }
                if (!wr_get_uint(e, "chunks", 1, WIRE_MAX_CHUNKS, &nchunks) ||
                    (bytes += (nchunks + 7) / 8) > WIRE_REPLY_MAX_COVERED_BYTES ||
                    wr_parse_ranges(json_object_get(e, "present"), (uint32_t)nchunks, &map,
                                    "present", "announce reply", why, sizeof(why)) < 0)
                        return -EINVAL;
                err = wire_reply_add_covered(r, &dg, (uint64_t)ms, map, (uint32_t)nchunks);
                free(map);
                if (err < 0)
                        return err;
        }
        return 0;
}

int wire_reply_parse(const char *body, size_t len, struct wire_reply *ret) {
        struct wire_reply r = {0};
        json_error_t jerr;
        int err = -EINVAL;

        memset(ret, 0, sizeof(*ret));
        if (len == 0 || len > WIRE_MAX_BODY || body[0] != '{')
                return 0; /* "ok\n" from an older home, or nothing */
        json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root || !json_is_object(root)) {
                json_decref(root);
                return -EINVAL;
        }
        json_t *arr = json_object_get(root, "full"), *cov = json_object_get(root, "covered");
        if (!arr && !cov) {
                json_decref(root);
                return 0;
        }
        if ((err = parse_list(arr, false, &r)) < 0 || (err = parse_list(cov, true, &r)) < 0) {
                if (err == -ENOSPC) /* both lists together past WIRE_REPLY_MAX_FULL */
                        err = -EINVAL;
                goto out;
        }
        *ret = r;
        json_decref(root);
        return 0;
out:
        wire_reply_free(&r);
        json_decref(root);
        return err;
}
