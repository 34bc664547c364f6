/* The locate answer (wire.h): a home tells a reader who holds, and who fetches, which
 * chunks of a blob, with the chunk digests it knows. Parsed, built and compared here; the
 * shared JSON helpers are in wire.c. */
#include "peer/wire_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsing ------------------------------------------------------------------------- */

/* One list of the answer ("holders" or "fetching") appended to L->holders. */
static int parse_holders(json_t *arr, bool fetching, struct wire_locate *l, char *reason,
                         size_t reason_len) {
        const char *list = fetching ? "fetching" : "holders";
        size_t first = l->nholders, i;
        json_t *o;
        int r;

        if (!arr)
                return 0; /* optional: none */
        if (!json_is_array(arr))
                return wr_fail(reason, reason_len, "invalid %s: not an array", list);
        if (json_array_size(arr) > WIRE_MAX_HOLDERS)
                return wr_fail(reason, reason_len, "too many %s: %zu, max %u", list,
                               json_array_size(arr), WIRE_MAX_HOLDERS);
        json_array_foreach(arr, i, o) {
                struct wire_holder *h = &l->holders[l->nholders];
                char who[48];

                snprintf(who, sizeof(who), "%s %zu", list, i);
                if (!json_is_object(o))
                        return wr_fail(reason, reason_len, "invalid %s: not an object", who);
                if (!wr_get_node(o, "node", h->node))
                        return wr_fail(reason, reason_len, "missing or invalid node in %s", who);
                for (size_t j = first; j < l->nholders; j++)
                        if (strcmp(l->holders[j].node, h->node) == 0)
                                return wr_fail(reason, reason_len, "duplicate node in %s", who);
                h->fetching = fetching;
                r = wr_parse_ranges(json_object_get(o, fetching ? "chunks" : "present"), l->nchunks,
                                    &h->present, fetching ? "chunks" : "present", who, reason,
                                    reason_len);
                if (r < 0)
                        return r;
                l->nholders++;
        }
        return 0;
}

