/* The read engine. See engine.h for the contract.
 *
 * State and locking. One mutex, `lock`, protects the blob table, every blob's present bitmap
 * and verification state, the in-flight fetches with their waiters, the eviction policy and the
 * counters. Critical sections are short (bit tests, list edits, punching evicted chunks); disk
 * copies, hashing and the network all run outside it. Lock order: engine lock, then (inside
 * policy and index calls) nothing that calls back. Index writes are queued after unlocking.
 *
 * Life of a miss. engine_read() finds chunk k absent: it creates an `inflight` for (blob, k) or
 * joins the existing one, hangs a `pending` read on it, and returns. The origin thread's
 * completion is handed to a worker, which hashes and writes the chunk, marks it present (pinned
 * for each waiter), evicts down to the budget, advances the blob's verification, and answers
 * every pending read whose last missing chunk this was.
 *
 * Verification. Each blob keeps a SHA-256 context over its prefix of chunks [0, hashed). When
 * chunk `hashed` becomes present the frontier advances through every present chunk after it;
 * reaching the end compares the digest. With a budget smaller than the blob, a sequential read
 * still verifies: the frontier follows the reader. If the advance will reach the end, the
 * waiting readers are answered only after the comparison, so the last read of a corrupt blob
 * fails rather than completing it.
 *
 * Memory: per blob a bitmap (chunks/8 bytes) and a hash context while hashing; per in-flight
 * chunk one buffer (in the origin) — bounded by max_inflight plus the kernel's outstanding
 * requests; per worker/FUSE thread one max_read buffer. */
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
#include "peer/ref.h"
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
        uint64_t hash_pins;             /* bit i: chunk hashed+i pinned, see hash_pin() */
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

        pthread_mutex_t lock;       /* see the essay above */
        pthread_cond_t hash_cond;   /* a blob's `hashing` went false */
        pthread_cond_t landed_cond; /* a fetched chunk became present (engine_serve waits) */
        /* Fetch start vs shutdown: submit() holds it shared while it hands a chunk to the
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

static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;

static void buf_key_init(void) {
        pthread_key_create(&buf_key, free);
}

/* A per-thread copy buffer of max_read bytes: FUSE threads and workers each own one, freed
 * when the thread exits. */
static uint8_t *thread_buffer(struct engine *e) {
        pthread_once(&buf_once, buf_key_init);
        uint8_t *b = pthread_getspecific(buf_key);
        if (!b) {
                b = malloc(e->cfg.max_read);
                if (b)
                        pthread_setspecific(buf_key, b);
        }
        return b;
}

static bool bit_get(const uint8_t *map, uint32_t i) {
        return map[i / 8] & (1u << (i % 8));
}
static void bit_set(uint8_t *map, uint32_t i) {
        map[i / 8] |= (uint8_t)(1u << (i % 8));
}
static void bit_clear(uint8_t *map, uint32_t i) {
        map[i / 8] &= (uint8_t) ~(1u << (i % 8));
}

static uint64_t chunk_off(const struct engine *e, uint32_t idx) {
        return (uint64_t)idx * e->cfg.chunk_size;
}

static size_t chunk_len(const struct engine *e, const struct blob *b, uint32_t idx) {
        uint64_t off = chunk_off(e, idx);
        uint64_t left = b->size - off;
        return left < e->cfg.chunk_size ? (size_t)left : e->cfg.chunk_size;
}

static struct chunk_key key_of(const struct blob *b, uint32_t idx) {
        return (struct chunk_key){.blob = b->id, .idx = idx};
}

static size_t digest_slot(const struct digest *d, size_t cap) {
        uint64_t h;
        memcpy(&h, d->bytes, sizeof(h)); /* a sha256 is already uniformly distributed */
        return (size_t)h & (cap - 1);
}

/* Caller holds lock. */
static struct blob *find_blob(struct engine *e, const struct digest *d) {
        for (size_t i = digest_slot(d, e->by_digest_cap);; i = (i + 1) & (e->by_digest_cap - 1)) {
                uint32_t v = e->by_digest[i];
                if (v == 0)
                        return NULL;
                if (digest_equal(&e->blobs[v - 1]->digest, d))
                        return e->blobs[v - 1];
        }
}

static void blob_info(const struct blob *b, struct engine_blob_info *ret) {
        ret->id = b->id;
        ret->digest = b->digest;
        ret->size = b->size;
        ret->chunks = b->nchunks;
        ret->chunks_present = b->npresent;
        ret->verified = b->verified;
        ret->pinned = b->pinned;
        ret->prefetching = b->prefetching;
        ret->prefetch_err = b->prefetch_err;
        ret->added_at = b->added_at;
        ret->last_access = b->last_access;
        memcpy(ret->source, b->source, sizeof(ret->source));
}

/* Caller holds lock. Tells the announcer that what we hold of B changed. */
static void changed(struct engine *e, const struct blob *b, uint32_t idx) {
        if (e->cfg.on_change)
                e->cfg.on_change(e->cfg.change_ud, &b->digest, idx);
}

/* Caller holds lock. B holds no chunk any more: its digests go too, so their memory follows
 * what is on disk (the budget), not every blob ever read. A refetch from a peer is checked
 * against the digests the directory carries. */
static void forget_shas(struct blob *b) {
        if (b->npresent)
                return;
        free(b->chunk_sha);
        free(b->sha_known);
        b->chunk_sha = NULL;
        b->sha_known = NULL;
}

/* Caller holds lock. Records the sha256 of chunk IDX of B. */
static void record_sha(struct blob *b, uint32_t idx, const struct digest *sha) {
        if (!b->chunk_sha) {
                b->chunk_sha = calloc(b->nchunks ? b->nchunks : 1, sizeof(*b->chunk_sha));
                b->sha_known = calloc(((size_t)b->nchunks + 7) / 8 + 1, 1);
                if (!b->chunk_sha || !b->sha_known) { /* peers then cannot check it: origin */
                        free(b->chunk_sha);
                        free(b->sha_known);
                        b->chunk_sha = NULL;
                        b->sha_known = NULL;
                        return;
                }
        }
        b->chunk_sha[idx] = *sha;
        b->sha_known[idx / 8] |= (uint8_t)(1u << (idx % 8));
}

/* Caller holds lock. Creates the in-memory blob. -ENOSPC at max_blobs. */
static int insert_blob(struct engine *e, const struct digest *d, uint64_t size, const char *source,
                       int64_t added_at, bool verified, struct blob **ret) {
        if (e->nblobs >= e->cfg.max_blobs)
                return -ENOSPC;
        uint64_t n = (size + e->cfg.chunk_size - 1) / e->cfg.chunk_size;
        if (n > UINT32_MAX)
                return -EFBIG;
        struct blob *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->present = calloc((size_t)(n + 7) / 8 + 1, 1);
        b->unread = calloc((size_t)(n + 7) / 8 + 1, 1);
        if (!b->present || !b->unread) {
                free(b->present);
                free(b->unread);
                free(b);
                return -ENOMEM;
        }
        b->id = e->nblobs;
        b->digest = *d;
        b->size = size;
        b->nchunks = (uint32_t)n;
        snprintf(b->source, sizeof(b->source), "%s", source);
        b->added_at = added_at;
        b->verified = verified;
        e->blobs[e->nblobs++] = b;
        size_t i = digest_slot(d, e->by_digest_cap);
        while (e->by_digest[i])
                i = (i + 1) & (e->by_digest_cap - 1);
        e->by_digest[i] = b->id + 1;
        e->st.blobs = e->nblobs;
        if (verified)
                e->st.blobs_verified++;
        changed(e, b, UINT32_MAX);
        *ret = b;
        return 0;
}

/* ---- index writes, collected under the lock and pushed after it ---------------------------- */

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

static void note(struct notes *ns, enum idx_note_kind k, const struct blob *b, uint32_t idx,
                 bool flag, const struct digest *sha) {
        if (ns->n == ns->cap) {
                size_t cap = ns->cap ? ns->cap * 2 : 16;
                struct idx_note *v = realloc(ns->v, cap * sizeof(*v));
                if (!v) {
                        /* The index then keeps a stale "present": start-up validation catches
                         * it, at the cost of a probe. */
                        log_debug("index note dropped: out of memory");
                        return;
                }
                ns->v = v;
                ns->cap = cap;
        }
        struct idx_note *n = &ns->v[ns->n++];
        n->kind = k;
        n->blob = b->digest;
        n->idx = idx;
        n->flag = flag;
        if (sha)
                n->sha = *sha;
}

static void notes_flush(struct engine *e, struct notes *ns) {
        for (size_t i = 0; i < ns->n; i++) {
                struct idx_note *n = &ns->v[i];
                switch (n->kind) {
                case NOTE_ABSENT:
                        idx_chunk_absent(e->ix, &n->blob, n->idx);
                        break;
                case NOTE_PRESENT:
                        idx_chunk_present(e->ix, &n->blob, n->idx, &n->sha);
                        break;
                case NOTE_VERIFIED:
                        idx_blob_verified(e->ix, &n->blob, n->flag);
                        break;
                case NOTE_FORGET:
                        idx_blob_forget_chunks(e->ix, &n->blob);
                        break;
                }
        }
        free(ns->v);
        *ns = (struct notes){0};
}

/* ---- presence and eviction (caller holds lock) --------------------------------------------- */

/* Caller holds lock. */
/* Caller holds lock. How many readahead pins there may be: max_inflight, but at most a quarter
 * of the budget's chunks (at least 2). Pinned chunks cannot be evicted, so in a small cache
 * more would push out everything else, the hot set first. */
