/* Unit tests for engine/derived.c, the streaming put, against a real chunk store and a real
 * index in a private temporary directory; the engine's sources are a fake that fails every
 * fetch (and counts them), since a put blob must be served without any.
 *
 * Checked: a blob written in uneven pieces is invisible until finish, then registered,
 * verified, all present, read back and served to peers without a fetch, and still there after
 * a restart; the staging file never outlives the put (finish, a wrong digest, abort, a put over
 * the quarter-budget bound); several puts together stay under the budget; a put of a blob
 * already stored; an empty put; the callback adapter (engine_put_sink_write); and the whole
 * path short of layertree: a zstd layer's pass (tests/unit/layer_gen.py's tar, zstd'ed here)
 * writing its seekable copy into the engine, and every file read back through the engine. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zstd.h>

#include "cache/store.h"
#include "engine/engine.h"
#include "index/index.h"
#include "layer/layer.h"
#include "util/digest.h"

#define CS (64 * 1024)
#define BUDGET (64 * CS)

static unsigned fetches; /* atomic */

static void fail_fetch(void *ud, const struct digest *blob, uint64_t size, const char *source,
                       uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms,
                       engine_fetch_done_fn done, void *ctx) {
        (void)ud, (void)blob, (void)size, (void)source, (void)idx, (void)off, (void)len;
        (void)deadline_ms;
        __atomic_add_fetch(&fetches, 1, __ATOMIC_RELAXED);
        done(ctx, -EIO, "no sources in this test", NULL, 0, NULL);
}

static int no_size(void *ud, const char *source, const struct digest *blob, uint64_t deadline_ms,
                   uint64_t *ret_size, char *reason, size_t reason_len) {
        (void)ud, (void)source, (void)blob, (void)deadline_ms, (void)ret_size;
        snprintf(reason, reason_len, "no origin in this test");
        return -ENOENT;
}

struct fixture {
        uint64_t budget;
        char dir[256];
        struct store *store;
        struct index *ix;
        struct engine *e;
};

static void start(struct fixture *fx) {
        char path[512];
        struct engine_config cfg = {
                .cache_budget = fx->budget ? fx->budget : BUDGET,
                .chunk_size = CS,
                .readahead_chunks = 2,
                .max_inflight = 8,
                .workers = 1,
                .fetch_timeout_ms = 5000,
                .verify_retry_ms = 1000,
                .max_blobs = 16,
                .max_read = 4 * CS,
        };
        struct engine_source_ops ops = {.fetch = fail_fetch, .blob_size = no_size};

        assert_int_equal(store_open(fx->dir, &fx->store), 0);
        snprintf(path, sizeof(path), "%s/index.db", fx->dir);
        assert_int_equal(idx_open(path, &fx->ix), 0);
        assert_int_equal(engine_new(&cfg, fx->ix, fx->store, &ops, &fx->e), 0);
        assert_int_equal(engine_load(fx->e), 0);
}

static void stop(struct fixture *fx) {
        engine_stop_fetching(fx->e);
        engine_free(fx->e);
        idx_close(fx->ix);
        store_close(fx->store);
        fx->e = NULL;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)st, (void)flag, (void)ftw;
        return remove(path) < 0 ? -errno : 0;
}

static int setup(void **state) {
        struct fixture *fx = calloc(1, sizeof(*fx));
        assert_non_null(fx);
        snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_engine_put.XXXXXX");
        assert_non_null(mkdtemp(fx->dir));
        start(fx);
        *state = fx;
        return 0;
}

static int teardown(void **state) {
        struct fixture *fx = *state;
        if (fx->e)
                stop(fx);
        nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(fx);
        return 0;
}

/* Files in the store's blob directory. */
static int store_files(const struct fixture *fx) {
        char path[512];
        struct dirent *de;
        int n = 0;
        DIR *d;

        snprintf(path, sizeof(path), "%s", store_dir(fx->store));
        d = opendir(path);
        if (!d)
                return 0;
        while ((de = readdir(d)))
                n += de->d_name[0] != '.';
        closedir(d);
        return n;
}

static uint8_t *pattern(size_t len, unsigned seed) {
        uint8_t *p = malloc(len);
        uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);

        assert_non_null(p);
        for (size_t i = 0; i < len; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (uint8_t)x;
        }
        return p;
}

