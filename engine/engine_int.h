/* The read engine's private header (SQLite's sqliteInt.h habit): the structures every file of
 * engine/ shares, small inline helpers, and the prototypes of the internal functions one file
 * defines and another calls. Nothing outside engine/ includes it; the contract is engine.h.
 *
 * Internal functions are named eng_*; "Caller holds lock." on one means it must be called
 * with the engine lock held, and it says so with ASSERT_HELD (checked in SANITIZE builds). */
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

/* ---- THE LOCK ORDER ------------------------------------------------------------------------
 *
 * The engine's locks, what each protects, and the order to take them. Written once, here;
 * ASSERT_HELD / ASSERT_NOT_HELD below check the engine lock's part in SANITIZE builds.
 *
 *  1. e->fetch_lock (rwlock): fetch start vs shutdown. Held shared by eng_submit() while it
 *     hands a chunk to the sources (src.fetch), exclusively by engine_stop_fetching() to set
 *     fetch_stopped. Taken before the engine lock, never while holding it.
 *  2. e->lock, "the engine lock" (struct eng_mutex, taken with eng_lock()): the blob table and
 *     every blob's mutable state (present/unread bitmaps, recorded chunk digests, in-flight
 *     fetches and their waiters, the verification frontier's position, prefetch state), the
 *     eviction policy and every pin, the budgets, the unknown-digest ring and the counters.
 *     hash_cond and landed_cond wait on it (eng_cond_wait()). Critical sections are short;
 *     nothing that sleeps on the disk for long or on the network runs under it.
 *  2a. e->landed_lock (mutex): the landed ring (landed.c). A leaf: taken under the engine lock
 *     (put, changed) or alone (lookups on the copy path), never around anything else.
 *  3. e->cq_lock (mutex): the completion queue (cq_head, cq_tail) and `stopping`. A leaf taken
 *     alone: by on_fetched() (the fetcher's thread, or eng_submit()'s own thread inside its
 *     fetch_lock hold when the fetch is refused at once), by the workers, by engine_free().
 *
 *  Order: fetch_lock -> lock -> landed_lock; fetch_lock -> cq_lock. The engine lock and cq_lock never nest.
 *
 * What may be called with the engine lock held: policy_*() (the policy has no lock of its own:
 * the engine lock is its lock); store_punch(), store_remove(), store_release() and
 * store_probe() (the store's locks are leaves below ours); the index's iterators and the writes engine_load()'s callbacks
 * make (the index's locks come after ours, and it calls back only into those callbacks);
 * cfg.on_change (the announcer's lock comes after ours: the hook notes and returns); log_*().
 *
 * What must not be: eng_submit() and anything reaching the sources (src.*: lookups block on the
 * network, fetch_lock comes first, and a fetcher may complete at once); store_read() and
 * store_write() of chunk data; index writes (queued as notes under the lock, eng_notes_flush()ed
 * after it); a reader's reply callback; hashing chunk data; eng_answer() and eng_write_chunk(),
 * which take it. engine_free() runs when no other thread is left and takes the lock only to satisfy
 * the helpers' assertions.
 *
 * Fields below say what protects them: "(lock)" the engine lock; "(immutable)" written before
 * another thread can see the object and never again; otherwise the owner is named. */

/* The engine lock. In SANITIZE builds (P2PBLOBS_DEBUG_LOCKS) it records the thread that holds
 * it, so ASSERT_HELD can check a "caller holds lock" contract; in release builds it is a plain
 * mutex and the assertions compile to nothing. */
struct eng_mutex {
        pthread_mutex_t m;
#ifdef P2PBLOBS_DEBUG_LOCKS
        /* The holder, 0 when free. Written only by the holder (after taking, before releasing);
         * read with relaxed atomics, so a thread that does not hold it reads another thread's
         * id or 0, never its own. */
        pthread_t owner;
#endif
};

