/* The directory under a wave of readers (issue 18): when a blob's holder records are full,
 * the holder with the fewest chunks goes, not the least recently announced one — in a wave
 * that was the reader furthest ahead, and the readers behind it then went to the origin for
 * the chunks only it had. And the readers of a blob spread their locates over its homes
 * (rendezvous.h's rdv_spread, as peer/source.c does): each home answers about 1/k of them,
 * while claims are still granted by the first home alone, once per chunk.
 * (tests/unit/test_directory.c covers the rest of the directory.) */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "peer/directory.h"
#include "peer/rendezvous.h"

#define CS 1048576u
#define NCHUNKS 16

static void announce(struct directory *dir, const char *node, uint32_t upto, uint64_t now) {
        struct wire_blob b;
        struct wire_announce a;
        uint8_t present[NCHUNKS / 8 + 1];
        char reason[128];

        memset(&b, 0, sizeof(b));
        memset(&a, 0, sizeof(a));
        memset(present, 0, sizeof(present));
        for (uint32_t i = 0; i < upto; i++)
                wire_set_bit(present, i);
        memset(b.digest.bytes, 0x42, sizeof(b.digest.bytes));
        b.nchunks = NCHUNKS;
        b.size = (uint64_t)NCHUNKS * CS;
        snprintf(b.source, sizeof(b.source), "registry.example.com/app");
        b.present = present;
        snprintf(a.node, sizeof(a.node), "%s", node);
        a.chunk_size = CS;
        a.nblobs = 1;
        a.blobs = &b;
        assert_int_equal(dir_apply(dir, &a, now, reason, sizeof(reason)), 0);
}

/* Holders of chunk IDX in a locate answer. */
static unsigned holders_of(struct directory *dir, uint32_t idx, uint64_t now, char *first,
                           size_t len) {
        struct digest d;
        struct wire_locate l;
        unsigned n = 0;

        memset(d.bytes, 0x42, sizeof(d.bytes));
        assert_int_equal(dir_locate(dir, &d, NULL, -1, now, &l), 0);
        for (uint32_t i = 0; i < l.nholders; i++)
                if (!l.holders[i].fetching && wire_bit(l.holders[i].present, idx)) {
                        if (n++ == 0)
                                snprintf(first, len, "%s", l.holders[i].node);
                }
        wire_locate_free(&l);
        return n;
}

static void test_full_holders_keep_the_reader_ahead(void **state) {
        (void)state;
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 8,
                                 .max_holders = 2,
                                 .ttl_ms = 60000,
                                 .claim_ttl_ms = 10000};
        struct directory *dir;
        char who[PEER_ID_MAX] = "";

        assert_int_equal(dir_new(&cfg, &dir), 0);
        announce(dir, "10.0.0.1:5001", 12, 1000); /* ahead: chunks 0-11 */
        announce(dir, "10.0.0.2:5001", 2, 1001);  /* behind: 0-1 */
        announce(dir, "10.0.0.3:5001", 1, 1002);  /* just started: 0; the table is full */
        /* The least recently announced (the reader ahead) is still listed for chunk 11. */
        assert_int_equal(holders_of(dir, 11, 1003, who, sizeof(who)), 1);
        assert_string_equal(who, "10.0.0.1:5001");
        /* When 10.0.0.3 arrived the record with the fewest chunks went: 10.0.0.2's (2
         * against 12), so chunk 1 is listed by 10.0.0.1 only and chunk 0 by 10.0.0.1 and
         * 10.0.0.3. */
        assert_int_equal(holders_of(dir, 1, 1003, who, sizeof(who)), 1);
        assert_string_equal(who, "10.0.0.1:5001");
        assert_int_equal(holders_of(dir, 0, 1003, who, sizeof(who)), 2);
        dir_free(dir);
}

#define K 3
#define READERS 300

