/* peer/directory's private header (engine/engine_int.h's habit): the records the directory's
 * files share and the prototypes of the internal functions one file defines and another calls.
 * Nothing outside peer/directory*.c includes it; the contract is peer/directory.h.
 *
 * The files, by concern: directory.c the tables, their records and eviction, expiry, stats and
 * the layer index records; directory_apply.c announces (holder records); directory_values.c
 * a blob's per-chunk values (plain digests, chain values) and their provenance;
 * directory_locate.c claims and locate answers.
 *
 * Internal functions are named dri_*. Every one of them is called with dir->lock held. */
#pragma once
#include "peer/directory.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "util/log.h"

struct dir_holder {
        char node[PEER_ID_MAX];
        uint8_t *present; /* nchunks bits, never empty (an empty set has no record) */
        uint64_t last_ms; /* its last announce */
};

struct dir_claim {
        char node[PEER_ID_MAX];
        uint32_t chunk;
        uint64_t since_ms; /* granted or renewed */
};

/* One kind of per-chunk value a home keeps for a blob, with its provenance
 * (directory_values.c has the rules): plain chunk digests and chain values are one each, kept
 * apart, since a chunk's digest and its chain value are different numbers and never compared.
 * Nothing is allocated until the blob's first value of that kind arrives; then one block
 * holds nchunks values and DRI_NMAPS bitmaps (dri_values_bytes), so a blob that never gets
 * a chain value pays 8 bytes for it. */
struct dir_values {
        struct digest *val; /* nchunks entries, then the bitmaps (dri_values_map); or NULL */
};

enum dri_map {
        DRI_KNOWN,      /* the value is recorded and believed */
        DRI_VERIFIED,   /* ... and came from a node that verified the whole blob */
        DRI_DISPUTED,   /* two unverified values disagreed: only a verified one is believed */
        DRI_DISPUTED_V, /* two verified values disagreed: none is believed again */
        DRI_NMAPS,
};

struct dir_blob {
        struct digest digest;
        uint64_t size;
        uint32_t nchunks;
        char source[IDX_SOURCE_MAX];
        uint64_t last_ms;        /* newest announce from any node, empty or not */
        uint64_t retry_next_ms;  /* the latest retry time handed out to a holder told "full" */
        uint64_t loc_win_ms;     /* start of the window its reader locates are counted in */
        uint32_t loc_win_n;      /* reader locates in that window */
        uint32_t loc_ttl_ms;     /* the reuse time its answers say (0: not decided yet) */
        struct dir_values sha;   /* plain chunk digests (sha256 of each chunk's bytes) */
        struct dir_values chain; /* chain values (util/chain.h), never the last chunk's */
        struct dir_holder *holders;
        size_t nholders, holders_cap;
        struct dir_claim *claims;
        size_t nclaims, claims_cap;
        struct dir_blob *hnext;       /* hash chain */
        struct dir_blob *prev, *next; /* announce order, oldest first */
};

struct dir_irec {
        char node[PEER_ID_MAX];
        struct digest index;
        uint64_t size;
        uint64_t last_ms;
};

struct dir_layer {
        struct digest layer;
        struct dir_irec recs[DIR_INDEX_NODES];
        unsigned nrecs;
        uint64_t last_ms;              /* newest record */
        struct dir_layer *hnext;       /* hash chain */
        struct dir_layer *prev, *next; /* newest record order, oldest first */
};

struct directory {
        pthread_mutex_t lock;
        struct dir_config cfg; /* immutable after dir_new */
        uint64_t seed;
        struct dir_blob **buckets;
        size_t nbuckets; /* a power of two */
        struct dir_blob *oldest, *newest;
        struct dir_stats stats; /* blobs, holders, claims are current counts */
        size_t bytes;           /* holder bitmaps and digest arrays, against cfg.max_bytes */
        struct dir_layer **lbuckets;
        size_t nlbuckets; /* a power of two */
        struct dir_layer *loldest, *lnewest;
        /* Issue 18, digest waits (dir_wait_digest): broadcast when an announce records a chunk
         * digest the home did not know; digest_new says this dir_apply did (under lock). */
        pthread_cond_t digest_cond; /* CLOCK_MONOTONIC, waits with lock */
        bool digest_new;
        unsigned digest_waiters; /* now, <= cfg.max_digest_waiters */
        bool waits_stopped;      /* dir_stop_waits: no question is held any more */
};