static unsigned ra_pin_cap(const struct engine *e) {
        uint64_t quarter = e->effective_budget / e->cfg.chunk_size / 4;
        unsigned cap = quarter < e->cfg.max_inflight ? (unsigned)quarter : e->cfg.max_inflight;
        return cap < 2 ? 2 : cap;
}

static void ra_pin(struct engine *e, struct blob *b, uint32_t idx) {
        unsigned ring = e->cfg.max_inflight, cap = ra_pin_cap(e);
        if (e->ra_count && e->ra_count >= cap) { /* release the oldest */
                policy_unpin(e->policy, e->ra_pins[e->ra_head]);
                e->ra_head = (e->ra_head + 1) % ring;
                e->ra_count--;
        }
        if (e->ra_count >= cap || policy_pin(e->policy, key_of(b, idx)) < 0)
                return;
        e->ra_pins[(e->ra_head + e->ra_count) % ring] = key_of(b, idx);
        e->ra_count++;
}

/* Caller holds lock. The reader reached a readahead chunk: it is an ordinary chunk now.
 * Returns whether it was one. */
static bool ra_release(struct engine *e, struct blob *b, uint32_t idx) {
        unsigned cap = e->cfg.max_inflight;
        for (unsigned i = 0; i < e->ra_count; i++) {
                unsigned pos = (e->ra_head + i) % cap;
                if (e->ra_pins[pos].blob != b->id || e->ra_pins[pos].idx != idx)
                        continue;
                policy_unpin(e->policy, e->ra_pins[pos]);
                /* close the gap: move the oldest entry into it */
                e->ra_pins[pos] = e->ra_pins[e->ra_head];
                e->ra_head = (e->ra_head + 1) % cap;
                e->ra_count--;
                return true;
        }
        return false;
}

/* Caller holds lock. A reader reads present chunk IDX. Only a re-reference counts as a hit for
 * the policy: not the first read of a chunk readahead brought in, and not the second, third ...
 * FUSE request of one stream inside the same chunk. Counting those would make a one-time scan
 * look hot and defeat S3-FIFO's scan resistance. */
static void touch(struct engine *e, struct blob *b, uint32_t idx, struct engine_stream *stream) {
        bool first_read = bit_get(b->unread, idx);
        if (first_read) {
                bit_clear(b->unread, idx);
                ra_release(e, b, idx);
        }
        uint64_t tag = ((uint64_t)b->id << 32 | idx) + 1;
        bool same_stream_chunk = stream && stream->last_chunk == tag;
        if (stream)
                stream->last_chunk = tag;
        if (!first_read && !same_stream_chunk)
                policy_touch(e->policy, key_of(b, idx));
}

/* Caller holds lock. A chunk that lands a little ahead of its blob's verification frontier is
 * pinned until the frontier has hashed it. Without this, a fast sequential reader under a small
 * budget outruns the frontier, the chunks in between leave the small FIFO unhashed, and the blob
 * never verifies. Bounded: only within HASH_PIN_WINDOW chunks of the frontier (a random read
 * further on pins nothing), and at most min(HASH_PIN_WINDOW, ra_pin_cap()) in all. */
#define HASH_PIN_WINDOW 16 /* > readahead ramp + the kernel's 1 MiB + worker reordering */

static void hash_pin(struct engine *e, struct blob *b, uint32_t idx) {
        if (b->verified || idx < b->hashed || idx - b->hashed >= HASH_PIN_WINDOW)
                return;
        uint64_t bit = UINT64_C(1) << (idx - b->hashed);
        /* Like readahead pins, at most a quarter of the budget: pins of both kinds together
         * never take more than half the cache from operator-pinned blobs or a hot set. */
        unsigned ra_cap = ra_pin_cap(e);
        unsigned cap = ra_cap < HASH_PIN_WINDOW ? ra_cap : HASH_PIN_WINDOW;
        if ((b->hash_pins & bit) || e->hash_pin_count >= cap)
                return;
        if (policy_pin(e->policy, key_of(b, idx)) < 0)
                return;
        b->hash_pins |= bit;
        e->hash_pin_count++;
}

/* Caller holds lock. The frontier moves past chunk b->hashed. */
static void hash_pin_advance(struct engine *e, struct blob *b) {
        if (b->hash_pins & 1) {
                policy_unpin(e->policy, key_of(b, b->hashed));
                e->hash_pin_count--;
        }
        b->hash_pins >>= 1;
        b->hashed++;
}

/* Caller holds lock. Chunk IDX leaves the cache: its pin goes with its policy entry. */
static void hash_pin_drop(struct engine *e, struct blob *b, uint32_t idx) {
        if (idx < b->hashed || idx - b->hashed >= 64)
                return;
        uint64_t bit = UINT64_C(1) << (idx - b->hashed);
        if (b->hash_pins & bit) {
                b->hash_pins &= ~bit;
                e->hash_pin_count--;
        }
}

/* Forgets chunk IDX of B: bit, policy entry; the bytes are punched by the caller or already
 * gone. */
static void mark_absent(struct engine *e, struct blob *b, uint32_t idx, struct notes *ns) {
        if (!bit_get(b->present, idx))
                return;
        bit_clear(b->present, idx);
        bit_clear(b->unread, idx);
        b->npresent--;
        ra_release(e, b, idx); /* a stale ring entry would later unpin someone else's pin */
        hash_pin_drop(e, b, idx);
        policy_remove(e->policy, key_of(b, idx));
        note(ns, NOTE_ABSENT, b, idx, false, NULL);
        forget_shas(b);
        changed(e, b, idx);
}

/* Caller holds lock. Drops chunk K (already out of the policy): bit, index, bytes. */
static void evict_chunk(struct engine *e, struct chunk_key k, struct notes *ns) {
        struct blob *b = e->blobs[k.blob];
        /* Clear the bit, then punch: a reader that finds the bit clear never reads the bytes. */
        bit_clear(b->present, k.idx);
        bit_clear(b->unread, k.idx);
        b->npresent--;
        note(ns, NOTE_ABSENT, b, k.idx, false, NULL);
        forget_shas(b);
        changed(e, b, k.idx);
        int r = store_punch(e->store, &b->digest, chunk_off(e, k.idx), chunk_len(e, b, k.idx));
        if (r < 0)
                log_debug("store punch failed blob_id=%u chunk=%u err=%s", b->id, k.idx,
                          strerror(-r));
        e->st.evicted_chunks++;
}

/* Caller holds lock. Evicts down to the budget in the policy's order, passing over chunks of
 * operator-pinned blobs; only if that is not enough are those evicted too. The passed-over
 * chunks go back into the policy (as ghosts they land in main, where pinned blobs belong). */
static void evict_to_budget(struct engine *e, struct notes *ns) {
        uint64_t budget = policy_budget(e->policy);
        struct chunk_key k, *deferred = NULL;
        size_t ndeferred = 0, cap = 0;
        uint64_t deferred_bytes = 0;
        while (policy_next_victim(e->policy, &k)) {
                struct blob *b = e->blobs[k.blob];
                if (b->pinned) {
                        if (ndeferred == cap) {
                                size_t ncap = cap ? cap * 2 : 64;
                                struct chunk_key *v = realloc(deferred, ncap * sizeof(*v));
                                if (!v) { /* cannot defer: evict it after all */
                                        evict_chunk(e, k, ns);
                                        continue;
                                }
                                deferred = v;
                                cap = ncap;
                        }
                        deferred[ndeferred++] = k;
                        deferred_bytes += chunk_len(e, b, k.idx);
                        policy_set_budget(e->policy,
                                          budget > deferred_bytes ? budget - deferred_bytes : 0);
                        continue;
                }
                evict_chunk(e, k, ns);
        }
        policy_set_budget(e->policy, budget);
        for (size_t i = 0; i < ndeferred; i++) {
                struct blob *b = e->blobs[deferred[i].blob];
                policy_insert(e->policy, deferred[i], (uint32_t)chunk_len(e, b, deferred[i].idx));
        }
        free(deferred);
        if (ndeferred) /* only pinned blobs (or chunks in use) are left to evict */
                while (policy_next_victim(e->policy, &k))
                        evict_chunk(e, k, ns);
}

/* Pins chunk IDX for read PR and remembers it, so the read unpins exactly what it pinned. */
static void pin_for(struct engine *e, struct pending *pr, uint32_t idx) {
        if (policy_pin(e->policy, key_of(pr->blob, idx)) == 0)
                pr->pinned |= UINT64_C(1) << (idx - pr->first);
}

static void unpin_all(struct engine *e, struct pending *pr) {
        for (uint32_t i = pr->first; i <= pr->last; i++)
                if (pr->pinned & (UINT64_C(1) << (i - pr->first)))
                        policy_unpin(e->policy, key_of(pr->blob, i));
        pr->pinned = 0;
}

/* ---- answering reads ------------------------------------------------------------------------ */

/* Copies the read's bytes from the store (or, for the part lying in chunk FRESH_IDX, from
 * FRESH, the chunk just fetched) and replies. Lost chunks (-ESTALE) make the read fail with
 * EIO after they are marked absent, so the next read refetches them. Called without lock; the
 * read's chunks are pinned. */