#ifdef P2PBLOBS_DEBUG_LOCKS
static inline void eng_lock_set_owner(struct eng_mutex *l, pthread_t t) {
        __atomic_store_n(&l->owner, t, __ATOMIC_RELAXED);
}
static inline bool eng_lock_held(const struct eng_mutex *l) {
        pthread_t t = __atomic_load_n(&l->owner, __ATOMIC_RELAXED);
        return t != 0 && pthread_equal(t, pthread_self());
}
static inline void eng_lock_assert(const struct eng_mutex *l, bool want, const char *func) {
        if (eng_lock_held(l) == want)
                return;
        fprintf(stderr, "engine: lock assertion failed: %s called %s the engine lock held\n", func,
                want ? "without" : "with");
        abort();
}
#define ASSERT_HELD(l) eng_lock_assert((l), true, __func__)
#define ASSERT_NOT_HELD(l) eng_lock_assert((l), false, __func__)
#else
static inline void eng_lock_set_owner(struct eng_mutex *l, pthread_t t) {
        (void)l;
        (void)t;
}
#define ASSERT_HELD(l) ((void)(l))
#define ASSERT_NOT_HELD(l) ((void)(l))
#endif

static inline void eng_lock(struct eng_mutex *l) {
        pthread_mutex_lock(&l->m);
        eng_lock_set_owner(l, pthread_self());
}

static inline void eng_unlock(struct eng_mutex *l) {
        ASSERT_HELD(l);
        eng_lock_set_owner(l, 0);
        pthread_mutex_unlock(&l->m);
}

/* pthread_cond_wait / timedwait on the engine lock: the lock is released while waiting, and
 * its owner with it. */
static inline void eng_cond_wait(pthread_cond_t *c, struct eng_mutex *l) {
        ASSERT_HELD(l);
        eng_lock_set_owner(l, 0);
        pthread_cond_wait(c, &l->m);
        eng_lock_set_owner(l, pthread_self());
}

static inline int eng_cond_timedwait(pthread_cond_t *c, struct eng_mutex *l,
                                     const struct timespec *ts) {
        ASSERT_HELD(l);
        eng_lock_set_owner(l, 0);
        int r = pthread_cond_timedwait(c, &l->m, ts);
        eng_lock_set_owner(l, pthread_self());
        return r;
}

/* ---- structures ----------------------------------------------------------------------------- */

struct pending;

/* One read waiting for one fetch: on its inflight's list. (lock) */
struct waiter {
        struct waiter *next;
        struct pending *pr;
};

/* A chunk fetch under way (single flight: at most one per chunk). Created and ended under the
 * lock; between eng_submit() and its completion the fetcher holds the pointer, and only the
 * worker that completes it ends it. */
struct inflight {
        struct inflight *next; /* in blob->inflight (lock) */
        struct blob *blob;     /* (immutable) */
        uint32_t idx;          /* (immutable) */
        bool readahead;        /* nobody waited for it when it started (immutable) */
        bool prefetch;         /* started by engine_prefetch() (lock) */
        /* The blob's generation when the fetch began (immutable): bytes asked for before a
         * discard never become present after it (verify.c). */
        uint64_t gen;
        struct waiter *waiters; /* (lock) */
        struct engine *e;       /* (immutable) */
        /* A run (src.fetch_run): the first inflight of RUN_LEN consecutive ones, linked by
         * run_next, submitted together by eng_submit() of the first; the others are never
         * handed to eng_submit(). Written under the lock when the run is formed, read by
         * eng_submit() before the fetch starts, never after. */
        struct inflight *run_next;
        unsigned run_len; /* 0 or 1: a chunk on its own; the others of a run: 0 */
};

/* A known blob. Never freed before engine_free(), so a pointer stays valid without the lock;
 * the (immutable) fields may be read without it. */
#define SERVE_STREAMS 4 /* peer streams per blob engine_serve() tells apart */

