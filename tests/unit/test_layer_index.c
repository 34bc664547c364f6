/* Unit tests for layer/index.c, layer/reader.c and layer/codec.c: the pass over plain and
 * gzip layers written by python3's tarfile (tests/unit/layer_gen.py, an independent tar
 * writer), the file table against the generator's manifest, every file's bytes read back
 * through checkpoints for several spans, the encoded form, and the refusals. */
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
#include <zlib.h>
#include <zstd.h>

#include "layer/internal.h"
#include "util/digest.h"

struct buf {
        uint8_t *p;
        size_t len;
};

struct mline {
        char type;
        char path[PATH_MAX];
        uint64_t size;
        char sha[65];
        unsigned mode, uid, gid;
        long long mtime;
        char link[PATH_MAX];
};

struct fixture {
        struct buf tar, gz, gz_multi;
        struct mline *m;
        size_t nm;
};

static struct fixture pax_fx, gnu_fx, esgz_fx; /* esgz_fx.tar holds the eStargz blob */

static struct buf read_file(const char *path) {
        struct buf b = {0};
        FILE *f = fopen(path, "rb");
        struct stat st;

        assert_non_null(f);
        assert_int_equal(fstat(fileno(f), &st), 0);
        b.len = (size_t)st.st_size;
        b.p = malloc(b.len ? b.len : 1);
        assert_non_null(b.p);
        assert_int_equal(fread(b.p, 1, b.len, f), b.len);
        fclose(f);
        return b;
}

/* gzip of IN as MEMBERS concatenated members. */
static struct buf gzip_buf(const struct buf *in, int members) {
        struct buf out = {0};
        size_t cap = in->len + in->len / 10 + 4096 * (size_t)members, piece;

        out.p = malloc(cap);
        assert_non_null(out.p);
        piece = in->len / (size_t)members + 1;
        for (size_t off = 0; off < in->len; off += piece) {
                z_stream zs = {0};
                size_t n = in->len - off < piece ? in->len - off : piece;
                assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY),
                                 Z_OK);
                zs.next_in = in->p + off;
                zs.avail_in = (uInt)n;
                zs.next_out = out.p + out.len;
                zs.avail_out = (uInt)(cap - out.len);
                assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
                out.len = cap - zs.avail_out;
                deflateEnd(&zs);
        }
        return out;
}

static void load_fixture(struct fixture *fx, const char *fmt) {
        char dir[] = "/tmp/test_layer_XXXXXX", cmd[1024], tarp[256], manp[256], line[3 * PATH_MAX];
        FILE *f;

        assert_non_null(mkdtemp(dir));
        snprintf(tarp, sizeof(tarp), "%s/layer.tar", dir);
        snprintf(manp, sizeof(manp), "%s/manifest", dir);
        snprintf(cmd, sizeof(cmd), "python3 tests/unit/layer_gen.py %s %s %s", fmt, tarp, manp);
        if (system(cmd) != 0)
                fail_msg("%s failed (run the tests from the repository root)", cmd);
        fx->tar = read_file(tarp);
        if (strcmp(fmt, "estargz") != 0) {
                fx->gz = gzip_buf(&fx->tar, 1);
                fx->gz_multi = gzip_buf(&fx->tar, 5);
        }
        f = fopen(manp, "r");
        assert_non_null(f);
        fx->m = calloc(256, sizeof(*fx->m));
        while (fgets(line, sizeof(line), f)) {
                struct mline *m = &fx->m[fx->nm++];
                char *fields[9], *s = line;
                assert_true(fx->nm < 256);
                line[strcspn(line, "\n")] = '\0';
                for (int i = 0; i < 9; i++) {
                        fields[i] = s;
                        s = strchr(s, '\t');
                        if (i < 8) {
                                assert_non_null(s);
                                *s++ = '\0';
                        }
                }
                m->type = fields[0][0];
                snprintf(m->path, sizeof(m->path), "%s", fields[1]);
                m->size = strtoull(fields[2], NULL, 10);
                snprintf(m->sha, sizeof(m->sha), "%s", fields[3]);
                m->mode = (unsigned)strtoul(fields[4], NULL, 8);
                m->uid = (unsigned)strtoul(fields[5], NULL, 10);
                m->gid = (unsigned)strtoul(fields[6], NULL, 10);
                m->mtime = strtoll(fields[7], NULL, 10);
                snprintf(m->link, sizeof(m->link), "%s", fields[8]);
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
        load_fixture(&esgz_fx, "estargz");
        return 0;
}

static void free_fixture(struct fixture *fx) {
        free(fx->tar.p);
        free(fx->gz.p);
        free(fx->gz_multi.p);
        free(fx->m);
}

static int teardown(void **state) {
        (void)state;
        free_fixture(&pax_fx);
        free_fixture(&gnu_fx);
        free_fixture(&esgz_fx);
        return 0;
}

/* Feeds BLOB in pieces of PIECE bytes. */
static int build(const struct buf *blob, uint32_t span, size_t piece,
                 const struct layer_build_opts *extra, struct layer_index **ret, char *err,
                 size_t errlen) {
        struct layer_build_opts o = extra ? *extra : (struct layer_build_opts){0};
        struct layer_builder *b;
        int r = 0;

        o.span = span;
        b = layer_builder_new(&o);
        assert_non_null(b);
        for (size_t off = 0; off < blob->len && r == 0; off += piece)
                r = layer_builder_feed(b, blob->p + off,
                                       blob->len - off < piece ? blob->len - off : piece);
        if (r == 0)
                r = layer_builder_finish(b, ret);
        if (err)
                snprintf(err, errlen, "%s", layer_builder_error(b));
        if (r < 0)
                assert_true(strlen(layer_builder_error(b)) > 0);
        layer_builder_free(b);
        return r;
}

struct mem_src {
        const struct buf *blob;
        uint64_t max_end; /* highest byte fetched + 1 */
        unsigned calls;
};

static ssize_t mem_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct mem_src *s = ctx;

        s->calls++;
        if (off >= s->blob->len)
                return 0;
        if (len > s->blob->len - off)
                len = (size_t)(s->blob->len - off);
        memcpy(buf, s->blob->p + off, len);
        if (off + len > s->max_end)
                s->max_end = off + len;
        return (ssize_t)len;
}

static char type_code(const struct layer_file *f) {
        switch (f->type) {
        case TAR_REG:
                return 'f';
        case TAR_DIR:
                return 'd';
        case TAR_SYMLINK:
                return 'l';
        case TAR_HARDLINK:
                return 'h';
        case TAR_CHR:
                return 'c';
        case TAR_BLK:
                return 'b';
        case TAR_FIFO:
                return 'p';
        case TAR_WHITEOUT:
                return 'w';
        default:
                return '?';
        }
}

/* The table matches the manifest: every manifest entry is there with its attributes; every
 * other entry is an implied directory. */
