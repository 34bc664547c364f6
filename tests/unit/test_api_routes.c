/* Unit tests for net/api_routes.c: the control API's table as the daemon routes it and as
 * blobctl builds from it — the layer routes and their arguments, what is refused and in which
 * order, and requests that blobctl cannot build. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "net/api_routes.h"

#define HEX "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define REF "r.example/repo@sha256:" HEX

static struct route_query args;
static char reason[256];

static int parse(const char *method, const char *path, const char *query, struct api_request *ret) {
        reason[0] = '\0';
        return api_parse_request(method, path, query, &args, ret, reason, sizeof(reason));
}

static void expect_err(const char *method, const char *path, const char *query, int err,
                       const char *in_reason) {
        struct api_request q;
        int r = parse(method, path, query, &q);
        if (r != err)
                fail_msg("%s %s ? %s = %d (%s), want %d", method, path, query ? query : "", r,
                         reason, err);
        if (!strstr(reason, in_reason))
                fail_msg("reason \"%s\" lacks \"%s\"", reason, in_reason);
}

static void test_layer_routes(void **state) {
        (void)state;
        struct api_request q;
        assert_int_equal(parse("GET", "/v1/layers", NULL, &q), 0);
        assert_int_equal(q.route, API_LAYERS);
        assert_int_equal(parse("POST", "/v1/layers",
                               "ref=r.example%2Frepo%40sha256%3A" HEX "&wait=60&media_type=a%2Bb",
                               &q),
                         0);
        assert_int_equal(q.route, API_LAYER_ADD);
        assert_string_equal(q.arg[API_ARG_REF], REF);
        assert_string_equal(q.arg[API_ARG_WAIT], "60");
        assert_string_equal(q.arg[API_ARG_MEDIA_TYPE], "a+b");
        assert_null(q.arg[API_ARG_DIFF_ID]);
        assert_null(q.arg[API_ARG_PATH]);
        assert_int_equal(parse("GET", "/v1/layers/sha256:" HEX, NULL, &q), 0);
        assert_int_equal(q.route, API_LAYER);
        struct digest want;
        assert_int_equal(digest_from_hex(HEX, DIGEST_HEX_LEN, &want), 0);
        assert_true(digest_equal(&q.digest, &want));
        assert_int_equal(parse("GET", "/v1/layers/sha256:" HEX "/files", "path=%2Fetc", &q), 0);
        assert_int_equal(q.route, API_LAYER_FILES);
        assert_string_equal(q.arg[API_ARG_PATH], "/etc");
        assert_int_equal(parse("GET", "/v1/layers/sha256:" HEX "/files", NULL, &q), 0);
        assert_null(q.arg[API_ARG_PATH]);
}

static void test_refused(void **state) {
        (void)state;
        const char *files = "/v1/layers/sha256:" HEX "/files";
        /* In order: the path, the digest, the method, the action, the query, the required. */
        expect_err("GET", "/v1/layers/sha256:" HEX "/nope", "x=%", -ENOENT, "no such endpoint");
        expect_err("POST", "/v1/layers/sha256:zz/files", "x=%", -EINVAL, "malformed digest");
        expect_err("POST", files, "x=%", -EOPNOTSUPP, "method not allowed");
        expect_err("POST", "/v1/blobs/sha256:" HEX "/frob", "x=%", -ENOENT, "no such action");
        expect_err("GET", files, "path=%", -EINVAL, "escape");
        expect_err("POST", "/v1/layers", "wait=1", -EINVAL, "missing ref");
        /* Keys: one the route does not take, one another route takes, one given twice. */
        expect_err("GET", files, "nope=1", -EINVAL, "\"nope\"");
        expect_err("GET", files, "ref=" HEX, -EINVAL, "\"ref\"");
        expect_err("POST", "/v1/blobs", "ref=a&wait=1", -EINVAL, "\"wait\"");
        expect_err("GET", "/v1/stat", "ref=a", -EINVAL, "\"ref\"");
        expect_err("POST", "/v1/layers", "ref=a&ref=b", -EINVAL, "twice");
        expect_err("GET", files, "path=a&path=a", -EINVAL, "twice");
        /* A required argument present but empty is the handler's to judge. */
        struct api_request q;
        assert_int_equal(parse("POST", "/v1/layers", "ref=", &q), 0);
        assert_string_equal(q.arg[API_ARG_REF], "");
}

