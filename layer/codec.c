/* The encoded layer index: what one node builds and every other node fetches from peers.
 *
 * Layout (all integers little-endian):
 *   header  "P2PLIDX\n" | u32 version (1) | u32 flags (0) | u64 payload length
 *   then one zstd frame whose content (the payload) is exactly that long:
 *     u8 format | 3 zero | u32 span | u64 blob_size | u64 tar_size | 32 blob sha256
 *     | 32 tar sha256 | u32 nfiles | u32 nxattrs | u32 ncheckpoints | u32 nchunks
 *     | u64 strs_len | u64 wins_len
 *     | files[nfiles] (84 bytes) | xattrs[nxattrs] (16) | checkpoints[ncheckpoints] (40)
 *     | chunks[nchunks] (32) | strs | wins
 * Strings are offsets into STRS and end with a NUL there; windows are zstd frames in WINS.
 * Version 2 is the same with one more section at the end, for zstd layers (and only them:
 * other formats keep version 1, so their encodings and digests did not change):
 *     | 32 seekable copy sha256 | u64 its size | u32 nframes | u32 0
 *     | frames[nframes] (u32 uncompressed size, u32 compressed size)
 * Frame offsets are not stored: each frame starts where the one before ends.
 * Version 3 (gzip layers, the only ones with windows; written since the lazy head) moves the
 * windows out of the compressed payload so a reader can load the index without them:
 *   header  "P2PLIDX\n" | u32 version (3) | u32 flags (0) | u64 payload length
 *           | u64 head length (the zstd frame's bytes) | u64 wins_len
 *   head    one zstd frame: the version 1 payload without its WINS (wins_len is still in the
 *           fixed part and must equal the header's)
 *   wins    wins_len bytes: the windows, each its own zstd frame, at checkpoint ZOFF from here
 * The windows are incompressible zstd frames already, so version 1's outer compression of
 * them bought nothing; leaving them out lets a node fetch only the head (the file table and
 * the checkpoint table, usually inside the first chunk of the blob) and read one window when
 * a span starting at its checkpoint is first inflated (layer_reader_set_windows). The encoded
 * blob is exactly header + head + wins, so its size pins wins_len. Versions 1 and 2 (from an
 * older node, or in this node's store) still decode, whole.
 *
 * The index comes from another node, so the decoder trusts nothing: every count is checked
 * against the payload length before anything is allocated from it, every string and window
 * against its section, and the table against the invariants the builder guarantees (sorted
 * unique normalised paths, parents that are directories, hard links that resolve, data inside
 * the tar, checkpoints inside the blob and in order, windows that decompress to their
 * length). The canonical form is also required (xattrs and windows in file/checkpoint order),
 * so one index has one encoding and one digest for a given libzstd. A decoded index is as
 * good as a built one for the reader: what the decoder cannot check is that the index tells
 * the truth about the blob; the reader's inflate then fails (-EBADMSG) or returns wrong
 * bytes, which is why an index fetched from a peer must be trusted like the peer's directory
 * entry (see the report on issue 16).
 *
 * Cost: decoding holds the compressed input, the payload and the index (which reuses none of
 * the payload); validation is O(n log n) in files and decompresses every window once.
 */
#include "layer/internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

_Static_assert(ZSTD_COMPRESSBOUND(LAYER_WINDOW) <= LAYER_WINDOW_ZMAX,
               "a window's zstd frame must fit LAYER_WINDOW_ZMAX");

#define MAGIC "P2PLIDX\n"
#define VERSION 1
#define VERSION_ZSTD 2
#define VERSION_SPLIT 3
#define HDR3_LEN 40
#define ZSEC_FIXED 48
#define ZFRAME_REC 8
#define HDR_LEN 24
#define FIXED_LEN 120
#define FILE_REC 84
#define CHUNK_REC 32
#define XATTR_REC 16
#define CP_REC 40
#define ZSTD_LEVEL 9