static int copy_read(struct engine *e, struct pending *pr, uint8_t *out, const uint8_t *fresh,
                     uint32_t fresh_idx, uint32_t *ret_lost) {
        struct blob *b = pr->blob;
        size_t done = 0;
        for (uint32_t i = pr->first; i <= pr->last; i++) {
                uint64_t coff = chunk_off(e, i);
                uint64_t from = pr->off > coff ? pr->off : coff;
                uint64_t to = coff + chunk_len(e, b, i);
                if (pr->off + pr->len < to)
                        to = pr->off + pr->len;
                size_t n = (size_t)(to - from);
                if (fresh && i == fresh_idx) {
                        memcpy(out + done, fresh + (from - coff), n);
                } else {
                        int r = store_read(e->store, &b->digest, from, out + done, n);
                        if (r < 0) {
                                *ret_lost = i;
                                return r;
                        }
                }
                done += n;
        }
        return 0;
}

static void answer(struct engine *e, struct pending *pr, const uint8_t *fresh, uint32_t fresh_idx) {
        int err = pr->err;
        uint8_t *buf = NULL;
        uint32_t lost = 0;
        if (err == 0) {
                if (fresh && pr->first == pr->last && pr->first == fresh_idx) {
                        /* the common case: served straight from the fetched buffer */
                        pr->reply(pr->ctx, 0, fresh + (pr->off - chunk_off(e, fresh_idx)), pr->len);
                        goto out_unpin;
                }
                buf = thread_buffer(e);
                if (!buf)
                        err = -ENOMEM;
                else
                        err = copy_read(e, pr, buf, fresh, fresh_idx, &lost);
        }
        if (err == -ESTALE) {
                struct notes ns = {0};
                pthread_mutex_lock(&e->lock);
                mark_absent(e, pr->blob, lost, &ns);
                e->st.lost_chunks++;
                pthread_mutex_unlock(&e->lock);
                notes_flush(e, &ns);
                log_warning("store lost a chunk blob_id=%u chunk=%u hint=\"it will be refetched\"",
                            pr->blob->id, lost);
                err = -EIO;
        }
        if (err < 0)
                pr->reply(pr->ctx, err, NULL, 0);
        else
                pr->reply(pr->ctx, 0, buf, pr->len);
out_unpin:
        pthread_mutex_lock(&e->lock);
        if (err < 0)
                e->st.read_errors++;
        unpin_all(e, pr);
        pthread_mutex_unlock(&e->lock);
        free(pr);
}

/* ---- fetching ------------------------------------------------------------------------------- */

static void on_fetched(void *ud, int err, const char *reason, uint8_t *buf, size_t len);

/* Caller holds lock. Starts a fetch for chunk IDX of B unless one runs; returns it (NULL on
 * allocation failure). The caller calls submit() for new ones after unlocking. */
static struct inflight *inflight_get(struct engine *e, struct blob *b, uint32_t idx, bool readahead,
                                     bool *ret_new) {
        for (struct inflight *f = b->inflight; f; f = f->next)
                if (f->idx == idx) {
                        *ret_new = false;
                        return f;
                }
        struct inflight *f = calloc(1, sizeof(*f));
        if (!f)
                return NULL;
        f->blob = b;
        f->idx = idx;
        f->readahead = readahead;
        f->e = e;
        f->next = b->inflight;
        b->inflight = f;
        e->inflight_count++;
        e->st.inflight_chunks = e->inflight_count;
        if (readahead)
                e->st.readahead_chunks++;
        *ret_new = true;
        return f;
}

static void submit(struct engine *e, struct inflight *f) {
        struct blob *b = f->blob;
        uint64_t deadline = now_ms() + e->cfg.fetch_timeout_ms;
        pthread_rwlock_rdlock(&e->fetch_lock);
        if (e->fetch_stopped) {
                pthread_rwlock_unlock(&e->fetch_lock);
                on_fetched(f, -ECANCELED, "shutting down", NULL, 0);
                return;
        }
        if (e->cfg.source)
                source_fetch(e->cfg.source, &b->digest, b->size, b->source, f->idx,
                             chunk_off(e, f->idx), chunk_len(e, b, f->idx), deadline, on_fetched,
                             f);
        else
                origin_fetch(e->origin, b->source, &b->digest, chunk_off(e, f->idx),
                             chunk_len(e, b, f->idx), deadline, on_fetched, f);
        pthread_rwlock_unlock(&e->fetch_lock);
}

/* Origin thread: hand the result to a worker. */
static void on_fetched(void *ud, int err, const char *reason, uint8_t *buf, size_t len) {
        struct inflight *f = ud;
        struct engine *e = f->e;
        struct completion *c = calloc(1, sizeof(*c));
        if (!c) {
                /* Cannot even queue the failure: fail it here, synchronously. */
                free(buf);
                log_err("engine error=\"out of memory\" what=completion");
                abort();
        }
        c->fl = f;
        c->err = err;
        snprintf(c->reason, sizeof(c->reason), "%s", reason ? reason : "");
        c->buf = buf;
        c->len = len;
        pthread_mutex_lock(&e->cq_lock);
        *e->cq_tail = c;
        e->cq_tail = &c->next;
        pthread_cond_signal(&e->cq_cond);
        pthread_mutex_unlock(&e->cq_lock);
}

/* Caller holds lock. Unlinks F from its blob and returns its waiters. */
static struct waiter *inflight_end(struct engine *e, struct inflight *f) {
        struct blob *b = f->blob;
        for (struct inflight **pp = &b->inflight; *pp; pp = &(*pp)->next)
                if (*pp == f) {
                        *pp = f->next;
                        break;
                }
        e->inflight_count--;
        e->st.inflight_chunks = e->inflight_count;
        struct waiter *w = f->waiters;
        free(f);
        return w;
}

/* Caller holds lock. Readahead after a sequential read ending at chunk LAST. */
static void readahead(struct engine *e, struct blob *b, uint32_t last, unsigned window,
                      struct inflight **starts, size_t *nstarts, size_t max_starts) {
        for (uint32_t i = last + 1; i <= last + window && i < b->nchunks; i++) {
                if (e->inflight_count >= e->cfg.max_inflight || *nstarts == max_starts)
                        return;
                if (bit_get(b->present, i))
                        continue;
                bool is_new;
                struct inflight *f = inflight_get(e, b, i, true, &is_new);
                if (f && is_new)
                        starts[(*nstarts)++] = f;
        }
}

#define STARTS_MAX 64

/* Caller holds lock. Readahead ramps up with the length of the sequential run: nothing until
 * the reader has gone through four chunks in order, then one chunk more per chunk read, up to
 * readahead_chunks. The kernel already reads up to 1 MiB ahead of any reader (a single 1 MiB
 * pread arrives as three 1 MiB requests), so starting earlier only fetches chunks a random
 * reader never wanted; a streaming reader still has the pipe full within a few chunks. Reads that
 * arrive slightly out of order (the kernel issues them concurrently) still count as
 * sequential. */
static unsigned stream_window(struct engine *e, struct engine_stream *s, uint64_t off, size_t len) {
        uint64_t slack = e->cfg.max_read;
        bool sequential = s->run > 0 && off + slack >= s->next_off && off <= s->next_off + slack;
        if (sequential) {
                s->run += len;
        } else {
                s->run = len;
        }
        if (off + len > s->next_off || !sequential)
                s->next_off = off + len;
        uint64_t chunks = s->run / e->cfg.chunk_size;
        if (chunks < 4)
                return 0;
        return chunks - 3 < e->cfg.readahead_chunks ? (unsigned)(chunks - 3)
                                                    : e->cfg.readahead_chunks;
}

/* Read ahead from the store (store_readahead): how many chunks past the one a sequential reader
 * reads, and after how long a run. The store reads exactly what it is asked for, so without this
 * a stream of present chunks waits for one synchronous disk read per request; with the next few
 * chunks already in flight the disk works while we copy. Measured with bench item 1 (sequential
 * 1 MiB reads of a warm 1 GiB blob). The pages this costs are bounded by the store
 * (STORE_RA_MAX_BYTES), not by the number of streams. Two chunks of run before starting: the
 * kernel's own 1 MiB FUSE readahead makes any sequential reader show two in a row at once, and a
 * random reader almost never does. */
#define STORE_RA_CHUNKS 4
#define STORE_RA_MIN_RUN 2

/* Caller holds lock. The present chunks [*RET_FROM, *RET_TO) a stream whose read ended in chunk
 * LAST should have read ahead from the store: up to STORE_RA_CHUNKS past LAST, stopping at the
 * first absent chunk (that one is the network readahead's business), and none the stream has
 * already passed (a late request must not ask again for chunks already read and dropped). */
static void store_ra_window(const struct engine *e, const struct blob *b,
                            const struct engine_stream *s, uint32_t last, uint32_t *ret_from,
                            uint32_t *ret_to) {
        uint64_t cs = e->cfg.chunk_size;
        uint64_t from = (uint64_t)last + 1, to = from + STORE_RA_CHUNKS;
        *ret_from = *ret_to = 0;
        if (s->run < STORE_RA_MIN_RUN * cs)
                return;
        if (s->next_off / cs > from)
                from = s->next_off / cs;
        if (to > b->nchunks)
                to = b->nchunks;
        uint64_t i = from;
        while (i < to && bit_get(b->present, (uint32_t)i))
                i++;
        if (i > from) {
                *ret_from = (uint32_t)from;
                *ret_to = (uint32_t)i;
        }
}