/* Writes DATA in pieces of 1..PIECE bytes. */
static void write_all(struct engine_put_stream *p, const uint8_t *data, size_t len, size_t piece) {
        for (size_t off = 0; off < len;) {
                size_t n = 1 + (size_t)rand() % piece;
                if (n > len - off)
                        n = len - off;
                assert_int_equal(engine_put_write(p, data + off, n), 0);
                off += n;
        }
}

struct reply {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        bool done;
        int err;
        uint8_t buf[4 * CS];
        size_t len;
};

static void on_reply(void *ctx, int err, const void *buf, size_t len) {
        struct reply *r = ctx;
        pthread_mutex_lock(&r->mu);
        r->err = err;
        if (err == 0) {
                memcpy(r->buf, buf, len);
                r->len = len;
        }
        r->done = true;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
}

static int read_sync(struct engine *e, uint32_t id, uint64_t off, size_t len, struct reply *r) {
        memset(r, 0, sizeof(*r));
        pthread_mutex_init(&r->mu, NULL);
        pthread_cond_init(&r->cv, NULL);
        engine_read(e, id, off, len, NULL, on_reply, r);
        pthread_mutex_lock(&r->mu);
        while (!r->done)
                pthread_cond_wait(&r->cv, &r->mu);
        pthread_mutex_unlock(&r->mu);
        return r->err;
}

static void test_put_stream(void **state) {
        struct fixture *fx = *state;
        size_t len = 5 * CS + 12345;
        uint8_t *data = pattern(len, 1), out[CS];
        struct engine_put_stream *p;
        struct engine_blob_info info;
        struct digest d, want;
        static struct reply r;
        uint64_t size = 0;
        bool known;

        digest_sha256(data, len, &want);
        assert_int_equal(engine_put_begin(fx->e, "registry.test/derived", NULL, &p), 0);
        write_all(p, data, len, 3 * CS);
        /* before finish: nothing to see, only the staging file */
        assert_int_equal(engine_find(fx->e, &want, &info), -ENOENT);
        assert_int_equal(engine_blob_count(fx->e), 0);
        assert_int_equal(store_files(fx), 1);
        assert_int_equal(engine_put_finish(p, &d, &size), 0);
        assert_true(digest_equal(&d, &want));
        assert_int_equal(size, len);
        assert_int_equal(engine_find(fx->e, &d, &info), 0);
        assert_true(info.verified);
        assert_int_equal(info.size, len);
        assert_int_equal(info.chunks_present, info.chunks);
        assert_string_equal(info.source, "registry.test/derived");
        assert_int_equal(store_files(fx), 1); /* the blob; staging gone */

        /* read and served without a fetch */
        for (uint64_t off = 0; off < len; off += 3 * CS) {
                assert_int_equal(read_sync(fx->e, info.id, off, 4 * CS, &r), 0);
                assert_int_equal(r.len, len - off < 4 * CS ? len - off : 4 * CS);
                assert_memory_equal(r.buf, data + off, r.len);
        }
        assert_int_equal(engine_serve(fx->e, &d, CS, CS, 0, out, NULL, &known), 0);
        assert_memory_equal(out, data + CS, CS);
        assert_int_equal(__atomic_load_n(&fetches, __ATOMIC_RELAXED), 0);

        /* the same blob again: fine, the same blob */
        assert_int_equal(engine_put_begin(fx->e, "registry.test/derived", &want, &p), 0);
        write_all(p, data, len, CS);
        assert_int_equal(engine_put_finish(p, NULL, NULL), 0);
        assert_int_equal(engine_blob_count(fx->e), 1);

        /* after a restart: still there, still verified */
        stop(fx);
        start(fx);
        assert_int_equal(engine_find(fx->e, &want, &info), 0);
        assert_true(info.verified);
        assert_int_equal(info.chunks_present, info.chunks);
        assert_int_equal(read_sync(fx->e, info.id, len - 100, 100, &r), 0);
        assert_memory_equal(r.buf, data + len - 100, 100);
        assert_int_equal(__atomic_load_n(&fetches, __ATOMIC_RELAXED), 0);
        free(data);
}

