/* The layer builder and its table: what the tar (or an eStargz TOC) says, entry by entry.
 *
 * The file table is what the tar says after extraction: a later entry with the same path
 * replaces the earlier one; a hard link shares the data of its target as the target was when
 * the link was read (if the target is replaced later, the link becomes a copy of the old
 * entry); directories implied by deeper paths are added (LAYER_F_IMPLICIT); ".wh..wh..opq"
 * marks its directory opaque. Paths whose parent is not a directory are refused. The result
 * is sorted with '/' first so that a directory's subtree is one contiguous range, which is
 * what readdir and the encoded form want.
 *
 * Entries are appended to FILES as they are read; a hash map (open addressing over the
 * arena's paths) finds the live entry of a path in O(1), so a replaced entry is marked dead
 * and a hard link finds its target as it is at that moment. Names, link targets and xattrs
 * go to one arena, which becomes the index's string table as it is (layer/finish.c).
 *
 * Memory: bounded by max_files entries and max_bytes of names, xattrs and windows; the map
 * is at most twice the entries.
 */
#include "layer/index_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int layer_builder_fail(struct layer_builder *b, int err, const char *fmt, ...) {
        va_list ap;

        if (b->err)
                return b->err;
        va_start(ap, fmt);
        vsnprintf(b->errmsg, sizeof(b->errmsg), fmt, ap);
        va_end(ap);
        b->err = err;
        return err;
}

const char *layer_builder_error(const struct layer_builder *b) {
        return b->err ? b->errmsg : "";
}

int layer_grow(void **p, size_t *cap, size_t need, size_t elem) {
        size_t n = *cap ? *cap : 16;
        void *q;

        if (need <= *cap)
                return 0;
        while (n < need) {
                if (n > SIZE_MAX / 2 / elem)
                        return -ENOMEM;
                n *= 2;
        }
        q = realloc(*p, n * elem);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = n;
        return 0;
}

static int arena_add(struct layer_builder *b, const void *s, size_t len, size_t *ret_off) {
        if (b->alen + len + 1 + b->wins_len > b->max_bytes)
                return bfail(b, -EFBIG, "layer index over %zu bytes of names and xattrs",
                             b->max_bytes);
        if (layer_grow((void **)&b->arena, &b->acap, b->alen + len + 1, 1) < 0)
                return bfail(b, -ENOMEM, "out of memory");
        memcpy(b->arena + b->alen, s, len);
        b->arena[b->alen + len] = '\0';
        *ret_off = b->alen;
        b->alen += len + 1;
        return 0;
}

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ull;

        for (; *s; s++)
                h = (h ^ (uint8_t)*s) * 1099511628211ull;
        return h;
}

static size_t map_slot(const struct layer_builder *b, const char *path) {
        size_t mask = b->map_cap - 1, i = (size_t)hash_str(path) & mask;

        while (b->map[i] && strcmp(b->arena + b->files[b->map[i] - 1].path_off, path) != 0)
                i = (i + 1) & mask;
        return i;
}

ssize_t layer_builder_find(const struct layer_builder *b, const char *path) {
        size_t i;

        if (!b->map_cap)
                return -ENOENT;
        i = map_slot(b, path);
        return b->map[i] ? (ssize_t)(b->map[i] - 1) : -ENOENT;
}

/* Makes FILES[IDX] the entry for its path (the previous one, if any, is replaced). */
int layer_builder_put(struct layer_builder *b, size_t idx) {
        size_t i;

        if ((b->map_used + 1) * 2 > b->map_cap) {
                size_t ncap = b->map_cap ? b->map_cap * 2 : 1024;
                uint32_t *old = b->map;
                size_t ocap = b->map_cap;

                b->map = calloc(ncap, sizeof(uint32_t));
                if (!b->map) {
                        b->map = old;
                        return bfail(b, -ENOMEM, "out of memory");
                }
                b->map_cap = ncap;
                for (size_t j = 0; j < ocap; j++)
                        if (old[j])
                                b->map[map_slot(b, b->arena + b->files[old[j] - 1].path_off)] =
                                        old[j];
                free(old);
        }
        i = map_slot(b, b->arena + b->files[idx].path_off);
        if (b->map[i]) {
                b->files[b->map[i] - 1].dead = true;
                b->files[idx].cut = b->files[b->map[i] - 1].cut;
        }
        if (b->files[idx].f.type != TAR_DIR)
                b->files[idx].cut = idx + 1;
        if (!b->map[i])
                b->map_used++;
        b->map[i] = (uint32_t)(idx + 1);
        return 0;
}