static void put8(uint8_t **p, uint8_t v) {
        *(*p)++ = v;
}
static void put32(uint8_t **p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                *(*p)++ = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t **p, uint64_t v) {
        for (int i = 0; i < 8; i++)
                *(*p)++ = (uint8_t)(v >> (8 * i));
}
static void putn(uint8_t **p, const void *s, size_t n) {
        if (n)
                memcpy(*p, s, n);
        *p += n;
}
static uint8_t get8(const uint8_t **p) {
        return *(*p)++;
}
static uint32_t get32(const uint8_t **p) {
        uint32_t v = 0;
        for (int i = 0; i < 4; i++)
                v |= (uint32_t)(*(*p)++) << (8 * i);
        return v;
}
static uint64_t get64(const uint8_t **p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v |= (uint64_t)(*(*p)++) << (8 * i);
        return v;
}

int layer_index_encode(const struct layer_index *ix, uint8_t **ret, size_t *ret_len,
                       struct digest *ret_digest) {
        bool zst = ix->format == LAYER_FMT_ZSTD;
        bool split = ix->format == LAYER_FMT_GZIP;
        size_t hdr = split ? HDR3_LEN : HDR_LEN;
        size_t plen = FIXED_LEN + ix->nfiles * FILE_REC + ix->nxattrs * XATTR_REC +
                      ix->ncps * CP_REC + ix->nchunks * CHUNK_REC + ix->strs_len +
                      (split ? 0 : ix->wins_len) +
                      (zst ? ZSEC_FIXED + ix->nzframes * ZFRAME_REC : 0);

        if (split && ix->wins_lazy)
                return -EINVAL; /* a lazily loaded index has no windows to write */
        uint8_t *payload, *out, *p;
        ZSTD_CCtx *cctx;
        size_t bound, zlen;

        payload = malloc(plen);
        if (!payload)
                return -ENOMEM;
        p = payload;
        put8(&p, (uint8_t)ix->format);
        putn(&p, "\0\0\0", 3);
        put32(&p, ix->span);
        put64(&p, ix->blob_size);
        put64(&p, ix->tar_size);
        putn(&p, ix->blob_digest.bytes, DIGEST_LEN);
        putn(&p, ix->diff_id.bytes, DIGEST_LEN);
        put32(&p, (uint32_t)ix->nfiles);
        put32(&p, (uint32_t)ix->nxattrs);
        put32(&p, (uint32_t)ix->ncps);
        put32(&p, (uint32_t)ix->nchunks);
        put64(&p, ix->strs_len);
        put64(&p, ix->wins_len);
        for (size_t i = 0; i < ix->nfiles; i++) {
                const struct layer_file *f = &ix->files[i];
                put32(&p, (uint32_t)(f->path - ix->strs));
                put32(&p, (uint32_t)strlen(f->path));
                put32(&p, f->link ? (uint32_t)(f->link - ix->strs) : 0);
                put32(&p, f->link ? (uint32_t)strlen(f->link) : 0);
                put8(&p, f->type);
                put8(&p, f->flags);
                put8(&p, 0);
                put8(&p, 0);
                put32(&p, f->mode);
                put32(&p, f->uid);
                put32(&p, f->gid);
                put32(&p, f->devmajor);
                put32(&p, f->devminor);
                put32(&p, f->mtime_nsec);
                put64(&p, (uint64_t)f->mtime);
                put64(&p, f->size);
                put64(&p, f->offset);
                put32(&p, f->xattr_first);
                put32(&p, f->nxattrs);
                put32(&p, f->chunk_first);
                put32(&p, f->nchunks);
        }
        for (size_t i = 0; i < ix->nxattrs; i++) {
                const struct layer_xattr *x = &ix->xattrs[i];
                put32(&p, (uint32_t)(x->name - ix->strs));
                put32(&p, (uint32_t)strlen(x->name));
                put32(&p, (uint32_t)((const char *)x->value - ix->strs));
                put32(&p, x->len);
        }
        for (size_t i = 0; i < ix->ncps; i++) {
                const struct layer_checkpoint *c = &ix->cps[i];
                put64(&p, c->in);
                put64(&p, c->out);
                put8(&p, c->bits);
                putn(&p, "\0\0\0", 3);
                put32(&p, c->wlen);
                put64(&p, c->zoff);
                put32(&p, c->zlen);
                put32(&p, 0);
        }
        for (size_t i = 0; i < ix->nchunks; i++) {
                const struct layer_chunk *c = &ix->chunks[i];
                put64(&p, c->file_off);
                put64(&p, c->size);
                put64(&p, c->in);
                put64(&p, c->inner);
        }
        putn(&p, ix->strs, ix->strs_len);
        if (!split)
                putn(&p, ix->wins, ix->wins_len);
        if (zst) {
                putn(&p, ix->seek_digest.bytes, DIGEST_LEN);
                put64(&p, ix->seek_size);
                put32(&p, (uint32_t)ix->nzframes);
                put32(&p, 0);
                for (size_t i = 0; i < ix->nzframes; i++) {
                        put32(&p, ix->zframes[i].ulen);
                        put32(&p, ix->zframes[i].clen);
                }
        }

        bound = ZSTD_compressBound(plen);
        if (split && bound > SIZE_MAX - hdr - ix->wins_len) {
                free(payload);
                return -ENOMEM;
        }
        out = malloc(hdr + bound + (split ? ix->wins_len : 0));
        if (!out) {
                free(payload);
                return -ENOMEM;
        }
        p = out;
        putn(&p, MAGIC, 8);
        put32(&p, split ? VERSION_SPLIT : zst ? VERSION_ZSTD : VERSION);
        put32(&p, 0);
        put64(&p, plen);
        /* Level and checksum set explicitly: the bytes (and so the digest) depend only on
         * the index and the libzstd version. */
        zlen = (size_t)-1;
        cctx = ZSTD_createCCtx();
        if (cctx &&
            !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, ZSTD_LEVEL)) &&
            !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)))
                zlen = ZSTD_compress2(cctx, out + hdr, bound, payload, plen);
        ZSTD_freeCCtx(cctx);
        free(payload);
        if (ZSTD_isError(zlen)) {
                free(out);
                return -ENOMEM;
        }
        if (split) { /* the head's length and the windows, known only now */
                p = out + HDR_LEN;
                put64(&p, zlen);
                put64(&p, ix->wins_len);
                if (ix->wins_len)
                        memcpy(out + hdr + zlen, ix->wins, ix->wins_len);
                zlen += ix->wins_len;
        }
        *ret_len = hdr + zlen;
        if (ret_digest)
                digest_sha256(out, *ret_len, ret_digest);
        *ret = out;
        return 0;
}