struct blob {
        uint32_t id;                 /* (immutable) */
        struct digest digest;        /* (immutable) */
        uint64_t size;               /* (immutable) */
        uint32_t nchunks;            /* (immutable) */
        uint32_t npresent;           /* (lock) */
        char source[IDX_SOURCE_MAX]; /* (immutable) */
        int64_t added_at;            /* (immutable) */
        bool verified;               /* (lock) */
        uint8_t *present;            /* bitmap, nchunks bits (lock; the pointer is immutable) */
        /* sha256 of each chunk as recorded when it arrived (verified against the origin's
         * TLS stream, or against these digests when it came from a peer). Allocated with the
         * first chunk that lands, so a registered but unread blob costs nothing; kept when
         * chunks are evicted, so a refetch from a peer can still be checked. (lock) */
        struct digest *chunk_sha;
        uint8_t *sha_known; /* (lock) */
        /* Chain values (util/chain.h): chunk i's is the SHA-256 state after the blob's bytes
         * [0, (i + 1) x chunk_size), recorded by the frontier when it hashes chunk i, or from
         * a source's check (a home's values) before that. `linked` bit i: chunk i's bytes
         * hashed from chain value i - 1 to chain value i as recorded here (to the blob
         * digest for the last chunk): the frontier passes it without hashing it again.
         * Allocated with the first value, freed with the digests. Only the frontier replaces
         * a recorded value (its own pass over the bytes from the start is the truth), and
         * then clears the links that rested on the old one. (lock) */
        struct digest *chain;
        uint8_t *chain_known;      /* (lock) */
        uint8_t *linked;           /* (lock) */
        uint8_t *unread;           /* bitmap: brought in by readahead, not read yet (lock) */
        struct inflight *inflight; /* fetches of this blob's chunks (lock) */
        /* verification frontier */
        struct chain_hash *fr;    /* over chunks [0, hashed) (the worker that set `hashing`) */
        uint32_t hashed;          /* (lock) */
        uint64_t hash_pins;       /* bit i: chunk hashed+i pinned, see eng_hash_pin() (lock) */
        bool hashing;             /* a worker is advancing the frontier (lock) */
        uint64_t failed_until_ms; /* verification failed: EIO until then (lock) */
        uint64_t
                fetch_failed_until_ms; /* a fetch just failed: misses fail fast until then (lock) */
        unsigned fetch_fail_streak;    /* consecutive failed fetches: drives the backoff (lock) */
        uint64_t generation;           /* bumped when the blob's chunks are discarded (lock) */
        bool pinned;                   /* operator pin (see engine_pin) (lock) */
        bool corrupt_logged;           /* a chunk failed the store's checksum: said once (lock) */
        int64_t last_access;           /* unix seconds (lock) */
        bool prefetching;              /* (lock) */
        uint32_t prefetch_next;        /* next chunk engine_prefetch() considers (lock) */
        unsigned prefetch_inflight;    /* (lock) */
        int prefetch_err;              /* (lock) */
        uint64_t fetched_bytes;        /* bytes of fetched chunks that landed (lock) */
        /* The chunk each of the last few peer streams of this blob would ask for next
         * (engine_serve's readahead: only a peer reading in order gets it); 0: none (lock). */
        uint32_t serve_next[SERVE_STREAMS];
        unsigned serve_slot; /* the slot a new stream takes (round robin) (lock) */
};

/* A read waiting for chunks. The range and the reply are (immutable); the rest is (lock) while
 * the read hangs on waiters, and the answering thread's once `missing` reached 0. */
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
        unsigned requeues;         /* times a chunk the store lost sent it back as a miss */
        struct pending *next_done; /* on a worker's list of reads to answer (that worker) */
};

/* A fetch's result, on the completion queue (cq_lock) until a worker takes it (that worker). */
struct completion {
        struct completion *next;
        struct inflight *fl;
        int err;
        char reason[256];
        uint8_t *buf;
        size_t len;
        struct chunk_check chk; /* what the source checked BUF against, if anything */
};

struct engine {
        struct engine_config cfg;     /* (immutable after engine_new) */
        struct index *ix;             /* (immutable) */
        struct store *store;          /* (immutable) */
        struct engine_source_ops src; /* (immutable) */

