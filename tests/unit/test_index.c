/* Unit tests for the index (index/index.c, schema.c, writer.c, query.c): migrations, the blob
 * and chunk tables through the public API, persistence across close and reopen, the read-only
 * mode, walks that stop early, and the bounded write queue under a writer that cannot keep up.
 *
 * The back-pressure test has to see the queue fill, which is private state, so this file
 * includes the index's private header (as test_engine.c does with engine_int.h): it reads
 * ix->count under ix->lock and takes the number of migrations from the table itself
 * (ix_n_migrations, schema.c). The index's objects come from the core library.
 * What the database holds is checked with sqlite3 directly where the API cannot show it. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "index/index_int.h"
#include "index/snapshots.h"

#define NMIGRATIONS ix_n_migrations

struct fixture {
        char dir[256];
        char db[512];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(path) < 0 ? -errno : 0;
}

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f)
                return -1;
        snprintf(f->dir, sizeof(f->dir), "/tmp/p2pblobs-test-index-XXXXXX");
        if (!mkdtemp(f->dir)) {
                free(f);
                return -1;
        }
        snprintf(f->db, sizeof(f->db), "%s/index.db", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        int r = nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return r == 0 ? 0 : -1;
}

static struct digest D(const char *name) {
        struct digest d;
        digest_sha256(name, strlen(name), &d);
        return d;
}

/* A chunk digest that encodes its index, cheap enough for 50 000 of them. */
static struct digest
S(uint32_t i) {
        struct digest d;
        memset(d.bytes, 0x5a, sizeof(d.bytes));
        memcpy(d.bytes, &i, sizeof(i));
        return d;
}

static struct idx_blob
blob(const char *name, const char *source, const char *media, int64_t added_at) {
        struct idx_blob b = {0};
        b.digest = D(name);
        b.size = UINT64_C(5) << 30 | 12345; /* above 4 GiB: 64-bit all the way */
        b.chunk_size = 1u << 20;
        snprintf(b.source, sizeof(b.source), "%s", source);
        snprintf(b.media_type, sizeof(b.media_type), "%s", media);
        b.added_at = added_at;
        return b;
}

/* ---- direct sqlite3 access ---- */

static sqlite3 *raw_open(const char *path) {
        sqlite3 *db = NULL;
        assert_int_equal(
                sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                SQLITE_OK);
        sqlite3_busy_timeout(db, 5000);
        return db;
}

static int64_t raw_int(const char *path, const char *sql) {
        sqlite3 *db = raw_open(path);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        int64_t v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
}

static void raw_exec(const char *path, const char *sql) {
        sqlite3 *db = raw_open(path);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
}

/* The first column of SQL's first row as text (in a static buffer), "" when NULL. */
static const char *raw_text_or_empty(const char *path, const char *sql) {
        static char buf[64];
        sqlite3 *db = raw_open(path);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, sizeof(buf), "%s", t ? (const char *)t : "");
        sqlite3_finalize(st);
        sqlite3_close(db);
        return buf;
}

/* ---- walk collectors ---- */

#define MAX_ROWS 16

struct blobs {
        size_t n;
        struct idx_blob b[MAX_ROWS];
};

static int collect_blob(void *ud, const struct idx_blob *b) {
        struct blobs *c = ud;
        if (c->n == MAX_ROWS)
                return -E2BIG;
        c->b[c->n++] = *b;
        return 0;
}

static void list_blobs(struct index *ix, struct blobs *c) {
        memset(c, 0, sizeof(*c));
        assert_int_equal(idx_for_each_blob(ix, collect_blob, c), 0);
}

struct chunk_row {
        struct digest blob;
        uint32_t idx;
        bool present;
        bool has_sha;
        struct digest sha;
};

struct chunks {
        size_t n;
        struct chunk_row r[MAX_ROWS];
};

static int collect_chunk(void *ud, const struct digest *b, uint32_t idx, bool present,
                         const struct digest *sha, const struct digest *chain) {
        (void)chain;
        struct chunks *c = ud;
        if (c->n == MAX_ROWS)
                return -E2BIG;
        struct chunk_row *r = &c->r[c->n++];
        r->blob = *b;
        r->idx = idx;
        r->present = present;
        r->has_sha = sha != NULL;
        if (sha)
                r->sha = *sha;
        return 0;
}

static void list_chunks(struct index *ix, struct chunks *c) {
        memset(c, 0, sizeof(*c));
        assert_int_equal(idx_for_each_chunk(ix, collect_chunk, c), 0);
}

static const struct chunk_row *find_chunk(const struct chunks *c, const struct digest *b,
                                          uint32_t idx) {
        for (size_t i = 0; i < c->n; i++)
                if (digest_equal(&c->r[i].blob, b) && c->r[i].idx == idx)
                        return &c->r[i];
        return NULL;
}

