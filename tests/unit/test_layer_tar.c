/* Unit tests for layer/tar.c: the dialects (ustar, GNU long names, PAX records), whiteouts,
 * path normalisation and every way of refusing an archive. Archives are written here, a
 * header at a time, so each test says exactly which bytes it feeds; python3's tarfile writes
 * the realistic archives of test_layer_index.c. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "layer/tar.h"

/* ---- a tiny tar writer ------------------------------------------------------------------ */

struct tbuf {
        uint8_t *p;
        size_t len, cap;
};

static void tb_put(struct tbuf *t, const void *s, size_t n) {
        if (t->len + n > t->cap) {
                t->cap = (t->len + n) * 2 + 4096;
                t->p = realloc(t->p, t->cap);
                assert_non_null(t->p);
        }
        memcpy(t->p + t->len, s, n);
        t->len += n;
}

static void tb_pad(struct tbuf *t) {
        static const uint8_t zero[TAR_BLOCK];
        if (t->len % TAR_BLOCK)
                tb_put(t, zero, TAR_BLOCK - t->len % TAR_BLOCK);
}

static void octal(uint8_t *f, size_t len, uint64_t v) {
        snprintf((char *)f, len, "%0*llo", (int)len - 1, (unsigned long long)v);
}

/* A ustar header; NAME up to 100 bytes (not NUL-terminated when exactly 100). */
static void hdr_raw(uint8_t h[TAR_BLOCK], const char *name, char type, uint64_t size,
                    const char *link) {
        unsigned sum = 0;

        memset(h, 0, TAR_BLOCK);
        memcpy(h, name, strnlen(name, 100));
        octal(h + 100, 8, 0644);
        octal(h + 108, 8, 1000);
        octal(h + 116, 8, 1001);
        octal(h + 124, 12, size);
        octal(h + 136, 12, 1700000000);
        h[156] = (uint8_t)type;
        if (link)
                memcpy(h + 157, link, strnlen(link, 100));
        memcpy(h + 257, "ustar", 6);
        memcpy(h + 263, "00", 2);
        memset(h + 148, ' ', 8);
        for (int i = 0; i < TAR_BLOCK; i++)
                sum += h[i];
        snprintf((char *)h + 148, 8, "%06o", sum);
}

static void resum(uint8_t h[TAR_BLOCK]) {
        unsigned sum = 0;
        memset(h + 148, ' ', 8);
        for (int i = 0; i < TAR_BLOCK; i++)
                sum += h[i];
        snprintf((char *)h + 148, 8, "%06o", sum);
}

static void add(struct tbuf *t, const char *name, char type, const void *data, size_t size,
                const char *link) {
        uint8_t h[TAR_BLOCK];
        hdr_raw(h, name, type, size, link);
        tb_put(t, h, TAR_BLOCK);
        if (size)
                tb_put(t, data, size);
        tb_pad(t);
}

/* A PAX 'x' header carrying the records in RECS ("key=value" strings, NULL-terminated). */
static void add_pax(struct tbuf *t, const char *const *recs) {
        char data[8192];
        size_t n = 0;

        for (; *recs; recs++) {
                size_t body = strlen(*recs) + 2, len = body + 1;
                while (len != body + (size_t)snprintf(NULL, 0, "%zu", len))
                        len = body + (size_t)snprintf(NULL, 0, "%zu", len);
                n += (size_t)snprintf(data + n, sizeof(data) - n, "%zu %s\n", len, *recs);
        }
        add(t, "PaxHeaders/x", 'x', data, n, NULL);
}

static void finish(struct tbuf *t) {
        static const uint8_t zero[2 * TAR_BLOCK];
        tb_put(t, zero, sizeof(zero));
}

/* ---- collecting what the parser reports ------------------------------------------------- */

struct got {
        int n;
        char path[16][PATH_MAX];
        char link[16][PATH_MAX];
        struct tar_entry e[16];
        char xname[16][64];
        uint8_t xval[16][64];
        size_t xlen[16], nx[16];
};

static int collect(void *ctx, const struct tar_entry *e) {
        struct got *g = ctx;
        int i = g->n++;

        assert_true(i < 16);
        g->e[i] = *e;
        snprintf(g->path[i], PATH_MAX, "%s", e->path);
        snprintf(g->link[i], PATH_MAX, "%s", e->link ? e->link : "");
        g->nx[i] = e->nxattrs;
        if (e->nxattrs) {
                snprintf(g->xname[i], 64, "%s", e->xattrs[e->nxattrs - 1].name);
                g->xlen[i] = e->xattrs[e->nxattrs - 1].len;
                memcpy(g->xval[i], e->xattrs[e->nxattrs - 1].value,
                       g->xlen[i] < 64 ? g->xlen[i] : 64);
        }
        return 0;
}

