/* Unit tests for peer/ref.c: the reference forms operators type, and every way to get one
 * wrong. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "util/ref.h"

#define HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define HEX_UPPER "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
#define HEX_BAD "za7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static void expect_ref(const char *s, const char *reg, const char *repo) {
        struct blob_ref ref;
        struct digest want;
        int r;

        memset(&ref, 0, sizeof(ref));
        r = ref_parse(s, &ref);
        if (r != 0)
                fail_msg("ref_parse(\"%s\") = %d", s, r);
        assert_string_equal(ref.registry, reg);
        assert_string_equal(ref.repository, repo);
        assert_int_equal(digest_from_hex(HEX, DIGEST_HEX_LEN, &want), 0);
        assert_true(digest_equal(&ref.digest, &want));
}

static void expect_err(const char *s, int err) {
        struct blob_ref ref, orig;
        int r;

        memset(&orig, 0x5a, sizeof(orig));
        ref = orig;
        r = ref_parse(s, &ref);
        if (r != err)
                fail_msg("ref_parse(\"%s\") = %d; want %d", s, r, err);
        assert_memory_equal(&ref, &orig, sizeof(ref)); /* nothing written */
}

static void test_parse_ok(void **state) {
        (void)state;
        expect_ref("127.0.0.1:5000/library/busybox@sha256:" HEX, "127.0.0.1:5000",
                   "library/busybox");
        expect_ref("registry.example.com/a/b/c@sha256:" HEX, "registry.example.com", "a/b/c");
        expect_ref("[::1]:5000/x@sha256:" HEX, "[::1]:5000", "x");
        expect_ref("[fe80::1%eth0]:5000/x@sha256:" HEX, "[fe80::1%eth0]:5000", "x");
        expect_ref("[::1]/x@sha256:" HEX, "[::1]", "x");
        expect_ref("localhost/x@sha256:" HEX, "localhost", "x");
        expect_ref("localhost:5000/x@sha256:" HEX, "localhost:5000", "x");
        expect_ref("registry:5000/x@sha256:" HEX, "registry:5000", "x");
        expect_ref("Registry.Example.COM/x@sha256:" HEX, "Registry.Example.COM", "x");
        expect_ref("ghcr.io/my-org/my_app.v2/sub__dir/a--b@sha256:" HEX, "ghcr.io",
                   "my-org/my_app.v2/sub__dir/a--b");
        expect_ref("registry-1.docker.io/library/ubuntu@sha256:" HEX, "registry-1.docker.io",
                   "library/ubuntu");
}

static void test_parse_rejects(void **state) {
        (void)state;
        /* No registry component. */
        expect_err("busybox@sha256:" HEX, -EINVAL);
        expect_err("library/busybox@sha256:" HEX, -EINVAL);
        /* Uppercase repository. */
        expect_err("r.io/Library/busybox@sha256:" HEX, -EINVAL);
        expect_err("r.io/library/BusyBox@sha256:" HEX, -EINVAL);
        /* Empty components and "//". */
        expect_err("/library/busybox@sha256:" HEX, -EINVAL);
        expect_err("r.io/@sha256:" HEX, -EINVAL);
        expect_err("r.io//busybox@sha256:" HEX, -EINVAL);
        expect_err("r.io/a//b@sha256:" HEX, -EINVAL);
        expect_err("r.io/a/@sha256:" HEX, -EINVAL);
        expect_err("r.io@sha256:" HEX, -EINVAL);
        /* Missing or malformed digest. */
        expect_err("r.io/busybox", -EINVAL);
        expect_err("r.io/busybox@", -EINVAL);
        expect_err("r.io/busybox:latest", -EINVAL);
        expect_err("r.io/busybox:latest@sha256:" HEX, -EINVAL);
        expect_err("r.io/busybox@sha256:", -EINVAL);
        expect_err("r.io/busybox@sha256:" HEX "0", -EINVAL);
        expect_err("r.io/busybox@sha256:" HEX_UPPER, -EINVAL);
        expect_err("r.io/busybox@sha256:" HEX_BAD, -EINVAL);
        expect_err("r.io/busybox@" HEX, -EINVAL);
        expect_err("r.io/busybox@sha256:" HEX "@sha256:" HEX, -EINVAL);
        /* Unsupported algorithm: a distinct error. */
        expect_err("r.io/busybox@sha512:" HEX HEX, -EPROTONOSUPPORT);
        expect_err("r.io/busybox@sha512:", -EPROTONOSUPPORT);
        /* Repository grammar (OCI): separators between alnums only; no "." or "..". */
        expect_err("r.io/../etc@sha256:" HEX, -EINVAL);
        expect_err("r.io/a/./b@sha256:" HEX, -EINVAL);
        expect_err("r.io/-a@sha256:" HEX, -EINVAL);
        expect_err("r.io/a-@sha256:" HEX, -EINVAL);
        expect_err("r.io/a..b@sha256:" HEX, -EINVAL);
        expect_err("r.io/a___b@sha256:" HEX, -EINVAL);
        expect_err("r.io/a._b@sha256:" HEX, -EINVAL);
        expect_err("r.io/a b@sha256:" HEX, -EINVAL);
        expect_err("r.io/a%2fb@sha256:" HEX, -EINVAL);
        /* Registry grammar. */
        expect_err("r.io:/x@sha256:" HEX, -EINVAL);
        expect_err("r.io:0/x@sha256:" HEX, -EINVAL);
        expect_err("r.io:65536/x@sha256:" HEX, -EINVAL);
        expect_err(":5000/x@sha256:" HEX, -EINVAL);
        expect_err("-r.io/x@sha256:" HEX, -EINVAL);
        expect_err("r..io/x@sha256:" HEX, -EINVAL);
        expect_err("r_x.io/x@sha256:" HEX, -EINVAL);
        expect_err("[::1/x@sha256:" HEX, -EINVAL);
        expect_err("[zz]:5000/x@sha256:" HEX, -EINVAL);
        expect_err("::1:5000/x@sha256:" HEX, -EINVAL);
        expect_err("user@r.io/x@sha256:" HEX, -EINVAL);
        expect_err("https://r.io/x@sha256:" HEX, -EINVAL);
        expect_err("", -EINVAL);
        expect_err(NULL, -EINVAL);
}

