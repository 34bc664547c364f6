/* Unit tests for the layer trees: layertree/spancache.c (bound, LRU order, partial blocks,
 * duplicates), index/layers.c (rows survive a reopen, absent digests stay absent, read-only
 * connections refuse writes), and layertree/ itself on a real engine, store and index with a
 * fake source serving blobs from memory: the pass, the index from the store after a restart,
 * the index from a peer (taken when it names the layer, refused when it indexes another one:
 * then the pass runs). A temporary directory per test. */
#include <errno.h>
#include <pthread.h>
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
#include <ftw.h>

#include "cache/store.h"
#include "engine/engine.h"
#include "layertree/layertree.h"

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

/* ---- the tree on a real engine --------------------------------------------------------- */

#define CS (64u << 10)

struct fblob {
        struct digest d;
        uint8_t *data;
        size_t len;
};

static struct fblob fblobs[8];
static int nfblobs;

static struct fblob *fblob_of(const struct digest *d) {
        for (int i = 0; i < nfblobs; i++)
                if (digest_equal(&fblobs[i].d, d))
                        return &fblobs[i];
        return NULL;
}

static struct digest serve(const void *data, size_t len) {
        assert_true(nfblobs < 8);
        struct fblob *b = &fblobs[nfblobs++];
        b->data = malloc(len);
        assert_non_null(b->data);
        memcpy(b->data, data, len);
        b->len = len;
        digest_sha256(data, len, &b->d);
        return b->d;
}

static void fake_fetch(void *ud, const struct digest *blob, uint64_t size, const char *source,
                       uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms,
                       engine_fetch_done_fn done, void *ctx) {
        (void)ud, (void)size, (void)source, (void)idx, (void)deadline_ms;
        struct fblob *b = fblob_of(blob);
        uint8_t *buf = b && off + len <= b->len ? malloc(len) : NULL;
        if (!buf) {
                done(ctx, -ENOENT, "not served", NULL, 0, NULL);
                return;
        }
        memcpy(buf, b->data + off, len);
        done(ctx, 0, NULL, buf, len, NULL);
}

static int fake_lookup(void *ud, const struct digest *blob, uint64_t deadline_ms,
                       uint64_t *ret_size, char *ret_source, size_t source_len) {
        (void)ud, (void)deadline_ms;
        struct fblob *b = fblob_of(blob);
        if (!b)
                return -ENOENT;
        *ret_size = b->len;
        snprintf(ret_source, source_len, "reg.test:5000/x");
        return 0;
}

static int fake_size(void *ud, const char *source, const struct digest *blob, uint64_t deadline_ms,
                     uint64_t *ret_size, char *reason, size_t reason_len) {
        (void)ud, (void)source, (void)deadline_ms;
        struct fblob *b = fblob_of(blob);
        if (!b) {
                snprintf(reason, reason_len, "no such blob");
                return -ENOENT;
        }
        *ret_size = b->len;
        return 0;
}

/* A one-file ustar archive: NAME holding DATA. */
static size_t make_tar(uint8_t *out, size_t cap, const char *name, const void *data, size_t len) {
        size_t total = 512 + (len + 511) / 512 * 512 + 1024;
        assert_true(total <= cap);
        memset(out, 0, total);
        snprintf((char *)out, 100, "%s", name);
        snprintf((char *)out + 100, 8, "%07o", 0644);
        snprintf((char *)out + 108, 8, "%07o", 0);
        snprintf((char *)out + 116, 8, "%07o", 0);
        snprintf((char *)out + 124, 12, "%011zo", len);
        snprintf((char *)out + 136, 12, "%011o", 1700000000u);
        out[156] = '0';
        memcpy(out + 257, "ustar", 6);
        memcpy(out + 263, "00", 2);
        memset(out + 148, ' ', 8);
        unsigned sum = 0;
        for (int i = 0; i < 512; i++)
                sum += out[i];
        snprintf((char *)out + 148, 8, "%06o", sum);
        memcpy(out + 512, data, len);
        return total;
}

