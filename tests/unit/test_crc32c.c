/* Unit tests for util/crc32c.c: the known CRC-32C vectors (RFC 3720 appendix B.4 and the
 * "123456789" check value), incremental use, and the CPU path against the table path over
 * every length and alignment that exercises the three-lane stride and its edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "util/crc32c.h"

/* Both implementations must give WANT for LEN bytes at BUF. */
static void expect_both(const void *buf, size_t len, uint32_t want) {
        assert_int_equal(crc32c(0, buf, len), want);
        assert_int_equal(crc32c_sw(0, buf, len), want);
}

static void test_vectors(void **state) {
        (void)state;
        expect_both("123456789", 9, 0xE3069283u);
        expect_both("", 0, 0);
        uint8_t b[48];
        memset(b, 0, 32); /* RFC 3720 B.4: 32 bytes of zeros */
        expect_both(b, 32, 0x8A9136AAu);
        memset(b, 0xff, 32); /* 32 bytes of ones */
        expect_both(b, 32, 0x62A8AB43u);
        for (int i = 0; i < 32; i++) /* incrementing 00..1f */
                b[i] = (uint8_t)i;
        expect_both(b, 32, 0x46DD794Eu);
        for (int i = 0; i < 32; i++) /* decrementing 1f..00 */
                b[i] = (uint8_t)(31 - i);
        expect_both(b, 32, 0x113FDB5Cu);
        /* An iSCSI read command PDU (RFC 3720 B.4). */
        static const uint8_t pdu[48] = {0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00,
                                        0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
                                        0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
        expect_both(pdu, sizeof(pdu), 0xD9963A56u);
}

/* Large enough for several strides of the fast path (3 * 1360 bytes each). */
#define BIG (3 * 4096 + 123)

static uint8_t *random_bytes(size_t n, unsigned seed) {
        uint8_t *p = malloc(n + 16);
        assert_non_null(p);
        uint32_t x = seed * 2654435761u + 1;
        for (size_t i = 0; i < n + 16; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p[i] = (uint8_t)x;
        }
        return p;
}

static void test_hw_matches_sw(void **state) {
        (void)state;
        uint8_t *p = random_bytes(BIG, 7);
        for (size_t align = 0; align < 8; align++)
                for (size_t len = 0; len <= BIG; len += len < 64 ? 1 : 61)
                        assert_int_equal(crc32c(0, p + align, len), crc32c_sw(0, p + align, len));
        /* the stride's edges exactly */
        const size_t edges[] = {4079, 4080, 4081, 4095, 4096, 4097, 8160, 8192};
        for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
                assert_int_equal(crc32c(0, p, edges[i]), crc32c_sw(0, p, edges[i]));
        free(p);
        print_message("crc32c: CPU instruction %s\n", crc32c_hw_available() ? "used" : "absent");
}

static void test_incremental(void **state) {
        (void)state;
        uint8_t *p = random_bytes(BIG, 11);
        uint32_t whole = crc32c(0, p, BIG);
        for (size_t cut = 0; cut <= BIG; cut += 97) {
                assert_int_equal(crc32c(crc32c(0, p, cut), p + cut, BIG - cut), whole);
                assert_int_equal(crc32c_sw(crc32c_sw(0, p, cut), p + cut, BIG - cut), whole);
        }
        free(p);
}

static void test_detects_flips(void **state) {
        (void)state;
        uint8_t *p = random_bytes(4096, 3);
        uint32_t good = crc32c(0, p, 4096);
        for (size_t bit = 0; bit < 4096 * 8; bit += 89) {
                p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                assert_int_not_equal(crc32c(0, p, 4096), good);
                p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        free(p);
}

static double seconds(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Not an assertion (the machine is shared): prints the throughput of 4 KiB blocks, which is
 * what the store checks. */
static void test_speed(void **state) {
        (void)state;
        const size_t n = 4u << 20;
        uint8_t *p = random_bytes(n, 5);
        uint32_t sink = 0;
        double t0 = seconds();
        for (int rep = 0; rep < 16; rep++)
                for (size_t off = 0; off < n; off += 4096)
                        sink ^= crc32c(0, p + off, 4096);
        double hw = seconds() - t0;
        t0 = seconds();
        for (size_t off = 0; off < n; off += 4096)
                sink ^= crc32c_sw(0, p + off, 4096);
        double sw = seconds() - t0;
        print_message("crc32c 4 KiB blocks: fast path %.1f GB/s, table %.1f GB/s (sink %x)\n",
                      16.0 * (double)n / hw / 1e9, (double)n / sw / 1e9, sink);
        free(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vectors),     cmocka_unit_test(test_hw_matches_sw),
                cmocka_unit_test(test_incremental), cmocka_unit_test(test_detects_flips),
                cmocka_unit_test(test_speed),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
