/* tar+zstd layers: the pass that writes a seekable copy, and the reader that reads it.
 *
 * A zstd frame can only be decompressed from its start, and image layers are usually one
 * frame (or a few, each huge): there is nothing like gzip's block boundaries to checkpoint
 * at. So the pass, while it decompresses the layer for the tar parser, recompresses the tar
 * into independent frames of FRAME uncompressed bytes each and hands them to a sink (the
 * engine stores them as a derived blob, shared through peers like any other); a read then
 * fetches and decompresses only the frames that hold the wanted bytes. The copy ends with the
 * seek table of the zstd seekable format (a skippable frame: the sizes of every frame, then a
 * footer with the frame count and the magic 0x8F92EAB1), so it is an ordinary zstd stream of
 * the same tar for any other tool, and self-describing for tools that know the format. The
 * index carries the same table (layer_zframe), so the reader never reads the copy's tail.
 *
 * Invariants: frame I holds tar bytes [I * FRAME, min((I + 1) * FRAME, tar size)) and starts in
 * the copy where frame I - 1 ends; every frame records its content size and a checksum of its
 * content (XXH64, checked whenever the reader decompresses it); the copy's sha256 is computed
 * over exactly the bytes the sink got. The copy is deterministic for one libzstd version, level
 * and frame size: two nodes that run the pass produce the same derived blob.
 *
 * Bounds: the layer's frames may ask for any window up to 2^LAYER_ZSTD_WINDOW_LOG_MAX (zstd
 * refuses larger ones before allocating: -EBADMSG); the pass holds that window, one output
 * piece, one frame of tar and its compressed form, and zstd's compression state (a few MiB at
 * the default level); the frame table grows 24 bytes per frame, bounded by max_frames. The
 * reader keeps one decompressed frame (allocated at its first read) and zstd's decompression
 * state (about 100 KiB), and holds one compressed frame while it loads one.
 *
 * Cost: the pass decompresses the layer once and compresses it once (level 3: several hundred
 * MB/s a core, the pass's main cost); the copy is typically a few percent larger than a
 * single-frame layer at the same level (each frame starts with an empty window). A read of B
 * bytes decompresses at most B + 2 * FRAME bytes and fetches their compressed frames.
 */
#include "layer/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zstd.h>
#include <zstd_errors.h>

#define SKIPPABLE_MAGIC 0x184D2A5Eu /* the first skippable frame magic; the format uses it */
#define SEEKABLE_MAGIC 0x8F92EAB1u
#define TABLE_HDR 8u
#define TABLE_ENTRY 8u
#define TABLE_FOOTER 9u
#define FRAME_MIN_BYTES 6u /* the smallest zstd frame: magic, header byte, one empty block */

uint64_t layer_zstd_table_len(size_t nframes) {
        return TABLE_HDR + (uint64_t)nframes * TABLE_ENTRY + TABLE_FOOTER;
}

static uint64_t clen_max(uint32_t span) {
        return ZSTD_COMPRESSBOUND((uint64_t)span) + 64;
}

int layer_zstd_check_frames(const struct layer_index *ix) {
        uint64_t u = 0, c = 0;

        if (ix->span < LAYER_ZSTD_FRAME_MIN || ix->span > LAYER_ZSTD_FRAME_MAX)
                return -EBADMSG;
        if ((ix->tar_size == 0) != (ix->nzframes == 0))
                return -EBADMSG;
        if (ix->nzframes > ix->tar_size / ix->span + 1)
                return -EBADMSG;
        for (size_t i = 0; i < ix->nzframes; i++) {
                const struct layer_zframe *f = &ix->zframes[i];
                if (f->uoff != u || f->coff != c || f->ulen == 0 || f->ulen > ix->span)
                        return -EBADMSG;
                if (i + 1 < ix->nzframes && f->ulen != ix->span)
                        return -EBADMSG;
                if (f->clen < FRAME_MIN_BYTES || f->clen > clen_max(ix->span))
                        return -EBADMSG;
                u += f->ulen;
                c += f->clen;
        }
        if (u != ix->tar_size || ix->seek_size != c + layer_zstd_table_len(ix->nzframes))
                return -EBADMSG;
        return 0;
}

