/* Unit tests for peer/directory.c: every rule of directory.h, with time passed explicitly so
 * that expiry is checked at its exact boundaries, and the bounds (blobs, holders, claims,
 * fetching nodes listed) pushed one past their limits. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "peer/directory.h"

#define CS 4    /* chunk size: blobs of a few chunks are a few bytes */
#define TTL 100 /* ms */
#define CLAIM_TTL 10
#define SRC "registry.example.com/library/busybox"
#define A "10.0.0.1:5001"
#define B "10.0.0.2:5001"
#define C "[fd00::3]:5001"

static struct directory *new_dir(size_t max_blobs, size_t max_holders, size_t max_claims) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = max_blobs,
                                 .max_holders = max_holders,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .max_claims = max_claims};
        struct directory *dir;

        assert_int_equal(dir_new(&cfg, &dir), 0);
        return dir;
}

static struct digest dg(int n) {
        struct digest d;

        memset(&d, 0, sizeof(d));
        d.bytes[0] = (uint8_t)n;
        d.bytes[31] = (uint8_t)(n >> 8);
        return d;
}

/* One blob (digest dg(BLOB), NCHUNKS chunks) announced by NODE with the chunks listed in
 * PRESENT ("0-3,7" style; "" for none) and, optionally, one chunk digest and one chain value. */
struct one {
        struct wire_announce a;
        struct wire_blob b;
        uint8_t present[128];
        uint32_t sha_idx, chain_idx;
        struct digest sha, chain;
};

static void make(struct one *o, const char *node, int blob, uint32_t nchunks, const char *present) {
        const char *p = present;

        memset(o, 0, sizeof(*o));
        snprintf(o->a.node, sizeof(o->a.node), "%s", node);
        o->a.chunk_size = CS;
        o->a.nblobs = 1;
        o->a.blobs = &o->b;
        o->b.digest = dg(blob);
        o->b.nchunks = nchunks;
        o->b.size = (uint64_t)nchunks * CS;
        snprintf(o->b.source, sizeof(o->b.source), "%s", SRC);
        o->b.present = o->present;
        while (*p) {
                char *end;
                unsigned long lo = strtoul(p, &end, 10), hi = lo;

                if (*end == '-')
                        hi = strtoul(end + 1, &end, 10);
                for (unsigned long i = lo; i <= hi; i++)
                        wire_set_bit(o->present, (uint32_t)i);
                p = *end == ',' ? end + 1 : end;
        }
}

static void with_digest(struct one *o, uint32_t idx, uint8_t fill) {
        o->b.ndigests = 1;
        o->b.sha_idx = &o->sha_idx;
        o->b.sha = &o->sha;
        o->sha_idx = idx;
        memset(&o->sha, fill, sizeof(o->sha));
}

/* Chunk IDX's chain value, every byte FILL (a different number from its digest, util/chain.h). */
static void with_chain(struct one *o, uint32_t idx, uint8_t fill) {
        o->b.nchain = 1;
        o->b.chain_idx = &o->chain_idx;
        o->b.chain = &o->chain;
        o->chain_idx = idx;
        memset(&o->chain, fill, sizeof(o->chain));
}

/* Applies O's announce at NOW, which must succeed. */
static void apply_ok(struct directory *dir, struct one *o, uint64_t now) {
        char reason[256];

        assert_int_equal(dir_apply(dir, &o->a, now, reason, sizeof(reason)), 0);
}

static void announce(struct directory *dir, const char *node, int blob, uint32_t nchunks,
                     const char *present, uint64_t now) {
        struct one o;
        char reason[256];

        make(&o, node, blob, nchunks, present);
        assert_int_equal(dir_apply(dir, &o.a, now, reason, sizeof(reason)), 0);
}

/* Locate without a claim; returns the result code. */
static int locate(struct directory *dir, int blob, uint64_t now, struct wire_locate *l) {
        struct digest d = dg(blob);

        return dir_locate(dir, &d, NULL, -1, now, l);
}

static const struct wire_holder *find_holder(const struct wire_locate *l, const char *node,
                                             bool fetching) {
        for (uint32_t i = 0; i < l->nholders; i++)
                if (strcmp(l->holders[i].node, node) == 0 && l->holders[i].fetching == fetching)
                        return &l->holders[i];
        return NULL;
}

static int claim(struct directory *dir, int blob, const char *node, int64_t chunk, uint64_t now,
                 bool *ret_granted) {
        struct digest d = dg(blob);
        struct wire_locate l;
        int r = dir_locate(dir, &d, node, chunk, now, &l);

        if (r < 0)
                return r;
        assert_true(l.has_claim);
        assert_int_equal(l.claim_chunk, chunk);
        *ret_granted = l.claim_granted;
        assert_null(find_holder(&l, node, false));
        assert_null(find_holder(&l, node, true));
        wire_locate_free(&l);
        return 0;
}

static void test_new_refuses(void **state) {
        struct dir_config ok = {.chunk_size = CS,
                                .max_blobs = 1,
                                .max_holders = WIRE_MAX_HOLDERS,
                                .ttl_ms = 1,
                                .claim_ttl_ms = 1};
        struct dir_config c;
        struct directory *dir = NULL;

        (void)state;
        assert_int_equal(dir_new(&ok, &dir), 0);
        dir_free(dir);
        dir_free(NULL);
        c = ok;
        c.chunk_size = 0;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
        c = ok;
        c.max_blobs = 0;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
        c = ok;
        c.max_holders = 0;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
        c = ok;
        c.max_holders = WIRE_MAX_HOLDERS + 1;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
        c = ok;
        c.ttl_ms = 0;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
        c = ok;
        c.claim_ttl_ms = 0;
        assert_int_equal(dir_new(&c, &dir), -EINVAL);
}

static void test_apply_and_locate(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        const struct wire_holder *h;
        struct wire_locate l;
        struct one o;
        char reason[256];

        (void)state;
        assert_int_equal(locate(dir, 1, 0, &l), -ENOENT);
        make(&o, A, 1, 10, "0-3,9");
        with_digest(&o, 2, 0xab);
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), 0);
        announce(dir, B, 1, 10, "4", 1000);

        assert_int_equal(locate(dir, 1, 1000, &l), 0);
        assert_true(digest_equal(&l.digest, &o.b.digest));
        assert_int_equal(l.size, 40);
        assert_int_equal(l.nchunks, 10);
        assert_int_equal(l.chunk_size, CS);
        assert_string_equal(l.source, SRC);
        assert_false(l.has_claim);
        assert_int_equal(l.nholders, 2);
        h = find_holder(&l, A, false);
        assert_non_null(h);
        for (uint32_t i = 0; i < 10; i++)
                assert_int_equal(wire_bit(h->present, i), i <= 3 || i == 9);
        h = find_holder(&l, B, false);
        assert_non_null(h);
        assert_true(wire_bit(h->present, 4) && !wire_bit(h->present, 3));
        assert_true(wire_bit(l.sha_known, 2) && !wire_bit(l.sha_known, 3));
        assert_memory_equal(&l.sha[2], &o.sha, sizeof(o.sha));
        /* What the directory answers is a valid answer on the wire. */
        {
                struct wire_locate back;
                char *text;
                size_t len;

                assert_int_equal(wire_locate_build(&l, &text, &len), 0);
                assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
                assert_true(wire_locate_equal(&l, &back));
                wire_locate_free(&back);
                free(text);
        }
        wire_locate_free(&l);

        /* The present set is the whole set, not a delta. */
        announce(dir, A, 1, 10, "5", 1001);
        assert_int_equal(locate(dir, 1, 1001, &l), 0);
        h = find_holder(&l, A, false);
        assert_true(wire_bit(h->present, 5) && !wire_bit(h->present, 0) &&
                    !wire_bit(h->present, 9));
        wire_locate_free(&l);

        /* Another blob is another record. */
        assert_int_equal(locate(dir, 2, 1001, &l), -ENOENT);
        dir_free(dir);
}

static void test_holder_ttl_boundary(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l;
        struct dir_stats st;

        (void)state;
        announce(dir, A, 1, 4, "0", 1000);
        announce(dir, B, 1, 4, "1", 1050);
        /* A's record lives for [1000, 1100). */
        assert_int_equal(locate(dir, 1, 1099, &l), 0);
        assert_non_null(find_holder(&l, A, false));
        wire_locate_free(&l);
        assert_int_equal(locate(dir, 1, 1100, &l), 0);
        assert_null(find_holder(&l, A, false));
        assert_non_null(find_holder(&l, B, false));
        wire_locate_free(&l);
        /* B's until 1150, and with it the blob. */
        assert_int_equal(locate(dir, 1, 1149, &l), 0);
        assert_int_equal(l.nholders, 1);
        wire_locate_free(&l);
        assert_int_equal(locate(dir, 1, 1150, &l), -ENOENT);

        /* dir_expire frees at the same boundaries. */
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 1);
        assert_int_equal(st.holders, 2);
        dir_expire(dir, 1099);
        dir_get_stats(dir, &st);
        assert_int_equal(st.holders, 2);
        dir_expire(dir, 1100);
        dir_get_stats(dir, &st);
        assert_int_equal(st.holders, 1);
        assert_int_equal(st.blobs, 1);
        dir_expire(dir, 1150);
        dir_get_stats(dir, &st);
        assert_int_equal(st.holders, 0);
        assert_int_equal(st.blobs, 0);
        /* A re-announce after expiry starts afresh, even with another size, and even
         * before dir_expire has run. */
        announce(dir, A, 1, 4, "2", 2000);
        assert_int_equal(locate(dir, 1, 2000, &l), 0);
        assert_int_equal(l.nholders, 1);
        wire_locate_free(&l);
        announce(dir, B, 1, 6, "5", 2100);
        assert_int_equal(locate(dir, 1, 2100, &l), 0);
        assert_int_equal(l.nchunks, 6);
        assert_int_equal(l.nholders, 1);
        assert_non_null(find_holder(&l, B, false));
        wire_locate_free(&l);
        announce(dir, A, 1, 6, "2", 2101);
        assert_int_equal(locate(dir, 1, 2101, &l), 0);
        assert_int_equal(l.nholders, 2);
        wire_locate_free(&l);
        dir_free(dir);
}

