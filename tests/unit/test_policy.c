/* Unit tests for cache/policy.c: S3-FIFO with pinning.
 *
 * The policy's structure (queues, ghost FIFO, hash chains) is private, and the honest way to
 * check it is to look at it: this file includes policy.c, so every test can run a full
 * structural invariant check, and the randomized stress run compares the policy against a
 * simple model after every operation. Because every global symbol of policy.c is then defined
 * here, the linker never pulls policy.o out of the core library for this program. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/policy.c"

#define MIB (1u << 20)

static struct chunk_key K(uint32_t blob, uint32_t idx) {
        struct chunk_key k = {blob, idx};
        return k;
}

/* Walks every list and the hash table; fails the test on the first broken invariant. */
static void
check_invariants(const struct policy *p) {
        size_t walked = 0, pinned = 0, chained = 0;
        uint64_t pinned_bytes = 0;

        for (int q = Q_SMALL; q < Q_COUNT; q++) {
                const struct fifo *f = &p->q[q];
                uint32_t prev = NIL, n = 0;
                uint64_t bytes = 0;

                for (uint32_t i = f->head; i != NIL; i = p->slots[i].next) {
                        const struct slot *s = &p->slots[i];
                        assert_true(i < p->nslots);
                        assert_true(n < p->nslots); /* no cycle */
                        assert_int_equal(s->queue, q);
                        assert_int_equal(s->prev, prev);
                        assert_true(s->freq <= FREQ_MAX);
                        assert_int_equal(hash_find(p, s->key), i);
                        if (q == Q_GHOST) {
                                assert_int_equal(s->bytes, 0);
                                assert_int_equal(s->pins, 0);
                        }
                        if (s->pins > 0) {
                                pinned++;
                                pinned_bytes += s->bytes;
                        }
                        bytes += s->bytes;
                        prev = i;
                        n++;
                }
                assert_int_equal(f->tail, prev);
                assert_int_equal(f->count, n);
                assert_true(f->bytes == bytes);
                walked += n;
        }
        {
                uint32_t n = 0;
                for (uint32_t i = p->q[Q_FREE].head; i != NIL; i = p->slots[i].next) {
                        assert_true(n < p->nslots);
                        assert_int_equal(p->slots[i].queue, Q_FREE);
                        n++;
                }
                assert_int_equal(p->q[Q_FREE].count, n);
                walked += n;
        }
        assert_int_equal(walked, p->nslots);

        /* Every chained slot is live and in the bucket of its hash; chains hold exactly the
         * live slots. */
        for (uint32_t b = 0; b <= p->bucket_mask; b++) {
                for (uint32_t i = p->buckets[b]; i != NIL; i = p->slots[i].hnext) {
                        assert_true(chained < p->nslots);
                        assert_int_not_equal(p->slots[i].queue, Q_FREE);
                        assert_int_equal(key_hash(p->slots[i].key) & p->bucket_mask, b);
                        chained++;
                }
        }
        assert_int_equal(chained, p->nslots - p->q[Q_FREE].count);

        assert_true(resident_count(p) <= p->max_entries);
        assert_true(p->q[Q_GHOST].count <= p->max_entries);
        assert_int_equal(p->pinned_count, pinned);
        assert_true(p->pinned_bytes == pinned_bytes);
        assert_int_equal(policy_count(p), p->q[Q_SMALL].count + p->q[Q_MAIN].count);
        assert_true(policy_used_bytes(p) == p->q[Q_SMALL].bytes + p->q[Q_MAIN].bytes);
        assert_true(policy_pinned_bytes(p) == pinned_bytes);
}

static int queue_of(const struct policy *p, struct chunk_key k) {
        uint32_t i = hash_find(p, k);
        return i == NIL ? -1 : p->slots[i].queue;
}

/* Evicts until the policy says stop; returns how many went. */
static size_t drain(struct policy *p) {
        struct chunk_key v;
        size_t n = 0;

        while (policy_next_victim(p, &v)) {
                assert_false(policy_contains(p, v));
                n++;
        }
        return n;
}

