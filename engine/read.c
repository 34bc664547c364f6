/* The read path: engine_read() turns "LEN bytes at OFF of blob ID" into chunks. When every
 * chunk is present it pins them, copies them from the store into the thread's buffer and
 * replies at once; otherwise it queues a `pending` read on the chunks' fetches (fetch.c) and
 * returns, and the completion worker that lands its last missing chunk answers it
 * (eng_answer()).
 *
 * Invariants: the reply callback is called exactly once per engine_read; a read's chunks are
 * pinned from the moment it finds them present (or they land) until it has replied, so eviction
 * never races a copy; a chunk the store lost (-ESTALE) or whose bytes failed their checksum
 * (-EBADMSG) is marked absent before the read retries (at most MAX_REQUEUES times, then EIO),
 * so the read waits for its refetch and no damaged byte is served.
 * Cost: one max_read buffer per calling thread (freed at thread exit); the copy runs without
 * the lock. */
#include "engine/engine_int.h"

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

/* Copies the read's bytes from the store (or, for the part lying in chunk FRESH_IDX, from
 * FRESH, the chunk just fetched; or from the landed ring, landed.c, for a chunk that landed a
 * moment ago) and replies. Lost chunks (-ESTALE) make the read fail with
 * EIO after they are marked absent, so the next read refetches them. Called without lock; the
 * read's chunks are pinned. */
int eng_copy_read(struct engine *e, struct pending *pr, uint8_t *out, const uint8_t *fresh,
                  uint32_t fresh_idx, uint32_t *ret_lost) {
        ASSERT_NOT_HELD(&e->lock);
        struct blob *b = pr->blob;
        size_t done = 0;
        /* Consecutive chunks read from the store are read by one store_read(): a request
         * straddling a chunk edge (the kernel's are seldom chunk-aligned) costs one read of the
         * file and one of its checksums, not two of each. [run_from, run_from + run_len) of the
         * blob goes to OUT + run_done; run_first is its first chunk. */
        uint64_t run_from = 0;
        size_t run_len = 0, run_done = 0;
        uint32_t run_first = 0;
        for (uint32_t i = pr->first; i <= pr->last + 1; i++) {
                bool from_store = false;
                uint64_t from = 0;
                size_t n = 0;
                if (i <= pr->last) {
                        uint64_t coff = chunk_off(e, i);
                        uint64_t to = coff + chunk_len(e, b, i);
                        from = pr->off > coff ? pr->off : coff;
                        if (pr->off + pr->len < to)
                                to = pr->off + pr->len;
                        n = (size_t)(to - from);
                        if (fresh && i == fresh_idx)
                                memcpy(out + done, fresh + (from - coff), n);
                        else
                                from_store = !eng_landed_copy(e, b, i, from - coff, out + done, n);
                }
                if (run_len && !from_store) { /* the run ends before chunk I */
                        int r = store_read(e->store, &b->digest, run_from, out + run_done, run_len);
                        if (r < 0) {
                                *ret_lost = run_first;
                                /* Which chunk? Only a failure pays for asking each. */
                                for (uint32_t k = run_first; k < i; k++) {
                                        uint64_t kf = chunk_off(e, k) > run_from ? chunk_off(e, k)
                                                                                 : run_from;
                                        uint64_t kt = chunk_off(e, k) + chunk_len(e, b, k);
                                        if (kt > run_from + run_len)
                                                kt = run_from + run_len;
                                        if (store_read(e->store, &b->digest, kf,
                                                       out + run_done + (kf - run_from),
                                                       (size_t)(kt - kf)) < 0) {
                                                *ret_lost = k;
                                                break;
                                        }
                                }
                                return r;
                        }
                        run_len = 0;
                }
                if (from_store) {
                        if (!run_len) {
                                run_from = from;
                                run_done = done;
                                run_first = i;
                        }
                        run_len += n;
                }
                done += n;
        }
        return 0;
}

static void read_at(struct engine *e, uint32_t id, uint64_t off, size_t len,
                    struct engine_stream *stream, engine_reply_fn reply, void *ctx,
                    unsigned requeues);

