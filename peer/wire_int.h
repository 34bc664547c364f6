/* peer/wire's private header (engine/engine_int.h's habit): the JSON helpers that wire.c
 * defines and every message family's file (wire_announce.c, wire_locate.c, wire_index.c)
 * calls. Nothing outside peer/wire*.c includes it; the contract is wire.h.
 *
 * Internal functions are named wr_*. Like the public ones they are pure: no state, no locks,
 * no logging. A parsing helper that fails writes a lowercase REASON and returns -EINVAL
 * (wr_fail) or, for the get_* predicates, false, and leaves its output unspecified. */
#pragma once
#include "peer/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>

#define DIGEST_STR_LEN (7 + DIGEST_HEX_LEN) /* "sha256:<hex>" */

static inline size_t wr_bitmap_bytes(uint32_t nchunks) {
        return nchunks == 0 ? 1 : ((size_t)nchunks + 7) / 8; /* never malloc(0) */
}

/* ceil(SIZE / CHUNK_SIZE), or WIRE_MAX_CHUNKS + 1 for anything larger than the limit. */
static inline uint32_t wr_nchunks_of(uint64_t size, uint32_t chunk_size) {
        uint64_t n = size / chunk_size + (size % chunk_size != 0);

        return n > WIRE_MAX_CHUNKS ? WIRE_MAX_CHUNKS + 1 : (uint32_t)n;
}

/* Formats REASON (NULL-safe) and returns -EINVAL. */
__attribute__((format(printf, 3, 4))) int wr_fail(char *reason, size_t reason_len, const char *fmt,
                                                  ...);

/* ---- wire.c: parsing helpers ---- */

bool wr_get_uint(json_t *obj, const char *key, uint64_t min, uint64_t max, uint64_t *ret);
bool wr_get_node(json_t *obj, const char *key, char out[PEER_ID_MAX]);
bool wr_source_valid(const char *s);
bool wr_get_source(json_t *obj, char out[IDX_SOURCE_MAX]);
bool wr_get_digest_key(json_t *obj, const char *key, struct digest *ret);
bool wr_get_blob_digest(json_t *obj, struct digest *ret); /* OBJ["digest"] */
bool wr_get_digest_pair(json_t *pair, uint32_t limit, uint32_t *ret_idx, struct digest *ret);

/* A list of [idx, "<hex>"] pairs, one per chunk, in a message: "digests" (sha256 of chunks)
 * and "chain" (chain values, util/chain.h: never the last chunk's, which is the blob digest
 * itself). One parser and one set of rules for both, so the two lists cannot drift apart. */
struct wr_pair_list {
        const char *key;  /* the JSON key */
        const char *what; /* a name for REASON, made plural with an "s" */
        bool not_last;    /* the last chunk's index is refused */
};
extern const struct wr_pair_list wr_digests, wr_chain;

/* What wr_parse_pairs() parsed. Sparse (announces): N pairs, chunk IDX[i] has VAL[i].
 * Dense (locate answers): VAL has nchunks entries, valid where the bitmap KNOWN has the bit;
 * both NULL when the list was absent. KNOWN is NULL when sparse, IDX when dense. */
struct wr_pairs {
        uint32_t n;
        uint32_t *idx;
        struct digest *val;
        uint8_t *known;
};
void wr_pairs_free(struct wr_pairs *p); /* and zeroes it */

/* OBJ[K->key], when present, into *RET (zeroed when absent, or on error with nothing to free):
 * an array of at most as many pairs as there are indexes allowed, indexes strictly
 * increasing and below NCHUNKS (NCHUNKS - 1 for K->not_last), strict lowercase hex. WHO names
 * the object in REASON. */
int wr_parse_pairs(json_t *obj, const struct wr_pair_list *k, uint32_t nchunks, bool dense,
                   struct wr_pairs *ret, const char *who, char *reason, size_t reason_len);
/* ARR (NULL: absent, *RET NULL) as ranges (wr_parse_ranges) into a fresh bitmap *RET, which
 * must lie within KNOWN (NULL: nothing known; OF names what is known, for REASON): "verified"
 * and "chain_verified". */
int wr_parse_subset(json_t *arr, uint32_t nchunks, const uint8_t *known, const char *of,
                    uint8_t **ret, const char *what, const char *who, char *reason,
                    size_t reason_len);
int wr_parse_ranges(json_t *arr, uint32_t nchunks, uint8_t **ret, const char *what, const char *who,
                    char *reason, size_t reason_len);
/* BODY as a JSON object (json_decref() it), after the WIRE_MAX_BODY cap and with duplicate
 * keys refused; NULL with *RET_ERR and REASON set. */
json_t *wr_load(const char *body, size_t len, char *reason, size_t reason_len, int *ret_err);

/* ---- wire.c: building helpers ---- */

json_t *wr_ranges_json(const uint8_t *map, uint32_t nchunks);
json_t *wr_digest_pair_json(uint32_t idx, const struct digest *d); /* [idx, "<hex>"] */
json_t *wr_blob_digest_json(const struct digest *d);               /* "sha256:<hex>" */
int wr_dump(json_t *root, char **ret, size_t *ret_len);

/* ---- wire.c: comparison ---- */

/* Whether A and B have the same first NCHUNKS bits. */
bool wr_bitmap_equal(const uint8_t *a, const uint8_t *b, uint32_t nchunks);

/* ---- wire_index.c: the index record, in an announce and as the index answer ---- */

bool wr_get_index(json_t *o, struct wire_index *ret);
json_t *wr_index_json(const struct wire_index *x); /* NULL on allocation failure */