static void check_table(const struct layer_index *ix, const struct fixture *fx) {
        size_t explicit_ = 0;

        assert_string_equal(layer_index_file(ix, 0)->path, "");
        for (size_t i = 0; i < fx->nm; i++) {
                const struct mline *m = &fx->m[i];
                ssize_t k = layer_index_lookup(ix, m->path);
                const struct layer_file *f;
                if (k < 0)
                        fail_msg("%s missing from the index", m->path);
                f = layer_index_file(ix, (size_t)k);
                if (m->type == 'o') {
                        assert_int_equal(f->type, TAR_DIR);
                        assert_true(f->flags & LAYER_F_OPAQUE);
                        continue;
                }
                explicit_++;
                if (type_code(f) != m->type)
                        fail_msg("%s: type %c, want %c", m->path, type_code(f), m->type);
                if (m->type == 'w')
                        continue;
                assert_int_equal(f->mode, m->mode);
                assert_int_equal(f->uid, m->uid);
                assert_int_equal(f->gid, m->gid);
                assert_int_equal(f->mtime, m->mtime);
                assert_false(f->flags & LAYER_F_IMPLICIT);
                if (m->type == 'f' || m->type == 'h')
                        assert_int_equal(f->size, m->size);
                if (m->type == 'l' || m->type == 'h')
                        assert_string_equal(f->link, m->link);
                if (m->type == 'c' || m->type == 'b') {
                        char dev[32];
                        snprintf(dev, sizeof(dev), "%u:%u", f->devmajor, f->devminor);
                        assert_string_equal(dev, m->link);
                }
        }
        /* Everything else is a directory the tar only implied. */
        for (size_t i = 0; i < layer_index_nfiles(ix); i++) {
                const struct layer_file *f = layer_index_file(ix, i);
                bool listed = false;
                for (size_t j = 0; j < fx->nm && !listed; j++)
                        listed = fx->m[j].type != 'o' && strcmp(fx->m[j].path, f->path) == 0;
                if (!listed) {
                        if (f->type != TAR_DIR || !(f->flags & LAYER_F_IMPLICIT))
                                fail_msg("unexpected entry \"%s\"", f->path);
                }
        }
        (void)explicit_;
}

/* Reads every file of FX through IX over BLOB, whole and at random; WINS, when not NULL, is the
 * encoded index the reader reads a lazily loaded index's windows from. */
static void check_reads_w(const struct layer_index *ix, const struct buf *blob,
                          const struct fixture *fx, unsigned seed, struct mem_src *wins) {
        struct mem_src src = {.blob = blob};
        struct layer_reader *r = layer_reader_new(ix, mem_fetch, &src);
        uint8_t *data, small[5000];

        assert_non_null(r);
        if (wins)
                layer_reader_set_windows(r, mem_fetch, wins);
        srand(seed);
        for (size_t i = 0; i < fx->nm; i++) {
                const struct mline *m = &fx->m[i];
                const struct layer_file *f;
                struct digest d, want;
                size_t got = 0;
                char hex[DIGEST_HEX_LEN + 1];

                if (m->type != 'f' && m->type != 'h')
                        continue;
                f = layer_index_file(ix, (size_t)layer_index_lookup(ix, m->path));
                data = malloc(f->size + 1);
                assert_non_null(data);
                /* whole file in uneven pieces */
                while (got < f->size) {
                        size_t want_len = 1 + (size_t)rand() % 70000;
                        ssize_t n = layer_reader_read(r, f, got, data + got, want_len);
                        assert_true(n > 0);
                        got += (size_t)n;
                }
                assert_int_equal(layer_reader_read(r, f, f->size, small, 10), 0);
                digest_sha256(data, f->size, &d);
                digest_to_hex(&d, hex);
                if (strcmp(hex, m->sha) != 0)
                        fail_msg("%s: sha256 %s, want %s", m->path, hex, m->sha);
                assert_int_equal(digest_from_hex(m->sha, 64, &want), 0);
                /* random reads, backwards and forwards, against the verified copy */
                for (int k = 0; k < 6 && f->size; k++) {
                        uint64_t off = (uint64_t)rand() % f->size;
                        size_t len = 1 + (size_t)rand() % sizeof(small);
                        ssize_t n = layer_reader_read(r, f, off, small, len);
                        size_t expect = len < f->size - off ? len : (size_t)(f->size - off);
                        assert_int_equal(n, (ssize_t)expect);
                        assert_memory_equal(small, data + off, expect);
                }
                free(data);
        }
        layer_reader_free(r);
}

static void check_reads(const struct layer_index *ix, const struct buf *blob,
                        const struct fixture *fx, unsigned seed) {
        check_reads_w(ix, blob, fx, seed, NULL);
}

static void check_layer(const struct fixture *fx, const struct buf *blob, uint32_t span,
                        size_t piece, enum layer_format fmt) {
        struct layer_index *ix = NULL;
        struct layer_index_info info;
        char err[400];
        struct digest d;
        int r = build(blob, span, piece, NULL, &ix, err, sizeof(err));

        if (r != 0)
                fail_msg("build: %d %s", r, err);
        layer_index_info(ix, &info);
        assert_int_equal(info.format, fmt);
        assert_int_equal(info.blob_size, blob->len);
        assert_int_equal(info.tar_size, fx->tar.len);
        digest_sha256(fx->tar.p, fx->tar.len, &d);
        assert_true(digest_equal(&d, &info.diff_id));
        digest_sha256(blob->p, blob->len, &d);
        assert_true(digest_equal(&d, &info.blob_digest));
        if (fmt == LAYER_FMT_GZIP) {
                /* About one checkpoint per SPAN of compressed input (blocks are ~16-100 KiB). */
                assert_true(info.ncheckpoints >= 1);
                assert_true(info.ncheckpoints <= blob->len / span + 2);
                if (span <= 64 * 1024)
                        assert_true(info.ncheckpoints >= blob->len / span / 4);
        } else {
                assert_int_equal(info.ncheckpoints, 0);
        }
        check_table(ix, fx);
        check_reads(ix, blob, fx, span);
        layer_index_free(ix);
}

static void test_plain_tar(void **state) {
        (void)state;
        check_layer(&pax_fx, &pax_fx.tar, 0, 65536, LAYER_FMT_TAR);
        check_layer(&gnu_fx, &gnu_fx.tar, 0, 4093, LAYER_FMT_TAR);
}

static void test_gzip_spans(void **state) {
        (void)state;
        check_layer(&pax_fx, &pax_fx.gz, LAYER_SPAN_MIN, 7919, LAYER_FMT_GZIP);
        check_layer(&pax_fx, &pax_fx.gz, 64 << 10, 1 << 20, LAYER_FMT_GZIP);
        check_layer(&pax_fx, &pax_fx.gz, 1 << 20, 100000, LAYER_FMT_GZIP);
        check_layer(&gnu_fx, &gnu_fx.gz, 256 << 10, 3, LAYER_FMT_GZIP);
}

static void test_gzip_multi_member(void **state) {
        (void)state;
        check_layer(&pax_fx, &pax_fx.gz_multi, LAYER_SPAN_MIN, 8192, LAYER_FMT_GZIP);
        check_layer(&gnu_fx, &gnu_fx.gz_multi, 1 << 20, 65536, LAYER_FMT_GZIP);
}