static void test_empty_present(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l;
        struct dir_stats st;

        (void)state;
        /* Known but not held: metadata without holders. */
        announce(dir, A, 1, 4, "", 1000);
        assert_int_equal(locate(dir, 1, 1000, &l), 0);
        assert_int_equal(l.nchunks, 4);
        assert_string_equal(l.source, SRC);
        assert_int_equal(l.nholders, 0);
        wire_locate_free(&l);
        dir_get_stats(dir, &st);
        assert_int_equal(st.holders, 0);

        /* B holds some; A's empty re-announce keeps the metadata alive past B's expiry. */
        announce(dir, B, 1, 4, "0-3", 1050);
        announce(dir, A, 1, 4, "", 1120);
        assert_int_equal(locate(dir, 1, 1150, &l), 0);
        assert_int_equal(l.nholders, 0);
        wire_locate_free(&l);
        assert_int_equal(locate(dir, 1, 1219, &l), 0);
        wire_locate_free(&l);
        assert_int_equal(locate(dir, 1, 1220, &l), -ENOENT);

        /* A holder that drops everything is no longer listed. */
        announce(dir, B, 1, 4, "0-3", 2000);
        announce(dir, B, 1, 4, "", 2001);
        assert_int_equal(locate(dir, 1, 2001, &l), 0);
        assert_int_equal(l.nholders, 0);
        wire_locate_free(&l);
        dir_get_stats(dir, &st);
        assert_int_equal(st.holders, 0);

        /* A zero-byte blob has no chunks and only metadata. */
        announce(dir, A, 7, 0, "", 3000);
        assert_int_equal(locate(dir, 7, 3000, &l), 0);
        assert_int_equal(l.size, 0);
        assert_int_equal(l.nchunks, 0);
        assert_int_equal(l.nholders, 0);
        wire_locate_free(&l);
        dir_free(dir);
}

static void test_refusals(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_blob two[2];
        struct wire_locate l;
        struct dir_stats st;
        struct one o, p;
        char reason[256];

        (void)state;
        /* Another chunk size: nothing applied. */
        make(&o, A, 1, 4, "0");
        o.a.chunk_size = CS * 2;
        o.b.nchunks = 2;
        reason[0] = '\0';
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), -EPROTO);
        assert_non_null(strstr(reason, "chunk size mismatch"));
        assert_int_equal(locate(dir, 1, 1000, &l), -ENOENT);

        /* A bad node id: nothing applied. */
        make(&o, "node-a:5001", 1, 4, "0");
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), -EINVAL);
        assert_int_equal(locate(dir, 1, 1000, &l), -ENOENT);

        /* A size that disagrees with the record: that blob skipped, the others applied. */
        announce(dir, A, 1, 4, "0", 1000);
        make(&o, B, 1, 5, "4");
        make(&p, B, 2, 3, "2");
        two[0] = o.b;
        two[1] = p.b;
        o.a.blobs = two;
        o.a.nblobs = 2;
        reason[0] = '\0';
        assert_int_equal(dir_apply(dir, &o.a, 1001, reason, sizeof(reason)), -EINVAL);
        assert_non_null(strstr(reason, "size mismatch"));
        assert_true(reason[0] >= 'a' && reason[0] <= 'z');
        assert_int_equal(locate(dir, 1, 1001, &l), 0);
        assert_null(find_holder(&l, B, false));
        assert_int_equal(l.nchunks, 4);
        wire_locate_free(&l);
        assert_int_equal(locate(dir, 2, 1001, &l), 0);
        assert_non_null(find_holder(&l, B, false));
        wire_locate_free(&l);
        /* Same chunk count but another size in bytes is a mismatch too. */
        make(&o, B, 1, 4, "1");
        o.b.size = 4 * CS - 1;
        assert_int_equal(dir_apply(dir, &o.a, 1002, reason, sizeof(reason)), -EINVAL);
        /* A chunk count inconsistent with the size. */
        make(&o, B, 3, 4, "1");
        o.b.nchunks = 5;
        assert_int_equal(dir_apply(dir, &o.a, 1002, reason, sizeof(reason)), -EINVAL);
        assert_int_equal(locate(dir, 3, 1002, &l), -ENOENT);

        dir_get_stats(dir, &st);
        assert_int_equal(st.announces, 6);
        assert_int_equal(st.refused, 5);
        assert_int_equal(st.blobs, 2);
        dir_free(dir);
}

/* Two holders announcing different digests for one chunk: neither is believed (a reader then
 * takes that chunk from the origin); agreeing and new digests are recorded. */
static void test_digest_conflict_unknown(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l;
        struct digest want;
        struct one o;
        char reason[256];

        (void)state;
        make(&o, A, 1, 4, "0-3");
        with_digest(&o, 1, 0x11);
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), 0);
        make(&o, C, 1, 4, "0-3");
        with_digest(&o, 1, 0x11); /* agrees */
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), 0);
        assert_int_equal(locate(dir, 1, 1000, &l), 0);
        assert_true(wire_bit(l.sha_known, 1));
        memset(&want, 0x11, sizeof(want));
        assert_true(digest_equal(&l.sha[1], &want));
        wire_locate_free(&l);
        make(&o, B, 1, 4, "0-3");
        with_digest(&o, 1, 0x22); /* disagrees: chunk 1's digest is known no more */
        assert_int_equal(dir_apply(dir, &o.a, 1001, reason, sizeof(reason)), 0);
        make(&o, B, 1, 4, "0-3");
        with_digest(&o, 3, 0x33); /* new chunk: recorded */
        assert_int_equal(dir_apply(dir, &o.a, 1002, reason, sizeof(reason)), 0);
        assert_int_equal(locate(dir, 1, 1002, &l), 0);
        assert_false(wire_bit(l.sha_known, 1));
        assert_true(wire_bit(l.sha_known, 3));
        memset(&want, 0x33, sizeof(want));
        assert_true(digest_equal(&l.sha[3], &want));
        assert_false(wire_bit(l.sha_known, 0));
        assert_false(wire_bit(l.sha_known, 2));
        wire_locate_free(&l);
        dir_free(dir);
}

/* Which of a blob's per-chunk values a provenance test is about: plain digests, or chain
 * values (same rules, kept apart). */
static bool of_chain;

/* Announces chunk IDX's value (every byte FILL; a digest, or a chain value with of_chain) of
 * blob 1 (4 chunks, all present) from NODE, VERIFIED or not, at NOW. */
static void announce_digest(struct directory *dir, const char *node, uint32_t idx, uint8_t fill,
                            bool verified, uint64_t now) {
        struct one o;
        char reason[256];

        make(&o, node, 1, 4, "0-3");
        if (of_chain)
                with_chain(&o, idx, fill);
        else
                with_digest(&o, idx, fill);
        o.b.verified = verified;
        assert_int_equal(dir_apply(dir, &o.a, now, reason, sizeof(reason)), 0);
}

/* Answer L's values of the kind of_chain says: values, known and verified bitmaps (NULL when
 * the answer has none of that kind, which only chain values may). */
static void kind_of(const struct wire_locate *l, const struct digest **val, const uint8_t **known,
                    const uint8_t **verified) {
        *val = of_chain ? l->chain : l->sha;
        *known = of_chain ? l->chain_known : l->sha_known;
        *verified = of_chain ? l->chain_verified : l->sha_verified;
        if (!of_chain) {
                assert_non_null(*known);
                assert_non_null(*verified);
        }
}

static bool bit_or_none(const uint8_t *map, uint32_t i) {
        return map && wire_bit(map, i);
}

/* What blob 1's chunk IDX's value (of the kind of_chain says) is now: -1 unknown, else its
 * fill byte; *RET_VERIFIED says whether it is marked verified. Checked both in the whole
 * picture and in a one-chunk answer (a reader's miss), which must agree. */
static int digest_now(struct directory *dir, uint32_t idx, uint64_t now, bool *ret_verified) {
        struct digest d = dg(1);
        struct wire_locate l, one;
        const struct digest *lv, *ov;
        const uint8_t *lk, *lver, *ok, *over;
        int fill = -1;

        assert_int_equal(locate(dir, 1, now, &l), 0);
        assert_int_equal(dir_locate(dir, &d, NULL, idx, now, &one), 0);
        kind_of(&l, &lv, &lk, &lver);
        kind_of(&one, &ov, &ok, &over);
        assert_int_equal(bit_or_none(lk, idx), bit_or_none(ok, idx));
        assert_int_equal(bit_or_none(lver, idx), bit_or_none(over, idx));
        *ret_verified = bit_or_none(lver, idx);
        if (bit_or_none(lk, idx)) {
                fill = lv[idx].bytes[0];
                for (size_t i = 0; i < DIGEST_LEN; i++)
                        assert_int_equal(lv[idx].bytes[i], fill);
                assert_true(digest_equal(&lv[idx], &ov[idx]));
        } else {
                assert_false(*ret_verified); /* never verified without a value */
        }
        wire_locate_free(&l);
        wire_locate_free(&one);
        return fill;
}

/* Provenance: a digest from a node that verified the whole blob replaces an unverified one
 * that disagrees, an unverified one never replaces it, and agreeing announces upgrade it.
 * These provenance tests run twice: for digests, and (prestate CHAIN) for chain values. */
static bool chain_kind = true;
#define CHAIN (&chain_kind)