static void test_basics(void **state) {
        struct policy *p = policy_new(10 * MIB, 4);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        assert_true(policy_budget(p) == 10 * MIB);
        assert_int_equal(policy_count(p), 0);
        assert_false(policy_contains(p, K(1, 0)));
        assert_false(policy_next_victim(p, &v)); /* empty */

        assert_int_equal(policy_insert(p, K(1, 0), MIB), 0);
        assert_int_equal(policy_insert(p, K(1, 1), MIB), 0);
        assert_int_equal(policy_insert(p, K(2, 0), 1234), 0); /* a short last chunk */
        assert_int_equal(policy_insert(p, K(1, 0), MIB), -EEXIST);
        assert_int_equal(policy_insert(p, K(3, 7), 0), 0);
        assert_int_equal(policy_count(p), 4);
        /* MAX_ENTRIES resident: the caller must evict first. -EEXIST is still reported first. */
        assert_int_equal(policy_insert(p, K(4, 0), MIB), -ENOSPC);
        assert_int_equal(policy_insert(p, K(1, 1), MIB), -EEXIST);
        assert_true(policy_used_bytes(p) == 2 * MIB + 1234);
        assert_true(policy_contains(p, K(2, 0)));
        assert_false(policy_contains(p, K(2, 1)));
        assert_false(policy_contains(p, K(0, 0)));
        check_invariants(p);

        /* Within budget: no victim. */
        assert_false(policy_next_victim(p, &v));

        assert_true(policy_remove(p, K(2, 0)));
        assert_false(policy_remove(p, K(2, 0)));
        assert_false(policy_contains(p, K(2, 0)));
        assert_true(policy_used_bytes(p) == 2 * MIB);
        assert_int_equal(policy_insert(p, K(4, 0), MIB), 0); /* room again */
        check_invariants(p);

        /* Touch of an absent chunk is a no-op; remove does not make a ghost. */
        policy_touch(p, K(9, 9));
        assert_true(policy_remove(p, K(1, 1)));
        assert_int_equal(queue_of(p, K(1, 1)), -1);
        assert_int_equal(policy_insert(p, K(1, 1), MIB), 0);
        assert_int_equal(queue_of(p, K(1, 1)), Q_SMALL);
        check_invariants(p);
        policy_free(p);
        policy_free(NULL);
}

static void test_budget_respected(void **state) {
        struct policy *p = policy_new(10 * MIB, 100);
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 60; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                if (i % 3 == 0)
                        policy_touch(p, K(1, i));
                drain(p);
                assert_true(policy_used_bytes(p) <= 10 * MIB);
                check_invariants(p);
        }
        assert_int_equal(policy_count(p), 10);
        /* The budget is in bytes, not chunks: short chunks pack more. */
        for (uint32_t i = 0; i < 40; i++) {
                assert_int_equal(policy_insert(p, K(2, i), MIB / 4), 0);
                drain(p);
                assert_true(policy_used_bytes(p) <= 10 * MIB);
        }
        assert_true(policy_count(p) > 10);
        check_invariants(p);
        policy_free(p);
}

static void test_pinned_never_evicted(void **state) {
        struct policy *p = policy_new(4 * MIB, 64);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        assert_int_equal(policy_pin(p, K(1, 0)), -ENOENT);
        policy_unpin(p, K(1, 0)); /* absent: no-op */

        for (uint32_t i = 0; i < 4; i++)
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
        assert_int_equal(policy_pin(p, K(1, 0)), 0);
        assert_int_equal(policy_pin(p, K(1, 0)), 0); /* counted */
        assert_int_equal(policy_pin(p, K(1, 2)), 0);
        assert_true(policy_pinned_bytes(p) == 2 * MIB);
        policy_unpin(p, K(1, 3)); /* not pinned: no-op */
        assert_true(policy_pinned_bytes(p) == 2 * MIB);
        check_invariants(p);

        for (uint32_t i = 0; i < 50; i++) {
                assert_int_equal(policy_insert(p, K(2, i), MIB), 0);
                if (i % 2)
                        policy_touch(p, K(2, i));
                while (policy_next_victim(p, &v)) {
                        assert_false(v.blob == 1 && (v.idx == 0 || v.idx == 2));
                }
                assert_true(policy_contains(p, K(1, 0)));
                assert_true(policy_contains(p, K(1, 2)));
                /* Usage exceeds the budget by at most the pinned bytes. */
                assert_true(policy_used_bytes(p) <= 4 * MIB + policy_pinned_bytes(p));
                check_invariants(p);
        }

        /* One unpin of a twice-pinned chunk keeps it pinned. */
        policy_unpin(p, K(1, 0));
        assert_true(policy_pinned_bytes(p) == 2 * MIB);
        policy_unpin(p, K(1, 0));
        assert_true(policy_pinned_bytes(p) == MIB);
        policy_unpin(p, K(1, 0));
        assert_true(policy_pinned_bytes(p) == MIB);
        check_invariants(p);

        /* Removing a pinned chunk is the caller's call; the pinned bytes follow. */
        assert_true(policy_remove(p, K(1, 2)));
        assert_true(policy_pinned_bytes(p) == 0);
        check_invariants(p);
        policy_free(p);
}