static void test_xattrs_and_tree(void **state) {
        struct layer_index *ix;
        const struct layer_file *f;
        const struct layer_xattr *x;
        ssize_t k, c;
        int n = 0;
        (void)state;

        assert_int_equal(build(&pax_fx.gz, 0, 65536, NULL, &ix, NULL, 0), 0);
        k = layer_index_lookup(ix, "etc/caps");
        assert_true(k >= 0);
        f = layer_index_file(ix, (size_t)k);
        assert_int_equal(f->nxattrs, 2);
        assert_int_equal(f->mtime_nsec, 250000000);
        for (uint32_t i = 0; i < f->nxattrs; i++) {
                x = layer_index_xattr(ix, f->xattr_first + i);
                if (strcmp(x->name, "security.capability") == 0) {
                        assert_int_equal(x->len, 4);
                        assert_memory_equal(x->value, "\x01\x00\x00\x02", 4);
                } else {
                        assert_string_equal(x->name, "user.note");
                        assert_memory_equal(x->value, "hello", 5);
                }
        }
        /* readdir of "etc": exactly its direct children, in order */
        k = layer_index_lookup(ix, "etc");
        for (c = layer_index_next_child(ix, (size_t)k, (size_t)k); c >= 0;
             c = layer_index_next_child(ix, (size_t)k, (size_t)c)) {
                const char *p = layer_index_file(ix, (size_t)c)->path;
                assert_true(strncmp(p, "etc/", 4) == 0 && !strchr(p + 4, '/'));
                n++;
        }
        assert_int_equal(n, 4); /* caps empty hostname removed(whiteout) */
        /* the root lists the top-level directories, implied ones included */
        n = 0;
        for (c = layer_index_next_child(ix, 0, 0); c >= 0;
             c = layer_index_next_child(ix, 0, (size_t)c))
                n++;
        assert_int_equal(n, 9); /* deep dev etc hl lnk many run usr var */
        assert_int_equal(layer_index_lookup(ix, "nope"), -ENOENT);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "usr/share"));
        assert_true(f->flags & LAYER_F_IMPLICIT);
        layer_index_free(ix);
}

static void test_digests_checked(void **state) {
        struct layer_index *ix = NULL;
        struct digest diff, blob, wrong;
        struct layer_build_opts o = {0};
        char err[400];
        (void)state;

        digest_sha256(pax_fx.tar.p, pax_fx.tar.len, &diff);
        digest_sha256(pax_fx.gz.p, pax_fx.gz.len, &blob);
        memset(&wrong, 0x11, sizeof(wrong));
        o.diff_id = &diff;
        o.blob_digest = &blob;
        assert_int_equal(build(&pax_fx.gz, 0, 1 << 20, &o, &ix, err, sizeof(err)), 0);
        layer_index_free(ix);
        o.diff_id = &wrong;
        assert_int_equal(build(&pax_fx.gz, 0, 1 << 20, &o, &ix, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "diff_id"));
        o.diff_id = &diff;
        o.blob_digest = &wrong;
        assert_int_equal(build(&pax_fx.gz, 0, 1 << 20, &o, &ix, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "blob digest"));
}

static void test_bad_blobs(void **state) {
        struct layer_index *ix = NULL;
        struct buf b;
        char err[400];
        static const uint8_t zstd_magic[] = {0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0};
        (void)state;

        /* truncated gzip at many points: always refused, never an index */
        for (size_t cut = 0; cut < pax_fx.gz.len; cut += pax_fx.gz.len / 7 + 1) {
                b = (struct buf){pax_fx.gz.p, cut};
                assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        }
        b = (struct buf){pax_fx.gz.p, pax_fx.gz.len - 1}; /* the trailer's last byte */
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "truncated"));
        /* a flipped byte: inflate or the CRC refuses it */
        b.len = pax_fx.gz.len;
        b.p = malloc(b.len);
        memcpy(b.p, pax_fx.gz.p, b.len);
        b.p[b.len / 2] ^= 0x40;
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        /* garbage after the last member */
        memcpy(b.p, pax_fx.gz.p, b.len);
        b.p[b.len - 1] ^= 0; /* unchanged */
        free(b.p);
        b.len = pax_fx.gz.len + 4;
        b.p = malloc(b.len);
        memcpy(b.p, pax_fx.gz.p, pax_fx.gz.len);
        memcpy(b.p + pax_fx.gz.len, "junk", 4);
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        free(b.p);
        /* plain tar cut short */
        b = (struct buf){pax_fx.tar.p, pax_fx.tar.len / 2};
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        /* formats */
        b = (struct buf){(uint8_t *)zstd_magic, sizeof(zstd_magic)};
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EOPNOTSUPP);
        assert_non_null(strstr(err, "zstd"));
        b = (struct buf){(uint8_t *)"PK\003\004 not a layer", 16};
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        b = (struct buf){pax_fx.tar.p + 1, 4096};
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EPROTONOSUPPORT);
        b = (struct buf){(uint8_t *)"", 0};
        assert_int_equal(build(&b, 0, 65536, NULL, &ix, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "too short"));
        /* a head too short to tell, at the finish; the same head fed a byte at a time */
        b = (struct buf){(uint8_t *)"\x1f", 1};
        assert_int_equal(build(&b, 0, 1, NULL, &ix, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "too short"));
        b = (struct buf){pax_fx.tar.p + 1, 4096};
        assert_int_equal(build(&b, 0, 1, NULL, &ix, err, sizeof(err)), -EPROTONOSUPPORT);
        /* limits */
        {
                struct layer_build_opts o = {.max_files = 10};
                assert_int_equal(build(&pax_fx.gz, 0, 65536, &o, &ix, err, sizeof(err)), -EFBIG);
                o = (struct layer_build_opts){.max_bytes = 4096};
                assert_int_equal(build(&pax_fx.gz, 0, 65536, &o, &ix, err, sizeof(err)), -EFBIG);
        }
        assert_int_equal(layer_detect_format("\x1f\x8b", 2), LAYER_FMT_GZIP);
        assert_int_equal(layer_detect_format("\x1f", 1), -EAGAIN);
        assert_int_equal(layer_detect_format(pax_fx.tar.p, 300), LAYER_FMT_TAR);
}

/* Table-level refusals, with tars written by a small writer here. */
static void tar_add(struct buf *t, const char *name, char type, const char *data,
                    const char *link) {
        uint8_t h[TAR_BLOCK] = {0};
        size_t n = data ? strlen(data) : 0;
        unsigned sum = 0;

        snprintf((char *)h, 100, "%s", name);
        snprintf((char *)h + 100, 8, "%07o", 0644);
        snprintf((char *)h + 108, 8, "%07o", 0);
        snprintf((char *)h + 116, 8, "%07o", 0);
        snprintf((char *)h + 124, 12, "%011o", (unsigned)(n & 0777777));
        snprintf((char *)h + 136, 12, "%011o", 0);
        h[156] = (uint8_t)type;
        if (link)
                snprintf((char *)h + 157, 100, "%s", link);
        memcpy(h + 257,
               "ustar\0"
               "00",
               8);
        memset(h + 148, ' ', 8);
        for (int i = 0; i < TAR_BLOCK; i++)
                sum += h[i];
        snprintf((char *)h + 148, 8, "%06o", sum);
        t->p = realloc(t->p, t->len + TAR_BLOCK + (n + 511) / 512 * 512 + 1024);
        memcpy(t->p + t->len, h, TAR_BLOCK);
        t->len += TAR_BLOCK;
        if (n) {
                memset(t->p + t->len, 0, (n + 511) / 512 * 512);
                memcpy(t->p + t->len, data, n);
                t->len += (n + 511) / 512 * 512;
        }
        memset(t->p + t->len, 0, 1024); /* end-of-archive, overwritten by the next entry */
}

static int build_tar(struct buf *t, struct layer_index **ix, char *err) {
        struct buf whole = {t->p, t->len + 1024};
        int r = build(&whole, 0, 65536, NULL, ix, err, 400);
        free(t->p);
        memset(t, 0, sizeof(*t));
        return r;
}

