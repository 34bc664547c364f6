/* The landed ring: the last few chunks that landed, kept in memory for the reads that straddle
 * a chunk boundary right after a chunk landed.
 *
 * Why. The kernel's FUSE reads are not aligned to our chunks: a sequential reader's request
 * covers the tail of chunk k and the head of chunk k+1, and arrives (or is answered) when k+1
 * lands, by which time chunk k was written back and its pages dropped (store.c's page-cache
 * discipline). Without this, every such request reads chunk k's tail back from the disk: 1176
 * store reads for 512 chunks of a cold sequential read. The ring keeps the fetch's own buffer
 * (no copy: fetch completion hands it over instead of freeing it) so those reads are a memcpy.
 *
 * Integrity. An entry holds exactly the bytes that landed: verified as the fetch path verifies
 * them (against the origin's TLS or a digest from a home), written to the store and marked
 * present, in the blob's current generation. The invariant, kept under the engine lock:
 * an entry exists only while its chunk is present in the generation it landed in, and its blob
 * is not yet verified whole. The entry goes in by eng_landed_insert() in the same hold of the
 * engine lock in which the completion sets the chunk's present bit: inserted later (as it once
 * was, after the readers were answered), an older completion whose chunk was evicted and
 * landed again meanwhile could put its copy over the newer one, which is what the store
 * holds. Every change
 * that could break it passes through eng_changed() (the announcer's hook: a chunk becoming
 * absent, evicted, dropped after a store failure; the blob discarded after failing
 * verification; the blob verified), which calls eng_landed_changed(). So a read never gets
 * from the ring a byte the store would no longer give it for the same chunk, bar damage on
 * disk, which the ring's copy does not have.
 * Why drop a verified blob's entries: a blob verifies once every chunk was read through the
 * frontier, which is after a whole sequential read, when no straddling read is left to serve;
 * and re-reads of a verified blob go to the store, whose checks (bit rot, files deleted
 * under us) then see every byte. The blob's last chunk never enters (nothing straddles its
 * end), and an entry leaves once a read has been served its last byte (a sequential reader is
 * past it) and the verification frontier has hashed it, whichever comes last.
 *
 * The frontier's use. Chunks land on several workers at once and in bursts (a coalesced run
 * arrives faster than one thread hashes), so the worker holding a blob's frontier finds the
 * next chunks present but landed by others: it hashes them from here (eng_landed_get) rather
 * than reading them back from the store (a pread, the store's checksums, a copy: 8-10% of the
 * daemon's CPU on a cold origin read, measured with perf, issue 15). Same bytes either way:
 * the ones that landed, passed their checks and were written. The ring needs to be as deep as
 * the frontier lags (the readahead window and a few workers' worth), hence 16 by default.
 *
 * Bounds. At most cfg.landed_chunks entries (0: no ring), oldest out first, hashed or not (a
 * chunk pushed out before the frontier got to it is read from the store, as before). A buffer leaves
 * the ring at once but is freed when the last reader copying from it is done (a reference
 * count), so the bytes held are at most (landed_chunks + readers copying this instant) chunks;
 * landed_bytes counts all of them, for the memory figures (not the reference the completion
 * keeps while it finishes: that is its fetch buffer, there with or without the ring).
 *
 * Locking. landed_lock is a leaf below the engine lock: taken under it by insert and changed,
 * alone by lookups (eng_landed_copy runs on the copy path, without the engine lock). */
#include "engine/engine_int.h"

struct landed_buf {
        struct landed_buf *next_dead; /* on a list of buffers to free after unlocking */
        unsigned refs; /* the ring's + one per reader copying + the completion's (landed_lock) */
        /* The completion that landed it still holds a reference (landed_lock): that one is
         * its fetch buffer, not the ring's memory, and is not counted in landed_bytes. */
        bool completing;
        bool counted;  /* its bytes are in landed_bytes (landed_lock) */
        size_t len;    /* (immutable) */
        uint8_t *data; /* (immutable) */
};

struct landed_ent {
        uint32_t blob, idx;
        uint64_t seq; /* insertion order: the smallest goes first */
        struct landed_buf *buf;
        /* Who is done with it: a read was served its last byte (READ_PAST), the verification
         * frontier hashed it (HASHED). It leaves the ring when both are. */
        bool read_past, hashed;
};

int eng_landed_init(struct engine *e) {
        pthread_mutex_init(&e->landed_lock, NULL);
        if (e->cfg.landed_chunks == 0)
                return 0;
        e->landed = calloc(e->cfg.landed_chunks, sizeof(*e->landed));
        return e->landed ? 0 : -ENOMEM;
}

/* Caller holds landed_lock. Drops one reference; returns the buffer to free when it was the
 * last (freed by the caller after unlocking). */