static int parse_locate(json_t *root, struct wire_locate *l, char *reason, size_t reason_len) {
        json_t *holders, *fetching, *claim;
        uint64_t v;
        int r;

        if (!wr_get_blob_digest(root, &l->digest))
                return wr_fail(reason, reason_len,
                               "missing or invalid digest: want \"sha256:<64 lowercase hex>\"");
        if (!wr_get_uint(root, "size", 0, INT64_MAX, &l->size))
                return wr_fail(reason, reason_len, "missing or invalid size");
        if (!wr_get_uint(root, "chunk_size", 1, UINT32_MAX, &v))
                return wr_fail(reason, reason_len,
                               "missing or invalid chunk_size: want 1..%" PRIu32, UINT32_MAX);
        l->chunk_size = (uint32_t)v;
        l->nchunks = wr_nchunks_of(l->size, l->chunk_size);
        if (l->nchunks > WIRE_MAX_CHUNKS)
                return wr_fail(reason, reason_len, "too many chunks: more than %u",
                               WIRE_MAX_CHUNKS);
        if (!wr_get_source(root, l->source))
                return wr_fail(reason, reason_len,
                               "missing or invalid source: want \"registry/repository\"");

        holders = json_object_get(root, "holders");
        fetching = json_object_get(root, "fetching");
        claim = json_object_get(root, "claim");

        struct wr_pairs p;
        r = wr_parse_pairs(root, &wr_digests, l->nchunks, true, &p, "answer", reason, reason_len);
        if (r < 0)
                return r;
        l->sha = p.val;
        l->sha_known = p.known;
        r = wr_parse_pairs(root, &wr_chain, l->nchunks, true, &p, "answer", reason, reason_len);
        if (r < 0)
                return r;
        l->chain = p.val; /* NULL when absent (older homes): readers check chain_known */
        l->chain_known = p.known;
        /* The digests' arrays are there even when none came (wire.h), for readers to test. */
        if (!l->sha)
                l->sha = calloc(l->nchunks ? l->nchunks : 1, sizeof(*l->sha));
        if (!l->sha_known)
                l->sha_known = calloc(1, wr_bitmap_bytes(l->nchunks));
        l->holders = calloc(2 * WIRE_MAX_HOLDERS, sizeof(*l->holders));
        if (!l->sha || !l->sha_known || !l->holders)
                return -ENOMEM;
        r = wr_parse_subset(json_object_get(root, "verified"), l->nchunks, l->sha_known, "digest",
                            &l->sha_verified, "verified", "answer", reason, reason_len);
        if (r < 0)
                return r;
        if (!l->sha_verified)
                l->sha_verified = calloc(1, wr_bitmap_bytes(l->nchunks));
        if (!l->sha_verified)
                return -ENOMEM;
        r = wr_parse_subset(json_object_get(root, "chain_verified"), l->nchunks, l->chain_known,
                            "chain value", &l->chain_verified, "chain_verified", "answer", reason,
                            reason_len);
        if (r < 0)
                return r;

        r = parse_holders(holders, false, l, reason, reason_len);
        if (r < 0)
                return r;
        r = parse_holders(fetching, true, l, reason, reason_len);
        if (r < 0)
                return r;

        if (claim) {
                json_t *granted = json_object_get(claim, "granted");

                if (!json_is_object(claim) || !wr_get_uint(claim, "chunk", 0, UINT32_MAX, &v) ||
                    v >= l->nchunks || !json_is_boolean(granted))
                        return wr_fail(reason, reason_len,
                                       "invalid claim: want {\"chunk\":<index < %" PRIu32
                                       ">,\"granted\":<bool>}",
                                       l->nchunks);
                l->has_claim = true;
                l->claim_chunk = (uint32_t)v;
                l->claim_granted = json_is_true(granted);
        }
        if (json_object_get(root, "ttl_ms")) {
                if (!wr_get_uint(root, "ttl_ms", 1, WIRE_MAX_LOCATE_TTL_MS, &v))
                        return wr_fail(reason, reason_len, "invalid ttl_ms: want 1..%u",
                                       WIRE_MAX_LOCATE_TTL_MS);
                l->ttl_ms = (uint32_t)v;
        }
        return 0;
}

int wire_locate_parse(const char *body, size_t len, struct wire_locate *ret, char *reason,
                      size_t reason_len) {
        struct wire_locate l;
        json_t *root;
        int r = 0;

        memset(&l, 0, sizeof(l));
        root = wr_load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        r = parse_locate(root, &l, reason, reason_len);
        json_decref(root);
        if (r < 0) {
                wire_locate_free(&l);
                return r;
        }
        *ret = l;
        return 0;
}

void wire_locate_free(struct wire_locate *l) {
        if (!l)
                return;
        for (uint32_t i = 0; l->holders && i < l->nholders; i++)
                free(l->holders[i].present);
        free(l->holders);
        free(l->sha);
        free(l->sha_known);
        free(l->sha_verified);
        free(l->chain);
        free(l->chain_known);
        free(l->chain_verified);
        l->holders = NULL;
        l->sha = NULL;
        l->sha_known = NULL;
        l->sha_verified = NULL;
        l->chain = NULL;
        l->chain_known = NULL;
        l->chain_verified = NULL;
        l->nholders = 0;
}

/* ---- building ------------------------------------------------------------------------ */

static int check_locate(const struct wire_locate *l) {
        uint32_t n[2] = {0, 0};

        if (l->chunk_size == 0 || l->size > INT64_MAX ||
            wr_nchunks_of(l->size, l->chunk_size) != l->nchunks || l->nchunks > WIRE_MAX_CHUNKS ||
            !wr_source_valid(l->source) || (l->sha_known && !l->sha) ||
            (l->nholders > 0 && !l->holders) || (l->has_claim && l->claim_chunk >= l->nchunks) ||
            l->ttl_ms > WIRE_MAX_LOCATE_TTL_MS || (l->chain_known && !l->chain))
                return -EINVAL;
        /* The last chunk's chain value is the blob digest: the parser refuses one. */
        if (l->chain_known && l->nchunks > 0 && wire_bit(l->chain_known, l->nchunks - 1))
                return -EINVAL;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];

                if (!wire_node_id_valid(h->node) || (l->nchunks > 0 && !h->present) ||
                    ++n[h->fetching] > WIRE_MAX_HOLDERS)
                        return -EINVAL;
                for (uint32_t j = 0; j < i; j++)
                        if (l->holders[j].fetching == h->fetching &&
                            strcmp(l->holders[j].node, h->node) == 0)
                                return -EINVAL;
        }
        return 0;
}