/* The encoded index of the tar TAR (LEN bytes), as a node that ran the pass stores it. */
static struct digest encoded_index(const uint8_t *tar, size_t len, uint8_t **ret, size_t *ret_len) {
        struct digest layer, d;
        digest_sha256(tar, len, &layer);
        struct layer_build_opts o = {.blob_digest = &layer};
        struct layer_builder *b = layer_builder_new(&o);
        struct layer_index *ix;
        assert_int_equal(layer_builder_feed(b, tar, len), 0);
        assert_int_equal(layer_builder_finish(b, &ix), 0);
        layer_builder_free(b);
        assert_int_equal(layer_index_encode(ix, ret, ret_len, &d), 0);
        layer_index_free(ix);
        return d;
}

struct node {
        char dir[64];
        struct store *store;
        struct index *ix;
        struct engine *e;
        struct ltree *lt;
};

struct peer_fake {
        bool have;
        struct digest index;
        uint64_t size;
        int located, published;
};

static int fake_locate(void *ud, const struct digest *layer, uint64_t deadline_ms,
                       struct digest *ret_index, uint64_t *ret_size) {
        (void)layer, (void)deadline_ms;
        struct peer_fake *p = ud;
        p->located++;
        if (!p->have)
                return -ENOENT;
        *ret_index = p->index;
        *ret_size = p->size;
        return 0;
}

static void fake_publish(void *ud, const struct digest *layer, const struct digest *index,
                         uint64_t size) {
        (void)layer, (void)index, (void)size;
        __atomic_add_fetch(&((struct peer_fake *)ud)->published, 1, __ATOMIC_SEQ_CST);
}

static void node_tree(struct node *n, struct peer_fake *pf) {
        struct ltree_config lc = {.span_cache_bytes = 1 << 20, .max_layers = 8, .workers = 2};
        struct ltree_peer_ops ops = {
                .ud = pf, .locate_index = fake_locate, .publish_index = fake_publish};
        assert_int_equal(ltree_new(&lc, n->e, n->ix, pf ? &ops : NULL, &n->lt), 0);
}

static void node_start(struct node *n, struct peer_fake *pf) {
        char path[128];
        if (!n->dir[0]) {
                snprintf(n->dir, sizeof(n->dir), "/tmp/p2pblobs-test-ltree-XXXXXX");
                assert_non_null(mkdtemp(n->dir));
        }
        assert_int_equal(store_open(n->dir, &n->store), 0);
        snprintf(path, sizeof(path), "%s/index.db", n->dir);
        assert_int_equal(idx_open(path, &n->ix), 0);
        struct engine_config ec = {.cache_budget = 256 * CS,
                                   .chunk_size = CS,
                                   .readahead_chunks = 2,
                                   .max_inflight = 8,
                                   .workers = 2,
                                   .fetch_timeout_ms = 5000,
                                   .verify_retry_ms = 1000,
                                   .max_blobs = 16,
                                   .max_read = 1 << 20};
        struct engine_source_ops src = {
                .fetch = fake_fetch, .lookup = fake_lookup, .blob_size = fake_size};
        assert_int_equal(engine_new(&ec, n->ix, n->store, &src, &n->e), 0);
        assert_int_equal(engine_load(n->e), 0);
        node_tree(n, pf);
}

static void node_stop(struct node *n) {
        ltree_free(n->lt);
        engine_stop_fetching(n->e);
        engine_free(n->e);
        idx_close(n->ix);
        store_close(n->store);
        n->lt = NULL;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)st, (void)flag, (void)ftw;
        return remove(path) < 0 ? -errno : 0;
}

