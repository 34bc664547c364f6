/* What a reader checks a peer's chunk by (issue 15), reached through peer/source_plan.c's and
 * peer/source_verify.c's functions: which values a job takes from a locate answer, that a
 * chain step is preferred to a plain digest but never taken from the sender of the bytes,
 * that a one-chunk blob needs no home, and the hash as bytes arrive and on a verifier: a
 * right chunk ends its job with a chunk_check saying what was checked, a chunk wrong in its
 * very last byte distrusts the sender. The source's thread and HTTP client are not started: a
 * bare struct source with a manual membership is all these paths touch. The chain values are
 * computed here with util/chain.h over the blob's real bytes, as a home would have them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "peer/source_plan.c"
#include "peer/source_verify.c"

#define CHUNK 4096u /* a chunk: SHA-256 blocks fit it (fs/main.c wants a multiple of 4096) */
#define NCH 5u
#define BLOB_SIZE (NCH * CHUNK - 100) /* a short last chunk */
#define HOME "10.0.0.2:5001"
#define PEER "10.0.0.3:5001"

static uint8_t blob[BLOB_SIZE];
static struct digest blob_digest, chain[NCH]; /* chain[NCH - 1] is the blob digest */

static int setup(void **state) {
        (void)state;
        for (size_t i = 0; i < BLOB_SIZE; i++)
                blob[i] = (uint8_t)(i * 2654435761u >> 13);
        struct chain_hash c;
        chain_begin(&c, NULL, 0);
        for (uint32_t i = 0; i + 1 < NCH; i++) {
                chain_add(&c, blob + (size_t)i * CHUNK, CHUNK);
                chain_value(&c, &chain[i]);
        }
        chain_add(&c, blob + (size_t)(NCH - 1) * CHUNK, BLOB_SIZE - (NCH - 1) * CHUNK);
        chain_finish(&c, &chain[NCH - 1]);
        digest_sha256(blob, BLOB_SIZE, &blob_digest);
        assert_true(digest_equal(&chain[NCH - 1], &blob_digest));
        return 0;
}

/* An answer about the blob from a home: the chain values of chunks in CHAIN_MASK (never the
 * last's), plain digests of those in SHA_MASK. */
static void answer(struct wire_locate *l, unsigned chain_mask, unsigned sha_mask) {
        memset(l, 0, sizeof(*l));
        l->digest = blob_digest;
        l->size = BLOB_SIZE;
        l->chunk_size = CHUNK;
        l->nchunks = NCH;
        l->sha = calloc(NCH, sizeof(*l->sha));
        l->sha_known = calloc(1, 1);
        l->chain = calloc(NCH, sizeof(*l->chain));
        l->chain_known = calloc(1, 1);
        assert_non_null(l->sha);
        assert_non_null(l->sha_known);
        assert_non_null(l->chain);
        assert_non_null(l->chain_known);
        for (uint32_t i = 0; i < NCH; i++) {
                if (chain_mask & (1u << i) && i + 1 < NCH) {
                        l->chain[i] = chain[i];
                        wire_set_bit(l->chain_known, i);
                }
                if (sha_mask & (1u << i)) {
                        size_t len = i + 1 < NCH ? CHUNK : BLOB_SIZE - (NCH - 1) * CHUNK;
                        digest_sha256(blob + (size_t)i * CHUNK, len, &l->sha[i]);
                        wire_set_bit(l->sha_known, i);
                }
        }
}

static struct job *job_of(uint32_t idx, uint64_t size) {
        struct job *j = calloc(1, sizeof(*j));
        assert_non_null(j);
        j->digest = blob_digest;
        j->size = size;
        j->idx = idx;
        j->off = (uint64_t)idx * CHUNK;
        j->len = idx + 1 < NCH ? CHUNK : size - (uint64_t)idx * CHUNK;
        if (j->off + j->len > size)
                j->len = size - j->off;
        return j;
}

/* Chunk IDX's job planned from answer L of HOME; whether the answer checks it is whether the
 * job took anything from it. */
static struct job *take(uint32_t idx, const struct wire_locate *l) {
        struct job *j = job_of(idx, BLOB_SIZE);
        bool checks = src_answer_checks(j, l);
        src_take_checks(j, l, HOME);
        assert_int_equal(checks, j->chain_known || j->sha_known);
        return j;
}