const struct layer_zframe *layer_zstd_frame_at(const struct layer_index *ix, uint64_t uoff) {
        size_t i;

        if (ix->nzframes == 0 || uoff >= ix->tar_size)
                return NULL;
        /* Every frame but the last is SPAN long: no search needed. */
        i = (size_t)(uoff / ix->span);
        if (i >= ix->nzframes)
                i = ix->nzframes - 1;
        return &ix->zframes[i];
}

/* ---- the pass --------------------------------------------------------------------------- */

struct layer_zpass {
        struct layer_zpass_cfg cfg;
        ZSTD_DCtx *dctx;
        ZSTD_CCtx *cctx;
        uint8_t *out; /* one piece of the layer's decompressed output */
        size_t out_cap;
        uint8_t *frame; /* the tar bytes of the frame being filled */
        size_t flen;
        uint8_t *zbuf; /* its compressed form */
        size_t zcap;
        size_t last;     /* ZSTD_decompressStream's last hint: 0 at a frame's end */
        uint64_t in_pos; /* layer bytes decompressed */
        uint64_t uoff;   /* tar bytes put into frames so far */
        EVP_MD_CTX *md;  /* sha256 of the copy */
        uint64_t seek_size;
        struct layer_zframe *frames;
        size_t nframes, cap;
        struct digest digest;
        bool done;
};

struct layer_zpass *layer_zpass_new(const struct layer_zpass_cfg *c) {
        struct layer_zpass *z = calloc(1, sizeof(*z));

        if (!z)
                return NULL;
        z->cfg = *c;
        z->dctx = ZSTD_createDCtx();
        z->cctx = ZSTD_createCCtx();
        z->out_cap = ZSTD_DStreamOutSize();
        z->out = malloc(z->out_cap);
        z->frame = malloc(c->frame);
        z->zcap = ZSTD_compressBound(c->frame);
        z->zbuf = malloc(z->zcap);
        z->md = EVP_MD_CTX_new();
        if (!z->dctx || !z->cctx || !z->out || !z->frame || !z->zbuf || !z->md ||
            EVP_DigestInit_ex(z->md, EVP_sha256(), NULL) != 1 ||
            ZSTD_isError(ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax,
                                                LAYER_ZSTD_WINDOW_LOG_MAX)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, c->level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 1))) {
                layer_zpass_free(z);
                return NULL;
        }
        return z;
}

void layer_zpass_free(struct layer_zpass *z) {
        if (!z)
                return;
        ZSTD_freeDCtx(z->dctx);
        ZSTD_freeCCtx(z->cctx);
        EVP_MD_CTX_free(z->md);
        free(z->out);
        free(z->frame);
        free(z->zbuf);
        free(z->frames);
        free(z);
}

static int sink(struct layer_builder *b, struct layer_zpass *z, const void *buf, size_t len) {
        int r;

        if (EVP_DigestUpdate(z->md, buf, len) != 1)
                return layer_builder_fail(b, -ENOMEM, "sha256 failed");
        r = z->cfg.sink(z->cfg.sink_ctx, buf, len);
        if (r < 0)
                return layer_builder_fail(b, r, "storing the seekable copy failed (%s)",
                                          strerror(-r));
        z->seek_size += len;
        return 0;
}

/* Compresses the frame being filled and hands it to the sink. */
static int emit_frame(struct layer_builder *b, struct layer_zpass *z) {
        size_t clen;
        int r;

        if (z->nframes >= z->cfg.max_frames)
                return layer_builder_fail(b, -EFBIG, "layer over %zu frames of seekable copy",
                                          z->cfg.max_frames);
        if (z->nframes == z->cap) {
                size_t ncap = z->cap ? z->cap * 2 : 64;
                struct layer_zframe *n = realloc(z->frames, ncap * sizeof(*n));
                if (!n)
                        return layer_builder_fail(b, -ENOMEM, "out of memory");
                z->frames = n;
                z->cap = ncap;
        }
        clen = ZSTD_compress2(z->cctx, z->zbuf, z->zcap, z->frame, z->flen);
        if (ZSTD_isError(clen))
                return layer_builder_fail(b, -ENOMEM, "zstd: %s", ZSTD_getErrorName(clen));
        z->frames[z->nframes++] = (struct layer_zframe){.uoff = z->uoff,
                                                        .coff = z->seek_size,
                                                        .ulen = (uint32_t)z->flen,
                                                        .clen = (uint32_t)clen};
        r = sink(b, z, z->zbuf, clen);
        if (r < 0)
                return r;
        z->uoff += z->flen;
        z->flen = 0;
        return 0;
}