static struct landed_buf *buf_unref(struct engine *e, struct landed_buf *lb) {
        --lb->refs;
        if (lb->counted && lb->refs == (lb->completing ? 1u : 0u)) {
                e->landed_bytes -= lb->len; /* neither the ring nor a reader holds it now */
                lb->counted = false;
        }
        return lb->refs ? NULL : lb;
}

/* Frees a list of buffers (next_dead), outside landed_lock: a 1 MiB free() is a munmap. */
static void buf_free(struct landed_buf *lb) {
        while (lb) {
                struct landed_buf *next = lb->next_dead;
                free(lb->data);
                free(lb);
                lb = next;
        }
}

/* Caller holds landed_lock. Takes entry I out of the ring (the last entry moves into slot I);
 * when that was the buffer's last reference, puts it on *DEAD. */
static void ent_remove(struct engine *e, unsigned i, struct landed_buf **dead) {
        struct landed_buf *lb = buf_unref(e, e->landed[i].buf);
        e->landed[i] = e->landed[--e->landed_n];
        __atomic_store_n(&e->landed_live, e->landed_n, __ATOMIC_RELAXED);
        if (lb) {
                lb->next_dead = *dead;
                *dead = lb;
        }
}

void eng_landed_free(struct engine *e) {
        struct landed_buf *dead = NULL;
        while (e->landed_n)
                ent_remove(e, 0, &dead);
        buf_free(dead);
        free(e->landed);
        pthread_mutex_destroy(&e->landed_lock);
}

struct landed_buf *eng_landed_insert(struct engine *e, struct blob *b, uint32_t idx, uint8_t *buf,
                                     size_t len, struct landed_buf *lb, struct landed_buf **dead) {
        ASSERT_HELD(&e->lock);
        if (!lb || e->cfg.landed_chunks == 0 || !buf || !bit_get(b->present, idx) || b->verified ||
            idx + 1 >= b->nchunks || len != chunk_len(e, b, idx))
                return NULL;
        /* The ring's reference and the completion's: it still answers and hashes from BUF. */
        *lb = (struct landed_buf){
                .refs = 2, .completing = true, .counted = true, .len = len, .data = buf};
        pthread_mutex_lock(&e->landed_lock);
        /* The chunk just became present, so no entry of it is left (becoming absent removed
         * it): this check only keeps the invariant obvious. */
        for (unsigned i = 0; i < e->landed_n; i++)
                if (e->landed[i].blob == b->id && e->landed[i].idx == idx) {
                        ent_remove(e, i, dead);
                        break;
                }
        if (e->landed_n == e->cfg.landed_chunks) {
                unsigned oldest = 0;
                for (unsigned i = 1; i < e->landed_n; i++)
                        if (e->landed[i].seq < e->landed[oldest].seq)
                                oldest = i;
                ent_remove(e, oldest, dead);
        }
        e->landed[e->landed_n++] =
                (struct landed_ent){.blob = b->id, .idx = idx, .seq = ++e->landed_seq, .buf = lb};
        __atomic_store_n(&e->landed_live, e->landed_n, __ATOMIC_RELAXED);
        e->landed_bytes += len;
        if (e->landed_bytes > e->landed_peak)
                e->landed_peak = e->landed_bytes;
        pthread_mutex_unlock(&e->landed_lock);
        return lb;
}

void eng_landed_release(struct engine *e, struct landed_buf *lb, struct landed_buf *dead) {
        ASSERT_NOT_HELD(&e->lock);
        if (lb) {
                pthread_mutex_lock(&e->landed_lock);
                lb->completing = false;
                struct landed_buf *last = buf_unref(e, lb);
                pthread_mutex_unlock(&e->landed_lock);
                if (last) {
                        last->next_dead = dead;
                        dead = last;
                }
        }
        buf_free(dead);
}

struct landed_buf *eng_landed_alloc(struct engine *e) {
        return e->cfg.landed_chunks ? malloc(sizeof(struct landed_buf)) : NULL;
}

void eng_landed_changed(struct engine *e, const struct blob *b, uint32_t idx) {
        ASSERT_HELD(&e->lock);
        /* Entries are added only under the engine lock, which we hold: 0 here is exact. */
        if (!__atomic_load_n(&e->landed_live, __ATOMIC_RELAXED))
                return;
        bool all = idx == UINT32_MAX || b->verified;
        if (!all && bit_get(b->present, idx))
                return; /* it became present: nothing of it can be in the ring */
        struct landed_buf *dead = NULL;
        pthread_mutex_lock(&e->landed_lock);
        for (unsigned i = 0; i < e->landed_n;) {
                const struct landed_ent *le = &e->landed[i];
                if (le->blob == b->id && (all || le->idx == idx))
                        ent_remove(e, i, &dead); /* slot I holds another entry now */
                else
                        i++;
        }
        pthread_mutex_unlock(&e->landed_lock);
        buf_free(dead); /* under the engine lock: a few munmaps, as rare as evictions */
}

