/* libFuzzer target for layer/codec.c's decoder: an encoded layer index from an untrusted peer.
 * The first byte picks the form: even, the rest is an encoded index as a peer sends it, decoded
 * whole and, when it is a split (version 3) encoding, from its head alone; odd, the rest is a
 * version 1 payload, framed and compressed here, so that mutations reach the table's
 * validation instead of dying at the zstd checksum. Oracles: the decoder returns only its
 * documented errors; an index it accepts is canonical (it encodes back to the input's
 * payload, a version 3 encoding counted as its head's payload followed by its windows), every
 * path looks itself up, readdir from the root visits every entry exactly once, reading every
 * file through a reader whose blob is garbage returns an error or bytes, never a crash or an
 * overrun; and an index loaded from its head, its windows read from the input, reads exactly
 * what the index decoded whole reads. */
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

static uint64_t le64(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v |= (uint64_t)p[i] << (8 * i);
        return v;
}

/* The version 1 payload of encoded index ENC (the caller frees it): its payload, or for a
 * version 3 encoding its head's payload followed by its windows. */
static uint8_t *payload_of(const uint8_t *enc, size_t len, size_t *ret_len) {
        size_t hdr = len > 40 && enc[8] == 3 ? 40 : 24;
        uint64_t hz = hdr == 40 ? le64(enc + 24) : len - 24;
        uint64_t wl = hdr == 40 ? le64(enc + 32) : 0;
        unsigned long long n;
        uint8_t *p;

        CHECK(len > hdr && hz <= len - hdr && wl == len - hdr - hz);
        n = ZSTD_getFrameContentSize(enc + hdr, hz);
        CHECK(n < (1u << 30));
        p = malloc(n + wl + 1);
        CHECK(p && ZSTD_decompress(p, n, enc + hdr, hz) == n);
        if (wl)
                memcpy(p + n, enc + hdr + hz, wl);
        *ret_len = n + wl;
        return p;
}

struct mem {
        const uint8_t *p;
        size_t len;
};

static ssize_t mem_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        const struct mem *m = ctx;

        if (off >= m->len)
                return 0;
        if (len > m->len - off)
                len = (size_t)(m->len - off);
        memcpy(buf, m->p + off, len);
        return (ssize_t)len;
}

/* The head of DATA (a split encoding, SIZE bytes) alone, against FULL when the whole decoded
 * (NULL when it did not): only documented errors; when the head decodes but the whole does
 * not, a window is bad and reads may fail but never crash; when both decode, the same reads. */
static void check_head(const uint8_t *data, size_t size, const struct layer_index *full) {
        struct layer_index *hx;
        struct layer_index_info info, finfo;
        struct layer_reader *hr, *fr = NULL;
        struct mem wins = {data, size};
        uint8_t a[4096], b[4096];
        uint64_t head;
        int e = layer_index_head_len(data, size, size, &head);

        CHECK(e == 0 || e == -EBADMSG || e == -EPROTONOSUPPORT || e == -EFBIG);
        if (e < 0)
                return;
        CHECK(head <= size);
        e = layer_index_decode_head(data, (size_t)head, size, 16u << 20, &hx);
        CHECK(e == 0 || e == -EBADMSG || e == -EFBIG || e == -ENOMEM);
        CHECK(!full || e == 0 || e == -ENOMEM); /* the whole is valid: so is its head */
        if (e < 0)
                return;
        layer_index_info(hx, &info);
        CHECK(info.windows_lazy && info.windows_offset == head);
        hr = layer_reader_new(hx, garbage_fetch, &info);
        CHECK(hr != NULL);
        layer_reader_set_windows(hr, mem_fetch, &wins);
        if (full) {
                layer_index_info(full, &finfo);
                CHECK(finfo.nfiles == info.nfiles && finfo.ncheckpoints == info.ncheckpoints);
                fr = layer_reader_new(full, garbage_fetch, &finfo);
                CHECK(fr != NULL);
        }
        for (size_t i = 0; i < info.nfiles && i < 64; i++) {
                const struct layer_file *f = layer_index_file(hx, i);
                uint64_t off = f->size > 100 ? f->size - 100 : 0;
                ssize_t n = layer_reader_read(hr, f, off, a, sizeof(a));
                CHECK(n < 0 || (size_t)n <= sizeof(a));
                if (fr) {
                        ssize_t m =
                                layer_reader_read(fr, layer_index_file(full, i), off, b, sizeof(b));
                        CHECK(n == m && (n <= 0 || memcmp(a, b, (size_t)n) == 0));
                }
        }
        layer_reader_free(fr);
        layer_reader_free(hr);
        layer_index_free(hx);
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
        if (!payload_mode)
                check_head(data, size, e == 0 ? ix : NULL);
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