static void test_untouched_on_failure(void **state) {
        (void)state;
        struct api_request q, orig;
        memset(&orig, 0x5a, sizeof(orig));
        q = orig;
        assert_int_equal(parse("POST", "/v1/layers", "ref=a&ref=b", &q), -EINVAL);
        assert_memory_equal(&q, &orig, sizeof(q));
}

static void test_build(void **state) {
        (void)state;
        char path[512];
        const char *m;
        struct api_request q = {.route = API_LAYER_ADD};
        q.arg[API_ARG_REF] = REF;
        q.arg[API_ARG_WAIT] = "600";
        q.arg[API_ARG_DIFF_ID] = "sha256:" HEX;
        assert_int_equal(api_build_request(&q, &m, path, sizeof(path)), 0);
        assert_string_equal(m, "POST");
        /* In the table's argument order, every reserved byte escaped. */
        assert_string_equal(path, "/v1/layers?ref=r.example%2Frepo%40sha256%3A" HEX
                                  "&diff_id=sha256%3A" HEX "&wait=600");
        struct api_request back;
        char *query = strchr(path, '?');
        *query++ = '\0';
        assert_int_equal(parse(m, path, query, &back), 0);
        assert_int_equal(back.route, API_LAYER_ADD);
        assert_string_equal(back.arg[API_ARG_REF], REF);
        assert_string_equal(back.arg[API_ARG_DIFF_ID], "sha256:" HEX);
        assert_string_equal(back.arg[API_ARG_WAIT], "600");

        struct api_request ls = {.route = API_LAYER_FILES};
        assert_int_equal(digest_from_hex(HEX, DIGEST_HEX_LEN, &ls.digest), 0);
        ls.arg[API_ARG_PATH] = "etc/a b&c";
        assert_int_equal(api_build_request(&ls, &m, path, sizeof(path)), 0);
        assert_string_equal(m, "GET");
        assert_string_equal(path, "/v1/layers/sha256:" HEX "/files?path=etc%2Fa%20b%26c");
}

static void test_build_refused(void **state) {
        (void)state;
        char path[512];
        const char *m;
        /* A required argument missing; one the route does not take: blobctl's bug, not sent. */
        struct api_request q = {.route = API_LAYER_ADD};
        assert_int_equal(api_build_request(&q, &m, path, sizeof(path)), -EINVAL);
        struct api_request ls = {.route = API_LAYER_FILES};
        ls.arg[API_ARG_REF] = REF;
        assert_int_equal(api_build_request(&ls, &m, path, sizeof(path)), -EINVAL);
        struct api_request st = {.route = API_STAT};
        st.arg[API_ARG_WAIT] = "1";
        assert_int_equal(api_build_request(&st, &m, path, sizeof(path)), -EINVAL);
        /* Too long for the buffer, or for the daemon. */
        q.arg[API_ARG_REF] = REF;
        assert_int_equal(api_build_request(&q, &m, path, 20), -ENAMETOOLONG);
        static char big[ROUTE_QUERY_MAX], out[ROUTE_QUERY_MAX * 4];
        memset(big, 'a', sizeof(big) - 1);
        ls.arg[API_ARG_REF] = NULL;
        ls.arg[API_ARG_PATH] = big;
        assert_int_equal(api_build_request(&ls, &m, out, sizeof(out)), -ENAMETOOLONG);
        big[ROUTE_QUERY_MAX - 1 - sizeof("path=")] = '\0'; /* the longest the daemon takes */
        assert_int_equal(api_build_request(&ls, &m, out, sizeof(out)), 0);
        char *query = strchr(out, '?') + 1;
        assert_int_equal(strlen(query), ROUTE_QUERY_MAX - 2);
        struct api_request back;
        query[-1] = '\0';
        assert_int_equal(parse("GET", out, query, &back), 0);
        assert_int_equal(strlen(back.arg[API_ARG_PATH]), strlen(big));
}

static void test_table(void **state) {
        (void)state;
        /* Every row's arguments are named; required and optional do not overlap. */
        for (unsigned i = 0; i < API_N_ROUTES; i++) {
                const struct api_route_def *d = &api_routes[i];
                assert_int_equal(d->required & d->optional, 0);
                assert_int_equal((d->required | d->optional) >> API_N_ARGS, 0);
                assert_non_null(d->handler);
        }
        for (unsigned i = 0; i < API_N_ARGS; i++)
                assert_true(api_arg_keys[i][0] != '\0');
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_layer_routes),         cmocka_unit_test(test_refused),
                cmocka_unit_test(test_untouched_on_failure), cmocka_unit_test(test_build),
                cmocka_unit_test(test_build_refused),        cmocka_unit_test(test_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