static void test_table_rules(void **state) {
        struct buf t = {0};
        struct layer_index *ix = NULL;
        const struct layer_file *f;
        char err[400];
        (void)state;

        tar_add(&t, "a", '1', NULL, "missing");
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "missing"));

        tar_add(&t, "d/", '5', NULL, NULL);
        tar_add(&t, "a", '1', NULL, "d");
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);

        tar_add(&t, "f", '0', "x", NULL);
        tar_add(&t, "f/g", '0', "y", NULL);
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "not a directory"));

        tar_add(&t, "f", '0', "x", NULL);
        tar_add(&t, "f/.wh..wh..opq", '0', NULL, NULL);
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);

        /* a hard link keeps the data its target had when the link was read */
        tar_add(&t, "f", '0', "old", NULL);
        tar_add(&t, "h", '1', NULL, "f");
        tar_add(&t, "h2", '1', NULL, "h"); /* a link to a link: to the data */
        tar_add(&t, "f", '0', "newer", NULL);
        tar_add(&t, "o/.wh..wh..opq", '0', NULL, NULL); /* opaque, directory implied */
        assert_int_equal(build_tar(&t, &ix, err), 0);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "f"));
        assert_int_equal(f->size, 5);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "h"));
        assert_int_equal(f->type, TAR_REG);
        assert_int_equal(f->size, 3);
        assert_null(f->link);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "h2"));
        assert_int_equal(f->type, TAR_REG);
        assert_int_equal(f->size, 3);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "o"));
        assert_int_equal(f->flags, LAYER_F_OPAQUE | LAYER_F_IMPLICIT);
        assert_int_equal(layer_index_nfiles(ix), 5); /* "" f h h2 o */
        {
                /* the encoded form round-trips this too */
                uint8_t *enc;
                size_t len;
                struct layer_index *ix2;
                assert_int_equal(layer_index_encode(ix, &enc, &len, NULL), 0);
                assert_int_equal(layer_index_decode(enc, len, 0, &ix2), 0);
                assert_int_equal(layer_index_nfiles(ix2), 5);
                layer_index_free(ix2);
                free(enc);
        }
        layer_index_free(ix);
}

/* A later non-directory entry replaces the tree at its path, as containerd's applier
 * removes it: what the tar put under it before is gone, what it puts there after fails. */
static void test_replaced_directory(void **state) {
        struct buf t = {0};
        struct layer_index *ix = NULL;
        const struct layer_file *f;
        char err[400];
        (void)state;

        tar_add(&t, "d/", '5', NULL, NULL);
        tar_add(&t, "d/x", '0', "x", NULL);
        tar_add(&t, "d/e/y", '0', "y", NULL);       /* implied d/e */
        tar_add(&t, "d/.wh.gone", '0', NULL, NULL); /* a whiteout under d */
        tar_add(&t, "d/e/.wh..wh..opq", '0', NULL, NULL);
        tar_add(&t, "d/.wh..wh..opq", '0', NULL, NULL);
        tar_add(&t, "keep", '1', NULL, "d/x");   /* linked before: keeps the data */
        tar_add(&t, "dx", '0', "sibling", NULL); /* "dx" is not under "d" */
        tar_add(&t, "d", '0', "file", NULL);
        tar_add(&t, "s/a", '0', "a", NULL);
        tar_add(&t, "s", '2', NULL, "elsewhere"); /* a symlink replacing an implied dir */
        tar_add(&t, "w/a", '0', "a", NULL);
        tar_add(&t, "w/.wh..wh..opq", '0', NULL, NULL);
        tar_add(&t, ".wh.w", '0', NULL, NULL); /* a whiteout replacing a directory */
        tar_add(&t, "r/a", '0', "a", NULL);
        tar_add(&t, "r", '0', "f", NULL);
        tar_add(&t, "r/", '5', NULL, NULL); /* a directory again: empty, then filled */
        tar_add(&t, "r/b", '0', "b", NULL);
        assert_int_equal(build_tar(&t, &ix, err), 0);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "d"));
        assert_int_equal(f->type, TAR_REG);
        assert_int_equal(f->size, 4);
        assert_int_equal(f->flags, 0);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "keep"));
        assert_int_equal(f->type, TAR_REG);
        assert_int_equal(f->size, 1);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "s"));
        assert_int_equal(f->type, TAR_SYMLINK);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "w"));
        assert_int_equal(f->type, TAR_WHITEOUT);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "r"));
        assert_int_equal(f->type, TAR_DIR);
        assert_true(layer_index_lookup(ix, "r/b") >= 0);
        assert_true(layer_index_lookup(ix, "dx") >= 0);
        assert_int_equal(layer_index_lookup(ix, "d/x"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "d/e"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "d/e/y"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "d/gone"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "s/a"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "w/a"), -ENOENT);
        assert_int_equal(layer_index_lookup(ix, "r/a"), -ENOENT);
        /* "" d keep dx s w r r/b */
        assert_int_equal(layer_index_nfiles(ix), 8);
        {
                uint8_t *enc;
                size_t len;
                struct layer_index *ix2;
                assert_int_equal(layer_index_encode(ix, &enc, &len, NULL), 0);
                assert_int_equal(layer_index_decode(enc, len, 0, &ix2), 0);
                assert_int_equal(layer_index_nfiles(ix2), 8);
                layer_index_free(ix2);
                free(enc);
        }
        layer_index_free(ix);

        /* after the replacement, the path is a file: what follows under it still fails */
        tar_add(&t, "d/x", '0', "x", NULL);
        tar_add(&t, "d", '0', "file", NULL);
        tar_add(&t, "d/y", '0', "y", NULL);
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "not a directory"));

        tar_add(&t, "d/x", '0', "x", NULL);
        tar_add(&t, "d", '0', "file", NULL);
        tar_add(&t, "d/.wh..wh..opq", '0', NULL, NULL);
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);

        /* a hard link read after its target's directory went: nothing to link to */
        tar_add(&t, "d/x", '0', "x", NULL);
        tar_add(&t, "d", '0', "file", NULL);
        tar_add(&t, "h", '1', NULL, "d/x");
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "removed"));
        tar_add(&t, "d/x", '0', "x", NULL);
        tar_add(&t, "d", '1', NULL, "d/x"); /* the link replaces its own target's directory */
        assert_int_equal(build_tar(&t, &ix, err), -EBADMSG);
}

/* ---- the encoded form ------------------------------------------------------------------- */

static void same_index(const struct layer_index *a, const struct layer_index *b) {
        struct layer_index_info ia, ib;

        layer_index_info(a, &ia);
        layer_index_info(b, &ib);
        assert_int_equal(ia.format, ib.format);
        assert_int_equal(ia.span, ib.span);
        assert_int_equal(ia.blob_size, ib.blob_size);
        assert_int_equal(ia.tar_size, ib.tar_size);
        assert_true(digest_equal(&ia.diff_id, &ib.diff_id));
        assert_true(digest_equal(&ia.blob_digest, &ib.blob_digest));
        assert_int_equal(ia.nfiles, ib.nfiles);
        assert_int_equal(ia.nxattrs, ib.nxattrs);
        assert_int_equal(ia.ncheckpoints, ib.ncheckpoints);
        for (size_t i = 0; i < ia.nfiles; i++) {
                const struct layer_file *x = layer_index_file(a, i), *y = layer_index_file(b, i);
                assert_string_equal(x->path, y->path);
                assert_int_equal(x->type, y->type);
                assert_int_equal(x->flags, y->flags);
                assert_int_equal(x->mode, y->mode);
                assert_int_equal(x->size, y->size);
                assert_int_equal(x->offset, y->offset);
                assert_int_equal(x->mtime, y->mtime);
                assert_int_equal(x->nxattrs, y->nxattrs);
                assert_true((x->link == NULL) == (y->link == NULL));
                if (x->link)
                        assert_string_equal(x->link, y->link);
        }
}

