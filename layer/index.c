/* The layer index: the pass that builds it, and the lookups on it.
 *
 * The pass reads the blob once, in order: sha256 of the blob, then (gzip) inflate with
 * Z_BLOCK so zlib stops at every deflate block boundary, sha256 of the tar, and the tar
 * parser over the inflated bytes. At a block boundary at least SPAN compressed bytes after
 * the last checkpoint, a checkpoint is taken: the blob offset and bit of the next block and
 * the last 32 KiB of output (the dictionary the next blocks may refer back into), which is
 * what zlib's zran.c example showed; inflating from there needs only the blob bytes after it.
 * Windows are zstd-compressed as they are taken (tar data is mostly text and binaries: about
 * 2-4x), so an index in memory costs roughly 10-16 KiB per SPAN of layer, not 32.
 *
 * The file table is what the tar says after extraction: a later entry with the same path
 * replaces the earlier one; a hard link shares the data of its target as the target was when
 * the link was read (if the target is replaced later, the link becomes a copy of the old
 * entry); directories implied by deeper paths are added (LAYER_F_IMPLICIT); ".wh..wh..opq"
 * marks its directory opaque. Paths whose parent is not a directory are refused. The result
 * is sorted with '/' first so that a directory's subtree is one contiguous range, which is
 * what readdir and the encoded form want.
 *
 * zstd: the layer is decompressed and its tar re-cut into a seekable copy by layer/zstd.c,
 * which calls back into the tar half here (layer_builder_tar_out); see that file.
 *
 * Memory: bounded by max_files entries and max_bytes of names, xattrs and windows; one
 * 32 KiB inflate window; the tar parser's bounds.
 */
#include "layer/internal.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zlib.h>
#include <zstd.h>

#define WINDOW_ZSTD_LEVEL 3

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
static bool path_under(const char *a, const char *b) {
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
                while (depth && !path_under(ix->files[stack[depth - 1]].path, ix->files[i].path))
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

int layer_detect_format(const void *buf, size_t len) {
        const uint8_t *p = buf;
        size_t n = len < TAR_BLOCK ? len : TAR_BLOCK;
        bool zero = true;

        if (len >= 2 && p[0] == 0x1f && p[1] == 0x8b)
                return LAYER_FMT_GZIP;
        if (len >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd)
                return LAYER_FMT_ZSTD;
        if (len >= 262 && memcmp(p + 257, "ustar", 5) == 0)
                return LAYER_FMT_TAR;
        for (size_t i = 0; i < n; i++)
                if (p[i]) {
                        zero = false;
                        break;
                }
        if (len >= TAR_BLOCK)
                return zero ? LAYER_FMT_TAR : -EPROTONOSUPPORT; /* an empty tar is zeros */
        if (len >= 262 && !zero)
                return -EPROTONOSUPPORT;
        return -EAGAIN;
}

/* ---- the pass --------------------------------------------------------------------------- */

#define NONE SIZE_MAX

struct bfile {
        struct layer_file f;
        size_t path_off, link_off, xa_first;
        size_t target;            /* hard links: the entry whose data this shares */
        bool dead;                /* replaced by a later entry of the same path, or dropped */
        uint32_t new_chunk_first; /* eStargz: F.chunk_first in the index */
        /* 1 + the index of the last non-directory entry of this path (0: none). containerd's
         * applier removes whatever tree is at a path before it writes a non-directory there,
         * so every entry under this path with a lower index is dropped at finish. Carried
         * over when a later entry replaces this one. */
        size_t cut;
        size_t dropped_by; /* dropped: the CUT that dropped it (hard links read later fail) */
};

struct bxattr {
        size_t name_off, val_off;
        uint32_t len;
};

struct layer_builder {
        uint32_t span;
        size_t max_files, max_bytes;
        bool check_diff, check_blob;
        struct digest want_diff, want_blob;
        int err;
        char errmsg[384];

        int fmt;
        uint8_t head[TAR_BLOCK];
        size_t head_len;
        EVP_MD_CTX *blob_md, *tar_md;
        struct tar_parser *tar;

        z_stream zs;
        bool zs_init, member_end;
        uint8_t *window; /* circular: the last LAYER_WINDOW bytes of output */
        uint64_t totin, totout, last_in;
        ZSTD_CCtx *cctx;
        uint8_t lin[LAYER_WINDOW];

        struct bfile *files;
        size_t nfiles, files_cap;
        struct bxattr *xas;
        size_t nxas, xas_cap;
        char *arena;
        size_t alen, acap;
        uint32_t *map; /* open addressing: file index + 1, 0 empty */
        size_t map_cap, map_used;
        size_t *opaques;    /* arena offsets of the opaque markers' directories */
        size_t *opaque_seq; /* NFILES when each marker was read: its place in the tar */
        size_t nopaques, opaques_cap, opaque_seq_cap;
        struct layer_checkpoint *cps;
        size_t ncps, cps_cap;
        struct layer_chunk *chunks; /* eStargz; F.chunk_first indexes this while building */
        size_t nchunks, chunks_cap;
        uint8_t *wins;
        size_t wins_len, wins_cap;

        struct layer_zpass_cfg zcfg; /* zstd */
        struct layer_zpass *zp;
};

#define bfail layer_builder_fail
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

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
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
        if (grow((void **)&b->arena, &b->acap, b->alen + len + 1, 1) < 0)
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

static ssize_t map_find(const struct layer_builder *b, const char *path) {
        size_t i;

        if (!b->map_cap)
                return -ENOENT;
        i = map_slot(b, path);
        return b->map[i] ? (ssize_t)(b->map[i] - 1) : -ENOENT;
}

/* Makes FILES[IDX] the entry for its path (the previous one, if any, is replaced). */
static int map_put(struct layer_builder *b, size_t idx) {
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

static struct bfile *new_file(struct layer_builder *b, const char *path) {
        struct bfile *bf;
        size_t off;

        if (b->nfiles >= b->max_files) {
                bfail(b, -EFBIG, "layer has more than %zu entries", b->max_files);
                return NULL;
        }
        if (grow((void **)&b->files, &b->files_cap, b->nfiles + 1, sizeof(*b->files)) < 0) {
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
                    grow((void **)&b->opaques, &b->opaques_cap, b->nopaques + 1, sizeof(size_t)) <
                            0 ||
                    grow((void **)&b->opaque_seq, &b->opaque_seq_cap, b->nopaques + 1,
                         sizeof(size_t)) < 0)
                        return bfail(b, b->err ? b->err : -ENOMEM, "out of memory");
                b->opaque_seq[b->nopaques] = b->nfiles;
                b->opaques[b->nopaques++] = off;
                return 0;
        }
        bf = new_file(b, e->path);
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
                ssize_t t = map_find(b, e->link);
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
                bf = &b->files[idx]; /* FILES does not move between here and map_put() */
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
                if (grow((void **)&b->xas, &b->xas_cap, b->nxas + 1, sizeof(*b->xas)) < 0)
                        return bfail(b, -ENOMEM, "out of memory");
                b->xas[b->nxas++] = x;
        }
        b->files[idx].f.nxattrs = (uint32_t)(b->nxas - b->files[idx].xa_first);
        return map_put(b, idx);
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
            grow((void **)&b->chunks, &b->chunks_cap, b->nchunks + 1, sizeof(*b->chunks)) < 0)
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

