/* Unit tests for net/route.c's query-string parser: what a route's arguments decode to, and
 * every way a query is refused (a bad escape, an empty key, a key twice, a key the route does
 * not take, a query too long), each with a reason. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net/route.h"

enum { K_REF, K_WAIT, K_PATH, K_OTHER, NKEYS };
static const char *const keys[NKEYS] = {"ref", "wait", "path", "other"};
#define ALL ((1u << K_REF) | (1u << K_WAIT) | (1u << K_PATH))

static struct route_query q; /* 16 KiB: not on cmocka's stack */

static int parse(const char *query, uint32_t allowed, char *reason, size_t len) {
        reason[0] = '\0';
        return route_query_parse(query, keys, NKEYS, allowed, &q, reason, len);
}

static void expect_ok(const char *query, const char *ref, const char *wait, const char *path) {
        char reason[256];
        int r = parse(query, ALL, reason, sizeof(reason));
        if (r != 0)
                fail_msg("route_query_parse(\"%s\") = %d (%s)", query ? query : "(null)", r,
                         reason);
        const char *want[NKEYS] = {ref, wait, path, NULL};
        for (int i = 0; i < NKEYS; i++) {
                if (!want[i])
                        assert_null(q.value[i]);
                else
                        assert_string_equal(q.value[i], want[i]);
        }
}

static void expect_err(const char *query, uint32_t allowed, int err, const char *in_reason) {
        char reason[256];
        int r = parse(query, allowed, reason, sizeof(reason));
        if (r != err)
                fail_msg("route_query_parse(\"%.80s\") = %d, want %d", query, r, err);
        assert_true(reason[0] != '\0');
        if (in_reason && !strstr(reason, in_reason))
                fail_msg("reason \"%s\" lacks \"%s\"", reason, in_reason);
}

static void test_none(void **state) {
        (void)state;
        expect_ok(NULL, NULL, NULL, NULL);
        expect_ok("", NULL, NULL, NULL);
        expect_ok("&", NULL, NULL, NULL);
        expect_ok("&&&", NULL, NULL, NULL);
}

static void test_values(void **state) {
        (void)state;
        expect_ok("ref=a", "a", NULL, NULL);
        expect_ok("wait=5&ref=r.example/x@sha256:00", "r.example/x@sha256:00", "5", NULL);
        expect_ok("ref=a&&wait=1&", "a", "1", NULL);
        expect_ok("ref", "", NULL, NULL);         /* a bare key: present, empty */
        expect_ok("ref=", "", NULL, NULL);        /* the same */
        expect_ok("path=a=b", NULL, NULL, "a=b"); /* the first '=' splits */
}

static void test_decoding(void **state) {
        (void)state;
        expect_ok("ref=a%2Fb%40c", "a/b@c", NULL, NULL);
        expect_ok("ref=%2f%3a%7E", "/:~", NULL, NULL); /* either case */
        expect_ok("ref=a+b", "a b", NULL, NULL);       /* a form's space, as MHD had it */
        expect_ok("ref=a%2Bb", "a+b", NULL, NULL);     /* a plus is escaped */
        expect_ok("ref=+", " ", NULL, NULL);
        expect_ok("ref=%26%3D", "&=", NULL, NULL); /* escaped separators are data */
        expect_ok("%72%65%66=x", "x", NULL, NULL); /* keys are decoded too: "ref" */
        expect_ok("path=%C3%A9t%C3%A9", NULL, NULL, "\xc3\xa9t\xc3\xa9");
        expect_ok("path=%FF", NULL, NULL, "\xff");
}

static void test_bad_escapes(void **state) {
        (void)state;
        expect_err("ref=%", ALL, -EINVAL, "escape");
        expect_err("ref=%2", ALL, -EINVAL, "escape");
        expect_err("ref=%2G", ALL, -EINVAL, "escape");
        expect_err("ref=%G2", ALL, -EINVAL, "escape");
        expect_err("ref=a%", ALL, -EINVAL, "\"ref\"");
        expect_err("ref=%00", ALL, -EINVAL, "escape"); /* values are C strings */
        expect_err("re%0=x", ALL, -EINVAL, "escape");
        expect_err("%00ref=x", ALL, -EINVAL, "escape");
}