static void test_codec_roundtrip(void **state) {
        struct layer_index *ix, *ix2;
        uint8_t *enc, *enc2;
        size_t len, len2;
        struct digest d, d2, check;
        (void)state;

        assert_int_equal(build(&pax_fx.gz, 64 << 10, 65536, NULL, &ix, NULL, 0), 0);
        assert_int_equal(layer_index_encode(ix, &enc, &len, &d), 0);
        digest_sha256(enc, len, &check);
        assert_true(digest_equal(&d, &check));
        assert_int_equal(layer_index_decode(enc, len, 0, &ix2), 0);
        same_index(ix, ix2);
        check_reads(ix2, &pax_fx.gz, &pax_fx, 7);
        /* canonical: the decoded index encodes to the same bytes, the same name */
        assert_int_equal(layer_index_encode(ix2, &enc2, &len2, &d2), 0);
        assert_int_equal(len, len2);
        assert_memory_equal(enc, enc2, len);
        assert_true(digest_equal(&d, &d2));
        free(enc2);
        layer_index_free(ix2);
        /* bounded: a smaller decode limit refuses before decompressing */
        assert_int_equal(layer_index_decode(enc, len, 1000, &ix2), -EFBIG);
        /* every truncation refused */
        for (size_t cut = 0; cut < len; cut += cut < 64 ? 1 : len / 50 + 1)
                assert_int_equal(layer_index_decode(enc, cut, 0, &ix2), -EBADMSG);
        {
                uint8_t v = enc[8];
                assert_int_equal(v, 3); /* gzip: the split encoding */
                enc[8] = 4;             /* 2 is the zstd encoding (test_layer_zstd.c) */
                assert_int_equal(layer_index_decode(enc, len, 0, &ix2), -EPROTONOSUPPORT);
                enc[8] = v;
        }
        free(enc);
        layer_index_free(ix);

        assert_int_equal(build(&gnu_fx.tar, 0, 65536, NULL, &ix, NULL, 0), 0);
        assert_int_equal(layer_index_encode(ix, &enc, &len, &d), 0);
        assert_int_equal(layer_index_decode(enc, len, 0, &ix2), 0);
        same_index(ix, ix2);
        check_reads(ix2, &gnu_fx.tar, &gnu_fx, 8);
        free(enc);
        layer_index_free(ix2);
        layer_index_free(ix);
}

/* Re-frames a modified payload, as a hostile peer could. */
static int decode_payload_bytes(const uint8_t *pl, size_t plen, struct layer_index **ret) {
        size_t bound = ZSTD_compressBound(plen), z;
        uint8_t *out = malloc(24 + bound);
        int r;

        memcpy(out, "P2PLIDX\n\1\0\0\0\0\0\0\0", 16);
        for (int i = 0; i < 8; i++)
                out[16 + i] = (uint8_t)((uint64_t)plen >> (8 * i));
        z = ZSTD_compress(out + 24, bound, pl, plen, 1);
        assert_false(ZSTD_isError(z));
        r = layer_index_decode(out, 24 + z, 0, ret);
        free(out);
        return r;
}

static uint64_t get64le(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v |= (uint64_t)p[i] << (8 * i);
        return v;
}

/* The version 1 payload of encoding ENC (a version 3 one: its head's payload followed by its
 * windows, which is what an older node writes). The caller frees it. */
static uint8_t *v1_payload(const uint8_t *enc, size_t len, size_t *ret_len) {
        uint64_t hz, wl, hlen;
        uint8_t *pl;

        assert_true(len > 40);
        assert_int_equal(enc[8], 3);
        hz = get64le(enc + 24);
        wl = get64le(enc + 32);
        assert_int_equal(40 + hz + wl, len);
        hlen = ZSTD_getFrameContentSize(enc + 40, hz);
        pl = malloc(hlen + wl);
        assert_non_null(pl);
        assert_int_equal(ZSTD_decompress(pl, hlen, enc + 40, hz), hlen);
        memcpy(pl + hlen, enc + 40 + hz, wl);
        *ret_len = hlen + wl;
        return pl;
}