static void test_digest_verified_wins(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        bool v;

        of_chain = *state != NULL;
        /* Unverified first, then a verified disagreement: the verified one is kept. */
        announce_digest(dir, A, 0, 0x11, false, 1000);
        assert_int_equal(digest_now(dir, 0, 1000, &v), 0x11);
        assert_false(v);
        announce_digest(dir, B, 0, 0x22, true, 1001);
        assert_int_equal(digest_now(dir, 0, 1001, &v), 0x22);
        assert_true(v);
        /* The liar (or the stale holder) again, unverified: ignored, however often. */
        announce_digest(dir, A, 0, 0x11, false, 1002);
        announce_digest(dir, A, 0, 0x11, false, 1003);
        assert_int_equal(digest_now(dir, 0, 1003, &v), 0x22);
        assert_true(v);
        /* Another unverified holder that agrees changes nothing; it stays verified. */
        announce_digest(dir, C, 0, 0x22, false, 1004);
        assert_int_equal(digest_now(dir, 0, 1004, &v), 0x22);
        assert_true(v);

        /* Verified first, then an unverified disagreement: ignored. */
        announce_digest(dir, B, 1, 0x33, true, 1005);
        announce_digest(dir, A, 1, 0x44, false, 1006);
        assert_int_equal(digest_now(dir, 1, 1006, &v), 0x33);
        assert_true(v);

        /* Unverified, then the same digest verified: upgraded in place. */
        announce_digest(dir, A, 2, 0x55, false, 1007);
        announce_digest(dir, B, 2, 0x55, true, 1008);
        assert_int_equal(digest_now(dir, 2, 1008, &v), 0x55);
        assert_true(v);
        dir_free(dir);
}

/* Two verified announces that disagree: one of them lies about verifying, and the directory
 * cannot tell which, so the digest becomes unknown, and stays so, whoever announces next
 * (else a liar re-announcing quickly would be believed again). */
static void test_digest_verified_conflict(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        bool v;

        of_chain = *state != NULL;
        announce_digest(dir, A, 0, 0x11, true, 1000);
        assert_int_equal(digest_now(dir, 0, 1000, &v), 0x11);
        announce_digest(dir, B, 0, 0x22, true, 1001);
        assert_int_equal(digest_now(dir, 0, 1001, &v), -1);
        announce_digest(dir, C, 0, 0x33, false, 1002);
        assert_int_equal(digest_now(dir, 0, 1002, &v), -1);
        announce_digest(dir, A, 0, 0x11, true, 1003);
        assert_int_equal(digest_now(dir, 0, 1003, &v), -1);
        announce_digest(dir, B, 0, 0x22, true, 1004);
        assert_int_equal(digest_now(dir, 0, 1004, &v), -1);
        /* Other chunks are not affected. */
        announce_digest(dir, C, 2, 0x44, false, 1005);
        assert_int_equal(digest_now(dir, 2, 1005, &v), 0x44);
        dir_free(dir);
}

/* Two unverified announces that disagree: unknown, and no unverified digest is believed for
 * that chunk again (the liar would simply announce first); a verified one is. */
static void test_digest_dispute_sticks(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        bool v;

        of_chain = *state != NULL;
        announce_digest(dir, A, 1, 0x11, false, 1000);
        announce_digest(dir, B, 1, 0x22, false, 1001);
        assert_int_equal(digest_now(dir, 1, 1001, &v), -1);
        announce_digest(dir, B, 1, 0x22, false, 1002); /* first after the dispute: ignored */
        assert_int_equal(digest_now(dir, 1, 1002, &v), -1);
        announce_digest(dir, A, 1, 0x11, false, 1003);
        assert_int_equal(digest_now(dir, 1, 1003, &v), -1);
        announce_digest(dir, C, 1, 0x11, true, 1004); /* verified: recorded */
        assert_int_equal(digest_now(dir, 1, 1004, &v), 0x11);
        assert_true(v);
        announce_digest(dir, B, 1, 0x22, false, 1005);
        assert_int_equal(digest_now(dir, 1, 1005, &v), 0x11);
        /* The dispute lives as long as the blob's record: once it expired, it is forgotten. */
        dir_expire(dir, 1005 + TTL);
        announce_digest(dir, B, 1, 0x22, false, 1005 + TTL);
        assert_int_equal(digest_now(dir, 1, 1005 + TTL, &v), 0x22);
        assert_false(v);
        dir_free(dir);
}

/* Whether MAP (NULL: none) has exactly the bits LO .. HI - 1 of its N. */
static void assert_bits(const uint8_t *map, uint32_t n, uint32_t lo, uint32_t hi) {
        for (uint32_t i = 0; i < n; i++)
                assert_int_equal(bit_or_none(map, i), i >= lo && i < hi);
}

/* Chain values are answered over the digests' span and one more before it (a reader checks
 * chunk I from I - 1's value), and never the last chunk's: that one is the blob digest, and
 * ignored when announced. */
static void test_chain_answer_span(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 4,
                                 .max_holders = 4,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .locate_span = 2};
        enum { N = 8 };
        uint32_t idx[N];
        struct digest sha[N], chain[N], d = dg(1);
        struct directory *dir;
        struct wire_locate l;
        struct one o;

        (void)state;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        make(&o, A, 1, N, "0-7");
        for (uint32_t i = 0; i < N; i++) {
                idx[i] = i;
                memset(&sha[i], 0x40 + (int)i, sizeof(sha[i]));
                memset(&chain[i], 0x80 + (int)i, sizeof(chain[i]));
        }
        o.b.ndigests = o.b.nchain = N; /* the last chunk's chain value too: ignored */
        o.b.sha_idx = o.b.chain_idx = idx;
        o.b.sha = sha;
        o.b.chain = chain;
        apply_ok(dir, &o, 1000);

        /* A miss of chunk 3: digests 3 and 4 (the span), chain values 2 to 4. */
        assert_int_equal(dir_locate(dir, &d, NULL, 3, 1000, &l), 0);
        assert_bits(l.sha_known, N, 3, 5);
        assert_bits(l.chain_known, N, 2, 5);
        assert_bits(l.chain_verified, N, 0, 0); /* A did not verify the blob */
        for (uint32_t i = 2; i < 5; i++)
                assert_true(digest_equal(&l.chain[i], &chain[i]));
        wire_locate_free(&l);
        /* Chunk 0: nothing before it (SHA-256's initial state). */
        assert_int_equal(dir_locate(dir, &d, NULL, 0, 1000, &l), 0);
        assert_bits(l.chain_known, N, 0, 2);
        wire_locate_free(&l);
        /* At the end: digests 6 and 7, chain values 5 and 6 (7's is the blob digest). */
        assert_int_equal(dir_locate(dir, &d, NULL, 6, 1000, &l), 0);
        assert_bits(l.sha_known, N, 6, 8);
        assert_bits(l.chain_known, N, 5, 7);
        wire_locate_free(&l);
        /* The whole picture: every chain value but the last chunk's. */
        assert_int_equal(locate(dir, 1, 1000, &l), 0);
        assert_bits(l.chain_known, N, 0, N - 1);
        assert_true(digest_equal(&l.chain[0], &chain[0]));
        wire_locate_free(&l);
        dir_free(dir);
}

/* A chunk's digest and its chain value are different numbers: both recorded, never compared,
 * and a dispute over one leaves the other alone. */
static void test_chain_apart_from_digests(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct one o;
        bool v;

        (void)state;
        make(&o, A, 1, 4, "0-3");
        with_digest(&o, 1, 0x11);
        with_chain(&o, 1, 0x22);
        apply_ok(dir, &o, 1000);
        of_chain = false;
        assert_int_equal(digest_now(dir, 1, 1000, &v), 0x11);
        of_chain = true;
        assert_int_equal(digest_now(dir, 1, 1000, &v), 0x22);
        /* B agrees on the digest, not on the chain value (same standing): only the chain value
         * is disputed. */
        make(&o, B, 1, 4, "0-3");
        with_digest(&o, 1, 0x11);
        with_chain(&o, 1, 0x33);
        apply_ok(dir, &o, 1001);
        assert_int_equal(digest_now(dir, 1, 1001, &v), -1);
        of_chain = false;
        assert_int_equal(digest_now(dir, 1, 1001, &v), 0x11);
        /* And the other way round: a disputed digest leaves chunk 2's chain value. */
        announce_digest(dir, A, 2, 0x44, false, 1002);
        announce_digest(dir, B, 2, 0x55, false, 1002);
        of_chain = true;
        announce_digest(dir, C, 2, 0x44, false, 1002);
        assert_int_equal(digest_now(dir, 2, 1002, &v), 0x44);
        of_chain = false;
        assert_int_equal(digest_now(dir, 2, 1002, &v), -1);
        dir_free(dir);
}

/* Chain arrays come with a blob's first chain value and not before: a blob with digests alone
 * costs what it did (its holder bitmaps and one block of digests), its answers carry no chain
 * arrays, and a chain value for the last chunk (ignored) allocates nothing either. */
static void test_chain_lazy(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        /* 4 chunks: 4 values of 32 bytes and 4 one-byte bitmaps a kind; 1 byte a holder. */
        enum { VALUES = 4 * 32 + 4 * 1, HOLDER = 1 };
        struct dir_stats st;
        struct digest d = dg(1);
        struct wire_locate l;
        struct one o;

        (void)state;
        make(&o, A, 1, 4, "0-3");
        with_digest(&o, 0, 0x11);
        apply_ok(dir, &o, 1000);
        make(&o, B, 1, 4, "0-3");
        with_chain(&o, 3, 0x22); /* the last chunk's */
        apply_ok(dir, &o, 1000);
        dir_get_stats(dir, &st);
        assert_int_equal(st.bytes, 2 * HOLDER + VALUES);
        for (int64_t c = -1; c < 4; c++) {
                assert_int_equal(dir_locate(dir, &d, NULL, c, 1000, &l), 0);
                assert_non_null(l.sha_known);
                assert_null(l.chain);
                assert_null(l.chain_known);
                assert_null(l.chain_verified);
                wire_locate_free(&l);
        }
        /* The first chain value: one more block. */
        make(&o, B, 1, 4, "0-3");
        with_chain(&o, 2, 0x33);
        o.b.verified = true;
        apply_ok(dir, &o, 1001);
        dir_get_stats(dir, &st);
        assert_int_equal(st.bytes, 2 * HOLDER + 2 * VALUES);
        assert_int_equal(dir_locate(dir, &d, NULL, 3, 1001, &l), 0);
        assert_bits(l.chain_known, 4, 2, 3);
        assert_bits(l.chain_verified, 4, 2, 3);
        wire_locate_free(&l);
        /* Both blocks go with the blob's record. */
        dir_expire(dir, 1001 + TTL);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 0);
        assert_int_equal(st.bytes, 0);
        dir_free(dir);
}

