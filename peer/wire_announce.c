/* The announce (wire.h): a holder tells a blob's homes what it holds. Parsed, built and
 * compared here; the shared JSON helpers are in wire.c, the index records it carries are
 * shaped by wire_index.c. */
#include "peer/wire_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsing ------------------------------------------------------------------------- */

static int parse_blob(json_t *o, uint32_t chunk_size, size_t bi, uint64_t *total_chunks,
                      struct wire_blob *b, char *reason, size_t reason_len) {
        char who[32];
        uint64_t size;
        int r;

        snprintf(who, sizeof(who), "blob %zu", bi);
        if (!json_is_object(o))
                return wr_fail(reason, reason_len, "invalid %s: not an object", who);
        if (!wr_get_blob_digest(o, &b->digest))
                return wr_fail(reason, reason_len,
                               "invalid digest in %s: want \"sha256:<64 lowercase hex>\"", who);
        if (!wr_get_uint(o, "size", 0, INT64_MAX, &size))
                return wr_fail(reason, reason_len, "missing or invalid size in %s", who);
        b->size = size;
        b->nchunks = wr_nchunks_of(size, chunk_size);
        if (b->nchunks > WIRE_MAX_CHUNKS)
                return wr_fail(reason, reason_len, "too many chunks in %s: more than %u", who,
                               WIRE_MAX_CHUNKS);
        *total_chunks += b->nchunks;
        if (*total_chunks > WIRE_MAX_ANNOUNCE_CHUNKS)
                return wr_fail(reason, reason_len, "too many chunks in announce: more than %u",
                               WIRE_MAX_ANNOUNCE_CHUNKS);
        if (!wr_get_source(o, b->source))
                return wr_fail(reason, reason_len,
                               "missing or invalid source in %s: want \"registry/repository\"",
                               who);
        r = wr_parse_ranges(json_object_get(o, "present"), b->nchunks, &b->present, "present", who,
                            reason, reason_len);
        if (r < 0)
                return r;
        json_t *verified = json_object_get(o, "verified");
        if (verified && !json_is_boolean(verified))
                return wr_fail(reason, reason_len, "invalid verified in %s: not a boolean", who);
        b->verified = json_is_true(verified);

        /* The two lists of [idx,"<hex>"] pairs, parsed by one set of rules (wire.c). */
        struct {
                const struct wr_pair_list *k;
                uint32_t *n;
                uint32_t **idx;
                struct digest **val;
        } lists[] = {{&wr_digests, &b->ndigests, &b->sha_idx, &b->sha},
                     {&wr_chain, &b->nchain, &b->chain_idx, &b->chain}};
        for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
                struct wr_pairs p;

                r = wr_parse_pairs(o, lists[i].k, b->nchunks, false, &p, who, reason, reason_len);
                if (r < 0)
                        return r; /* what the lists before it took is freed with the announce */
                *lists[i].n = p.n;
                *lists[i].idx = p.idx;
                *lists[i].val = p.val;
        }
        return 0;
}

/* An announce's optional "indexes" (ARR may be NULL: none) into A. */
static int parse_indexes(json_t *arr, struct wire_announce *a, char *reason, size_t reason_len) {
        json_t *o;
        size_t i, n;

        if (!arr)
                return 0;
        if (!json_is_array(arr))
                return wr_fail(reason, reason_len, "invalid indexes: not an array");
        n = json_array_size(arr);
        if (n > WIRE_MAX_INDEXES)
                return wr_fail(reason, reason_len, "too many indexes: %zu, max %u", n,
                               WIRE_MAX_INDEXES);
        if (n == 0)
                return 0;
        a->indexes = calloc(n, sizeof(*a->indexes));
        if (!a->indexes)
                return -ENOMEM;
        a->nindexes = (uint32_t)n;
        json_array_foreach(arr, i, o) {
                if (!wr_get_index(o, &a->indexes[i]))
                        return wr_fail(reason, reason_len,
                                       "invalid index %zu: want layer and index digests and a size "
                                       "1..%" PRId64,
                                       i, INT64_MAX);
        }
        return 0;
}

