/* Unit tests for the pure parts of the layer trees: layertree/spancache.c (bound, LRU order,
 * partial blocks, duplicates) and index/layers.c (rows survive a reopen, absent digests stay
 * absent, read-only connections refuse writes). A real index.db in a temporary directory. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "index/index.h"
#include "index/layers.h"
#include "layertree/spancache.h"

static void *block(size_t len, uint8_t fill) {
        void *p = malloc(len);
        assert_non_null(p);
        memset(p, fill, len);
        return p;
}

static void test_spancache_hit_miss(void **state) {
        (void)state;
        struct spancache *c;
        uint8_t out[16];
        assert_int_equal(spancache_new(1000, &c), 0);
        assert_int_equal(spancache_get(c, 1, 7, 0, out, 4), -ENOENT);
        spancache_put(c, 1, 7, block(100, 0xab), 100);
        assert_int_equal(spancache_get(c, 1, 7, 96, out, 4), 0);
        assert_int_equal(out[0], 0xab);
        assert_int_equal(spancache_get(c, 1, 7, 97, out, 4), -ENOENT); /* past the block */
        assert_int_equal(spancache_get(c, 2, 7, 0, out, 4), -ENOENT);  /* another layer */
        assert_int_equal(spancache_get(c, 1, 8, 0, out, 4), -ENOENT);  /* another block */
        spancache_put(c, 1, 7, block(100, 0xcd), 100);                 /* a duplicate is dropped */
        assert_int_equal(spancache_get(c, 1, 7, 0, out, 1), 0);
        assert_int_equal(out[0], 0xab);
        struct spancache_stats st;
        spancache_get_stats(c, &st);
        assert_int_equal(st.bytes, 100);
        assert_int_equal(st.blocks, 1);
        assert_int_equal(st.hits, 2);
        assert_int_equal(st.misses, 4);
        spancache_free(c);
        spancache_free(NULL);
}

static void test_spancache_bound_lru(void **state) {
        (void)state;
        struct spancache *c;
        uint8_t out[1];
        assert_int_equal(spancache_new(300, &c), 0);
        for (uint64_t b = 0; b < 3; b++)
                spancache_put(c, 0, b, block(100, (uint8_t)b), 100);
        assert_int_equal(spancache_get(c, 0, 0, 0, out, 1), 0); /* 0 is now the most recent */
        spancache_put(c, 0, 3, block(100, 3), 100);             /* evicts 1, the oldest */
        assert_int_equal(spancache_get(c, 0, 1, 0, out, 1), -ENOENT);
        assert_int_equal(spancache_get(c, 0, 0, 0, out, 1), 0);
        assert_int_equal(spancache_get(c, 0, 2, 0, out, 1), 0);
        assert_int_equal(spancache_get(c, 0, 3, 0, out, 1), 0);
        spancache_put(c, 0, 9, block(301, 9), 301); /* larger than the bound: never kept */
        assert_int_equal(spancache_get(c, 0, 9, 0, out, 1), -ENOENT);
        struct spancache_stats st;
        spancache_get_stats(c, &st);
        assert_true(st.bytes <= 300);
        assert_int_equal(st.evicted, 1);
        /* Many blocks through a small cache: the bound always holds. */
        for (uint64_t b = 100; b < 2000; b++) {
                spancache_put(c, (uint32_t)(b % 3), b, block(37, 1), 37);
                spancache_get_stats(c, &st);
                assert_true(st.bytes <= 300);
        }
        spancache_free(c);
}

static void digest_of(const char *s, struct digest *d) {
        digest_sha256(s, strlen(s), d);
}

struct rows {
        struct idx_layer v[4];
        size_t n;
};

static int collect(void *ud, const struct idx_layer *row) {
        struct rows *r = ud;
        if (r->n < 4)
                r->v[r->n++] = *row;
        return 0;
}

static void test_layers_rows(void **state) {
        (void)state;
        char dir[] = "/tmp/p2pblobs-test-ltree-XXXXXX", db[128];
        assert_non_null(mkdtemp(dir));
        snprintf(db, sizeof(db), "%s/index.db", dir);
        struct index *ix;
        struct idx_layers *l;
        assert_int_equal(idx_open(db, &ix), 0);
        assert_int_equal(idx_layers_open(ix, &l), 0);

        struct idx_layer a = {.format = 2, .state = 2, .added_at = 10, .index_size = 1234};
        digest_of("layer a", &a.digest);
        snprintf(a.source, sizeof(a.source), "reg:5000/x");
        snprintf(a.media_type, sizeof(a.media_type), "application/vnd.oci.image.layer.v1.tar");
        a.has_diff_id = a.has_index = true;
        digest_of("diff a", &a.diff_id);
        digest_of("index a", &a.index_digest);
        struct idx_layer b = {.state = 3, .added_at = 20};
        digest_of("layer b", &b.digest);
        snprintf(b.error, sizeof(b.error), "unexpected end of gzip stream");
        assert_int_equal(idx_layer_put(l, &b), 0);
        assert_int_equal(idx_layer_put(l, &a), 0);
        a.state = 2; /* a replace, not a second row */
        assert_int_equal(idx_layer_put(l, &a), 0);
        idx_layers_close(l);
        idx_close(ix);

        assert_int_equal(idx_open_readonly(db, &ix), 0);
        assert_int_equal(idx_layers_open(ix, &l), 0);
        struct rows r = {0};
        assert_int_equal(idx_layers_for_each(l, collect, &r), 0);
        assert_int_equal(r.n, 2);
        assert_true(digest_equal(&r.v[0].digest, &a.digest)); /* added_at order */
        assert_string_equal(r.v[0].source, a.source);
        assert_string_equal(r.v[0].media_type, a.media_type);
        assert_true(r.v[0].has_diff_id && r.v[0].has_index && !r.v[0].has_toc_digest);
        assert_true(digest_equal(&r.v[0].diff_id, &a.diff_id));
        assert_true(digest_equal(&r.v[0].index_digest, &a.index_digest));
        assert_int_equal(r.v[0].index_size, 1234);
        assert_int_equal(r.v[0].format, 2);
        assert_false(r.v[1].has_diff_id || r.v[1].has_index);
        assert_string_equal(r.v[1].error, b.error);
        assert_int_equal(r.v[1].state, 3);
        assert_int_equal(idx_layer_put(l, &a), -EROFS);
        idx_layers_close(l);
        idx_layers_close(NULL);
        idx_close(ix);

        char p[192];
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
                snprintf(p, sizeof(p), "%s%s", db, suffix[i]);
                unlink(p);
        }
        rmdir(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_spancache_hit_miss),
                cmocka_unit_test(test_spancache_bound_lru),
                cmocka_unit_test(test_layers_rows),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