static void expect_chunk(const struct chunks *c, const struct digest *b, uint32_t idx, bool present,
                         const struct digest *sha) {
        const struct chunk_row *r = find_chunk(c, b, idx);
        if (!r)
                fail_msg("chunk %u not recorded", idx);
        assert_int_equal(r->present, present);
        if (sha) {
                assert_true(r->has_sha);
                assert_memory_equal(r->sha.bytes, sha->bytes, DIGEST_LEN);
        } else {
                assert_false(r->has_sha);
        }
}

static void expect_blob_equal(const struct idx_blob *got, const struct idx_blob *want) {
        assert_memory_equal(got->digest.bytes, want->digest.bytes, DIGEST_LEN);
        assert_true(got->size == want->size);
        assert_int_equal(got->chunk_size, want->chunk_size);
        assert_string_equal(got->source, want->source);
        assert_string_equal(got->media_type, want->media_type);
        assert_int_equal(got->verified, want->verified);
        assert_int_equal(got->pinned, want->pinned);
        assert_int_equal(got->added_at, want->added_at);
        assert_int_equal(got->last_access, want->last_access);
}

/* ---- tests ---- */

static void test_open_migrates(void **state) {
        struct fixture *f = *state;
        struct index *ix = NULL;
        struct stat st;

        assert_true(NMIGRATIONS >= 2); /* pinned and last_access exist */
        assert_int_equal(stat(f->db, &st), -1);
        assert_int_equal(idx_open(f->db, &ix), 0);
        assert_non_null(ix);
        assert_int_equal(stat(f->db, &st), 0);
        idx_close(ix);
        assert_int_equal(raw_int(f->db, "PRAGMA user_version"), NMIGRATIONS);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM blobs"), 0);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM chunks"), 0);
        assert_int_equal(raw_int(f->db, "SELECT pinned + last_access FROM blobs UNION ALL "
                                        "SELECT 0 LIMIT 1"),
                         0);

        /* Reopening applies nothing twice (an ALTER TABLE ADD COLUMN would fail) and keeps
         * what is there. */
        ix = NULL;
        assert_int_equal(idx_open(f->db, &ix), 0);
        struct idx_blob b = blob("reopen", "r/x", "", 1);
        idx_put_blob(ix, &b);
        assert_int_equal(idx_flush(ix), 0);
        idx_close(ix);
        ix = NULL;
        assert_int_equal(idx_open(f->db, &ix), 0);
        struct blobs c;
        list_blobs(ix, &c);
        assert_int_equal(c.n, 1);
        assert_int_equal(idx_write_errors(ix), 0);
        idx_close(ix);
        assert_int_equal(raw_int(f->db, "PRAGMA user_version"), NMIGRATIONS);
        idx_close(NULL);
}