/* Chain values count against max_bytes like digests: the first chain values of a blob that
 * push the home past its budget drop the blob whose newest announce is oldest. */
static void test_chain_byte_budget(void **state) {
        /* 64 chunks: a block of values is 64 x 32 + 4 x 8 bytes, a holder bitmap 8; three
         * blobs with digests fit, not with one blob's chain values on top. */
        enum { N = 64, BLOCK = N * 32 + 4 * 8, BLOB = BLOCK + N / 8 };
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 1000,
                                 .max_holders = 8,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .max_bytes = 3 * BLOB + BLOCK / 2};
        uint32_t idx[N];
        struct digest v[N];
        struct directory *dir;
        struct wire_locate l;
        struct dir_stats st;
        struct one o;

        (void)state;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        for (uint32_t i = 0; i < N; i++) {
                idx[i] = i;
                memset(&v[i], (int)i, sizeof(v[i]));
        }
        for (int blob = 1; blob <= 3; blob++) {
                make(&o, A, blob, N, "0-63");
                o.b.ndigests = N;
                o.b.sha_idx = idx;
                o.b.sha = v;
                apply_ok(dir, &o, 1000 + (uint64_t)blob);
        }
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 3);
        assert_int_equal(st.bytes, 3 * BLOB);
        make(&o, A, 3, N, "0-63");
        o.b.nchain = N - 1;
        o.b.chain_idx = idx;
        o.b.chain = v;
        apply_ok(dir, &o, 1010);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 2);
        assert_int_equal(st.bytes, 2 * BLOB + BLOCK);
        assert_true(st.bytes <= cfg.max_bytes);
        assert_int_equal(locate(dir, 1, 1010, &l), -ENOENT);
        assert_int_equal(locate(dir, 3, 1010, &l), 0);
        assert_bits(l.chain_known, N, 0, N - 1);
        wire_locate_free(&l);
        dir_free(dir);
}

/* The verified bits travel through the wire: a locate answer built from the directory and
 * parsed again says the same, and an announce's "verified" survives build and parse. */
static void test_digest_provenance_on_the_wire(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l, back;
        struct wire_announce a;
        struct one o;
        char *text = NULL, reason[256];
        size_t len = 0;

        (void)state;
        of_chain = false;
        make(&o, A, 1, 4, "0-3");
        with_digest(&o, 2, 0x66);
        o.b.verified = true;
        assert_int_equal(wire_announce_build(&o.a, &text, &len), 0);
        assert_non_null(strstr(text, "\"verified\":true"));
        assert_int_equal(wire_announce_parse(text, len, &a, reason, sizeof(reason)), 0);
        free(text);
        assert_true(a.blobs[0].verified);
        assert_int_equal(dir_apply(dir, &a, 1000, reason, sizeof(reason)), 0);
        wire_announce_free(&a);
        announce_digest(dir, B, 1, 0x77, false, 1000);

        assert_int_equal(locate(dir, 1, 1000, &l), 0);
        assert_int_equal(wire_locate_build(&l, &text, &len), 0);
        assert_non_null(strstr(text, "\"verified\":[[2,3]]"));
        assert_int_equal(wire_locate_parse(text, len, &back, reason, sizeof(reason)), 0);
        free(text);
        assert_true(wire_locate_equal(&l, &back));
        assert_true(wire_bit(back.sha_verified, 2));
        assert_false(wire_bit(back.sha_verified, 1));
        assert_true(wire_bit(back.sha_known, 1));
        wire_locate_free(&back);
        wire_locate_free(&l);
        dir_free(dir);
}

static void test_max_blobs(void **state) {
        struct directory *dir = new_dir(3, 8, 0);
        struct wire_locate l;
        struct dir_stats st;

        (void)state;
        announce(dir, A, 1, 4, "0", 1000);
        announce(dir, A, 2, 4, "0", 1001);
        announce(dir, A, 3, 4, "0", 1002);
        announce(dir, B, 1, 4, "1", 1003); /* blob 1 is now the most recently announced */
        announce(dir, A, 4, 4, "0", 1004); /* drops blob 2 */
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 3);
        assert_int_equal(st.holders, 4);
        assert_int_equal(locate(dir, 2, 1004, &l), -ENOENT);
        for (int b = 1; b <= 4; b += 2) {
                assert_int_equal(locate(dir, b, 1004, &l), 0);
                wire_locate_free(&l);
        }
        assert_int_equal(locate(dir, 1, 1004, &l), 0);
        assert_int_equal(l.nholders, 2);
        wire_locate_free(&l);
        announce(dir, A, 5, 4, "0", 1005); /* drops blob 3 */
        assert_int_equal(locate(dir, 3, 1005, &l), -ENOENT);
        assert_int_equal(locate(dir, 1, 1005, &l), 0);
        wire_locate_free(&l);
        dir_free(dir);
}

static void test_max_holders(void **state) {
        struct directory *dir = new_dir(16, 2, 0);
        struct wire_locate l;

        (void)state;
        announce(dir, A, 1, 4, "0", 1000);
        announce(dir, B, 1, 4, "1", 1001);
        announce(dir, A, 1, 4, "0", 1002); /* refresh: B is now the least recent */
        announce(dir, C, 1, 4, "2", 1003);
        assert_int_equal(locate(dir, 1, 1003, &l), 0);
        assert_int_equal(l.nholders, 2);
        assert_non_null(find_holder(&l, A, false));
        assert_null(find_holder(&l, B, false));
        assert_non_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        /* Updating a holder already recorded drops nobody. */
        announce(dir, C, 1, 4, "2-3", 1004);
        assert_int_equal(locate(dir, 1, 1004, &l), 0);
        assert_int_equal(l.nholders, 2);
        wire_locate_free(&l);
        dir_free(dir);
}

static void test_claims(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l;
        struct digest d = dg(1);
        struct dir_stats st;
        bool granted;

        (void)state;
        announce(dir, A, 1, 8, "0", 1000);
        /* Held chunk: never granted. */
        assert_int_equal(claim(dir, 1, B, 0, 1000, &granted), 0);
        assert_false(granted);
        /* Nobody has chunk 5: B gets it; C does not, and sees B fetching it. */
        assert_int_equal(claim(dir, 1, B, 5, 1000, &granted), 0);
        assert_true(granted);
        assert_int_equal(dir_locate(dir, &d, C, 5, 1001, &l), 0);
        assert_false(l.claim_granted);
        assert_non_null(find_holder(&l, B, true));
        assert_true(wire_bit(find_holder(&l, B, true)->present, 5));
        assert_false(wire_bit(find_holder(&l, B, true)->present, 4));
        /* An answer about chunk 5 lists only who has or fetches chunk 5: not A. */
        assert_null(find_holder(&l, A, false));
        assert_int_equal(l.nholders, 1);
        wire_locate_free(&l);
        /* About chunk 0: A holds it; present holders come before fetching ones. */
        assert_int_equal(claim(dir, 1, C, 0, 1001, &granted), 0);
        assert_false(granted);
        assert_int_equal(dir_locate(dir, &d, C, 0, 1001, &l), 0);
        assert_non_null(find_holder(&l, A, false));
        assert_null(find_holder(&l, B, true));
        assert_false(l.holders[0].fetching);
        wire_locate_free(&l);
        /* A reader without a claim sees it too. */
        assert_int_equal(locate(dir, 1, 1001, &l), 0);
        assert_non_null(find_holder(&l, B, true));
        wire_locate_free(&l);
        /* B asking again is granted again, which restarts its claim_ttl. */
        assert_int_equal(claim(dir, 1, B, 5, 1005, &granted), 0);
        assert_true(granted);
        /* Claimed at 1005, live for [1005, 1015). */
        assert_int_equal(claim(dir, 1, C, 5, 1014, &granted), 0);
        assert_false(granted);
        assert_int_equal(claim(dir, 1, C, 5, 1015, &granted), 0);
        assert_true(granted);
        assert_int_equal(claim(dir, 1, B, 5, 1016, &granted), 0);
        assert_false(granted);

        /* The claimant announcing the chunk present clears its claim. */
        assert_int_equal(claim(dir, 1, B, 6, 1016, &granted), 0);
        assert_true(granted);
        announce(dir, B, 1, 8, "6", 1017);
        assert_int_equal(locate(dir, 1, 1017, &l), 0);
        assert_null(find_holder(&l, B, true));
        assert_non_null(find_holder(&l, B, false));
        assert_non_null(find_holder(&l, C, true)); /* C's claim on 5 is untouched */
        wire_locate_free(&l);
        /* ... but only for chunks it announces: another node's announce does not. */
        announce(dir, A, 1, 8, "0,5", 1018);
        assert_int_equal(locate(dir, 1, 1018, &l), 0);
        assert_non_null(find_holder(&l, C, true));
        wire_locate_free(&l);

        /* The claimant never sees itself, present or fetching. */
        assert_int_equal(dir_locate(dir, &d, B, -1, 1018, &l), 0);
        assert_false(l.has_claim);
        assert_null(find_holder(&l, B, false));
        assert_non_null(find_holder(&l, A, false));
        wire_locate_free(&l);
        assert_int_equal(dir_locate(dir, &d, C, 7, 1018, &l), 0);
        assert_true(l.claim_granted);
        assert_null(find_holder(&l, C, true));
        wire_locate_free(&l);

        /* A chunk held only by an expired holder is free to claim. */
        announce(dir, C, 1, 8, "", 1117); /* keep the blob alive */
        assert_int_equal(claim(dir, 1, C, 0, 1117, &granted), 0);
        assert_false(granted); /* A's announce of 1018 holds it until 1118 */
        assert_int_equal(claim(dir, 1, C, 0, 1118, &granted), 0);
        assert_true(granted);

        /* Out of range: no claim, still an answer. */
        assert_int_equal(dir_locate(dir, &d, C, 8, 1118, &l), 0);
        assert_false(l.has_claim);
        wire_locate_free(&l);
        assert_int_equal(dir_locate(dir, &d, "not-a-node", 1, 1118, &l), -EINVAL);

        dir_get_stats(dir, &st);
        assert_int_equal(st.claims_granted, 5); /* renewals are not new grants */
        dir_free(dir);
}