struct bfile *layer_builder_new_file(struct layer_builder *b, const char *path) {
        struct bfile *bf;
        size_t off;

        if (b->nfiles >= b->max_files) {
                bfail(b, -EFBIG, "layer has more than %zu entries", b->max_files);
                return NULL;
        }
        if (layer_grow((void **)&b->files, &b->files_cap, b->nfiles + 1, sizeof(*b->files)) < 0) {
                bfail(b, -ENOMEM, "out of memory");
                return NULL;
        }
        if (arena_add(b, path, strlen(path), &off) < 0)
                return NULL;
        bf = &b->files[b->nfiles++];
        *bf = (struct bfile){
                .path_off = off, .link_off = NONE, .xa_first = b->nxas, .target = NONE};
        return bf;
}

static int on_entry(void *ctx, const struct tar_entry *e) {
        struct layer_builder *b = ctx;
        struct bfile *bf;
        size_t idx, off;

        if (e->type == TAR_OPAQUE) {
                if (arena_add(b, e->path, strlen(e->path), &off) < 0 ||
                    layer_grow((void **)&b->opaques, &b->opaques_cap, b->nopaques + 1,
                               sizeof(size_t)) < 0 ||
                    layer_grow((void **)&b->opaque_seq, &b->opaque_seq_cap, b->nopaques + 1,
                               sizeof(size_t)) < 0)
                        return bfail(b, b->err ? b->err : -ENOMEM, "out of memory");
                b->opaque_seq[b->nopaques] = b->nfiles;
                b->opaques[b->nopaques++] = off;
                return 0;
        }
        bf = layer_builder_new_file(b, e->path);
        if (!bf)
                return b->err;
        idx = (size_t)(bf - b->files);
        bf->f = (struct layer_file){
                .type = (uint8_t)e->type,
                .mode = e->mode,
                .uid = e->uid,
                .gid = e->gid,
                .devmajor = e->devmajor,
                .devminor = e->devminor,
                .mtime = e->mtime,
                .mtime_nsec = e->mtime_nsec,
                .size = e->size,
                .offset = e->size ? e->offset : 0,
        };
        if (e->type != TAR_CHR && e->type != TAR_BLK)
                bf->f.devmajor = bf->f.devminor = 0;
        if (e->type == TAR_HARDLINK) {
                ssize_t t = layer_builder_find(b, e->link);
                const struct bfile *tf;

                if (t < 0)
                        return bfail(b, -EBADMSG, "hard link \"%.200s\" to missing \"%.200s\"",
                                     e->path, e->link);
                tf = &b->files[t];
                if (tf->f.type == TAR_HARDLINK)
                        tf = &b->files[tf->target];
                if (tf->f.type == TAR_DIR || tf->f.type == TAR_WHITEOUT)
                        return bfail(b, -EBADMSG, "hard link \"%.200s\" to a directory or whiteout",
                                     e->path);
                bf = &b->files[idx]; /* FILES does not move between here and layer_builder_put() */
                bf->target = (size_t)(tf - b->files);
                bf->link_off = tf->path_off;
                bf->f.size = tf->f.size;
                bf->f.offset = tf->f.offset;
                bf->f.chunk_first = tf->f.chunk_first; /* final values at finish */
                bf->f.nchunks = tf->f.nchunks;
        } else if (e->type == TAR_SYMLINK) {
                if (arena_add(b, e->link, strlen(e->link), &off) < 0)
                        return b->err;
                b->files[idx].link_off = off;
        }
        for (size_t i = 0; i < e->nxattrs; i++) {
                struct bxattr x = {.len = (uint32_t)e->xattrs[i].len};
                if (arena_add(b, e->xattrs[i].name, strlen(e->xattrs[i].name), &x.name_off) < 0 ||
                    arena_add(b, e->xattrs[i].value, e->xattrs[i].len, &x.val_off) < 0)
                        return b->err;
                if (layer_grow((void **)&b->xas, &b->xas_cap, b->nxas + 1, sizeof(*b->xas)) < 0)
                        return bfail(b, -ENOMEM, "out of memory");
                b->xas[b->nxas++] = x;
        }
        b->files[idx].f.nxattrs = (uint32_t)(b->nxas - b->files[idx].xa_first);
        return layer_builder_put(b, idx);
}

int layer_builder_add(struct layer_builder *b, const struct tar_entry *e) {
        if (b->err)
                return b->err;
        return on_entry(b, e);
}

