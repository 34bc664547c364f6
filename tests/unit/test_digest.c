/* Unit tests for util/digest.c: the one accepted spelling of a digest, the error that tells
 * "unsupported" from "malformed", and sha256 against published vectors (FIPS 180-2). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/digest.h"

static const char ABC_HEX[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
static const char EMPTY_HEX[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/* FIPS 180-2 appendix B.2: the two-block message. */
static const char TWO_BLOCK_HEX[] =
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
/* FIPS 180-2 appendix B.3: one million 'a'. */
static const char MILLION_A_HEX[] =
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";

static void expect_sha256(const void *buf, size_t len, const char *want) {
        struct digest d;
        char hex[DIGEST_HEX_LEN + 1];

        digest_sha256(buf, len, &d);
        digest_to_hex(&d, hex);
        assert_string_equal(hex, want);
}

static void test_sha256_vectors(void **state) {
        char *million;
        (void)state;

        expect_sha256("abc", 3, ABC_HEX);
        expect_sha256("", 0, EMPTY_HEX);
        expect_sha256(NULL, 0, EMPTY_HEX);
        expect_sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
                      TWO_BLOCK_HEX);
        million = malloc(1000000);
        assert_non_null(million);
        memset(million, 'a', 1000000);
        expect_sha256(million, 1000000, MILLION_A_HEX);
        free(million);
}

static void test_hex_roundtrip(void **state) {
        struct digest d, e;
        char hex[DIGEST_HEX_LEN + 1];
        (void)state;

        assert_int_equal(digest_from_hex(ABC_HEX, DIGEST_HEX_LEN, &d), 0);
        assert_int_equal(d.bytes[0], 0xba);
        assert_int_equal(d.bytes[31], 0xad);
        digest_to_hex(&d, hex);
        assert_string_equal(hex, ABC_HEX);
        digest_sha256("abc", 3, &e);
        assert_true(digest_equal(&d, &e));
        e.bytes[17] ^= 1;
        assert_false(digest_equal(&d, &e));

        /* LEN is what counts, not the NUL: a longer buffer parses its first 64 characters. */
        char longer[80];
        memcpy(longer, ABC_HEX, DIGEST_HEX_LEN);
        memcpy(longer + DIGEST_HEX_LEN, "ffff", 5);
        assert_int_equal(digest_from_hex(longer, DIGEST_HEX_LEN, &e), 0);
        assert_true(digest_equal(&d, &e));
}

static void test_hex_bad(void **state) {
        struct digest d, orig;
        char buf[DIGEST_HEX_LEN + 1];
        (void)state;

        memset(&orig, 0x5a, sizeof(orig));
        d = orig;
        assert_int_equal(digest_from_hex(ABC_HEX, DIGEST_HEX_LEN - 1, &d), -EINVAL);
        assert_int_equal(digest_from_hex(ABC_HEX, DIGEST_HEX_LEN + 1, &d), -EINVAL);
        assert_int_equal(digest_from_hex(ABC_HEX, 0, &d), -EINVAL);
        assert_int_equal(digest_from_hex(NULL, DIGEST_HEX_LEN, &d), -EINVAL);

        memcpy(buf, ABC_HEX, sizeof(buf));
        buf[0] = 'B'; /* uppercase is refused, not folded */
        assert_int_equal(digest_from_hex(buf, DIGEST_HEX_LEN, &d), -EINVAL);
        memcpy(buf, ABC_HEX, sizeof(buf));
        buf[63] = 'g';
        assert_int_equal(digest_from_hex(buf, DIGEST_HEX_LEN, &d), -EINVAL);
        memcpy(buf, ABC_HEX, sizeof(buf));
        buf[30] = '\0';
        assert_int_equal(digest_from_hex(buf, DIGEST_HEX_LEN, &d), -EINVAL);
        memcpy(buf, ABC_HEX, sizeof(buf));
        buf[10] = ' ';
        assert_int_equal(digest_from_hex(buf, DIGEST_HEX_LEN, &d), -EINVAL);
        assert_memory_equal(&d, &orig, sizeof(d)); /* nothing written on error */
}

static void test_parse(void **state) {
        struct digest d, want, orig;
        char buf[160];
        (void)state;

        assert_int_equal(digest_from_hex(ABC_HEX, DIGEST_HEX_LEN, &want), 0);
        snprintf(buf, sizeof(buf), "sha256:%s", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), 0);
        assert_true(digest_equal(&d, &want));

        memset(&orig, 0x5a, sizeof(orig));
        d = orig;
        assert_int_equal(digest_parse(ABC_HEX, &d), -EINVAL); /* no prefix */
        snprintf(buf, sizeof(buf), "SHA256:%s", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EINVAL);
        snprintf(buf, sizeof(buf), "sha256:%sa", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EINVAL);
        snprintf(buf, sizeof(buf), "sha256:%.63s", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EINVAL);
        snprintf(buf, sizeof(buf), "sha256: %s", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EINVAL);
        snprintf(buf, sizeof(buf), "sha256::%s", ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EINVAL);
        assert_int_equal(digest_parse("sha256:", &d), -EINVAL);
        assert_int_equal(digest_parse("", &d), -EINVAL);
        assert_int_equal(digest_parse(":abc", &d), -EINVAL);
        assert_int_equal(digest_parse(NULL, &d), -EINVAL);

        /* Well-formed digests of other algorithms are "unsupported", not "malformed". */
        snprintf(buf, sizeof(buf), "sha512:%s%s", ABC_HEX, ABC_HEX);
        assert_int_equal(digest_parse(buf, &d), -EPROTONOSUPPORT);
        assert_int_equal(digest_parse("sha512:", &d), -EPROTONOSUPPORT);
        assert_int_equal(digest_parse("blake3:abcDEF=_-", &d), -EPROTONOSUPPORT);
        assert_int_equal(digest_parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeT", &d),
                         -EPROTONOSUPPORT);
        assert_int_equal(digest_parse("sha512:a b", &d), -EINVAL);
        assert_int_equal(digest_parse("SHA512:ab", &d), -EINVAL);
        assert_int_equal(digest_parse("sha+:ab", &d), -EINVAL);
        assert_int_equal(digest_parse("+sha:ab", &d), -EINVAL);
        assert_memory_equal(&d, &orig, sizeof(d));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sha256_vectors),
                cmocka_unit_test(test_hex_roundtrip),
                cmocka_unit_test(test_hex_bad),
                cmocka_unit_test(test_parse),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
