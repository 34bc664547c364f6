/* Unit tests for layer/zstd.c: the pass over tar+zstd layers (python3's tarfile writes the tar,
 * tests/unit/layer_gen.py; libzstd compresses it here in the shapes layers come in: one frame,
 * several frames with a skippable frame between, a long window), the seekable copy it writes
 * (a valid zstd stream of the same tar, ending in a seek table), every file read back through
 * the copy's frames, reads across every frame boundary, the encoded index, and the refusals
 * (no sink, a failing sink, wrong diff_id, truncation, garbage, a window over the bound, a
 * damaged copy, hostile frame tables). */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_getFrameHeader: to check what the test made */
#include <zstd.h>

#include "layer/internal.h"
#include "util/digest.h"

struct buf {
        uint8_t *p;
        size_t len, cap;
};

struct mline {
        char type;
        char path[PATH_MAX];
        uint64_t size;
        char sha[65];
};

struct fixture {
        struct buf tar;
        struct mline *m;
        size_t nm;
};

static struct fixture pax_fx, gnu_fx;

static void buf_add(struct buf *b, const void *p, size_t n) {
        if (b->len + n > b->cap) {
                b->cap = (b->len + n) * 2;
                b->p = realloc(b->p, b->cap);
                assert_non_null(b->p);
        }
        memcpy(b->p + b->len, p, n);
        b->len += n;
}

static struct buf read_file(const char *path) {
        struct buf b = {0};
        FILE *f = fopen(path, "rb");
        struct stat st;

        assert_non_null(f);
        assert_int_equal(fstat(fileno(f), &st), 0);
        b.len = b.cap = (size_t)st.st_size;
        b.p = malloc(b.len ? b.len : 1);
        assert_non_null(b.p);
        assert_int_equal(fread(b.p, 1, b.len, f), b.len);
        fclose(f);
        return b;
}

static void load_fixture(struct fixture *fx, const char *fmt) {
        char dir[] = "/tmp/test_layer_zstd_XXXXXX", cmd[1024], tarp[256], manp[256],
             line[3 * PATH_MAX];
        FILE *f;

        assert_non_null(mkdtemp(dir));
        snprintf(tarp, sizeof(tarp), "%s/layer.tar", dir);
        snprintf(manp, sizeof(manp), "%s/manifest", dir);
        snprintf(cmd, sizeof(cmd), "python3 tests/unit/layer_gen.py %s %s %s", fmt, tarp, manp);
        if (system(cmd) != 0)
                fail_msg("%s failed (run the tests from the repository root)", cmd);
        fx->tar = read_file(tarp);
        f = fopen(manp, "r");
        assert_non_null(f);
        fx->m = calloc(256, sizeof(*fx->m));
        while (fgets(line, sizeof(line), f)) {
                struct mline *m = &fx->m[fx->nm++];
                char *fields[4], *s = line;
                assert_true(fx->nm < 256);
                for (int i = 0; i < 4; i++) {
                        fields[i] = s;
                        s = strchr(s, '\t');
                        assert_non_null(s);
                        *s++ = '\0';
                }
                m->type = fields[0][0];
                snprintf(m->path, sizeof(m->path), "%s", fields[1]);
                m->size = strtoull(fields[2], NULL, 10);
                snprintf(m->sha, sizeof(m->sha), "%s", fields[3]);
        }
        fclose(f);
        unlink(tarp);
        unlink(manp);
        rmdir(dir);
}

static int setup(void **state) {
        (void)state;
        load_fixture(&pax_fx, "pax");
        load_fixture(&gnu_fx, "gnu");
        return 0;
}

static int teardown(void **state) {
        (void)state;
        free(pax_fx.tar.p);
        free(pax_fx.m);
        free(gnu_fx.tar.p);
        free(gnu_fx.m);
        return 0;
}

/* IN as a zstd layer: FRAMES frames (the last takes the rest), with a skippable frame after
 * the first when SKIP; WINDOW_LOG, when not 0, forces that window (streaming, no content
 * size, so the frame header carries the window). */