static void test_claim_keeps_blob_alive(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        struct wire_locate l;
        struct dir_stats st;
        bool granted;

        (void)state;
        announce(dir, A, 1, 4, "", 1000); /* alive until 1100 */
        assert_int_equal(claim(dir, 1, B, 2, 1095, &granted), 0);
        assert_true(granted);
        /* The claim (live until 1105) keeps the record resolvable. */
        assert_int_equal(locate(dir, 1, 1104, &l), 0);
        assert_non_null(find_holder(&l, B, true));
        wire_locate_free(&l);
        dir_expire(dir, 1104);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 1);
        assert_int_equal(st.claims, 1);
        assert_int_equal(locate(dir, 1, 1105, &l), -ENOENT);
        dir_expire(dir, 1105);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 0);
        assert_int_equal(st.claims, 0);
        dir_free(dir);
}

static void test_max_claims(void **state) {
        struct directory *dir = new_dir(16, 8, 2);
        struct wire_locate l;
        struct dir_stats st;
        bool granted;

        (void)state;
        announce(dir, A, 1, 8, "", 1000);
        assert_int_equal(claim(dir, 1, B, 1, 1000, &granted), 0);
        assert_int_equal(claim(dir, 1, B, 2, 1001, &granted), 0);
        assert_int_equal(claim(dir, 1, C, 3, 1002, &granted), 0); /* drops B's claim on 1 */
        assert_true(granted);
        dir_get_stats(dir, &st);
        assert_int_equal(st.claims, 2);
        assert_int_equal(locate(dir, 1, 1002, &l), 0);
        assert_false(wire_bit(find_holder(&l, B, true)->present, 1));
        assert_true(wire_bit(find_holder(&l, B, true)->present, 2));
        assert_true(wire_bit(find_holder(&l, C, true)->present, 3));
        wire_locate_free(&l);
        assert_int_equal(claim(dir, 1, C, 1, 1003, &granted), 0);
        assert_true(granted); /* chunk 1 was free again */
        dir_free(dir);
}

/* More claimants than an answer lists: the one fetching the asked chunk is always there. */
static void test_fetching_bound(void **state) {
        struct directory *dir = new_dir(16, 8, 0);
        const unsigned n = WIRE_MAX_HOLDERS + 6;
        struct digest d = dg(1);
        struct wire_locate l;
        char node[PEER_ID_MAX];
        bool granted;

        (void)state;
        announce(dir, A, 1, 100, "99", 1000);
        for (unsigned i = 0; i < n; i++) {
                snprintf(node, sizeof(node), "10.1.0.%u:5001", i);
                assert_int_equal(claim(dir, 1, node, i, 1000, &granted), 0);
                assert_true(granted);
        }
        /* A chunk's answer lists its one claimant, however many claims the blob has. */
        assert_int_equal(dir_locate(dir, &d, C, n - 1, 1001, &l), 0);
        assert_false(l.claim_granted);
        assert_int_equal(l.nholders, 1);
        snprintf(node, sizeof(node), "10.1.0.%u:5001", n - 1);
        assert_string_equal(l.holders[0].node, node);
        assert_true(l.holders[0].fetching);
        wire_locate_free(&l);
        /* The whole picture (no chunk asked) is bounded: A and WIRE_MAX_HOLDERS fetching. */
        assert_int_equal(dir_locate(dir, &d, NULL, -1, 1001, &l), 0);
        assert_int_equal(l.nholders, 1 + WIRE_MAX_HOLDERS);
        {
                char *text;
                size_t len;

                assert_int_equal(wire_locate_build(&l, &text, &len), 0);
                free(text);
        }
        wire_locate_free(&l);
        dir_free(dir);
}

/* Announces a blob of NCHUNKS chunks with chunk 0 present, NODE as holder; the bitmap is
 * allocated here (the fixed buffers above are for small blobs). */
static void announce_big(struct directory *dir, const char *node, int blob, uint32_t nchunks,
                         uint64_t now) {
        struct wire_announce a = {.chunk_size = CS, .nblobs = 1};
        struct wire_blob b = {.digest = dg(blob), .nchunks = nchunks};
        char reason[256];

        snprintf(a.node, sizeof(a.node), "%s", node);
        snprintf(b.source, sizeof(b.source), "%s", SRC);
        b.size = (uint64_t)nchunks * CS;
        b.present = calloc(1, ((size_t)nchunks + 7) / 8);
        assert_non_null(b.present);
        wire_set_bit(b.present, 0);
        a.blobs = &b;
        assert_int_equal(dir_apply(dir, &a, now, reason, sizeof(reason)), 0);
        free(b.present);
}

/* Memory is bounded in bytes, not only in blobs: announces of huge blobs (their bitmaps are
 * sized by the announced chunk count) push the oldest blob out. */
static void test_byte_budget(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 1000,
                                 .max_holders = 8,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .max_bytes = 300 << 10};
        struct directory *dir;
        struct wire_locate l;
        struct dir_stats st;

        (void)state;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        /* 1 Mi chunks: a 128 KiB bitmap per holder. Two holders of blob 1 fit, ... */
        announce_big(dir, A, 1, 1u << 20, 1000);
        announce_big(dir, B, 1, 1u << 20, 1001);
        assert_int_equal(locate(dir, 1, 1002, &l), 0);
        wire_locate_free(&l);
        /* ... a third bitmap, of another blob, does not: blob 1, the oldest, goes. */
        announce_big(dir, A, 2, 1u << 20, 1003);
        assert_int_equal(locate(dir, 1, 1004, &l), -ENOENT);
        assert_int_equal(locate(dir, 2, 1004, &l), 0);
        wire_locate_free(&l);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 1);
        assert_int_equal(st.holders, 1);
        dir_free(dir);
}

/* Concurrent use under the sanitizers: no race reports, no leaks, consistent counts. */
struct worker {
        struct directory *dir;
        int id;
};

static void *work(void *arg) {
        struct worker *w = arg;
        char node[PEER_ID_MAX];
        struct wire_locate l;
        bool granted;

        snprintf(node, sizeof(node), "10.2.0.%d:5001", w->id);
        for (int i = 0; i < 2000; i++) {
                announce(w->dir, node, i % 50, 16, i % 3 ? "0-3" : "", (uint64_t)i);
                if (locate(w->dir, (i * 7) % 50, (uint64_t)i, &l) == 0)
                        wire_locate_free(&l);
                if (claim(w->dir, i % 50, node, i % 16, (uint64_t)i, &granted) == 0)
                        (void)granted;
                if (i % 100 == 0)
                        dir_expire(w->dir, (uint64_t)i);
        }
        return NULL;
}

static void test_threads(void **state) {
        struct directory *dir = new_dir(32, 4, 8);
        struct worker w[4];
        pthread_t t[4];
        struct dir_stats st;

        (void)state;
        for (int i = 0; i < 4; i++) {
                w[i] = (struct worker){.dir = dir, .id = i};
                assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        dir_get_stats(dir, &st);
        assert_int_equal(st.announces, 4 * 2000);
        assert_true(st.blobs <= 32);
        assert_true(st.holders <= 32 * 4);
        assert_true(st.claims <= 32 * 8);
        dir_expire(dir, UINT64_MAX);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 0);
        assert_int_equal(st.holders, 0);
        assert_int_equal(st.claims, 0);
        dir_free(dir);
}

/* NODE's announce with no blobs and one index record: layer dg(LAYER) is blob dg(INDEX). */
static int publish(struct directory *dir, const char *node, int layer, int index, uint64_t size,
                   uint64_t now) {
        struct wire_index x = {.layer = dg(layer), .index = dg(index), .size = size};
        struct wire_announce a = {.chunk_size = CS, .nindexes = 1, .indexes = &x};
        char reason[160];

        snprintf(a.node, sizeof(a.node), "%s", node);
        return dir_apply(dir, &a, now, reason, sizeof(reason));
}

static void expect_index(struct directory *dir, int layer, uint64_t now, int index, uint64_t size) {
        struct wire_index x;
        struct digest l = dg(layer), want = dg(index);

        assert_int_equal(dir_locate_index(dir, &l, now, &x), 0);
        assert_true(digest_equal(&x.layer, &l));
        assert_true(digest_equal(&x.index, &want));
        assert_true(x.size == size);
}

static void expect_no_index(struct directory *dir, int layer, uint64_t now) {
        struct wire_index x;
        struct digest l = dg(layer);

        assert_int_equal(dir_locate_index(dir, &l, now, &x), -ENOENT);
}

/* An index record lives TTL after its announce, like a holder record, is replaced by its
 * node's next one, and rides along with blobs in the same announce. */
