/* The builder's table made into an index, once the last entry is read.
 *
 * The result is sorted with '/' first so that a directory's subtree is one contiguous range,
 * which is what readdir and the encoded form want (layer/build.c says what the table holds).
 *
 * The finish runs once per builder: drop what a later entry replaced (containerd's applier
 * rules), resolve hard links whose target went, mark opaque directories, imply parents,
 * then sort the live entries and move the arena, checkpoints and windows into the index.
 * It costs an O(n log n) sort and a few arrays of the entry count.
 */
#include "layer/index_int.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_bfile_ctx(const void *x, const void *y, void *ctx) {
        const struct layer_builder *b = ctx;
        const struct bfile *a = &b->files[*(const size_t *)x], *c = &b->files[*(const size_t *)y];

        return layer_path_cmp(b->arena + a->path_off, b->arena + c->path_off);
}

/* Adds directory PATH (not in the tar) and returns its index, or -errno. */
static ssize_t implicit_dir(struct layer_builder *b, const char *path, uint8_t flags) {
        struct bfile *bf;
        char copy[PATH_MAX];
        size_t idx;

        snprintf(copy, sizeof(copy), "%s", path); /* PATH may point into the arena */
        bf = layer_builder_new_file(b, copy);
        if (!bf)
                return b->err;
        bf->f = (struct layer_file){.type = TAR_DIR, .mode = 0755, .flags = flags};
        idx = (size_t)(bf - b->files);
        if (layer_builder_put(b, idx) < 0)
                return b->err;
        return (ssize_t)idx;
}

/* Sweep items: a file's index, or NFILES + an opaque marker's. */
static const char *item_path(const struct layer_builder *b, size_t it) {
        return b->arena + (it < b->nfiles ? b->files[it].path_off : b->opaques[it - b->nfiles]);
}

static int cmp_item_ctx(const void *x, const void *y, void *ctx) {
        const struct layer_builder *b = ctx;
        size_t a = *(const size_t *)x, c = *(const size_t *)y;
        int r = layer_path_cmp(item_path(b, a), item_path(b, c));

        if (r)
                return r;
        /* a path's own entry before its opaque markers: its cut applies to them */
        return (a >= b->nfiles) - (c >= b->nfiles);
}

/* Drops what containerd's applier would have removed: every entry and opaque marker under a
 * path (a marker: at it too) read before a later non-directory entry of that path. The live
 * entries and markers sorted by path are a preorder walk, so a stack of the live ancestors,
 * each with the highest cut of its own path and above, decides each item in O(1) after an
 * O(n log n) sort: memory is two arrays of the item count. */
