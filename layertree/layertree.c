/* Layer trees: registration, the index of each layer, and file reads on worker threads.
 * See layertree.h for the contract.
 *
 * A layer is a slot in a fixed array (max_layers pointers, allocated at start; ids are slot
 * numbers and never reused). Its mutable fields (state, error, origin, the index pointer) are
 * guarded by lt->lock; once a layer is READY its index, and the hard-link tables computed
 * from it, never change until ltree_free(), so readers use them without the lock after
 * seeing READY under it. Lookups by digest scan the array: a node holds a few thousand layers
 * at most, and the FUSE tree caches what it found.
 *
 * Work runs on lt->workers threads fed by two queues: file reads (answered first: a container
 * waits on them) and index jobs (the pass may take minutes on a large layer, so at most half
 * the workers, and at least one, run them at once). Workers may block: they read the blob
 * through the engine synchronously (eng_pread: engine_read plus a condition variable), which
 * the FUSE threads never do.
 *
 * The index of a layer is looked for, in order: this node's store (the layers row names the
 * derived blob, whose chunks must all be present: nothing is fetched for it), the peers
 * (ltree_peer_ops.locate_index; the bytes come through the engine, and the decoded index must
 * name this layer: an older node's encoding is read whole and must hash to the located digest
 * before it is decoded; a split one (layer/codec.c, version 3) has only its head read, the
 * file and checkpoint tables, and each window is read from the index blob when a span
 * starting at its checkpoint is first inflated, so a node starts a container on a 512 MiB
 * layer after fetching one chunk of an 8 MiB index instead of all of it; INDEX_COMPLETE_DELAY_MS
 * later an idle worker starts a background fetch of the rest of the index blob, so the node
 * soon holds it whole, verified, for its restarts and for its peers), and
 * last the pass: the layer's bytes streamed in order into layer_builder_feed (checked against
 * the diff_id when known and against the layer digest always). eStargz layers (a gzip layer
 * whose last 51 bytes are an eStargz footer) are indexed from their TOC instead. A built index
 * is stored as a derived blob (engine_put, pinned) under a pseudo-source nobody can fetch from
 * (DERIVED_SOURCE, an .invalid name): the store check above never reads a derived blob whose
 * chunks are gone, so the origin is never asked for one.
 *
 * zstd layers: the pass also writes the layer's seekable copy (layer/zstd.c) into the engine
 * as it goes (a streaming put, engine_put_sink_write), a second derived blob, pinned on the
 * node that built it; the index names it (layer_index_info's data_digest) and file reads fetch
 * from it, never from the layer. An index from the store or a peer is used only when its copy
 * is known here or to the peers' directory; otherwise the pass runs again.
 *
 * Memory: the loaded indexes (counted in the stats; a head-loaded one without its windows), two uint32_t per file for hard links,
 * per worker one 1 MiB buffer and up to READERS_PER_WORKER layer readers (about 115 KiB
 * each). */
#include "layertree/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "index/index.h"
#include "index/layers.h"
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

/* ---- state ---------------------------------------------------------------------------- */

static void info_of(const struct layer *l, struct ltree_layer_info *ret) {
        memset(ret, 0, sizeof(*ret));
        ret->id = l->id;
        ret->digest = l->digest;
        ret->state = l->state;
        ret->format = l->format;
        ret->index_origin = l->origin;
        if (l->has_index)
                ret->index_digest = l->index_digest;
        ret->blob_size = l->blob_size;
        ret->tar_size = l->tar_size;
        ret->files = l->files;
        ret->bytes_fetched = atomic_load(&l->fetched);
        snprintf(ret->error, sizeof(ret->error), "%s", l->error);
}

static void row_of(const struct layer *l, struct idx_layer *row) {
        memset(row, 0, sizeof(*row));
        row->digest = l->digest;
        snprintf(row->source, sizeof(row->source), "%s", l->source);
        snprintf(row->media_type, sizeof(row->media_type), "%s", l->media_type);
        row->has_diff_id = l->has_diff_id;
        row->diff_id = l->diff_id;
        row->has_toc_digest = l->has_toc;
        row->toc_digest = l->toc_digest;
        row->has_index = l->has_index && l->origin != LTREE_INDEX_TOC;
        row->index_digest = l->index_digest;
        row->index_size = l->index_size;
        row->format = (int)l->format;
        row->state = (int)l->state;
        snprintf(row->error, sizeof(row->error), "%s", l->error);
        row->error_code = l->error_code;
        row->added_at = l->added_at;
}