static struct buf zstd_layer(const struct buf *in, int frames, bool skip, int window_log) {
        struct buf out = {0};
        size_t piece = in->len / (size_t)frames + 1;
        ZSTD_CCtx *c = ZSTD_createCCtx();
        uint8_t *tmp = malloc(ZSTD_compressBound(piece) + 64);

        assert_non_null(c);
        assert_non_null(tmp);
        /* As the zstd tool writes them: with a checksum of the content. */
        assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3)));
        assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)));
        if (window_log) {
                assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log)));
                assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)));
        }
        for (size_t off = 0; off < in->len; off += piece) {
                size_t n = in->len - off < piece ? in->len - off : piece;
                if (window_log) {
                        /* Input first, the end after: zstd then cannot size the window
                         * down to the input. */
                        ZSTD_inBuffer ib = {in->p + off, n, 0}, none = {NULL, 0, 0};
                        ZSTD_outBuffer ob = {tmp, ZSTD_compressBound(piece) + 64, 0};
                        size_t left;
                        while (ib.pos < ib.size)
                                assert_false(ZSTD_isError(
                                        ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_continue)));
                        do
                                left = ZSTD_compressStream2(c, &ob, &none, ZSTD_e_end);
                        while (left > 0 && !ZSTD_isError(left));
                        assert_false(ZSTD_isError(left));
                        buf_add(&out, tmp, ob.pos);
                } else {
                        size_t z = ZSTD_compress2(c, tmp, ZSTD_compressBound(piece) + 64,
                                                  in->p + off, n);
                        assert_false(ZSTD_isError(z));
                        buf_add(&out, tmp, z);
                }
                if (skip && off == 0) {
                        static const uint8_t sk[] = {0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3};
                        buf_add(&out, sk, sizeof(sk));
                }
        }
        ZSTD_freeCCtx(c);
        free(tmp);
        return out;
}

struct sink {
        struct buf copy;
        int fail_after; /* calls before it answers -ENOSPC; 0: never */
        int calls;
};

static int mem_sink(void *ctx, const void *buf, size_t len) {
        struct sink *s = ctx;

        assert_true(len > 0);
        if (s->fail_after && ++s->calls > s->fail_after)
                return -ENOSPC;
        buf_add(&s->copy, buf, len);
        return 0;
}

static int build(const struct buf *blob, uint32_t frame, size_t piece, struct sink *sk,
                 const struct digest *diff_id, struct layer_index **ret, char *err) {
        struct layer_build_opts o = {.zstd_frame = frame, .diff_id = diff_id};
        struct layer_builder *b;
        int r = 0;

        if (sk) {
                o.sink = mem_sink;
                o.sink_ctx = sk;
        }
        b = layer_builder_new(&o);
        assert_non_null(b);
        for (size_t off = 0; off < blob->len && r == 0; off += piece)
                r = layer_builder_feed(b, blob->p + off,
                                       blob->len - off < piece ? blob->len - off : piece);
        if (r == 0)
                r = layer_builder_finish(b, ret);
        snprintf(err, 400, "%s", layer_builder_error(b));
        if (r < 0)
                assert_true(strlen(err) > 0);
        layer_builder_free(b);
        return r;
}

struct mem_src {
        const struct buf *blob;
        uint64_t fetched;
};

static ssize_t mem_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct mem_src *s = ctx;

        if (off >= s->blob->len)
                return 0;
        if (len > s->blob->len - off)
                len = (size_t)(s->blob->len - off);
        memcpy(buf, s->blob->p + off, len);
        s->fetched += len;
        return (ssize_t)len;
}