static int drop_replaced(struct layer_builder *b) {
        size_t n = 0, depth = 0, *items, *stack, *eff;

        items = malloc((b->nfiles + b->nopaques + 1) * sizeof(size_t));
        stack = malloc((b->nfiles + 1) * sizeof(size_t));
        eff = malloc((b->nfiles + 1) * sizeof(size_t));
        if (!items || !stack || !eff) {
                free(items);
                free(stack);
                free(eff);
                return bfail(b, -ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < b->nfiles; i++)
                if (!b->files[i].dead)
                        items[n++] = i;
        for (size_t j = 0; j < b->nopaques; j++)
                items[n++] = b->nfiles + j;
        qsort_r(items, n, sizeof(size_t), cmp_item_ctx, b);
        for (size_t k = 0; k < n; k++) {
                size_t it = items[k], up;
                const char *path = item_path(b, it);
                bool opaque = it >= b->nfiles;

                while (depth > 0) {
                        const char *top = b->arena + b->files[stack[depth - 1]].path_off;
                        if (layer_path_under(top, path) || (opaque && strcmp(top, path) == 0))
                                break;
                        depth--;
                }
                up = depth ? eff[depth - 1] : 0;
                if (opaque) {
                        /* read when NFILES entries were: removed by a cut at an index >= it */
                        if (b->opaque_seq[it - b->nfiles] < up)
                                b->opaques[it - b->nfiles] = NONE;
                        continue;
                }
                if (it + 1 < up) {
                        b->files[it].dead = true;
                        b->files[it].dropped_by = up;
                        continue;
                }
                stack[depth] = it;
                eff[depth++] = b->files[it].cut > up ? b->files[it].cut : up;
        }
        free(items);
        free(stack);
        free(eff);
        return 0;
}

int layer_builder_finish_table(struct layer_builder *b) {
        char parent[PATH_MAX];
        ssize_t t;

        if (drop_replaced(b) < 0)
                return b->err;

        /* Hard links whose target was replaced later keep the old target's contents. */
        for (size_t i = 0; i < b->nfiles; i++) {
                struct bfile *bf = &b->files[i];
                if (bf->dead || bf->f.type != TAR_HARDLINK || !b->files[bf->target].dead)
                        continue;
                const struct bfile *tf = &b->files[bf->target];
                /* A link read after its target's tree was removed has nothing to link to:
                 * containerd's applier fails such a layer too. */
                if (tf->dropped_by && i + 1 >= tf->dropped_by)
                        return bfail(b, -EBADMSG,
                                     "hard link \"%.200s\" to \"%.200s\", which a later entry "
                                     "replacing a directory removed",
                                     b->arena + bf->path_off, b->arena + tf->path_off);
                bf->f.type = tf->f.type;
                bf->link_off = tf->link_off;
                bf->f.devmajor = tf->f.devmajor;
                bf->f.devminor = tf->f.devminor;
                bf->f.chunk_first = tf->f.chunk_first;
                bf->f.nchunks = tf->f.nchunks;
                bf->target = NONE;
        }
        for (size_t i = 0; i < b->nopaques; i++) {
                if (b->opaques[i] == NONE)
                        continue; /* dropped with the directory it marked */
                const char *path = b->arena + b->opaques[i];
                t = layer_builder_find(b, path);
                if (t < 0) {
                        t = implicit_dir(b, path, LAYER_F_OPAQUE | LAYER_F_IMPLICIT);
                        if (t < 0)
                                return (int)t;
                } else if (b->files[t].f.type != TAR_DIR) {
                        return bfail(b, -EBADMSG, "opaque marker in \"%.200s\", not a directory",
                                     path);
                }
                b->files[t].f.flags |= LAYER_F_OPAQUE;
        }
        if (layer_builder_find(b, "") < 0 && implicit_dir(b, "", LAYER_F_IMPLICIT) < 0)
                return b->err;
        /* Every parent must be a directory; missing ones are implied. FILES grows inside the
         * loop, and the added directories are themselves checked. */
        for (size_t i = 0; i < b->nfiles; i++) {
                char *slash;
                if (b->files[i].dead || b->arena[b->files[i].path_off] == '\0')
                        continue;
                snprintf(parent, sizeof(parent), "%s", b->arena + b->files[i].path_off);
                slash = strrchr(parent, '/');
                if (slash)
                        *slash = '\0';
                else
                        parent[0] = '\0';
                t = layer_builder_find(b, parent);
                if (t < 0) {
                        if (implicit_dir(b, parent, LAYER_F_IMPLICIT) < 0)
                                return b->err;
                } else if (b->files[t].f.type != TAR_DIR) {
                        return bfail(b, -EBADMSG,
                                     "\"%.200s\" is not a directory but the layer has \"%.200s\"",
                                     parent, b->arena + b->files[i].path_off);
                }
        }
        return 0;
}

/* The index from the finished table, or NULL (the builder's error set). */
struct layer_index *layer_builder_index(struct layer_builder *b, const struct digest *blob,
                                        const struct digest *tar) {
        struct layer_index *ix = calloc(1, sizeof(*ix));
        size_t *order = NULL, n = 0, nx = 0;
        int r = -ENOMEM;

        if (!ix)
                goto out_fail;
        for (size_t i = 0; i < b->nfiles; i++)
                n += !b->files[i].dead;
        order = malloc(n * sizeof(size_t));
        ix->files = calloc(n, sizeof(*ix->files));
        ix->xattrs = calloc(b->nxas ? b->nxas : 1, sizeof(*ix->xattrs));
        if (!order || !ix->files || !ix->xattrs)
                goto out_fail;
        n = 0;
        for (size_t i = 0; i < b->nfiles; i++)
                if (!b->files[i].dead)
                        order[n++] = i;
        qsort_r(order, n, sizeof(size_t), cmp_bfile_ctx, b);

        /* The arena becomes the index's string table as it is. */
        ix->strs = b->arena;
        ix->strs_len = b->alen;
        b->arena = NULL;
        b->alen = b->acap = 0;
        for (size_t i = 0; i < n; i++) {
                const struct bfile *bf = &b->files[order[i]];
                struct layer_file *f = &ix->files[i];
                *f = bf->f;
                f->path = ix->strs + bf->path_off;
                f->link = bf->link_off == NONE ? NULL : ix->strs + bf->link_off;
                f->xattr_first = (uint32_t)nx;
                for (uint32_t j = 0; j < bf->f.nxattrs; j++) {
                        const struct bxattr *x = &b->xas[bf->xa_first + j];
                        ix->xattrs[nx++] = (struct layer_xattr){
                                .name = ix->strs + x->name_off,
                                .value = (const uint8_t *)ix->strs + x->val_off,
                                .len = x->len,
                        };
                }
        }
        ix->nfiles = n;
        ix->nxattrs = nx;
        if (b->nchunks) {
                /* eStargz: chunks renumbered in file order; hard links share their target's. */
                size_t nc = 0;
                ix->chunks = calloc(b->nchunks, sizeof(*ix->chunks));
                if (!ix->chunks)
                        goto out_fail;
                for (size_t i = 0; i < n; i++) {
                        struct bfile *bf = &b->files[order[i]];
                        struct layer_file *f = &ix->files[i];
                        if (f->type != TAR_REG || f->nchunks == 0)
                                continue;
                        memcpy(ix->chunks + nc, b->chunks + bf->f.chunk_first,
                               bf->f.nchunks * sizeof(*ix->chunks));
                        f->chunk_first = bf->new_chunk_first = (uint32_t)nc;
                        nc += bf->f.nchunks;
                }
                for (size_t i = 0; i < n; i++) {
                        const struct bfile *bf = &b->files[order[i]];
                        struct layer_file *f = &ix->files[i];
                        if (f->type == TAR_HARDLINK) {
                                f->chunk_first = b->files[bf->target].new_chunk_first;
                                f->nchunks = b->files[bf->target].f.nchunks;
                        }
                }
                ix->nchunks = nc;
        }
        ix->format = (enum layer_format)b->fmt;
        ix->span = b->fmt == LAYER_FMT_GZIP ? b->span : 0;
        if (b->fmt == LAYER_FMT_ZSTD)
                layer_zpass_take(b->zp, ix);
        ix->cps = b->cps;
        ix->ncps = b->ncps;
        b->cps = NULL;
        b->ncps = 0;
        ix->wins = b->wins;
        ix->wins_len = b->wins_len;
        b->wins = NULL;
        b->wins_len = 0;
        ix->blob_size = b->totin;
        ix->tar_size = b->totout;
        ix->blob_digest = *blob;
        ix->diff_id = *tar;
        r = layer_index_link_tree(ix);
        if (r < 0)
                goto out_fail;
        free(order);
        return ix;

out_fail:
        free(order);
        layer_index_free(ix);
        bfail(b, r, "out of memory");
        return NULL;
}

int layer_builder_finish_toc(struct layer_builder *b, uint64_t blob_size,
                             const struct digest *blob_digest, struct layer_index **ret) {
        static const struct digest zero;
        struct layer_index *ix;
        int r;

        if (b->err)
                return b->err;
        b->fmt = LAYER_FMT_ESTARGZ;
        b->totin = blob_size;
        b->totout = 0;
        r = layer_builder_finish_table(b);
        if (r < 0)
                return r;
        ix = layer_builder_index(b, blob_digest ? blob_digest : &zero, &zero);
        if (!ix)
                return b->err;
        *ret = ix;
        b->err = -EALREADY;
        snprintf(b->errmsg, sizeof(b->errmsg), "the builder has finished");
        return 0;
}