static void test_put_blob(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        struct blobs c;

        assert_int_equal(idx_open(f->db, &ix), 0);
        struct idx_blob b = blob("layer", "docker.io/library/alpine",
                                 "application/vnd.oci.image.layer.v1.tar+gzip", 1700000000);
        idx_put_blob(ix, &b);
        assert_int_equal(idx_flush(ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 1);
        expect_blob_equal(&c.b[0], &b); /* verified, pinned false; last_access 0 */
        assert_false(c.b[0].verified);
        assert_false(c.b[0].pinned);
        assert_int_equal(c.b[0].last_access, 0);

        /* The same digest again: one row, the new source; an empty media type keeps the old. */
        struct idx_blob again = b;
        snprintf(again.source, sizeof(again.source), "ghcr.io/other/repo");
        again.media_type[0] = '\0';
        idx_put_blob(ix, &again);
        assert_int_equal(idx_flush(ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 1);
        assert_string_equal(c.b[0].source, "ghcr.io/other/repo");
        assert_string_equal(c.b[0].media_type, b.media_type);
        assert_true(c.b[0].size == b.size);
        assert_int_equal(c.b[0].added_at, b.added_at);

        /* A changed chunk size (the load re-chunked it after --chunk-size changed) is kept:
         * otherwise every later start re-chunks the blob and deletes its store file again. */
        struct idx_blob rechunked = again;
        rechunked.chunk_size = 256u << 10;
        idx_put_blob(ix, &rechunked);
        assert_int_equal(idx_flush(ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 1);
        assert_int_equal(c.b[0].chunk_size, 256u << 10);
        assert_true(c.b[0].size == b.size);
        assert_int_equal(c.b[0].added_at, b.added_at);

        /* A second blob; the walk is ordered by added_at. */
        struct idx_blob older = blob("older", "docker.io/library/busybox", "", 1600000000);
        idx_put_blob(ix, &older);
        assert_int_equal(idx_flush(ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 2);
        expect_blob_equal(&c.b[0], &older);
        assert_memory_equal(c.b[1].digest.bytes, b.digest.bytes, DIGEST_LEN);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM blobs"), 2);
        assert_int_equal(idx_write_errors(ix), 0);
        idx_close(ix);
}

static void test_chunks(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        struct chunks c;
        struct digest a = D("chunks-a"), b = D("chunks-b");
        struct digest s0 = S(0), s2 = S(2), sb = S(100), s0new = S(1000);

        assert_int_equal(idx_open(f->db, &ix), 0);
        idx_chunk_present(ix, &a, 0, &s0);
        idx_chunk_present(ix, &a, 1, NULL);
        idx_chunk_present(ix, &a, 2, &s2);
        idx_chunk_absent(ix, &a, 2);
        idx_chunk_present(ix, &b, 0, &sb);
        idx_chunk_absent(ix, &a, 7); /* never recorded: stays unrecorded */
        assert_int_equal(idx_flush(ix), 0);

        list_chunks(ix, &c);
        assert_int_equal(c.n, 4);
        expect_chunk(&c, &a, 0, true, &s0);
        expect_chunk(&c, &a, 1, true, NULL);
        expect_chunk(&c, &a, 2, false, &s2); /* evicted, but its digest is kept */
        expect_chunk(&c, &b, 0, true, &sb);
        assert_null(find_chunk(&c, &a, 7));

        /* Ordered by blob, then index. */
        char ha[DIGEST_HEX_LEN + 1], hb[DIGEST_HEX_LEN + 1];
        digest_to_hex(&a, ha);
        digest_to_hex(&b, hb);
        const struct digest *first = strcmp(ha, hb) < 0 ? &a : &b;
        assert_true(digest_equal(&c.r[0].blob, first));
        for (size_t i = 1; i < c.n; i++)
                if (digest_equal(&c.r[i].blob, &c.r[i - 1].blob))
                        assert_true(c.r[i].idx > c.r[i - 1].idx);

        /* Present again without a digest keeps the recorded one (COALESCE); with one, the
         * new digest is recorded. */
        idx_chunk_present(ix, &a, 0, NULL);
        idx_chunk_present(ix, &a, 2, NULL);
        idx_chunk_present(ix, &a, 1, &s0new);
        assert_int_equal(idx_flush(ix), 0);
        list_chunks(ix, &c);
        assert_int_equal(c.n, 4);
        expect_chunk(&c, &a, 0, true, &s0);
        expect_chunk(&c, &a, 2, true, &s2);
        expect_chunk(&c, &a, 1, true, &s0new);

        /* Forgetting a blob's chunks removes every row of that blob, digests included. */
        idx_blob_forget_chunks(ix, &a);
        assert_int_equal(idx_flush(ix), 0);
        list_chunks(ix, &c);
        assert_int_equal(c.n, 1);
        expect_chunk(&c, &b, 0, true, &sb);
        bool known[3] = {true, true, true};
        struct digest dg[3];
        assert_int_equal(idx_chunk_digests(ix, &a, 3, dg, known), 0);
        assert_false(known[0] || known[1] || known[2]);
        assert_int_equal(idx_write_errors(ix), 0);
        idx_close(ix);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM chunks"), 1);
}

static void test_flags_persist(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        struct blobs c;
        struct idx_blob b = blob("flags", "docker.io/library/nginx", "", 1700000000);
        struct idx_blob other = blob("flags-other", "docker.io/library/redis", "", 1700000001);

        assert_int_equal(idx_open(f->db, &ix), 0);
        idx_put_blob(ix, &b);
        idx_put_blob(ix, &other);
        idx_blob_verified(ix, &b.digest, true);
        idx_blob_pinned(ix, &b.digest, true);
        idx_blob_accessed(ix, &b.digest, 1700000456);
        idx_close(ix); /* no flush: close commits what is queued */

        assert_int_equal(idx_open(f->db, &ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 2);
        assert_true(c.b[0].verified);
        assert_true(c.b[0].pinned);
        assert_int_equal(c.b[0].last_access, 1700000456);
        expect_blob_equal(&c.b[1], &other); /* only that blob */

        idx_blob_verified(ix, &b.digest, false);
        idx_blob_pinned(ix, &b.digest, false);
        idx_blob_accessed(ix, &b.digest, 1700000789);
        idx_blob_pinned(ix, &other.digest, true);
        idx_close(ix);

        assert_int_equal(idx_open(f->db, &ix), 0);
        list_blobs(ix, &c);
        assert_int_equal(c.n, 2);
        assert_false(c.b[0].verified);
        assert_false(c.b[0].pinned);
        assert_int_equal(c.b[0].last_access, 1700000789);
        assert_true(c.b[1].pinned);
        assert_false(c.b[1].verified);
        assert_int_equal(idx_write_errors(ix), 0);
        idx_close(ix);
}

static void test_chunk_digests(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        struct digest a = D("digests"), other = D("digests-other");
        struct digest s0 = S(10), s3 = S(13), s5 = S(15), so = S(20);
        const uint32_t n = 4;

        assert_int_equal(idx_open(f->db, &ix), 0);
        idx_chunk_present(ix, &a, 0, &s0);
        idx_chunk_present(ix, &a, 1, NULL); /* recorded, digest unknown */
        idx_chunk_present(ix, &a, 3, &s3);
        idx_chunk_absent(ix, &a, 3);           /* evicted: the digest still counts */
        idx_chunk_present(ix, &a, n, &s5);     /* one past the end: ignored */
        idx_chunk_present(ix, &a, n + 1, &s5); /* beyond: ignored */
        idx_chunk_present(ix, &other, 2, &so);
        assert_int_equal(idx_flush(ix), 0);

        /* Exactly N entries on the heap, so ASan catches a write past them. */
        struct digest *dg = malloc(n * sizeof(*dg));
        bool *known = malloc(n * sizeof(*known));
        assert_non_null(dg);
        assert_non_null(known);
        memset(known, 1, n * sizeof(*known));
        assert_int_equal(idx_chunk_digests(ix, &a, n, dg, known), 0);
        assert_true(known[0]);
        assert_false(known[1]);
        assert_false(known[2]); /* other's chunk 2 is not a's */
        assert_true(known[3]);
        assert_memory_equal(dg[0].bytes, s0.bytes, DIGEST_LEN);
        assert_memory_equal(dg[3].bytes, s3.bytes, DIGEST_LEN);

        /* A blob nothing is recorded for. */
        struct digest none = D("digests-none");
        memset(known, 1, n * sizeof(*known));
        assert_int_equal(idx_chunk_digests(ix, &none, n, dg, known), 0);
        for (uint32_t i = 0; i < n; i++)
                assert_false(known[i]);
        free(dg);
        free(known);
        idx_close(ix);
}

static void test_readonly(void **state) {
        struct fixture *f = *state;
        struct index *rw, *ro;
        struct blobs bl;
        struct chunks ch;
        struct idx_blob b = blob("ro", "docker.io/library/ro", "", 1700000000);
        struct digest s1 = S(1), s2 = S(2);

        /* A database that does not exist is not created, and the out-parameter is left. */
        static char sentinel_obj;
        struct index *sentinel = (struct index *)(void *)&sentinel_obj;
        ro = sentinel;
        assert_true(idx_open_readonly(f->db, &ro) < 0);
        assert_ptr_equal(ro, sentinel);
        assert_int_equal(access(f->db, F_OK), -1);

        assert_int_equal(idx_open(f->db, &rw), 0);
        idx_put_blob(rw, &b);
        idx_chunk_present(rw, &b.digest, 1, &s1);
        assert_int_equal(idx_flush(rw), 0);

        /* While the writer is open. */
        assert_int_equal(idx_open_readonly(f->db, &ro), 0);
        list_blobs(ro, &bl);
        assert_int_equal(bl.n, 1);
        expect_blob_equal(&bl.b[0], &b);
        list_chunks(ro, &ch);
        assert_int_equal(ch.n, 1);
        expect_chunk(&ch, &b.digest, 1, true, &s1);

        /* Every write is a no-op. */
        struct idx_blob changed = b;
        snprintf(changed.source, sizeof(changed.source), "changed/by-ro");
        struct idx_blob fresh = blob("ro-fresh", "x/y", "", 1);
        idx_put_blob(ro, &changed);
        idx_put_blob(ro, &fresh);
        idx_chunk_present(ro, &b.digest, 2, &s2);
        idx_chunk_absent(ro, &b.digest, 1);
        idx_blob_verified(ro, &b.digest, true);
        idx_blob_pinned(ro, &b.digest, true);
        idx_blob_accessed(ro, &b.digest, 42);
        assert_int_equal(idx_flush(ro), 0);
        assert_int_equal(idx_write_errors(ro), 0);
        idx_blob_forget_chunks(ro, &b.digest);
        assert_int_equal(idx_flush(ro), 0);
        list_blobs(ro, &bl);
        assert_int_equal(bl.n, 1);
        expect_blob_equal(&bl.b[0], &b);
        list_chunks(ro, &ch);
        assert_int_equal(ch.n, 1);
        expect_chunk(&ch, &b.digest, 1, true, &s1);
        idx_close(ro);

        /* The writer commits more; a fresh read-only handle sees it, after the writer is
         * gone too. */
        idx_blob_verified(rw, &b.digest, true);
        idx_close(rw);
        assert_int_equal(idx_open_readonly(f->db, &ro), 0);
        list_blobs(ro, &bl);
        assert_int_equal(bl.n, 1);
        assert_true(bl.b[0].verified);
        idx_blob_verified(ro, &b.digest, false);
        idx_blob_forget_chunks(ro, &b.digest);
        idx_close(ro);

        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM blobs"), 1);
        assert_int_equal(raw_int(f->db, "SELECT verified + pinned + last_access FROM blobs"), 1);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM blobs WHERE source = "
                                        "'docker.io/library/ro'"),
                         1);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM chunks"), 1);
        assert_int_equal(raw_int(f->db, "SELECT sum(present) FROM chunks"), 1);
}

struct stop_after {
        int calls, stop_at;
};

static int stop_blob(void *ud, const struct idx_blob *b) {
        struct stop_after *s = ud;
        (void)b;
        return ++s->calls == s->stop_at ? -ECANCELED : 0;
}

static int stop_chunk(void *ud, const struct digest *b, uint32_t idx, bool present,
                      const struct digest *sha, const struct digest *chain) {
        (void)chain;
        struct stop_after *s = ud;
        (void)b;
        (void)idx;
        (void)present;
        (void)sha;
        return ++s->calls == s->stop_at ? -ECANCELED : 0;
}

static void test_walk_cancel(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        struct digest a = D("walk");

        assert_int_equal(idx_open(f->db, &ix), 0);
        for (int i = 0; i < 4; i++) {
                char name[32];
                snprintf(name, sizeof(name), "walk-%d", i);
                struct idx_blob b = blob(name, "w/w", "", 1000 + i);
                idx_put_blob(ix, &b);
                idx_chunk_present(ix, &a, (uint32_t)i, NULL);
        }
        assert_int_equal(idx_flush(ix), 0);

        struct stop_after s = {0, 2};
        assert_int_equal(idx_for_each_blob(ix, stop_blob, &s), -ECANCELED);
        assert_int_equal(s.calls, 2);
        s = (struct stop_after){0, 2};
        assert_int_equal(idx_for_each_chunk(ix, stop_chunk, &s), -ECANCELED);
        assert_int_equal(s.calls, 2);

        /* A walk that never stops visits everything and returns 0. */
        s = (struct stop_after){0, -1};
        assert_int_equal(idx_for_each_blob(ix, stop_blob, &s), 0);
        assert_int_equal(s.calls, 4);
        s = (struct stop_after){0, -1};
        assert_int_equal(idx_for_each_chunk(ix, stop_chunk, &s), 0);
        assert_int_equal(s.calls, 4);
        idx_close(ix);
}

#define BP_CHUNKS 50000u /* chunk ops pushed while the writer is stalled: > WRITE_QUEUE_MAX */

struct producer {
        struct index *ix;
        struct digest blob;
        atomic_bool done;
};

static void *produce(void *arg) {
        struct producer *p = arg;
        for (uint32_t i = 0; i < BP_CHUNKS; i++) {
                struct digest sha = S(i);
                idx_chunk_present(p->ix, &p->blob, i, i % 2 == 0 ? &sha : NULL);
        }
        for (uint32_t i = 0; i < BP_CHUNKS; i += 5)
                idx_chunk_absent(p->ix, &p->blob, i);
        atomic_store(&p->done, true);
        return NULL;
}

struct bp_check {
        uint32_t next;
        int bad;
};

static int check_bp_chunk(void *ud, const struct digest *b, uint32_t idx, bool present,
                          const struct digest *sha, const struct digest *chain) {
        (void)chain;
        struct bp_check *c = ud;
        (void)b;
        struct digest want = S(idx);
        if (idx != c->next++ || present != (idx % 5 != 0) || (sha != NULL) != (idx % 2 == 0) ||
            (sha && !digest_equal(sha, &want)))
                c->bad++;
        return 0;
}

static size_t queued(struct index *ix) {
        pthread_mutex_lock(&ix->lock);
        size_t n = ix->count;
        pthread_mutex_unlock(&ix->lock);
        return n;
}

/* Another connection holds the write lock, so the writer stalls in its busy handler (up to
 * its 5 s busy timeout) with at most one batch taken off the queue: the producer must fill the
 * queue to its bound and then block, not grow it or drop ops. Released well inside the busy
 * timeout, everything lands. */
static void test_backpressure(void **state) {
        struct fixture *f = *state;
        struct producer p = {.blob = D("backpressure")};
        pthread_t t;

        assert_true(BP_CHUNKS > WRITE_QUEUE_MAX);
        assert_int_equal(idx_open(f->db, &p.ix), 0);
        atomic_init(&p.done, false);

        sqlite3 *blocker = raw_open(f->db);
        assert_int_equal(sqlite3_exec(blocker, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(pthread_create(&t, NULL, produce, &p), 0);

        size_t max_seen = 0;
        bool full = false, done_while_stalled;
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                size_t n = queued(p.ix);
                if (n > max_seen)
                        max_seen = n;
                if (n == WRITE_QUEUE_MAX) {
                        full = true;
                        break;
                }
                clock_gettime(CLOCK_MONOTONIC, &now);
                /* well inside the writer's 5 s busy timeout, which would end the stall */
                if (now.tv_sec - start.tv_sec >= 4 || atomic_load(&p.done))
                        break;
                usleep(1000);
        }
        if (full) {
                usleep(50 * 1000); /* the producer stays blocked, the queue stays at its bound */
                size_t n = queued(p.ix);
                if (n > max_seen)
                        max_seen = n;
        }
        done_while_stalled = atomic_load(&p.done);

        /* Release before asserting, so a failure does not leave the producer blocked. */
        assert_int_equal(sqlite3_exec(blocker, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(blocker);
        assert_int_equal(pthread_join(t, NULL), 0);

        assert_true(full);
        assert_false(done_while_stalled);
        assert_int_equal(max_seen, WRITE_QUEUE_MAX);

        assert_int_equal(idx_flush(p.ix), 0);
        assert_int_equal(idx_write_errors(p.ix), 0);
        assert_int_equal(queued(p.ix), 0);
        struct bp_check c = {0, 0};
        assert_int_equal(idx_for_each_chunk(p.ix, check_bp_chunk, &c), 0);
        assert_int_equal(c.next, BP_CHUNKS);
        assert_int_equal(c.bad, 0);
        idx_close(p.ix);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM chunks"), BP_CHUNKS);
        assert_int_equal(raw_int(f->db, "SELECT sum(present) FROM chunks"),
                         BP_CHUNKS - BP_CHUNKS / 5);
}

static void test_newer_database(void **state) {
        struct fixture *f = *state;
        char sql[64];
        static char sentinel_obj;
        struct index *sentinel = (struct index *)(void *)&sentinel_obj;
        struct index *ix = sentinel;

        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", NMIGRATIONS + 1);
        raw_exec(f->db, sql);
        assert_int_equal(idx_open(f->db, &ix), -EPROTO);
        assert_ptr_equal(ix, sentinel);
        /* Not "migrated" down, and nothing of ours created in it. */
        assert_int_equal(raw_int(f->db, "PRAGMA user_version"), NMIGRATIONS + 1);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM sqlite_master"), 0);
        /* Refused before the journal mode was switched: the file is as we found it. */
        assert_string_not_equal(raw_text_or_empty(f->db, "PRAGMA journal_mode"), "wal");
}

/* blobctl reads the index read-only when the daemon is down; it cannot migrate, so a database
 * of another schema version is a clear -EPROTO, not an SQL error on a missing column. */
static void test_readonly_version_mismatch(void **state) {
        struct fixture *f = *state;
        static char sentinel_obj;
        struct index *sentinel = (struct index *)(void *)&sentinel_obj;
        struct index *ix = sentinel;

        raw_exec(f->db, "CREATE TABLE t (x); PRAGMA user_version = 1");
        assert_int_equal(idx_open_readonly(f->db, &ix), -EPROTO);
        assert_ptr_equal(ix, sentinel);
        raw_exec(f->db, "PRAGMA user_version = 99");
        assert_int_equal(idx_open_readonly(f->db, &ix), -EPROTO);
        /* the current version opens */
        struct index *rw;
        raw_exec(f->db, "DROP TABLE t; PRAGMA user_version = 0");
        assert_int_equal(idx_open(f->db, &rw), 0);
        idx_close(rw);
        assert_int_equal(idx_open_readonly(f->db, &ix), 0);
        idx_close(ix);
}

/* ---- peers and locations (migration 3) ------------------------------------------------- */

struct peers_seen {
        struct idx_peer v[8];
        size_t n;
};

static int collect_peer(void *ud, const struct idx_peer *p) {
        struct peers_seen *c = ud;
        if (c->n < 8)
                c->v[c->n] = *p;
        c->n++;
        return 0;
}

static struct idx_peer peer(const char *id, const char *state, uint64_t from) {
        struct idx_peer p = {.latency_us = 1500,
                             .failures = 2,
                             .bytes_from = from,
                             .bytes_to = from / 2,
                             .last_seen = 1700000000};
        snprintf(p.id, sizeof(p.id), "%s", id);
        snprintf(p.state, sizeof(p.state), "%s", state);
        snprintf(p.locality, sizeof(p.locality), "on-link");
        return p;
}

/* The table is a snapshot: each put replaces it whole, and it survives a reopen read-only. */
static void test_peers_replace(void **state) {
        struct fixture *f = *state;
        struct index *ix = NULL;
        assert_int_equal(idx_open(f->db, &ix), 0);
        struct peers_seen c = {0};
        assert_int_equal(idx_for_each_peer(ix, collect_peer, &c), 0);
        assert_int_equal(c.n, 0);

        struct idx_peer v[3] = {peer("10.0.0.3:5001", "down", 30), peer("10.0.0.1:5001", "up", 10),
                                peer("10.0.0.2:5001", "up", 20)};
        assert_int_equal(idx_put_peers(ix, v, 3), 0);
        assert_int_equal(idx_flush(ix), 0);
        assert_int_equal(idx_for_each_peer(ix, collect_peer, &c), 0);
        assert_int_equal(c.n, 3);
        assert_string_equal(c.v[0].id, "10.0.0.1:5001"); /* ordered by id */
        assert_string_equal(c.v[2].id, "10.0.0.3:5001");
        assert_string_equal(c.v[2].state, "down");
        assert_string_equal(c.v[2].locality, "on-link");
        assert_int_equal(c.v[2].latency_us, 1500);
        assert_int_equal(c.v[2].failures, 2);
        assert_int_equal(c.v[2].bytes_from, 30);
        assert_int_equal(c.v[2].bytes_to, 15);
        assert_int_equal(c.v[2].last_seen, 1700000000);

        /* A smaller snapshot drops the others; an empty one empties the table. */
        assert_int_equal(idx_put_peers(ix, &v[1], 1), 0);
        assert_int_equal(idx_flush(ix), 0);
        c.n = 0;
        assert_int_equal(idx_for_each_peer(ix, collect_peer, &c), 0);
        assert_int_equal(c.n, 1);
        assert_string_equal(c.v[0].id, "10.0.0.1:5001");
        assert_int_equal(idx_put_peers(ix, NULL, 0), 0);
        assert_int_equal(idx_put_peers(ix, v, 2), 0);
        idx_close(ix);

        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM peers"), 2);
        ix = NULL;
        assert_int_equal(idx_open_readonly(f->db, &ix), 0);
        c.n = 0;
        assert_int_equal(idx_for_each_peer(ix, collect_peer, &c), 0);
        assert_int_equal(c.n, 2);
        assert_string_equal(c.v[1].id, "10.0.0.3:5001");
        assert_int_equal(idx_put_peers(ix, v, 3), 0); /* read-only: a no-op */
        idx_close(ix);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM peers"), 2);
}

struct locs_seen {
        char peer[8][IDX_PEER_ID_MAX];
        uint8_t first[8];
        size_t nbytes[8];
        int64_t expires[8];
        size_t n;
};

static int collect_loc(void *ud, const char *p, const uint8_t *present, size_t nbytes,
                       int64_t expires_at) {
        struct locs_seen *c = ud;
        if (c->n < 8) {
                snprintf(c->peer[c->n], IDX_PEER_ID_MAX, "%s", p);
                c->first[c->n] = nbytes ? present[0] : 0;
                c->nbytes[c->n] = nbytes;
                c->expires[c->n] = expires_at;
        }
        c->n++;
        return 0;
}

static int stop_loc(void *ud, const char *p, const uint8_t *present, size_t nbytes,
                    int64_t expires_at) {
        (void)p;
        (void)present;
        (void)nbytes;
        (void)expires_at;
        ++*(int *)ud;
        return -ECANCELED;
}

static void test_locations(void **state) {
        struct fixture *f = *state;
        struct index *ix = NULL;
        assert_int_equal(idx_open(f->db, &ix), 0);
        struct digest a = D("a"), b = D("b");
        uint8_t bits[3] = {0xff, 0x0f, 0x01};
        assert_int_equal(idx_put_location(ix, &a, "10.0.0.2:5001", bits, 3, 100), 0);
        assert_int_equal(idx_put_location(ix, &a, "10.0.0.1:5001", bits + 1, 2, 200), 0);
        assert_int_equal(idx_put_location(ix, &b, "10.0.0.1:5001", bits, 1, 300), 0);
        /* Replaces the pair's row: a new bitmap and a new expiry. */
        bits[0] = 0x03;
        assert_int_equal(idx_put_location(ix, &a, "10.0.0.2:5001", bits, 1, 150), 0);
        assert_int_equal(idx_put_location(ix, &b, "10.0.0.9:5001", NULL, 0, 300), 0);
        assert_int_equal(idx_flush(ix), 0);

        struct locs_seen c = {0};
        assert_int_equal(idx_for_each_location(ix, &a, collect_loc, &c), 0);
        assert_int_equal(c.n, 2);
        assert_string_equal(c.peer[0], "10.0.0.1:5001");
        assert_int_equal(c.nbytes[0], 2);
        assert_int_equal(c.first[0], 0x0f);
        assert_int_equal(c.expires[0], 200);
        assert_string_equal(c.peer[1], "10.0.0.2:5001");
        assert_int_equal(c.nbytes[1], 1);
        assert_int_equal(c.first[1], 0x03);
        assert_int_equal(c.expires[1], 150);
        memset(&c, 0, sizeof(c));
        assert_int_equal(idx_for_each_location(ix, &b, collect_loc, &c), 0);
        assert_int_equal(c.n, 2);
        assert_int_equal(c.nbytes[1], 0); /* holds nothing, but knows the blob */
        int calls = 0;
        assert_int_equal(idx_for_each_location(ix, &b, stop_loc, &calls), -ECANCELED);
        assert_int_equal(calls, 1);

        /* Expiry is inclusive of NOW and leaves later rows alone. */
        idx_expire_locations(ix, 150);
        assert_int_equal(idx_flush(ix), 0);
        memset(&c, 0, sizeof(c));
        assert_int_equal(idx_for_each_location(ix, &a, collect_loc, &c), 0);
        assert_int_equal(c.n, 1);
        assert_string_equal(c.peer[0], "10.0.0.1:5001");
        idx_expire_locations(ix, 1000);
        assert_int_equal(idx_flush(ix), 0);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM locations"), 0);

        /* Refused before queueing: an empty or overlong id, an oversized bitmap. */
        char longid[IDX_PEER_ID_MAX + 1];
        memset(longid, 'x', sizeof(longid) - 1);
        longid[sizeof(longid) - 1] = '\0';
        assert_int_equal(idx_put_location(ix, &a, "", bits, 1, 1), -EINVAL);
        assert_int_equal(idx_put_location(ix, &a, longid, bits, 1, 1), -EINVAL);
        assert_int_equal(idx_put_location(ix, &a, "p:1", bits, IDX_LOCATION_BITMAP_MAX + 1, 1),
                         -EINVAL);
        assert_int_equal(idx_write_errors(ix), 0);
        idx_close(ix);
}

/* A file that is not a database, and a database with a damaged page, are -EBADMSG (not -EIO)
 * at open; idx_move_aside() renames it with its -wal and -shm, and a new index opens. */
static void test_corrupt_database(void **state) {
        struct fixture *f = *state;
        struct index *ix = NULL;
        FILE *fp = fopen(f->db, "wb");
        assert_non_null(fp);
        for (int i = 0; i < 4096; i++)
                fputc((i * 7919) & 0xff, fp);
        fclose(fp);
        assert_int_equal(idx_open(f->db, &ix), -EBADMSG);
        assert_null(ix);

        char side[600], path[700];
        snprintf(path, sizeof(path), "%s-wal", f->db);
        fp = fopen(path, "wb"); /* a WAL left behind goes with it */
        assert_non_null(fp);
        fclose(fp);
        assert_int_equal(idx_move_aside(f->db, 1234, side, sizeof(side)), 0);
        snprintf(path, sizeof(path), "%s.corrupt-1234", f->db);
        assert_string_equal(side, path);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        snprintf(path, sizeof(path), "%s.corrupt-1234-wal", f->db);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(stat(f->db, &st), -1);

        /* A real database with enough rows for several pages, then one damaged page. */
        assert_int_equal(idx_open(f->db, &ix), 0);
        for (int i = 0; i < 2000; i++) {
                char name[32];
                snprintf(name, sizeof(name), "blob-%d", i);
                struct digest d = D(name);
                idx_chunk_present(ix, &d, (uint32_t)i, &d);
        }
        assert_int_equal(idx_flush(ix), 0);
        idx_close(ix);
        ix = NULL;
        int64_t page = raw_int(f->db, "PRAGMA page_size");
        assert_int_equal(stat(f->db, &st), 0);
        assert_true(st.st_size >= 8 * page);
        uint8_t junk[65536];
        assert_true((size_t)page <= sizeof(junk));
        for (size_t i = 0; i < sizeof(junk); i++)
                junk[i] = (uint8_t)(i * 31 + 7);
        fp = fopen(f->db, "r+b");
        assert_non_null(fp);
        assert_int_equal(fseek(fp, (long)(st.st_size / page / 2 * page), SEEK_SET), 0);
        assert_int_equal(fwrite(junk, 1, (size_t)page, fp), (size_t)page);
        fclose(fp);
        assert_int_equal(idx_open(f->db, &ix), -EBADMSG);
        assert_null(ix);
}

static int count_blob(void *ud, const struct idx_blob *b) {
        (void)b;
        (*(int *)ud)++;
        return 0;
}

/* idx_close's checkpoint when only another connection wrote (the daemon's stop after a
 * snapshotter write and no chunk traffic): the writer's connection never opened its WAL, and
 * SQLite opens it inside the checkpoint with a read of its own; run as a PRAGMA statement
 * (still active while it runs) that read was the reader the TRUNCATE waited for, the whole
 * busy timeout, and then gave up on. Done, the WAL is empty after close. A connection of the
 * test's own, which has read (so holds the file's shared lock), stays open across the close:
 * otherwise closing the last connection would checkpoint and delete the WAL by itself and
 * hide the result. */
static void test_close_checkpoints_others_writes(void **state) {
        struct fixture *f = *state;
        struct index *ix;
        assert_int_equal(idx_open(f->db, &ix), 0);
        int n = 0;
        assert_int_equal(idx_for_each_blob(ix, count_blob, &n), 0); /* as the daemon's start */
        assert_int_equal(n, 0);
        struct snapdb *sdb;
        assert_int_equal(snapdb_open(f->db, &sdb), 0);
        struct snap_info *info;
        int64_t *parents;
        size_t nparents;
        assert_int_equal(
                snapdb_create(sdb, SNAP_ACTIVE, "k", NULL, NULL, 0, &info, &parents, &nparents), 0);
        snap_info_free(info);
        free(parents);
        snapdb_close(sdb);

        sqlite3 *keep = raw_open(f->db);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(keep, "SELECT count(*) FROM snapshots", -1, &st, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), 1);
        sqlite3_finalize(st);
        char wal[600];
        snprintf(wal, sizeof(wal), "%s-wal", f->db);
        struct stat sb;
        assert_int_equal(stat(wal, &sb), 0);
        assert_true(sb.st_size > 0); /* the snapshot's row is in the WAL */

        idx_close(ix);
        assert_int_equal(stat(wal, &sb), 0);
        assert_int_equal(sb.st_size, 0); /* checkpointed into the database, the WAL truncated */
        sqlite3_close(keep);
        assert_int_equal(raw_int(f->db, "SELECT count(*) FROM snapshots WHERE key = 'k'"), 1);
}

int main(void) {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        const struct CMUnitTest tests[] = {
                T(test_open_migrates),    T(test_put_blob),
                T(test_chunks),           T(test_flags_persist),
                T(test_chunk_digests),    T(test_readonly),
                T(test_walk_cancel),      T(test_backpressure),
                T(test_newer_database),   T(test_readonly_version_mismatch),
                T(test_peers_replace),    T(test_locations),
                T(test_corrupt_database), T(test_close_checkpoints_others_writes),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
