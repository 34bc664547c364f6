/* The directory under a wave of readers (issue 18): when a blob's holder records are full,
 * the holder with the fewest chunks goes, not the least recently announced one — in a wave
 * that was the reader furthest ahead, and the readers behind it then went to the origin for
 * the chunks only it had. (tests/unit/test_directory.c covers the rest of the directory.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "peer/directory.h"

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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_full_holders_keep_the_reader_ahead),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
