/* libFuzzer target for layer/estargz.c. The first byte picks the input's form: even, the rest
 * is TOC JSON, put here in a tar and a gzip member as an eStargz writer would (so mutations
 * reach the JSON and entry checks); odd, the rest is a whole blob whose footer is parsed and
 * whose TOC member is indexed. Oracles: only documented errors, with a message; an accepted
 * index passes the decoder's own validation after encoding (the TOC path and the decoder
 * agree on what an index may be), every chunk lies before the TOC, and reads over a garbage
 * blob return an error or bytes, never a crash. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "layer/layer.h"
#include "tests/fuzz/fuzz.h"

static ssize_t garbage_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        const uint64_t *blob_size = ctx;

        if (off >= *blob_size)
                return 0;
        if (len > *blob_size - off)
                len = (size_t)(*blob_size - off);
        memset(buf, 0x1f, len);
        return (ssize_t)len;
}

/* gzip(tar("stargz.index.json" = JSON)) */
static uint8_t *toc_member(const uint8_t *json, size_t n, size_t *ret_len) {
        size_t tar_len = 512 + (n + 511) / 512 * 512 + 1024, cap = tar_len + tar_len / 8 + 256;
        uint8_t *tar = calloc(1, tar_len), *out = malloc(cap);
        unsigned sum = 0;
        z_stream zs = {0};

        CHECK(tar && out);
        snprintf((char *)tar, 100, "stargz.index.json");
        snprintf((char *)tar + 100, 8, "%07o", 0644);
        snprintf((char *)tar + 108, 8, "%07o", 0);
        snprintf((char *)tar + 116, 8, "%07o", 0);
        snprintf((char *)tar + 124, 12, "%011llo", (unsigned long long)n);
        snprintf((char *)tar + 136, 12, "%011o", 0);
        tar[156] = '0';
        memcpy(tar + 257,
               "ustar\0"
               "00",
               8);
        memset(tar + 148, ' ', 8);
        for (int i = 0; i < 512; i++)
                sum += tar[i];
        snprintf((char *)tar + 148, 8, "%06o", sum);
        if (n)
                memcpy(tar + 512, json, n);
        CHECK(deflateInit2(&zs, 1, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
        zs.next_in = tar;
        zs.avail_in = (uInt)tar_len;
        zs.next_out = out;
        zs.avail_out = (uInt)cap;
        CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
        *ret_len = cap - zs.avail_out;
        deflateEnd(&zs);
        free(tar);
        return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct layer_estargz_opts o = {.max_toc = 1u << 20, .max_files = 4096};
        struct layer_index *ix = NULL, *ix2 = NULL;
        struct layer_index_info info;
        uint8_t *member = NULL, *enc;
        const uint8_t *toc;
        uint64_t toc_off, toc_end;
        size_t toc_len, enc_len;
        char err[400];
        int e;

        if (size < 1)
                return 0;
        if (data[0] & 1) {
                size_t flen = size - 1 < LAYER_ESTARGZ_FOOTER ? size - 1 : LAYER_ESTARGZ_FOOTER;
                e = layer_estargz_footer(data + size - flen, flen, size - 1, &toc_off, &toc_end);
                CHECK(e == 0 || e == -EPROTONOSUPPORT || e == -EBADMSG);
                if (e < 0)
                        return 0;
                CHECK(toc_off < toc_end && toc_end < size - 1);
                toc = data + 1 + toc_off;
                toc_len = (size_t)(toc_end - toc_off);
                o.blob_size = size - 1;
        } else {
                member = toc_member(data + 1, size - 1, &toc_len);
                toc = member;
                toc_off = 1u << 20; /* room for the chunks a TOC may name */
                o.blob_size = toc_off + toc_len + LAYER_ESTARGZ_FOOTER;
        }
        e = layer_estargz_index(toc, toc_len, toc_off, &o, &ix, err, sizeof(err));
        CHECK(e == 0 || e == -EBADMSG || e == -EINVAL || e == -ENAMETOOLONG || e == -E2BIG ||
              e == -EOPNOTSUPP || e == -EFBIG || e == -ENOMEM);
        if (e < 0) {
                CHECK(err[0] != '\0');
                goto out;
        }
        layer_index_info(ix, &info);
        CHECK(info.format == LAYER_FMT_ESTARGZ);
        for (size_t i = 0; i < info.nchunks; i++)
                CHECK(layer_index_chunk(ix, i)->in < toc_off);
        CHECK(layer_index_encode(ix, &enc, &enc_len, NULL) == 0);
        CHECK(layer_index_decode(enc, enc_len, 0, &ix2) == 0);
        free(enc);
        {
                struct layer_reader *r = layer_reader_new(ix2, garbage_fetch, &o.blob_size);
                uint8_t buf[512];
                CHECK(r != NULL);
                for (size_t i = 0; i < info.nfiles && i < 32; i++) {
                        const struct layer_file *f = layer_index_file(ix2, i);
                        ssize_t n = layer_reader_read(r, f, f->size / 2, buf, sizeof(buf));
                        CHECK(n < 0 || (size_t)n <= sizeof(buf));
                }
                layer_reader_free(r);
        }
out:
        layer_index_free(ix);
        layer_index_free(ix2);
        free(member);
        return 0;
}