static void test_take_checks(void **state) {
        struct wire_locate l;
        (void)state;

        /* Chunk 2: values 1 and 2 from the home; the home's word is no check of its own bytes. */
        answer(&l, 0x6, 0);
        struct job *j = take(2, &l);
        assert_true(j->chain_known);
        assert_false(j->sha_known);
        assert_true(digest_equal(&j->chain_prev, &chain[1]));
        assert_true(digest_equal(&j->chain, &chain[2]));
        assert_int_equal(src_check_of(j, PEER), CHECK_CHAIN);
        assert_int_equal(src_check_of(j, HOME), CHECK_NONE);
        assert_false(src_checkable(j, HOME));
        free(j);
        /* Chunk 3 has only one of its two values there: no chain step, nothing to check by. */
        j = take(3, &l);
        assert_int_equal(src_check_of(j, PEER), CHECK_NONE);
        free(j);
        wire_locate_free(&l);

        /* Chunk 0 needs only its own value; the last chunk only the one before it, and ends at
         * the blob digest. */
        answer(&l, 0x1 | 0x8, 0);
        j = take(0, &l);
        assert_true(digest_equal(&j->chain, &chain[0]));
        assert_string_equal(j->chain_home, HOME);
        free(j);
        j = take(NCH - 1, &l);
        assert_true(digest_equal(&j->chain_prev, &chain[NCH - 2]));
        assert_true(digest_equal(&j->chain, &blob_digest));
        assert_int_equal(src_check_of(j, HOME), CHECK_NONE); /* the previous value is HOME's */
        free(j);
        wire_locate_free(&l);

        /* Both kinds from a home that is not the sender: the chain step. The sender's chain
         * values and another home's digest: the digest. */
        answer(&l, 0x6, 0x4);
        j = take(2, &l);
        assert_int_equal(src_check_of(j, PEER), CHECK_CHAIN);
        snprintf(j->sha_home, sizeof(j->sha_home), "%s", "10.0.0.9:5001");
        assert_int_equal(src_check_of(j, HOME), CHECK_SHA);
        free(j);
        wire_locate_free(&l);

        /* An older home: no "chain" at all (NULL arrays). */
        answer(&l, 0, 0x4);
        free(l.chain);
        free(l.chain_known);
        l.chain = NULL;
        l.chain_known = NULL;
        j = take(2, &l);
        assert_false(j->chain_known);
        assert_int_equal(src_check_of(j, PEER), CHECK_SHA);
        free(j);
        wire_locate_free(&l);
}

/* A blob of one chunk: the step from the initial state ends at the blob digest, which is no
 * one's word, so even its home's bytes can be checked. */
static void test_one_chunk_blob(void **state) {
        struct wire_locate l;
        (void)state;
        struct job *j = job_of(0, 1000);
        digest_sha256(blob, 1000, &j->digest);
        answer(&l, 0, 0);
        l.digest = j->digest;
        l.size = 1000;
        l.nchunks = 1;
        assert_true(src_answer_checks(j, &l));
        src_take_checks(j, &l, HOME);
        assert_true(j->chain_known);
        assert_string_equal(j->chain_home, "");
        assert_int_equal(src_check_of(j, HOME), CHECK_CHAIN);
        assert_true(digest_equal(&j->chain, &j->digest));
        free(j);
        wire_locate_free(&l);
}

/* ---- the hash: as bytes arrive, and on a verifier --------------------------------------- */

static struct {
        int calls, err;
        struct chunk_check chk;
        bool has_chk;
} got;

static void done_cb(void *ud, int err, const char *reason, uint8_t *buf, size_t len,
                    const struct chunk_check *chk) {
        (void)ud;
        (void)reason;
        (void)len;
        got.calls++;
        got.err = err;
        got.has_chk = chk != NULL;
        if (chk)
                got.chk = *chk;
        free(buf);
}

static struct source *bare(void) {
        struct source *s = calloc(1, sizeof(*s));
        assert_non_null(s);
        struct members_config mc = {.listen_port = 5001,
                                    .max_peers = 16,
                                    .manual = true,
                                    .advertise = "10.0.0.1",
                                    .refresh_ms = 60000,
                                    .probe_timeout_ms = 500};
        assert_int_equal(members_new(&mc, &s->cfg.members), 0);
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->vq_lock, NULL);
        pthread_cond_init(&s->vq_cond, NULL);
        s->vq_tail = &s->vq_head;
        /* A job that has to go on ends ECANCELED, where it would go to the origin. */
        atomic_init(&s->stopping, true);
        return s;
}

static void bare_free(struct source *s) {
        members_free(s->cfg.members);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->vq_lock);
        pthread_cond_destroy(&s->vq_cond);
        free(s);
}