static void test_put_refusals(void **state) {
        struct fixture *fx = *state;
        size_t len = 3 * CS;
        uint8_t *data = pattern(len, 2);
        struct engine_put_stream *p;
        struct engine_blob_info info;
        struct digest wrong, d;
        uint8_t zero[4096] = {0};
        int files = store_files(fx);

        /* a wrong digest: refused, nothing registered, staging removed */
        memset(&wrong, 0x33, sizeof(wrong));
        assert_int_equal(engine_put_begin(fx->e, NULL, &wrong, &p), 0);
        write_all(p, data, len, CS);
        assert_int_equal(engine_put_finish(p, NULL, NULL), -EBADMSG);
        digest_sha256(data, len, &d);
        assert_int_equal(engine_find(fx->e, &d, &info), -ENOENT);
        assert_int_equal(engine_find(fx->e, &wrong, &info), -ENOENT);
        assert_int_equal(store_files(fx), files);

        /* aborted midway */
        assert_int_equal(engine_put_begin(fx->e, NULL, NULL, &p), 0);
        write_all(p, data, len, CS);
        engine_put_abort(p);
        assert_int_equal(engine_find(fx->e, &d, &info), -ENOENT);
        assert_int_equal(store_files(fx), files);
        engine_put_abort(NULL);

        /* over a quarter of the budget: -EFBIG at the write that passes it, sticky */
        assert_int_equal(engine_put_begin(fx->e, NULL, NULL, &p), 0);
        for (size_t k = 0; k < BUDGET / 4 / sizeof(zero); k++)
                assert_int_equal(engine_put_write(p, zero, sizeof(zero)), 0);
        assert_int_equal(engine_put_write(p, zero, 1), -EFBIG);
        assert_int_equal(engine_put_write(p, zero, 0), -EFBIG);
        assert_int_equal(engine_put_finish(p, NULL, NULL), -EFBIG);
        assert_int_equal(store_files(fx), files);

        /* empty */
        assert_int_equal(engine_put_begin(fx->e, NULL, NULL, &p), 0);
        assert_int_equal(engine_put_finish(p, NULL, NULL), -EINVAL);
        assert_int_equal(engine_blob_count(fx->e), 0);
        free(data);
}

/* Puts of a quarter of the budget each, many more than fit: the store stays in the budget. */
static void test_put_under_budget(void **state) {
        struct fixture *fx = *state;
        struct engine_stats st;
        size_t len = BUDGET / 4;

        for (unsigned i = 0; i < 7; i++) {
                uint8_t *data = pattern(len, 10 + i);
                struct engine_put_stream *p;
                struct engine_blob_info info;
                struct digest d;
                assert_int_equal(engine_put_begin(fx->e, NULL, NULL, &p), 0);
                write_all(p, data, len, 2 * CS);
                assert_int_equal(engine_put_finish(p, &d, NULL), 0);
                assert_int_equal(engine_find(fx->e, &d, &info), 0);
                assert_int_equal(info.chunks_present, info.chunks); /* the newest is whole */
                engine_get_stats(fx->e, &st);
                assert_true(st.used_bytes <= BUDGET);
                free(data);
        }
        engine_get_stats(fx->e, &st);
        assert_true(st.evicted_chunks > 0);
        assert_int_equal(engine_blob_count(fx->e), 7);
}

/* The adapter for callback-shaped producers: begun at the first write only. */
static void test_put_sink(void **state) {
        struct fixture *fx = *state;
        size_t len = 2 * CS + 7;
        uint8_t *data = pattern(len, 3);
        struct engine_put_sink sk = {.e = fx->e, .source = "registry.test/sink"};
        int (*fn)(void *, const void *, size_t) = engine_put_sink_write;
        struct engine_blob_info info;
        struct digest d, want;

        assert_null(sk.ps);
        for (size_t off = 0; off < len; off += 1000)
                assert_int_equal(fn(&sk, data + off, len - off < 1000 ? len - off : 1000), 0);
        assert_non_null(sk.ps);
        assert_int_equal(engine_put_finish(sk.ps, &d, NULL), 0);
        digest_sha256(data, len, &want);
        assert_true(digest_equal(&d, &want));
        assert_int_equal(engine_find(fx->e, &d, &info), 0);
        assert_string_equal(info.source, "registry.test/sink");
        free(data);
}

struct engine_fetch {
        struct engine *e;
        uint32_t id;
};