void engine_read(struct engine *e, uint32_t id, uint64_t off, size_t len,
                 struct engine_stream *stream, engine_reply_fn reply, void *ctx) {
        struct inflight *starts[STARTS_MAX];
        size_t nstarts = 0;
        if (len > e->cfg.max_read)
                len = e->cfg.max_read;
        for (int attempt = 0;; attempt++) {
                pthread_mutex_lock(&e->lock);
                if (id >= e->nblobs) {
                        pthread_mutex_unlock(&e->lock);
                        reply(ctx, -ENOENT, NULL, 0);
                        return;
                }
                struct blob *b = e->blobs[id];
                if (off >= b->size || len == 0) {
                        pthread_mutex_unlock(&e->lock);
                        reply(ctx, 0, NULL, 0);
                        return;
                }
                if (b->failed_until_ms && now_ms() < b->failed_until_ms) {
                        e->st.read_errors++;
                        pthread_mutex_unlock(&e->lock);
                        reply(ctx, -EIO, NULL, 0);
                        return;
                }
                if (len > b->size - off)
                        len = (size_t)(b->size - off);
                uint32_t first = (uint32_t)(off / e->cfg.chunk_size);
                uint32_t last = (uint32_t)((off + len - 1) / e->cfg.chunk_size);
                /* A blob of one chunk is served only verified (see engine.h). */
                bool must_verify = b->nchunks == 1 && !b->verified;
                unsigned missing = 0;
                for (uint32_t i = first; i <= last; i++)
                        if (!bit_get(b->present, i) || must_verify)
                                missing++;
                if (missing && b->fetch_failed_until_ms && now_ms() < b->fetch_failed_until_ms) {
                        /* The last fetch for this blob failed moments ago: the kernel's
                         * immediate retry and impatient readers get EIO at once instead of
                         * another full fetch timeout each. */
                        e->st.read_errors++;
                        pthread_mutex_unlock(&e->lock);
                        reply(ctx, -EIO, NULL, 0);
                        return;
                }

                unsigned window = stream ? stream_window(e, stream, off, len) : 0;
                /* Last access, for blobctl ls: at most one index write a minute per blob. */
                int64_t now_s = (int64_t)time(NULL);
                bool accessed = now_s - b->last_access >= 60;
                if (accessed)
                        b->last_access = now_s;

                struct pending sync_pr = {
                        .blob = b, .off = off, .len = len, .first = first, .last = last};
                if (missing == 0) {
                        e->st.hits += last - first + 1;
                        for (uint32_t i = first; i <= last; i++) {
                                touch(e, b, i, stream);
                                pin_for(e, &sync_pr, i);
                        }
                        if (window)
                                readahead(e, b, last, window, starts, &nstarts, STARTS_MAX);
                        uint32_t ra_from = 0, ra_to = 0;
                        if (stream)
                                store_ra_window(e, b, stream, last, &ra_from, &ra_to);
                        pthread_mutex_unlock(&e->lock);
                        if (accessed)
                                idx_blob_accessed(e->ix, &b->digest, now_s);
                        for (size_t i = 0; i < nstarts; i++)
                                submit(e, starts[i]);
                        nstarts = 0;
                        /* Before our own copy, so the disk reads ahead while we wait for it. A
                         * chunk evicted meanwhile is read ahead as a hole: harmless (the
                         * store bounds it, and reads still see the hole). */
                        for (uint32_t i = ra_from; i < ra_to; i++)
                                store_readahead(e->store, &b->digest, chunk_off(e, i),
                                                chunk_len(e, b, i));

                        uint8_t *buf = thread_buffer(e);
                        uint32_t lost = 0;
                        int r = buf ? copy_read(e, &sync_pr, buf, NULL, 0, &lost) : -ENOMEM;
                        if (r == 0)
                                reply(ctx, 0, buf, len);
                        struct notes ns = {0};
                        pthread_mutex_lock(&e->lock);
                        unpin_all(e, &sync_pr);
                        if (r == -ESTALE) {
                                mark_absent(e, b, lost, &ns);
                                e->st.lost_chunks++;
                        }
                        pthread_mutex_unlock(&e->lock);
                        notes_flush(e, &ns);
                        if (r == -ESTALE && attempt < 3) {
                                log_warning("store lost a chunk blob_id=%u chunk=%u "
                                            "hint=\"refetching it\"",
                                            b->id, lost);
                                continue; /* the chunk is a miss now */
                        }
                        if (r < 0)
                                reply(ctx, r == -ESTALE ? -EIO : r, NULL, 0);
                        return;
                }

                struct pending *pr = calloc(1, sizeof(*pr));
                if (!pr) {
                        pthread_mutex_unlock(&e->lock);
                        reply(ctx, -ENOMEM, NULL, 0);
                        return;
                }
                *pr = (struct pending){.reply = reply,
                                       .ctx = ctx,
                                       .blob = b,
                                       .off = off,
                                       .len = len,
                                       .first = first,
                                       .last = last};
                for (uint32_t i = first; i <= last; i++) {
                        if (bit_get(b->present, i) && !must_verify) {
                                e->st.hits++;
                                touch(e, b, i, stream);
                                pin_for(e, pr, i);
                                continue;
                        }
                        e->st.misses++;
                        if (stream) /* its next reads inside this chunk are not re-references */
                                stream->last_chunk = ((uint64_t)b->id << 32 | i) + 1;
                        bool is_new;
                        struct inflight *f = inflight_get(e, b, i, false, &is_new);
                        struct waiter *w = f ? malloc(sizeof(*w)) : NULL;
                        if (!w) {
                                pr->err = -ENOMEM;
                                if (f && is_new) {
                                        inflight_end(e, f);
                                }
                                continue;
                        }
                        w->pr = pr;
                        w->next = f->waiters;
                        f->waiters = w;
                        pr->missing++;
                        if (is_new && nstarts < STARTS_MAX)
                                starts[nstarts++] = f;
                }
                if (window)
                        readahead(e, b, last, window, starts, &nstarts, STARTS_MAX);
                bool answer_now = pr->missing == 0; /* every fetch failed to start */
                pthread_mutex_unlock(&e->lock);
                if (accessed)
                        idx_blob_accessed(e->ix, &b->digest, now_s);
                for (size_t i = 0; i < nstarts; i++)
                        submit(e, starts[i]);
                if (answer_now)
                        answer(e, pr, NULL, 0);
                return;
        }
}

/* ---- completion workers -------------------------------------------------------------------- */

/* Writes a fetched chunk, shrinking the effective budget while the disk is full. */
static int write_chunk(struct engine *e, struct blob *b, uint32_t idx, const uint8_t *buf,
                       size_t len) {
        for (int attempt = 0;; attempt++) {
                int r = store_write(e->store, &b->digest, b->size, chunk_off(e, idx), buf, len);
                if (r != -ENOSPC || attempt >= 8)
                        return r;
                struct notes ns = {0};
                pthread_mutex_lock(&e->lock);
                uint64_t used = policy_used_bytes(e->policy);
                uint64_t floor = e->cfg.chunk_size;
                uint64_t target = used > len + floor ? used - len : floor;
                bool shrunk = target < e->effective_budget;
                if (shrunk) {
                        log_warning("store disk full dir=%s budget=%" PRIu64
                                    " effective_budget=%" PRIu64
                                    " hint=\"shrinking the cache to fit the disk; free "
                                    "space or lower --cache-budget\"",
                                    store_dir(e->store), e->budget, target);
                        e->effective_budget = target;
                        e->st.effective_budget_bytes = target;
                        e->st.store_full_events++;
                        policy_set_budget(e->policy, target);
                        evict_to_budget(e, &ns);
                }
                pthread_mutex_unlock(&e->lock);
                notes_flush(e, &ns);
                if (!shrunk && attempt >= 2)
                        return r; /* nothing left to free: the disk is full of other things */
        }
}

/* Discards every chunk of B after a verification failure. Caller holds lock. */
static void discard_blob(struct engine *e, struct blob *b, struct notes *ns) {
        for (uint32_t i = 0; i < b->nchunks; i++)
                if (bit_get(b->present, i)) {
                        bit_clear(b->present, i);
                        bit_clear(b->unread, i);
                        ra_release(e, b, i);
                        hash_pin_drop(e, b, i);
                        policy_remove(e->policy, key_of(b, i));
                }
        b->npresent = 0;
        b->generation++;
        /* The recorded chunk digests described bytes that failed the whole-blob check. */
        free(b->chunk_sha);
        free(b->sha_known);
        b->chunk_sha = NULL;
        b->sha_known = NULL;
        changed(e, b, UINT32_MAX);
        note(ns, NOTE_FORGET, b, 0, false, NULL);
        store_remove(e->store, &b->digest);
}

/* Advances B's verification frontier through present chunks, starting with FRESH (chunk
 * FRESH_IDX's bytes) when it is the next one. Runs without lock; b->hashing is ours. Returns
 * true when the blob turned out corrupt. */
