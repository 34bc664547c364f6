/* The announce reply's JSON (wire_reply.h). Beside wire.c rather than in it: a small,
 * separate body with its own parser, built and read with jansson as wire.c's are. */
#include "peer/wire_reply.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peer/wire.h"

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

void wire_reply_free(struct wire_reply *r) {
        if (!r)
                return;
        free(r->full);
        r->full = NULL;
        r->nfull = 0;
}

int wire_reply_build(const struct wire_reply *r, char **ret, size_t *ret_len) {
        if (r->nfull > WIRE_REPLY_MAX_FULL)
                return -EINVAL;
        json_t *root = json_object(), *arr = json_array();
        int err = -ENOMEM;
        if (!root || !arr || json_object_set(root, "full", arr) < 0)
                goto out;
        for (uint32_t i = 0; i < r->nfull; i++) {
                char s[7 + DIGEST_HEX_LEN + 1], hex[DIGEST_HEX_LEN + 1];
                if (r->full[i].retry_ms == 0 || r->full[i].retry_ms > RETRY_MAX) {
                        err = -EINVAL;
                        goto out;
                }
                digest_to_hex(&r->full[i].digest, hex);
                snprintf(s, sizeof(s), "sha256:%s", hex);
                if (json_array_append_new(arr, json_pack("{s:s,s:I}", "digest", s, "retry_ms",
                                                         (json_int_t)r->full[i].retry_ms)) < 0)
                        goto out;
        }
        char *text = json_dumps(root, JSON_COMPACT);
        if (!text)
                goto out;
        *ret = text;
        if (ret_len)
                *ret_len = strlen(text);
        err = 0;
out:
        json_decref(arr);
        json_decref(root);
        return err;
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
        json_t *arr = json_object_get(root, "full");
        if (!arr) {
                json_decref(root);
                return 0;
        }
        if (!json_is_array(arr) || json_array_size(arr) > WIRE_REPLY_MAX_FULL)
                goto out;
        for (size_t i = 0; i < json_array_size(arr); i++) {
                json_t *e = json_array_get(arr, i);
                json_t *d = json_object_get(e, "digest"), *t = json_object_get(e, "retry_ms");
                struct digest dg;
                if (!json_is_object(e) || !json_is_string(d) || !json_is_integer(t) ||
                    digest_parse(json_string_value(d), &dg) < 0)
                        goto out;
                json_int_t ms = json_integer_value(t);
                if (ms <= 0 || (uint64_t)ms > RETRY_MAX)
                        goto out;
                if ((err = wire_reply_add(&r, &dg, (uint64_t)ms)) < 0)
                        goto out;
                err = -EINVAL;
        }
        *ret = r;
        json_decref(root);
        return 0;
out:
        wire_reply_free(&r);
        json_decref(root);
        return err;
}