/* layer_fetch_fn over the engine, in reads of at most max_read. */
static ssize_t engine_fetch(void *ctx, uint64_t off, void *buf, size_t len) {
        struct engine_fetch *f = ctx;
        static struct reply r;
        size_t done = 0;

        while (done < len) {
                size_t n = len - done < 4 * CS ? len - done : 4 * CS;
                int e = read_sync(f->e, f->id, off + done, n, &r);
                if (e < 0)
                        return e;
                if (r.len == 0)
                        break;
                memcpy((uint8_t *)buf + done, r.buf, r.len);
                done += r.len;
        }
        return (ssize_t)done;
}

/* The whole path short of layertree: a zstd layer's pass writes its seekable copy into the
 * engine through the adapter; files are then read through the engine from the copy. */
static void test_zstd_layer_through_engine(void **state) {
        struct fixture *fx = *state;
        char dir[] = "/tmp/test_engine_put_layer_XXXXXX", cmd[1024], tarp[300], manp[300];
        struct engine_put_sink sk = {.source = "registry.test/layer"};
        struct layer_build_opts o = {.sink = engine_put_sink_write, .sink_ctx = &sk};
        struct layer_index *ix = NULL;
        struct layer_index_info info;
        struct engine_blob_info bi;
        struct engine_fetch ef;
        struct layer_reader *rd;
        struct digest d;
        uint8_t *tar, *zst, *got;
        uint64_t size;
        size_t tar_len, zlen, checked = 0;
        FILE *f;
        struct stat st;

        stop(fx);
        fx->budget = 256ull << 20;
        start(fx);
        sk.e = fx->e;
        assert_non_null(mkdtemp(dir));
        snprintf(tarp, sizeof(tarp), "%s/l.tar", dir);
        snprintf(manp, sizeof(manp), "%s/m", dir);
        snprintf(cmd, sizeof(cmd), "python3 tests/unit/layer_gen.py pax %s %s 5", tarp, manp);
        if (system(cmd) != 0)
                fail_msg("%s failed (run the tests from the repository root)", cmd);
        f = fopen(tarp, "rb");
        assert_non_null(f);
        assert_int_equal(fstat(fileno(f), &st), 0);
        tar_len = (size_t)st.st_size;
        tar = malloc(tar_len);
        assert_int_equal(fread(tar, 1, tar_len, f), tar_len);
        fclose(f);
        unlink(tarp);
        unlink(manp);
        rmdir(dir);
        zst = malloc(ZSTD_compressBound(tar_len));
        zlen = ZSTD_compress(zst, ZSTD_compressBound(tar_len), tar, tar_len, 3);
        assert_false(ZSTD_isError(zlen));

        struct layer_builder *b = layer_builder_new(&o);
        for (size_t off = 0; off < zlen; off += 100000)
                assert_int_equal(
                        layer_builder_feed(b, zst + off, zlen - off < 100000 ? zlen - off : 100000),
                        0);
        if (layer_builder_finish(b, &ix) != 0)
                fail_msg("pass: %s", layer_builder_error(b));
        layer_builder_free(b);
        assert_non_null(sk.ps);
        assert_int_equal(engine_put_finish(sk.ps, &d, &size), 0);
        layer_index_info(ix, &info);
        assert_true(digest_equal(&d, &info.data_digest));
        assert_int_equal(size, info.data_size);
        assert_int_equal(engine_find(fx->e, &d, &bi), 0);
        assert_true(bi.verified);

        ef = (struct engine_fetch){.e = fx->e, .id = bi.id};
        rd = layer_reader_new(ix, engine_fetch, &ef);
        assert_non_null(rd);
        for (size_t i = 0; i < layer_index_nfiles(ix); i++) {
                const struct layer_file *lf = layer_index_file(ix, i);
                if (lf->type != TAR_REG || lf->size == 0)
                        continue;
                got = malloc(lf->size);
                assert_int_equal(layer_reader_read(rd, lf, 0, got, lf->size), (ssize_t)lf->size);
                assert_memory_equal(got, tar + lf->offset, lf->size);
                free(got);
                checked++;
        }
        assert_true(checked > 5);
        assert_int_equal(__atomic_load_n(&fetches, __ATOMIC_RELAXED), 0);
        layer_reader_free(rd);
        layer_index_free(ix);
        free(tar);
        free(zst);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_put_stream, setup, teardown),
                cmocka_unit_test_setup_teardown(test_put_refusals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_put_under_budget, setup, teardown),
                cmocka_unit_test_setup_teardown(test_put_sink, setup, teardown),
                cmocka_unit_test_setup_teardown(test_zstd_layer_through_engine, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