/* A string of LEN bytes at OFF in STRS, NUL-terminated there and without a NUL inside. */
static const char *get_str(const struct layer_index *ix, uint32_t off, uint32_t len) {
        if ((uint64_t)off + len >= ix->strs_len || ix->strs[off + len] != '\0' ||
            memchr(ix->strs + off, '\0', len))
                return NULL;
        return ix->strs + off;
}

static bool valid_path(const char *s) {
        char norm[PATH_MAX];

        return tar_path_normalise(s, strlen(s), norm, sizeof(norm)) == 0 && strcmp(norm, s) == 0;
}

static bool parent_is_dir(const struct layer_index *ix, const char *path) {
        char parent[PATH_MAX];
        const char *slash = strrchr(path, '/');
        size_t n = slash ? (size_t)(slash - path) : 0;
        ssize_t t;

        memcpy(parent, path, n);
        parent[n] = '\0';
        t = layer_index_lookup(ix, parent);
        return t >= 0 && ix->files[t].type == TAR_DIR;
}

#define BAD(cond)                                                                                  \
        do {                                                                                       \
                if (cond) {                                                                        \
                        r = -EBADMSG;                                                              \
                        goto out_free;                                                             \
                }                                                                                  \
        } while (0)

/* Version 2's section at ZS (ZLEN bytes, all that is left of the payload). */
static int decode_zstd_section(const uint8_t *zs, uint64_t zlen, struct layer_index *ix) {
        const uint8_t *p = zs;
        uint32_t n;
        uint64_t u = 0, c = 0;

        if (zlen < ZSEC_FIXED)
                return -EBADMSG;
        memcpy(ix->seek_digest.bytes, p, DIGEST_LEN);
        p += DIGEST_LEN;
        ix->seek_size = get64(&p);
        n = get32(&p);
        if (get32(&p) != 0 || zlen != ZSEC_FIXED + (uint64_t)n * ZFRAME_REC)
                return -EBADMSG;
        ix->zframes = calloc(n ? n : 1, sizeof(*ix->zframes));
        if (!ix->zframes)
                return -ENOMEM;
        ix->nzframes = n;
        for (uint32_t i = 0; i < n; i++) {
                struct layer_zframe *f = &ix->zframes[i];
                f->ulen = get32(&p);
                f->clen = get32(&p);
                f->uoff = u;
                f->coff = c;
                u += f->ulen;
                c += f->clen;
        }
        return layer_zstd_check_frames(ix);
}