/* How many times one read goes back to fetching a chunk the store lost before it gets EIO. */
#define MAX_REQUEUES 2

void eng_answer(struct engine *e, struct pending *pr, const uint8_t *fresh, uint32_t fresh_idx) {
        ASSERT_NOT_HELD(&e->lock);
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
                        err = eng_copy_read(e, pr, buf, fresh, fresh_idx, &lost);
        }
        if (eng_is_store_loss(err)) {
                struct notes ns = {0};
                eng_lock(&e->lock);
                bool log_it = eng_store_failed(e, pr->blob, lost, err, &ns);
                bool requeue = pr->requeues < MAX_REQUEUES;
                if (requeue)
                        eng_unpin_all(e, pr);
                eng_unlock(&e->lock);
                eng_notes_flush(e, &ns);
                if (log_it)
                        eng_log_corrupt(pr->blob, lost);
                else if (err == -ESTALE)
                        log_warning("store lost a chunk blob_id=%u chunk=%u hint=\"it will be "
                                    "refetched\"",
                                    pr->blob->id, lost);
                if (requeue) { /* the chunk is a miss now: the read waits for its refetch */
                        struct pending copy = *pr;
                        free(pr);
                        read_at(e, copy.blob->id, copy.off, copy.len, NULL, copy.reply, copy.ctx,
                                copy.requeues + 1);
                        return;
                }
                err = -EIO;
        }
        if (err < 0)
                pr->reply(pr->ctx, err, NULL, 0);
        else
                pr->reply(pr->ctx, 0, buf, pr->len);
out_unpin:
        eng_lock(&e->lock);
        if (err < 0)
                e->st.read_errors++;
        eng_unpin_all(e, pr);
        eng_unlock(&e->lock);
        free(pr);
}

void engine_read(struct engine *e, uint32_t id, uint64_t off, size_t len,
                 struct engine_stream *stream, engine_reply_fn reply, void *ctx) {
        read_at(e, id, off, len, stream, reply, ctx, 0);
}