static void put32le(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void put64le(uint8_t *p, uint64_t v) {
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void test_codec_hostile(void **state) {
        struct layer_index *ix, *ix2;
        uint8_t *enc, *pl, *m;
        size_t len, plen, nfiles, ncps, nx, files_at, cps_at;
        (void)state;

        assert_int_equal(build(&pax_fx.gz, LAYER_SPAN_MIN, 65536, NULL, &ix, NULL, 0), 0);
        assert_int_equal(layer_index_encode(ix, &enc, &len, NULL), 0);
        pl = v1_payload(enc, len, &plen);
        m = malloc(plen);
        assert_int_equal(decode_payload_bytes(pl, plen, &ix2), 0);
        layer_index_free(ix2);
        nfiles = layer_index_nfiles(ix);
        nx = ix->nxattrs;
        ncps = ix->ncps;
        files_at = 120;
        cps_at = files_at + nfiles * 84 + nx * 16;

#define MUTATE(what, stmt)                                                                         \
        do {                                                                                       \
                memcpy(m, pl, plen);                                                               \
                stmt;                                                                              \
                if (decode_payload_bytes(m, plen, &ix2) != -EBADMSG)                               \
                        fail_msg("hostile index accepted: %s", what);                              \
        } while (0)

        MUTATE("format", m[0] = 9);
        MUTATE("nfiles + 1", put32le(m + 88, (uint32_t)nfiles + 1));
        MUTATE("nfiles huge", put32le(m + 88, 0xffffffffu));
        MUTATE("ncheckpoints huge", put32le(m + 96, 0x7fffffffu));
        MUTATE("strs_len huge", put64le(m + 104, 1ull << 40));
        MUTATE("tar smaller than the files", put64le(m + 16, 1000));
        MUTATE("blob smaller than the checkpoints", put64le(m + 8, 10));
        MUTATE("span zero", put32le(m + 4, 0));
        MUTATE("root renamed", put32le(m + files_at + 4, 3));
        MUTATE("unsorted", {
                uint8_t tmp[84];
                memcpy(tmp, m + files_at + 84 * 3, 84);
                memcpy(m + files_at + 84 * 3, m + files_at + 84 * 4, 84);
                memcpy(m + files_at + 84 * 4, tmp, 84);
        });
        MUTATE("duplicate path", memcpy(m + files_at + 84 * 4, m + files_at + 84 * 3, 8));
        MUTATE("type 0", m[files_at + 84 * 5 + 16] = 0);
        MUTATE("type 42", m[files_at + 84 * 5 + 16] = 42);
        MUTATE("unknown flag", m[files_at + 84 * 5 + 17] = 0x80);
        MUTATE("mode beyond 07777", put32le(m + files_at + 84 * 5 + 20, 0170000));
        MUTATE("path offset past strings", put32le(m + files_at + 84 * 5, 0x7fffffff));
        MUTATE("path length past strings", put32le(m + files_at + 84 * 5 + 4, 0x7fffffff));
        MUTATE("xattr count", put32le(m + files_at + 84 * 5 + 72, 5));
        for (size_t i = 0; i < nfiles; i++) {
                const struct layer_file *f = layer_index_file(ix, i);
                uint8_t *rec = m + files_at + 84 * i;
                if (f->type == TAR_REG && f->size > 1000) {
                        MUTATE("file past the tar", put64le(rec + 60, ix->tar_size - 10));
                        MUTATE("size past the tar", put64le(rec + 52, ix->tar_size));
                        MUTATE("offset overflow", put64le(rec + 60, UINT64_MAX - 5));
                }
                if (f->type == TAR_HARDLINK)
                        MUTATE("hard link data differs", put64le(rec + 60, f->offset + 1));
                if (f->type == TAR_DIR && i > 0)
                        MUTATE("dir with a size", put64le(rec + 52, 1));
        }
        assert_true(ncps >= 2);
        MUTATE("checkpoint bits 8", m[cps_at + 40 + 16] = 8);
        MUTATE("checkpoint past the blob", put64le(m + cps_at + 40, ix->blob_size + 1));
        MUTATE("checkpoints out of order", put64le(m + cps_at + 40 + 8, 0));
        MUTATE("first checkpoint not at 0", put64le(m + cps_at + 8, 1));
        MUTATE("window length", put32le(m + cps_at + 40 + 20, 100));
        MUTATE("window offset", put64le(m + cps_at + 40 + 24, 1));
        MUTATE("window bytes", {
                size_t w = plen - ix->wins_len + ix->cps[1].zoff + 20;
                m[w] ^= 0xff;
        });
        MUTATE("trailing byte", (void)0; plen++; m = realloc(m, plen); m[plen - 1] = 0);
        plen--;

        /* random single-byte damage anywhere: refused or, if harmless, still a valid index */
        srand(16);
        for (int k = 0; k < 300; k++) {
                size_t at = (size_t)rand() % plen;
                int r;
                memcpy(m, pl, plen);
                m[at] ^= (uint8_t)(1 + rand() % 255);
                r = decode_payload_bytes(m, plen, &ix2);
                assert_true(r == 0 || r == -EBADMSG);
                if (r == 0)
                        layer_index_free(ix2);
        }
        free(m);
        free(pl);
        free(enc);
        layer_index_free(ix);
}

/* Version 3: the head alone is an index whose windows are read from the encoded blob. */
static void test_codec_lazy_head(void **state) {
        struct layer_index *ix, *hx, *full;
        struct layer_index_info info, hinfo;
        uint8_t *enc, *pl, *old, *m;
        size_t len, plen;
        uint64_t head, wl;
        struct buf encb;
        (void)state;

        assert_int_equal(build(&pax_fx.gz, LAYER_SPAN_MIN, 65536, NULL, &ix, NULL, 0), 0);
        layer_index_info(ix, &info);
        assert_true(info.ncheckpoints >= 3);
        assert_false(info.windows_lazy);
        assert_int_equal(layer_index_encode(ix, &enc, &len, NULL), 0);
        encb = (struct buf){.p = enc, .len = len};

        /* The head's length comes from the first LAYER_INDEX_PREFIX bytes. */
        assert_int_equal(layer_index_head_len(enc, LAYER_INDEX_PREFIX, len, &head), 0);
        wl = get64le(enc + 32);
        assert_true(wl > 0 && head + wl == len);
        assert_int_equal(layer_index_head_len(enc, LAYER_INDEX_PREFIX - 1, len, &head), -EBADMSG);
        assert_int_equal(layer_index_head_len(enc, LAYER_INDEX_PREFIX, len + 1, &head), -EBADMSG);
        assert_int_equal(layer_index_head_len(enc, LAYER_INDEX_PREFIX, len - 1, &head), -EBADMSG);
        assert_int_equal(layer_index_head_len(enc, LAYER_INDEX_PREFIX, len, &head), 0);

        /* The head alone: the same table, no windows in memory. */
        assert_int_equal(layer_index_decode_head(enc, head, len, 0, &hx), 0);
        layer_index_info(hx, &hinfo);
        assert_true(hinfo.windows_lazy);
        assert_int_equal(hinfo.windows_offset, head);
        assert_true(hinfo.memory + wl <= info.memory + 64);
        same_index(ix, hx);
        /* reads need the windows: through the encoded blob they give every file's bytes */
        {
                struct mem_src wsrc = {.blob = &encb};
                check_reads_w(hx, &pax_fx.gz, &pax_fx, 11, &wsrc);
                assert_true(wsrc.calls > 0);
                assert_true(wsrc.max_end > head); /* windows were read, from past the head */
        }
        /* without the window source, a read that starts at a later checkpoint fails */
        {
                struct mem_src src = {.blob = &pax_fx.gz};
                struct layer_reader *r = layer_reader_new(hx, mem_fetch, &src);
                const struct layer_checkpoint *last = &hx->cps[hx->ncps - 1];
                uint8_t b[16];
                bool tried = false;
                assert_non_null(r);
                for (size_t i = 0; i < layer_index_nfiles(hx) && !tried; i++) {
                        const struct layer_file *f = layer_index_file(hx, i);
                        if (f->type != TAR_REG || f->offset + f->size <= last->out + 1 ||
                            f->offset > last->out)
                                continue;
                        assert_int_equal(layer_reader_read(r, f, last->out - f->offset, b, 1),
                                         -EIO);
                        tried = true;
                }
                assert_true(tried);
                layer_reader_free(r);
        }
        /* a lazily loaded index cannot be encoded again (it has no windows to write) */
        {
                uint8_t *e2;
                size_t l2;
                assert_int_equal(layer_index_encode(hx, &e2, &l2, NULL), -EINVAL);
        }
        layer_index_free(hx);

        /* A damaged window is refused when read, not used. */
        m = malloc(len);
        assert_non_null(m);
        memcpy(m, enc, len);
        {
                const struct layer_checkpoint *c = &ix->cps[2];
                struct buf mb = {.p = m, .len = len};
                struct mem_src src = {.blob = &pax_fx.gz}, wsrc = {.blob = &mb};
                struct layer_reader *r;
                bool tried = false;
                uint8_t b[16];
                assert_true(c->zlen > 4);
                m[head + c->zoff] ^= 0xff; /* the frame's magic */
                assert_int_equal(layer_index_decode_head(m, head, len, 0, &hx), 0);
                r = layer_reader_new(hx, mem_fetch, &src);
                assert_non_null(r);
                layer_reader_set_windows(r, mem_fetch, &wsrc);
                for (size_t i = 0; i < layer_index_nfiles(hx) && !tried; i++) {
                        const struct layer_file *f = layer_index_file(hx, i);
                        uint64_t at = c->out;
                        if (f->type != TAR_REG || at < f->offset || at >= f->offset + f->size ||
                            (ix->ncps > 3 && at >= ix->cps[3].out))
                                continue;
                        assert_int_equal(layer_reader_read(r, f, at - f->offset, b, 1), -EBADMSG);
                        tried = true;
                }
                assert_true(tried);
                layer_reader_free(r);
                layer_index_free(hx);
                /* and the whole blob, damaged so, does not decode */
                assert_int_equal(layer_index_decode(m, len, 0, &full), -EBADMSG);
        }

        /* Every truncation of the head, a wrong total, a changed window count: refused. */
        for (size_t cut = 0; cut < head; cut += cut < 64 ? 1 : head / 40 + 1) {
                int r = layer_index_decode_head(enc, cut, len, 0, &hx);
                assert_int_equal(r, -EBADMSG);
        }
        assert_int_equal(layer_index_decode_head(enc, head, len + 1, 0, &hx), -EBADMSG);
        memcpy(m, enc, len);
        m[32] ^= 1; /* wins_len */
        assert_int_equal(layer_index_decode_head(m, head, len, 0, &hx), -EBADMSG);
        assert_int_equal(layer_index_decode(m, len, 0, &hx), -EBADMSG);
        memcpy(m, enc, len);
        m[24] ^= 1; /* the head's length */
        assert_int_equal(layer_index_decode_head(m, len, len, 0, &hx), -EBADMSG);
        /* a smaller decode limit refuses; decoding whole, the windows count against it too */
        assert_int_equal(layer_index_decode_head(enc, head, len, 100, &hx), -EFBIG);
        {
                uint64_t plen3 = ZSTD_getFrameContentSize(enc + 40, head - 40);
                assert_int_equal(layer_index_decode(enc, len, plen3 + wl - 1, &full), -EFBIG);
                assert_int_equal(layer_index_decode(enc, len, plen3 + wl, &full), 0);
                layer_index_free(full);
                assert_int_equal(layer_index_decode_head(enc, head, len, plen3, &hx), 0);
                layer_index_free(hx);
        }
        free(m);

        /* An older node's encoding (version 1, windows inside the payload): no separate head,
         * still decodes whole to the same index. */
        pl = v1_payload(enc, len, &plen);
        {
                size_t bound = ZSTD_compressBound(plen), z;
                old = malloc(24 + bound);
                assert_non_null(old);
                memcpy(old, "P2PLIDX\n\1\0\0\0\0\0\0\0", 16);
                for (int i = 0; i < 8; i++)
                        old[16 + i] = (uint8_t)((uint64_t)plen >> (8 * i));
                z = ZSTD_compress(old + 24, bound, pl, plen, 9);
                assert_false(ZSTD_isError(z));
                assert_int_equal(layer_index_head_len(old, LAYER_INDEX_PREFIX, 24 + z, &head),
                                 -EPROTONOSUPPORT);
                assert_int_equal(layer_index_decode_head(old, 24 + z, 24 + z, 0, &hx),
                                 -EPROTONOSUPPORT);
                assert_int_equal(layer_index_decode(old, 24 + z, 0, &full), 0);
                same_index(ix, full);
                check_reads(full, &pax_fx.gz, &pax_fx, 12);
                layer_index_free(full);
                free(old);
        }
        free(pl);
        free(enc);
        layer_index_free(ix);
}

/* A blob shorter than the index says. */
static ssize_t short_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct mem_src *s = ctx;
        if (off > s->blob->len / 2)
                return 0;
        return mem_fetch(ctx, off, buf, len);
}

static ssize_t failing_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        (void)ctx;
        (void)off;
        (void)buf;
        (void)len;
        return -EIO;
}