static void test_parse_too_long(void **state) {
        char buf[2048], comp[300];
        (void)state;

        /* Registry of 256 characters: one more than fits. */
        memset(comp, 'a', 252);
        memcpy(comp + 252, ".com", 5);
        snprintf(buf, sizeof(buf), "%s/x@sha256:%s", comp, HEX);
        expect_err(buf, -ENAMETOOLONG);
        /* 255 fits. */
        comp[251] = '.';
        memcpy(comp + 252, "com", 4);
        snprintf(buf, sizeof(buf), "%s/x@sha256:%s", comp, HEX);
        assert_int_equal(strlen(comp), REF_REGISTRY_MAX - 1);
        {
                struct blob_ref ref;
                assert_int_equal(ref_parse(buf, &ref), 0);
                assert_string_equal(ref.registry, comp);
        }
        /* Repository of 256 characters. */
        memset(comp, 'b', 256);
        comp[256] = '\0';
        snprintf(buf, sizeof(buf), "r.io/%s@sha256:%s", comp, HEX);
        expect_err(buf, -ENAMETOOLONG);
        comp[255] = '\0';
        snprintf(buf, sizeof(buf), "r.io/%s@sha256:%s", comp, HEX);
        expect_ref(buf, "r.io", comp);
        /* Far too long, whatever it holds. */
        memset(buf, 'a', sizeof(buf) - 1);
        buf[sizeof(buf) - 1] = '\0';
        expect_err(buf, -ENAMETOOLONG);
}

static void test_parse_source(void **state) {
        struct blob_ref ref, orig;
        struct digest d;
        (void)state;

        assert_int_equal(digest_from_hex(HEX, DIGEST_HEX_LEN, &d), 0);
        memset(&ref, 0, sizeof(ref));
        ref.digest = d;
        assert_int_equal(ref_parse_source("127.0.0.1:5000/library/busybox", &ref), 0);
        assert_string_equal(ref.registry, "127.0.0.1:5000");
        assert_string_equal(ref.repository, "library/busybox");
        assert_true(digest_equal(&ref.digest, &d)); /* left alone */

        memset(&orig, 0x5a, sizeof(orig));
        ref = orig;
        assert_int_equal(ref_parse_source("busybox", &ref), -EINVAL);
        assert_int_equal(ref_parse_source("library/busybox", &ref), -EINVAL);
        assert_int_equal(ref_parse_source("r.io/busybox@sha256:" HEX, &ref), -EINVAL);
        assert_int_equal(ref_parse_source("r.io/", &ref), -EINVAL);
        assert_int_equal(ref_parse_source("r.io//a", &ref), -EINVAL);
        assert_int_equal(ref_parse_source("r.io/A", &ref), -EINVAL);
        assert_int_equal(ref_parse_source("", &ref), -EINVAL);
        assert_int_equal(ref_parse_source(NULL, &ref), -EINVAL);
        assert_memory_equal(&ref, &orig, sizeof(ref));
}

static void test_repository_valid(void **state) {
        char big[300];
        (void)state;

        assert_true(ref_repository_valid("busybox"));
        assert_true(ref_repository_valid("library/busybox"));
        assert_true(ref_repository_valid("a/b/c/d"));
        assert_true(ref_repository_valid("a.b_c__d-e---f/0"));
        assert_false(ref_repository_valid(""));
        assert_false(ref_repository_valid("/a"));
        assert_false(ref_repository_valid("a/"));
        assert_false(ref_repository_valid("a//b"));
        assert_false(ref_repository_valid("A"));
        assert_false(ref_repository_valid("a:b"));
        assert_false(ref_repository_valid("a@b"));
        assert_false(ref_repository_valid(".."));
        assert_false(ref_repository_valid("a/../b"));
        assert_false(ref_repository_valid("_a"));
        assert_false(ref_repository_valid(NULL));
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        assert_false(ref_repository_valid(big));
        big[REF_REPOSITORY_MAX - 1] = '\0';
        assert_true(ref_repository_valid(big));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_ok),         cmocka_unit_test(test_parse_rejects),
                cmocka_unit_test(test_parse_too_long),   cmocka_unit_test(test_parse_source),
                cmocka_unit_test(test_repository_valid),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
