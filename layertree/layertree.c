/* Layer trees: registration, the index of each layer, and file reads on worker threads.
 * See layertree.h for the contract. This file holds the lifecycle and the API; state.c the
 * per-layer state (rows, READY, FAILED), workers.c the worker threads, build.c the finding of
 * an index, over the private header layertree_int.h.
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
#include "layertree/layertree_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "index/layers.h"
#include "layertree/spancache.h"
#include "util/log.h"

/* ---- API ------------------------------------------------------------------------------ */

static struct layer *find_locked(struct ltree *lt, const struct digest *d) {
        for (uint32_t i = 0; i < lt->n; i++)
                if (digest_equal(&lt->layers[i]->digest, d))
                        return lt->layers[i];
        return NULL;
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
                lt_queue_index(lt, l);
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
                r = -pthread_create(&w->thread, NULL, lt_worker_main, w);
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
                        lt_queue_index(lt, l);
                }
                lt_info(l, ret);
                pthread_mutex_unlock(&lt->lock);
                if (retry)
                        lt_persist(lt, l);
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
        lt_queue_index(lt, l);
        lt_info(l, ret);
        pthread_mutex_unlock(&lt->lock);
        lt_persist(lt, l);
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
        lt_info(l, ret);
        pthread_mutex_unlock(&lt->lock);
        return ret->state == LTREE_READY ? 0 : ret->state == LTREE_FAILED ? -EIO : -EAGAIN;
}

int ltree_find(struct ltree *lt, const struct digest *d, struct ltree_layer_info *ret) {
        pthread_mutex_lock(&lt->lock);
        struct layer *l = find_locked(lt, d);
        if (l)
                lt_info(l, ret);
        pthread_mutex_unlock(&lt->lock);
        return l ? 0 : -ENOENT;
}

int ltree_get(struct ltree *lt, uint32_t id, struct ltree_layer_info *ret) {
        pthread_mutex_lock(&lt->lock);
        struct layer *l = id < lt->n ? lt->layers[id] : NULL;
        if (l)
                lt_info(l, ret);
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