bool eng_landed_copy(struct engine *e, const struct blob *b, uint32_t idx, uint64_t off_in_chunk,
                     uint8_t *out, size_t n) {
        if (!__atomic_load_n(&e->landed_live, __ATOMIC_RELAXED))
                return false; /* the common case of cached reads: not even a lock */
        struct landed_buf *lb = NULL, *dead = NULL;
        pthread_mutex_lock(&e->landed_lock);
        for (unsigned i = 0; i < e->landed_n; i++)
                if (e->landed[i].blob == b->id && e->landed[i].idx == idx) {
                        lb = e->landed[i].buf;
                        break;
                }
        if (lb && off_in_chunk + n <= lb->len) {
                lb->refs++;
                e->landed_hits++;
        } else {
                lb = NULL;
        }
        pthread_mutex_unlock(&e->landed_lock);
        if (!lb)
                return false;
        memcpy(out, lb->data + off_in_chunk, n);
        /* Pages the store read ahead for these bytes are not needed now. */
        store_note_served(e->store, &b->digest, chunk_off(e, idx) + off_in_chunk, n);
        pthread_mutex_lock(&e->landed_lock);
        if (off_in_chunk + n == lb->len) /* its last byte was read: a reader is past it */
                for (unsigned i = 0; i < e->landed_n; i++)
                        if (e->landed[i].buf == lb) {
                                if (e->landed[i].hashed)
                                        ent_remove(e, i, &dead);
                                else
                                        e->landed[i].read_past = true;
                                break;
                        }
        struct landed_buf *last = buf_unref(e, lb);
        if (last) {
                last->next_dead = dead;
                dead = last;
        }
        pthread_mutex_unlock(&e->landed_lock);
        buf_free(dead);
        return true;
}

bool eng_landed_holds(struct engine *e, const struct blob *b, uint32_t idx) {
        if (!__atomic_load_n(&e->landed_live, __ATOMIC_RELAXED))
                return false;
        bool found = false;
        pthread_mutex_lock(&e->landed_lock);
        for (unsigned i = 0; i < e->landed_n && !found; i++)
                found = e->landed[i].blob == b->id && e->landed[i].idx == idx;
        pthread_mutex_unlock(&e->landed_lock);
        return found;
}

void eng_landed_stats(struct engine *e, uint64_t *ret_bytes, uint64_t *ret_peak,
                      uint64_t *ret_hits) {
        pthread_mutex_lock(&e->landed_lock);
        *ret_bytes = e->landed_bytes;
        *ret_peak = e->landed_peak;
        *ret_hits = e->landed_hits;
        pthread_mutex_unlock(&e->landed_lock);
}

struct landed_buf *eng_landed_get(struct engine *e, const struct blob *b, uint32_t idx, size_t len,
                                  const uint8_t **ret_data) {
        if (!__atomic_load_n(&e->landed_live, __ATOMIC_RELAXED))
                return NULL;
        struct landed_buf *lb = NULL;
        pthread_mutex_lock(&e->landed_lock);
        for (unsigned i = 0; i < e->landed_n; i++)
                if (e->landed[i].blob == b->id && e->landed[i].idx == idx) {
                        if (e->landed[i].buf->len == len) {
                                lb = e->landed[i].buf;
                                lb->refs++;
                        }
                        break;
                }
        pthread_mutex_unlock(&e->landed_lock);
        if (lb)
                *ret_data = lb->data;
        return lb;
}

void eng_landed_put(struct engine *e, struct landed_buf *lb) {
        if (!lb)
                return;
        pthread_mutex_lock(&e->landed_lock);
        struct landed_buf *last = buf_unref(e, lb);
        pthread_mutex_unlock(&e->landed_lock);
        if (last)
                last->next_dead = NULL;
        buf_free(last);
}

void eng_landed_hashed(struct engine *e, const struct blob *b, uint32_t idx) {
        if (!__atomic_load_n(&e->landed_live, __ATOMIC_RELAXED))
                return;
        struct landed_buf *dead = NULL;
        pthread_mutex_lock(&e->landed_lock);
        for (unsigned i = 0; i < e->landed_n; i++)
                if (e->landed[i].blob == b->id && e->landed[i].idx == idx) {
                        if (e->landed[i].read_past)
                                ent_remove(e, i, &dead);
                        else
                                e->landed[i].hashed = true;
                        break;
                }
        pthread_mutex_unlock(&e->landed_lock);
        buf_free(dead);
}