/* Records L's row as it is now. Called without lt->lock, so a FUSE thread never waits on
 * SQLite: the row is copied under the lock with a sequence number, and written under db_lock
 * unless a newer copy was written first (two writers may race; the newest state wins). */
static void persist(struct ltree *lt, struct layer *l) {
        struct idx_layer row;
        pthread_mutex_lock(&lt->lock);
        row_of(l, &row);
        uint64_t seq = ++l->row_seq;
        pthread_mutex_unlock(&lt->lock);
        pthread_mutex_lock(&lt->db_lock);
        if (seq > l->row_written) {
                int r = idx_layer_put(lt->db, &row);
                if (r < 0)
                        log_debug("layer row not recorded id=%u err=%s", l->id, strerror(-r));
                l->row_written = seq;
        }
        pthread_mutex_unlock(&lt->db_lock);
}

void lt_fail(struct ltree *lt, struct layer *l, int err, const char *fmt, ...) {
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        pthread_mutex_lock(&lt->lock);
        if (lt->stopping || err == -ECANCELED) {
                /* Shutting down is not the layer's fault: it stays PENDING, unrecorded, and
                 * the next start looks for its index again. */
                pthread_cond_broadcast(&lt->changed);
                pthread_mutex_unlock(&lt->lock);
                return;
        }
        snprintf(l->error, sizeof(l->error), "%s", msg);
        l->error_code = err;
        l->state = LTREE_FAILED;
        lt->st.index_failures++;
        pthread_cond_broadcast(&lt->changed);
        pthread_mutex_unlock(&lt->lock);
        persist(lt, l);
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&l->digest, hex);
        log_debug("layer index failed digest=sha256:%s err=%s reason=\"%s\"", hex, strerror(-err),
                  msg);
}

/* Did ERR (a failed layer's -errno) come from getting the bytes, not from the bytes? The
 * origin or a peer down, a timeout, a reset: worth a retry at the next start. A refused layer
 * (-EBADMSG: corrupt, a digest or diff_id mismatch; -EPROTONOSUPPORT: not a layer; -EFBIG:
 * over the bounds) and unknown codes (0: rows before the code was recorded) stay failed. */
static bool transient_failure(int err) {
        switch (-err) {
        case EIO:
        case ETIMEDOUT:
        case ECONNREFUSED:
        case ECONNRESET:
        case ECONNABORTED:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case ENETDOWN:
        case EAGAIN:
                return true;
        default:
                return false;
        }
}

/* Hard links share their target's inode: CANON maps a file to it, NLINK counts its names. */
static int link_tables(struct layer_index *ix, uint32_t **ret_canon, uint32_t **ret_nlink) {
        size_t n = layer_index_nfiles(ix);
        uint32_t *canon = malloc(n * sizeof(*canon)), *nlink = malloc(n * sizeof(*nlink));
        if (!canon || !nlink) {
                free(canon);
                free(nlink);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                canon[i] = (uint32_t)i;
                nlink[i] = 1;
        }
        for (size_t i = 0; i < n; i++) {
                const struct layer_file *f = layer_index_file(ix, i);
                if (f->type != TAR_HARDLINK || !f->link)
                        continue;
                ssize_t t = layer_index_lookup(ix, f->link);
                if (t < 0)
                        continue; /* the decoder checked links resolve: cannot happen */
                canon[i] = (uint32_t)t;
                nlink[t]++;
        }
        *ret_canon = canon;
        *ret_nlink = nlink;
        return 0;
}

/* The engine id of the blob the reader of IX fetches from: L's own, or for zstd its seekable
 * copy, known here or (registered now) to the peers' directory. 0 or -ENOENT. */
int lt_data_blob(struct ltree *lt, const struct layer *l, const struct layer_index *ix,
                 uint32_t *ret_id) {
        struct layer_index_info info;
        struct engine_blob_info b;
        layer_index_info(ix, &info);
        if (info.format != LAYER_FMT_ZSTD) {
                *ret_id = l->blob_id;
                return 0;
        }
        if (engine_find(lt->e, &info.data_digest, &b) < 0 &&
            engine_lookup(lt->e, &info.data_digest, &b) < 0)
                return -ENOENT;
        if (b.size != info.data_size)
                return -ENOENT;
        *ret_id = b.id;
        return 0;
}