static void test_index_records(void **state) {
        struct directory *dir = new_dir(8, 4, 0);
        struct dir_stats st;
        struct one o;
        struct wire_index x = {.layer = dg(7), .index = dg(8), .size = 99};
        char reason[160];

        (void)state;
        expect_no_index(dir, 1, 0);
        assert_int_equal(publish(dir, A, 1, 2, 1000, 10), 0);
        expect_index(dir, 1, 10, 2, 1000);
        expect_index(dir, 1, 10 + TTL - 1, 2, 1000);
        expect_no_index(dir, 1, 10 + TTL);                    /* dead at exactly T + ttl */
        expect_no_index(dir, 3, 10);                          /* another layer */
        assert_int_equal(publish(dir, A, 1, 2, 1000, 50), 0); /* refreshed */
        expect_index(dir, 1, 10 + TTL, 2, 1000);
        assert_int_equal(publish(dir, A, 1, 4, 2000, 60), 0); /* A rebuilt it: replaced */
        expect_index(dir, 1, 60, 4, 2000);
        dir_get_stats(dir, &st);
        assert_int_equal(st.indexes, 1);
        assert_int_equal(st.index_records, 1);
        assert_int_equal(st.blobs, 0); /* index records make no blob records */

        /* With blobs in the same announce: both applied. */
        make(&o, B, 5, 4, "0-3");
        o.a.nindexes = 1;
        o.a.indexes = &x;
        assert_int_equal(dir_apply(dir, &o.a, 70, reason, sizeof(reason)), 0);
        expect_index(dir, 7, 70, 8, 99);
        dir_get_stats(dir, &st);
        assert_int_equal(st.blobs, 1);
        assert_int_equal(st.indexes, 2);

        /* A refused announce (chunk size) applies no record either. */
        o.a.chunk_size = CS * 2;
        x.layer = dg(9);
        assert_int_equal(dir_apply(dir, &o.a, 70, reason, sizeof(reason)), -EPROTO);
        expect_no_index(dir, 9, 70);

        dir_expire(dir, 60 + TTL - 1);
        dir_get_stats(dir, &st);
        assert_int_equal(st.indexes, 2);
        dir_expire(dir, 70 + TTL);
        dir_get_stats(dir, &st);
        assert_int_equal(st.indexes, 0);
        assert_int_equal(st.index_records, 0);
        assert_int_equal(st.index_misses, 4);
        dir_free(dir);
}

/* Which index a home answers when nodes disagree: the one most live nodes announce, the most
 * recently announced among equals; a lone liar cannot outvote two builders, and records that
 * expire stop voting. */
static void test_index_votes(void **state) {
        struct directory *dir = new_dir(8, 4, 0);

        (void)state;
        assert_int_equal(publish(dir, A, 1, 2, 100, 0), 0);
        assert_int_equal(publish(dir, B, 1, 2, 100, 10), 0);
        assert_int_equal(publish(dir, C, 1, 3, 100, 20), 0); /* newest, but alone */
        expect_index(dir, 1, 20, 2, 100);
        /* Same digest, another size, is another answer. */
        assert_int_equal(publish(dir, C, 1, 2, 101, 20), 0);
        expect_index(dir, 1, 20, 2, 100);
        /* A and B expire: C's is all there is. */
        expect_index(dir, 1, 10 + TTL, 2, 101);
        /* Equal votes: the most recent wins. */
        assert_int_equal(publish(dir, A, 1, 5, 100, 200), 0);
        assert_int_equal(publish(dir, B, 1, 6, 100, 201), 0);
        expect_index(dir, 1, 201, 6, 100);
        dir_free(dir);
}

/* Bounds: DIR_INDEX_NODES records per layer (the least recently announced dropped) and
 * max_indexes layers (the layer whose newest record is oldest dropped). */
static void test_index_bounds(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 8,
                                 .max_holders = 4,
                                 .ttl_ms = 1000,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .max_indexes = 3};
        struct directory *dir;
        struct dir_stats st;
        char node[PEER_ID_MAX];

        (void)state;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        for (int i = 0; i < DIR_INDEX_NODES + 1; i++) {
                snprintf(node, sizeof(node), "10.0.1.%d:5001", i + 1);
                /* Node 1 (the oldest) names index 50; the others 60: after node 1 is dropped,
                 * 60 is all that is left even if node 1 had been the majority. */
                assert_int_equal(publish(dir, node, 1, i == 0 ? 50 : 60, 10, (uint64_t)i), 0);
        }
        dir_get_stats(dir, &st);
        assert_int_equal(st.index_records, DIR_INDEX_NODES);
        assert_int_equal(st.indexes, 1);
        expect_index(dir, 1, 20, 60, 10);
        /* Node 1 announces again: it takes the slot of the least recent (node 2). */
        assert_int_equal(publish(dir, "10.0.1.1:5001", 1, 50, 10, 30), 0);
        dir_get_stats(dir, &st);
        assert_int_equal(st.index_records, DIR_INDEX_NODES);

        assert_int_equal(publish(dir, A, 2, 70, 10, 40), 0);
        assert_int_equal(publish(dir, A, 3, 70, 10, 50), 0);
        assert_int_equal(publish(dir, A, 1, 60, 10, 60), 0); /* layer 1 is the newest now */
        assert_int_equal(publish(dir, A, 4, 70, 10, 70), 0); /* layer 2 goes */
        dir_get_stats(dir, &st);
        assert_int_equal(st.indexes, 3);
        expect_no_index(dir, 2, 70);
        expect_index(dir, 3, 70, 70, 10);
        expect_index(dir, 4, 70, 70, 10);
        expect_index(dir, 1, 70, 60, 10);
        assert_int_equal(st.index_records, DIR_INDEX_NODES + 2);
        /* A size the wire refuses is refused here too (a caller that skipped the parser). */
        assert_int_equal(publish(dir, A, 5, 70, 0, 80), -EINVAL);
        expect_no_index(dir, 5, 80);
        dir_free(dir);
}

/* An answer about one chunk carries that chunk's digest and the next DIR_LOCATE_SPAN - 1
 * (a reader keeps it for the misses that follow), none before it, none past the span. */
static void test_one_chunk_answer_digest_span(void **state) {
        (void)state;
        struct directory *dir = new_dir(16, 16, 16);
        enum { ASKED = 10, N = ASKED + DIR_LOCATE_SPAN + 20 };
        char all[32];
        uint32_t idx[N];
        struct digest sha[N];
        struct one o;
        char reason[256];

        snprintf(all, sizeof(all), "0-%d", N - 1);
        make(&o, "10.0.0.2:5001", 1, N, all);
        for (uint32_t i = 0; i < N; i++) {
                idx[i] = i;
                memset(&sha[i], (int)(i + 1), sizeof(sha[i]));
        }
        o.b.ndigests = N;
        o.b.sha_idx = idx;
        o.b.sha = sha;
        assert_int_equal(dir_apply(dir, &o.a, 1000, reason, sizeof(reason)), 0);
        struct digest d = dg(1);
        struct wire_locate l;
        assert_int_equal(dir_locate(dir, &d, NULL, ASKED, 1001, &l), 0);
        for (uint32_t i = 0; i < N; i++) {
                bool want = i >= ASKED && i < ASKED + DIR_LOCATE_SPAN;
                assert_int_equal(wire_bit(l.sha_known, i), want);
                if (want)
                        assert_true(digest_equal(&l.sha[i], &sha[i]));
        }
        wire_locate_free(&l);
        /* Near the end the span stops at the last chunk. */
        assert_int_equal(dir_locate(dir, &d, NULL, N - 2, 1001, &l), 0);
        assert_true(wire_bit(l.sha_known, N - 2) && wire_bit(l.sha_known, N - 1));
        assert_false(wire_bit(l.sha_known, N - 3));
        wire_locate_free(&l);
        dir_free(dir);
}

/* A directory whose holder records live long, answering with reuse times (locate_rate). */
static struct directory *new_rate_dir(uint32_t rate) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 16,
                                 .max_holders = 16,
                                 .ttl_ms = 3600 * 1000,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .locate_rate = rate};
        struct directory *dir;

        assert_int_equal(dir_new(&cfg, &dir), 0);
        /* B holds all 64 chunks; the digests of chunks 0-31 are known, of 32-63 not yet. */
        struct one o;
        uint32_t idx[32];
        struct digest sha[32];
        char reason[256];
        make(&o, B, 1, 64, "0-63");
        for (uint32_t i = 0; i < 32; i++) {
                idx[i] = i;
                memset(&sha[i], (int)(i + 1), sizeof(sha[i]));
        }
        o.b.ndigests = 32;
        o.b.sha_idx = idx;
        o.b.sha = sha;
        assert_int_equal(dir_apply(dir, &o.a, 1, reason, sizeof(reason)), 0);
        return dir;
}

/* The reuse time a reader's locate of chunk CHUNK at NOW is told (0: none). */
static uint32_t ttl_at(struct directory *dir, const char *reader, int64_t chunk, uint64_t now) {
        struct digest d = dg(1);
        struct wire_locate l;

        assert_int_equal(dir_locate(dir, &d, reader, chunk, now, &l), 0);
        uint32_t t = l.ttl_ms;
        wire_locate_free(&l);
        return t;
}

/* Issue 18: without locate_rate answers say no reuse time (readers keep their 1 s); with it, a
 * quiet blob's answers say DIR_LOCATE_TTL_MIN_MS, a busy one's more — at most 4x per window,
 * never past DIR_LOCATE_TTL_MAX_MS — and after a quiet spell less again. Whole-blob lookups
 * (CHUNK < 0) are not a reader's miss and say none. */