static int tar_bytes(struct layer_builder *b, const void *buf, size_t len) {
        int r;

        if (len == 0)
                return 0;
        /* A plain tar's diff_id is its blob digest: hashed once, in blob_bytes(). */
        if (b->fmt != LAYER_FMT_TAR && EVP_DigestUpdate(b->tar_md, buf, len) != 1)
                return bfail(b, -ENOMEM, "sha256 failed");
        r = tar_parser_feed(b->tar, buf, len);
        if (r < 0)
                return bfail(b, r, "%s", tar_parser_error(b->tar));
        return 0;
}

int layer_builder_tar_out(struct layer_builder *b, const void *buf, size_t len) {
        b->totout += len;
        return tar_bytes(b, buf, len);
}

static int add_checkpoint(struct layer_builder *b, unsigned bits) {
        size_t pos = LAYER_WINDOW - b->zs.avail_out; /* where the next output byte goes */
        uint32_t wlen = b->totout < LAYER_WINDOW ? (uint32_t)b->totout : LAYER_WINDOW;
        struct layer_checkpoint *cp;
        size_t zlen = 0;

        if (b->totout >= LAYER_WINDOW) {
                memcpy(b->lin, b->window + pos, LAYER_WINDOW - pos);
                memcpy(b->lin + LAYER_WINDOW - pos, b->window, pos);
        } else {
                memcpy(b->lin, b->window + pos - wlen, wlen);
        }
        if (wlen) {
                size_t bound = ZSTD_compressBound(wlen);
                if (b->alen + b->wins_len + bound > b->max_bytes)
                        return bfail(b, -EFBIG, "layer index over %zu bytes (checkpoints)",
                                     b->max_bytes);
                if (grow((void **)&b->wins, &b->wins_cap, b->wins_len + bound, 1) < 0)
                        return bfail(b, -ENOMEM, "out of memory");
                zlen = ZSTD_compress2(b->cctx, b->wins + b->wins_len, bound, b->lin, wlen);
                if (ZSTD_isError(zlen))
                        return bfail(b, -ENOMEM, "zstd: %s", ZSTD_getErrorName(zlen));
        }
        if (grow((void **)&b->cps, &b->cps_cap, b->ncps + 1, sizeof(*b->cps)) < 0)
                return bfail(b, -ENOMEM, "out of memory");
        cp = &b->cps[b->ncps++];
        *cp = (struct layer_checkpoint){.in = b->totin,
                                        .out = b->totout,
                                        .bits = (uint8_t)bits,
                                        .wlen = wlen,
                                        .zoff = b->wins_len,
                                        .zlen = (uint32_t)zlen};
        b->wins_len += zlen;
        b->last_in = b->totin;
        return 0;
}