static void test_all_pinned_terminates(void **state) {
        struct policy *p = policy_new(2 * MIB, 16);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 8; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                if (i % 2)
                        policy_touch(p, K(1, i));
                assert_int_equal(policy_pin(p, K(1, i)), 0);
        }
        /* Over budget, nothing evictable: false, and nothing lost. */
        assert_false(policy_next_victim(p, &v));
        assert_int_equal(policy_count(p), 8);
        check_invariants(p);

        /* Unpinned, two victims: 0 (never hit) and 2, with 1 (hit) promoted to main on the
         * way. Then pin what is left, so both queues are all-pinned. */
        for (uint32_t i = 0; i < 8; i++)
                policy_unpin(p, K(1, i));
        assert_true(policy_next_victim(p, &v));
        assert_int_equal(v.idx, 0);
        assert_true(policy_next_victim(p, &v));
        assert_int_equal(v.idx, 2);
        assert_int_equal(queue_of(p, K(1, 1)), Q_MAIN);
        for (uint32_t i = 0; i < 8; i++)
                if (policy_contains(p, K(1, i)))
                        assert_int_equal(policy_pin(p, K(1, i)), 0);
        assert_false(policy_next_victim(p, &v));
        check_invariants(p);

        /* Unpin exactly one: it is the victim, wherever it sits. */
        for (uint32_t i = 0; i < 8; i++) {
                if (policy_contains(p, K(1, i))) {
                        policy_unpin(p, K(1, i));
                        assert_true(policy_next_victim(p, &v));
                        assert_int_equal(v.blob, 1);
                        assert_int_equal(v.idx, i);
                        break;
                }
        }
        assert_false(policy_next_victim(p, &v));
        check_invariants(p);
        policy_free(p);
}

static void test_pinned_main_falls_back_to_small(void **state) {
        /* Small within its share, so main is scanned first; main is all pinned, so the victim
         * must come from small, directly or after a promotion. */
        struct policy *p = policy_new(10 * MIB, 32);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 10; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                policy_touch(p, K(1, i));
        }
        assert_int_equal(policy_insert(p, K(2, 0), MIB), 0);
        assert_true(policy_next_victim(p, &v));
        assert_true(v.blob == 2 && v.idx == 0);
        for (uint32_t i = 0; i < 10; i++) {
                assert_int_equal(queue_of(p, K(1, i)), Q_MAIN);
                assert_int_equal(policy_pin(p, K(1, i)), 0);
        }
        check_invariants(p);

        /* An untouched newcomer: evicted from small. */
        assert_int_equal(policy_insert(p, K(2, 1), MIB), 0);
        assert_true(policy_next_victim(p, &v));
        assert_true(v.blob == 2 && v.idx == 1);
        assert_false(policy_next_victim(p, &v));

        /* A touched newcomer: promoted to main by the small scan, then main's last pass finds
         * it as the only unpinned entry there. */
        assert_int_equal(policy_insert(p, K(2, 2), MIB), 0);
        policy_touch(p, K(2, 2));
        assert_true(policy_next_victim(p, &v));
        assert_true(v.blob == 2 && v.idx == 2);
        assert_false(policy_next_victim(p, &v));
        for (uint32_t i = 0; i < 10; i++)
                assert_true(policy_contains(p, K(1, i)));
        check_invariants(p);
        policy_free(p);
}

