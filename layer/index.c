/* The layer index in memory: its lookups, and what frees it.
 *
 * An index (struct layer_index, layer/internal.h) is the file table of a layer after
 * extraction, sorted with '/' first so that a directory's subtree is one contiguous range
 * (SUBTREE_END gives each entry's end), plus how to reach the tar bytes of a range: the
 * gzip checkpoints, the zstd frames, or nothing for a plain tar. It is built by the pass
 * (layer/build.c, pass.c, finish.c) or decoded (layer/codec.c), and read-only after: any
 * number of threads may look things up in it without a lock.
 *
 * Costs: a lookup by path is a binary search (O(log n) path comparisons); the next child of
 * a directory is O(1); the checkpoint of an offset is a binary search.
 */
#include "layer/index_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- lookups ---------------------------------------------------------------------------- */

int layer_path_cmp(const char *a, const char *b) {
        const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;

        for (;; x++, y++) {
                int cx = *x == '\0' ? 0 : *x == '/' ? 1 : *x + 1;
                int cy = *y == '\0' ? 0 : *y == '/' ? 1 : *y + 1;
                if (cx != cy)
                        return cx < cy ? -1 : 1;
                if (cx == 0)
                        return 0;
        }
}

/* Is B under directory A ("" is everything's ancestor)? */
bool layer_path_under(const char *a, const char *b) {
        size_t n = strlen(a);

        if (n == 0)
                return b[0] != '\0';
        return strncmp(a, b, n) == 0 && b[n] == '/';
}

int layer_index_link_tree(struct layer_index *ix) {
        uint32_t *stack, depth = 0;

        free(ix->subtree_end);
        ix->subtree_end = calloc(ix->nfiles ? ix->nfiles : 1, sizeof(uint32_t));
        stack = malloc((ix->nfiles ? ix->nfiles : 1) * sizeof(uint32_t));
        if (!ix->subtree_end || !stack) {
                free(stack);
                return -ENOMEM;
        }
        /* The sorted order is a preorder walk: an entry's subtree ends where the first
         * entry not under it starts. */
        for (size_t i = 0; i < ix->nfiles; i++) {
                while (depth &&
                       !layer_path_under(ix->files[stack[depth - 1]].path, ix->files[i].path))
                        ix->subtree_end[stack[--depth]] = (uint32_t)i;
                stack[depth++] = (uint32_t)i;
        }
        while (depth)
                ix->subtree_end[stack[--depth]] = (uint32_t)ix->nfiles;
        free(stack);
        return 0;
}

void layer_index_free(struct layer_index *ix) {
        if (!ix)
                return;
        free(ix->files);
        free(ix->subtree_end);
        free(ix->xattrs);
        free(ix->cps);
        free(ix->chunks);
        free(ix->strs);
        free(ix->wins);
        free(ix->zframes);
        free(ix);
}

void layer_index_info(const struct layer_index *ix, struct layer_index_info *ret) {
        *ret = (struct layer_index_info){
                .format = ix->format,
                .span = ix->span,
                .blob_size = ix->blob_size,
                .tar_size = ix->tar_size,
                .blob_digest = ix->blob_digest,
                .diff_id = ix->diff_id,
                .nfiles = ix->nfiles,
                .nxattrs = ix->nxattrs,
                .ncheckpoints = ix->ncps,
                .nchunks = ix->nchunks,
                .memory = sizeof(*ix) + ix->nfiles * (sizeof(struct layer_file) + 4) +
                          ix->nxattrs * sizeof(struct layer_xattr) +
                          ix->ncps * sizeof(struct layer_checkpoint) +
                          ix->nchunks * sizeof(struct layer_chunk) + ix->strs_len +
                          (ix->wins_lazy ? 0 : ix->wins_len) +
                          ix->nzframes * sizeof(struct layer_zframe),
                .data_digest = ix->format == LAYER_FMT_ZSTD ? ix->seek_digest : ix->blob_digest,
                .data_size = ix->format == LAYER_FMT_ZSTD ? ix->seek_size : ix->blob_size,
                .nframes = ix->nzframes,
                .windows_lazy = ix->wins_lazy,
                .windows_offset = ix->wins_base,
        };
}

size_t layer_index_nfiles(const struct layer_index *ix) {
        return ix->nfiles;
}

const struct layer_file *layer_index_file(const struct layer_index *ix, size_t i) {
        return i < ix->nfiles ? &ix->files[i] : NULL;
}

const struct layer_chunk *layer_index_chunk(const struct layer_index *ix, size_t i) {
        return i < ix->nchunks ? &ix->chunks[i] : NULL;
}

const struct layer_xattr *layer_index_xattr(const struct layer_index *ix, size_t i) {
        return i < ix->nxattrs ? &ix->xattrs[i] : NULL;
}

ssize_t layer_index_lookup(const struct layer_index *ix, const char *path) {
        size_t lo = 0, hi = ix->nfiles;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = layer_path_cmp(ix->files[mid].path, path);
                if (c == 0)
                        return (ssize_t)mid;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return -ENOENT;
}

ssize_t layer_index_next_child(const struct layer_index *ix, size_t dir, size_t cursor) {
        size_t next;

        if (dir >= ix->nfiles || cursor >= ix->nfiles || cursor < dir)
                return -ENOENT;
        next = cursor == dir ? dir + 1 : ix->subtree_end[cursor];
        return next < ix->subtree_end[dir] ? (ssize_t)next : -ENOENT;
}

const struct layer_checkpoint *layer_index_checkpoint(const struct layer_index *ix, uint64_t uoff) {
        size_t lo = 0, hi = ix->ncps;

        if (ix->ncps == 0)
                return NULL;
        while (hi - lo > 1) {
                size_t mid = lo + (hi - lo) / 2;
                if (ix->cps[mid].out <= uoff)
                        lo = mid;
                else
                        hi = mid;
        }
        return &ix->cps[lo];
}

int layer_index_blob_range(const struct layer_index *ix, uint64_t uoff, uint64_t len,
                           uint64_t *ret_start, uint64_t *ret_end) {
        const struct layer_checkpoint *cp;
        uint64_t end;

        if (uoff > ix->tar_size || len > ix->tar_size - uoff)
                return -EINVAL;
        if (ix->format == LAYER_FMT_TAR) {
                *ret_start = uoff;
                *ret_end = uoff + len;
                return 0;
        }
        if (ix->format == LAYER_FMT_ZSTD) {
                const struct layer_zframe *a = layer_zstd_frame_at(ix, uoff);
                const struct layer_zframe *z = layer_zstd_frame_at(ix, uoff + len - (len > 0));
                if (!a || len == 0) { /* nothing to read: an empty range at the frames' end */
                        uint64_t fend = ix->seek_size - layer_zstd_table_len(ix->nzframes);
                        *ret_start = a ? a->coff : fend;
                        *ret_end = *ret_start;
                        return 0;
                }
                *ret_start = a->coff;
                *ret_end = z->coff + z->clen;
                return 0;
        }
        cp = layer_index_checkpoint(ix, uoff);
        if (!cp)
                return -EINVAL;
        end = ix->blob_size;
        for (const struct layer_checkpoint *n = cp + 1; n < ix->cps + ix->ncps; n++)
                if (n->out >= uoff + len) {
                        end = n->in;
                        break;
                }
        *ret_start = cp->in - (cp->bits ? 1 : 0);
        *ret_end = end;
        return 0;
}
