/* libFuzzer target for the pass and the checkpoint reader (layer/index.c, layer/reader.c).
 * The first byte picks a mode: 0 feeds the rest as the blob itself (any format); otherwise
 * the rest is treated as a tar and gzipped here with small deflate blocks and the level,
 * flushes and number of members the byte picks, so that fuzzed tars always reach the
 * checkpoint logic. Oracles: an index that builds encodes and decodes; its tar size and
 * diff_id are those of the inflated blob; and every regular file read through the
 * checkpoints (whole, and from the middle) equals the bytes at its offset in the tar. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "layer/layer.h"
#include "tests/fuzz/fuzz.h"

struct blob {
        const uint8_t *p;
        size_t len;
};

static ssize_t mem_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        const struct blob *b = ctx;

        if (off >= b->len)
                return 0;
        if (len > b->len - off)
                len = (size_t)(b->len - off);
        memcpy(buf, b->p + off, len);
        return (ssize_t)len;
}

/* gzip IN in MEMBERS members with a full flush every FLUSH bytes (many small blocks). */
static uint8_t *gzip_it(const uint8_t *in, size_t len, int level, size_t flush, int members,
                        size_t *ret_len) {
        size_t cap = len * 2 + 1024 * (size_t)members + 64 * (len / flush + 1), out_len = 0;
        size_t piece = len / (size_t)members + 1;
        uint8_t *out = malloc(cap);

        if (!out)
                return NULL;
        for (size_t off = 0; off < len || (off == 0 && len == 0); off += piece) {
                z_stream zs = {0};
                size_t end = off + piece < len ? off + piece : len;
                CHECK(deflateInit2(&zs, level, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
                zs.next_out = out + out_len;
                zs.avail_out = (uInt)(cap - out_len);
                for (size_t p = off; p < end; p += flush) {
                        size_t n = end - p < flush ? end - p : flush;
                        zs.next_in = (Bytef *)in + p;
                        zs.avail_in = (uInt)n;
                        CHECK(deflate(&zs, Z_FULL_FLUSH) == Z_OK);
                }
                CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
                out_len = cap - zs.avail_out;
                deflateEnd(&zs);
                if (len == 0)
                        break;
        }
        *ret_len = out_len;
        return out;
}

/* The whole tar, by zlib alone (all members). */
static uint8_t *inflate_all(const uint8_t *in, size_t len, size_t *ret_len) {
        size_t cap = 1 << 16, out_len = 0;
        uint8_t *out = malloc(cap);
        z_stream zs = {0};
        int zr = Z_OK;

        CHECK(out && inflateInit2(&zs, 16 + 15) == Z_OK);
        zs.next_in = (Bytef *)in;
        zs.avail_in = (uInt)len;
        while (zs.avail_in > 0 || zr != Z_STREAM_END) {
                if (zr == Z_STREAM_END)
                        CHECK(inflateReset(&zs) == Z_OK);
                if (out_len == cap) {
                        cap *= 2;
                        out = realloc(out, cap);
                        CHECK(out != NULL);
                }
                zs.next_out = out + out_len;
                zs.avail_out = (uInt)(cap - out_len);
                zr = inflate(&zs, Z_NO_FLUSH);
                out_len = cap - zs.avail_out;
                CHECK(zr == Z_OK || zr == Z_STREAM_END);
                if (zr == Z_STREAM_END && zs.avail_in == 0)
                        break;
        }
        inflateEnd(&zs);
        *ret_len = out_len;
        return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct layer_build_opts o = {.span = LAYER_SPAN_MIN, .max_bytes = 64u << 20};
        struct layer_builder *b;
        struct layer_index *ix = NULL, *ix2 = NULL;
        struct layer_index_info info;
        struct layer_reader *r;
        struct blob blob;
        uint8_t *gz = NULL, *tar = NULL, *enc;
        size_t gz_len = 0, tar_len = 0, enc_len;
        int e;

        if (size < 1)
                return 0;
        if (data[0] == 0) {
                blob = (struct blob){data + 1, size - 1};
        } else {
                gz = gzip_it(data + 1, size - 1, data[0] % 10, 64 + (data[0] >> 4) * 61,
                             1 + (data[0] & 3), &gz_len);
                if (!gz)
                        return 0;
                blob = (struct blob){gz, gz_len};
        }
        b = layer_builder_new(&o);
        CHECK(b != NULL);
        e = layer_builder_feed(b, blob.p, blob.len);
        if (e == 0)
                e = layer_builder_finish(b, &ix);
        if (e < 0)
                CHECK(layer_builder_error(b)[0] != '\0');
        layer_builder_free(b);
        if (e < 0)
                goto out;

        layer_index_info(ix, &info);
        CHECK(layer_index_encode(ix, &enc, &enc_len, NULL) == 0);
        CHECK(layer_index_decode(enc, enc_len, 0, &ix2) == 0);
        free(enc);
        if (info.format == LAYER_FMT_GZIP) {
                tar = inflate_all(blob.p, blob.len, &tar_len);
                CHECK(tar_len == info.tar_size);
        } else {
                CHECK(info.format == LAYER_FMT_TAR && info.tar_size == blob.len);
        }
        r = layer_reader_new(ix2, mem_fetch, &blob);
        CHECK(r != NULL);
        for (size_t i = 0; i < layer_index_nfiles(ix2); i++) {
                const struct layer_file *f = layer_index_file(ix2, i);
                const uint8_t *want;
                uint8_t *got;
                if (f->type != TAR_REG && f->type != TAR_HARDLINK)
                        continue;
                want = (tar ? tar : blob.p) + f->offset;
                got = malloc(f->size + 1);
                CHECK(got != NULL);
                CHECK(layer_reader_read(r, f, 0, got, f->size) == (ssize_t)f->size);
                CHECK(memcmp(got, want, f->size) == 0);
                if (f->size > 2) {
                        CHECK(layer_reader_read(r, f, f->size / 2, got, 2) == 2);
                        CHECK(memcmp(got, want + f->size / 2, 2) == 0);
                }
                free(got);
        }
        layer_reader_free(r);
out:
        layer_index_free(ix);
        layer_index_free(ix2);
        free(tar);
        free(gz);
        return 0;
}
