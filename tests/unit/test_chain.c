/* Unit tests for util/chain.c: chain values agree with one SHA-256 over the whole blob, each
 * chunk checks on its own from its predecessor's value, and a changed byte, a wrong
 * predecessor, a wrong value or a wrong offset of the last chunk each fail the check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/chain.h"

enum { CHUNK = 4096, NCHUNKS = 5, TAIL = 1000, SIZE = CHUNK * (NCHUNKS - 1) + TAIL };

static uint8_t blob[SIZE];
static struct digest value[NCHUNKS]; /* value[NCHUNKS - 1] is the blob digest */

static int setup(void **state) {
        (void)state;
        uint32_t x = 12345;
        for (size_t i = 0; i < SIZE; i++) {
                x = x * 1103515245u + 12345u;
                blob[i] = (uint8_t)(x >> 16);
        }
        /* The values as one pass over the blob sees them. */
        struct chain_hash c;
        chain_begin(&c, NULL, 0);
        for (unsigned i = 0; i + 1 < NCHUNKS; i++) {
                chain_add(&c, blob + (size_t)i * CHUNK, CHUNK);
                chain_value(&c, &value[i]);
        }
        chain_add(&c, blob + (size_t)(NCHUNKS - 1) * CHUNK, TAIL);
        chain_finish(&c, &value[NCHUNKS - 1]);
        return 0;
}

static const struct digest *prev_of(unsigned i) {
        return i ? &value[i - 1] : NULL;
}

static size_t len_of(unsigned i) {
        return i + 1 < NCHUNKS ? CHUNK : TAIL;
}

static void test_last_value_is_the_blob_digest(void **state) {
        (void)state;
        struct digest whole;
        digest_sha256(blob, SIZE, &whole);
        assert_true(digest_equal(&whole, &value[NCHUNKS - 1]));
}

static void test_each_chunk_checks_alone(void **state) {
        (void)state;
        for (unsigned i = NCHUNKS; i-- > 0;) /* any order */
                assert_true(chain_check(prev_of(i), (uint64_t)i * CHUNK, blob + (size_t)i * CHUNK,
                                        len_of(i), i + 1 == NCHUNKS, &value[i]));
}

static void test_a_changed_byte_fails(void **state) {
        (void)state;
        static uint8_t copy[CHUNK];
        for (unsigned i = 0; i < NCHUNKS; i++) {
                for (size_t at = 0; at < len_of(i); at += len_of(i) - 1) {
                        memcpy(copy, blob + (size_t)i * CHUNK, len_of(i));
                        copy[at] ^= 0x01;
                        assert_false(chain_check(prev_of(i), (uint64_t)i * CHUNK, copy, len_of(i),
                                                 i + 1 == NCHUNKS, &value[i]));
                }
        }
}

static void test_wrong_context_fails(void **state) {
        (void)state;
        const uint8_t *c2 = blob + 2 * CHUNK;
        /* Another predecessor, another value, or "last" for one that is not. (An offset
         * counts only in the last chunk: SHA-256 mixes the length into its padding alone.) */
        assert_false(chain_check(&value[0], 2 * CHUNK, c2, CHUNK, false, &value[2]));
        assert_false(chain_check(&value[1], 2 * CHUNK, c2, CHUNK, false, &value[3]));
        assert_false(chain_check(&value[1], 2 * CHUNK, c2, CHUNK, true, &value[2]));
        const uint8_t *tail = blob + (NCHUNKS - 1) * CHUNK;
        assert_false(chain_check(&value[NCHUNKS - 2], (NCHUNKS - 1) * CHUNK, tail, TAIL, false,
                                 &value[NCHUNKS - 1]));
        assert_false(chain_check(&value[NCHUNKS - 2], NCHUNKS * CHUNK, tail, TAIL, true,
                                 &value[NCHUNKS - 1]));
        /* Chunk 0 is not checkable against a plain sha256 of itself, nor vice versa. */
        struct digest plain;
        digest_sha256(blob, CHUNK, &plain);
        assert_false(digest_equal(&plain, &value[0]));
}

static void test_resume_midway(void **state) {
        (void)state;
        /* A hash begun at a chunk boundary from its value and fed in odd pieces. */
        struct chain_hash c;
        chain_begin(&c, &value[1], 2 * CHUNK);
        const uint8_t *p = blob + 2 * CHUNK;
        size_t left = SIZE - 2 * CHUNK;
        for (size_t step = 1; left; step = step * 3 + 1) {
                size_t n = step < left ? step : left;
                chain_add(&c, p, n);
                p += n;
                left -= n;
        }
        struct digest got;
        chain_finish(&c, &got);
        assert_true(digest_equal(&got, &value[NCHUNKS - 1]));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_last_value_is_the_blob_digest),
                cmocka_unit_test(test_each_chunk_checks_alone),
                cmocka_unit_test(test_a_changed_byte_fails),
                cmocka_unit_test(test_wrong_context_fails),
                cmocka_unit_test(test_resume_midway),
        };
        return cmocka_run_group_tests(tests, setup, NULL);
}
