/* libFuzzer target for tar+zstd layers (layer/zstd.c): the pass that writes the seekable copy,
 * the zstd section of the encoded index, and the reader of the copy.
 *
 * The first byte picks a mode:
 *  0: the rest is the layer blob itself (anything: garbage, truncated or hostile zstd);
 *  1: the rest is a tar, zstd-compressed here (level, frames and a skippable frame picked by
 *     the byte's high bits) so fuzzed tars reach the copy logic. Oracles: the pass succeeds
 *     or fails with a message; a built index encodes, decodes and re-encodes to the same
 *     bytes; the copy decompresses (plain libzstd) to the tar; every regular file read through
 *     the copy equals the tar's bytes; then with one byte of the copy flipped (where the byte
 *     says) reads return the right bytes or -EBADMSG, never anything else or a crash;
 *  2: the rest is an encoded index's payload (the uncompressed bytes after the header),
 *     wrapped here in a version 2 header and zstd frame so the decoder's checks, not zstd, are
 *     what is fuzzed; an index that decodes is read through a copy made of the same bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "layer/layer.h"
#include "tests/fuzz/fuzz.h"

struct mem {
        uint8_t *p;
        size_t len, cap;
};

static int mem_sink(void *ctx, const void *buf, size_t len) {
        struct mem *m = ctx;

        if (m->len + len > m->cap) {
                size_t cap = (m->len + len) * 2;
                uint8_t *p = realloc(m->p, cap);
                if (!p)
                        return -ENOMEM;
                m->p = p;
                m->cap = cap;
        }
        memcpy(m->p + m->len, buf, len);
        m->len += len;
        return 0;
}

static ssize_t mem_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        const struct mem *m = ctx;

        if (off >= m->len)
                return 0;
        if (len > m->len - off)
                len = (size_t)(m->len - off);
        memcpy(buf, m->p + off, len);
        return (ssize_t)len;
}

/* IN compressed as FRAMES frames at LEVEL, a skippable frame after the first when SKIP. */
static uint8_t *zstd_it(const uint8_t *in, size_t len, int level, int frames, int skip,
                        size_t *ret_len) {
        static const uint8_t sk[] = {0x5e, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 7, 7};
        size_t piece = len / (size_t)frames + 1;
        size_t cap = ZSTD_compressBound(len) + (size_t)frames * 32 + sizeof(sk), n = 0;
        uint8_t *out = malloc(cap);

        if (!out)
                return NULL;
        for (size_t off = 0; off < len || (off == 0 && len == 0); off += piece) {
                size_t k = len - off < piece ? len - off : piece;
                size_t z = ZSTD_compress(out + n, cap - n, in + off, k, level);
                CHECK(!ZSTD_isError(z));
                n += z;
                if (skip && off == 0) {
                        memcpy(out + n, sk, sizeof(sk));
                        n += sizeof(sk);
                }
                if (len == 0)
                        break;
        }
        *ret_len = n;
        return out;
}

static struct layer_index *run_pass(const uint8_t *blob, size_t len, struct mem *copy) {
        struct layer_build_opts o = {.max_bytes = 64u << 20, .sink = mem_sink, .sink_ctx = copy};
        struct layer_builder *b = layer_builder_new(&o);
        struct layer_index *ix = NULL;
        int e;

        CHECK(b != NULL);
        /* in two pieces, so feed boundaries fall inside frames */
        e = layer_builder_feed(b, blob, len / 2);
        if (e == 0)
                e = layer_builder_feed(b, blob + len / 2, len - len / 2);
        if (e == 0)
                e = layer_builder_finish(b, &ix);
        if (e < 0)
                CHECK(layer_builder_error(b)[0] != '\0');
        layer_builder_free(b);
        return e < 0 ? NULL : ix;
}

/* Reads every regular file; with TAR, checks the bytes (STRICT: exactly; else right bytes or
 * -EBADMSG). */