static bool advance_frontier(struct engine *e, struct blob *b, const uint8_t *fresh,
                             uint32_t fresh_idx) {
        uint8_t *tmp = NULL;
        bool corrupt = false;
        pthread_mutex_lock(&e->lock);
        uint64_t gen = b->generation;
        for (;;) {
                uint32_t i = b->hashed;
                if (i >= b->nchunks || !bit_get(b->present, i) || b->generation != gen)
                        break;
                bool from_fresh = fresh && i == fresh_idx;
                if (!from_fresh)
                        policy_pin(e->policy, key_of(b, i));
                pthread_mutex_unlock(&e->lock);

                size_t n = chunk_len(e, b, i);
                const uint8_t *data = fresh;
                int r = 0;
                if (!from_fresh) {
                        if (!tmp)
                                tmp = malloc(e->cfg.chunk_size);
                        r = tmp ? store_read(e->store, &b->digest, chunk_off(e, i), tmp, n)
                                : -ENOMEM;
                        data = tmp;
                }
                if (r == 0) {
                        if (!b->sha) {
                                b->sha = EVP_MD_CTX_new();
                                if (!b->sha || !EVP_DigestInit_ex(b->sha, EVP_sha256(), NULL))
                                        r = -ENOMEM;
                        }
                        if (r == 0)
                                EVP_DigestUpdate(b->sha, data, n);
                }
                pthread_mutex_lock(&e->lock);
                if (!from_fresh)
                        policy_unpin(e->policy, key_of(b, i));
                if (r < 0)
                        break; /* try again when the next chunk lands */
                hash_pin_advance(e, b);
        }
        if (b->hashed == b->nchunks && b->generation == gen && b->sha) {
                struct digest got;
                unsigned int dl = 0;
                EVP_DigestFinal_ex(b->sha, got.bytes, &dl);
                EVP_MD_CTX_free(b->sha);
                b->sha = NULL;
                b->hashed = 0; /* every hash pin was released on the way */
                struct notes ns = {0};
                if (digest_equal(&got, &b->digest)) {
                        b->verified = true;
                        e->st.blobs_verified++;
                        note(&ns, NOTE_VERIFIED, b, 0, true, NULL);
                } else {
                        char want[DIGEST_HEX_LEN + 1], have[DIGEST_HEX_LEN + 1];
                        digest_to_hex(&b->digest, want);
                        digest_to_hex(&got, have);
                        log_warning("blob failed verification digest=sha256:%s got=sha256:%s "
                                    "source=%s hint=\"its chunks are discarded; reads fail with "
                                    "EIO, then it is refetched\"",
                                    want, have, b->source);
                        e->st.verify_failures++;
                        b->failed_until_ms = now_ms() + e->cfg.verify_retry_ms;
                        discard_blob(e, b, &ns);
                        corrupt = true;
                }
                b->hashing = false;
                pthread_cond_broadcast(&e->hash_cond);
                pthread_mutex_unlock(&e->lock);
                notes_flush(e, &ns);
                free(tmp);
                return corrupt;
        }
        log_debug("verification frontier paused blob_id=%u hashed=%u chunks=%u next_present=%d",
                  b->id, b->hashed, b->nchunks,
                  b->hashed < b->nchunks ? (int)bit_get(b->present, b->hashed) : -1);
        b->hashing = false;
        pthread_cond_broadcast(&e->hash_cond);
        pthread_mutex_unlock(&e->lock);
        free(tmp);
        return false;
}

/* Caller holds lock. Whether chunks [from, end) of B are all present. */
static bool present_from(const struct blob *b, uint32_t from) {
        for (uint32_t i = from; i < b->nchunks; i++)
                if (!bit_get(b->present, i))
                        return false;
        return true;
}

#define PREFETCH_WINDOW 8

/* Caller holds lock. Keeps up to PREFETCH_WINDOW (and the in-flight limit) of B's missing
 * chunks in flight for engine_prefetch(); clears b->prefetching when nothing is left. */
static void prefetch_pump(struct engine *e, struct blob *b, struct inflight **starts,
                          size_t *nstarts, size_t max_starts) {
        unsigned window =
                PREFETCH_WINDOW < e->cfg.max_inflight ? PREFETCH_WINDOW : e->cfg.max_inflight;
        while (b->prefetching && b->prefetch_next < b->nchunks && b->prefetch_inflight < window &&
               *nstarts < max_starts) {
                uint32_t i = b->prefetch_next++;
                if (bit_get(b->present, i))
                        continue;
                bool is_new;
                struct inflight *f = inflight_get(e, b, i, true, &is_new);
                if (!f || !is_new)
                        continue; /* a reader's fetch is already getting it */
                f->prefetch = true;
                b->prefetch_inflight++;
                starts[(*nstarts)++] = f;
        }
        if (b->prefetch_next >= b->nchunks && b->prefetch_inflight == 0)
                b->prefetching = false;
}

static void complete(struct engine *e, struct completion *c) {
        struct inflight *f = c->fl;
        struct blob *b = f->blob;
        uint32_t idx = f->idx;
        int err = c->err;
        struct digest sha;
        bool was_prefetch = f->prefetch;
        struct inflight *starts[PREFETCH_WINDOW];
        size_t nstarts = 0;

        if (err == 0) {
                digest_sha256(c->buf, c->len, &sha);
                err = write_chunk(e, b, idx, c->buf, c->len);
                if (err < 0) {
                        snprintf(c->reason, sizeof(c->reason), "store write failed: %s",
                                 strerror(-err));
                }
        }

        struct notes ns = {0};
        struct pending *done = NULL;
        bool frontier = false, verify_first = false;
        pthread_mutex_lock(&e->lock);
        uint64_t gen = b->generation;
        if (err == 0 && !bit_get(b->present, idx)) {
                if (policy_insert(e->policy, key_of(b, idx), (uint32_t)c->len) == -ENOSPC) {
                        evict_to_budget(e, &ns);
                        policy_insert(e->policy, key_of(b, idx), (uint32_t)c->len);
                }
                bit_set(b->present, idx);
                b->npresent++;
                record_sha(b, idx, &sha);
                note(&ns, NOTE_PRESENT, b, idx, false, &sha);
                changed(e, b, idx);
                pthread_cond_broadcast(&e->landed_cond);
                if (was_prefetch) /* wanted whole: let it graduate to main, don't pin it */
                        policy_touch(e->policy, key_of(b, idx));
                else if (!f->waiters) {
                        bit_set(b->unread, idx); /* its first read is not a re-reference */
                        ra_pin(e, b, idx);
                }
                hash_pin(e, b, idx);
        }
        struct waiter *w = inflight_end(e, f);
        if (err < 0)
                pthread_cond_broadcast(&e->landed_cond); /* peers waiting on it give up */
        if (was_prefetch) {
                b->prefetch_inflight--;
                if (err < 0 && b->prefetching) {
                        b->prefetching = false;
                        b->prefetch_err = err;
                }
                prefetch_pump(e, b, starts, &nstarts, PREFETCH_WINDOW);
        }
        while (w) {
                struct waiter *next = w->next;
                struct pending *pr = w->pr;
                if (err < 0)
                        pr->err = -EIO;
                else if (!(pr->pinned & (UINT64_C(1) << (idx - pr->first))))
                        pin_for(e, pr, idx);
                if (--pr->missing == 0) {
                        pr->next_done = done;
                        done = pr;
                }
                free(w);
                w = next;
        }
        if (err < 0 && err != -ECANCELED) {
                /* Back off per blob: 1 s, 2 s, 4 s ... up to the fetch timeout. */
                unsigned streak = b->fetch_fail_streak < 16 ? b->fetch_fail_streak : 16;
                uint64_t backoff = UINT64_C(1000) << streak;
                if (backoff > e->cfg.fetch_timeout_ms)
                        backoff = e->cfg.fetch_timeout_ms;
                b->fetch_failed_until_ms = now_ms() + backoff;
                b->fetch_fail_streak++;
        }
        if (err == 0) {
                b->fetch_failed_until_ms = 0;
                b->fetch_fail_streak = 0;
                evict_to_budget(e, &ns);
                if (!b->verified && !b->hashing && b->hashed < b->nchunks &&
                    bit_get(b->present, b->hashed)) {
                        b->hashing = frontier = true;
                        /* Will the frontier reach the end now? Then verify before answering. */
                        verify_first = true;
                        for (uint32_t i = b->hashed; i < b->nchunks && verify_first; i++)
                                verify_first = bit_get(b->present, i);
                }
        }
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &ns);
        for (size_t k = 0; k < nstarts; k++)
                submit(e, starts[k]);

        if (err < 0) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(5000);
                uint64_t suppressed = 0;
                if (err != -ECANCELED && log_ratelimit_ok(&rl, &suppressed)) {
                        char hex[DIGEST_HEX_LEN + 1];
                        digest_to_hex(&b->digest, hex);
                        log_warning("chunk fetch failed digest=sha256:%s chunk=%u source=%s "
                                    "err=%s reason=\"%s\" suppressed=%" PRIu64,
                                    hex, idx, b->source, strerror(-err), c->reason, suppressed);
                }
        }
        /* A read that covers the blob's last chunk is what completes a sequential reader: it
         * is answered only after the blob is verified whenever verification is possible now
         * (every chunk present). Another worker may be mid-way through the frontier (it
         * decided before our chunk was present): wait for it, then finish the job. */
        bool holds_last = false;
        for (struct pending *pr = done; pr; pr = pr->next_done)
                holds_last |= pr->last == b->nchunks - 1;
        if (err == 0 && holds_last && !verify_first) {
                pthread_mutex_lock(&e->lock);
                while (!frontier && b->hashing)
                        pthread_cond_wait(&e->hash_cond, &e->lock);
                bool can_finish =
                        !b->verified && b->generation == gen && present_from(b, b->hashed);
                if (can_finish) {
                        if (!frontier)
                                b->hashing = frontier = true;
                        verify_first = true;
                }
                pthread_mutex_unlock(&e->lock);
        }
        bool corrupt = false;
        if (frontier && verify_first)
                corrupt = advance_frontier(e, b, c->buf, idx);
        pthread_mutex_lock(&e->lock);
        bool discarded = b->generation != gen; /* another worker found the blob corrupt */
        pthread_mutex_unlock(&e->lock);
        for (struct pending *pr = done; pr;) {
                struct pending *next = pr->next_done;
                if (corrupt || (err == 0 && discarded))
                        pr->err = -EIO;
                answer(e, pr, err == 0 ? c->buf : NULL, idx);
                pr = next;
        }
        if (frontier && !verify_first)
                advance_frontier(e, b, c->buf, idx);
        free(c->buf);
        free(c);
}

