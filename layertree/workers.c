/* The layer trees' worker threads: file reads (first: a container waits on them), index jobs
 * (at most builds_max at once; lt_index_job in build.c does the work) and, when idle, the
 * background completion of indexes loaded from their head. Workers may block: they read blobs
 * through the engine synchronously (lt_pread), which the FUSE threads never do. Part of the
 * layer trees (layertree.c; contract in layertree.h).
 *
 * Each worker owns one READ_MAX buffer and up to READERS_PER_WORKER layer readers, reused
 * least recently used first; gzip reads go through the span cache (SPAN_BLOCK blocks). */
#include "layertree/layertree_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "layertree/spancache.h"
#include "util/log.h"

/* ---- synchronous engine reads (workers only) ---------------------------------------- */

struct sync_read {
        pthread_mutex_t m;
        pthread_cond_t c;
        bool done;
        int err;
        uint8_t *dst;
        size_t cap, got;
};

static void sync_reply(void *ctx, int err, const void *buf, size_t len) {
        struct sync_read *s = ctx;
        pthread_mutex_lock(&s->m);
        if (err < 0) {
                s->err = err;
        } else {
                s->got = len < s->cap ? len : s->cap;
                memcpy(s->dst, buf, s->got);
        }
        s->done = true;
        pthread_cond_signal(&s->c);
        pthread_mutex_unlock(&s->m);
}

/* Up to LEN bytes of blob BLOB_ID at OFF: the count (short only at the end), or -errno.
 * Blocks until the engine answers (bounded by its fetch timeout). */
ssize_t lt_pread(struct ltree *lt, uint32_t blob_id, uint64_t off, void *buf, size_t len,
                 struct engine_stream *stream) {
        size_t done = 0;
        while (done < len) {
                size_t n = len - done < IO_MAX ? len - done : IO_MAX;
                struct sync_read s = {.dst = (uint8_t *)buf + done, .cap = n};
                pthread_mutex_init(&s.m, NULL);
                pthread_cond_init(&s.c, NULL);
                engine_read(lt->e, blob_id, off + done, n, stream, sync_reply, &s);
                pthread_mutex_lock(&s.m);
                while (!s.done)
                        pthread_cond_wait(&s.c, &s.m);
                pthread_mutex_unlock(&s.m);
                pthread_mutex_destroy(&s.m);
                pthread_cond_destroy(&s.c);
                if (s.err < 0)
                        return done ? (ssize_t)done : s.err;
                done += s.got;
                if (s.got < n)
                        break;
        }
        return (ssize_t)done;
}

/* The layer reader's fetch: blob bytes through the engine, counted for the layer. */
static ssize_t layer_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct fetch_ctx *fc = ctx;
        ssize_t n = lt_pread(fc->lt, fc->l->data_id, off, buf, len, NULL);
        if (n > 0)
                atomic_fetch_add(&fc->l->fetched, (uint64_t)n);
        return n;
}

/* The reader's window fetch, for an index loaded from its head: the index blob's bytes. */
static ssize_t window_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct fetch_ctx *fc = ctx;
        return lt_pread(fc->lt, fc->l->index_blob_id, off, buf, len, NULL);
}

/* ---- reads ---------------------------------------------------------------------------- */

static struct layer_reader *reader_for(struct worker *w, struct layer *l) {
        struct reader_slot *lru = &w->slots[0];
        w->tick++;
        for (size_t i = 0; i < READERS_PER_WORKER; i++) {
                struct reader_slot *s = &w->slots[i];
                if (s->r && s->id == l->id) {
                        s->used = w->tick;
                        return s->r;
                }
                if (!s->r || (lru->r && s->used < lru->used))
                        lru = s;
        }
        layer_reader_free(lru->r);
        lru->fc = (struct fetch_ctx){.lt = w->lt, .l = l};
        lru->r = layer_reader_new(l->ix, layer_fetch, &lru->fc);
        if (lru->r)
                layer_reader_set_windows(lru->r, window_fetch, &lru->fc);
        lru->id = l->id;
        lru->used = w->tick;
        return lru->r;
}

/* Reads [OFF, OFF + LEN) of the tar stream of gzip layer L through the span cache: blocks
 * of SPAN_BLOCK inflated bytes, each inflated once while it stays cached. */
static ssize_t read_cached(struct worker *w, struct layer *l, struct layer_reader *r,
                           const struct layer_file *f, uint64_t off, uint8_t *out, size_t len) {
        struct ltree *lt = w->lt;
        size_t done = 0;
        while (done < len) {
                uint64_t uoff = f->offset + off + done;
                uint64_t blk = uoff / SPAN_BLOCK;
                uint64_t bstart = blk * SPAN_BLOCK;
                size_t in_blk = (size_t)(uoff - bstart);
                size_t n = len - done;
                if (n > SPAN_BLOCK - in_blk)
                        n = SPAN_BLOCK - in_blk;
                if (spancache_get(lt->spans, l->id, blk, in_blk, out + done, n) == 0) {
                        done += n;
                        continue;
                }
                /* Miss: inflate the whole block (at most the tar's end) and keep it. */
                uint64_t blen =
                        l->tar_size - bstart < SPAN_BLOCK ? l->tar_size - bstart : SPAN_BLOCK;
                uint8_t *bb = malloc((size_t)blen);
                if (!bb)
                        return done ? (ssize_t)done : -ENOMEM;
                ssize_t got = layer_reader_read_tar(r, bstart, bb, (size_t)blen);
                if (got < 0 || (uint64_t)got != blen) {
                        free(bb);
                        if (done)
                                return (ssize_t)done;
                        /* Fall back to the direct read (it reports the real error). */
                        return layer_reader_read(r, f, off, out, len);
                }
                memcpy(out + done, bb + in_blk, n);
                spancache_put(lt->spans, l->id, blk, bb, (size_t)blen); /* takes BB */
                done += n;
        }
        return (ssize_t)done;
}