        struct eng_mutex lock;      /* the engine lock: see THE LOCK ORDER above */
        pthread_cond_t hash_cond;   /* a blob's `hashing` went false (waits on lock) */
        pthread_cond_t landed_cond; /* a fetched chunk became present (engine_serve waits; lock) */
        /* Fetch start vs shutdown: eng_submit() holds it shared while it hands a chunk to the
         * sources (src.fetch); engine_stop_fetching() takes it exclusively to set
         * fetch_stopped, after which nothing reaches a source that is being freed. */
        pthread_rwlock_t fetch_lock;
        bool fetch_stopped; /* (fetch_lock; read under the engine lock by engine_serve too) */
        /* Digests no peer knew, so repeated lookups of a bad name cost one query: a small
         * ring, entries valid until `until_ms`. (lock) */
        struct {
                struct digest d;
                uint64_t until_ms;
        } unknown[64];
        unsigned unknown_next; /* (lock) */
        struct blob **blobs;   /* by id (lock; the array itself is immutable) */
        uint32_t nblobs;       /* (lock) */
        uint32_t *by_digest;   /* open addressing: id + 1, 0 = empty (lock) */
        size_t by_digest_cap;  /* power of two >= 2 * max_blobs (immutable) */
        struct policy *policy; /* (lock: the policy has no lock of its own) */
        /* (lock; engine_put() reads effective_budget without it for its size check) */
        uint64_t budget, effective_budget;
        unsigned inflight_count; /* (lock) */
        /* Chunks fetched by readahead and not yet read: pinned so the small FIFO does not
         * evict them before the reader arrives (which doubled origin traffic in a 64M-budget
         * stream). A ring of max_inflight entries; the oldest is released when it is full, so
         * an abandoned stream cannot hold the budget hostage. (lock) */
        struct chunk_key *ra_pins;
        unsigned ra_head, ra_count; /* (lock) */
        unsigned hash_pin_count;    /* all blobs' hash_pins bits; at most max_inflight (lock) */
        struct engine_stats st;     /* (lock) */

        /* The landed ring (landed.c): cfg.landed_chunks recently landed chunks. landed_lock
         * is a leaf, taken under the engine lock or alone. */
        pthread_mutex_t landed_lock;
        struct landed_ent *landed; /* cfg.landed_chunks slots, landed_n used (landed_lock) */
        unsigned landed_n;         /* (landed_lock) */
        unsigned landed_live;      /* landed_n, also read without the lock as a hint (atomic) */
        uint64_t landed_seq;       /* (landed_lock) */
        uint64_t landed_bytes, landed_peak, landed_hits; /* (landed_lock) */