static void test_reader_errors_and_range(void **state) {
        struct layer_index *ix;
        struct mem_src src = {.blob = &pax_fx.gz};
        struct layer_reader *r;
        const struct layer_file *f;
        uint8_t buf[4096];
        uint64_t start, end, fetched;
        (void)state;

        assert_int_equal(build(&pax_fx.gz, LAYER_SPAN_MIN, 65536, NULL, &ix, NULL, 0), 0);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "usr/share/text"));
        r = layer_reader_new(ix, short_fetch, &src);
        assert_int_equal(layer_reader_read(r, f, f->size - 10, buf, sizeof(buf)), -EBADMSG);
        layer_reader_free(r);
        r = layer_reader_new(ix, failing_fetch, NULL);
        assert_int_equal(layer_reader_read(r, f, 100, buf, sizeof(buf)), -EIO);
        layer_reader_free(r);

        /* a 4 KiB read fetches no more than its checkpoint span (plus one fetch piece) */
        r = layer_reader_new(ix, mem_fetch, &src);
        {
                ssize_t n = layer_reader_read(r, f, f->size / 2, buf, sizeof(buf));
                if (n != sizeof(buf)) {
                        const struct layer_checkpoint *cp =
                                layer_index_checkpoint(ix, f->offset + f->size / 2);
                        fail_msg("read %zd: cp in=%llu out=%llu bits=%u wlen=%u uoff=%llu", n,
                                 (unsigned long long)cp->in, (unsigned long long)cp->out, cp->bits,
                                 cp->wlen, (unsigned long long)(f->offset + f->size / 2));
                }
        }
        fetched = layer_reader_fetched(r);
        assert_int_equal(
                layer_index_blob_range(ix, f->offset + f->size / 2, sizeof(buf), &start, &end), 0);
        assert_true(end - start < 4 * LAYER_SPAN_MIN);
        assert_true(fetched <= end - start + 65536);
        assert_true(fetched < pax_fx.gz.len / 8);
        assert_int_equal(layer_index_blob_range(ix, ix->tar_size, 1, &start, &end), -EINVAL);

        assert_int_equal(layer_reader_read(r, layer_index_file(ix, 0), 0, buf, 1), -EISDIR);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "usr/bin/sh"));
        assert_int_equal(layer_reader_read(r, f, 0, buf, 1), -EINVAL);
        layer_reader_free(r);
        layer_index_free(ix);
}

/* ---- eStargz ---------------------------------------------------------------------------- */

static int esgz_index(const struct buf *blob, const struct digest *toc_digest,
                      struct layer_index **ret, char *err) {
        struct layer_estargz_opts o = {.blob_size = blob->len, .toc_digest = toc_digest};
        uint64_t toc_off, toc_end;
        size_t flen = blob->len < LAYER_ESTARGZ_FOOTER ? blob->len : LAYER_ESTARGZ_FOOTER;
        int r = layer_estargz_footer(blob->p + blob->len - flen, flen, blob->len, &toc_off,
                                     &toc_end);
        if (r < 0) {
                snprintf(err, 400, "footer: %d", r);
                return r;
        }
        return layer_estargz_index(blob->p + toc_off, (size_t)(toc_end - toc_off), toc_off, &o, ret,
                                   err, 400);
}

static void test_estargz(void **state) {
        struct layer_index *ix, *ix2;
        struct layer_index_info info;
        const struct buf *blob = &esgz_fx.tar;
        struct mem_src src = {.blob = blob};
        struct layer_reader *r;
        const struct layer_file *f;
        uint8_t *enc, buf[4096];
        size_t len;
        char err[400];
        int e;
        (void)state;

        e = esgz_index(blob, NULL, &ix, err);
        if (e != 0)
                fail_msg("estargz: %d %s", e, err);
        layer_index_info(ix, &info);
        assert_int_equal(info.format, LAYER_FMT_ESTARGZ);
        assert_int_equal(info.ncheckpoints, 0);
        assert_true(info.nchunks > 60); /* every file, and the 3 MiB one in 100 kB chunks */
        check_table(ix, &esgz_fx);
        check_reads(ix, blob, &esgz_fx, 3);

        /* one 4 KiB read in the middle of the big file: one chunk's member, not the layer */
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "usr/bin/big"));
        assert_true(f->nchunks > 20);
        r = layer_reader_new(ix, mem_fetch, &src);
        assert_int_equal(layer_reader_read(r, f, f->size / 2, buf, sizeof(buf)), sizeof(buf));
        assert_true(layer_reader_fetched(r) <= 100000 + 65536);
        /* a read across a chunk boundary */
        assert_int_equal(layer_reader_read(r, f, 100000 - 10, buf, 20), 20);
        layer_reader_free(r);
        f = layer_index_file(ix, (size_t)layer_index_lookup(ix, "usr/bin/big-again"));
        assert_int_equal(f->type, TAR_HARDLINK);
        assert_true(f->nchunks > 20);

        /* encoded, decoded, canonical, and readable */
        assert_int_equal(layer_index_encode(ix, &enc, &len, NULL), 0);
        assert_int_equal(layer_index_decode(enc, len, 0, &ix2), 0);
        same_index(ix, ix2);
        check_reads(ix2, blob, &esgz_fx, 4);
        {
                uint8_t *enc2;
                size_t len2;
                assert_int_equal(layer_index_encode(ix2, &enc2, &len2, NULL), 0);
                assert_int_equal(len, len2);
                assert_memory_equal(enc, enc2, len);
                free(enc2);
        }
        free(enc);
        layer_index_free(ix2);
        layer_index_free(ix);

        /* the blob is also an ordinary tar.gz: the pass reads it (and sees the toc file) */
        assert_int_equal(build(blob, 0, 65536, NULL, &ix, err, sizeof(err)), 0);
        assert_true(layer_index_lookup(ix, "stargz.index.json") >= 0);
        check_reads(ix, blob, &esgz_fx, 5);
        layer_index_free(ix);
}