/* The payload PL (PLEN bytes) of an encoding of VERSION. Version 3 keeps its windows outside:
 * WINS (WINS_LEN bytes, the header's count) when the whole blob is at hand, NULL to load the
 * head alone (the windows are then checked one by one as they are read). */
static int decode_payload(const uint8_t *pl, size_t plen, uint32_t version, const uint8_t *wins,
                          uint64_t hdr_wins_len, struct layer_index *ix) {
        const uint8_t *p = pl, *sfiles, *sxattrs, *scps, *schunks;
        uint64_t strs_len, wins_len, need, zlen = 0;
        uint32_t nfiles, nxattrs, ncps, nchunks, nch = 0;
        uint8_t *win = NULL;
        ZSTD_DCtx *dctx = NULL;
        size_t nx = 0;
        int r = 0;

        BAD(plen < FIXED_LEN);
        ix->format = (enum layer_format)get8(&p);
        BAD(p[0] || p[1] || p[2]);
        p += 3;
        ix->span = get32(&p);
        ix->blob_size = get64(&p);
        ix->tar_size = get64(&p);
        memcpy(ix->blob_digest.bytes, p, DIGEST_LEN);
        p += DIGEST_LEN;
        memcpy(ix->diff_id.bytes, p, DIGEST_LEN);
        p += DIGEST_LEN;
        nfiles = get32(&p);
        nxattrs = get32(&p);
        ncps = get32(&p);
        nchunks = get32(&p);
        strs_len = get64(&p);
        wins_len = get64(&p);

        /* Sizes first: nothing is allocated from a count the payload cannot hold. */
        bool split = version == VERSION_SPLIT;
        BAD(strs_len > UINT32_MAX || wins_len > (split ? LAYER_INDEX_DECODED_MAX : plen));
        BAD(split && (wins_len != hdr_wins_len || ix->format != LAYER_FMT_GZIP));
        need = FIXED_LEN + (uint64_t)nfiles * FILE_REC + (uint64_t)nxattrs * XATTR_REC +
               (uint64_t)ncps * CP_REC + (uint64_t)nchunks * CHUNK_REC + strs_len +
               (split ? 0 : wins_len);
        if (version == VERSION_ZSTD) {
                BAD(need > plen);
                zlen = plen - need;
        }
        BAD(need + zlen != plen);
        BAD((ix->format == LAYER_FMT_ZSTD) != (version == VERSION_ZSTD));
        BAD(ix->format != LAYER_FMT_TAR && ix->format != LAYER_FMT_GZIP &&
            ix->format != LAYER_FMT_ESTARGZ && ix->format != LAYER_FMT_ZSTD);
        if (ix->format == LAYER_FMT_TAR)
                BAD(ncps || wins_len || ix->span || ix->blob_size != ix->tar_size ||
                    memcmp(&ix->blob_digest, &ix->diff_id, sizeof(ix->diff_id)) != 0);
        else if (ix->format == LAYER_FMT_GZIP)
                BAD(ncps == 0 || ix->span < LAYER_SPAN_MIN || ix->span > LAYER_SPAN_MAX);
        else if (ix->format == LAYER_FMT_ZSTD)
                BAD(ncps || wins_len || ix->blob_size == 0); /* frames: checked below */
        else
                BAD(ncps || wins_len || ix->span || ix->tar_size);
        BAD(nchunks && ix->format != LAYER_FMT_ESTARGZ);
        BAD(nfiles == 0 || ix->tar_size > INT64_MAX || ix->blob_size > INT64_MAX);
        sfiles = p;
        sxattrs = sfiles + (size_t)nfiles * FILE_REC;
        scps = sxattrs + (size_t)nxattrs * XATTR_REC;
        schunks = scps + (size_t)ncps * CP_REC;

        if (version == VERSION_ZSTD) {
                r = decode_zstd_section(pl + need, zlen, ix);
                if (r < 0)
                        goto out_free;
        }
        bool lazy = split && !wins;
        if (!split)
                wins = schunks + (size_t)nchunks * CHUNK_REC + strs_len;
        r = -ENOMEM;
        ix->strs = malloc(strs_len ? strs_len : 1);
        ix->wins = lazy ? NULL : malloc(wins_len ? wins_len : 1);
        ix->files = calloc(nfiles, sizeof(*ix->files));
        ix->xattrs = calloc(nxattrs ? nxattrs : 1, sizeof(*ix->xattrs));
        ix->cps = calloc(ncps ? ncps : 1, sizeof(*ix->cps));
        ix->chunks = calloc(nchunks ? nchunks : 1, sizeof(*ix->chunks));
        if (!ix->strs || (!lazy && !ix->wins) || !ix->files || !ix->xattrs || !ix->cps ||
            !ix->chunks)
                goto out_free;
        r = 0;
        ix->wins_lazy = lazy;
        memcpy(ix->strs, schunks + (size_t)nchunks * CHUNK_REC, strs_len);
        if (!lazy && wins_len)
                memcpy(ix->wins, wins, wins_len);
        ix->nchunks = nchunks;
        p = schunks;
        for (uint32_t i = 0; i < nchunks; i++) {
                struct layer_chunk *c = &ix->chunks[i];
                c->file_off = get64(&p);
                c->size = get64(&p);
                c->in = get64(&p);
                c->inner = get64(&p);
                BAD(c->size == 0 || c->size > INT64_MAX || c->file_off > INT64_MAX);
                BAD(c->in >= ix->blob_size || c->inner > INT64_MAX);
        }
        ix->strs_len = strs_len;
        ix->wins_len = wins_len;
        ix->nfiles = nfiles;
        ix->nxattrs = nxattrs;
        ix->ncps = ncps;

        p = sxattrs;
        for (uint32_t i = 0; i < nxattrs; i++) {
                uint32_t noff = get32(&p), nlen = get32(&p), voff = get32(&p), vlen = get32(&p);
                struct layer_xattr *x = &ix->xattrs[i];
                x->name = get_str(ix, noff, nlen);
                BAD(!x->name || nlen == 0 || nlen > TAR_XATTR_NAME_MAX);
                BAD(vlen > TAR_XATTR_VALUE_MAX || (uint64_t)voff + vlen > strs_len);
                x->value = (const uint8_t *)ix->strs + voff;
                x->len = vlen;
        }

        p = sfiles;
        for (uint32_t i = 0; i < nfiles; i++) {
                struct layer_file *f = &ix->files[i];
                uint32_t poff = get32(&p), plen2 = get32(&p), loff = get32(&p), llen = get32(&p);
                f->type = get8(&p);
                f->flags = get8(&p);
                BAD(get8(&p) || get8(&p));
                f->mode = get32(&p);
                f->uid = get32(&p);
                f->gid = get32(&p);
                f->devmajor = get32(&p);
                f->devminor = get32(&p);
                f->mtime_nsec = get32(&p);
                f->mtime = (int64_t)get64(&p);
                f->size = get64(&p);
                f->offset = get64(&p);
                f->xattr_first = get32(&p);
                f->nxattrs = get32(&p);
                f->chunk_first = get32(&p);
                f->nchunks = get32(&p);

                f->path = get_str(ix, poff, plen2);
                BAD(!f->path || !valid_path(f->path));
                BAD(i == 0 ? f->path[0] != '\0' || f->type != TAR_DIR
                           : layer_path_cmp(ix->files[i - 1].path, f->path) >= 0);
                BAD(f->type < TAR_REG || f->type > TAR_WHITEOUT || f->mode > 07777);
                BAD(f->flags & ~(LAYER_F_OPAQUE | LAYER_F_IMPLICIT));
                BAD((f->flags & LAYER_F_OPAQUE) && f->type != TAR_DIR);
                BAD((f->flags & LAYER_F_IMPLICIT) && f->type != TAR_DIR);
                BAD(f->mtime_nsec >= 1000000000u);
                BAD(f->type != TAR_CHR && f->type != TAR_BLK && (f->devmajor || f->devminor));
                if (f->type == TAR_SYMLINK || f->type == TAR_HARDLINK) {
                        f->link = get_str(ix, loff, llen);
                        BAD(!f->link || llen == 0 || llen >= PATH_MAX);
                } else {
                        BAD(loff || llen);
                        f->link = NULL;
                }
                if (ix->format == LAYER_FMT_ESTARGZ && f->type == TAR_REG) {
                        /* Chunks in file order, contiguous, covering exactly the size. */
                        uint64_t have = 0;
                        BAD(f->offset || f->chunk_first != (f->nchunks ? nch : 0) ||
                            f->nchunks > nchunks - nch || (f->size == 0) != (f->nchunks == 0));
                        for (uint32_t k = 0; k < f->nchunks; k++) {
                                const struct layer_chunk *c = &ix->chunks[nch + k];
                                BAD(c->file_off != have || c->size > f->size - have);
                                have += c->size;
                        }
                        BAD(have != f->size);
                        nch += f->nchunks;
                } else if (ix->format == LAYER_FMT_ESTARGZ && f->type == TAR_HARDLINK) {
                        BAD(f->offset || f->chunk_first > nchunks ||
                            f->nchunks > nchunks - f->chunk_first);
                } else if (f->type == TAR_REG || f->type == TAR_HARDLINK) {
                        BAD(f->offset > ix->tar_size || f->size > ix->tar_size - f->offset);
                        BAD(f->chunk_first || f->nchunks);
                } else {
                        BAD(f->size || f->offset || f->chunk_first || f->nchunks);
                }
                if (f->size == 0)
                        BAD(f->offset);
                BAD(f->xattr_first != nx || f->nxattrs > nxattrs - nx);
                nx += f->nxattrs;
        }
        BAD(nx != nxattrs || nch != nchunks);
        /* Relations need the whole sorted table. */
        for (uint32_t i = 1; i < nfiles; i++) {
                const struct layer_file *f = &ix->files[i];
                BAD(!parent_is_dir(ix, f->path));
                if (f->type == TAR_HARDLINK) {
                        ssize_t t = layer_index_lookup(ix, f->link);
                        const struct layer_file *tf;
                        BAD(t < 0);
                        tf = &ix->files[t];
                        BAD(tf->type == TAR_DIR || tf->type == TAR_HARDLINK ||
                            tf->type == TAR_WHITEOUT);
                        BAD(tf->size != f->size || tf->offset != f->offset ||
                            tf->chunk_first != f->chunk_first || tf->nchunks != f->nchunks);
                }
        }

        p = scps;
        win = malloc(LAYER_WINDOW);
        dctx = ZSTD_createDCtx();
        if (!win || !dctx) {
                r = -ENOMEM;
                goto out_free;
        }
        for (uint32_t i = 0; i < ncps; i++) {
                struct layer_checkpoint *c = &ix->cps[i];
                uint64_t zend;
                c->in = get64(&p);
                c->out = get64(&p);
                c->bits = get8(&p);
                BAD(p[0] || p[1] || p[2]);
                p += 3;
                c->wlen = get32(&p);
                c->zoff = get64(&p);
                c->zlen = get32(&p);
                BAD(get32(&p) != 0);
                BAD(c->bits > 7 || c->in > ix->blob_size || c->out > ix->tar_size);
                BAD(c->bits && c->in == 0);
                BAD(i == 0 ? c->out != 0 || c->zoff != 0
                           : c->in <= ix->cps[i - 1].in || c->out <= ix->cps[i - 1].out ||
                                     c->zoff != ix->cps[i - 1].zoff + ix->cps[i - 1].zlen);
                BAD(c->wlen != (c->out < LAYER_WINDOW ? c->out : LAYER_WINDOW));
                BAD((c->wlen == 0) != (c->zlen == 0));
                BAD(c->zlen > LAYER_WINDOW_ZMAX);
                zend = c->zoff + c->zlen;
                BAD(zend > wins_len);
                if (c->zlen && !lazy) {
                        unsigned long long csz =
                                ZSTD_getFrameContentSize(ix->wins + c->zoff, c->zlen);
                        size_t got;
                        BAD(csz != c->wlen);
                        BAD(ZSTD_findFrameCompressedSize(ix->wins + c->zoff, c->zlen) != c->zlen);
                        got = ZSTD_decompressDCtx(dctx, win, LAYER_WINDOW, ix->wins + c->zoff,
                                                  c->zlen);
                        BAD(ZSTD_isError(got) || got != c->wlen);
                }
                if (i + 1 == ncps)
                        BAD(zend != wins_len);
        }
        r = layer_index_link_tree(ix);

out_free:
        free(win);
        ZSTD_freeDCtx(dctx);
        return r;
}

