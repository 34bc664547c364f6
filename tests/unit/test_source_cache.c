/* peer/source.c's locate cache, reached through its statics (the source's thread is not
 * started: the cache belongs to that thread, so a bare struct source is all it needs): one
 * answer per blob, the freshest wins, bounded by slots and by bytes, dropped on demand, and a
 * stale answer is a hint only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "peer/source_cache.c"

static struct digest dg(int n) {
        struct digest d;
        memset(&d, 0, sizeof(d));
        d.bytes[0] = (uint8_t)n;
        d.bytes[1] = (uint8_t)(n >> 8);
        return d;
}

/* An answer about blob N with NCHUNKS chunks, one holder holding them all. */
static void answer(struct wire_locate *l, int n, uint32_t nchunks) {
        memset(l, 0, sizeof(*l));
        l->digest = dg(n);
        l->nchunks = nchunks;
        l->chunk_size = 1 << 20;
        l->size = (uint64_t)nchunks << 20;
        size_t map = (nchunks + 7) / 8;
        l->sha = calloc(nchunks, sizeof(*l->sha));
        l->sha_known = calloc(1, map);
        l->sha_verified = calloc(1, map);
        l->holders = calloc(2 * WIRE_MAX_HOLDERS, sizeof(*l->holders));
        assert_non_null(l->sha);
        assert_non_null(l->sha_known);
        assert_non_null(l->sha_verified);
        assert_non_null(l->holders);
        l->nholders = 1;
        snprintf(l->holders[0].node, sizeof(l->holders[0].node), "10.0.0.2:5001");
        l->holders[0].present = malloc(map);
        assert_non_null(l->holders[0].present);
        memset(l->holders[0].present, 0xff, map);
        l->has_claim = true;
}

static struct source *bare(void) {
        struct source *s = calloc(1, sizeof(*s));
        assert_non_null(s);
        return s;
}

static void done(struct source *s) {
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                src_lcache_evict(s, &s->lcache[i]);
        assert_int_equal(s->lcache_bytes, 0);
        free(s);
}

/* Kept, found, the claim not kept; a newer answer of the same blob replaces it; dropped. */
static void test_put_get_drop(void **state) {
        (void)state;
        struct source *s = bare();
        struct wire_locate l;
        answer(&l, 1, 64);
        struct lcache_entry *e = src_lcache_put(s, &l, "10.0.0.3:5001");
        assert_non_null(e);
        assert_null(l.sha); /* taken */
        wire_locate_free(&l);
        struct digest one = dg(1), two = dg(2);
        assert_ptr_equal(src_lcache_get(s, &one), e);
        assert_false(e->l.has_claim);
        assert_string_equal(e->home, "10.0.0.3:5001");
        assert_null(src_lcache_get(s, &two));

        answer(&l, 1, 64);
        struct lcache_entry *e2 = src_lcache_put(s, &l, "10.0.0.4:5001");
        assert_non_null(e2);
        unsigned used = 0;
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                used += s->lcache[i].used;
        assert_int_equal(used, 1);
        assert_string_equal(src_lcache_get(s, &one)->home, "10.0.0.4:5001");

        src_lcache_drop(s, &one);
        assert_null(src_lcache_get(s, &one));
        assert_int_equal(s->lcache_bytes, 0);
        done(s);
}

/* Past the TTL an answer is not used, but stays a hint until LCACHE_HINT_MS; then it goes. */
static void test_ttl_and_hint(void **state) {
        (void)state;
        struct source *s = bare();
        struct wire_locate l;
        answer(&l, 1, 8);
        struct lcache_entry *e = src_lcache_put(s, &l, "10.0.0.3:5001");
        assert_non_null(e);
        struct digest one = dg(1);
        e->at_ms = now_ms() - LCACHE_TTL_MS - 1;
        assert_null(src_lcache_get(s, &one));
        assert_ptr_equal(src_lcache_find(s, &one, LCACHE_HINT_MS), e);
        e->at_ms = now_ms() - LCACHE_HINT_MS - 1;
        assert_null(src_lcache_find(s, &one, LCACHE_HINT_MS));
        assert_false(e->used);
        assert_int_equal(s->lcache_bytes, 0);
        done(s);
}

/* More blobs than slots: the oldest answers go; the bytes never pass LCACHE_BYTES; an answer
 * larger than half the budget is not kept (and is left to its owner). */
static void test_bounds(void **state) {
        (void)state;
        struct source *s = bare();
        struct wire_locate l;
        for (int n = 1; n <= 3 * LCACHE_SLOTS; n++) {
                answer(&l, n, 16384); /* 16 GiB blobs: 512 KiB of digests each */
                assert_non_null(src_lcache_put(s, &l, "10.0.0.3:5001"));
                assert_true(s->lcache_bytes <= LCACHE_BYTES);
                struct digest d = dg(n);
                assert_non_null(src_lcache_get(s, &d));
        }
        struct digest first = dg(1), last = dg(3 * LCACHE_SLOTS);
        assert_null(src_lcache_get(s, &first));
        assert_non_null(src_lcache_get(s, &last));
        unsigned used = 0;
        for (unsigned i = 0; i < LCACHE_SLOTS; i++)
                used += s->lcache[i].used;
        assert_true(used < LCACHE_SLOTS); /* the byte budget bound first */

        answer(&l, 999, 1u << 20); /* 1 TiB: 32 MiB of digests */
        assert_null(src_lcache_put(s, &l, "10.0.0.3:5001"));
        assert_non_null(l.sha); /* still the caller's */
        wire_locate_free(&l);
        assert_true(s->lcache_bytes <= LCACHE_BYTES);
        done(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_put_get_drop),
                cmocka_unit_test(test_ttl_and_hint),
                cmocka_unit_test(test_bounds),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
