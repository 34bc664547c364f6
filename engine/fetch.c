/* Fetching: single flight, readahead windows and the completion workers.
 *
 * Life of a miss. engine_read() finds chunk k absent: it creates an `inflight` for (blob, k) or
 * joins the existing one, hangs a `pending` read on it, and returns. The source's
 * completion is handed to a worker, which hashes and writes the chunk, marks it present (pinned
 * for each waiter), evicts down to the budget, advances the blob's verification, and answers
 * every pending read whose last missing chunk this was.
 *
 * Invariants: at most one inflight per (blob, chunk); fetches are submitted only after the
 * engine lock is released, and never once engine_stop_fetching() has run (fetch_lock); every
 * inflight ends in exactly one completion, which answers or re-queues each of its waiters.
 * Runs. Readahead sends consecutive missing chunks as one run (src.fetch_run: one ranged GET
 * from the origin); each chunk of it is still its own inflight with its own completion, so a
 * run is single flight, readers and failures chunk by chunk exactly like separate fetches.
 *
 * Early answers. A read that needs only the chunk that just landed (and passed its checks) is
 * answered from the landed buffer before write-back (take_early()); the present bit is set
 * after write-back as always (DESIGN §4), so everything else waits as before.
 *
 * Cost: at most max_inflight fetches (readahead and prefetch count), one buffer each in the
 * fetcher (a run: one chunk buffer at a time); one completion struct per chunk on the queue;
 * `workers` threads. */
#include "engine/engine_int.h"

static void on_fetched(void *ud, int err, const char *reason, uint8_t *buf, size_t len,
                       const struct chunk_check *chk);

/* Caller holds lock. Starts a fetch for chunk IDX of B unless one runs; returns it (NULL on
 * allocation failure). The caller calls eng_submit() for new ones after unlocking. */
