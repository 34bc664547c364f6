/* The read engine's private header (SQLite's sqliteInt.h habit): the structures every file of
 * engine/ shares, small inline helpers, and the prototypes of the internal functions one file
 * defines and another calls. Nothing outside engine/ includes it; the contract is engine.h.
 *
 * Internal functions are named eng_*; a comment "Caller holds lock." on one means it must be
 * called with the engine lock (struct engine's `lock`) held. */
#pragma once
#include "engine/engine.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/policy.h"
#include "util/log.h"

struct pending;

struct waiter {
        struct waiter *next;
        struct pending *pr;
};

struct inflight {
        struct inflight *next; /* in blob->inflight */
        struct blob *blob;
        uint32_t idx;
        bool readahead; /* nobody waited for it when it started */
        bool prefetch;  /* started by engine_prefetch() */
        struct waiter *waiters;
        struct engine *e;
};

struct blob {
        uint32_t id;
        struct digest digest;
        uint64_t size;
        uint32_t nchunks;
        uint32_t npresent;
        char source[IDX_SOURCE_MAX];
        int64_t added_at;
        bool verified;
        uint8_t *present; /* bitmap, nchunks bits */
        /* sha256 of each chunk as recorded when it arrived (verified against the origin's
         * TLS stream, or against these digests when it came from a peer). Allocated with the
         * first chunk that lands, so a registered but unread blob costs nothing; kept when
         * chunks are evicted, so a refetch from a peer can still be checked. */
        struct digest *chunk_sha;
        uint8_t *sha_known;
        uint8_t *unread;           /* bitmap: brought in by readahead, not read yet */
        struct inflight *inflight; /* fetches of this blob's chunks */
        /* verification frontier */
        EVP_MD_CTX *sha; /* over chunks [0, hashed) */
        uint32_t hashed;
        uint64_t hash_pins;             /* bit i: chunk hashed+i pinned, see eng_hash_pin() */
        bool hashing;                   /* a worker is advancing the frontier */
        uint64_t failed_until_ms;       /* verification failed: EIO until then */
        uint64_t fetch_failed_until_ms; /* a fetch just failed: misses fail fast until then */
        unsigned fetch_fail_streak;     /* consecutive failed fetches: drives the backoff */
        uint64_t generation;            /* bumped when the blob's chunks are discarded */
        bool pinned;                    /* operator pin (see engine_pin) */
        int64_t last_access;            /* unix seconds */
        bool prefetching;
        uint32_t prefetch_next; /* next chunk engine_prefetch() considers */
        unsigned prefetch_inflight;
        int prefetch_err;
};

struct pending {
        engine_reply_fn reply;
        void *ctx;
        struct blob *blob;
        uint64_t off;
        size_t len;
        uint32_t first, last; /* chunk range */
        unsigned missing;
        int err;
        uint64_t pinned;           /* bit i: chunk first+i is pinned by this read */
        struct pending *next_done; /* on a worker's list of reads to answer */
};

struct completion {
        struct completion *next;
        struct inflight *fl;
        int err;
        char reason[256];
        uint8_t *buf;
        size_t len;
};

struct engine {
        struct engine_config cfg;
        struct index *ix;
        struct store *store;
        struct origin *origin;

        pthread_mutex_t lock;       /* see engine.c's essay */
        pthread_cond_t hash_cond;   /* a blob's `hashing` went false */
        pthread_cond_t landed_cond; /* a fetched chunk became present (engine_serve waits) */
        /* Fetch start vs shutdown: eng_submit() holds it shared while it hands a chunk to the
         * source or the origin; engine_stop_fetching() takes it exclusively to set
         * fetch_stopped, after which nothing reaches a source or origin that is being freed. */
        pthread_rwlock_t fetch_lock;
        bool fetch_stopped; /* (fetch_lock; read under the engine lock by engine_serve too) */
        /* Digests no peer knew, so repeated lookups of a bad name cost one query: a small
         * ring, entries valid until `until_ms`. */
        struct {
                struct digest d;
                uint64_t until_ms;
        } unknown[64];
        unsigned unknown_next;
        struct blob **blobs; /* by id */
        uint32_t nblobs;
        uint32_t *by_digest;  /* open addressing: id + 1, 0 = empty */
        size_t by_digest_cap; /* power of two >= 2 * max_blobs */
        struct policy *policy;
        uint64_t budget, effective_budget;
        unsigned inflight_count;
        /* Chunks fetched by readahead and not yet read: pinned so the small FIFO does not
         * evict them before the reader arrives (which doubled origin traffic in a 64M-budget
         * stream). A ring of max_inflight entries; the oldest is released when it is full, so
         * an abandoned stream cannot hold the budget hostage. */
        struct chunk_key *ra_pins;
        unsigned ra_head, ra_count;
        unsigned hash_pin_count; /* all blobs' hash_pins bits; at most max_inflight */
        struct engine_stats st;