/* Source.c's policy over K real directories: "who holds chunk C?" to the spread home, and
 * when it names nobody, the first home with the claim. Returns whether a claim was granted
 * (the reader goes to the origin). */
static bool read_chunk(struct directory **homes, const char *reader, uint32_t c, uint64_t now) {
        struct digest d;
        struct wire_locate l;
        bool found = false, granted;

        memset(d.bytes, 0x42, sizeof(d.bytes));
        size_t spread = rdv_spread(reader, &d, K);
        assert_true(spread < K);
        if (spread > 0) {
                assert_int_equal(dir_locate(homes[spread], &d, NULL, c, now, &l), 0);
                assert_false(l.has_claim); /* a spread home is never asked to decide */
                for (uint32_t i = 0; i < l.nholders; i++)
                        found = found || wire_bit(l.holders[i].present, c);
                wire_locate_free(&l);
                if (found)
                        return false;
        }
        assert_int_equal(dir_locate(homes[0], &d, reader, c, now, &l), 0);
        granted = l.has_claim && l.claim_granted;
        wire_locate_free(&l);
        return granted;
}

static void test_locates_spread_over_homes(void **state) {
        struct dir_config cfg = {.chunk_size = CS,
                                 .max_blobs = 16,
                                 .max_holders = 32,
                                 .ttl_ms = 60000,
                                 .claim_ttl_ms = 10000};
        struct directory *homes[K];
        struct dir_stats st[K];
        char reader[PEER_ID_MAX];
        unsigned granted[NCHUNKS] = {0};
        struct digest d;

        (void)state;
        memset(d.bytes, 0x42, sizeof(d.bytes));
        assert_true(rdv_spread("10.0.0.1:5001", &d, 0) == 0);
        assert_true(rdv_spread("10.0.0.1:5001", &d, 1) == 0);
        for (unsigned h = 0; h < K; h++) {
                assert_int_equal(dir_new(&cfg, &homes[h]), 0);
                announce(homes[h], "10.0.9.1:5001", NCHUNKS / 2, 1000); /* holds the first half */
        }
        for (unsigned r = 0; r < READERS; r++) {
                snprintf(reader, sizeof(reader), "10.1.%u.%u:5001", r / 200, r % 200 + 1);
                for (uint32_t c = 0; c < NCHUNKS; c++)
                        granted[c] += read_chunk(homes, reader, c, 2000);
        }
        for (unsigned h = 0; h < K; h++)
                dir_get_stats(homes[h], &st[h]);
        /* Each spread home answers about a third of the readers (binomial: 100 +- 8; 70 is
         * more than 3 sigma away), about every chunk, and grants nothing. */
        for (unsigned h = 1; h < K; h++) {
                assert_true(st[h].locates >= 70 * NCHUNKS);
                assert_true(st[h].locates <= 130 * NCHUNKS);
                assert_int_equal(st[h].claims_granted, 0);
        }
        /* The first home: its own third of the readers, and the others' locates of the chunks
         * nobody holds (those need the claim). Before the spread it had every locate:
         * READERS x NCHUNKS. */
        uint64_t first_readers = READERS - st[1].locates / NCHUNKS - st[2].locates / NCHUNKS;
        assert_true(first_readers >= 70 && first_readers <= 130);
        assert_true(st[0].locates ==
                    first_readers * NCHUNKS + (READERS - first_readers) * NCHUNKS / 2);
        assert_true(st[0].locates < READERS * NCHUNKS * 3 / 4);
        /* One origin fetch per chunk nobody holds, none for the held ones. */
        assert_int_equal(st[0].claims_granted, NCHUNKS / 2);
        for (uint32_t c = 0; c < NCHUNKS; c++)
                assert_int_equal(granted[c], c < NCHUNKS / 2 ? 0 : 1);
        for (unsigned h = 0; h < K; h++)
                dir_free(homes[h]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_full_holders_keep_the_reader_ahead),
                cmocka_unit_test(test_locates_spread_over_homes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