static int gzip_bytes(struct layer_builder *b, const uint8_t *buf, size_t len) {
        z_stream *zs = &b->zs;
        int r;

        while (len > 0) {
                uInt chunk = len > (1u << 30) ? (1u << 30) : (uInt)len;
                zs->next_in = (Bytef *)buf;
                zs->avail_in = chunk;
                while (zs->avail_in > 0) {
                        uint8_t *out0;
                        uInt in0;
                        size_t produced;
                        int zr;

                        if (b->member_end) {
                                /* Another gzip member follows (multi-member layers, eStargz). */
                                if (inflateReset(zs) != Z_OK)
                                        return bfail(b, -ENOMEM, "inflateReset failed");
                                b->member_end = false;
                        }
                        if (zs->avail_out == 0) {
                                zs->next_out = b->window;
                                zs->avail_out = LAYER_WINDOW;
                        }
                        out0 = zs->next_out;
                        in0 = zs->avail_in;
                        zr = inflate(zs, Z_BLOCK);
                        produced = (size_t)(zs->next_out - out0);
                        b->totin += in0 - zs->avail_in;
                        b->totout += produced;
                        r = tar_bytes(b, out0, produced);
                        if (r < 0)
                                return r;
                        if (zr == Z_STREAM_END) {
                                b->member_end = true;
                                continue;
                        }
                        if (zr == Z_BUF_ERROR && zs->avail_in == 0)
                                break;
                        if (zr != Z_OK)
                                return bfail(b, -EBADMSG,
                                             "corrupt gzip stream at blob offset %llu: %s",
                                             (unsigned long long)b->totin,
                                             zs->msg ? zs->msg : "inflate failed");
                        if ((zs->data_type & 128) && !(zs->data_type & 64) &&
                            (b->ncps == 0 || b->totin - b->last_in >= b->span)) {
                                r = add_checkpoint(b, (unsigned)zs->data_type & 7);
                                if (r < 0)
                                        return r;
                        }
                }
                buf += chunk - zs->avail_in;
                len -= chunk - zs->avail_in;
                if (zs->avail_in)
                        return bfail(b, -EBADMSG, "inflate made no progress");
        }
        return 0;
}

static int start_format(struct layer_builder *b, int fmt) {
        if (fmt == -EPROTONOSUPPORT)
                return bfail(b, -EPROTONOSUPPORT,
                             "unknown layer format (not gzip, zstd or tar; check the media type)");
        if (fmt == LAYER_FMT_ZSTD) {
                if (!b->zcfg.sink)
                        return bfail(b, -EOPNOTSUPP,
                                     "zstd layer: the pass was given no place to write its "
                                     "seekable copy");
                b->zp = layer_zpass_new(&b->zcfg);
                if (!b->zp)
                        return bfail(b, -ENOMEM, "out of memory");
        }
        if (fmt == LAYER_FMT_GZIP) {
                memset(&b->zs, 0, sizeof(b->zs));
                if (inflateInit2(&b->zs, 16 + 15) != Z_OK)
                        return bfail(b, -ENOMEM, "inflateInit failed");
                b->zs_init = true;
                b->window = malloc(LAYER_WINDOW);
                b->cctx = ZSTD_createCCtx();
                if (!b->window || !b->cctx)
                        return bfail(b, -ENOMEM, "out of memory");
                /* A checksum per window: a damaged index is refused when decoded, not
                 * discovered as wrong file bytes. */
                if (ZSTD_isError(ZSTD_CCtx_setParameter(b->cctx, ZSTD_c_compressionLevel,
                                                        WINDOW_ZSTD_LEVEL)) ||
                    ZSTD_isError(ZSTD_CCtx_setParameter(b->cctx, ZSTD_c_checksumFlag, 1)))
                        return bfail(b, -ENOMEM, "zstd parameters refused");
        }
        b->fmt = fmt;
        return 0;
}

