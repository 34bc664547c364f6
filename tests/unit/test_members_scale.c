/* Membership at scale (issue 18), through the manual membership (members_update(): the merge
 * a DNS refresh runs, without the resolver): an answer larger than max_peers keeps the lowest
 * ids whatever its order, departures take two refreshes, the cached homes are those
 * rendezvous hashing gives for the current members, and 5000 members merge into a sorted,
 * duplicate-free set. (tests/unit/test_members.c covers the threaded membership.) */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "peer/members.h"
#include "peer/rendezvous.h"

static struct members *manual(size_t max_peers) {
        struct members_config c = {.listen_port = 5001,
                                   .refresh_ms = 1000,
                                   .probe_timeout_ms = 100,
                                   .max_peers = max_peers,
                                   .manual = true};
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        return m;
}

/* "10.a.b.c:5001" for I; written into IDS[I]. */
static char (*make_ids(size_t n))[PEER_ID_MAX] {
        char(*ids)[PEER_ID_MAX] = calloc(n, PEER_ID_MAX);
        assert_non_null(ids);
        for (size_t i = 0; i < n; i++) {
                unsigned v = (unsigned)i + 1;
                snprintf(ids[i], PEER_ID_MAX, "10.%u.%u.%u:5001", (v >> 16) & 255, (v >> 8) & 255,
                         v & 255);
        }
        return ids;
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_update_contract(void **state) {
        (void)state;
        const char *bad[] = {"not-an-address:5001"};
        struct members *m = manual(8);
        assert_int_equal(members_update(m, bad, 1, true), -EINVAL);
        members_free(m);
        /* A manual membership takes no names to resolve. */
        const char *peers[] = {"10.0.0.1:5001"};
        struct members_config c = {.static_peers = peers,
                                   .n_static = 1,
                                   .listen_port = 5001,
                                   .refresh_ms = 1000,
                                   .probe_timeout_ms = 100,
                                   .max_peers = 8,
                                   .manual = true};
        assert_int_equal(members_new(&c, &m), -EINVAL);
}

/* 300 records, max_peers 100: the 100 lowest ids, in whatever order the answer came. */
static void test_cap_keeps_lowest_ids_whatever_the_order(void **state) {
        (void)state;
        const size_t n = 300, cap = 100;
        char(*store)[PEER_ID_MAX] = make_ids(n);
        const char **fwd = calloc(n, sizeof(*fwd)), **rev = calloc(n, sizeof(*rev));
        const char **sorted = calloc(n, sizeof(*sorted));
        for (size_t i = 0; i < n; i++) {
                fwd[i] = store[i];
                rev[i] = store[n - 1 - i];
                sorted[i] = store[i];
        }
        qsort(sorted, n, sizeof(*sorted), cmp_str);
        struct members *a = manual(cap), *b = manual(cap);
        assert_int_equal(members_update(a, fwd, n, true), 0);
        assert_int_equal(members_update(b, rev, n, true), 0);
        char(*ia)[PEER_ID_MAX] = calloc(n, PEER_ID_MAX),
        (*ib)[PEER_ID_MAX] = calloc(n, PEER_ID_MAX);
        assert_int_equal(members_ids(a, ia, n, NULL), cap);
        assert_int_equal(members_ids(b, ib, n, NULL), cap);
        for (size_t i = 0; i < cap; i++) {
                assert_string_equal(ia[i], sorted[i]);
                assert_string_equal(ib[i], sorted[i]);
        }
        members_free(a);
        members_free(b);
        free(ia);
        free(ib);
        free(fwd);
        free(rev);
        free(sorted);
        free(store);
}

/* A member missing from one refresh stays (a partial answer during a rollout); from two, it
 * leaves; an incomplete refresh ages nobody. The version moves only when the set does. */
static void test_leave_takes_two_refreshes(void **state) {
        (void)state;
        char(*store)[PEER_ID_MAX] = make_ids(10);
        const char *ids[10];
        for (size_t i = 0; i < 10; i++)
                ids[i] = store[i];
        struct members *m = manual(16);
        assert_int_equal(members_update(m, ids, 10, true), 0);
        uint64_t v0 = members_version(m);
        uint64_t up, known;
        members_counts(m, &up, &known);
        assert_int_equal(known, 10);
        assert_int_equal(members_update(m, ids, 10, true), 0);
        assert_int_equal(members_version(m), v0); /* nothing changed */
        assert_int_equal(members_update(m, ids + 1, 9, true), 0);
        members_counts(m, &up, &known);
        assert_int_equal(known, 10); /* missing once: kept */
        assert_int_equal(members_update(m, ids + 1, 9, false), 0);
        members_counts(m, &up, &known);
        assert_int_equal(known, 10); /* an incomplete refresh ages nobody */
        assert_int_equal(members_update(m, ids + 1, 9, true), 0);
        members_counts(m, &up, &known);
        assert_int_equal(known, 9);
        assert_true(members_version(m) > v0);
        assert_false(members_usable(m, store[0]));
        assert_true(members_usable(m, store[1]));
        members_free(m);
        free(store);
}

/* The homes members_homes() hands out (cached per digest and version) are rendezvous
 * hashing's over the current members, before and after the membership changes. */
static void check_homes(struct members *m, size_t n) {
        char(*ids)[PEER_ID_MAX] = calloc(n, PEER_ID_MAX);
        const char **ptrs = calloc(n, sizeof(*ptrs));
        size_t got = members_ids(m, ids, n, NULL);
        for (size_t i = 0; i < got; i++)
                ptrs[i] = ids[i];
        for (unsigned r = 0; r < 3; r++) /* the second and third pass hit the cache */
                for (unsigned k = 0; k < 3000; k++) {
                        struct digest d;
                        memset(&d, 0, sizeof(d));
                        memcpy(d.bytes, &k, sizeof(k));
                        d.bytes[20] = (uint8_t)(k * 7);
                        char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
                        size_t want[3];
                        size_t nh = members_homes(m, &d, 3, homes, NULL);
                        assert_int_equal(rdv_homes(ptrs, got, &d, 3, want), nh);
                        for (size_t i = 0; i < nh; i++)
                                assert_string_equal(homes[i], ids[want[i]]);
                }
        free(ptrs);
        free(ids);
}

static void test_cached_homes_follow_the_membership(void **state) {
        (void)state;
        const size_t n = 1000;
        char(*store)[PEER_ID_MAX] = make_ids(n + 10);
        const char **ids = calloc(n + 10, sizeof(*ids));
        for (size_t i = 0; i < n + 10; i++)
                ids[i] = store[i];
        struct members *m = manual(n + 10);
        assert_int_equal(members_update(m, ids, n, true), 0);
        check_homes(m, n + 10);
        /* ten join: every cached entry is stale */
        assert_int_equal(members_update(m, ids, n + 10, true), 0);
        check_homes(m, n + 10);
        /* ten leave (two refreshes) */
        assert_int_equal(members_update(m, ids + 10, n, true), 0);
        assert_int_equal(members_update(m, ids + 10, n, true), 0);
        uint64_t up, known;
        members_counts(m, &up, &known);
        assert_int_equal(known, n);
        check_homes(m, n + 10);
        members_free(m);
        free(ids);
        free(store);
}

/* 5000 members with duplicates in the answer: one sorted set, each id once. */
static void test_5000_members_with_duplicates(void **state) {
        (void)state;
        const size_t n = 5000;
        char(*store)[PEER_ID_MAX] = make_ids(n);
        const char **ids = calloc(2 * n, sizeof(*ids));
        for (size_t i = 0; i < n; i++) {
                ids[i] = store[(i * 7919) % n];
                ids[n + i] = store[i]; /* every record twice */
        }
        struct members *m = manual(8192);
        assert_int_equal(members_update(m, ids, 2 * n, true), 0);
        char(*got)[PEER_ID_MAX] = calloc(n + 1, PEER_ID_MAX);
        assert_int_equal(members_ids(m, got, n + 1, NULL), n);
        for (size_t i = 1; i < n; i++)
                assert_true(strcmp(got[i - 1], got[i]) < 0);
        members_free(m);
        free(got);
        free(ids);
        free(store);
}

/* Bytes served are credited to the member with the client's address (any port), found by
 * binary search among the sorted ids: "10.0.0.1" is not "10.0.0.10", v6 ids are bracketed. */
static void test_served_bytes_find_the_address(void **state) {
        (void)state;
        const char *ids[] = {"10.0.0.10:5001", "10.0.0.1:5001", "10.0.0.100:5001", "[fd00::1]:5001",
                             "10.0.0.2:5001"};
        struct members *m = manual(8);
        assert_int_equal(members_update(m, ids, 5, true), 0);
        members_report_served(m, "10.0.0.1", 7);
        members_report_served(m, "fd00::1", 11);
        members_report_served(m, "[fd00:0::1]", 2);
        members_report_served(m, "10.0.0.3", 1000); /* not a member */
        struct peer_info *v;
        size_t n;
        assert_int_equal(members_snapshot(m, &v, &n), 0);
        assert_int_equal(n, 5);
        for (size_t i = 0; i < n; i++) {
                uint64_t want = strcmp(v[i].id, "10.0.0.1:5001") == 0    ? 7
                                : strcmp(v[i].id, "[fd00::1]:5001") == 0 ? 13
                                                                         : 0;
                assert_int_equal(v[i].bytes_to, want);
        }
        free(v);
        members_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_update_contract),
                cmocka_unit_test(test_cap_keeps_lowest_ids_whatever_the_order),
                cmocka_unit_test(test_leave_takes_two_refreshes),
                cmocka_unit_test(test_cached_homes_follow_the_membership),
                cmocka_unit_test(test_5000_members_with_duplicates),
                cmocka_unit_test(test_served_bytes_find_the_address),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