int layer_builder_add_chunk(struct layer_builder *b, const struct layer_chunk *c) {
        struct bfile *bf;
        uint64_t have = 0;

        if (b->err)
                return b->err;
        if (b->nfiles == 0 || b->files[b->nfiles - 1].f.type != TAR_REG)
                return bfail(b, -EBADMSG, "chunk without a regular file before it");
        bf = &b->files[b->nfiles - 1];
        if (bf->f.nchunks) {
                const struct layer_chunk *last = &b->chunks[bf->f.chunk_first + bf->f.nchunks - 1];
                have = last->file_off + last->size;
        }
        if (c->file_off != have || c->size == 0 || c->size > bf->f.size - have)
                return bfail(b, -EBADMSG,
                             "chunk of \"%.200s\" at %llu+%llu does not follow the last",
                             b->arena + bf->path_off, (unsigned long long)c->file_off,
                             (unsigned long long)c->size);
        if (b->nchunks >= UINT32_MAX / 2 ||
            layer_grow((void **)&b->chunks, &b->chunks_cap, b->nchunks + 1, sizeof(*b->chunks)) < 0)
                return bfail(b, -ENOMEM, "out of memory");
        if (bf->f.nchunks == 0)
                bf->f.chunk_first = (uint32_t)b->nchunks;
        b->chunks[b->nchunks++] = *c;
        bf->f.nchunks++;
        return 0;
}

struct layer_builder *layer_builder_new(const struct layer_build_opts *o) {
        struct layer_builder *b = calloc(1, sizeof(*b));

        if (!b)
                return NULL;
        b->span = o && o->span ? o->span : LAYER_SPAN_DEFAULT;
        if (b->span < LAYER_SPAN_MIN)
                b->span = LAYER_SPAN_MIN;
        if (b->span > LAYER_SPAN_MAX)
                b->span = LAYER_SPAN_MAX;
        b->max_files = o && o->max_files ? o->max_files : (4u << 20);
        if (b->max_files > UINT32_MAX / 2)
                b->max_files = UINT32_MAX / 2;
        b->max_bytes = o && o->max_bytes ? o->max_bytes : (512u << 20);
        if (b->max_bytes > UINT32_MAX)
                b->max_bytes = UINT32_MAX; /* the encoded form's offsets are 32-bit */
        if (o && o->diff_id) {
                b->check_diff = true;
                b->want_diff = *o->diff_id;
        }
        if (o && o->blob_digest) {
                b->check_blob = true;
                b->want_blob = *o->blob_digest;
        }
        b->zcfg = (struct layer_zpass_cfg){
                .frame = o && o->zstd_frame ? o->zstd_frame : LAYER_ZSTD_FRAME_DEFAULT,
                .level = o && o->zstd_level ? o->zstd_level : LAYER_ZSTD_LEVEL_DEFAULT,
                .sink = o ? o->sink : NULL,
                .sink_ctx = o ? o->sink_ctx : NULL,
                .max_frames = b->max_bytes / sizeof(struct layer_zframe),
        };
        if (b->zcfg.frame < LAYER_ZSTD_FRAME_MIN)
                b->zcfg.frame = LAYER_ZSTD_FRAME_MIN;
        if (b->zcfg.frame > LAYER_ZSTD_FRAME_MAX)
                b->zcfg.frame = LAYER_ZSTD_FRAME_MAX;
        b->blob_md = EVP_MD_CTX_new();
        b->tar_md = EVP_MD_CTX_new();
        b->tar = tar_parser_new(on_entry, b);
        if (!b->blob_md || !b->tar_md || !b->tar ||
            EVP_DigestInit_ex(b->blob_md, EVP_sha256(), NULL) != 1 ||
            EVP_DigestInit_ex(b->tar_md, EVP_sha256(), NULL) != 1) {
                layer_builder_free(b);
                return NULL;
        }
        return b;
}

void layer_builder_free(struct layer_builder *b) {
        if (!b)
                return;
        if (b->zs_init)
                inflateEnd(&b->zs);
        EVP_MD_CTX_free(b->blob_md);
        EVP_MD_CTX_free(b->tar_md);
        tar_parser_free(b->tar);
        ZSTD_freeCCtx(b->cctx);
        layer_zpass_free(b->zp);
        free(b->window);
        free(b->files);
        free(b->xas);
        free(b->arena);
        free(b->map);
        free(b->opaques);
        free(b->opaque_seq);
        free(b->cps);
        free(b->chunks);
        free(b->wins);
        free(b);
}