static inline size_t dri_bitmap_bytes(uint32_t nchunks) {
        return nchunks == 0 ? 1 : ((size_t)nchunks + 7) / 8;
}

/* Bytes of one dir_values block of a blob (its values and bitmaps), as counted against
 * max_bytes: 32.5 bytes a chunk. */
static inline size_t dri_values_bytes(uint32_t nchunks) {
        return (size_t)nchunks * sizeof(struct digest) + DRI_NMAPS * dri_bitmap_bytes(nchunks);
}

/* Bitmap M of S (allocated: S->val non-NULL) for a blob of NCHUNKS. */
static inline uint8_t *dri_values_map(const struct dir_values *s, uint32_t nchunks,
                                      enum dri_map m) {
        return (uint8_t *)(s->val + nchunks) + (size_t)m * dri_bitmap_bytes(nchunks);
}

/* Whether chunk IDX (< NCHUNKS) of S is known; false when S has nothing yet. */
static inline bool dri_values_known(const struct dir_values *s, uint32_t nchunks, uint32_t idx) {
        return s->val && wire_bit(dri_values_map(s, nchunks, DRI_KNOWN), idx);
}

static inline bool dri_live(uint64_t since, uint64_t ttl, uint64_t now) {
        return now < since || now - since < ttl;
}

/* directory.c: the blob table, its announce-order list and the records' bounds. */
struct dir_blob *dri_blob_find(struct directory *dir, const struct digest *d);
/* A new record for WB (the blob whose newest announce is oldest goes at max_blobs); NULL on
 * -ENOMEM. */
struct dir_blob *dri_blob_new(struct directory *dir, const struct wire_blob *wb);
void dri_blob_free(struct directory *dir, struct dir_blob *b);
/* Alive while its newest announce or one of its claims is live. */
bool dri_blob_alive(const struct directory *dir, const struct dir_blob *b, uint64_t now);
void dri_order_unlink(struct directory *dir, struct dir_blob *b);
void dri_order_append(struct directory *dir, struct dir_blob *b);
/* A new holder record for NODE, evicting one at max_holders; NULL on -ENOMEM. */
struct dir_holder *dri_holder_add(struct directory *dir, struct dir_blob *b, const char *node,
                                  uint64_t now);
void dri_holder_remove(struct directory *dir, struct dir_blob *b, size_t i);
void dri_claim_remove(struct directory *dir, struct dir_blob *b, size_t i);
int dri_grow(void **arr, size_t *cap, size_t n, size_t max, size_t elem);
/* directory_values.c: the per-chunk values of a blob (struct dir_values). */
/* Records VAL, announced by NODE (VERIFIED: it verified the whole blob) as the value of chunk
 * IDX (< B's nchunks) in S, one of B's sets, KIND naming it for the log, by the provenance
 * rules; allocates S at its first value. Sets dir->digest_new when IDX's value became known.
 * 0, -ENOMEM (nothing recorded). */
int dri_values_record(struct directory *dir, const struct dir_blob *b, struct dir_values *s,
                      const char *kind, uint32_t idx, const struct digest *val, bool verified,
                      const char *node);
/* Frees S (of a blob of NCHUNKS), uncounting its bytes. */
void dri_values_free(struct directory *dir, struct dir_values *s, uint32_t nchunks);
/* Copies the known values of chunks FROM .. END - 1 of S into new arrays of NCHUNKS entries
 * (values, known and verified bitmaps; a locate answer's). When S has no value at all they are
 * allocated only with ALWAYS, else left NULL. 0; -ENOMEM and nothing allocated. */
int dri_values_copy(const struct dir_values *s, uint32_t nchunks, uint32_t from, uint32_t end,
                    bool always, struct digest **ret_val, uint8_t **ret_known,
                    uint8_t **ret_verified);

/* NODE's index record X (replacing its record for X's layer); 0, -EINVAL, -ENOMEM. */
int dri_apply_index(struct directory *dir, const char *node, const struct wire_index *x,
                    uint64_t now);