static void read_all(const struct layer_index *ix, const struct mem *copy, const uint8_t *tar,
                     bool strict) {
        struct layer_reader *r = layer_reader_new(ix, mem_fetch, (void *)copy);

        CHECK(r != NULL);
        for (size_t i = 0; i < layer_index_nfiles(ix); i++) {
                const struct layer_file *f = layer_index_file(ix, i);
                uint8_t *got;
                ssize_t n;
                if (f->type != TAR_REG && f->type != TAR_HARDLINK)
                        continue;
                got = malloc(f->size + 1);
                CHECK(got != NULL);
                n = layer_reader_read(r, f, 0, got, f->size);
                if (strict)
                        CHECK(n == (ssize_t)f->size);
                if (tar && n >= 0) {
                        CHECK(n == (ssize_t)f->size);
                        CHECK(memcmp(got, tar + f->offset, f->size) == 0);
                } else if (n < 0) {
                        CHECK(n == -EBADMSG);
                }
                if (f->size > 2) {
                        n = layer_reader_read(r, f, f->size / 2, got, 2);
                        if (tar && n >= 0)
                                CHECK(n == 2 && memcmp(got, tar + f->offset + f->size / 2, 2) == 0);
                }
                free(got);
        }
        layer_reader_free(r);
}

static void mode_tar(const uint8_t *data, size_t size) {
        struct mem copy = {0};
        struct layer_index *ix, *ix2 = NULL;
        struct layer_index_info info;
        uint8_t *blob, *enc, *enc2, *tar;
        size_t blob_len, enc_len, enc2_len, n;

        blob = zstd_it(data + 1, size - 1, 1 + (data[0] >> 6), 1 + ((data[0] >> 3) & 3),
                       data[0] & 4, &blob_len);
        if (!blob)
                return;
        ix = run_pass(blob, blob_len, &copy);
        free(blob);
        if (!ix)
                goto out;
        layer_index_info(ix, &info);
        CHECK(info.format == LAYER_FMT_ZSTD && info.tar_size == size - 1);
        CHECK(info.data_size == copy.len);
        CHECK(layer_index_encode(ix, &enc, &enc_len, NULL) == 0);
        CHECK(layer_index_decode(enc, enc_len, 0, &ix2) == 0);
        CHECK(layer_index_encode(ix2, &enc2, &enc2_len, NULL) == 0);
        CHECK(enc_len == enc2_len && memcmp(enc, enc2, enc_len) == 0);
        free(enc);
        free(enc2);
        tar = malloc(size);
        CHECK(tar != NULL);
        n = ZSTD_decompress(tar, size, copy.p, copy.len);
        CHECK(!ZSTD_isError(n) && n == size - 1);
        CHECK(memcmp(tar, data + 1, n) == 0);
        read_all(ix2, &copy, tar, true);
        copy.p[(size_t)data[size - 1] * 7 % copy.len] ^= (uint8_t)(data[0] | 1);
        read_all(ix2, &copy, tar, false);
        free(tar);
out:
        layer_index_free(ix);
        layer_index_free(ix2);
        free(copy.p);
}

static void put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void mode_payload(const uint8_t *data, size_t size) {
        size_t plen = size - 1, bound = ZSTD_compressBound(plen), z;
        uint8_t *enc = malloc(24 + bound);
        struct layer_index *ix = NULL;
        struct mem copy = {(uint8_t *)data + 1, plen, plen};

        CHECK(enc != NULL);
        memcpy(enc, "P2PLIDX\n", 8);
        put32(enc + 8, 2);
        put32(enc + 12, 0);
        put32(enc + 16, (uint32_t)plen);
        put32(enc + 20, 0);
        z = ZSTD_compress(enc + 24, bound, data + 1, plen, 1);
        CHECK(!ZSTD_isError(z));
        if (layer_index_decode(enc, 24 + z, 0, &ix) == 0) {
                read_all(ix, &copy, NULL, false);
                layer_index_free(ix);
        }
        free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        if (data[0] == 0) {
                struct mem copy = {0};
                struct layer_index *ix = run_pass(data + 1, size - 1, &copy);
                if (ix)
                        read_all(ix, &copy, NULL, true);
                layer_index_free(ix);
                free(copy.p);
        } else if (data[0] == 2) {
                mode_payload(data, size);
        } else {
                mode_tar(data, size);
        }
        return 0;
}