/* Job J (values from HOME) from PEER's bytes BYTES, fed in pieces as a transfer would. */
static int feed(struct source *s, struct job *j, const uint8_t *bytes) {
        struct xfer x = {.s = s, .job = j, .kind = X_CHUNK};
        snprintf(x.peer, sizeof(x.peer), "%s", PEER);
        src_hash_begin(&x, j);
        assert_true(x.chaining);
        assert_null(x.md); /* no EVP context for a chain step */
        for (size_t off = 0; off < j->len; off += 1000)
                src_hash_add(&x, bytes + off, j->len - off < 1000 ? j->len - off : 1000);
        uint8_t *buf = malloc(j->len);
        assert_non_null(buf);
        memcpy(buf, bytes, j->len);
        int r = src_hash_accept(s, &x, j, buf, 0);
        assert_false(x.chaining);
        return r;
}

static struct job *planned(uint32_t idx) {
        struct wire_locate l;
        struct job *j = job_of(idx, BLOB_SIZE);
        j->done = done_cb;
        answer(&l, 0xff, 0);
        src_take_checks(j, &l, HOME);
        wire_locate_free(&l);
        return j;
}

static void test_hash_as_bytes_arrive(void **state) {
        (void)state;
        struct source *s = bare();
        for (uint32_t idx = 0; idx < NCH; idx++) {
                memset(&got, 0, sizeof(got));
                struct job *j = planned(idx);
                assert_int_equal(feed(s, j, blob + (size_t)idx * CHUNK), 1);
                assert_int_equal(got.calls, 1);
                assert_int_equal(got.err, 0);
                assert_true(got.has_chk && got.chk.has_chain);
                assert_true(digest_equal(&got.chk.chain, &chain[idx]));
                if (idx > 0)
                        assert_true(digest_equal(&got.chk.chain_prev, &chain[idx - 1]));
                assert_false(got.chk.has_sha); /* no plain sha256 was computed */
        }
        assert_int_equal(s->stats.peer_chunks, NCH);

        /* The last byte of the last chunk wrong: caught, the sender distrusted for the blob. */
        uint8_t bad[CHUNK];
        struct job *j = planned(NCH - 1);
        memcpy(bad, blob + (size_t)(NCH - 1) * CHUNK, j->len);
        bad[j->len - 1] ^= 1;
        memset(&got, 0, sizeof(got));
        assert_int_equal(feed(s, j, bad), -EBADMSG);
        assert_int_equal(got.calls, 1);
        assert_int_equal(got.err, -ECANCELED); /* gone on to the next source */
        assert_true(src_distrusted(s, PEER, &blob_digest));
        assert_int_equal(s->stats.peer_corrupt, 1);

        /* The first byte of a middle chunk wrong. */
        j = planned(2);
        memcpy(bad, blob + 2 * CHUNK, CHUNK);
        bad[0] ^= 0x80;
        assert_int_equal(feed(s, j, bad), -EBADMSG);
        assert_int_equal(s->stats.peer_corrupt, 2);
        bare_free(s);
}

/* The verifiers check by the same step (CONFIRM's held bytes). */
static void test_verifier_by_chain(void **state) {
        (void)state;
        struct source *s = bare();
        memset(&got, 0, sizeof(got));
        struct job *j = planned(3);
        uint8_t *buf = malloc(CHUNK);
        assert_non_null(buf);
        memcpy(buf, blob + 3 * CHUNK, CHUNK);
        assert_int_equal(src_verify_submit(s, j, buf, PEER, 0), 0);
        assert_int_equal(s->vq_head->kind, CHECK_CHAIN);
        s->vstop = true; /* runs what is queued, then returns */
        src_verify_main(s);
        assert_int_equal(got.calls, 1);
        assert_int_equal(got.err, 0);
        assert_true(got.chk.has_chain);
        assert_true(digest_equal(&got.chk.chain, &chain[3]));

        /* Nothing to check by (only the sender's word): refused, never queued unchecked. */
        j = planned(3);
        buf = malloc(CHUNK);
        assert_non_null(buf);
        assert_int_equal(src_verify_submit(s, j, buf, HOME, 0), -EINVAL);
        assert_null(s->vq_head);
        free(j);
        bare_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_take_checks),
                cmocka_unit_test(test_one_chunk_blob),
                cmocka_unit_test(test_hash_as_bytes_arrive),
                cmocka_unit_test(test_verifier_by_chain),
        };
        return cmocka_run_group_tests(tests, setup, NULL);
}