static int blob_bytes(struct layer_builder *b, const void *buf, size_t len) {
        if (len == 0)
                return 0;
        if (EVP_DigestUpdate(b->blob_md, buf, len) != 1)
                return bfail(b, -ENOMEM, "sha256 failed");
        if (b->fmt == LAYER_FMT_TAR) {
                b->totin += len;
                b->totout += len;
                return tar_bytes(b, buf, len);
        }
        if (b->fmt == LAYER_FMT_ZSTD) {
                b->totin += len;
                return layer_zpass_feed(b, b->zp, buf, len);
        }
        return gzip_bytes(b, buf, len);
}

int layer_builder_feed(struct layer_builder *b, const void *buf, size_t len) {
        const uint8_t *p = buf;
        int r;

        if (b->err)
                return b->err;
        if (b->fmt == 0) {
                size_t n = TAR_BLOCK - b->head_len;
                if (n > len)
                        n = len;
                memcpy(b->head + b->head_len, p, n);
                b->head_len += n;
                p += n;
                len -= n;
                r = layer_detect_format(b->head, b->head_len);
                if (r == -EAGAIN)
                        return 0;
                r = start_format(b, r);
                if (r < 0)
                        return r;
                r = blob_bytes(b, b->head, b->head_len);
                if (r < 0)
                        return r;
        }
        return blob_bytes(b, p, len);
}

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
        bf = new_file(b, copy);
        if (!bf)
                return b->err;
        bf->f = (struct layer_file){.type = TAR_DIR, .mode = 0755, .flags = flags};
        idx = (size_t)(bf - b->files);
        if (map_put(b, idx) < 0)
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
                        if (path_under(top, path) || (opaque && strcmp(top, path) == 0))
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

static int finish_table(struct layer_builder *b) {
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
                t = map_find(b, path);
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
        if (map_find(b, "") < 0 && implicit_dir(b, "", LAYER_F_IMPLICIT) < 0)
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
                t = map_find(b, parent);
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
static struct layer_index *build_index(struct layer_builder *b, const struct digest *blob,
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
        r = finish_table(b);
        if (r < 0)
                return r;
        ix = build_index(b, blob_digest ? blob_digest : &zero, &zero);
        if (!ix)
                return b->err;
        *ret = ix;
        b->err = -EALREADY;
        snprintf(b->errmsg, sizeof(b->errmsg), "the builder has finished");
        return 0;
}

int layer_builder_finish(struct layer_builder *b, struct layer_index **ret) {
        struct layer_index *ix;
        struct digest blob, tar;
        unsigned len;
        int r;

        if (b->err)
                return b->err;
        if (b->fmt == 0) {
                r = layer_detect_format(b->head, b->head_len);
                if (r == -EAGAIN)
                        return bfail(b, -EBADMSG, "blob of %zu bytes is too short to be a layer",
                                     b->head_len);
                r = start_format(b, r);
                if (r < 0)
                        return r;
                r = blob_bytes(b, b->head, b->head_len);
                if (r < 0)
                        return r;
        }
        if (b->fmt == LAYER_FMT_GZIP && !b->member_end)
                return bfail(b, -EBADMSG, "truncated gzip stream after %llu blob bytes",
                             (unsigned long long)b->totin);
        if (b->fmt == LAYER_FMT_ZSTD) {
                r = layer_zpass_finish(b, b->zp);
                if (r < 0)
                        return r;
        }
        r = tar_parser_finish(b->tar);
        if (r < 0)
                return bfail(b, r, "%s", tar_parser_error(b->tar));
        if (EVP_DigestFinal_ex(b->blob_md, blob.bytes, &len) != 1 ||
            EVP_DigestFinal_ex(b->tar_md, tar.bytes, &len) != 1)
                return bfail(b, -ENOMEM, "sha256 failed");
        if (b->fmt == LAYER_FMT_TAR)
                tar = blob;
        if (b->check_blob && !digest_equal(&blob, &b->want_blob))
                return bfail(b, -EBADMSG, "blob digest mismatch: not the layer asked for");
        if (b->check_diff && !digest_equal(&tar, &b->want_diff))
                return bfail(b, -EBADMSG,
                             "diff_id mismatch: the uncompressed layer is not the one the image "
                             "config names");
        r = finish_table(b);
        if (r < 0)
                return r;
        ix = build_index(b, &blob, &tar);
        if (!ix)
                return b->err;
        *ret = ix;
        b->err = -EALREADY; /* one index per builder */
        snprintf(b->errmsg, sizeof(b->errmsg), "the builder has finished");
        return 0;
}