/* The header of encoding BUF (LEN bytes, at least HDR_LEN): version, payload length and, for
 * version 3, the head frame's length and wins_len. 0, -EBADMSG, -EPROTONOSUPPORT, -EFBIG. */
static int decode_header(const uint8_t *p, size_t len, size_t max_decoded, uint32_t *ret_version,
                         uint64_t *ret_plen, uint64_t *ret_hz, uint64_t *ret_wins_len) {
        uint32_t version;
        uint64_t plen, hz = 0, wl = 0;

        if (len < HDR_LEN || memcmp(p, MAGIC, 8) != 0)
                return -EBADMSG;
        p += 8;
        version = get32(&p);
        if (version != VERSION && version != VERSION_ZSTD && version != VERSION_SPLIT)
                return -EPROTONOSUPPORT;
        if (get32(&p) != 0)
                return -EBADMSG;
        plen = get64(&p);
        if (version == VERSION_SPLIT) {
                if (len < HDR3_LEN)
                        return -EBADMSG;
                hz = get64(&p);
                wl = get64(&p);
                if (hz == 0 || hz > INT64_MAX || wl > LAYER_INDEX_DECODED_MAX)
                        return -EBADMSG;
        }
        if (plen > max_decoded)
                return -EFBIG;
        if (plen < FIXED_LEN)
                return -EBADMSG;
        *ret_version = version;
        *ret_plen = plen;
        *ret_hz = hz;
        *ret_wins_len = wl;
        return 0;
}

