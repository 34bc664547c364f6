/* The pass over a layer's bytes, and its end (layer_builder_finish).
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
 * zstd: the layer is decompressed and its tar re-cut into a seekable copy by layer/zstd.c,
 * which calls back into the tar half here (layer_builder_tar_out); see that file.
 *
 * Memory: one 32 KiB inflate window and the last one's linear copy; the tar parser's bounds;
 * the windows count against max_bytes with the table.
 */
#include "layer/index_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_ZSTD_LEVEL 3

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
                if (layer_grow((void **)&b->wins, &b->wins_cap, b->wins_len + bound, 1) < 0)
                        return bfail(b, -ENOMEM, "out of memory");
                zlen = ZSTD_compress2(b->cctx, b->wins + b->wins_len, bound, b->lin, wlen);
                if (ZSTD_isError(zlen))
                        return bfail(b, -ENOMEM, "zstd: %s", ZSTD_getErrorName(zlen));
        }
        if (layer_grow((void **)&b->cps, &b->cps_cap, b->ncps + 1, sizeof(*b->cps)) < 0)
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

/* The format from the head held so far, then the head's bytes passed on as the first of the
 * blob. 0, -EAGAIN (too few bytes to tell; nothing done) or -errno (the builder's error set). */
static int start_from_head(struct layer_builder *b) {
        int r = layer_detect_format(b->head, b->head_len);

        if (r == -EAGAIN)
                return r;
        r = start_format(b, r);
        if (r < 0)
                return r;
        return blob_bytes(b, b->head, b->head_len);
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
                r = start_from_head(b);
                if (r == -EAGAIN)
                        return 0;
                if (r < 0)
                        return r;
        }
        return blob_bytes(b, p, len);
}

int layer_builder_finish(struct layer_builder *b, struct layer_index **ret) {
        struct layer_index *ix;
        struct digest blob, tar;
        unsigned len;
        int r;

        if (b->err)
                return b->err;
        if (b->fmt == 0) {
                r = start_from_head(b);
                if (r == -EAGAIN)
                        return bfail(b, -EBADMSG, "blob of %zu bytes is too short to be a layer",
                                     b->head_len);
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
        r = layer_builder_finish_table(b);
        if (r < 0)
                return r;
        ix = layer_builder_index(b, &blob, &tar);
        if (!ix)
                return b->err;
        *ret = ix;
        b->err = -EALREADY; /* one index per builder */
        snprintf(b->errmsg, sizeof(b->errmsg), "the builder has finished");
        return 0;
}