struct inflight *eng_inflight_get(struct engine *e, struct blob *b, uint32_t idx, bool readahead,
                                  bool *ret_new) {
        ASSERT_HELD(&e->lock);
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
        f->gen = b->generation;
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

void eng_submit(struct engine *e, struct inflight *f) {
        ASSERT_NOT_HELD(&e->lock);
        struct blob *b = f->blob;
        uint64_t deadline = now_ms() + e->cfg.fetch_timeout_ms;
        /* The run's members, taken before the fetch starts: any of them (F too) may complete
         * and be freed before fetch_run returns. */
        void *run[RUN_MAX_CHUNKS];
        uint32_t first = f->idx;
        unsigned n = 0;
        for (struct inflight *m = f; m && n < RUN_MAX_CHUNKS; m = m->run_next)
                run[n++] = m;
        pthread_rwlock_rdlock(&e->fetch_lock);
        if (e->fetch_stopped) {
                pthread_rwlock_unlock(&e->fetch_lock);
                for (unsigned i = 0; i < n; i++)
                        on_fetched(run[i], -ECANCELED, "shutting down", NULL, 0, NULL);
                return;
        }
        if (n > 1 && e->src.fetch_run) {
                e->src.fetch_run(e->src.ud, &b->digest, b->size, b->source, first, n,
                                 e->cfg.chunk_size, deadline, on_fetched, run);
        } else {
                for (unsigned i = 0; i < n; i++) {
                        struct inflight *m = run[i];
                        uint32_t idx = first + i; /* not m->idx: M may be gone already */
                        e->src.fetch(e->src.ud, &b->digest, b->size, b->source, idx,
                                     chunk_off(e, idx), chunk_len(e, b, idx), deadline, on_fetched,
                                     m);
                }
        }
        pthread_rwlock_unlock(&e->fetch_lock);
}

/* The source's thread (or eng_submit()'s, for a fetch refused at once): hand the result to a
 * worker. */
static void on_fetched(void *ud, int err, const char *reason, uint8_t *buf, size_t len,
                       const struct chunk_check *chk) {
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
        if (err == 0 && chk)
                c->chk = *chk;
        pthread_mutex_lock(&e->cq_lock);
        *e->cq_tail = c;
        e->cq_tail = &c->next;
        pthread_cond_signal(&e->cq_cond);
        pthread_mutex_unlock(&e->cq_lock);
}

/* Caller holds lock. Unlinks F from its blob and returns its waiters. */
struct waiter *eng_inflight_end(struct engine *e, struct inflight *f) {
        ASSERT_HELD(&e->lock);
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

/* The widest window the coalescing bookkeeping looks at (config allows up to 256). */
#define RA_WINDOW_MAX 256

/* Caller holds lock. Readahead after a sequential read ending at chunk LAST: starts fetches for
 * the missing chunks of the next WINDOW, at most max_inflight in flight in all.
 *
 * With a source that coalesces (src.fetch_run), consecutive missing chunks go as one run of up
 * to RUN_MAX_CHUNKS, and readahead waits until half the window (up to a run) is missing
 * before it starts, as long as something of the window is still in flight: a window sliding
 * one chunk per chunk read would otherwise start runs of one. The link stays busy: the run in
 * flight covers the time the reader takes to free the next half. Only each run's first
 * inflight goes into STARTS (eng_submit() sends the run). */
void eng_readahead(struct engine *e, struct blob *b, uint32_t last, unsigned window,
                   struct inflight **starts, size_t *nstarts, size_t max_starts) {
        ASSERT_HELD(&e->lock);
        if (window > RA_WINDOW_MAX)
                window = RA_WINDOW_MAX;
        uint64_t end64 = (uint64_t)last + 1 + window;
        /* Not further past the verification frontier than half the budget: the chunks between
         * it and the landing edge must stay until they are hashed, or the blob never verifies
         * (the frontier pauses at an evicted chunk for good). Runs land faster than one
         * thread hashes, so in a small cache the frontier sets the pace. */
        if (!b->verified) {
                uint64_t room = e->effective_budget / 2 / e->cfg.chunk_size;
                if (end64 > (uint64_t)b->hashed + room)
                        end64 = (uint64_t)b->hashed + room;
        }
        if (end64 <= (uint64_t)last + 1)
                return;
        uint32_t end = end64 < b->nchunks ? (uint32_t)end64 : b->nchunks;
        bool coalesce = e->src.fetch_run != NULL;
        if (coalesce && (uint64_t)last + 1 < end) {
                uint8_t busy[RA_WINDOW_MAX / 8 + 1] = {0};
                bool ahead = false;
                for (const struct inflight *f = b->inflight; f; f = f->next)
                        if (f->idx > last && f->idx < end) {
                                bit_set(busy, f->idx - last - 1);
                                ahead = true;
                        }
                unsigned missing = 0;
                for (uint32_t i = last + 1; i < end; i++)
                        missing += !bit_get(b->present, i) && !bit_get(busy, i - last - 1);
                unsigned span = end - last - 1; /* the window, after the frontier's limit */
                unsigned want = (span + 1) / 2 < RUN_MAX_CHUNKS ? (span + 1) / 2 : RUN_MAX_CHUNKS;
                if (missing == 0 || (ahead && missing < want))
                        return;
        }
        struct inflight *head = NULL, *tail = NULL;
        for (uint32_t i = last + 1; i < end; i++) {
                if (e->inflight_count >= e->cfg.max_inflight)
                        return;
                if (bit_get(b->present, i)) {
                        head = NULL;
                        continue;
                }
                bool extends =
                        coalesce && head && head->run_len < RUN_MAX_CHUNKS && tail->idx + 1 == i;
                if (!extends && *nstarts == max_starts)
                        return;
                bool is_new;
                struct inflight *f = eng_inflight_get(e, b, i, true, &is_new);
                if (!f)
                        return;
                if (!is_new) {
                        head = NULL; /* a run is consecutive chunks of ours only */
                        continue;
                }
                if (extends) {
                        tail->run_next = f;
                        tail = f;
                        head->run_len++;
                        continue;
                }
                f->run_len = 1;
                head = tail = f;
                starts[(*nstarts)++] = f;
        }
}

/* Caller holds lock. Readahead ramps up with the length of the sequential run: nothing until
 * the reader has gone through four chunks in order, then one chunk more per chunk read, up to
 * readahead_chunks. The kernel already reads up to 1 MiB ahead of any reader (a single 1 MiB
 * pread arrives as three 1 MiB requests), so starting earlier only fetches chunks a random
 * reader never wanted; a streaming reader still has the pipe full within a few chunks. Reads that
 * arrive slightly out of order (the kernel issues them concurrently) still count as
 * sequential. */
unsigned eng_stream_window(struct engine *e, struct engine_stream *s, uint64_t off, size_t len) {
        ASSERT_HELD(&e->lock);
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
void eng_store_ra_window(const struct engine *e, const struct blob *b,
                         const struct engine_stream *s, uint32_t last, uint32_t *ret_from,
                         uint32_t *ret_to) {
        ASSERT_HELD(&e->lock);
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

/* Caller holds lock. Takes off F the reads that can be answered from its landed bytes alone,
 * before write-back (first byte: no wait for pwrite and sync_file_range): reads within chunk
 * IDX only, so nothing else of theirs needs a pin. Not when IDX is the last chunk, nor when
 * this chunk may be the one that lets the frontier reach the end (no other chunk is absent):
 * those reads are answered after the verification, as before (complete()). The chunk's
 * present bit is still set only after write-back (DESIGN §4): readers that come later wait
 * on F as before. */
static struct pending *take_early(struct blob *b, struct inflight *f) {
        if (f->idx == b->nchunks - 1 || b->npresent + 1 >= b->nchunks)
                return NULL;
        struct pending *early = NULL;
        for (struct waiter **pp = &f->waiters; *pp;) {
                struct waiter *w = *pp;
                struct pending *pr = w->pr;
                if (pr->first == f->idx && pr->last == f->idx && pr->missing == 1 && pr->err == 0) {
                        *pp = w->next;
                        free(w);
                        pr->missing = 0;
                        pr->next_done = early;
                        early = pr;
                        continue;
                }
                pp = &w->next;
        }
        return early;
}

/* Caller holds lock. Whether B's frontier will hash chunk IDX (being fetched) as soon as it is
 * present: every chunk before it from the frontier on is present or being fetched, within
 * HASH_PIN_WINDOW, so each is held for the frontier once it lands (eng_hash_pin). A fetch
 * that fails leaves the frontier waiting for its refetch, as it always did. */
static bool frontier_will_reach(const struct blob *b, uint32_t idx) {
        if (b->verified || idx < b->hashed || idx - b->hashed >= HASH_PIN_WINDOW)
                return false;
        uint32_t coming = 0; /* bit i: chunk hashed + i is being fetched */
        for (const struct inflight *f = b->inflight; f; f = f->next)
                if (f->idx >= b->hashed && f->idx < idx)
                        coming |= UINT32_C(1) << (f->idx - b->hashed);
        for (uint32_t i = b->hashed; i < idx; i++)
                if (!bit_get(b->present, i) && !(coming & (UINT32_C(1) << (i - b->hashed))))
                        return false;
        return true;
}

/* Caller holds lock. Whether bytes a source checked by CHK, and that hash to SHA when HAVE_SHA,
 * may land as chunk IDX of verified blob B: by its chain values when it has them, else by its
 * plain digest; with neither recorded (a blob verified before chain values, its chunk's digest
 * lost), as they always could. */
static bool verified_lands(const struct blob *b, uint32_t idx, const struct chunk_check *chk,
                           bool have_sha, const struct digest *sha) {
        struct digest prev, want;
        if (eng_chain_step_of(b, idx, &prev, &want))
                return eng_chain_step_agrees(b, idx, chk);
        if (b->sha_known && bit_get(b->sha_known, idx))
                return have_sha && digest_equal(&b->chunk_sha[idx], sha);
        return true;
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

        bool had_early = false, own_hash = false;
        if (err == 0) {
                /* Asked for before the blob was discarded (another chunk failed it): these
                 * bytes are not the new generation's, whatever they are. */
                eng_lock(&e->lock);
                bool stale = b->generation != f->gen;
                eng_unlock(&e->lock);
                if (stale) {
                        err = -EIO;
                        snprintf(c->reason, sizeof(c->reason),
                                 "the blob was discarded while the chunk was on the way");
                }
        }
        bool have_sha = false, chain_ok = false, hashed_here = false;
        /* This completion set the chunk present: C->BUF is then what the store holds for it
         * and may stand in for it at the frontier; otherwise (a stale generation, or another
         * copy landed first) the frontier reads the chunk that is there. */
        bool landed_here = false;
        if (err == 0) {
                /* One hash per chunk: a source that checked the bytes hands us what it
                 * computed, a sha256 or a chain step (util/chain.h). */
                have_sha = c->chk.has_sha;
                if (have_sha)
                        sha = c->chk.sha;
                eng_lock(&e->lock);
                /* A verified blob lands only the bytes it verified with: checked against its
                 * chain values (the source's step agrees with them, or we take the step), or
                 * else its plain digest. */
                struct digest prev, want;
                bool verified = b->verified;
                chain_ok = verified && eng_chain_step_agrees(b, idx, &c->chk);
                bool must_chain = verified && !chain_ok && eng_chain_step_of(b, idx, &prev, &want);
                bool must_match = verified && !chain_ok && !must_chain && b->sha_known &&
                                  bit_get(b->sha_known, idx);
                if (must_chain) {
                        hashed_here = true;
                        eng_unlock(&e->lock);
                        chain_ok = chain_check(idx ? &prev : NULL, chunk_off(e, idx), c->buf,
                                               c->len, idx + 1 == b->nchunks, &want);
                        eng_lock(&e->lock);
                        if (!chain_ok) {
                                err = -EIO;
                                snprintf(c->reason, sizeof(c->reason),
                                         "chunk differs from the one the blob verified with");
                        }
                } else if (must_match && !have_sha) {
                        eng_unlock(&e->lock);
                        digest_sha256(c->buf, c->len, &sha);
                        have_sha = hashed_here = true;
                        eng_lock(&e->lock);
                        must_match = b->verified && b->sha_known && bit_get(b->sha_known, idx);
                }
                /* Answering before write-back leaves a moment where this chunk is answered but
                 * not present. A read of the blob's last chunk must not take that gap for a
                 * partial read and skip the verification it waits for (engine/read.c): we hold
                 * the frontier (b->hashing) across the gap, so that read waits on hash_cond
                 * until the chunk is present, and we run the frontier ourselves afterwards.
                 * While another worker holds it, nobody is answered early. */
                struct pending *early = NULL;
                if (err == 0 && (!must_match || digest_equal(&b->chunk_sha[idx], &sha)) &&
                    !b->hashing) {
                        early = take_early(b, f);
                        if (early)
                                b->hashing = own_hash = true;
                }
                /* A node alone (nobody to announce digests to: no on_change) leaves out the
                 * plain sha256 of a chunk its frontier will get to as soon as it is present
                 * (the next one, or all before it here or coming): the frontier records its
                 * chain value then, one hash in all. A node with peers hashes it now: readers
                 * waiting on this chunk (a claim) need a digest with our first announce, and
                 * the chain value comes only when the frontier passes the chunk. Measured:
                 * 8 nodes reading one blob at once, slowest 33-61 s and registry 1.00-1.10x
                 * without the plain digest, 11.3-12.3 s and 1.00x with it (bench item 4). */
                bool frontier_next = !e->cfg.on_change && frontier_will_reach(b, idx);
                eng_unlock(&e->lock);
                /* The bytes passed every check a chunk gets before it is served (the peer
                 * check in the source, the verified digest above; origin bytes are checked by
                 * the blob's frontier, as always). The ring of landed chunks (engine/landed.c)
                 * takes C->BUF below, when the chunk is marked present. */
                had_early = early != NULL;
                while (early) {
                        struct pending *next = early->next_done;
                        eng_answer(e, early, c->buf, idx);
                        early = next;
                }
                if (err == 0 && !have_sha && !c->chk.has_chain && !frontier_next) {
                        digest_sha256(c->buf, c->len, &sha);
                        have_sha = hashed_here = true;
                }
                if (err == 0) {
                        err = eng_write_chunk(e, b, idx, c->buf, c->len);
                        if (err < 0) {
                                snprintf(c->reason, sizeof(c->reason), "store write failed: %s",
                                         strerror(-err));
                        }
                }
        }

        struct notes ns = {0};
        struct pending *done = NULL;
        bool frontier = false, verify_first = false;
        struct landed_buf *lb = err == 0 ? eng_landed_alloc(e) : NULL, *ring = NULL, *dead = NULL;
        eng_lock(&e->lock);
        /* The generation the fetch began in, not the one it ends in: a discard while it was
         * on the way (another chunk failed the blob) leaves these bytes out of the new
         * generation, and its readers hear EIO as the discard's own readers do. */
        uint64_t gen = f->gen;
        e->st.landing_hashed_chunks += hashed_here;
        if (err == 0 && b->verified && !chain_ok &&
            !verified_lands(b, idx, &c->chk, have_sha, &sha)) {
                /* A refetch of a verified blob's chunk that is not the bytes that verified:
                 * never served, and never recorded (we announce these digests as verified). */
                err = -EIO;
                snprintf(c->reason, sizeof(c->reason),
                         "chunk differs from the one the blob verified with");
        }
        if (err == 0 && b->generation == gen && !bit_get(b->present, idx)) {
                if (policy_insert(e->policy, key_of(b, idx), (uint32_t)c->len) == -ENOSPC) {
                        eng_evict_to_budget(e, &ns);
                        policy_insert(e->policy, key_of(b, idx), (uint32_t)c->len);
                }
                bit_set(b->present, idx);
                b->npresent++;
                b->fetched_bytes += c->len;
                landed_here = true;
                ring = eng_landed_insert(e, b, idx, c->buf, c->len, lb, &dead);
                if (have_sha)
                        eng_record_sha(b, idx, &sha);
                /* Linked: a step of the blob's verification, done. Set (or cleared) with the
                 * present bit, so it always speaks of the bytes that are here, and against the
                 * values recorded now (the frontier may have replaced one meanwhile). */
                if (!eng_take_chain_check(b, idx, &c->chk, &ns) && b->linked)
                        bit_clear(b->linked, idx);
                eng_note(&ns, NOTE_PRESENT, b, idx, false, have_sha ? &sha : NULL);
                eng_changed(e, b, idx);
                pthread_cond_broadcast(&e->landed_cond);
                if (was_prefetch) /* wanted whole: let it graduate to main, don't pin it */
                        policy_touch(e->policy, key_of(b, idx));
                else if (!f->waiters && !had_early) {
                        bit_set(b->unread, idx); /* its first read is not a re-reference */
                        eng_ra_pin(e, b, idx);
                }
                eng_hash_pin(e, b, idx);
        }
        struct waiter *w = eng_inflight_end(e, f);
        if (err < 0)
                pthread_cond_broadcast(&e->landed_cond); /* peers waiting on it give up */
        if (was_prefetch) {
                b->prefetch_inflight--;
                if (err < 0 && b->prefetching) {
                        b->prefetching = false;
                        b->prefetch_err = err;
                }
                eng_prefetch_pump(e, b, starts, &nstarts, PREFETCH_WINDOW);
        }
        while (w) {
                struct waiter *next = w->next;
                struct pending *pr = w->pr;
                if (err < 0)
                        pr->err = -EIO;
                else if (!(pr->pinned & (UINT64_C(1) << (idx - pr->first))))
                        eng_pin_for(e, pr, idx);
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
                eng_evict_to_budget(e, &ns);
                if (!b->verified && (own_hash || !b->hashing) && b->hashed < b->nchunks &&
                    bit_get(b->present, b->hashed)) {
                        b->hashing = frontier = true;
                        /* Will the frontier reach the end now? Then verify before answering. */
                        verify_first = true;
                        for (uint32_t i = b->hashed; i < b->nchunks && verify_first; i++)
                                verify_first = bit_get(b->present, i);
                }
        }
        if (own_hash && !frontier) { /* the gap is closed: whoever waits for it looks again */
                b->hashing = false;
                pthread_cond_broadcast(&e->hash_cond);
        }
        eng_unlock(&e->lock);
        eng_notes_flush(e, &ns);
        for (size_t k = 0; k < nstarts; k++)
                eng_submit(e, starts[k]);

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
                eng_lock(&e->lock);
                while (!frontier && b->hashing)
                        eng_cond_wait(&e->hash_cond, &e->lock);
                bool can_finish =
                        !b->verified && b->generation == gen && eng_present_from(b, b->hashed);
                if (can_finish) {
                        if (!frontier)
                                b->hashing = frontier = true;
                        verify_first = true;
                }
                eng_unlock(&e->lock);
        }
        bool corrupt = false;
        if (frontier && verify_first)
                corrupt = eng_advance_frontier(e, b, landed_here ? c->buf : NULL, idx);
        if (corrupt) /* before the readers hear of it */
                eng_invalidate_blob(e, b, done);
        eng_lock(&e->lock);
        bool discarded = b->generation != gen; /* another worker found the blob corrupt */
        eng_unlock(&e->lock);
        /* That worker invalidates once its frontier returns, which may be after we answer:
         * drop the kernel's cache ourselves first (our own readers' pages left out; doing it
         * twice costs only the second walk), so no reader hears EIO while bytes that failed
         * are still cached. */
        if (err == 0 && discarded && !corrupt && done)
                eng_invalidate_blob(e, b, done);
        for (struct pending *pr = done; pr;) {
                struct pending *next = pr->next_done;
                if (corrupt || (err == 0 && discarded))
                        pr->err = -EIO;
                eng_answer(e, pr, err == 0 ? c->buf : NULL, idx);
                pr = next;
        }
        if (frontier && !verify_first &&
            eng_advance_frontier(e, b, landed_here ? c->buf : NULL, idx))
                eng_invalidate_blob(e, b, NULL);
        if (ring)
                c->buf = NULL; /* the ring's now, with our reference until here */
        else
                free(lb);
        eng_landed_release(e, ring, dead);
        free(c->buf);
        free(c);
}

void *eng_worker_main(void *arg) {
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