static void test_scan_resistance(void **state) {
        enum { BUDGET = 100, HOT = 50, SCAN = 2000 };
        struct policy *p = policy_new((uint64_t)BUDGET * MIB, 2 * BUDGET);
        uint32_t fifo[BUDGET + 1], fifo_len = 0, fifo_hot;
        (void)state;

        assert_non_null(p);
        /* A hot set, read by several containers. */
        for (uint32_t i = 0; i < HOT; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                fifo[fifo_len++] = i;
        }
        for (uint32_t i = 0; i < HOT; i++)
                policy_touch(p, K(1, i));

        /* One sequential read of a layer twenty times the budget, each chunk read once. */
        for (uint32_t i = 0; i < SCAN; i++) {
                assert_int_equal(policy_insert(p, K(2, i), MIB), 0);
                drain(p);
                assert_true(policy_used_bytes(p) <= (uint64_t)BUDGET * MIB);

                /* Plain FIFO with the same budget, for comparison. */
                fifo[fifo_len++] = HOT + i;
                if (fifo_len > BUDGET) {
                        memmove(fifo, fifo + 1, (fifo_len - 1) * sizeof(fifo[0]));
                        fifo_len--;
                }
        }
        check_invariants(p);
        for (uint32_t i = 0; i < HOT; i++) {
                assert_true(policy_contains(p, K(1, i)));
                assert_int_equal(queue_of(p, K(1, i)), Q_MAIN);
        }
        fifo_hot = 0;
        for (uint32_t i = 0; i < fifo_len; i++)
                fifo_hot += fifo[i] < HOT;
        assert_int_equal(fifo_hot, 0); /* FIFO lost the whole hot set */
        /* The ghost FIFO stayed bounded through 2000 evictions. */
        assert_true(p->q[Q_GHOST].count <= 2 * BUDGET);
        policy_free(p);
}

static void test_ghost_goes_to_main(void **state) {
        struct policy *p = policy_new(10 * MIB, 20);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        assert_int_equal(policy_insert(p, K(1, 0), MIB), 0);
        for (uint32_t i = 1; i <= 10; i++)
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
        /* 11 MiB over a 10 MiB budget: the oldest untouched chunk leaves small as a ghost. */
        assert_true(policy_next_victim(p, &v));
        assert_int_equal(v.blob, 1);
        assert_int_equal(v.idx, 0);
        assert_false(policy_next_victim(p, &v));
        assert_false(policy_contains(p, K(1, 0)));
        assert_int_equal(queue_of(p, K(1, 0)), Q_GHOST);
        policy_touch(p, K(1, 0)); /* a ghost is not resident: no-op */
        assert_int_equal(policy_pin(p, K(1, 0)), -ENOENT);
        assert_false(policy_remove(p, K(1, 0)));
        check_invariants(p);

        /* Wanted again soon: straight to main. */
        assert_int_equal(policy_insert(p, K(1, 0), MIB), 0);
        assert_int_equal(queue_of(p, K(1, 0)), Q_MAIN);
        assert_true(policy_contains(p, K(1, 0)));
        check_invariants(p);

        /* A scan now evicts from small and leaves it alone. */
        for (uint32_t i = 0; i < 30; i++) {
                assert_int_equal(policy_insert(p, K(2, i), MIB), 0);
                drain(p);
        }
        assert_true(policy_contains(p, K(1, 0)));

        /* A chunk evicted from main does not become a ghost, unlike those leaving small. */
        policy_set_budget(p, 0);
        drain(p);
        assert_int_equal(policy_count(p), 0);
        assert_int_equal(queue_of(p, K(1, 0)), -1);
        check_invariants(p);
        policy_free(p);
}