/* The holders of L that are (FETCHING) or are not fetching, as JSON. */
static json_t *holders_json(const struct wire_locate *l, bool fetching) {
        json_t *arr = json_array();

        if (!arr)
                return NULL;
        for (uint32_t i = 0; i < l->nholders; i++) {
                const struct wire_holder *h = &l->holders[i];
                json_t *o;

                if (h->fetching != fetching)
                        continue;
                o = json_object();
                if (!o || json_object_set_new(o, "node", json_string(h->node)) < 0 ||
                    json_object_set_new(o, fetching ? "chunks" : "present",
                                        wr_ranges_json(h->present, l->nchunks)) < 0 ||
                    json_array_append_new(arr, o) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        }
        return arr;
}

/* The values VAL of the chunks whose bit KNOWN (NULL: none) has, as [[idx,"<hex>"], ...]. */
static json_t *pairs_json(const uint8_t *known, const struct digest *val, uint32_t nchunks) {
        json_t *arr = json_array();

        if (!arr)
                return NULL;
        for (uint32_t i = 0; known && i < nchunks; i++) {
                if (i % 8 == 0 && known[i / 8] == 0) {
                        i += 7;
                        continue;
                }
                if (wire_bit(known, i) &&
                    json_array_append_new(arr, wr_digest_pair_json(i, &val[i])) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        }
        return arr;
}

/* The chunks in both KNOWN and VERIFIED (either NULL: none), as ranges in *RET: NULL when
 * there are none (the key is then left out). 0 or -ENOMEM. */
static int subset_json(const uint8_t *known, const uint8_t *verified, uint32_t nchunks,
                       json_t **ret) {
        uint8_t *map;
        bool any = false;

        *ret = NULL;
        if (!known || !verified)
                return 0;
        map = calloc(1, wr_bitmap_bytes(nchunks));
        if (!map)
                return -ENOMEM;
        for (size_t i = 0; i < wr_bitmap_bytes(nchunks); i++) {
                map[i] = verified[i] & known[i];
                any |= map[i] != 0;
        }
        if (nchunks % 8) /* bits past the end are not chunks */
                map[nchunks / 8] &= (uint8_t)((1u << (nchunks % 8)) - 1);
        if (any)
                *ret = wr_ranges_json(map, nchunks);
        free(map);
        return any && !*ret ? -ENOMEM : 0;
}

/* Sets ROOT[KEY] to ranges V (consumed) when there are any; whether that went well. */
static bool set_ranges(json_t *root, const char *key, json_t *v) {
        return !v || json_object_set_new(root, key, v) == 0;
}

int wire_locate_build(const struct wire_locate *l, char **ret, size_t *ret_len) {
        json_t *root, *verified = NULL, *chain_verified = NULL;
        bool ok, chain = false;

        if (check_locate(l) < 0)
                return -EINVAL;
        for (uint32_t i = 0; l->chain_known && !chain && i < (l->nchunks + 7) / 8; i++)
                chain = l->chain_known[i] != 0;
        if (subset_json(l->sha_known, l->sha_verified, l->nchunks, &verified) < 0 ||
            subset_json(l->chain_known, l->chain_verified, l->nchunks, &chain_verified) < 0) {
                json_decref(verified);
                return -ENOMEM;
        }
        root = json_object();
        ok = root && json_object_set_new(root, "digest", wr_blob_digest_json(&l->digest)) == 0 &&
             json_object_set_new(root, "size", json_integer((json_int_t)l->size)) == 0 &&
             json_object_set_new(root, "source", json_string(l->source)) == 0 &&
             json_object_set_new(root, "chunk_size", json_integer(l->chunk_size)) == 0 &&
             json_object_set_new(root, "digests", pairs_json(l->sha_known, l->sha, l->nchunks)) ==
                     0 &&
             (!chain ||
              json_object_set_new(root, "chain",
                                  pairs_json(l->chain_known, l->chain, l->nchunks)) == 0) &&
             json_object_set_new(root, "holders", holders_json(l, false)) == 0 &&
             json_object_set_new(root, "fetching", holders_json(l, true)) == 0;
        /* Set (and so owned by ROOT) or dropped here, whatever happened above. */
        if (ok) {
                ok = set_ranges(root, "verified", verified);
                verified = NULL;
                ok = set_ranges(root, "chain_verified", chain_verified) && ok;
                chain_verified = NULL;
        }
        json_decref(verified);
        json_decref(chain_verified);
        if (ok && l->has_claim)
                ok = json_object_set_new(root, "claim",
                                         json_pack("{s:I,s:b}", "chunk", (json_int_t)l->claim_chunk,
                                                   "granted", (int)l->claim_granted)) == 0;
        if (ok && l->ttl_ms)
                ok = json_object_set_new(root, "ttl_ms", json_integer(l->ttl_ms)) == 0;
        if (!ok) {
                json_decref(root);
                return -ENOMEM;
        }
        return wr_dump(root, ret, ret_len);
}

/* ---- comparison ---------------------------------------------------------------------- */

/* Byte I of bitmap KNOWN (NULL: none) of NCHUNKS bits, bits past nchunks cleared. */
static uint8_t known_byte(const uint8_t *known, uint32_t nchunks, uint32_t i) {
        uint32_t rest = nchunks - i * 8;
        uint8_t b = known ? known[i] : 0;

        return rest >= 8 ? b : (uint8_t)(b & ((1u << rest) - 1));
}

/* Whether two dense lists of NCHUNKS values (as the answer keeps "digests" and "chain") say
 * the same: the same chunks known, the same values there, the same verified among them. */
static bool dense_equal(const uint8_t *ka, const struct digest *va, const uint8_t *ra,
                        const uint8_t *kb, const struct digest *vb, const uint8_t *rb,
                        uint32_t nchunks) {
        for (uint32_t i = 0; i < (nchunks + 7) / 8; i++) {
                uint8_t k = known_byte(ka, nchunks, i);

                if (k != known_byte(kb, nchunks, i) ||
                    (known_byte(ra, nchunks, i) & k) != (known_byte(rb, nchunks, i) & k))
                        return false;
                for (uint32_t j = 0; k && j < 8; j++)
                        if ((k & (1u << j)) && !digest_equal(&va[i * 8 + j], &vb[i * 8 + j]))
                                return false;
        }
        return true;
}

bool wire_locate_equal(const struct wire_locate *a, const struct wire_locate *b) {
        if (!digest_equal(&a->digest, &b->digest) || a->size != b->size ||
            a->chunk_size != b->chunk_size || a->nchunks != b->nchunks ||
            strcmp(a->source, b->source) != 0 || a->nholders != b->nholders ||
            a->has_claim != b->has_claim || a->ttl_ms != b->ttl_ms)
                return false;
        if (a->has_claim &&
            (a->claim_chunk != b->claim_chunk || a->claim_granted != b->claim_granted))
                return false;
        if (!dense_equal(a->sha_known, a->sha, a->sha_verified, b->sha_known, b->sha,
                         b->sha_verified, a->nchunks) ||
            !dense_equal(a->chain_known, a->chain, a->chain_verified, b->chain_known, b->chain,
                         b->chain_verified, a->nchunks))
                return false;
        for (uint32_t i = 0; i < a->nholders; i++) {
                const struct wire_holder *x = &a->holders[i], *y = &b->holders[i];

                if (strcmp(x->node, y->node) != 0 || x->fetching != y->fetching ||
                    !wr_bitmap_equal(x->present, y->present, a->nchunks))
                        return false;
        }
        return true;
}