int wire_announce_parse(const char *body, size_t len, struct wire_announce *ret, char *reason,
                        size_t reason_len) {
        struct wire_announce a;
        uint64_t cs, total = 0;
        json_t *root, *blobs, *o;
        size_t i, n;
        int r = 0;

        memset(&a, 0, sizeof(a));
        root = wr_load(body, len, reason, reason_len, &r);
        if (!root)
                return r;
        if (!wr_get_node(root, "node", a.node)) {
                r = wr_fail(
                        reason, reason_len,
                        "missing or invalid node: want numeric \"ipv4:port\" or \"[ipv6]:port\"");
                goto out_free;
        }
        if (!wr_get_uint(root, "chunk_size", 1, UINT32_MAX, &cs)) {
                r = wr_fail(reason, reason_len, "missing or invalid chunk_size: want 1..%" PRIu32,
                            UINT32_MAX);
                goto out_free;
        }
        a.chunk_size = (uint32_t)cs;
        if (json_object_get(root, "boot") && !wr_get_uint(root, "boot", 1, INT64_MAX, &a.boot)) {
                r = wr_fail(reason, reason_len, "invalid boot: want 1..%" PRId64, INT64_MAX);
                goto out_free;
        }
        blobs = json_object_get(root, "blobs");
        if (!json_is_array(blobs)) {
                r = wr_fail(reason, reason_len, "missing or non-array blobs");
                goto out_free;
        }
        n = json_array_size(blobs);
        if (n > WIRE_MAX_BLOBS) {
                r = wr_fail(reason, reason_len, "too many blobs: %zu, max %u", n, WIRE_MAX_BLOBS);
                goto out_free;
        }
        a.blobs = calloc(n ? n : 1, sizeof(*a.blobs));
        if (!a.blobs) {
                r = -ENOMEM;
                goto out_free;
        }
        json_array_foreach(blobs, i, o) {
                a.nblobs = (uint32_t)i + 1; /* so that out_free frees a half-parsed blob */
                r = parse_blob(o, a.chunk_size, i, &total, &a.blobs[i], reason, reason_len);
                if (r < 0)
                        goto out_free;
        }
        r = parse_indexes(json_object_get(root, "indexes"), &a, reason, reason_len);
        if (r < 0)
                goto out_free;
        json_decref(root);
        *ret = a;
        return 0;

out_free:
        wire_announce_free(&a);
        json_decref(root);
        return r;
}

void wire_announce_free(struct wire_announce *a) {
        if (!a)
                return;
        for (uint32_t i = 0; a->blobs && i < a->nblobs; i++) {
                free(a->blobs[i].present);
                free(a->blobs[i].sha_idx);
                free(a->blobs[i].sha);
                free(a->blobs[i].chain_idx);
                free(a->blobs[i].chain);
        }
        free(a->blobs);
        a->blobs = NULL;
        a->nblobs = 0;
        free(a->indexes);
        a->indexes = NULL;
        a->nindexes = 0;
}

/* ---- building ------------------------------------------------------------------------ */

/* Whether N pairs IDX/VAL are a list the parser takes: indexes increasing and < LIMIT. */
static bool pairs_valid(uint32_t n, const uint32_t *idx, const struct digest *val, uint32_t limit) {
        if (n > limit || (n > 0 && (!idx || !val)))
                return false;
        for (uint32_t i = 0; i < n; i++)
                if (idx[i] >= limit || (i > 0 && idx[i] <= idx[i - 1]))
                        return false;
        return true;
}

static int check_blob(const struct wire_blob *b, uint32_t chunk_size) {
        if (b->size > INT64_MAX || wr_nchunks_of(b->size, chunk_size) != b->nchunks ||
            b->nchunks > WIRE_MAX_CHUNKS || (b->nchunks > 0 && !b->present) ||
            !wr_source_valid(b->source) ||
            !pairs_valid(b->ndigests, b->sha_idx, b->sha, b->nchunks) ||
            !pairs_valid(b->nchain, b->chain_idx, b->chain, b->nchunks ? b->nchunks - 1 : 0))
                return -EINVAL;
        return 0;
}

/* N pairs IDX/VAL as [[idx,"<hex>"], ...]; NULL on allocation failure. */
static json_t *pairs_json(uint32_t n, const uint32_t *idx, const struct digest *val) {
        json_t *arr = json_array();

        for (uint32_t i = 0; arr && i < n; i++)
                if (json_array_append_new(arr, wr_digest_pair_json(idx[i], &val[i])) < 0) {
                        json_decref(arr);
                        return NULL;
                }
        return arr;
}