static void read_job(struct worker *w, struct read_job *j) {
        struct ltree *lt = w->lt;
        pthread_mutex_lock(&lt->lock);
        struct layer *l = j->id < lt->n ? lt->layers[j->id] : NULL;
        bool ready = l && l->state == LTREE_READY;
        pthread_mutex_unlock(&lt->lock);
        int err = 0;
        ssize_t n = 0;
        if (!ready) {
                err = -ENOENT;
        } else {
                const struct layer_file *f = layer_index_file(l->ix, l->canon[j->file]);
                struct layer_reader *r = reader_for(w, l);
                if (!r)
                        err = -ENOMEM;
                else if (l->format == LAYER_FMT_GZIP && lt->spans && f->type == TAR_REG)
                        n = read_cached(w, l, r, f, j->off, w->buf,
                                        j->off >= f->size ? 0
                                                          : (size_t)(f->size - j->off < j->len
                                                                             ? f->size - j->off
                                                                             : j->len));
                else
                        n = layer_reader_read(r, f, j->off, w->buf, j->len);
                if (n < 0)
                        err = (int)n;
        }
        pthread_mutex_lock(&lt->lock);
        if (err < 0) {
                lt->st.read_errors++;
        } else {
                lt->st.bytes_read += (uint64_t)n;
        }
        pthread_mutex_unlock(&lt->lock);
        j->reply(j->ctx, err, w->buf, err < 0 ? 0 : (size_t)n);
        free(j);
}

/* ---- workers -------------------------------------------------------------------------- */

/* lt->lock held. A READY layer whose head-loaded index is due to be completed (its
 * complete_at cleared: one worker takes it), or NULL with *RET_NEXT the milliseconds until the
 * next is due (UINT64_MAX: none). O(layers), on idle workers only. */
static struct layer *completion_due(struct ltree *lt, uint64_t now, uint64_t *ret_next,
                                    struct digest *ret_index) {
        uint64_t next = UINT64_MAX;
        for (uint32_t i = 0; i < lt->n; i++) {
                struct layer *l = lt->layers[i];
                if (!l->complete_at)
                        continue;
                if (l->complete_at <= now) {
                        l->complete_at = 0;
                        *ret_index = l->index_digest;
                        return l;
                }
                if (l->complete_at - now < next)
                        next = l->complete_at - now;
        }
        *ret_next = next;
        return NULL;
}

/* Fetches the rest of L's index blob in the background: this node then holds the whole index
 * (the engine verifies it whole against its digest when the last chunk lands), loads it from
 * its own store after a restart, and serves it to peers whatever happens to the node that
 * built it. The loaded head stays in use. */
static void complete_index(struct ltree *lt, const struct layer *l, const struct digest *index) {
        struct engine_blob_info b;
        char hex[DIGEST_HEX_LEN + 1];
        int r = engine_prefetch(lt->e, index, &b);
        digest_to_hex(index, hex);
        log_debug("layer index completion started id=%u index=sha256:%s err=%s", l->id, hex,
                  r < 0 ? strerror(-r) : "none");
}

void *lt_worker_main(void *arg) {
        struct worker *w = arg;
        struct ltree *lt = w->lt;
        pthread_mutex_lock(&lt->lock);
        while (!lt->stopping) {
                if (lt->rq_head) {
                        struct read_job *j = lt->rq_head;
                        lt->rq_head = j->next;
                        if (!lt->rq_head)
                                lt->rq_tail = NULL;
                        lt->rq_len--;
                        pthread_mutex_unlock(&lt->lock);
                        read_job(w, j);
                        pthread_mutex_lock(&lt->lock);
                        continue;
                }
                if (lt->bq_head && lt->builds_running < lt->builds_max) {
                        struct layer *l = lt->layers[lt->bq_head - 1];
                        lt->bq_head = l->next_job;
                        if (!lt->bq_head)
                                lt->bq_tail = 0;
                        l->next_job = 0;
                        lt->builds_running++;
                        pthread_mutex_unlock(&lt->lock);
                        lt_index_job(lt, l, w->buf);
                        pthread_mutex_lock(&lt->lock);
                        l->queued = false;
                        lt->builds_running--;
                        pthread_cond_broadcast(&lt->work);
                        continue;
                }
                uint64_t next;
                struct digest index;
                struct layer *cl = completion_due(lt, now_ms(), &next, &index);
                if (cl) {
                        pthread_mutex_unlock(&lt->lock);
                        complete_index(lt, cl, &index);
                        pthread_mutex_lock(&lt->lock);
                        continue;
                }
                if (next == UINT64_MAX) {
                        pthread_cond_wait(&lt->work, &lt->lock);
                } else {
                        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, next);
                        pthread_cond_timedwait(&lt->work, &lt->lock, &ts);
                }
        }
        pthread_mutex_unlock(&lt->lock);
        return NULL;
}

/* Queues L's index job (lt->lock held). */
void lt_queue_index(struct ltree *lt, struct layer *l) {
        if (l->queued)
                return;
        l->queued = true;
        l->next_job = 0;
        if (lt->bq_tail)
                lt->layers[lt->bq_tail - 1]->next_job = l->id + 1;
        else
                lt->bq_head = l->id + 1;
        lt->bq_tail = l->id + 1;
        pthread_cond_signal(&lt->work);
}