static uint32_t get32(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The copy: zstd gives the tar back from it, its seek table agrees with the index. */
static void check_copy(const struct layer_index *ix, const struct buf *copy,
                       const struct buf *tar) {
        struct layer_index_info info;
        struct digest d;
        uint8_t *out = malloc(tar->len + 1);
        size_t n, t;

        layer_index_info(ix, &info);
        assert_int_equal(info.data_size, copy->len);
        digest_sha256(copy->p, copy->len, &d);
        assert_true(digest_equal(&d, &info.data_digest));
        assert_int_equal(info.nframes, (tar->len + info.span - 1) / info.span);
        n = ZSTD_decompress(out, tar->len + 1, copy->p, copy->len);
        assert_false(ZSTD_isError(n));
        assert_int_equal(n, tar->len);
        assert_memory_equal(out, tar->p, tar->len);
        free(out);
        /* seek table: footer, then one entry per frame */
        assert_int_equal(get32(copy->p + copy->len - 4), 0x8F92EAB1u);
        assert_int_equal(copy->p[copy->len - 5], 0);
        assert_int_equal(get32(copy->p + copy->len - 9), info.nframes);
        t = copy->len - layer_zstd_table_len(info.nframes);
        assert_int_equal(get32(copy->p + t), 0x184D2A5Eu);
        for (size_t i = 0; i < info.nframes; i++) {
                assert_int_equal(get32(copy->p + t + 8 + 8 * i), ix->zframes[i].clen);
                assert_int_equal(get32(copy->p + t + 12 + 8 * i), ix->zframes[i].ulen);
        }
}

/* Every regular file of the manifest, read through the copy, has its sha256. */
static void check_files(const struct layer_index *ix, const struct buf *copy,
                        const struct fixture *fx) {
        struct mem_src src = {.blob = copy};
        struct layer_reader *r = layer_reader_new(ix, mem_fetch, &src);
        size_t nreg = 0;

        assert_non_null(r);
        for (size_t i = 0; i < fx->nm; i++) {
                const struct mline *m = &fx->m[i];
                const struct layer_file *f;
                char hex[DIGEST_HEX_LEN + 1];
                struct digest d;
                uint8_t *data;
                size_t got = 0;
                ssize_t k;

                if (m->type != 'f' && m->type != 'h')
                        continue;
                k = layer_index_lookup(ix, m->path);
                if (k < 0)
                        fail_msg("%s missing", m->path);
                f = layer_index_file(ix, (size_t)k);
                assert_int_equal(f->size, m->size);
                data = malloc(f->size + 1);
                while (got < f->size) {
                        ssize_t n = layer_reader_read(r, f, got, data + got,
                                                      1 + (size_t)rand() % 300000);
                        assert_true(n > 0);
                        got += (size_t)n;
                }
                assert_int_equal(layer_reader_read(r, f, f->size, data, 1), 0);
                digest_sha256(data, f->size, &d);
                digest_to_hex(&d, hex);
                if (strcmp(hex, m->sha) != 0)
                        fail_msg("%s: sha256 %s, want %s", m->path, hex, m->sha);
                free(data);
                nreg++;
        }
        assert_true(nreg > 5);
        layer_reader_free(r);
}

static void roundtrip(const struct fixture *fx, const struct buf *layer, uint32_t frame,
                      size_t piece) {
        struct sink sk = {0};
        struct layer_index *ix = NULL, *ix2 = NULL;
        struct layer_index_info info;
        struct digest diff, d;
        char err[400];
        uint8_t *enc;
        size_t enc_len;

        digest_sha256(fx->tar.p, fx->tar.len, &diff);
        if (build(layer, frame, piece, &sk, &diff, &ix, err) != 0)
                fail_msg("build: %s", err);
        layer_index_info(ix, &info);
        assert_int_equal(info.format, LAYER_FMT_ZSTD);
        assert_int_equal(info.blob_size, layer->len);
        assert_int_equal(info.tar_size, fx->tar.len);
        assert_int_equal(info.span, frame ? frame : LAYER_ZSTD_FRAME_DEFAULT);
        assert_true(digest_equal(&diff, &info.diff_id));
        digest_sha256(layer->p, layer->len, &d);
        assert_true(digest_equal(&d, &info.blob_digest));
        check_copy(ix, &sk.copy, &fx->tar);
        check_files(ix, &sk.copy, fx);

        /* the encoded form keeps all of it */
        assert_int_equal(layer_index_encode(ix, &enc, &enc_len, NULL), 0);
        assert_int_equal(get32(enc + 8), 2); /* version 2: zstd only */
        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), 0);
        assert_int_equal(ix2->nzframes, ix->nzframes);
        assert_memory_equal(ix2->zframes, ix->zframes, ix->nzframes * sizeof(*ix->zframes));
        assert_true(digest_equal(&ix2->seek_digest, &ix->seek_digest));
        assert_int_equal(ix2->seek_size, ix->seek_size);
        check_files(ix2, &sk.copy, fx);
        free(enc);
        layer_index_free(ix2);
        layer_index_free(ix);
        free(sk.copy.p);
}

