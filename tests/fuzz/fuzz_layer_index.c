/* libFuzzer target for layer/codec.c's decoder: an encoded layer index from an untrusted peer.
 * The first byte picks the form: even, the rest is an encoded index as a peer sends it; odd,
 * the rest is the payload, framed and compressed here, so that mutations reach the table's
 * validation instead of dying at the zstd checksum. Oracles: the decoder returns only its
 * documented errors; an index it accepts is canonical (it encodes back to the input's
 * payload), every path looks itself up, readdir from the root
 * visits every entry exactly once, and reading every file through a reader whose blob is
 * garbage returns an error or bytes, never a crash or an overrun. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "layer/layer.h"
#include "tests/fuzz/fuzz.h"

static ssize_t garbage_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        const struct layer_index_info *info = ctx;

        if (off >= info->blob_size)
                return 0;
        if (len > info->blob_size - off)
                len = (size_t)(info->blob_size - off);
        memset(buf, (int)(off * 131 % 251), len);
        return (ssize_t)len;
}

static size_t walk(const struct layer_index *ix, size_t dir, unsigned depth) {
        size_t n = 1;

        CHECK(depth < 4096);
        for (ssize_t c = layer_index_next_child(ix, dir, dir); c >= 0;
             c = layer_index_next_child(ix, dir, (size_t)c))
                n += walk(ix, (size_t)c, depth + 1);
        return n;
}

/* The payload of encoded index ENC (the caller frees it). */
static uint8_t *payload_of(const uint8_t *enc, size_t len, size_t *ret_len) {
        unsigned long long n = ZSTD_getFrameContentSize(enc + 24, len - 24);
        uint8_t *p;

        CHECK(len > 24 && n < (1u << 30));
        p = malloc(n ? n : 1);
        CHECK(p && ZSTD_decompress(p, n, enc + 24, len - 24) == n);
        *ret_len = n;
        return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct layer_index *ix;
        struct layer_index_info info;
        struct layer_reader *r;
        uint8_t *enc, *framed = NULL, buf[4096];
        size_t len, flen = 0;
        bool payload_mode;
        int e;

        if (size < 1)
                return 0;
        payload_mode = data[0] & 1;
        data++;
        size--;
        if (payload_mode) {
                size_t bound = ZSTD_compressBound(size), z;
                framed = malloc(24 + bound);
                CHECK(framed != NULL);
                memcpy(framed, "P2PLIDX\n\1\0\0\0\0\0\0\0", 16);
                for (int i = 0; i < 8; i++)
                        framed[16 + i] = (uint8_t)((uint64_t)size >> (8 * i));
                z = ZSTD_compress(framed + 24, bound, data, size, 1);
                CHECK(!ZSTD_isError(z));
                flen = 24 + z;
                e = layer_index_decode(framed, flen, 16u << 20, &ix);
        } else {
                e = layer_index_decode(data, size, 16u << 20, &ix);
        }
        free(framed);
        CHECK(e == 0 || e == -EBADMSG || e == -EPROTONOSUPPORT || e == -EFBIG || e == -ENOMEM);
        if (e < 0)
                return 0;
        /* canonical: what was accepted is exactly what encoding the index gives */
        CHECK(layer_index_encode(ix, &enc, &len, NULL) == 0);
        if (payload_mode) {
                size_t plen;
                uint8_t *pl = payload_of(enc, len, &plen);
                CHECK(plen == size && memcmp(pl, data, size) == 0);
                free(pl);
        } else {
                /* The same payload; the zstd frame around it may differ (a frame without a
                 * checksum, other block splits: the digest names the bytes received). */
                size_t plen, qlen;
                uint8_t *pl = payload_of(enc, len, &plen), *ql = payload_of(data, size, &qlen);
                CHECK(plen == qlen && memcmp(pl, ql, plen) == 0);
                free(pl);
                free(ql);
        }
        free(enc);

        layer_index_info(ix, &info);
        CHECK(info.nfiles >= 1 && layer_index_file(ix, 0)->path[0] == '\0');
        CHECK(walk(ix, 0, 0) == info.nfiles);
        r = layer_reader_new(ix, garbage_fetch, &info);
        CHECK(r != NULL);
        for (size_t i = 0; i < info.nfiles && i < 64; i++) {
                const struct layer_file *f = layer_index_file(ix, i);
                ssize_t n;
                CHECK(layer_index_lookup(ix, f->path) == (ssize_t)i);
                for (uint32_t j = 0; j < f->nxattrs; j++)
                        CHECK(layer_index_xattr(ix, f->xattr_first + j) != NULL);
                n = layer_reader_read(r, f, f->size > 100 ? f->size - 100 : 0, buf, sizeof(buf));
                CHECK(n < 0 || (size_t)n <= sizeof(buf));
        }
        layer_reader_free(r);
        layer_index_free(ix);
        return 0;
}
