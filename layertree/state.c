/* The layer trees' per-layer state: what a layer's row and info say, and the two ways a layer
 * leaves PENDING (lt_ready with its index, lt_fail with why). Part of the layer trees
 * (layertree.c; contract in layertree.h).
 *
 * Transitions happen under lt->lock; the row is written to the database after it is released
 * (lt_persist), so a FUSE thread asking for a layer's info never waits on SQLite. A READY
 * layer's index and link tables are set here once and never change until ltree_free(). */
#include "layertree/layertree_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "index/layers.h"
#include "util/log.h"

void lt_info(const struct layer *l, struct ltree_layer_info *ret) {
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
void lt_persist(struct ltree *lt, struct layer *l) {
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
        lt_persist(lt, l);
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&l->digest, hex);
        log_debug("layer index failed digest=sha256:%s err=%s reason=\"%s\"", hex, strerror(-err),
                  msg);
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
        lt_persist(lt, l);
        if (origin != LTREE_INDEX_TOC && lt->have_peers && lt->peers.publish_index)
                lt->peers.publish_index(lt->peers.ud, &l->digest, index_digest, index_size);
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&l->digest, hex);
        log_debug("layer ready digest=sha256:%s files=%zu origin=%d", hex, info.nfiles, origin);
}