/* Decompresses the payload frame Z (exactly ZLEN bytes) of PLEN bytes and decodes it. */
static int decode_frame(const uint8_t *z, size_t zlen, uint64_t plen, uint32_t version,
                        const uint8_t *wins, uint64_t wins_len, struct layer_index **ret) {
        struct layer_index *ix;
        unsigned long long csz;
        uint8_t *payload;
        size_t got;
        int r;

        csz = ZSTD_getFrameContentSize(z, zlen);
        if (csz != plen || ZSTD_findFrameCompressedSize(z, zlen) != zlen)
                return -EBADMSG;
        payload = malloc(plen);
        if (!payload)
                return -ENOMEM;
        got = ZSTD_decompress(payload, plen, z, zlen);
        if (ZSTD_isError(got) || got != plen) {
                free(payload);
                return -EBADMSG;
        }
        ix = calloc(1, sizeof(*ix));
        if (!ix) {
                free(payload);
                return -ENOMEM;
        }
        r = decode_payload(payload, plen, version, wins, wins_len, ix);
        free(payload);
        if (r < 0) {
                layer_index_free(ix);
                return r;
        }
        *ret = ix;
        return 0;
}

int layer_index_decode(const void *buf, size_t len, size_t max_decoded, struct layer_index **ret) {
        const uint8_t *p = buf;
        uint64_t plen, hz, wl;
        uint32_t version;
        int r;

        if (max_decoded == 0)
                max_decoded = LAYER_INDEX_DECODED_MAX;
        r = decode_header(p, len, max_decoded, &version, &plen, &hz, &wl);
        if (r < 0)
                return r;
        if (version != VERSION_SPLIT)
                return decode_frame(p + HDR_LEN, len - HDR_LEN, plen, version, NULL, 0, ret);
        if (hz > len - HDR3_LEN || wl != len - HDR3_LEN - hz)
                return -EBADMSG;
        if (wl > max_decoded - plen) /* the windows are held too: bounded with the payload */
                return -EFBIG;
        return decode_frame(p + HDR3_LEN, (size_t)hz, plen, version, p + HDR3_LEN + hz, wl, ret);
}