static void node_remove(struct node *n) {
        nftw(n->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

struct answer {
        pthread_mutex_t m;
        pthread_cond_t c;
        bool done;
        int err;
        uint8_t buf[4096];
        size_t len;
};

static void on_answer(void *ctx, int err, const void *buf, size_t len) {
        struct answer *a = ctx;
        pthread_mutex_lock(&a->m);
        a->err = err;
        a->len = err < 0 || len > sizeof(a->buf) ? 0 : len;
        if (a->len)
                memcpy(a->buf, buf, a->len);
        a->done = true;
        pthread_cond_signal(&a->c);
        pthread_mutex_unlock(&a->m);
}

/* Adds the layer, waits for it, reads its one file and checks the bytes. Its origin. */
static enum ltree_index_origin add_and_read(struct node *n, const struct digest *layer,
                                            const char *data) {
        char ref[128], hex[DIGEST_HEX_LEN + 1], reason[200];
        struct ltree_layer_info info;
        digest_to_hex(layer, hex);
        snprintf(ref, sizeof(ref), "reg.test:5000/x@sha256:%s", hex);
        assert_int_equal(ltree_add(n->lt, ref, NULL, NULL, NULL, &info, reason, sizeof(reason)), 0);
        assert_int_equal(ltree_wait(n->lt, layer, 10000, &info), 0);
        const struct layer_index *ix;
        assert_int_equal(ltree_index_get(n->lt, info.id, &ix), 0);
        ssize_t f = layer_index_lookup(ix, "hello");
        assert_true(f > 0);
        ltree_index_put(n->lt, info.id);
        struct answer a = {.m = PTHREAD_MUTEX_INITIALIZER, .c = PTHREAD_COND_INITIALIZER};
        ltree_read(n->lt, info.id, (uint32_t)f, 0, 4096, on_answer, &a);
        pthread_mutex_lock(&a.m);
        while (!a.done)
                pthread_cond_wait(&a.c, &a.m);
        pthread_mutex_unlock(&a.m);
        assert_int_equal(a.err, 0);
        assert_int_equal(a.len, strlen(data));
        assert_memory_equal(a.buf, data, a.len);
        return info.index_origin;
}

static void test_tree_pass_store_peer(void **state) {
        (void)state;
        static uint8_t tar[8192], other[8192];
        const char *data = "hello, layer\n";
        size_t len = make_tar(tar, sizeof(tar), "hello", data, strlen(data));
        size_t olen = make_tar(other, sizeof(other), "hello", "other\n", 6);
        struct digest layer = serve(tar, len);
        serve(other, olen);
        uint8_t *enc, *oenc;
        size_t enc_len, oenc_len;
        struct digest ixd = encoded_index(tar, len, &enc, &enc_len);
        struct digest oixd = encoded_index(other, olen, &oenc, &oenc_len);

        /* A: alone, runs the pass; after a restart the index comes from its store. */
        struct node a = {0};
        node_start(&a, NULL);
        assert_int_equal(add_and_read(&a, &layer, data), LTREE_INDEX_BUILT);
        struct ltree_layer_info info;
        assert_int_equal(ltree_find(a.lt, &layer, &info), 0);
        assert_true(digest_equal(&info.index_digest, &ixd)); /* deterministic: one name */
        node_stop(&a);
        node_start(&a, NULL);
        assert_int_equal(ltree_wait(a.lt, &layer, 10000, &info), 0);
        assert_int_equal(info.index_origin, LTREE_INDEX_LOCAL);
        struct ltree_stats st;
        ltree_get_stats(a.lt, &st);
        assert_int_equal(st.indexes_local, 1);
        assert_int_equal(st.indexes_built, 0);
        node_stop(&a);
        node_remove(&a);

        /* B: a peer names the index: taken, no pass. */
        serve(enc, enc_len);
        struct peer_fake pf = {.have = true, .index = ixd, .size = enc_len};
        struct node b = {0};
        node_start(&b, &pf);
        assert_int_equal(add_and_read(&b, &layer, data), LTREE_INDEX_PEER);
        assert_int_equal(pf.located, 1);
        /* Published after the layer is READY (waiters may see READY first). */
        for (int i = 0; i < 500 && !__atomic_load_n(&pf.published, __ATOMIC_SEQ_CST); i++)
                usleep(10000);
        assert_int_equal(__atomic_load_n(&pf.published, __ATOMIC_SEQ_CST), 1);
        node_stop(&b);
        node_remove(&b);

        /* C: the peer's index is another layer's (a valid index, wrong layer): refused, and
         * the pass runs. */
        serve(oenc, oenc_len);
        struct peer_fake bad = {.have = true, .index = oixd, .size = oenc_len};
        struct node c = {0};
        node_start(&c, &bad);
        assert_int_equal(add_and_read(&c, &layer, data), LTREE_INDEX_BUILT);
        assert_int_equal(bad.located, 1);
        node_stop(&c);
        node_remove(&c);

        free(enc);
        free(oenc);
        for (int i = 0; i < nfblobs; i++)
                free(fblobs[i].data);
        nfblobs = 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_spancache_hit_miss),
                cmocka_unit_test(test_spancache_bound_lru),
                cmocka_unit_test(test_layers_rows),
                cmocka_unit_test(test_tree_pass_store_peer),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