static void *worker_main(void *arg) {
        struct engine *e = arg;
        for (;;) {
                pthread_mutex_lock(&e->cq_lock);
                while (!e->cq_head && !e->stopping)
                        pthread_cond_wait(&e->cq_cond, &e->cq_lock);
                struct completion *c = e->cq_head;
                if (!c) { /* stopping and drained */
                        pthread_mutex_unlock(&e->cq_lock);
                        return NULL;
                }
                e->cq_head = c->next;
                if (!e->cq_head)
                        e->cq_tail = &e->cq_head;
                pthread_mutex_unlock(&e->cq_lock);
                complete(e, c);
        }
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

int engine_new(const struct engine_config *cfg, struct index *ix, struct store *store,
               struct origin *origin, struct engine **ret) {
        /* A read spans at most max_read / chunk_size + 1 chunks; pending reads track their pins
         * in 64 bits. */
        if (cfg->chunk_size == 0 || cfg->max_blobs == 0 || cfg->max_read == 0 ||
            cfg->max_read / cfg->chunk_size + 2 > 64)
                return -EINVAL;
        struct engine *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->cfg = *cfg;
        if (e->cfg.workers == 0)
                e->cfg.workers = 2;
        e->ix = ix;
        e->store = store;
        e->origin = origin;
        e->budget = e->effective_budget = cfg->cache_budget;
        e->st.budget_bytes = e->st.effective_budget_bytes = cfg->cache_budget;
        pthread_mutex_init(&e->lock, NULL);
        pthread_cond_init(&e->hash_cond, NULL);
        pthread_cond_init(&e->landed_cond, NULL);
        pthread_rwlock_init(&e->fetch_lock, NULL);
        pthread_mutex_init(&e->cq_lock, NULL);
        pthread_cond_init(&e->cq_cond, NULL);
        e->cq_tail = &e->cq_head;
        e->by_digest_cap = 16;
        while (e->by_digest_cap < (size_t)cfg->max_blobs * 2)
                e->by_digest_cap *= 2;
        e->blobs = calloc(cfg->max_blobs, sizeof(*e->blobs));
        e->by_digest = calloc(e->by_digest_cap, sizeof(*e->by_digest));
        /* Resident chunks can exceed budget/chunk_size by the pinned ones and by short last
         * chunks; the margin keeps -ENOSPC from the policy a corner case. */
        size_t max_entries = (size_t)(cfg->cache_budget / cfg->chunk_size) * 2 + 4096;
        e->policy = policy_new(cfg->cache_budget, max_entries);
        e->workers = calloc(e->cfg.workers, sizeof(*e->workers));
        e->ra_pins = calloc(cfg->max_inflight ? cfg->max_inflight : 1, sizeof(*e->ra_pins));
        if (!e->cfg.max_inflight)
                e->cfg.max_inflight = 1;
        if (!e->blobs || !e->by_digest || !e->policy || !e->workers || !e->ra_pins) {
                engine_free(e);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < e->cfg.workers; i++) {
                int r = -pthread_create(&e->workers[i], NULL, worker_main, e);
                if (r < 0) {
                        engine_free(e);
                        return r;
                }
                e->nworkers++;
        }
        *ret = e;
        return 0;
}

void engine_free(struct engine *e) {
        if (!e)
                return;
        pthread_mutex_lock(&e->cq_lock);
        e->stopping = true;
        pthread_cond_broadcast(&e->cq_cond);
        pthread_mutex_unlock(&e->cq_lock);
        for (unsigned i = 0; i < e->nworkers; i++)
                pthread_join(e->workers[i], NULL);
        /* The origin is gone, so no fetch is still running: anything in flight was answered by
         * its completion. What remains is memory. */
        for (uint32_t i = 0; i < e->nblobs; i++) {
                struct blob *b = e->blobs[i];
                while (b->inflight) {
                        struct waiter *w = inflight_end(e, b->inflight);
                        while (w) {
                                struct waiter *next = w->next;
                                struct pending *pr = w->pr;
                                pr->err = -EIO;
                                if (--pr->missing == 0)
                                        answer(e, pr, NULL, 0);
                                free(w);
                                w = next;
                        }
                }
                EVP_MD_CTX_free(b->sha);
                free(b->chunk_sha);
                free(b->sha_known);
                free(b->present);
                free(b->unread);
                free(b);
        }
        free(e->workers);
        free(e->ra_pins);
        policy_free(e->policy);
        free(e->blobs);
        free(e->by_digest);
        pthread_mutex_destroy(&e->lock);
        pthread_cond_destroy(&e->hash_cond);
        pthread_cond_destroy(&e->landed_cond);
        pthread_rwlock_destroy(&e->fetch_lock);
        pthread_mutex_destroy(&e->cq_lock);
        pthread_cond_destroy(&e->cq_cond);
        free(e);
}

struct load_ctx {
        struct engine *e;
        unsigned lost, kept, dropped_blobs;
        struct notes ns;
};

static int load_blob(void *ud, const struct idx_blob *ib) {
        struct load_ctx *lc = ud;
        struct engine *e = lc->e;
        struct blob *b;
        if (ib->chunk_size != e->cfg.chunk_size) {
                /* Chunks of another size cannot be mapped: keep the blob, drop its chunks. */
                idx_blob_forget_chunks(e->ix, &ib->digest);
                store_remove(e->store, &ib->digest);
                struct idx_blob copy = *ib;
                copy.chunk_size = e->cfg.chunk_size;
                idx_put_blob(e->ix, &copy);
                lc->dropped_blobs++;
        }
        int r = insert_blob(e, &ib->digest, ib->size, ib->source, ib->added_at, ib->verified, &b);
        if (r == 0) {
                b->pinned = ib->pinned;
                b->last_access = ib->last_access;
        }
        if (r == -ENOSPC) {
                log_warning("index holds more blobs than --max-blobs max=%u", e->cfg.max_blobs);
                return r;
        }
        return r;
}

static int load_chunk(void *ud, const struct digest *d, uint32_t idx, bool present,
                      const struct digest *sha) {
        struct load_ctx *lc = ud;
        struct engine *e = lc->e;
        struct blob *b = find_blob(e, d);
        if (!b || idx >= b->nchunks || !present || bit_get(b->present, idx))
                return 0;
        if (store_probe(e->store, d, chunk_off(e, idx), chunk_len(e, b, idx)) < 0) {
                lc->lost++;
                idx_chunk_absent(e->ix, d, idx);
                return 0;
        }
        if (policy_insert(e->policy, key_of(b, idx), (uint32_t)chunk_len(e, b, idx)) < 0)
                return 0;
        bit_set(b->present, idx);
        b->npresent++;
        if (sha)
                record_sha(b, idx, sha);
        lc->kept++;
        return 0;
}

int engine_load(struct engine *e) {
        struct load_ctx lc = {.e = e};
        pthread_mutex_lock(&e->lock);
        int r = idx_for_each_blob(e->ix, load_blob, &lc);
        if (r == 0 || r == -ENOSPC) {
                idx_flush(e->ix); /* chunk-size fixes must land before we read chunks */
                r = idx_for_each_chunk(e->ix, load_chunk, &lc);
        }
        evict_to_budget(e, &lc.ns);
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &lc.ns);
        if (r < 0)
                return r;
        log_info("index loaded blobs=%u chunks_present=%u chunks_lost=%u used_bytes=%" PRIu64
                 " blobs_rechunked=%u",
                 e->nblobs, lc.kept, lc.lost, policy_used_bytes(e->policy), lc.dropped_blobs);
        return 0;
}

#define LOOKUP_TIMEOUT_MS 2000 /* a directory query on behalf of a lookup or an add */
#define UNKNOWN_TTL_MS 500     /* a digest no peer knew is not asked about again this soon */

int engine_add(struct engine *e, const char *refstr, struct engine_blob_info *ret, char *reason,
               size_t reason_len) {
        struct blob_ref ref;
        int r = ref_parse(refstr, &ref);
        if (r < 0) {
                snprintf(reason, reason_len,
                         "malformed reference: want REGISTRY/REPOSITORY@sha256:<64 hex>");
                return r == -EPROTONOSUPPORT ? -EINVAL : r;
        }
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, &ref.digest);
        if (b) {
                blob_info(b, ret);
                pthread_mutex_unlock(&e->lock);
                return 0;
        }
        pthread_mutex_unlock(&e->lock);

        char source[IDX_SOURCE_MAX];
        snprintf(source, sizeof(source), "%s/%s", ref.registry, ref.repository);
        uint64_t size = 0;
        /* A blob some peer already registered needs no origin round trip (and can be added
         * while the origin is down). The reference's own source is kept: it is where this
         * node's client said the blob lives. */
        char peer_source[IDX_SOURCE_MAX];
        r = e->cfg.source ? source_lookup(e->cfg.source, &ref.digest, now_ms() + LOOKUP_TIMEOUT_MS,
                                          &size, peer_source, sizeof(peer_source))
                          : -ENOTCONN;
        if (r < 0)
                r = origin_blob_size(e->origin, source, &ref.digest,
                                     now_ms() + e->cfg.fetch_timeout_ms, &size, reason, reason_len);
        if (r < 0)
                return r;

        pthread_mutex_lock(&e->lock);
        b = find_blob(e, &ref.digest); /* a concurrent add may have won */
        if (!b) {
                r = insert_blob(e, &ref.digest, size, source, (int64_t)time(NULL), false, &b);
                if (r < 0) {
                        pthread_mutex_unlock(&e->lock);
                        snprintf(reason, reason_len,
                                 r == -ENOSPC ? "too many blobs (--max-blobs)"
                                              : "cannot record the blob");
                        return r;
                }
                struct idx_blob ib = {.digest = b->digest,
                                      .size = size,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = b->added_at};
                memcpy(ib.source, source, sizeof(ib.source));
                pthread_mutex_unlock(&e->lock);
                idx_put_blob(e->ix, &ib);
                idx_flush(e->ix);
                pthread_mutex_lock(&e->lock);
        }
        blob_info(b, ret);
        pthread_mutex_unlock(&e->lock);
        return 0;
}