static void test_locate_ttl_bounds(void **state) {
        (void)state;
        struct directory *dir = new_rate_dir(0);
        assert_int_equal(ttl_at(dir, NULL, 3, 10), 0);
        dir_free(dir);

        dir = new_rate_dir(10);
        assert_int_equal(ttl_at(dir, NULL, -1, 10), 0);
        assert_int_equal(ttl_at(dir, NULL, 3, 1000), DIR_LOCATE_TTL_MIN_MS);
        /* Locates whose answer a reader could not reuse (no digest of the chunk yet: a wave's
         * front) do not count, however many. */
        uint64_t t = 1000;
        for (int i = 0; i < 300; i++, t += 10)
                assert_int_equal(ttl_at(dir, NULL, 32 + i % 32, t), DIR_LOCATE_TTL_MIN_MS);
        /* 100 reusable locates a second, ten times the target: 4x per window, up to the most. */
        uint32_t prev = DIR_LOCATE_TTL_MIN_MS, got = 0;
        for (int w = 0; w < 6; w++) {
                for (int i = 0; i < 100; i++, t += 10)
                        got = ttl_at(dir, NULL, i % 32, t);
                assert_true(got >= prev);
                assert_true(got <= 4 * prev);
                assert_true(got <= DIR_LOCATE_TTL_MAX_MS);
                prev = got;
        }
        assert_int_equal(got, DIR_LOCATE_TTL_MAX_MS);
        /* A claim's answer says it too (the reader never keeps the claim itself). */
        assert_int_equal(ttl_at(dir, A, 5, t), DIR_LOCATE_TTL_MAX_MS);
        /* Quiet for a minute: the next window's estimate is tiny, and the time falls. */
        t += 60000;
        ttl_at(dir, NULL, 3, t);
        got = ttl_at(dir, NULL, 3, t + DIR_LOCATE_WINDOW_MS);
        assert_true(got < DIR_LOCATE_TTL_MAX_MS / 4);
        assert_true(got >= DIR_LOCATE_TTL_MIN_MS);
        dir_free(dir);
}

/* Readers that each ask again when the time their last answer said runs out (as the locate
 * cache does while they read): whether 20 or 200 of them, the home hears about RATE locates a
 * second once the times settle — the load does not grow with the readers, until there are more
 * than RATE x DIR_LOCATE_TTL_MAX_MS / 1000 (300 here). Without locate_rate, 200 readers ask
 * 200 times a second. */
static double settled_rate(uint32_t rate, unsigned readers) {
        struct directory *dir = new_rate_dir(rate);
        enum { STEP = 10, END = 120000, FROM = 60000 };
        uint64_t next[200];
        uint64_t counted = 0;
        assert_true(readers <= 200);
        for (unsigned r = 0; r < readers; r++)
                next[r] = 1000 + (uint64_t)r * 997 % 1000; /* they start within a second */
        for (uint64_t t = 1000; t < END; t += STEP)
                for (unsigned r = 0; r < readers; r++) {
                        if (next[r] > t)
                                continue;
                        uint32_t ttl = ttl_at(dir, NULL, (int64_t)(r % 32), t);
                        next[r] = t + (ttl ? ttl : 1000);
                        counted += t >= FROM;
                }
        dir_free(dir);
        return (double)counted * 1000.0 / (double)(END - FROM);
}

static void test_locate_ttl_holds_rate(void **state) {
        (void)state;
        double few = settled_rate(10, 20), many = settled_rate(10, 200), off = settled_rate(0, 200);
        print_message("locates/s for a target of 10: 20 readers %.1f, 200 readers %.1f, 200 "
                      "readers without a TTL %.1f\n",
                      few, many, off);
        assert_true(few >= 5 && few <= 15);
        assert_true(many >= 5 && many <= 15);
        assert_true(off >= 190);
}

/* Issue 18: a home with max_holders holders that hold the whole blob answers "full" to a node
 * it has not recorded, with retry times spaced (TTL / 3) / max_holders apart; a recorded
 * holder refreshes as before; while the recorded holders do not cover the blob, a new
 * announcer is recorded (a chunk only it might hold would send readers to the origin). */