/* Parses T whole and byte by byte; both must agree. Returns the error (0 on success). */
static int parse(const struct tbuf *t, struct got *g, char *err, size_t errlen) {
        struct got g2;
        int r1, r2;

        for (int pass = 0; pass < 2; pass++) {
                struct got *gg = pass ? &g2 : g;
                struct tar_parser *p;
                int r = 0;

                memset(gg, 0, sizeof(*gg));
                p = tar_parser_new(collect, gg);
                assert_non_null(p);
                if (pass == 0) {
                        r = tar_parser_feed(p, t->p, t->len);
                } else {
                        for (size_t i = 0; i < t->len && r == 0; i++)
                                r = tar_parser_feed(p, t->p + i, 1);
                }
                if (r == 0)
                        r = tar_parser_finish(p);
                if (pass == 0) {
                        r1 = r;
                        if (err)
                                snprintf(err, errlen, "%s", tar_parser_error(p));
                        if (r)
                                assert_true(strlen(tar_parser_error(p)) > 0);
                        else
                                assert_int_equal(tar_parser_offset(p), t->len);
                } else {
                        r2 = r;
                }
                tar_parser_free(p);
        }
        assert_int_equal(r1, r2);
        assert_int_equal(g->n, g2.n);
        for (int i = 0; i < g->n; i++) {
                assert_string_equal(g->path[i], g2.path[i]);
                assert_int_equal(g->e[i].offset, g2.e[i].offset);
        }
        return r1;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void expect_norm(const char *in, const char *want) {
        char out[PATH_MAX];
        int r = tar_path_normalise(in, strlen(in), out, sizeof(out));
        if (r != 0)
                fail_msg("normalise(\"%s\") = %d", in, r);
        assert_string_equal(out, want);
}

static void expect_norm_err(const char *in, size_t len, int err) {
        char out[PATH_MAX];
        int r = tar_path_normalise(in, len, out, sizeof(out));
        if (r != err)
                fail_msg("normalise(\"%.40s\") = %d; want %d", in, r, err);
}

static void test_normalise(void **state) {
        char longc[300], longp[PATH_MAX + 10];
        (void)state;

        expect_norm("a/b/c", "a/b/c");
        expect_norm("./a//b/./c/", "a/b/c");
        expect_norm("/abs/x", "abs/x");
        expect_norm("///", "");
        expect_norm("./", "");
        expect_norm(".", "");
        expect_norm("a/.../b", "a/.../b");
        expect_norm("..a/b..", "..a/b..");
        expect_norm_err("a/../b", 6, -EINVAL);
        expect_norm_err("..", 2, -EINVAL);
        expect_norm_err("/../etc/passwd", 14, -EINVAL);
        expect_norm_err("a/b/..", 6, -EINVAL);
        expect_norm_err("a\0b", 3, -EINVAL);
        memset(longc, 'c', 256);
        longc[256] = '\0';
        expect_norm_err(longc, 256, -ENAMETOOLONG);
        longc[255] = '\0';
        expect_norm(longc, longc);
        for (size_t i = 0; i < sizeof(longp); i++)
                longp[i] = i % 100 == 99 ? '/' : 'p';
        expect_norm_err(longp, PATH_MAX, -ENAMETOOLONG);
}

static void test_ustar_types(void **state) {
        struct tbuf t = {0};
        struct got g;
        uint8_t h[TAR_BLOCK];
        (void)state;

        add(&t, "./", '5', NULL, 0, NULL);
        add(&t, "./etc/", '5', NULL, 0, NULL);
        add(&t, "./etc/hostname", '0', "node\n", 5, NULL);
        add(&t, "etc/sh", '2', NULL, 0, "/bin/busybox");
        add(&t, "etc/hard", '1', NULL, 0, "./etc/hostname");
        hdr_raw(h, "dev/tty", '3', 0, NULL);
        octal(h + 329, 8, 5);
        octal(h + 337, 8, 1);
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        add(&t, "run/fifo", '6', NULL, 0, NULL);
        add(&t, "olddir/", '\0', NULL, 0, NULL); /* pre-POSIX: a regular type with a '/' */
        /* a directory whose size field is not 0: header-only, no data follows */
        add(&t, "sized-dir", '5', NULL, 0, NULL);
        hdr_raw(h, "sized-dir2", '5', 4096, NULL);
        tb_put(&t, h, TAR_BLOCK);
        finish(&t);

        assert_int_equal(parse(&t, &g, NULL, 0), 0);
        assert_int_equal(g.n, 10);
        assert_string_equal(g.path[0], "");
        assert_int_equal(g.e[0].type, TAR_DIR);
        assert_string_equal(g.path[2], "etc/hostname");
        assert_int_equal(g.e[2].type, TAR_REG);
        assert_int_equal(g.e[2].size, 5);
        assert_int_equal(g.e[2].offset, 3 * TAR_BLOCK);
        assert_int_equal(g.e[2].header_offset, 2 * TAR_BLOCK);
        assert_memory_equal(t.p + g.e[2].offset, "node\n", 5);
        assert_int_equal(g.e[2].mode, 0644);
        assert_int_equal(g.e[2].uid, 1000);
        assert_int_equal(g.e[2].gid, 1001);
        assert_int_equal(g.e[2].mtime, 1700000000);
        assert_int_equal(g.e[3].type, TAR_SYMLINK);
        assert_string_equal(g.link[3], "/bin/busybox"); /* symlink targets stay as stored */
        assert_int_equal(g.e[4].type, TAR_HARDLINK);
        assert_string_equal(g.link[4], "etc/hostname"); /* hard link targets are normalised */
        assert_int_equal(g.e[5].type, TAR_CHR);
        assert_int_equal(g.e[5].devmajor, 5);
        assert_int_equal(g.e[5].devminor, 1);
        assert_int_equal(g.e[6].type, TAR_FIFO);
        assert_int_equal(g.e[7].type, TAR_DIR);
        assert_string_equal(g.path[7], "olddir");
        assert_int_equal(g.e[9].type, TAR_DIR);
        assert_int_equal(g.e[9].size, 0);
        free(t.p);
}

static void test_prefix_and_long_names(void **state) {
        struct tbuf t = {0};
        struct got g;
        uint8_t h[TAR_BLOCK];
        char longname[400], longlink[400];
        (void)state;

        /* ustar prefix + name */
        hdr_raw(h, "file", '0', 0, NULL);
        memcpy(h + 345, "some/prefix/dir", 15);
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        /* a name of exactly 100 bytes, not NUL-terminated */
        memset(longname, 'q', 100);
        longname[100] = '\0';
        add(&t, longname, '0', NULL, 0, NULL);
        /* GNU long name and long link */
        memset(longname, 0, sizeof(longname));
        for (int i = 0; i < 350; i++)
                longname[i] = i % 50 == 49 ? '/' : 'L';
        memset(longlink, 0, sizeof(longlink));
        for (int i = 0; i < 300; i++)
                longlink[i] = i % 60 == 59 ? '/' : 'K';
        add(&t, "././@LongLink", 'L', longname, strlen(longname) + 1, NULL);
        add(&t, "././@LongLink", 'K', longlink, strlen(longlink) + 1, NULL);
        add(&t, "truncated-name", '2', NULL, 0, "truncated-link");
        /* PAX wins over the header */
        add_pax(&t, (const char *const[]){"path=pax/name", "linkpath=pax/target", NULL});
        add(&t, "header/name", '1', NULL, 0, "header/target");
        finish(&t);

        assert_int_equal(parse(&t, &g, NULL, 0), 0);
        assert_int_equal(g.n, 4);
        assert_string_equal(g.path[0], "some/prefix/dir/file");
        assert_int_equal(strlen(g.path[1]), 100);
        longname[349] = '\0'; /* the trailing '/' is dropped */
        assert_string_equal(g.path[2], longname);
        assert_string_equal(g.link[2], longlink);
        assert_string_equal(g.path[3], "pax/name");
        assert_string_equal(g.link[3], "pax/target");
        assert_int_equal(g.e[3].header_offset, (size_t)(t.len - 2 * TAR_BLOCK - 3 * TAR_BLOCK));
        free(t.p);
}

static void test_pax_fields(void **state) {
        struct tbuf t = {0};
        struct got g;
        char data[3000];
        uint8_t h[TAR_BLOCK];
        (void)state;

        memset(data, 'd', sizeof(data));
        add_pax(&t, (const char *const[]){"mtime=-1.25", "uid=4000000000", "gid=7",
                                          "SCHILY.xattr.user.a=first", "SCHILY.xattr.user.a=second",
                                          "atime=1.5", "comment=ignored", NULL});
        add(&t, "f", '0', "abc", 3, NULL);
        /* a PAX size overrides the header's (used for files over 8 GiB) */
        add_pax(&t, (const char *const[]){"size=3000", NULL});
        hdr_raw(h, "sized", '0', 0, NULL);
        tb_put(&t, h, TAR_BLOCK);
        tb_put(&t, data, sizeof(data));
        tb_pad(&t);
        /* base-256 size field */
        hdr_raw(h, "b256", '0', 0, NULL);
        memset(h + 124, 0, 12);
        h[124] = 0x80;
        h[134] = 0x01; /* 256 + 4 */
        h[135] = 0x04;
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        tb_put(&t, data, 260);
        tb_pad(&t);
        finish(&t);

        assert_int_equal(parse(&t, &g, NULL, 0), 0);
        assert_int_equal(g.n, 3);
        assert_int_equal(g.e[0].mtime, -2);
        assert_int_equal(g.e[0].mtime_nsec, 750000000);
        assert_int_equal(g.e[0].uid, 4000000000u);
        assert_int_equal(g.e[0].gid, 7);
        assert_int_equal(g.nx[0], 1); /* a repeated xattr replaces */
        assert_string_equal(g.xname[0], "user.a");
        assert_int_equal(g.xlen[0], 6);
        assert_memory_equal(g.xval[0], "second", 6);
        assert_int_equal(g.e[1].size, 3000);
        assert_int_equal(g.e[1].nxattrs, 0); /* overrides apply to one entry only */
        assert_int_equal(g.e[1].uid, 1000);
        assert_int_equal(g.e[2].size, 260);
        free(t.p);
}

static void test_binary_xattr(void **state) {
        struct tbuf t = {0};
        struct got g;
        /* "17 SCHILY.xattr.security.capability=\x01\x00\x00\x02\n" with NULs in the value */
        static const char rec[] = "SCHILY.xattr.security.capability=\x01\x00\x00\x02\n";
        char data[128];
        int n = snprintf(data, sizeof(data), "%zu ", sizeof(rec) - 1 + 3);
        (void)state;

        memcpy(data + n, rec, sizeof(rec) - 1);
        add(&t, "PaxHeaders/x", 'x', data, (size_t)n + sizeof(rec) - 1, NULL);
        add(&t, "bin/ping", '0', NULL, 0, NULL);
        finish(&t);
        assert_int_equal(parse(&t, &g, NULL, 0), 0);
        assert_int_equal(g.n, 1);
        assert_string_equal(g.xname[0], "security.capability");
        assert_int_equal(g.xlen[0], 4);
        assert_memory_equal(g.xval[0], "\x01\x00\x00\x02", 4);
        free(t.p);
}

static void test_whiteouts(void **state) {
        struct tbuf t = {0};
        struct got g;
        (void)state;

        add(&t, "etc/.wh.passwd", '0', NULL, 0, NULL);
        add(&t, "var/cache/.wh..wh..opq", '0', NULL, 0, NULL);
        add(&t, ".wh.top", '0', NULL, 0, NULL);
        add(&t, ".wh..wh..opq", '0', NULL, 0, NULL);
        add(&t, ".wh..wh.plnk", '5', NULL, 0, NULL);  /* aufs bookkeeping: not a file */
        add(&t, "a/.wh..hidden", '0', NULL, 0, NULL); /* whiteout of a dot file */
        finish(&t);
        assert_int_equal(parse(&t, &g, NULL, 0), 0);
        assert_int_equal(g.n, 5);
        assert_int_equal(g.e[0].type, TAR_WHITEOUT);
        assert_string_equal(g.path[0], "etc/passwd");
        assert_int_equal(g.e[1].type, TAR_OPAQUE);
        assert_string_equal(g.path[1], "var/cache");
        assert_int_equal(g.e[2].type, TAR_WHITEOUT);
        assert_string_equal(g.path[2], "top");
        assert_int_equal(g.e[3].type, TAR_OPAQUE);
        assert_string_equal(g.path[3], "");
        assert_int_equal(g.e[4].type, TAR_WHITEOUT);
        assert_string_equal(g.path[4], "a/.hidden");
        free(t.p);
}

/* Refusals: each archive must fail with ERR (whole and byte by byte). */
static void expect_refused(struct tbuf *t, int err, const char *what) {
        struct got g;
        char msg[256];
        int r = parse(t, &g, msg, sizeof(msg));

        if (r != err)
                fail_msg("%s: parse = %d (%s); want %d", what, r, msg, err);
        free(t->p);
        memset(t, 0, sizeof(*t));
}

static void test_refusals(void **state) {
        struct tbuf t = {0};
        uint8_t h[TAR_BLOCK];
        char big[PATH_MAX + 100];
        (void)state;

        add(&t, "a/../../etc/passwd", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EINVAL, "dotdot");

        add(&t, "../x", '2', NULL, 0, "y");
        finish(&t);
        expect_refused(&t, -EINVAL, "dotdot at the start");

        add(&t, "x", '1', NULL, 0, "../../etc/shadow");
        finish(&t);
        expect_refused(&t, -EINVAL, "hard link escaping");

        add(&t, "x", '1', NULL, 0, "/");
        finish(&t);
        expect_refused(&t, -EINVAL, "hard link to the root");

        add(&t, "x", '2', NULL, 0, "");
        finish(&t);
        expect_refused(&t, -EINVAL, "empty symlink");

        add(&t, "dir/.wh.", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EINVAL, "empty whiteout");

        add(&t, ".wh...", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EINVAL, "whiteout of ..");

        add(&t, ".", '0', "x", 1, NULL); /* "./" with type 0 would be a directory */
        finish(&t);
        expect_refused(&t, -EINVAL, "root as a file");

        memset(big, 'n', sizeof(big));
        big[PATH_MAX + 99] = '\0';
        add(&t, "././@LongLink", 'L', big, PATH_MAX + 100, NULL);
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -ENAMETOOLONG, "gnu long name over PATH_MAX");

        {
                char rec[PATH_MAX + 20];
                snprintf(rec, sizeof(rec), "path=");
                memset(rec + 5, 'p', PATH_MAX);
                rec[5 + PATH_MAX] = '\0';
                /* add_pax's buffer is too small for this; write the record by hand */
                char data[PATH_MAX + 64];
                size_t body = strlen(rec) + 2;
                int n = snprintf(data, sizeof(data), "%zu %s\n", body + 4, rec);
                add(&t, "PaxHeaders/x", 'x', data, (size_t)n, NULL);
                add(&t, "x", '0', NULL, 0, NULL);
                finish(&t);
                expect_refused(&t, -ENAMETOOLONG, "pax path over PATH_MAX");
        }

        /* a PAX header claiming more than the bound is refused before any allocation */
        hdr_raw(h, "PaxHeaders/x", 'x', TAR_PAX_MAX + 1, NULL);
        tb_put(&t, h, TAR_BLOCK);
        expect_refused(&t, -E2BIG, "huge pax header");

        add_pax(&t, (const char *const[]){"GNU.sparse.major=1", NULL});
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EOPNOTSUPP, "pax sparse");

        add(&t, "x", 'S', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EOPNOTSUPP, "gnu sparse");

        add(&t, "x", 'Z', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EOPNOTSUPP, "unknown type");

        /* malformed PAX records */
        add(&t, "PaxHeaders/x", 'x', "99 path=x\n", 10, NULL);
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax record longer than the header");
        add(&t, "PaxHeaders/x", 'x', "9 pathx\n\n", 9, NULL);
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax record without =");
        add(&t, "PaxHeaders/x", 'x', "10 path=xy", 10, NULL);
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax record without newline");
        add(&t, "PaxHeaders/x", 'x', "x path=xy\n", 10, NULL);
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax record without a length");
        add_pax(&t, (const char *const[]){"size=12x", NULL});
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax size junk");
        add_pax(&t, (const char *const[]){"uid=4294967296", NULL});
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax uid over 32 bits");
        add_pax(&t, (const char *const[]){"path=x", NULL});
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax header without an entry");

        /* xattr bounds */
        {
                static char rec[TAR_XATTR_VALUE_MAX + 64];
                int n = snprintf(rec, sizeof(rec), "SCHILY.xattr.user.big=");
                memset(rec + n, 'v', TAR_XATTR_VALUE_MAX + 1);
                rec[n + TAR_XATTR_VALUE_MAX + 1] = '\0';
                static char data[TAR_XATTR_VALUE_MAX + 128];
                size_t body = strlen(rec) + 2;
                int m = snprintf(data, sizeof(data), "%zu %s\n", body + 5, rec);
                add(&t, "PaxHeaders/x", 'x', data, (size_t)m, NULL);
                add(&t, "x", '0', NULL, 0, NULL);
                finish(&t);
                expect_refused(&t, -E2BIG, "xattr value over 64 KiB");
        }

        /* checksums, magic, numbers */
        hdr_raw(h, "x", '0', 0, NULL);
        h[0] = 'y';
        tb_put(&t, h, TAR_BLOCK);
        finish(&t);
        expect_refused(&t, -EBADMSG, "bad checksum");
        hdr_raw(h, "x", '0', 0, NULL);
        memcpy(h + 257, "pstar", 5);
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        finish(&t);
        expect_refused(&t, -EBADMSG, "no ustar magic");
        hdr_raw(h, "x", '0', 0, NULL);
        memcpy(h + 124, "0000000009x", 11);
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        finish(&t);
        expect_refused(&t, -EBADMSG, "size not octal");
        hdr_raw(h, "x", '0', 0, NULL);
        memset(h + 124, 0xff, 12); /* base-256 negative */
        resum(h);
        tb_put(&t, h, TAR_BLOCK);
        finish(&t);
        expect_refused(&t, -EBADMSG, "negative size");

        /* sizes that lie */
        hdr_raw(h, "x", '0', 10000, NULL);
        tb_put(&t, h, TAR_BLOCK);
        tb_put(&t, big, 600);
        finish(&t);
        expect_refused(&t, -EBADMSG, "size larger than the archive");
        hdr_raw(h, "x", '0', 100, NULL); /* 1000 bytes follow: the rest is read as a header */
        tb_put(&t, h, TAR_BLOCK);
        tb_put(&t, big, 1000);
        tb_pad(&t);
        finish(&t);
        expect_refused(&t, -EBADMSG, "size smaller than the data");

        /* truncations */
        add(&t, "x", '0', "data", 4, NULL);
        expect_refused(&t, -EBADMSG, "no end-of-archive block");
        add(&t, "x", '0', "data", 4, NULL);
        t.len -= 300;
        expect_refused(&t, -EBADMSG, "cut in the data");
        add(&t, "x", '0', "data", 4, NULL);
        add(&t, "y", '0', NULL, 0, NULL);
        t.len -= 100;
        expect_refused(&t, -EBADMSG, "cut in a header");
        expect_refused(&t, -EBADMSG, "empty stream");

        /* too many extended headers before one entry */
        for (int i = 0; i <= TAR_META_CHAIN_MAX; i++)
                add_pax(&t, (const char *const[]){"uid=1", NULL});
        add(&t, "x", '0', NULL, 0, NULL);
        finish(&t);
        expect_refused(&t, -EBADMSG, "pax chain");
}