/* L's index is IX (ours now), found through ORIGIN: READY, recorded, published. */
void lt_ready(struct ltree *lt, struct layer *l, struct layer_index *ix,
              enum ltree_index_origin origin, const struct digest *index_digest,
              uint64_t index_size) {
        uint32_t *canon, *nlink, data_id;
        if (lt_data_blob(lt, l, ix, &data_id) < 0) {
                layer_index_free(ix);
                lt_fail(lt, l, -ENOENT, "the seekable copy of the zstd layer is gone");
                return;
        }
        if (link_tables(ix, &canon, &nlink) < 0) {
                layer_index_free(ix);
                lt_fail(lt, l, -ENOMEM, "out of memory loading the index");
                return;
        }
        struct layer_index_info info;
        layer_index_info(ix, &info);
        pthread_mutex_lock(&lt->lock);
        l->ix = ix;
        l->data_id = data_id;
        l->canon = canon;
        l->nlink = nlink;
        l->format = info.format;
        l->tar_size = info.tar_size;
        l->files = info.nfiles;
        l->memory = info.memory + info.nfiles * 2 * sizeof(uint32_t);
        l->origin = origin;
        l->has_index = true;
        l->index_digest = *index_digest;
        l->index_size = index_size;
        l->error[0] = '\0';
        l->state = LTREE_READY;
        if (info.windows_lazy) {
                l->complete_at = now_ms() + INDEX_COMPLETE_DELAY_MS;
                pthread_cond_broadcast(&lt->work); /* an idle worker's wait is now bounded */
        }
        switch (origin) {
        case LTREE_INDEX_BUILT:
                lt->st.indexes_built++;
                break;
        case LTREE_INDEX_PEER:
                lt->st.indexes_from_peers++;
                break;
        case LTREE_INDEX_LOCAL:
                lt->st.indexes_local++;
                break;
        default:
                break;
        }
        pthread_cond_broadcast(&lt->changed);
        pthread_mutex_unlock(&lt->lock);
        persist(lt, l);
        if (origin != LTREE_INDEX_TOC && lt->have_peers && lt->peers.publish_index)
                lt->peers.publish_index(lt->peers.ud, &l->digest, index_digest, index_size);
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&l->digest, hex);
        log_debug("layer ready digest=sha256:%s files=%zu origin=%d", hex, info.nfiles, origin);
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