static void test_keys(void **state) {
        (void)state;
        expect_err("=x", ALL, -EINVAL, "empty");
        expect_err("ref=a&=x", ALL, -EINVAL, "empty");
        expect_err("nope=1", ALL, -EINVAL, "\"nope\"");
        expect_err("Ref=1", ALL, -EINVAL, "\"Ref\"");           /* keys are case-sensitive */
        expect_err("re+f=1", ALL, -EINVAL, "\"re+f\"");         /* "re f": no such key */
        expect_err("ref=1&other=2", ALL, -EINVAL, "\"other\""); /* known, not allowed here */
        expect_err("wait=1", 1u << K_REF, -EINVAL, "\"wait\"");
        expect_err("ref=1", 0, -EINVAL, "\"ref\""); /* a route that takes nothing */
        /* A key longer than any buffer is unknown, shown cut short. */
        char longkey[300];
        memset(longkey, 'k', 200);
        memcpy(longkey + 200, "=1", 3);
        expect_err(longkey, ALL, -EINVAL, "takes no query argument");
        /* What a reason shows of a key is printable. */
        char reason[256];
        assert_int_equal(parse("a\x01\"\xff=1", ALL, reason, sizeof(reason)), -EINVAL);
        assert_non_null(strstr(reason, "\"a???\""));
}

static void test_duplicates(void **state) {
        (void)state;
        expect_err("ref=a&ref=b", ALL, -EINVAL, "twice");
        expect_err("ref=a&ref=a", ALL, -EINVAL, "twice");
        expect_err("ref&ref", ALL, -EINVAL, "twice");
        expect_err("ref=a&%72ef=b", ALL, -EINVAL, "twice"); /* the same key, spelt otherwise */
        expect_err("wait=1&ref=a&wait=1", ALL, -EINVAL, "\"wait\"");
}

static void test_bounds(void **state) {
        (void)state;
        static char big[ROUTE_QUERY_MAX + 8];
        /* The longest query taken: ROUTE_QUERY_MAX - 1 bytes, one value of all of it. */
        memcpy(big, "path=", 5);
        memset(big + 5, 'x', ROUTE_QUERY_MAX - 1 - 5);
        big[ROUTE_QUERY_MAX - 1] = '\0';
        char reason[128];
        assert_int_equal(parse(big, ALL, reason, sizeof(reason)), 0);
        assert_int_equal(strlen(q.value[K_PATH]), ROUTE_QUERY_MAX - 1 - 5);
        /* Every allowed key with the longest values it can: fits too. */
        memset(big, 0, sizeof(big));
        int n = snprintf(big, sizeof(big), "ref=%%41&wait=&path=");
        memset(big + n, 'y', ROUTE_QUERY_MAX - 1 - (size_t)n);
        assert_int_equal(parse(big, ALL, reason, sizeof(reason)), 0);
        assert_string_equal(q.value[K_REF], "A");
        assert_string_equal(q.value[K_WAIT], "");
        /* One byte more is refused, before anything is decoded. */
        memset(big, 'x', ROUTE_QUERY_MAX);
        memcpy(big, "path=", 5);
        big[ROUTE_QUERY_MAX] = '\0';
        expect_err(big, ALL, -ENAMETOOLONG, "too long");
        /* A key table larger than a uint32_t's bits is the caller's bug. */
        static const char *many[ROUTE_QUERY_KEYS_MAX + 1];
        for (size_t i = 0; i < ROUTE_QUERY_KEYS_MAX + 1; i++)
                many[i] = "k";
        assert_int_equal(route_query_parse("", many, ROUTE_QUERY_KEYS_MAX + 1, 0, &q, reason,
                                           sizeof(reason)),
                         -EINVAL);
}

static void test_tiny_reason(void **state) {
        (void)state;
        /* Reasons are cut to the buffer, NUL-terminated (ASan checks the bounds). */
        for (size_t len = 1; len <= 4; len++) {
                char *reason = malloc(len);
                assert_non_null(reason);
                assert_int_equal(parse("nope=1", ALL, reason, len), -EINVAL);
                assert_non_null(memchr(reason, '\0', len));
                free(reason);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_none),     cmocka_unit_test(test_values),
                cmocka_unit_test(test_decoding), cmocka_unit_test(test_bad_escapes),
                cmocka_unit_test(test_keys),     cmocka_unit_test(test_duplicates),
                cmocka_unit_test(test_bounds),   cmocka_unit_test(test_tiny_reason),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