int layer_index_head_len(const void *buf, size_t len, uint64_t total, uint64_t *ret) {
        uint64_t plen, hz, wl;
        uint32_t version;
        int r = decode_header(buf, len, LAYER_INDEX_DECODED_MAX, &version, &plen, &hz, &wl);

        if (r < 0)
                return r;
        if (version != VERSION_SPLIT)
                return -EPROTONOSUPPORT;
        if (total < HDR3_LEN || hz > total - HDR3_LEN || wl != total - HDR3_LEN - hz)
                return -EBADMSG;
        *ret = HDR3_LEN + hz;
        return 0;
}

int layer_index_decode_head(const void *buf, size_t len, uint64_t total, size_t max_decoded,
                            struct layer_index **ret) {
        const uint8_t *p = buf;
        uint64_t plen, hz, wl, head;
        uint32_t version;
        int r;

        if (max_decoded == 0)
                max_decoded = LAYER_INDEX_DECODED_MAX;
        r = layer_index_head_len(buf, len, total, &head);
        if (r < 0)
                return r;
        if (len < head)
                return -EBADMSG;
        r = decode_header(p, len, max_decoded, &version, &plen, &hz, &wl);
        if (r < 0)
                return r;
        r = decode_frame(p + HDR3_LEN, (size_t)hz, plen, version, NULL, wl, ret);
        if (r < 0)
                return r;
        (*ret)->wins_base = head;
        return 0;
}

int layer_index_window(const struct layer_index *ix, size_t i, const void *src, size_t len,
                       void *out) {
        const struct layer_checkpoint *c;
        size_t got;

        if (i >= ix->ncps)
                return -EINVAL;
        c = &ix->cps[i];
        if (len != c->zlen)
                return -EBADMSG;
        if (c->wlen == 0)
                return 0;
        if (ZSTD_getFrameContentSize(src, len) != c->wlen ||
            ZSTD_findFrameCompressedSize(src, len) != len)
                return -EBADMSG;
        got = ZSTD_decompress(out, LAYER_WINDOW, src, len);
        if (ZSTD_isError(got) || got != c->wlen)
                return -EBADMSG;
        return 0;
}