static int refuse_cb(void *ctx, const struct tar_entry *e) {
        (void)ctx;
        return strcmp(e->path, "stop") == 0 ? -ECANCELED : 0;
}

static void test_callback_error_and_tail(void **state) {
        struct tbuf t = {0};
        struct tar_parser *p;
        (void)state;

        add(&t, "go", '0', NULL, 0, NULL);
        add(&t, "stop", '0', NULL, 0, NULL);
        finish(&t);
        p = tar_parser_new(refuse_cb, NULL);
        assert_int_equal(tar_parser_feed(p, t.p, t.len), -ECANCELED);
        assert_int_equal(tar_parser_feed(p, t.p, 1), -ECANCELED); /* sticky */
        assert_int_equal(tar_parser_finish(p), -ECANCELED);
        assert_non_null(strstr(tar_parser_error(p), "stop"));
        tar_parser_free(p);

        /* one zero block ends the archive; what follows is counted and ignored */
        t.len = 2 * TAR_BLOCK - TAR_BLOCK; /* "go" only */
        t.len = TAR_BLOCK;
        {
                uint8_t z[TAR_BLOCK] = {0};
                tb_put(&t, z, sizeof(z));
                tb_put(&t, "garbage", 7);
        }
        p = tar_parser_new(refuse_cb, NULL);
        assert_int_equal(tar_parser_feed(p, t.p, t.len), 0);
        assert_int_equal(tar_parser_finish(p), 0);
        assert_int_equal(tar_parser_offset(p), t.len);
        tar_parser_free(p);
        free(t.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_normalise),
                cmocka_unit_test(test_ustar_types),
                cmocka_unit_test(test_prefix_and_long_names),
                cmocka_unit_test(test_pax_fields),
                cmocka_unit_test(test_binary_xattr),
                cmocka_unit_test(test_whiteouts),
                cmocka_unit_test(test_refusals),
                cmocka_unit_test(test_callback_error_and_tail),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