static void test_main_clock(void **state) {
        /* Main gives an entry one extra pass per frequency point. */
        struct policy *p = policy_new(4 * MIB, 16);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 4; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                policy_touch(p, K(1, i));
        }
        policy_touch(p, K(1, 0));
        policy_touch(p, K(1, 0));
        policy_touch(p, K(1, 0)); /* saturates at 3 */
        policy_touch(p, K(1, 0));
        assert_int_equal(p->slots[hash_find(p, K(1, 0))].freq, FREQ_MAX);
        /* Over budget: all four move to main on the way and one of the 1-point ones goes
         * first; chunk 0 (3 points) outlives the others. */
        assert_int_equal(policy_insert(p, K(2, 0), MIB), 0);
        assert_true(policy_next_victim(p, &v));
        assert_int_equal(v.blob, 2); /* the untouched newcomer in small */
        policy_set_budget(p, MIB);
        for (int n = 0; n < 3; n++) {
                assert_true(policy_next_victim(p, &v));
                assert_int_equal(v.blob, 1);
                assert_int_not_equal(v.idx, 0);
        }
        assert_false(policy_next_victim(p, &v));
        assert_true(policy_contains(p, K(1, 0)));
        check_invariants(p);
        policy_free(p);
}

static void test_set_budget_shrink(void **state) {
        struct policy *p = policy_new(64 * MIB, 128);
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 64; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                if (i % 4 == 0)
                        policy_touch(p, K(1, i));
        }
        assert_int_equal(drain(p), 0);
        policy_set_budget(p, 16 * MIB);
        assert_true(policy_budget(p) == 16 * MIB);
        assert_int_equal(drain(p), 48);
        assert_true(policy_used_bytes(p) == 16 * MIB);
        assert_int_equal(policy_count(p), 16);
        /* What is left is the touched chunks, less at most the one that main's CLOCK gave up
         * once small had shrunk to its 10% share (1.6 MiB: one chunk, the newest). */
        {
                uint32_t touched_left = 0;
                for (uint32_t i = 0; i < 64; i++) {
                        if (!policy_contains(p, K(1, i)))
                                continue;
                        if (i % 4 == 0)
                                touched_left++;
                        else
                                assert_int_equal(i, 63);
                }
                assert_true(touched_left >= 15);
        }
        check_invariants(p);

        policy_set_budget(p, 0);
        assert_int_equal(drain(p), 16);
        assert_int_equal(policy_count(p), 0);
        assert_true(policy_used_bytes(p) == 0);
        check_invariants(p);
        policy_free(p);
}

static void test_ghost_bounded_and_reused(void **state) {
        struct policy *p = policy_new(4 * MIB, 8);
        (void)state;

        assert_non_null(p);
        for (uint32_t i = 0; i < 1000; i++) {
                assert_int_equal(policy_insert(p, K(1, i), MIB), 0);
                drain(p);
                assert_true(p->q[Q_GHOST].count <= 8);
        }
        check_invariants(p);
        /* The newest ghosts are remembered, the oldest forgotten. */
        assert_int_equal(queue_of(p, K(1, 995)), Q_GHOST);
        assert_int_equal(queue_of(p, K(1, 10)), -1);
        /* Resident at MAX_ENTRIES with ghosts at their bound: a ghost hit is still -ENOSPC. */
        policy_set_budget(p, UINT64_MAX);
        for (uint32_t i = 0; policy_count(p) < 8; i++)
                assert_int_equal(policy_insert(p, K(3, i), MIB), 0);
        assert_int_equal(policy_insert(p, K(1, 995), MIB), -ENOSPC);
        assert_int_equal(queue_of(p, K(1, 995)), Q_GHOST);
        check_invariants(p);
        policy_free(p);
}

static void test_zero_entries(void **state) {
        struct policy *p = policy_new(MIB, 0);
        struct chunk_key v;
        (void)state;

        assert_non_null(p);
        assert_int_equal(policy_insert(p, K(1, 0), 1), -ENOSPC);
        assert_false(policy_next_victim(p, &v));
        check_invariants(p);
        policy_free(p);
        assert_null(policy_new(MIB, (size_t)UINT32_MAX));
}

/* --- randomized stress against a model --------------------------------------------------- */

#define M_BLOBS 4
#define M_IDX 48
#define M_KEYS (M_BLOBS * M_IDX)

struct model_entry {
        bool resident;
        uint32_t bytes;
        uint32_t pins;
};

static uint64_t rng_state;