int engine_find(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (b)
                blob_info(b, ret);
        pthread_mutex_unlock(&e->lock);
        return b ? 0 : -ENOENT;
}

int engine_get(struct engine *e, uint32_t id, struct engine_blob_info *ret) {
        pthread_mutex_lock(&e->lock);
        bool ok = id < e->nblobs;
        if (ok)
                blob_info(e->blobs[id], ret);
        pthread_mutex_unlock(&e->lock);
        return ok ? 0 : -ENOENT;
}

uint32_t engine_blob_count(struct engine *e) {
        pthread_mutex_lock(&e->lock);
        uint32_t n = e->nblobs;
        pthread_mutex_unlock(&e->lock);
        return n;
}

void engine_get_stats(struct engine *e, struct engine_stats *ret) {
        pthread_mutex_lock(&e->lock);
        *ret = e->st;
        ret->used_bytes = policy_used_bytes(e->policy);
        ret->pinned_bytes = policy_pinned_bytes(e->policy);
        ret->chunks_present = policy_count(e->policy);
        ret->budget_bytes = e->budget;
        ret->effective_budget_bytes = e->effective_budget;
        ret->blobs_complete = ret->blobs_partial = ret->blobs_pinned = 0;
        for (uint32_t i = 0; i < e->nblobs; i++) {
                const struct blob *b = e->blobs[i];
                ret->blobs_pinned += b->pinned;
                if (b->npresent == b->nchunks)
                        ret->blobs_complete++;
                else if (b->npresent)
                        ret->blobs_partial++;
        }
        pthread_mutex_unlock(&e->lock);
}

void engine_set_budget(struct engine *e, uint64_t budget) {
        struct notes ns = {0};
        pthread_mutex_lock(&e->lock);
        e->budget = e->effective_budget = budget;
        policy_set_budget(e->policy, budget);
        evict_to_budget(e, &ns);
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &ns);
}

int engine_pin(struct engine *e, const struct digest *d, bool pinned) {
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (b)
                b->pinned = pinned;
        pthread_mutex_unlock(&e->lock);
        if (!b)
                return -ENOENT;
        idx_blob_pinned(e->ix, d, pinned);
        return idx_flush(e->ix);
}

/* Caller holds lock. Drops B's present chunks except those in use. */
static void evict_blob(struct engine *e, struct blob *b, struct notes *ns, uint64_t *chunks,
                       uint64_t *bytes) {
        b->prefetching = false;
        for (uint32_t i = 0; i < b->nchunks; i++) {
                if (!bit_get(b->present, i) || policy_pinned(e->policy, key_of(b, i)))
                        continue;
                mark_absent(e, b, i, ns);
                store_punch(e->store, &b->digest, chunk_off(e, i), chunk_len(e, b, i));
                (*chunks)++;
                *bytes += chunk_len(e, b, i);
        }
}

int engine_evict(struct engine *e, const struct digest *d, uint64_t *ret_chunks,
                 uint64_t *ret_bytes) {
        struct notes ns = {0};
        uint64_t chunks = 0, bytes = 0;
        int r = 0;
        pthread_mutex_lock(&e->lock);
        if (d) {
                struct blob *b = find_blob(e, d);
                if (b)
                        evict_blob(e, b, &ns, &chunks, &bytes);
                else
                        r = -ENOENT;
        } else {
                for (uint32_t i = 0; i < e->nblobs; i++)
                        evict_blob(e, e->blobs[i], &ns, &chunks, &bytes);
        }
        e->st.evicted_chunks += chunks;
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &ns);
        if (r == 0) {
                *ret_chunks = chunks;
                *ret_bytes = bytes;
        }
        return r;
}

int engine_prefetch(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        struct inflight *starts[PREFETCH_WINDOW];
        size_t nstarts = 0;
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (!b) {
                pthread_mutex_unlock(&e->lock);
                return -ENOENT;
        }
        if (b->size > e->effective_budget) {
                pthread_mutex_unlock(&e->lock);
                return -EFBIG;
        }
        if (!b->prefetching) {
                b->prefetching = true;
                b->prefetch_next = 0;
                b->prefetch_err = 0;
        }
        prefetch_pump(e, b, starts, &nstarts, PREFETCH_WINDOW);
        blob_info(b, ret);
        pthread_mutex_unlock(&e->lock);
        for (size_t i = 0; i < nstarts; i++)
                submit(e, starts[i]);
        return 0;
}

int engine_verify(struct engine *e, const struct digest *d, struct engine_verify_result *ret) {
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        uint32_t n = b ? b->nchunks : 0;
        pthread_mutex_unlock(&e->lock);
        if (!b)
                return -ENOENT;
        struct engine_verify_result res = {0};
        struct digest *want = calloc(n ? n : 1, sizeof(*want));
        bool *known = calloc(n ? n : 1, sizeof(*known));
        uint8_t *buf = malloc(e->cfg.chunk_size);
        int r = -ENOMEM;
        if (!want || !known || !buf)
                goto out_free;
        idx_flush(e->ix); /* digests of chunks that just landed */
        r = idx_chunk_digests(e->ix, d, n, want, known);
        if (r < 0)
                goto out_free;
        for (uint32_t i = 0; i < n; i++) {
                struct notes ns = {0};
                pthread_mutex_lock(&e->lock);
                bool present = bit_get(b->present, i) && policy_pin(e->policy, key_of(b, i)) == 0;
                pthread_mutex_unlock(&e->lock);
                if (!present)
                        continue;
                res.checked++;
                size_t len = chunk_len(e, b, i);
                int rr = store_read(e->store, &b->digest, chunk_off(e, i), buf, len);
                struct digest got;
                bool bad = false;
                if (rr == 0 && known[i]) {
                        digest_sha256(buf, len, &got);
                        bad = !digest_equal(&got, &want[i]);
                }
                pthread_mutex_lock(&e->lock);
                policy_unpin(e->policy, key_of(b, i));
                if (rr == -ESTALE || bad) {
                        mark_absent(e, b, i, &ns);
                        store_punch(e->store, &b->digest, chunk_off(e, i), len);
                }
                pthread_mutex_unlock(&e->lock);
                notes_flush(e, &ns);
                if (rr == -ESTALE)
                        res.lost++;
                else if (rr < 0) {
                        r = rr;
                        goto out_free;
                } else if (!known[i])
                        res.unknown++;
                else if (bad)
                        res.bad++;
                else
                        res.ok++;
        }
        if (res.bad || res.lost) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(d, hex);
                log_warning("verify found damaged chunks digest=sha256:%s bad=%u lost=%u "
                            "hint=\"they were dropped and will be refetched when read\"",
                            hex, res.bad, res.lost);
        }
        *ret = res;
        r = 0;
out_free:
        free(want);
        free(known);
        free(buf);
        return r;
}

/* ---- serving peers -------------------------------------------------------------------------- */

/* Caller holds lock. Whether a fetch of chunk IDX of B is running on this node. */
static bool chunk_inflight(const struct blob *b, uint32_t idx) {
        for (const struct inflight *f = b->inflight; f; f = f->next)
                if (f->idx == idx)
                        return true;
        return false;
}

#define SERVE_RA_CHUNKS 2 /* chunks read ahead from the store for a peer reading in order */