static json_t *blob_json(const struct wire_blob *b) {
        json_t *o = json_object();
        bool ok;

        if (!o)
                return NULL;
        ok = json_object_set_new(o, "digest", wr_blob_digest_json(&b->digest)) == 0 &&
             json_object_set_new(o, "size", json_integer((json_int_t)b->size)) == 0 &&
             json_object_set_new(o, "source", json_string(b->source)) == 0 &&
             json_object_set_new(o, "present", wr_ranges_json(b->present, b->nchunks)) == 0 &&
             json_object_set_new(o, "digests", pairs_json(b->ndigests, b->sha_idx, b->sha)) == 0 &&
             (!b->nchain ||
              json_object_set_new(o, "chain", pairs_json(b->nchain, b->chain_idx, b->chain)) ==
                      0) &&
             (!b->verified || json_object_set_new(o, "verified", json_true()) == 0);
        if (!ok) {
                json_decref(o);
                return NULL;
        }
        return o;
}

int wire_announce_build(const struct wire_announce *a, char **ret, size_t *ret_len) {
        json_t *root, *blobs;
        uint64_t total = 0;
        bool ok;

        if (!wire_node_id_valid(a->node) || a->chunk_size == 0 || a->nblobs > WIRE_MAX_BLOBS ||
            (a->nblobs > 0 && !a->blobs) || a->boot > INT64_MAX || a->nindexes > WIRE_MAX_INDEXES ||
            (a->nindexes > 0 && !a->indexes))
                return -EINVAL;
        for (uint32_t i = 0; i < a->nindexes; i++)
                if (a->indexes[i].size == 0 || a->indexes[i].size > INT64_MAX)
                        return -EINVAL;
        for (uint32_t i = 0; i < a->nblobs; i++) {
                if (check_blob(&a->blobs[i], a->chunk_size) < 0)
                        return -EINVAL;
                total += a->blobs[i].nchunks;
        }
        if (total > WIRE_MAX_ANNOUNCE_CHUNKS)
                return -EMSGSIZE;

        root = json_object();
        blobs = json_array();
        ok = root && blobs;
        for (uint32_t i = 0; ok && i < a->nblobs; i++)
                ok = json_array_append_new(blobs, blob_json(&a->blobs[i])) == 0;
        if (!ok) {
                json_decref(blobs);
                json_decref(root);
                return -ENOMEM;
        }
        ok = json_object_set_new(root, "node", json_string(a->node)) == 0 &&
             json_object_set_new(root, "chunk_size", json_integer(a->chunk_size)) == 0 &&
             (!a->boot ||
              json_object_set_new(root, "boot", json_integer((json_int_t)a->boot)) == 0) &&
             json_object_set_new(root, "blobs", blobs) == 0;
        if (ok && a->nindexes > 0) {
                json_t *ix = json_array();

                ok = ix && json_object_set_new(root, "indexes", ix) == 0;
                for (uint32_t i = 0; ok && i < a->nindexes; i++)
                        ok = json_array_append_new(ix, wr_index_json(&a->indexes[i])) == 0;
        }
        if (!ok) {
                json_decref(root);
                return -ENOMEM;
        }
        return wr_dump(root, ret, ret_len);
}

/* ---- comparison ---------------------------------------------------------------------- */

static bool pairs_equal(uint32_t na, const uint32_t *ia, const struct digest *va, uint32_t nb,
                        const uint32_t *ib, const struct digest *vb) {
        if (na != nb)
                return false;
        for (uint32_t j = 0; j < na; j++)
                if (ia[j] != ib[j] || !digest_equal(&va[j], &vb[j]))
                        return false;
        return true;
}

bool wire_announce_equal(const struct wire_announce *a, const struct wire_announce *b) {
        if (strcmp(a->node, b->node) != 0 || a->chunk_size != b->chunk_size ||
            a->nblobs != b->nblobs || a->boot != b->boot || a->nindexes != b->nindexes)
                return false;
        for (uint32_t i = 0; i < a->nindexes; i++)
                if (!wire_index_equal(&a->indexes[i], &b->indexes[i]))
                        return false;
        for (uint32_t i = 0; i < a->nblobs; i++) {
                const struct wire_blob *x = &a->blobs[i], *y = &b->blobs[i];

                if (!digest_equal(&x->digest, &y->digest) || x->size != y->size ||
                    x->nchunks != y->nchunks || strcmp(x->source, y->source) != 0 ||
                    !wr_bitmap_equal(x->present, y->present, x->nchunks) ||
                    x->verified != y->verified ||
                    !pairs_equal(x->ndigests, x->sha_idx, x->sha, y->ndigests, y->sha_idx,
                                 y->sha) ||
                    !pairs_equal(x->nchain, x->chain_idx, x->chain, y->nchain, y->chain_idx,
                                 y->chain))
                        return false;
        }
        return true;
}