static void read_at(struct engine *e, uint32_t id, uint64_t off, size_t len,
                    struct engine_stream *stream, engine_reply_fn reply, void *ctx,
                    unsigned requeues) {
        struct inflight *starts[STARTS_MAX];
        size_t nstarts = 0;
        if (len > e->cfg.max_read)
                len = e->cfg.max_read;
        for (int attempt = 0;; attempt++) {
                eng_lock(&e->lock);
                if (id >= e->nblobs) {
                        eng_unlock(&e->lock);
                        reply(ctx, -ENOENT, NULL, 0);
                        return;
                }
                struct blob *b = e->blobs[id];
                if (off >= b->size || len == 0) {
                        eng_unlock(&e->lock);
                        reply(ctx, 0, NULL, 0);
                        return;
                }
                if (b->failed_until_ms && now_ms() < b->failed_until_ms) {
                        e->st.read_errors++;
                        eng_unlock(&e->lock);
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
                        eng_unlock(&e->lock);
                        reply(ctx, -EIO, NULL, 0);
                        return;
                }

                unsigned window = stream ? eng_stream_window(e, stream, off, len) : 0;
                /* Last access, for blobctl ls: at most one index write a minute per blob. */
                int64_t now_s = (int64_t)time(NULL);
                bool accessed = now_s - b->last_access >= 60;
                if (accessed)
                        b->last_access = now_s;

                struct pending sync_pr = {
                        .blob = b, .off = off, .len = len, .first = first, .last = last};
                if (missing == 0 && last == b->nchunks - 1 && !b->verified) {
                        /* The read that completes a sequential reader, its chunks all here
                         * (read ahead): answered only once the blob verified, whenever that
                         * is possible now, exactly as when its last chunk lands (fetch.c).
                         * Otherwise a corrupt blob would read to EOF and fail only afterwards.
                         * This thread waits for local hashing only, never for the network. */
                        if (b->hashing) {
                                eng_cond_wait(&e->hash_cond, &e->lock);
                                eng_unlock(&e->lock);
                                continue; /* look again: verified, failed or paused */
                        }
                        if (eng_present_from(b, b->hashed)) {
                                b->hashing = true;
                                eng_unlock(&e->lock);
                                /* Our own pages are locked until we answer: left out. */
                                if (eng_advance_frontier(e, b, NULL, 0))
                                        eng_invalidate_blob(e, b, &sync_pr);
                                continue; /* verified now, or failed: EIO */
                        }
                        /* Chunks before it are missing: a partial read of an unverified blob,
                         * checked against the origin's TLS only (README, trust model). */
                }
                if (missing == 0) {
                        e->st.hits += last - first + 1;
                        for (uint32_t i = first; i <= last; i++) {
                                eng_touch(e, b, i, stream);
                                eng_pin_for(e, &sync_pr, i);
                        }
                        if (window)
                                eng_readahead(e, b, last, window, starts, &nstarts, STARTS_MAX);
                        uint32_t ra_from = 0, ra_to = 0;
                        if (stream)
                                eng_store_ra_window(e, b, stream, last, &ra_from, &ra_to);
                        eng_unlock(&e->lock);
                        if (accessed)
                                idx_blob_accessed(e->ix, &b->digest, now_s);
                        for (size_t i = 0; i < nstarts; i++)
                                eng_submit(e, starts[i]);
                        nstarts = 0;
                        /* Before our own copy, so the disk reads ahead while we wait for it. A
                         * chunk evicted meanwhile is read ahead as a hole: harmless (the
                         * store bounds it, and reads still see the hole). */
                        for (uint32_t i = ra_from; i < ra_to; i++)
                                if (!eng_landed_holds(e, b, i)) /* its reads come from memory */
                                        store_readahead(e->store, &b->digest, chunk_off(e, i),
                                                        chunk_len(e, b, i));

                        uint8_t *buf = thread_buffer(e);
                        uint32_t lost = 0;
                        int r = buf ? eng_copy_read(e, &sync_pr, buf, NULL, 0, &lost) : -ENOMEM;
                        if (r == 0)
                                reply(ctx, 0, buf, len);
                        eng_copy_finish(e, &sync_pr, r, lost);
                        if (eng_is_store_loss(r) && attempt < 3) {
                                if (r == -ESTALE)
                                        log_warning("store lost a chunk blob_id=%u chunk=%u "
                                                    "hint=\"refetching it\"",
                                                    b->id, lost);
                                continue; /* the chunk is a miss now */
                        }
                        if (r < 0)
                                reply(ctx, eng_is_store_loss(r) ? -EIO : r, NULL, 0);
                        return;
                }

                struct pending *pr = calloc(1, sizeof(*pr));
                if (!pr) {
                        eng_unlock(&e->lock);
                        reply(ctx, -ENOMEM, NULL, 0);
                        return;
                }
                *pr = (struct pending){.reply = reply,
                                       .ctx = ctx,
                                       .blob = b,
                                       .off = off,
                                       .len = len,
                                       .first = first,
                                       .last = last,
                                       .requeues = requeues};
                for (uint32_t i = first; i <= last; i++) {
                        if (bit_get(b->present, i) && !must_verify) {
                                e->st.hits++;
                                eng_touch(e, b, i, stream);
                                eng_pin_for(e, pr, i);
                                continue;
                        }
                        e->st.misses++;
                        if (stream) /* its next reads inside this chunk are not re-references */
                                stream->last_chunk = ((uint64_t)b->id << 32 | i) + 1;
                        bool is_new;
                        struct inflight *f = eng_inflight_get(e, b, i, false, &is_new);
                        struct waiter *w = f ? malloc(sizeof(*w)) : NULL;
                        if (!w) {
                                pr->err = -ENOMEM;
                                if (f && is_new) {
                                        eng_inflight_end(e, f);
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
                        eng_readahead(e, b, last, window, starts, &nstarts, STARTS_MAX);
                bool answer_now = pr->missing == 0; /* every fetch failed to start */
                eng_unlock(&e->lock);
                if (accessed)
                        idx_blob_accessed(e->ix, &b->digest, now_s);
                for (size_t i = 0; i < nstarts; i++)
                        eng_submit(e, starts[i]);
                if (answer_now)
                        eng_answer(e, pr, NULL, 0);
                return;
        }
}