static uint32_t rng(void) {
        /* xorshift64*: deterministic, so a failure reproduces. */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32);
}

static void model_compare(const struct policy *p, const struct model_entry *m) {
        size_t count = 0;
        uint64_t used = 0, pinned = 0;

        for (uint32_t k = 0; k < M_KEYS; k++) {
                assert_int_equal(policy_contains(p, K(k / M_IDX, k % M_IDX)), m[k].resident);
                if (!m[k].resident)
                        continue;
                count++;
                used += m[k].bytes;
                if (m[k].pins)
                        pinned += m[k].bytes;
        }
        assert_int_equal(policy_count(p), count);
        assert_true(policy_used_bytes(p) == used);
        assert_true(policy_pinned_bytes(p) == pinned);
}

static void stress_run(uint64_t seed, size_t max_entries, int ops) {
        struct model_entry m[M_KEYS];
        uint64_t budget = 20 * MIB;
        struct policy *p = policy_new(budget, max_entries);

        assert_non_null(p);
        memset(m, 0, sizeof(m));
        rng_state = seed;
        for (int op = 0; op < ops; op++) {
                uint32_t k = rng() % M_KEYS, r = rng() % 100;
                struct chunk_key key = K(k / M_IDX, k % M_IDX);
                struct chunk_key v;

                if (r < 40) {
                        uint32_t bytes = rng() % 8 == 0 ? rng() % MIB : MIB;
                        int want = m[k].resident                    ? -EEXIST
                                   : policy_count(p) >= max_entries ? -ENOSPC
                                                                    : 0;
                        assert_int_equal(policy_insert(p, key, bytes), want);
                        if (want == 0) {
                                m[k].resident = true;
                                m[k].bytes = bytes;
                                m[k].pins = 0;
                        }
                } else if (r < 65) {
                        policy_touch(p, key);
                } else if (r < 70) {
                        assert_int_equal(policy_remove(p, key), m[k].resident);
                        m[k].resident = false;
                } else if (r < 78) {
                        assert_int_equal(policy_pin(p, key), m[k].resident ? 0 : -ENOENT);
                        if (m[k].resident)
                                m[k].pins++;
                } else if (r < 88) {
                        policy_unpin(p, key);
                        if (m[k].resident && m[k].pins)
                                m[k].pins--;
                } else if (r < 98) {
                        /* Drain: every victim resident and unpinned; afterwards within budget
                         * unless only pinned chunks are left. */
                        while (policy_next_victim(p, &v)) {
                                uint32_t vk = v.blob * M_IDX + v.idx;
                                assert_true(v.blob < M_BLOBS && v.idx < M_IDX);
                                assert_true(m[vk].resident);
                                assert_int_equal(m[vk].pins, 0);
                                m[vk].resident = false;
                        }
                        if (policy_used_bytes(p) > budget) {
                                for (uint32_t j = 0; j < M_KEYS; j++)
                                        assert_true(!m[j].resident || m[j].pins > 0);
                        }
                } else {
                        budget = (uint64_t)(rng() % 40) * MIB;
                        policy_set_budget(p, budget);
                }
                check_invariants(p);
                model_compare(p, m);
        }
        policy_free(p);
}

static void test_stress(void **state) {
        (void)state;
        stress_run(0x9e3779b97f4a7c15u, 32, 20000);  /* ENOSPC pressure */
        stress_run(0x2545f4914f6cdd1du, 256, 20000); /* every key fits */
        stress_run(0x0123456789abcdefu, 1, 5000);    /* degenerate bound */
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_basics),
                cmocka_unit_test(test_budget_respected),
                cmocka_unit_test(test_pinned_never_evicted),
                cmocka_unit_test(test_all_pinned_terminates),
                cmocka_unit_test(test_pinned_main_falls_back_to_small),
                cmocka_unit_test(test_scan_resistance),
                cmocka_unit_test(test_ghost_goes_to_main),
                cmocka_unit_test(test_main_clock),
                cmocka_unit_test(test_set_budget_shrink),
                cmocka_unit_test(test_ghost_bounded_and_reused),
                cmocka_unit_test(test_zero_entries),
                cmocka_unit_test(test_stress),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