static int to_frames(struct layer_builder *b, struct layer_zpass *z, const uint8_t *p, size_t n) {
        while (n > 0) {
                size_t k = z->cfg.frame - z->flen;
                if (k > n)
                        k = n;
                memcpy(z->frame + z->flen, p, k);
                z->flen += k;
                p += k;
                n -= k;
                if (z->flen == z->cfg.frame) {
                        int r = emit_frame(b, z);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

int layer_zpass_feed(struct layer_builder *b, struct layer_zpass *z, const uint8_t *buf,
                     size_t len) {
        ZSTD_inBuffer in = {buf, len, 0};
        bool full = false;

        /* Until the input is used up and zstd has nothing left to flush (a full output piece
         * may mean more is waiting). */
        while (in.pos < in.size || full) {
                ZSTD_outBuffer out = {z->out, z->out_cap, 0};
                size_t before = in.pos, ret;
                int r;

                ret = ZSTD_decompressStream(z->dctx, &out, &in);
                z->in_pos += in.pos - before;
                if (ZSTD_isError(ret)) {
                        if (ZSTD_getErrorCode(ret) == ZSTD_error_frameParameter_windowTooLarge)
                                return layer_builder_fail(
                                        b, -EBADMSG,
                                        "zstd frame at blob offset %llu wants a window over %u "
                                        "MiB: refused (recompress with a smaller --long)",
                                        (unsigned long long)z->in_pos,
                                        (1u << LAYER_ZSTD_WINDOW_LOG_MAX) >> 20);
                        return layer_builder_fail(
                                b, -EBADMSG, "corrupt zstd stream near blob offset %llu: %s",
                                (unsigned long long)z->in_pos, ZSTD_getErrorName(ret));
                }
                z->last = ret;
                full = out.pos == out.size;
                if (out.pos == 0 && in.pos == before && in.pos < in.size)
                        return layer_builder_fail(b, -EBADMSG,
                                                  "zstd made no progress at blob offset %llu",
                                                  (unsigned long long)z->in_pos);
                if (out.pos) {
                        r = layer_builder_tar_out(b, z->out, out.pos);
                        if (r < 0)
                                return r;
                        r = to_frames(b, z, z->out, out.pos);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static void put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

int layer_zpass_finish(struct layer_builder *b, struct layer_zpass *z) {
        uint8_t piece[4096];
        size_t n = 0;
        unsigned len;
        int r;

        /* ZSTD_decompressStream answers 0 only when a frame has ended and all of it was
         * flushed: anything else is a layer cut short. */
        if (z->last != 0 || z->in_pos == 0)
                return layer_builder_fail(b, -EBADMSG,
                                          "truncated zstd stream after %llu blob bytes",
                                          (unsigned long long)z->in_pos);
        if (z->flen) {
                r = emit_frame(b, z);
                if (r < 0)
                        return r;
        }
        if (z->nframes > UINT32_MAX)
                return layer_builder_fail(b, -EFBIG, "too many frames for a seek table");
        /* The seek table, in pieces: header, one entry per frame, footer. */
        put32(piece, SKIPPABLE_MAGIC);
        put32(piece + 4, (uint32_t)(layer_zstd_table_len(z->nframes) - TABLE_HDR));
        n = TABLE_HDR;
        for (size_t i = 0; i <= z->nframes; i++) {
                if (n + TABLE_ENTRY + TABLE_FOOTER > sizeof(piece)) {
                        r = sink(b, z, piece, n);
                        if (r < 0)
                                return r;
                        n = 0;
                }
                if (i == z->nframes) {
                        put32(piece + n, (uint32_t)z->nframes);
                        piece[n + 4] = 0; /* descriptor: no per-entry checksums */
                        put32(piece + n + 5, SEEKABLE_MAGIC);
                        n += TABLE_FOOTER;
                } else {
                        put32(piece + n, z->frames[i].clen);
                        put32(piece + n + 4, z->frames[i].ulen);
                        n += TABLE_ENTRY;
                }
        }
        r = sink(b, z, piece, n);
        if (r < 0)
                return r;
        if (EVP_DigestFinal_ex(z->md, z->digest.bytes, &len) != 1)
                return layer_builder_fail(b, -ENOMEM, "sha256 failed");
        z->done = true;
        return 0;
}

void layer_zpass_take(struct layer_zpass *z, struct layer_index *ix) {
        ix->span = z->cfg.frame;
        ix->zframes = z->frames;
        ix->nzframes = z->nframes;
        ix->seek_digest = z->digest;
        ix->seek_size = z->seek_size;
        z->frames = NULL;
        z->nframes = z->cap = 0;
}

/* ---- the reader ------------------------------------------------------------------------- */

struct layer_zreader {
        const struct layer_index *ix;
        ZSTD_DCtx *dctx;
        uint8_t *ubuf; /* the frame CUR decompressed (SPAN bytes) */
        size_t cur;
        bool have;
};

struct layer_zreader *layer_zreader_new(const struct layer_index *ix) {
        struct layer_zreader *z = calloc(1, sizeof(*z));

        if (!z)
                return NULL;
        z->ix = ix;
        z->dctx = ZSTD_createDCtx();
        if (!z->dctx) {
                free(z);
                return NULL;
        }
        return z;
}

void layer_zreader_free(struct layer_zreader *z) {
        if (!z)
                return;
        ZSTD_freeDCtx(z->dctx);
        free(z->ubuf);
        free(z);
}

/* Fetches and decompresses frame I into UBUF. The compressed frame is held only meanwhile:
 * readers are kept per worker and layer, and what they keep is one frame of tar. */
static int load_frame(struct layer_zreader *z, layer_fetch_fn fetch, void *ctx, uint64_t *fetched,
                      size_t i) {
        const struct layer_zframe *f = &z->ix->zframes[i];
        uint8_t *cbuf;
        size_t got = 0, n;
        int e = 0;

        if (!z->ubuf) {
                z->ubuf = malloc(z->ix->span);
                if (!z->ubuf)
                        return -ENOMEM;
        }
        z->have = false;
        cbuf = malloc(f->clen);
        if (!cbuf)
                return -ENOMEM;
        while (got < f->clen) {
                ssize_t k = fetch(ctx, f->coff + got, cbuf + got, f->clen - got);
                if (k < 0) {
                        e = (int)k;
                        goto out_free;
                }
                if (k == 0 || (size_t)k > f->clen - got) {
                        e = -EBADMSG; /* the copy is shorter than its index says */
                        goto out_free;
                }
                *fetched += (uint64_t)k;
                got += (size_t)k;
        }
        /* One whole frame, of the size the index says; then its own checksum. */
        e = -EBADMSG;
        if (ZSTD_getFrameContentSize(cbuf, f->clen) != f->ulen ||
            ZSTD_findFrameCompressedSize(cbuf, f->clen) != f->clen)
                goto out_free;
        n = ZSTD_decompressDCtx(z->dctx, z->ubuf, f->ulen, cbuf, f->clen);
        if (ZSTD_isError(n) || n != f->ulen)
                goto out_free;
        z->cur = i;
        z->have = true;
        e = 0;
out_free:
        free(cbuf);
        return e;
}

ssize_t layer_zreader_read(struct layer_zreader *z, layer_fetch_fn fetch, void *ctx,
                           uint64_t *fetched, uint64_t uoff, uint8_t *buf, size_t len) {
        const struct layer_index *ix = z->ix;
        size_t done = 0;

        if (uoff > ix->tar_size || len > ix->tar_size - uoff)
                return -EBADMSG;
        while (done < len) {
                const struct layer_zframe *f = layer_zstd_frame_at(ix, uoff + done);
                size_t i, at, n;
                int e;

                if (!f)
                        return -EBADMSG;
                i = (size_t)(f - ix->zframes);
                if (!z->have || z->cur != i) {
                        e = load_frame(z, fetch, ctx, fetched, i);
                        if (e < 0)
                                return e;
                }
                at = (size_t)(uoff + done - f->uoff);
                n = f->ulen - at;
                if (n > len - done)
                        n = len - done;
                memcpy(buf + done, z->ubuf + at, n);
                done += n;
        }
        return (ssize_t)done;
}