static void *worker_main(void *arg) {
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
static void queue_index(struct ltree *lt, struct layer *l) {
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

/* ---- API ------------------------------------------------------------------------------ */

static struct layer *find_locked(struct ltree *lt, const struct digest *d) {
        for (uint32_t i = 0; i < lt->n; i++)
                if (digest_equal(&lt->layers[i]->digest, d))
                        return lt->layers[i];
        return NULL;
}

static int reload_row(void *ud, const struct idx_layer *row) {
        struct ltree *lt = ud;
        if (lt->n >= lt->cfg.max_layers || find_locked(lt, &row->digest))
                return 0;
        struct layer *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->id = lt->n;
        l->digest = row->digest;
        snprintf(l->source, sizeof(l->source), "%s", row->source);
        snprintf(l->media_type, sizeof(l->media_type), "%s", row->media_type);
        l->has_diff_id = row->has_diff_id;
        l->diff_id = row->diff_id;
        l->has_toc = row->has_toc_digest;
        l->toc_digest = row->toc_digest;
        l->added_at = row->added_at;
        l->format = (enum layer_format)row->format;
        l->has_index = row->has_index;
        l->index_digest = row->index_digest;
        l->index_size = row->index_size;
        if (row->has_index)
                l->origin = LTREE_INDEX_LOCAL;
        struct engine_blob_info b;
        if (engine_find(lt->e, &l->digest, &b) == 0) {
                l->blob_known = true;
                l->blob_id = b.id;
                l->blob_size = b.size;
        }
        lt->layers[lt->n++] = l;
        if (row->state == LTREE_FAILED && !transient_failure(row->error_code)) {
                /* A bad layer stays failed across restarts; ltree_add retries it. */
                l->state = LTREE_FAILED;
                snprintf(l->error, sizeof(l->error), "%s", row->error);
                l->error_code = row->error_code;
        } else {
                if (row->state == LTREE_FAILED)
                        log_info("layer retried id=%u err=%s reason=\"%s\"", l->id,
                                 strerror(-row->error_code), row->error);
                l->state = LTREE_PENDING;
                queue_index(lt, l);
        }
        return 0;
}

int ltree_new(const struct ltree_config *cfg, struct engine *e, struct index *ix,
              const struct ltree_peer_ops *peers, struct ltree **ret) {
        if (!cfg || !e || !ix || cfg->workers == 0 || cfg->workers > 256 || cfg->max_layers == 0 ||
            (cfg->span && (cfg->span < LAYER_SPAN_MIN || cfg->span > LAYER_SPAN_MAX)))
                return -EINVAL;
        struct ltree *lt = calloc(1, sizeof(*lt));
        if (!lt)
                return -ENOMEM;
        lt->cfg = *cfg;
        if (!lt->cfg.index_timeout_ms)
                lt->cfg.index_timeout_ms = 10000;
        lt->e = e;
        lt->ix = ix;
        if (peers) {
                lt->peers = *peers;
                lt->have_peers = true;
        }
        lt->builds_max = cfg->workers / 2 ? cfg->workers / 2 : 1;
        pthread_mutex_init(&lt->lock, NULL);
        pthread_mutex_init(&lt->db_lock, NULL);
        pthread_cond_init(&lt->work, NULL);
        pthread_cond_init(&lt->changed, NULL);
        int r = -ENOMEM;
        lt->layers = calloc(cfg->max_layers, sizeof(*lt->layers));
        lt->workers = calloc(cfg->workers, sizeof(*lt->workers));
        if (!lt->layers || !lt->workers)
                goto out_free;
        if (cfg->span_cache_bytes) {
                r = spancache_new(cfg->span_cache_bytes, &lt->spans);
                if (r < 0)
                        goto out_free;
        }
        r = idx_layers_open(ix, &lt->db);
        if (r < 0)
                goto out_free;
        pthread_mutex_lock(&lt->lock);
        r = idx_layers_for_each(lt->db, reload_row, lt);
        pthread_mutex_unlock(&lt->lock);
        if (r < 0)
                goto out_free;
        for (unsigned i = 0; i < cfg->workers; i++) {
                struct worker *w = &lt->workers[i];
                w->lt = lt;
                w->buf = malloc(READ_MAX);
                if (!w->buf) {
                        r = -ENOMEM;
                        goto out_free;
                }
                r = -pthread_create(&w->thread, NULL, worker_main, w);
                if (r < 0)
                        goto out_free;
                w->started = true;
        }
        *ret = lt;
        return 0;
out_free:
        ltree_free(lt);
        return r;
}

void ltree_free(struct ltree *lt) {
        if (!lt)
                return;
        pthread_mutex_lock(&lt->lock);
        lt->stopping = true;
        pthread_cond_broadcast(&lt->work);
        pthread_mutex_unlock(&lt->lock);
        for (unsigned i = 0; lt->workers && i < lt->cfg.workers; i++) {
                struct worker *w = &lt->workers[i];
                if (w->started)
                        pthread_join(w->thread, NULL);
                for (size_t k = 0; k < READERS_PER_WORKER; k++)
                        layer_reader_free(w->slots[k].r);
                free(w->buf);
        }
        while (lt->rq_head) {
                struct read_job *j = lt->rq_head;
                lt->rq_head = j->next;
                j->reply(j->ctx, -ECANCELED, NULL, 0);
                free(j);
        }
        for (uint32_t i = 0; lt->layers && i < lt->n; i++) {
                struct layer *l = lt->layers[i];
                layer_index_free(l->ix);
                free(l->canon);
                free(l->nlink);
                free(l);
        }
        free(lt->layers);
        free(lt->workers);
        spancache_free(lt->spans);
        idx_layers_close(lt->db);
        pthread_mutex_destroy(&lt->lock);
        pthread_mutex_destroy(&lt->db_lock);
        pthread_cond_destroy(&lt->work);
        pthread_cond_destroy(&lt->changed);
        free(lt);
}

static bool layer_media_type(const char *mt) {
        static const char *const known[] = {
                "application/vnd.oci.image.layer.",
                "application/vnd.docker.image.rootfs.",
        };
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                if (strncmp(mt, known[i], strlen(known[i])) == 0)
                        return true;
        return false;
}

int ltree_add(struct ltree *lt, const char *ref, const struct digest *diff_id,
              const struct digest *toc_digest, const char *media_type, struct ltree_layer_info *ret,
              char *reason, size_t reason_len) {
        if (reason_len)
                reason[0] = '\0';
        if (!media_type)
                media_type = "";
        if (strlen(media_type) >= IDX_MEDIA_TYPE_MAX) {
                snprintf(reason, reason_len, "media type too long");
                return -EINVAL;
        }
        if (media_type[0] && !layer_media_type(media_type)) {
                snprintf(reason, reason_len,
                         "media type %s is not an image layer; give a layer's, or none",
                         media_type);
                return -EPROTONOSUPPORT;
        }
        struct engine_blob_info b;
        int r = engine_add(lt->e, ref, &b, reason, reason_len);
        if (r < 0)
                return r;
        pthread_mutex_lock(&lt->lock);
        struct layer *l = find_locked(lt, &b.digest);
        if (l) {
                bool retry = l->state == LTREE_FAILED && !l->queued;
                if (retry) {
                        l->state = LTREE_PENDING;
                        l->error[0] = '\0';
                        l->error_code = 0;
                        if (diff_id) {
                                l->has_diff_id = true;
                                l->diff_id = *diff_id;
                        }
                        if (toc_digest) {
                                l->has_toc = true;
                                l->toc_digest = *toc_digest;
                        }
                        if (media_type[0])
                                snprintf(l->media_type, sizeof(l->media_type), "%s", media_type);
                        queue_index(lt, l);
                }
                info_of(l, ret);
                pthread_mutex_unlock(&lt->lock);
                if (retry)
                        persist(lt, l);
                return 0;
        }
        if (lt->n >= lt->cfg.max_layers) {
                pthread_mutex_unlock(&lt->lock);
                snprintf(reason, reason_len, "%u layers registered (max_layers); raise it",
                         lt->cfg.max_layers);
                return -ENOSPC;
        }
        l = calloc(1, sizeof(*l));
        if (!l) {
                pthread_mutex_unlock(&lt->lock);
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        l->id = lt->n;
        l->digest = b.digest;
        snprintf(l->source, sizeof(l->source), "%s", b.source);
        snprintf(l->media_type, sizeof(l->media_type), "%s", media_type);
        if (diff_id) {
                l->has_diff_id = true;
                l->diff_id = *diff_id;
        }
        if (toc_digest) {
                l->has_toc = true;
                l->toc_digest = *toc_digest;
        }
        l->added_at = (int64_t)time(NULL);
        l->blob_known = true;
        l->blob_id = b.id;
        l->blob_size = b.size;
        l->state = LTREE_PENDING;
        lt->layers[lt->n++] = l;
        queue_index(lt, l);
        info_of(l, ret);
        pthread_mutex_unlock(&lt->lock);
        persist(lt, l);
        return 0;
}

int ltree_wait(struct ltree *lt, const struct digest *d, uint64_t wait_ms,
               struct ltree_layer_info *ret) {
        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, wait_ms);
        pthread_mutex_lock(&lt->lock);
        struct layer *l = find_locked(lt, d);
        if (!l) {
                pthread_mutex_unlock(&lt->lock);
                return -ENOENT;
        }
        while (l->state == LTREE_PENDING && !lt->stopping &&
               pthread_cond_timedwait(&lt->changed, &lt->lock, &ts) == 0)
                ;
        info_of(l, ret);
        pthread_mutex_unlock(&lt->lock);
        return ret->state == LTREE_READY ? 0 : ret->state == LTREE_FAILED ? -EIO : -EAGAIN;
}

int ltree_find(struct ltree *lt, const struct digest *d, struct ltree_layer_info *ret) {
        pthread_mutex_lock(&lt->lock);
        struct layer *l = find_locked(lt, d);
        if (l)
                info_of(l, ret);
        pthread_mutex_unlock(&lt->lock);
        return l ? 0 : -ENOENT;
}

int ltree_get(struct ltree *lt, uint32_t id, struct ltree_layer_info *ret) {
        pthread_mutex_lock(&lt->lock);
        struct layer *l = id < lt->n ? lt->layers[id] : NULL;
        if (l)
                info_of(l, ret);
        pthread_mutex_unlock(&lt->lock);
        return l ? 0 : -ENOENT;
}

uint32_t ltree_count(struct ltree *lt) {
        pthread_mutex_lock(&lt->lock);
        uint32_t n = lt->n;
        pthread_mutex_unlock(&lt->lock);
        return n;
}

/* The READY layer ID, or NULL and *ERR. */
static struct layer *ready_of(struct ltree *lt, uint32_t id, int *err) {
        pthread_mutex_lock(&lt->lock);
        struct layer *l = id < lt->n ? lt->layers[id] : NULL;
        *err = !l                          ? -ENOENT
               : l->state == LTREE_PENDING ? -EAGAIN
               : l->state == LTREE_FAILED  ? -EIO
                                           : 0;
        pthread_mutex_unlock(&lt->lock);
        return *err ? NULL : l;
}

int ltree_index_get(struct ltree *lt, uint32_t id, const struct layer_index **ret) {
        int err;
        struct layer *l = ready_of(lt, id, &err);
        if (!l)
                return err;
        *ret = l->ix; /* immutable until ltree_free: nothing to count */
        return 0;
}

void ltree_index_put(struct ltree *lt, uint32_t id) {
        (void)lt;
        (void)id;
}

int ltree_file_inode(struct ltree *lt, uint32_t id, uint32_t file, uint32_t *ret_canon,
                     uint32_t *ret_nlink) {
        int err;
        struct layer *l = ready_of(lt, id, &err);
        if (!l)
                return err;
        if (file >= l->files)
                return -ENOENT;
        uint32_t c = l->canon[file];
        *ret_canon = c;
        *ret_nlink = l->nlink[c];
        return 0;
}

void ltree_read(struct ltree *lt, uint32_t id, uint32_t file, uint64_t off, size_t len,
                ltree_reply_fn reply, void *ctx) {
        int err;
        struct layer *l = ready_of(lt, id, &err);
        if (!l) {
                reply(ctx, err, NULL, 0);
                return;
        }
        if (file >= l->files || len > READ_MAX) {
                reply(ctx, -EINVAL, NULL, 0);
                return;
        }
        const struct layer_file *f = layer_index_file(l->ix, l->canon[file]);
        if (f->type == TAR_DIR) {
                reply(ctx, -EISDIR, NULL, 0);
                return;
        }
        if (f->type != TAR_REG) {
                reply(ctx, -EINVAL, NULL, 0);
                return;
        }
        if (off >= f->size || len == 0) {
                pthread_mutex_lock(&lt->lock);
                lt->st.reads++;
                pthread_mutex_unlock(&lt->lock);
                reply(ctx, 0, "", 0);
                return;
        }
        struct read_job *j = calloc(1, sizeof(*j));
        if (!j) {
                reply(ctx, -ENOMEM, NULL, 0);
                return;
        }
        *j = (struct read_job){
                .id = id, .file = file, .off = off, .len = len, .reply = reply, .ctx = ctx};
        pthread_mutex_lock(&lt->lock);
        if (lt->stopping || lt->rq_len >= READ_QUEUE_MAX) {
                bool stopping = lt->stopping;
                lt->st.read_errors++;
                pthread_mutex_unlock(&lt->lock);
                free(j);
                reply(ctx, stopping ? -ECANCELED : -EAGAIN, NULL, 0);
                return;
        }
        lt->st.reads++;
        if (lt->rq_tail)
                lt->rq_tail->next = j;
        else
                lt->rq_head = j;
        lt->rq_tail = j;
        lt->rq_len++;
        pthread_cond_signal(&lt->work);
        pthread_mutex_unlock(&lt->lock);
}

void ltree_get_stats(struct ltree *lt, struct ltree_stats *ret) {
        pthread_mutex_lock(&lt->lock);
        *ret = lt->st;
        ret->layers = lt->n;
        for (uint32_t i = 0; i < lt->n; i++) {
                struct layer *l = lt->layers[i];
                ret->ready += l->state == LTREE_READY;
                ret->pending += l->state == LTREE_PENDING;
                ret->failed += l->state == LTREE_FAILED;
                ret->bytes_fetched += atomic_load(&l->fetched);
                if (l->state == LTREE_READY)
                        ret->index_memory += l->memory;
        }
        pthread_mutex_unlock(&lt->lock);
        if (lt->spans) {
                struct spancache_stats ss;
                spancache_get_stats(lt->spans, &ss);
                ret->span_cache_bytes = ss.bytes;
                ret->span_cache_hits = ss.hits;
                ret->span_cache_misses = ss.misses;
        }
}