        /* completion queue: origin thread -> workers */
        pthread_mutex_t cq_lock;
        pthread_cond_t cq_cond;                /* (waits on cq_lock) */
        struct completion *cq_head, **cq_tail; /* (cq_lock) */
        bool stopping;                         /* (cq_lock) */
        pthread_t *workers;                    /* (engine_new and engine_free only) */
        unsigned nworkers;                     /* (engine_new and engine_free only) */
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

/* NOTE_CHAIN: chunk IDX's chain value is SHA (the chunk need not be present). */
enum idx_note_kind { NOTE_ABSENT, NOTE_PRESENT, NOTE_VERIFIED, NOTE_FORGET, NOTE_CHAIN };

struct idx_note {
        enum idx_note_kind kind;
        struct digest blob;
        uint32_t idx;
        bool flag;
        bool has_sha;
        struct digest sha;
};

/* Grows with the work done under one lock hold (one chunk's evictions, usually a handful). */
struct notes {
        struct idx_note *v;
        size_t n, cap;
};

#define STARTS_MAX 64
/* Chunks per coalesced fetch (src.fetch_run): 16 per GET measured 1.63x one per GET against
 * a registry that spends ~3 ms CPU per request (issue 15). */
#define RUN_MAX_CHUNKS 16

/* store_read()'s two ways of not giving a chunk back: gone (-ESTALE) or failed its checksum
 * (-EBADMSG). Both make the chunk absent (eng_store_failed) and the next read refetch it. */
static inline bool eng_is_store_loss(int err) {
        return err == -ESTALE || err == -EBADMSG;
}

#define PREFETCH_WINDOW ENGINE_PREFETCH_WINDOW

/* ---- functions shared between the engine's files -------------------------------------------- */

/* notes.c: the index write queue */
void eng_note(struct notes *ns, enum idx_note_kind k, const struct blob *b, uint32_t idx, bool flag,
              const struct digest *sha);
void eng_notes_flush(struct engine *e, struct notes *ns);

/* blobs.c: the blob table */
struct blob *eng_find_blob(struct engine *e, const struct digest *d);

/* serve.c. Caller holds lock. Whether a peer's request for chunks FIRST..LAST of B continues
 * one of B's recent peer streams (so readahead for it pays), recording it either way. */
bool eng_serve_in_order(struct blob *b, uint32_t first, uint32_t last);
void eng_blob_info(const struct blob *b, struct engine_blob_info *ret);
void eng_changed(struct engine *e, const struct blob *b, uint32_t idx);
void eng_record_sha(struct blob *b, uint32_t idx, const struct digest *sha);
/* Caller holds lock. Chain values of B (util/chain.h). eng_chain_of: chunk IDX's value, into
 * *RET, when known; the last chunk's is the blob digest. eng_record_chain: records VALUE for
 * chunk IDX < nchunks - 1; FRONTIER: it is the frontier's own (replaces a different one and
 * drops the link of IDX + 1 that rested on it); otherwise kept only where none is recorded.
 * A new value goes on NS for the index (NULL: it came from there).
 * Returns whether the recorded value is VALUE afterwards. eng_take_chain_check: a source
 * checked chunk IDX by CHK's chain step: links it when the step's values agree with B's
 * (recording those B lacks, unless B is verified); whether it did. eng_forget_digests: frees plain digests and chain
 * values both. */
bool eng_chain_of(const struct blob *b, uint32_t idx, struct digest *ret);
bool eng_record_chain(struct blob *b, uint32_t idx, const struct digest *value, bool frontier,
                      struct notes *ns);
bool eng_take_chain_check(struct blob *b, uint32_t idx, const struct chunk_check *chk,
                          struct notes *ns);
void eng_forget_digests(struct blob *b);
/* Caller holds lock. eng_chain_step_of: the values chunk IDX of B is checked from and to
 * (*RET_PREV unused for chunk 0), when both are known. eng_chain_step_agrees: CHK is a chain
 * step with exactly those values. Neither records anything. */
bool eng_chain_step_of(const struct blob *b, uint32_t idx, struct digest *ret_prev,
                       struct digest *ret_want);
bool eng_chain_step_agrees(const struct blob *b, uint32_t idx, const struct chunk_check *chk);
int eng_insert_blob(struct engine *e, const struct digest *d, uint64_t size, const char *source,
                    int64_t added_at, bool verified, struct blob **ret);

/* After a synchronous copy of PR's chunks from the store returned R (eng_copy_read; LOST the
 * chunk it could not give back): unpins PR's chunks and, when R says the store lost or failed
 * a chunk, drops it and logs it as eng_store_failed() says. Takes the lock. */
void eng_copy_finish(struct engine *e, struct pending *pr, int r, uint32_t lost);

/* serve.c: storing a blob the caller holds (engine_put, and derived.c's streaming put).
 * eng_put_open registers D (LEN bytes, not verified yet) unless known (-EBADMSG if known with
 * another size), and returns it with its generation. eng_put_chunk vouches for chunk I with
 * the caller's bytes P (its whole length, checked against D by the caller): 1 when the chunk
 * now holds them (written and marked present under the budget, which may evict, or already
 * present with the same recorded digest; present bytes nothing vouched for, or other bytes,
 * are replaced); 0 when it could not (a fetch of it is running, or the blob was discarded);
 * -errno. eng_put_close marks the blob verified only when every chunk was vouched for and is
 * still there, then flushes the notes. None with the lock held. */
int eng_put_open(struct engine *e, const struct digest *d, uint64_t len, const char *source,
                 struct blob **ret, uint64_t *ret_gen);
int eng_put_chunk(struct engine *e, struct blob *b, uint64_t gen, uint32_t i, const uint8_t *p,
                  struct notes *ns);
void eng_put_close(struct engine *e, struct blob *b, uint64_t gen, bool vouched_all,
                   struct notes *ns);

/* residency.c: pins, budget, eviction, the ENOSPC shrink */
void eng_ra_pin(struct engine *e, struct blob *b, uint32_t idx);
bool eng_ra_release(struct engine *e, struct blob *b, uint32_t idx);
void eng_touch(struct engine *e, struct blob *b, uint32_t idx, struct engine_stream *stream);
void eng_hash_pin(struct engine *e, struct blob *b, uint32_t idx);
void eng_hash_pin_advance(struct engine *e, struct blob *b);
void eng_hash_pin_drop(struct engine *e, struct blob *b, uint32_t idx);
void eng_mark_absent(struct engine *e, struct blob *b, uint32_t idx, struct notes *ns);
bool eng_store_failed(struct engine *e, struct blob *b, uint32_t idx, int err, struct notes *ns);
void eng_log_corrupt(const struct blob *b, uint32_t idx);
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
/* Caller holds lock. Whether chunks [from, end) of B are all present. */
/* Chunks that land this close ahead of the verification frontier are pinned until it hashed
 * them (residency.c, eng_hash_pin). */
#define HASH_PIN_WINDOW 16 /* > readahead ramp + the kernel's 1 MiB + worker reordering */

static inline bool eng_present_from(const struct blob *b, uint32_t from) {
        for (uint32_t i = from; i < b->nchunks; i++)
                if (!bit_get(b->present, i))
                        return false;
        return true;
}

bool eng_advance_frontier(struct engine *e, struct blob *b, const uint8_t *fresh,
                          uint32_t fresh_idx);
/* B failed verification: drops what the caller (cfg.on_invalidate) caches of its bytes, except
 * the ranges of reads still pending (DONE, about to be answered, and those on B's inflights).
 * Call before answering any of B's readers, without the lock. */
void eng_invalidate_blob(struct engine *e, struct blob *b, const struct pending *done);

/* landed.c: the ring of recently landed chunks (see its essay) */
int eng_landed_init(struct engine *e);
void eng_landed_free(struct engine *e);
struct landed_buf;
/* An entry's bookkeeping, allocated before the engine lock is taken (NULL without a ring). */
struct landed_buf *eng_landed_alloc(struct engine *e);
/* Caller holds lock and has just set chunk IDX of B present with the bytes BUF (LEN): puts BUF
 * in the ring, using LB (from eng_landed_alloc), unless B is verified or IDX its last chunk.
 * Returns LB when taken: BUF then belongs to LB, the caller keeps reading it and ends with
 * eng_landed_release(LB); NULL: LB and BUF stay the caller's. Entries pushed out go on *DEAD
 * (free them with eng_landed_release, after unlocking). */
struct landed_buf *eng_landed_insert(struct engine *e, struct blob *b, uint32_t idx, uint8_t *buf,
                                     size_t len, struct landed_buf *lb, struct landed_buf **dead);
/* Without the lock: drops the completion's reference to LB (NULL-safe; its buffer is freed if
 * the ring let it go meanwhile) and frees the DEAD list. */
void eng_landed_release(struct engine *e, struct landed_buf *lb, struct landed_buf *dead);
/* Caller holds lock. Called by eng_changed(): drops the entries this change makes stale (chunk
 * IDX when it is absent now; every entry of B for UINT32_MAX or once B is verified). */
void eng_landed_changed(struct engine *e, const struct blob *b, uint32_t idx);
/* Copies N bytes at OFF_IN_CHUNK of chunk IDX of B from the ring into OUT. Returns whether it
 * could (false: not there; read the store). Without the engine lock; the caller has the chunk
 * pinned. An entry whose last byte is copied leaves the ring. */
bool eng_landed_copy(struct engine *e, const struct blob *b, uint32_t idx, uint64_t off_in_chunk,
                     uint8_t *out, size_t n);
/* The verification frontier's way in (verify.c), without the engine lock: a reference to
 * chunk IDX of B's bytes in the ring when it is there with LEN bytes (*RET_DATA points at
 * them until eng_landed_put(); they may leave the ring meanwhile, the buffer stays), else
 * NULL: read the store. */
struct landed_buf *eng_landed_get(struct engine *e, const struct blob *b, uint32_t idx, size_t len,
                                  const uint8_t **ret_data);
/* Drops a reference from eng_landed_get() (NULL-safe). Without the engine lock. */
void eng_landed_put(struct engine *e, struct landed_buf *lb);
/* The frontier hashed chunk IDX of B: its entry leaves the ring if a read is past it too,
 * else it stays until one is (or newer chunks push it out). Without the engine lock. */
void eng_landed_hashed(struct engine *e, const struct blob *b, uint32_t idx);
/* Whether chunk IDX of B is in the ring now (a hint: it may leave at any moment). */
bool eng_landed_holds(struct engine *e, const struct blob *b, uint32_t idx);
void eng_landed_stats(struct engine *e, uint64_t *ret_bytes, uint64_t *ret_peak,
                      uint64_t *ret_hits);

/* prefetch.c */
void eng_prefetch_pump(struct engine *e, struct blob *b, struct inflight **starts, size_t *nstarts,
                       size_t max_starts);