        /* completion queue: origin thread -> workers */
        pthread_mutex_t cq_lock;
        pthread_cond_t cq_cond;
        struct completion *cq_head, **cq_tail;
        bool stopping;
        pthread_t *workers;
        unsigned nworkers;
};

static inline bool bit_get(const uint8_t *map, uint32_t i) {
        return map[i / 8] & (1u << (i % 8));
}
static inline void bit_set(uint8_t *map, uint32_t i) {
        map[i / 8] |= (uint8_t)(1u << (i % 8));
}
static inline void bit_clear(uint8_t *map, uint32_t i) {
        map[i / 8] &= (uint8_t) ~(1u << (i % 8));
}

static inline uint64_t chunk_off(const struct engine *e, uint32_t idx) {
        return (uint64_t)idx * e->cfg.chunk_size;
}

static inline size_t chunk_len(const struct engine *e, const struct blob *b, uint32_t idx) {
        uint64_t off = chunk_off(e, idx);
        uint64_t left = b->size - off;
        return left < e->cfg.chunk_size ? (size_t)left : e->cfg.chunk_size;
}

static inline struct chunk_key key_of(const struct blob *b, uint32_t idx) {
        return (struct chunk_key){.blob = b->id, .idx = idx};
}

enum idx_note_kind { NOTE_ABSENT, NOTE_PRESENT, NOTE_VERIFIED, NOTE_FORGET };

struct idx_note {
        enum idx_note_kind kind;
        struct digest blob;
        uint32_t idx;
        bool flag;
        struct digest sha;
};

/* Grows with the work done under one lock hold (one chunk's evictions, usually a handful). */
struct notes {
        struct idx_note *v;
        size_t n, cap;
};

#define STARTS_MAX 64

#define PREFETCH_WINDOW 8

/* ---- functions shared between the engine's files -------------------------------------------- */

/* notes.c: the index write queue */
void eng_note(struct notes *ns, enum idx_note_kind k, const struct blob *b, uint32_t idx, bool flag,
              const struct digest *sha);
void eng_notes_flush(struct engine *e, struct notes *ns);

/* blobs.c: the blob table */
struct blob *eng_find_blob(struct engine *e, const struct digest *d);
void eng_blob_info(const struct blob *b, struct engine_blob_info *ret);
void eng_changed(struct engine *e, const struct blob *b, uint32_t idx);
void eng_record_sha(struct blob *b, uint32_t idx, const struct digest *sha);
int eng_insert_blob(struct engine *e, const struct digest *d, uint64_t size, const char *source,
                    int64_t added_at, bool verified, struct blob **ret);

/* residency.c: pins, budget, eviction, the ENOSPC shrink */
void eng_ra_pin(struct engine *e, struct blob *b, uint32_t idx);
bool eng_ra_release(struct engine *e, struct blob *b, uint32_t idx);
void eng_touch(struct engine *e, struct blob *b, uint32_t idx, struct engine_stream *stream);
void eng_hash_pin(struct engine *e, struct blob *b, uint32_t idx);
void eng_hash_pin_advance(struct engine *e, struct blob *b);
void eng_hash_pin_drop(struct engine *e, struct blob *b, uint32_t idx);
void eng_mark_absent(struct engine *e, struct blob *b, uint32_t idx, struct notes *ns);
void eng_evict_to_budget(struct engine *e, struct notes *ns);
void eng_pin_for(struct engine *e, struct pending *pr, uint32_t idx);
void eng_unpin_all(struct engine *e, struct pending *pr);
int eng_write_chunk(struct engine *e, struct blob *b, uint32_t idx, const uint8_t *buf, size_t len);

/* read.c: answering reads */
int eng_copy_read(struct engine *e, struct pending *pr, uint8_t *out, const uint8_t *fresh,
                  uint32_t fresh_idx, uint32_t *ret_lost);
void eng_answer(struct engine *e, struct pending *pr, const uint8_t *fresh, uint32_t fresh_idx);

/* fetch.c: single flight, readahead windows, completion workers */
struct inflight *eng_inflight_get(struct engine *e, struct blob *b, uint32_t idx, bool readahead,
                                  bool *ret_new);
void eng_submit(struct engine *e, struct inflight *f);
struct waiter *eng_inflight_end(struct engine *e, struct inflight *f);
void eng_readahead(struct engine *e, struct blob *b, uint32_t last, unsigned window,
                   struct inflight **starts, size_t *nstarts, size_t max_starts);
unsigned eng_stream_window(struct engine *e, struct engine_stream *s, uint64_t off, size_t len);
void eng_store_ra_window(const struct engine *e, const struct blob *b,
                         const struct engine_stream *s, uint32_t last, uint32_t *ret_from,
                         uint32_t *ret_to);
void *eng_worker_main(void *arg);

/* verify.c: the hash frontier */
bool eng_advance_frontier(struct engine *e, struct blob *b, const uint8_t *fresh,
                          uint32_t fresh_idx);

/* prefetch.c */
void eng_prefetch_pump(struct engine *e, struct blob *b, struct inflight **starts, size_t *nstarts,
                       size_t max_starts);