static void test_roundtrip(void **state) {
        struct buf one = zstd_layer(&pax_fx.tar, 1, false, 0);
        struct buf gnu = zstd_layer(&gnu_fx.tar, 1, false, 0);
        (void)state;

        roundtrip(&pax_fx, &one, 0, 1 << 20);
        roundtrip(&pax_fx, &one, LAYER_ZSTD_FRAME_MIN, 4093);
        roundtrip(&pax_fx, &one, LAYER_ZSTD_FRAME_MAX, 65536);
        roundtrip(&gnu_fx, &gnu, 300000, 7); /* a frame size no power of two; tiny pieces */
        free(one.p);
        free(gnu.p);
}

static void test_multi_frame_input(void **state) {
        struct buf many = zstd_layer(&pax_fx.tar, 7, true, 0);
        struct buf lw = zstd_layer(&pax_fx.tar, 2, false, LAYER_ZSTD_WINDOW_LOG_MAX);
        ZSTD_frameHeader h;
        (void)state;

        roundtrip(&pax_fx, &many, LAYER_ZSTD_FRAME_MIN, 100000);
        /* a long window at the bound is accepted */
        assert_int_equal(ZSTD_getFrameHeader(&h, lw.p, lw.len), 0);
        assert_int_equal(h.windowSize, 1ull << LAYER_ZSTD_WINDOW_LOG_MAX);
        roundtrip(&pax_fx, &lw, 0, 1 << 20);
        free(many.p);
        free(lw.p);
}

/* Reads of the raw tar (a file spanning all of it) at and around every frame boundary,
 * and what each costs: only the frames that hold the bytes. */
static void test_frame_boundaries(void **state) {
        struct buf layer = zstd_layer(&pax_fx.tar, 1, false, 0);
        struct sink sk = {0};
        struct layer_index *ix = NULL;
        struct layer_file whole = {.type = TAR_REG, .offset = 0, .size = pax_fx.tar.len};
        struct mem_src src = {.blob = &sk.copy};
        struct layer_reader *r;
        uint8_t *got = malloc(3 * LAYER_ZSTD_FRAME_MIN);
        uint32_t span = LAYER_ZSTD_FRAME_MIN;
        char err[400];
        (void)state;

        assert_int_equal(build(&layer, span, 1 << 20, &sk, NULL, &ix, err), 0);
        assert_true(ix->nzframes > 8);
        r = layer_reader_new(ix, mem_fetch, &src);
        for (size_t i = 0; i <= ix->nzframes; i++) {
                uint64_t b = (uint64_t)i * span;
                static const int64_t from[] = {-1, 0, -4096, -1, 1};
                static const uint64_t lens[] = {1, 1, 8192, LAYER_ZSTD_FRAME_MIN + 2, 3};
                for (size_t k = 0; k < sizeof(from) / sizeof(from[0]); k++) {
                        int64_t off = (int64_t)b + from[k];
                        uint64_t len = lens[k], want;
                        const struct layer_zframe *a, *z;
                        uint64_t start, end;
                        ssize_t n;
                        if (off < 0 || (uint64_t)off >= pax_fx.tar.len)
                                continue;
                        want = len < pax_fx.tar.len - (uint64_t)off
                                       ? len
                                       : pax_fx.tar.len - (uint64_t)off;
                        /* a fresh reader: the fetch count is this read's */
                        layer_reader_free(r);
                        r = layer_reader_new(ix, mem_fetch, &src);
                        src.fetched = 0;
                        n = layer_reader_read(r, &whole, (uint64_t)off, got, len);
                        assert_int_equal(n, (ssize_t)want);
                        assert_memory_equal(got, pax_fx.tar.p + off, want);
                        a = layer_zstd_frame_at(ix, (uint64_t)off);
                        z = layer_zstd_frame_at(ix, (uint64_t)off + want - 1);
                        assert_int_equal(src.fetched, z->coff + z->clen - a->coff);
                        assert_int_equal(
                                layer_index_blob_range(ix, (uint64_t)off, want, &start, &end), 0);
                        assert_int_equal(start, a->coff);
                        assert_int_equal(end, z->coff + z->clen);
                }
        }
        /* sequential small reads fetch each frame once */
        layer_reader_free(r);
        r = layer_reader_new(ix, mem_fetch, &src);
        src.fetched = 0;
        for (uint64_t off = 0; off < pax_fx.tar.len; off += 4096) {
                ssize_t n = layer_reader_read(r, &whole, off, got, 4096);
                assert_true(n > 0);
                assert_memory_equal(got, pax_fx.tar.p + off, (size_t)n);
        }
        assert_int_equal(src.fetched, ix->seek_size - layer_zstd_table_len(ix->nzframes));
        /* the tar stream itself, for span caches: across a boundary, and short at the end */
        assert_int_equal(layer_reader_read_tar(r, span - 7, got, 100), 100);
        assert_memory_equal(got, pax_fx.tar.p + span - 7, 100);
        assert_int_equal(layer_reader_read_tar(r, pax_fx.tar.len - 5, got, 100), 5);
        assert_memory_equal(got, pax_fx.tar.p + pax_fx.tar.len - 5, 5);
        assert_int_equal(layer_reader_read_tar(r, pax_fx.tar.len, got, 100), 0);
        layer_reader_free(r);
        layer_index_free(ix);
        free(got);
        free(sk.copy.p);
        free(layer.p);
}

