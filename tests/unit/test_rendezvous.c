/* Unit tests for peer/rendezvous.c: pinned scores (the hash is part of the protocol), the
 * order and bounds of rdv_homes(), and the two properties the directory relies on: homes
 * spread evenly, and a membership change moves only the keys it must. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "peer/rendezvous.h"

#define NDIGESTS 10000

static const char *const ids[] = {"10.0.0.1:5001",  "10.0.0.2:5001",  "10.0.0.3:5001",
                                  "10.0.0.4:5001",  "10.0.0.5:5001",  "10.0.0.6:5001",
                                  "10.0.0.7:5001",  "10.0.0.8:5001",  "10.0.0.9:5001",
                                  "10.0.0.10:5001", "[fd00::11]:5001"};

/* Reproducible pseudo-random digests (the test must not depend on the run). */
static uint64_t rng_state = 0x1234567u;

static uint64_t rng_next(void) {
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static void random_digest(struct digest *d) {
        for (size_t i = 0; i < DIGEST_LEN; i += 8) {
                uint64_t w = rng_next();
                memcpy(d->bytes + i, &w, 8);
        }
}

static size_t first_home(const char *const *nodes, size_t n, const struct digest *d) {
        size_t home;

        assert_int_equal(rdv_homes(nodes, n, d, 1, &home), n > 0 ? 1 : 0);
        return home;
}

/* The score is computed from bytes, never from the CPU's word order: these values hold on
 * every architecture, and changing them is a protocol change. */
static void test_score_pinned(void **state) {
        struct digest d;

        (void)state;
        for (int i = 0; i < DIGEST_LEN; i++)
                d.bytes[i] = (uint8_t)i;
        assert_true(rdv_score("10.0.0.1:5001", &d) == 0xeb08dfd5fa1c7a71ull);
        assert_true(rdv_score("[fd00::1]:5001", &d) == 0x224cea55f585a345ull);
        memset(&d, 0, sizeof(d));
        assert_true(rdv_score("", &d) == 0x25f56b0243c18abfull);
}

static void test_score_depends_on_both(void **state) {
        struct digest a, b;

        (void)state;
        memset(&a, 0, sizeof(a));
        b = a;
        b.bytes[DIGEST_LEN - 1] = 1; /* the last byte counts */
        assert_true(rdv_score("10.0.0.1:5001", &a) != rdv_score("10.0.0.1:5001", &b));
        assert_true(rdv_score("10.0.0.1:5001", &a) != rdv_score("10.0.0.1:5002", &a));
        /* Same bytes split differently between id and length must not collide. */
        assert_true(rdv_score("10.0.0.1:50011", &a) != rdv_score("10.0.0.1:5001", &a));
}

static void test_homes_deterministic_and_ordered(void **state) {
        size_t n = 10, ret1[10], ret2[10];
        struct digest d;

        (void)state;
        for (int t = 0; t < 200; t++) {
                random_digest(&d);
                assert_int_equal(rdv_homes(ids, n, &d, 3, ret1), 3);
                assert_int_equal(rdv_homes(ids, n, &d, 3, ret2), 3);
                assert_memory_equal(ret1, ret2, 3 * sizeof(size_t));
                /* Best first, distinct, and the true top 3 of all scores. */
                assert_int_equal(rdv_homes(ids, n, &d, n, ret2), n);
                for (size_t i = 0; i + 1 < n; i++)
                        assert_true(rdv_score(ids[ret2[i]], &d) > rdv_score(ids[ret2[i + 1]], &d));
                assert_memory_equal(ret1, ret2, 3 * sizeof(size_t));
        }
}

static void test_homes_k_bounds(void **state) {
        size_t ret[16], all[16];
        struct digest d;

        (void)state;
        random_digest(&d);
        /* K larger than N: every node, best first. */
        assert_int_equal(rdv_homes(ids, 4, &d, 16, ret), 4);
        assert_int_equal(rdv_homes(ids, 4, &d, 4, all), 4);
        assert_memory_equal(ret, all, 4 * sizeof(size_t));
        for (size_t i = 0; i < 4; i++)
                for (size_t j = i + 1; j < 4; j++)
                        assert_true(ret[i] != ret[j]);
        assert_int_equal(rdv_homes(ids, 0, &d, 3, ret), 0);
        assert_int_equal(rdv_homes(ids, 4, &d, 0, ret), 0);
        assert_int_equal(rdv_homes(ids, 1, &d, 3, ret), 1);
        assert_int_equal(ret[0], 0);
        /* The order of the membership list does not change who the homes are. */
        {
                const char *rev[10];
                size_t h1[3], h2[3];

                for (size_t i = 0; i < 10; i++)
                        rev[i] = ids[9 - i];
                for (int t = 0; t < 100; t++) {
                        random_digest(&d);
                        rdv_homes(ids, 10, &d, 3, h1);
                        rdv_homes(rev, 10, &d, 3, h2);
                        for (size_t i = 0; i < 3; i++)
                                assert_string_equal(ids[h1[i]], rev[h2[i]]);
                }
        }
}

/* Equal scores only happen with equal ids: the smaller index goes first. */
static void test_homes_duplicate_ids(void **state) {
        const char *dup[] = {"10.0.0.1:5001", "10.0.0.1:5001", "10.0.0.1:5001"};
        size_t ret[3];
        struct digest d;

        (void)state;
        random_digest(&d);
        assert_int_equal(rdv_homes(dup, 3, &d, 3, ret), 3);
        assert_int_equal(ret[0], 0);
        assert_int_equal(ret[1], 1);
        assert_int_equal(ret[2], 2);
}

static void test_uniform(void **state) {
        size_t count[10] = {0};
        struct digest d;

        (void)state;
        for (int t = 0; t < NDIGESTS; t++) {
                random_digest(&d);
                count[first_home(ids, 10, &d)]++;
        }
        /* Expected 1000 each, standard deviation 30: 800..1200 is generous and still
         * catches a hash that favours some ids. */
        for (size_t i = 0; i < 10; i++) {
                if (count[i] < 800 || count[i] > 1200)
                        fail_msg("node %zu is first home of %zu of %d digests", i, count[i],
                                 NDIGESTS);
        }
}

static void test_join_moves_few(void **state) {
        size_t moved = 0;
        struct digest d;

        (void)state;
        for (int t = 0; t < NDIGESTS; t++) {
                size_t before, after;

                random_digest(&d);
                before = first_home(ids, 10, &d);
                after = first_home(ids, 11, &d);
                if (after != before) {
                        assert_int_equal(after, 10); /* only ever to the newcomer */
                        moved++;
                }
        }
        /* Expected NDIGESTS / 11 (909). */
        assert_true(moved > NDIGESTS / 22);
        assert_true(moved < 2 * NDIGESTS / 11);
}

static void test_leave_moves_only_its_own(void **state) {
        const char *without[9];
        struct digest d;
        size_t gone = 4, moved = 0;

        (void)state;
        for (size_t i = 0, j = 0; i < 10; i++)
                if (i != gone)
                        without[j++] = ids[i];
        for (int t = 0; t < NDIGESTS; t++) {
                size_t before, after, h3[3], h3after[3];

                random_digest(&d);
                before = first_home(ids, 10, &d);
                after = first_home(without, 9, &d);
                if (before == gone) {
                        moved++;
                } else {
                        assert_string_equal(ids[before], without[after]);
                }
                /* With k = 3 the survivors keep their rank order: the new top 3 is the old
                 * top 3 minus the node that left, then the old fourth. */
                rdv_homes(ids, 10, &d, 3, h3);
                rdv_homes(without, 9, &d, 3, h3after);
                for (size_t i = 0, j = 0; i < 3 && j < 3; i++) {
                        if (h3[i] == gone)
                                continue;
                        assert_string_equal(ids[h3[i]], without[h3after[j]]);
                        j++;
                }
        }
        assert_true(moved > 0 && moved < 2 * NDIGESTS / 10);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_score_pinned),
                cmocka_unit_test(test_score_depends_on_both),
                cmocka_unit_test(test_homes_deterministic_and_ordered),
                cmocka_unit_test(test_homes_k_bounds),
                cmocka_unit_test(test_homes_duplicate_ids),
                cmocka_unit_test(test_uniform),
                cmocka_unit_test(test_join_moves_few),
                cmocka_unit_test(test_leave_moves_only_its_own),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