int engine_serve(struct engine *e, const struct digest *d, uint64_t off, size_t len,
                 uint64_t wait_ms, void *buf, struct digest *ret_sha, bool *ret_sha_known) {
        uint64_t deadline = now_ms() + wait_ms;
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (!b) {
                pthread_mutex_unlock(&e->lock);
                return -ENOENT;
        }
        if (len == 0 || off >= b->size || len > b->size - off) {
                pthread_mutex_unlock(&e->lock);
                return -EINVAL;
        }
        uint32_t first = (uint32_t)(off / e->cfg.chunk_size);
        uint32_t last = (uint32_t)((off + len - 1) / e->cfg.chunk_size);
        if (last - first + 1 > 63) {
                pthread_mutex_unlock(&e->lock);
                return -EINVAL;
        }
        /* Wait (bounded) for chunks this node is fetching; anything else is not ours to
         * fetch on a peer's behalf. */
        for (uint32_t i = first; i <= last; i++) {
                while (!bit_get(b->present, i)) {
                        if (!chunk_inflight(b, i) || now_ms() >= deadline || e->fetch_stopped) {
                                pthread_mutex_unlock(&e->lock);
                                return -ERANGE;
                        }
                        uint64_t left = deadline - now_ms();
                        if (left > 100)
                                left = 100; /* re-check the deadline and the fetch's fate */
                        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, left);
                        pthread_cond_timedwait(&e->landed_cond, &e->lock, &ts);
                }
        }
        if (!buf) { /* only waiting: the caller copies once it holds a buffer */
                pthread_mutex_unlock(&e->lock);
                return 0;
        }
        struct pending pr = {.blob = b, .off = off, .len = len, .first = first, .last = last};
        for (uint32_t i = first; i <= last; i++)
                pin_for(e, &pr, i);
        bool one = first == last && chunk_off(e, first) == off && chunk_len(e, b, first) == len;
        bool known = one && b->sha_known && bit_get(b->sha_known, first);
        if (known && ret_sha)
                *ret_sha = b->chunk_sha[first];
        /* A peer reading a blob asks for its chunks in order, a few at a time: start the disk
         * on the next ones we hold while we copy this one (bounded by the store). */
        uint32_t ra_to = last + 1;
        while (ra_to < b->nchunks && ra_to <= last + SERVE_RA_CHUNKS && bit_get(b->present, ra_to))
                ra_to++;
        pthread_mutex_unlock(&e->lock);
        if (ret_sha_known)
                *ret_sha_known = known;
        for (uint32_t i = last + 1; i < ra_to; i++)
                store_readahead(e->store, &b->digest, chunk_off(e, i), chunk_len(e, b, i));

        uint32_t lost = 0;
        int r = copy_read(e, &pr, buf, NULL, 0, &lost);
        struct notes ns = {0};
        pthread_mutex_lock(&e->lock);
        unpin_all(e, &pr);
        if (r == -ESTALE) {
                mark_absent(e, b, lost, &ns);
                e->st.lost_chunks++;
        }
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &ns);
        if (r == -ESTALE)
                return -ERANGE; /* lost from the store: not here after all */
        return r;
}

int engine_blob_size(struct engine *e, const struct digest *d, uint64_t *ret_size) {
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (b)
                *ret_size = b->size;
        pthread_mutex_unlock(&e->lock);
        return b ? 0 : -ENOENT;
}

int engine_snapshot(struct engine *e, uint32_t id, uint32_t sha_from, uint32_t sha_to,
                    struct wire_blob *ret) {
        pthread_mutex_lock(&e->lock);
        if (id >= e->nblobs) {
                pthread_mutex_unlock(&e->lock);
                return -ENOENT;
        }
        struct blob *b = e->blobs[id];
        size_t map_len = ((size_t)b->nchunks + 7) / 8 + 1;
        uint32_t ndig = 0;
        if (sha_to >= b->nchunks)
                sha_to = b->nchunks ? b->nchunks - 1 : 0;
        if (b->sha_known && b->nchunks)
                for (uint32_t i = sha_from; i <= sha_to; i++)
                        ndig += bit_get(b->present, i) && bit_get(b->sha_known, i);
        struct wire_blob w = {.digest = b->digest, .size = b->size, .nchunks = b->nchunks};
        memcpy(w.source, b->source, sizeof(w.source));
        w.present = malloc(map_len);
        w.sha_idx = malloc((ndig ? ndig : 1) * sizeof(*w.sha_idx));
        w.sha = malloc((ndig ? ndig : 1) * sizeof(*w.sha));
        if (!w.present || !w.sha_idx || !w.sha) {
                pthread_mutex_unlock(&e->lock);
                free(w.present);
                free(w.sha_idx);
                free(w.sha);
                return -ENOMEM;
        }
        memcpy(w.present, b->present, map_len);
        if (ndig)
                for (uint32_t i = sha_from; i <= sha_to; i++)
                        if (bit_get(b->present, i) && bit_get(b->sha_known, i)) {
                                w.sha_idx[w.ndigests] = i;
                                w.sha[w.ndigests++] = b->chunk_sha[i];
                        }
        pthread_mutex_unlock(&e->lock);
        *ret = w;
        return 0;
}

int engine_lookup(struct engine *e, const struct digest *d, struct engine_blob_info *ret) {
        if (engine_find(e, d, ret) == 0)
                return 0;
        if (!e->cfg.source)
                return -ENOENT;
        uint64_t now = now_ms();
        pthread_mutex_lock(&e->lock);
        for (size_t i = 0; i < sizeof(e->unknown) / sizeof(e->unknown[0]); i++)
                if (e->unknown[i].until_ms > now && digest_equal(&e->unknown[i].d, d)) {
                        pthread_mutex_unlock(&e->lock);
                        return -ENOENT;
                }
        pthread_mutex_unlock(&e->lock);

        uint64_t size = 0;
        char source[IDX_SOURCE_MAX];
        int r = source_lookup(e->cfg.source, d, now + LOOKUP_TIMEOUT_MS, &size, source,
                              sizeof(source));
        pthread_mutex_lock(&e->lock);
        if (r < 0) {
                unsigned slot = e->unknown_next++ % (sizeof(e->unknown) / sizeof(e->unknown[0]));
                e->unknown[slot].d = *d;
                e->unknown[slot].until_ms = now_ms() + UNKNOWN_TTL_MS;
                pthread_mutex_unlock(&e->lock);
                return -ENOENT;
        }
        struct blob *b = find_blob(e, d); /* registered meanwhile? */
        bool inserted = false;
        if (!b) {
                r = insert_blob(e, d, size, source, (int64_t)time(NULL), false, &b);
                if (r < 0) {
                        pthread_mutex_unlock(&e->lock);
                        return -ENOENT;
                }
                inserted = true;
        }
        blob_info(b, ret);
        pthread_mutex_unlock(&e->lock);
        if (inserted) {
                struct idx_blob ib = {.digest = *d,
                                      .size = size,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = ret->added_at};
                memcpy(ib.source, source, sizeof(ib.source));
                idx_put_blob(e->ix, &ib);
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(d, hex);
                log_debug("blob found through peers digest=sha256:%s size=%" PRIu64 " source=%s",
                          hex, size, source);
        }
        return 0;
}

void engine_stop_fetching(struct engine *e) {
        pthread_rwlock_wrlock(&e->fetch_lock);
        pthread_mutex_lock(&e->lock);
        e->fetch_stopped = true;
        for (uint32_t i = 0; i < e->nblobs; i++)
                e->blobs[i]->prefetching = false;
        pthread_cond_broadcast(&e->landed_cond); /* peers waiting in engine_serve give up */
        pthread_mutex_unlock(&e->lock);
        pthread_rwlock_unlock(&e->fetch_lock);
}

void engine_barrier(struct engine *e) {
        pthread_mutex_lock(&e->lock);
        pthread_mutex_unlock(&e->lock);
}

int engine_put(struct engine *e, const struct digest *d, const char *source, const void *buf,
               size_t len) {
        struct digest actual;
        digest_sha256(buf, len, &actual);
        if (!digest_equal(&actual, d))
                return -EBADMSG;
        if (len == 0 || len > e->effective_budget / 4)
                return -EFBIG;
        struct notes ns = {0};
        bool inserted = false;
        pthread_mutex_lock(&e->lock);
        struct blob *b = find_blob(e, d);
        if (!b) {
                int r = insert_blob(e, d, len, source, (int64_t)time(NULL), true, &b);
                if (r < 0) {
                        pthread_mutex_unlock(&e->lock);
                        return r;
                }
                inserted = true;
        }
        uint64_t gen = b->generation;
        pthread_mutex_unlock(&e->lock);
        if (inserted) {
                struct idx_blob ib = {.digest = *d,
                                      .size = len,
                                      .chunk_size = e->cfg.chunk_size,
                                      .added_at = (int64_t)time(NULL),
                                      .verified = true};
                snprintf(ib.source, sizeof(ib.source), "%s", source);
                idx_put_blob(e->ix, &ib);
        }
        for (uint32_t i = 0; i < b->nchunks; i++) {
                size_t n = chunk_len(e, b, i);
                const uint8_t *p = (const uint8_t *)buf + chunk_off(e, i);
                pthread_mutex_lock(&e->lock);
                /* Present already, or a fetch of it running: that one fills it. */
                bool skip = bit_get(b->present, i) || chunk_inflight(b, i) || b->generation != gen;
                pthread_mutex_unlock(&e->lock);
                if (skip)
                        continue;
                int r = write_chunk(e, b, i, p, n);
                if (r < 0) {
                        notes_flush(e, &ns);
                        return r;
                }
                struct digest sha;
                digest_sha256(p, n, &sha);
                pthread_mutex_lock(&e->lock);
                if (!bit_get(b->present, i) && b->generation == gen &&
                    policy_insert(e->policy, key_of(b, i), (uint32_t)n) == 0) {
                        bit_set(b->present, i);
                        b->npresent++;
                        record_sha(b, i, &sha);
                        note(&ns, NOTE_PRESENT, b, i, false, &sha);
                        changed(e, b, i);
                        evict_to_budget(e, &ns);
                }
                pthread_mutex_unlock(&e->lock);
        }
        pthread_mutex_lock(&e->lock);
        if (!b->verified && b->npresent == b->nchunks && b->generation == gen) {
                b->verified = true; /* its bytes were checked whole above */
                e->st.blobs_verified++;
                note(&ns, NOTE_VERIFIED, b, 0, true, NULL);
        }
        pthread_mutex_unlock(&e->lock);
        notes_flush(e, &ns);
        return 0;
}