static void test_refusals(void **state) {
        struct buf layer = zstd_layer(&pax_fx.tar, 3, false, 0);
        struct buf big = zstd_layer(&pax_fx.tar, 1, false, LAYER_ZSTD_WINDOW_LOG_MAX + 1);
        struct layer_index *ix = NULL;
        struct digest wrong;
        struct sink sk = {0};
        char err[400];
        struct buf b;
        (void)state;

        /* no sink: refused as before, not half-done */
        assert_int_equal(build(&layer, 0, 65536, NULL, NULL, &ix, err), -EOPNOTSUPP);
        assert_non_null(strstr(err, "zstd"));
        /* a sink that fails: its error */
        sk.fail_after = 2;
        assert_int_equal(build(&layer, LAYER_ZSTD_FRAME_MIN, 65536, &sk, NULL, &ix, err), -ENOSPC);
        assert_non_null(strstr(err, "seekable"));
        free(sk.copy.p);
        /* wrong diff_id */
        memset(&wrong, 0x5a, sizeof(wrong));
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&layer, 0, 65536, &sk, &wrong, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "diff_id"));
        free(sk.copy.p);
        /* truncated anywhere, the last byte included */
        for (size_t cut = 4; cut <= layer.len; cut += layer.len / 9 + 1) {
                b = (struct buf){layer.p, cut == layer.len ? cut - 1 : cut, 0};
                memset(&sk, 0, sizeof(sk));
                assert_int_equal(build(&b, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
                free(sk.copy.p);
        }
        b = (struct buf){layer.p, layer.len - 1, 0};
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&b, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "truncated"));
        free(sk.copy.p);
        /* garbage: after the magic, and after the last frame */
        b = (struct buf){0};
        buf_add(&b, layer.p, 4);
        buf_add(&b, "\xff\xff\xff\xff garbage garbage garbage garbage", 36);
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&b, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "zstd"));
        free(sk.copy.p);
        b.len = 0;
        buf_add(&b, layer.p, layer.len);
        buf_add(&b, "junkjunk", 8);
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&b, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
        free(sk.copy.p);
        /* a flipped byte in a frame: zstd or its checksum refuses it */
        memcpy(b.p, layer.p, layer.len);
        b.len = layer.len;
        b.p[layer.len / 2] ^= 0x21;
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&b, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
        free(sk.copy.p);
        free(b.p);
        /* a window over the bound: refused before it is allocated */
        memset(&sk, 0, sizeof(sk));
        assert_int_equal(build(&big, 0, 65536, &sk, NULL, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "window"));
        free(sk.copy.p);
        free(big.p);
        free(layer.p);
}