/* A TOC member holding JSON, for the refusals. */
static struct buf toc_member(const char *json) {
        struct buf t = {0}, out;
        tar_add(&t, "stargz.index.json", '0', json, NULL);
        t.len += 1024;
        out = gzip_buf(&t, 1);
        free(t.p);
        return out;
}

static int toc_refused(const char *json, uint64_t toc_off) {
        struct buf m = toc_member(json);
        struct layer_estargz_opts o = {.blob_size = toc_off + m.len + 51};
        struct layer_index *ix = NULL;
        char err[400];
        int r = layer_estargz_index(m.p, m.len, toc_off, &o, &ix, err, sizeof(err));

        if (r == 0)
                layer_index_free(ix);
        else
                assert_true(err[0] != '\0');
        free(m.p);
        return r;
}

#define E(s) "{\"version\":1,\"entries\":[" s "]}"
#define REG(name, size, off)                                                                       \
        "{\"name\":\"" name "\",\"type\":\"reg\",\"size\":" #size ",\"offset\":" #off "}"

static void test_estargz_refusals(void **state) {
        struct digest wrong;
        struct layer_index *ix;
        char err[400];
        uint64_t a, b;
        uint8_t foot[51];
        (void)state;

        assert_int_equal(toc_refused(E(REG("a", 10, 100)), 1000), 0);
        /* a TOC entry replacing a directory drops its children, as a tar's does */
        assert_int_equal(toc_refused(E(REG("d/x", 10, 100) ",{\"name\":\"d\",\"type\":"
                                                           "\"symlink\",\"linkName\":\"t\"}"),
                                     1000),
                         0);
        assert_int_equal(toc_refused(E("{\"name\":\"d\",\"type\":\"symlink\",\"linkName\":"
                                       "\"t\"}," REG("d/x", 10, 100)),
                                     1000),
                         -EBADMSG);
        assert_int_equal(toc_refused(E(REG("../a", 10, 100)), 1000), -EINVAL);
        assert_int_equal(toc_refused(E(REG("a", 10, 1000)), 1000), -EBADMSG); /* not before toc */
        assert_int_equal(toc_refused(E("{\"name\":\"a\",\"type\":\"reg\",\"size\":300000,"
                                       "\"offset\":10,\"chunkSize\":100000}"),
                                     1000),
                         -EBADMSG); /* chunks do not cover the file */
        assert_int_equal(toc_refused(E("{\"name\":\"a\",\"type\":\"chunk\",\"offset\":1}"), 1000),
                         -EBADMSG);
        assert_int_equal(toc_refused(E("{\"name\":\"a\",\"type\":\"socket\"}"), 1000), -EOPNOTSUPP);
        assert_int_equal(toc_refused("{\"version\":2,\"entries\":[]}", 1000), -EBADMSG);
        assert_int_equal(toc_refused("{\"version\":1}", 1000), -EBADMSG);
        assert_int_equal(toc_refused("{\"version\":1,\"version\":1,\"entries\":[]}", 1000),
                         -EBADMSG);
        assert_int_equal(toc_refused("not json", 1000), -EBADMSG);
        assert_int_equal(
                toc_refused(E("{\"name\":\"a\",\"type\":\"dir\",\"modtime\":\"yesterday\"}"), 1000),
                -EBADMSG);
        assert_int_equal(toc_refused(E("{\"name\":\"a\",\"type\":\"dir\",\"uid\":-1}"), 1000),
                         -EBADMSG);
        assert_int_equal(
                toc_refused(E("{\"name\":\"a\",\"type\":\"reg\",\"xattrs\":{\"user.x\":\"!!\"}}"),
                            1000),
                -EBADMSG);
        assert_int_equal(
                toc_refused(E("{\"name\":\"h\",\"type\":\"hardlink\",\"linkName\":\"nope\"}"),
                            1000),
                -EBADMSG);
        assert_int_equal(
                toc_refused(
                        E("{\"name\":\"f\",\"type\":\"reg\"},{\"name\":\"f/g\",\"type\":\"reg\"}"),
                        1000),
                -EBADMSG);
        /* a good TOC with the wrong digest; a truncated TOC member */
        memset(&wrong, 7, sizeof(wrong));
        assert_int_equal(esgz_index(&esgz_fx.tar, &wrong, &ix, err), -EBADMSG);
        assert_non_null(strstr(err, "digest"));
        {
                struct buf m = toc_member(E(REG("a", 10, 100)));
                struct layer_estargz_opts o = {.blob_size = 100000};
                assert_int_equal(
                        layer_estargz_index(m.p, m.len / 2, 1000, &o, &ix, err, sizeof(err)),
                        -EBADMSG);
                free(m.p);
        }
        /* footers: a plain gzip layer has none; one pointing past the blob is refused */
        assert_int_equal(
                layer_estargz_footer(pax_fx.gz.p + pax_fx.gz.len - 51, 51, pax_fx.gz.len, &a, &b),
                -EPROTONOSUPPORT);
        memcpy(foot, esgz_fx.tar.p + esgz_fx.tar.len - 51, 51);
        assert_int_equal(layer_estargz_footer(foot, 51, esgz_fx.tar.len, &a, &b), 0);
        assert_int_equal(b, esgz_fx.tar.len - 51);
        assert_int_equal(layer_estargz_footer(foot, 51, a + 51, &a, &b), -EBADMSG);
        foot[20] = 'x'; /* not hex */
        assert_int_equal(layer_estargz_footer(foot, 51, esgz_fx.tar.len, &a, &b), -EPROTONOSUPPORT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_plain_tar),
                cmocka_unit_test(test_gzip_spans),
                cmocka_unit_test(test_gzip_multi_member),
                cmocka_unit_test(test_xattrs_and_tree),
                cmocka_unit_test(test_digests_checked),
                cmocka_unit_test(test_bad_blobs),
                cmocka_unit_test(test_table_rules),
                cmocka_unit_test(test_replaced_directory),
                cmocka_unit_test(test_codec_roundtrip),
                cmocka_unit_test(test_codec_hostile),
                cmocka_unit_test(test_codec_lazy_head),
                cmocka_unit_test(test_reader_errors_and_range),
                cmocka_unit_test(test_estargz),
                cmocka_unit_test(test_estargz_refusals),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