static void test_full_verdict(void **state) {
        struct directory *dir = new_dir(16, 2, 0);
        const uint64_t gap = TTL / 3 / 2;
        struct wire_reply full = {0};
        struct wire_locate l;
        struct dir_stats st;
        char reason[256];
        struct one o;

        (void)state;
        announce(dir, A, 1, 4, "0-3", 1000);
        announce(dir, B, 1, 4, "0-3", 1000);
        make(&o, C, 1, 4, "0-1");
        assert_int_equal(dir_apply_full(dir, &o.a, 1001, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 1);
        struct digest d1 = dg(1);
        assert_true(digest_equal(&full.full[0].digest, &d1));
        assert_true(full.full[0].retry_ms == gap);
        wire_reply_free(&full);
        assert_int_equal(locate(dir, 1, 1001, &l), 0);
        assert_int_equal(l.nholders, 2);
        assert_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        /* the next one is spaced after the last handed out */
        make(&o, "10.0.0.4:5001", 1, 4, "0-3");
        assert_int_equal(dir_apply_full(dir, &o.a, 1002, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 1);
        assert_true(full.full[0].retry_ms == 2 * gap - 1);
        wire_reply_free(&full);
        /* a recorded holder is never told "full" */
        make(&o, A, 1, 4, "0-3");
        assert_int_equal(dir_apply_full(dir, &o.a, 1003, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 0);
        /* a newcomer with a chunk the recorded holders leave uncovered is recorded */
        announce(dir, A, 2, 4, "0-2", 1000);
        announce(dir, B, 2, 4, "0-1", 1000);
        make(&o, C, 2, 4, "3");
        assert_int_equal(dir_apply_full(dir, &o.a, 1004, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 0);
        assert_int_equal(locate(dir, 2, 1004, &l), 0);
        assert_non_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        /* dir_apply (no verdict wanted) records as before */
        make(&o, C, 1, 4, "0-3");
        assert_int_equal(dir_apply(dir, &o.a, 1005, reason, sizeof(reason)), 0);
        assert_int_equal(locate(dir, 1, 1005, &l), 0);
        assert_non_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        dir_get_stats(dir, &st);
        assert_int_equal(st.told_full, 2);
        dir_free(dir);
}

/* Issue 18, the deltas of a wave's front: a home whose max_holders holders hold every chunk a
 * newcomer announces, but not the whole blob, answers "covered" with the chunks they hold (the
 * newcomer keeps quiet while it holds nothing else); a newcomer holding a chunk outside them
 * is recorded; one that holds nothing yet (it registered the blob) is told too, "full" when
 * the holders cover the whole blob; a live claim, or a recorded holder, is never told. */
static void test_covered_verdict(void **state) {
        struct directory *dir = new_dir(16, 2, 0);
        const char *D = "10.0.0.4:5001", *E = "10.0.0.5:5001";
        struct wire_reply full = {0};
        struct wire_locate l;
        struct dir_stats st;
        char reason[256];
        struct one o;

        (void)state;
        announce(dir, A, 1, 12, "0-3", 1000);
        announce(dir, B, 1, 12, "0-1,8", 1000);
        make(&o, C, 1, 12, "0-2");
        assert_int_equal(dir_apply_full(dir, &o.a, 1001, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 1);
        assert_non_null(full.full[0].covered);
        assert_int_equal(full.full[0].nchunks, 12);
        for (uint32_t c = 0; c < 12; c++)
                assert_int_equal(wire_bit(full.full[0].covered, c), c <= 3 || c == 8);
        assert_true(full.full[0].retry_ms == TTL / 3 / 2);
        wire_reply_free(&full);
        assert_int_equal(locate(dir, 1, 1001, &l), 0);
        assert_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        /* chunk 5 is nobody's here: C is recorded */
        make(&o, C, 1, 12, "0-2,5");
        assert_int_equal(dir_apply_full(dir, &o.a, 1002, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 0);
        assert_int_equal(locate(dir, 1, 1002, &l), 0);
        assert_non_null(find_holder(&l, C, false));
        wire_locate_free(&l);
        /* a registration (nothing held yet) is told "covered", with the holders' chunks */
        make(&o, D, 1, 12, "");
        assert_int_equal(dir_apply_full(dir, &o.a, 1003, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 1);
        assert_non_null(full.full[0].covered);
        assert_int_equal(wire_bit(full.full[0].covered, 5), 1);
        wire_reply_free(&full);
        /* the same registration when the holders cover the whole blob: "full" */
        announce(dir, A, 2, 4, "0-3", 1000);
        announce(dir, B, 2, 4, "0-3", 1000);
        make(&o, D, 2, 4, "");
        assert_int_equal(dir_apply_full(dir, &o.a, 1004, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 1);
        assert_null(full.full[0].covered);
        wire_reply_free(&full);
        /* a node holding a live claim is recorded, covered or not */
        struct digest d1 = dg(1);
        make(&o, E, 1, 12, "");
        assert_int_equal(dir_locate(dir, &d1, E, 11, 1005, &l), 0);
        assert_true(l.has_claim && l.claim_granted);
        wire_locate_free(&l);
        make(&o, E, 1, 12, "0");
        assert_int_equal(dir_apply_full(dir, &o.a, 1006, &full, reason, sizeof(reason)), 0);
        assert_int_equal(full.nfull, 0);
        dir_get_stats(dir, &st);
        assert_int_equal(st.told_full, 3);
        assert_int_equal(st.told_covered, 2);
        dir_free(dir);
}

/* Soft state stays right with holders told "full": when a recorded holder stops refreshing,
 * one of the hushed nodes (each retrying when told) takes its slot within about one retry
 * spacing of the record's expiry, however many are hushed; and the home sees about one retry
 * per spacing, not one per hushed node. */
static void test_full_retry_takes_freed_slot(void **state) {
        struct directory *dir = new_dir(16, 2, 0);
        const uint64_t gap = TTL / 3 / 2, refresh = TTL / 3;
        enum { HUSHED = 6 };
        char ids[HUSHED][PEER_ID_MAX];
        uint64_t next[HUSHED], recorded_at = 0, last_a = 0, retries_early = 0;
        int who = -1;
        char reason[256];

        (void)state;
        for (int i = 0; i < HUSHED; i++) {
                snprintf(ids[i], sizeof(ids[i]), "10.0.1.%d:5001", i + 1);
                next[i] = 1000 + (uint64_t)i; /* each announces once at the start */
        }
        for (uint64_t t = 1000; t < 1600; t++) {
                if ((t - 1000) % refresh == 0) {
                        announce(dir, B, 1, 4, "0-3", t);
                        if (t < 1200) { /* A stops refreshing after 1200 */
                                announce(dir, A, 1, 4, "0-3", t);
                                last_a = t;
                        }
                }
                for (int i = 0; i < HUSHED; i++) {
                        if (t != next[i])
                                continue;
                        struct wire_reply full = {0};
                        struct one o;

                        make(&o, ids[i], 1, 4, "0-3");
                        assert_int_equal(
                                dir_apply_full(dir, &o.a, t, &full, reason, sizeof(reason)), 0);
                        if (i != who && t >= 1100 && t < 1100 + TTL)
                                retries_early++;
                        if (i == who) { /* a recorded holder's refresh */
                                assert_int_equal(full.nfull, 0);
                                next[i] = t + refresh;
                        } else if (full.nfull == 0) { /* recorded: from now on it refreshes */
                                assert_int_equal(who, -1);
                                who = i;
                                recorded_at = t;
                                next[i] = t + refresh;
                        } else {
                                assert_true(full.full[0].retry_ms > 0);
                                next[i] = t + full.full[0].retry_ms;
                        }
                        wire_reply_free(&full);
                }
        }
        /* A's record dies at last_a + TTL; a hushed node is in within one spacing after. */
        assert_true(who >= 0);
        assert_true(recorded_at >= last_a + TTL);
        assert_true(recorded_at <= last_a + TTL + gap);
        /* while full, retries come about one per spacing, not one per hushed node */
        assert_true(retries_early <= TTL / gap + 1);
        dir_free(dir);
}

/* Digest waits (issue 18): a reader's digest question held at the home returns as soon as an
 * announce records that chunk's digest (not another chunk's), times out without it, and the
 * home never holds more than max_digest_waiters (the next is refused at once). */
struct waiter {
        struct directory *dir;
        uint32_t chunk;
        uint64_t wait_ms;
        int r;
};

static void *wait_main(void *arg) {
        struct waiter *w = arg;
        struct digest d = dg(1);

        w->r = dir_wait_digest(w->dir, &d, w->chunk, 0, w->wait_ms);
        return NULL;
}

static uint64_t waiting(struct directory *dir) {
        struct dir_stats st;

        dir_get_stats(dir, &st);
        return st.digest_waiters;
}

/* Until DIR has N waiters (a bounded poll: the waiters are threads just started). */
static void await_waiters(struct directory *dir, uint64_t n) {
        for (int i = 0; i < 10000 && waiting(dir) != n; i++) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
        }
        assert_int_equal(waiting(dir), n);
}

static void test_digest_wait(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 8,
                                 .max_holders = 4,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL,
                                 .max_digest_waiters = 2};
        struct directory *dir;
        struct digest d = dg(1);
        struct dir_stats st;
        pthread_t t[2];
        struct waiter w[2];

        (void)state;
        of_chain = false;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        /* Unknown blob, then a known blob without the digest: the wait ends empty. */
        assert_int_equal(dir_wait_digest(dir, &d, 2, 0, 5), -ETIMEDOUT);
        announce(dir, A, 1, 4, "0-1", 0);
        assert_int_equal(dir_wait_digest(dir, &d, 2, 0, 5), -ETIMEDOUT);
        /* Two waiters for chunk 2 (the cap): a third is refused at once, another chunk's
         * digest releases neither, chunk 2's releases both. */
        for (int i = 0; i < 2; i++) {
                w[i] = (struct waiter){.dir = dir, .chunk = 2, .wait_ms = 60000, .r = 1};
                assert_int_equal(pthread_create(&t[i], NULL, wait_main, &w[i]), 0);
        }
        await_waiters(dir, 2);
        assert_int_equal(dir_wait_digest(dir, &d, 3, 0, 60000), -EBUSY);
        announce_digest(dir, B, 1, 0x11, false, 0);
        assert_int_equal(waiting(dir), 2);
        assert_int_equal(w[0].r, 1);
        announce_digest(dir, B, 2, 0x22, false, 0);
        for (int i = 0; i < 2; i++) {
                pthread_join(t[i], NULL);
                assert_int_equal(w[i].r, 0);
        }
        /* Known now: at once, whatever the cap. */
        assert_int_equal(dir_wait_digest(dir, &d, 2, 0, 60000), 0);
        dir_get_stats(dir, &st);
        assert_int_equal(st.digest_waits, 4);
        assert_int_equal(st.digest_waits_found, 3);
        assert_int_equal(st.digest_waits_refused, 1);
        assert_int_equal(st.digest_waiters_peak, 2);
        assert_int_equal(st.digest_waiters, 0);
        dir_free(dir);
}

/* A stopping daemon: dir_stop_waits ends a held question at once (-ECANCELED, long before its
 * 60 s), and a question after it is not held at all. */
static void test_digest_wait_stopped(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 8,
                                 .max_holders = 4,
                                 .ttl_ms = TTL,
                                 .claim_ttl_ms = CLAIM_TTL};
        struct directory *dir;
        struct digest d = dg(1);
        pthread_t t;

        (void)state;
        assert_int_equal(dir_new(&cfg, &dir), 0);
        announce(dir, A, 1, 4, "0-1", 0);
        struct waiter w = {.dir = dir, .chunk = 2, .wait_ms = 60000, .r = 1};
        assert_int_equal(pthread_create(&t, NULL, wait_main, &w), 0);
        await_waiters(dir, 1);
        dir_stop_waits(dir);
        pthread_join(t, NULL);
        assert_int_equal(w.r, -ECANCELED);
        assert_int_equal(waiting(dir), 0);
        assert_int_equal(dir_wait_digest(dir, &d, 2, 0, 60000), -ECANCELED);
        dir_stop_waits(NULL);
        dir_free(dir);
}

/* Whether the home has what checks chunk CHUNK of blob BLOB now (a wait of 1 ms). */
static bool checkable(struct directory *dir, int blob, uint32_t chunk) {
        struct digest d = dg(blob);
        int r = dir_wait_digest(dir, &d, chunk, 0, 1);

        assert_true(r == 0 || r == -ETIMEDOUT);
        return r == 0;
}

/* A digest question is answered by the chain values that check the chunk as by its digest:
 * chunk - 1's and the chunk's (chunk 0: its own; the last chunk: the one before it; a blob of
 * one chunk: none), never by a digest of one and a chain value of the other; and a held
 * question is woken when they arrive. */
static void test_chain_digest_wait(void **state) {
        struct directory *dir = new_dir(8, 4, 0);
        struct waiter w = {.dir = dir, .chunk = 2, .wait_ms = 60000, .r = 1};
        struct one o;
        pthread_t t;

        (void)state;
        of_chain = true;
        announce(dir, A, 1, 4, "0-3", 0);
        assert_false(checkable(dir, 1, 3));
        assert_int_equal(pthread_create(&t, NULL, wait_main, &w), 0);
        await_waiters(dir, 1);
        announce_digest(dir, B, 2, 0x22, false, 0);
        assert_true(checkable(dir, 1, 3));  /* the last chunk: 2's value and the blob digest */
        assert_false(checkable(dir, 1, 2)); /* 1's value missing */
        of_chain = false;
        announce_digest(dir, B, 1, 0x11, false, 0);
        assert_false(checkable(dir, 1, 2)); /* a digest of 1 is no chain value */
        assert_int_equal(waiting(dir), 1);
        of_chain = true;
        announce_digest(dir, B, 1, 0x12, false, 0);
        await_waiters(dir, 0); /* woken: long before its 60 s ran out */
        pthread_join(t, NULL);
        assert_int_equal(w.r, 0);
        assert_true(checkable(dir, 1, 2));
        assert_false(checkable(dir, 1, 0));
        announce_digest(dir, B, 0, 0x10, false, 0);
        assert_true(checkable(dir, 1, 0));
        /* One chunk: its chain value is the blob digest, announced or not. */
        make(&o, A, 2, 1, "0");
        with_chain(&o, 0, 0x01);
        apply_ok(dir, &o, 0);
        assert_false(checkable(dir, 2, 0));
        dir_free(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_new_refuses),
                cmocka_unit_test(test_digest_wait),
                cmocka_unit_test(test_digest_wait_stopped),
                cmocka_unit_test(test_apply_and_locate),
                cmocka_unit_test(test_holder_ttl_boundary),
                cmocka_unit_test(test_empty_present),
                cmocka_unit_test(test_refusals),
                cmocka_unit_test(test_digest_conflict_unknown),
                cmocka_unit_test(test_digest_verified_wins),
                cmocka_unit_test(test_digest_verified_conflict),
                cmocka_unit_test(test_digest_dispute_sticks),
                cmocka_unit_test_prestate(test_digest_verified_wins, CHAIN),
                cmocka_unit_test_prestate(test_digest_verified_conflict, CHAIN),
                cmocka_unit_test_prestate(test_digest_dispute_sticks, CHAIN),
                cmocka_unit_test(test_chain_answer_span),
                cmocka_unit_test(test_chain_apart_from_digests),
                cmocka_unit_test(test_chain_lazy),
                cmocka_unit_test(test_chain_byte_budget),
                cmocka_unit_test(test_chain_digest_wait),
                cmocka_unit_test(test_digest_provenance_on_the_wire),
                cmocka_unit_test(test_max_blobs),
                cmocka_unit_test(test_max_holders),
                cmocka_unit_test(test_claims),
                cmocka_unit_test(test_claim_keeps_blob_alive),
                cmocka_unit_test(test_max_claims),
                cmocka_unit_test(test_fetching_bound),
                cmocka_unit_test(test_byte_budget),
                cmocka_unit_test(test_threads),
                cmocka_unit_test(test_index_records),
                cmocka_unit_test(test_index_votes),
                cmocka_unit_test(test_index_bounds),
                cmocka_unit_test(test_locate_ttl_bounds),
                cmocka_unit_test(test_locate_ttl_holds_rate),
                cmocka_unit_test(test_one_chunk_answer_digest_span),
                cmocka_unit_test(test_full_verdict),
                cmocka_unit_test(test_full_retry_takes_freed_slot),
                cmocka_unit_test(test_covered_verdict),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