/* A copy that does not match its index, and hostile frame tables in the encoded form. */
static void test_bad_copy_and_table(void **state) {
        struct buf layer = zstd_layer(&pax_fx.tar, 1, false, 0);
        struct sink sk = {0};
        struct layer_index *ix = NULL, *ix2;
        struct layer_file whole = {.type = TAR_REG, .offset = 0, .size = pax_fx.tar.len};
        struct mem_src src = {.blob = &sk.copy};
        struct layer_reader *r;
        uint8_t got[100];
        uint8_t *enc;
        size_t enc_len;
        char err[400];
        (void)state;

        assert_int_equal(build(&layer, LAYER_ZSTD_FRAME_MIN, 1 << 20, &sk, NULL, &ix, err), 0);
        /* a flipped byte in frame 1: that frame's reads fail, frame 0's do not */
        sk.copy.p[ix->zframes[1].coff + ix->zframes[1].clen / 2] ^= 1;
        r = layer_reader_new(ix, mem_fetch, &src);
        assert_int_equal(layer_reader_read(r, &whole, LAYER_ZSTD_FRAME_MIN + 10, got, 10),
                         -EBADMSG);
        assert_int_equal(layer_reader_read(r, &whole, 10, got, 10), 10);
        assert_memory_equal(got, pax_fx.tar.p + 10, 10);
        sk.copy.p[ix->zframes[1].coff + ix->zframes[1].clen / 2] ^= 1;
        assert_int_equal(layer_reader_read(r, &whole, LAYER_ZSTD_FRAME_MIN + 10, got, 10), 10);
        /* a copy cut short */
        sk.copy.len = ix->zframes[2].coff + 5;
        assert_int_equal(layer_reader_read(r, &whole, 2 * LAYER_ZSTD_FRAME_MIN, got, 10), -EBADMSG);
        layer_reader_free(r);

        /* hostile tables: frames that do not add up, a bad span, a version mismatch */
        {
                struct layer_zframe save = ix->zframes[0];
                uint32_t span = ix->span;
                uint64_t seek = ix->seek_size;
                static const int cases = 6;
                for (int c = 0; c < cases; c++) {
                        ix->zframes[0] = save;
                        ix->span = span;
                        ix->seek_size = seek;
                        if (c == 0)
                                ix->zframes[0].ulen--; /* short first frame */
                        else if (c == 1)
                                ix->zframes[0].clen = 2; /* no zstd frame is that small */
                        else if (c == 2)
                                ix->seek_size++;
                        else if (c == 3)
                                ix->span = LAYER_ZSTD_FRAME_MAX * 2;
                        else if (c == 4)
                                ix->zframes[0].clen = 0x7fffffff; /* huge claim */
                        else
                                ix->span = LAYER_ZSTD_FRAME_MIN / 2;
                        assert_int_equal(layer_index_encode(ix, &enc, &enc_len, NULL), 0);
                        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), -EBADMSG);
                        free(enc);
                }
                ix->zframes[0] = save;
                ix->span = span;
                ix->seek_size = seek;
        }
        assert_int_equal(layer_index_encode(ix, &enc, &enc_len, NULL), 0);
        enc[8] = 1; /* a zstd index under version 1 */
        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), -EBADMSG);
        enc[8] = 3; /* the split encoding is for gzip layers only */
        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), -EBADMSG);
        enc[8] = 4;
        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), -EPROTONOSUPPORT);
        enc[8] = 2;
        assert_int_equal(layer_index_decode(enc, enc_len, 0, &ix2), 0);
        layer_index_free(ix2);
        for (size_t cut = 0; cut < enc_len; cut += enc_len / 13 + 1)
                assert_true(layer_index_decode(enc, cut, 0, &ix2) < 0);
        free(enc);
        layer_index_free(ix);
        free(sk.copy.p);
        free(layer.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_roundtrip),          cmocka_unit_test(test_multi_frame_input),
                cmocka_unit_test(test_frame_boundaries),   cmocka_unit_test(test_refusals),
                cmocka_unit_test(test_bad_copy_and_table),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
