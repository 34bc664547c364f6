/* Unit tests for registry/auth.c: WWW-Authenticate challenges as real registries send them,
 * docker config.json lookups, token endpoint answers, and the hostile variants of each. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "registry/auth.h"

/* --- challenges ------------------------------------------------------------------------- */

static void test_challenge_bearer(void **state) {
        struct auth_challenge c;
        (void)state;

        /* Docker Hub, verbatim. */
        assert_int_equal(auth_parse_challenge("Bearer realm=\"https://auth.docker.io/token\","
                                              "service=\"registry.docker.io\","
                                              "scope=\"repository:library/busybox:pull\"",
                                              &c),
                         0);
        assert_int_equal(c.scheme, AUTH_BEARER);
        assert_string_equal(c.realm, "https://auth.docker.io/token");
        assert_string_equal(c.service, "registry.docker.io");
        assert_string_equal(c.scope, "repository:library/busybox:pull");

        /* Case-insensitive scheme and names, spaces around commas and '=', unquoted values,
         * unknown parameters ignored, scope absent. */
        assert_int_equal(auth_parse_challenge("  bEARER   Realm = http://127.0.0.1:5000/token ,"
                                              "  error=\"invalid_token\",SERVICE=reg  ",
                                              &c),
                         0);
        assert_int_equal(c.scheme, AUTH_BEARER);
        assert_string_equal(c.realm, "http://127.0.0.1:5000/token");
        assert_string_equal(c.service, "reg");
        assert_string_equal(c.scope, "");

        /* Escapes inside quoted strings; commas and spaces inside quotes are data. */
        assert_int_equal(auth_parse_challenge("Bearer realm=\"https://a/t?x=1,y=2\","
                                              "scope=\"repo:a \\\"b\\\\c\\d:pull,push\"",
                                              &c),
                         0);
        assert_string_equal(c.realm, "https://a/t?x=1,y=2");
        assert_string_equal(c.scope, "repo:a \"b\\cd:pull,push");

        /* A repeated parameter keeps its first value; empty list elements are fine. */
        assert_int_equal(auth_parse_challenge("Bearer realm=\"https://one\",,"
                                              "realm=\"https://two\",",
                                              &c),
                         0);
        assert_string_equal(c.realm, "https://one");
        assert_int_equal(auth_parse_challenge("Bearer realm=\"https://x\",service=\"\"", &c), 0);
        assert_string_equal(c.service, "");
}

static void test_challenge_basic_and_multi(void **state) {
        struct auth_challenge c;
        (void)state;

        assert_int_equal(auth_parse_challenge("Basic realm=\"Registry Realm\"", &c), 0);
        assert_int_equal(c.scheme, AUTH_BASIC);
        assert_string_equal(c.realm, "Registry Realm");
        assert_int_equal(auth_parse_challenge("basic", &c), 0); /* realm optional for Basic */
        assert_int_equal(c.scheme, AUTH_BASIC);
        assert_string_equal(c.realm, "");

        /* Several challenges in one value: Bearer is preferred wherever it sits. */
        assert_int_equal(auth_parse_challenge("Basic realm=\"r\", Bearer realm=\"https://t\","
                                              "service=\"s\"",
                                              &c),
                         0);
        assert_int_equal(c.scheme, AUTH_BEARER);
        assert_string_equal(c.realm, "https://t");
        assert_string_equal(c.service, "s");
        assert_int_equal(auth_parse_challenge("Negotiate, Basic realm=\"r\", Digest realm=\"d\", "
                                              "nonce=\"n\"",
                                              &c),
                         0);
        assert_int_equal(c.scheme, AUTH_BASIC);
        assert_string_equal(c.realm, "r");
}

static void test_challenge_rejects(void **state) {
        static const char *const bad[] = {
                "",
                "   ",
                "Negotiate",
                "Digest realm=\"x\", nonce=\"y\"",
                "Bearer",                              /* no realm */
                "Bearer service=\"s\"",                /* no realm */
                "Bearer realm=\"file:///etc/passwd\"", /* not http(s) */
                "Bearer realm=\"ftp://x/token\"",
                "Bearer realm=\"https://x",   /* unterminated */
                "Bearer realm=\"https://x\\", /* dangling escape */
                "Bearer realm=",              /* empty bare value */
                "Bearer realm=,service=x",
                "Bearer realm=\"https://x\" service=\"s\"", /* missing comma */
                "Bearer realm=\"https://x\"junk",
                "Bearer realm=\"https://x\nInjected: 1\"", /* control character */
                "Bearer realm=https://x\r\n",
                "Bearer =\"https://x\"",
                "Bearer\"realm\"",
                "@Bearer realm=\"https://x\"",
                "Bearer realm=\"https://x\",=",
        };
        struct auth_challenge c, orig;
        (void)state;

        memset(&orig, 0x5a, sizeof(orig));
        c = orig;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int r = auth_parse_challenge(bad[i], &c);
                if (r != -EINVAL)
                        fail_msg("auth_parse_challenge(\"%s\") = %d; want -EINVAL", bad[i], r);
        }
        assert_int_equal(auth_parse_challenge(NULL, &c), -EINVAL);
        assert_memory_equal(&c, &orig, sizeof(c));
}

static void test_challenge_too_long(void **state) {
        char buf[2048], val[600];
        struct auth_challenge c, orig;
        (void)state;

        memset(&orig, 0x5a, sizeof(orig));
        c = orig;
        memset(val, 'a', sizeof(val) - 1);
        val[sizeof(val) - 1] = '\0';
        snprintf(buf, sizeof(buf), "Bearer realm=\"https://x/%s\"", val);
        assert_int_equal(auth_parse_challenge(buf, &c), -ENAMETOOLONG);
        snprintf(buf, sizeof(buf), "Bearer realm=https://x,service=%s", val);
        assert_int_equal(auth_parse_challenge(buf, &c), -ENAMETOOLONG);
        assert_memory_equal(&c, &orig, sizeof(c));

        /* 511 characters fit the 512-byte realm exactly; unknown long parameters are fine. */
        val[511 - 10] = '\0';
        snprintf(buf, sizeof(buf), "Bearer realm=\"https://x/%s\",other=\"%s%s\"", val, val, val);
        assert_int_equal(auth_parse_challenge(buf, &c), 0);
        assert_int_equal(strlen(c.realm), 511);
}

/* --- credentials ------------------------------------------------------------------------ */

/* "user:pass" = dXNlcjpwYXNz, "u:p" = dTpw (no padding), "ab:c" = YWI6Yw== (two '='),
 * "abc:d" = YWJjOmQ= (one '='). */
static const char CONFIG[] =
        "{\n"
        "  \"auths\": {\n"
        "    \"registry.example.com\": { \"auth\": \"dXNlcjpwYXNz\" },\n"
        "    \"https://index.docker.io/v1/\": { \"auth\": \"dTpw\" },\n"
        "    \"http://insecure.local:5000/\": { \"auth\": \"YWI6Yw==\" },\n"
        "    \"https://padded.example\": { \"auth\": \"YWJjOmQ=\" },\n"
        "    \"fields.example\": { \"username\": \"alice\", \"password\": \"s3:cr:et\" },\n"
        "    \"helper.example\": {},\n"
        "    \"https://helper.example\": { \"auth\": \"dTpw\" },\n"
        "    \"token-only.example\": { \"identitytoken\": \"xyz\" }\n"
        "  },\n"
        "  \"credsStore\": \"desktop\"\n"
        "}\n";

static void expect_creds(const char *json, const char *registry, const char *want) {
        char out[128];
        int r;

        memset(out, 0, sizeof(out));
        r = auth_find_credentials(json, registry, out, sizeof(out));
        if (r != 0)
                fail_msg("auth_find_credentials(%s) = %d", registry, r);
        assert_string_equal(out, want);
}

static void expect_creds_err(const char *json, const char *registry, int err) {
        char out[128];
        int r;

        memcpy(out, "untouched", sizeof("untouched"));
        r = auth_find_credentials(json, registry, out, sizeof(out));
        if (r != err)
                fail_msg("auth_find_credentials(%s) = %d; want %d", registry, r, err);
        assert_string_equal(out, "untouched");
}

static void test_credentials(void **state) {
        (void)state;
        expect_creds(CONFIG, "registry.example.com", "user:pass");
        expect_creds(CONFIG, "REGISTRY.example.com", "user:pass"); /* host names fold */
        expect_creds(CONFIG, "index.docker.io", "u:p");
        expect_creds(CONFIG, "registry-1.docker.io", "u:p"); /* Docker Hub's aliases */
        expect_creds(CONFIG, "docker.io", "u:p");
        expect_creds(CONFIG, "insecure.local:5000", "ab:c");
        expect_creds(CONFIG, "padded.example", "abc:d");
        expect_creds(CONFIG, "fields.example", "alice:s3:cr:et");
        /* An empty entry (the secret is in a credential helper) does not hide another
         * spelling of the same registry that has one. */
        expect_creds(CONFIG, "helper.example", "u:p");

        expect_creds_err(CONFIG, "other.example", -ENOENT);
        expect_creds_err(CONFIG, "insecure.local", -ENOENT); /* the port is part of it */
        expect_creds_err(CONFIG, "registry.example.com:443", -ENOENT);
        expect_creds_err(CONFIG, "token-only.example", -ENOENT);
        expect_creds_err("{}", "r.io", -ENOENT);
        expect_creds_err("{\"credsStore\":\"pass\"}", "r.io", -ENOENT);
        expect_creds_err("{\"auths\":{}}", "r.io", -ENOENT);
}

static void test_credentials_base64_padding(void **state) {
        /* The decoded length is what padding says, not 3 bytes per 4 characters: no stray
         * NULs end up in the password. "a:b" = YTpi, "a:bc" = YTpiYw==, "a:bcd" = YTpiY2Q=. */
        (void)state;
        expect_creds("{\"auths\":{\"r.io\":{\"auth\":\"YTpi\"}}}", "r.io", "a:b");
        expect_creds("{\"auths\":{\"r.io\":{\"auth\":\"YTpiYw==\"}}}", "r.io", "a:bc");
        expect_creds("{\"auths\":{\"r.io\":{\"auth\":\"YTpiY2Q=\"}}}", "r.io", "a:bcd");
        {
                char out[16];
                assert_int_equal(
                        auth_find_credentials("{\"auths\":{\"r.io\":{\"auth\":\"YTpiYw==\"}}}",
                                              "r.io", out, sizeof(out)),
                        0);
                assert_int_equal(strlen(out), 4);
                /* Exactly fits: 4 characters and the NUL; one byte less does not. */
                assert_int_equal(
                        auth_find_credentials("{\"auths\":{\"r.io\":{\"auth\":\"YTpiYw==\"}}}",
                                              "r.io", out, 5),
                        0);
                assert_int_equal(
                        auth_find_credentials("{\"auths\":{\"r.io\":{\"auth\":\"YTpiYw==\"}}}",
                                              "r.io", out, 4),
                        -ENAMETOOLONG);
        }
}

static void test_credentials_malformed(void **state) {
        (void)state;
        expect_creds_err("", "r.io", -EINVAL);
        expect_creds_err("{", "r.io", -EINVAL);
        expect_creds_err("[]", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":[]}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":\"x\"}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":5}}}", "r.io", -EINVAL);
        /* Base64 that is not, or does not hold "user:pass". */
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"!!!!\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"YTpi=\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"YTp\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"YT=i\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"====\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\" YTpi\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"dXNlcg==\"}}}", "r.io", -EINVAL);
        /* "a\0:b" = YQA6Yg== : an embedded NUL. */
        expect_creds_err("{\"auths\":{\"r.io\":{\"auth\":\"YQA6Yg==\"}}}", "r.io", -EINVAL);
        /* Fields: a user name with ':' cannot be sent; a user without a password is broken. */
        expect_creds_err("{\"auths\":{\"r.io\":{\"username\":\"a:b\",\"password\":\"c\"}}}", "r.io",
                         -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"username\":\"a\"}}}", "r.io", -EINVAL);
        expect_creds_err("{\"auths\":{\"r.io\":{\"username\":1,\"password\":\"c\"}}}", "r.io",
                         -EINVAL);
        expect_creds_err(NULL, "r.io", -EINVAL);
        expect_creds_err("{}", NULL, -EINVAL);
        expect_creds_err("{}", "", -EINVAL);
}

static void test_credentials_too_long(void **state) {
        char out[8];
        (void)state;

        memcpy(out, "xxxxxxx", 8);
        assert_int_equal(auth_find_credentials(CONFIG, "registry.example.com", out, sizeof(out)),
                         -ENAMETOOLONG);
        assert_int_equal(auth_find_credentials(CONFIG, "fields.example", out, sizeof(out)),
                         -ENAMETOOLONG);
        assert_string_equal(out, "xxxxxxx");
}

/* --- token responses -------------------------------------------------------------------- */

static void test_token(void **state) {
        char out[128];
        unsigned exp = 0;
        (void)state;

        assert_int_equal(auth_parse_token_response("{\"token\":\"abc.def-ghi_\",\"expires_in\":300,"
                                                   "\"issued_at\":\"2024-01-01T00:00:00Z\"}",
                                                   out, sizeof(out), &exp),
                         0);
        assert_string_equal(out, "abc.def-ghi_");
        assert_int_equal(exp, 300);

        /* OAuth2 spelling; expires_in absent means 60. */
        assert_int_equal(
                auth_parse_token_response("{\"access_token\":\"tok\"}", out, sizeof(out), &exp), 0);
        assert_string_equal(out, "tok");
        assert_int_equal(exp, 60);

        /* Both: "token" wins; an empty "token" falls back. */
        assert_int_equal(auth_parse_token_response("{\"token\":\"a\",\"access_token\":\"b\"}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_string_equal(out, "a");
        assert_int_equal(auth_parse_token_response("{\"token\":\"\",\"access_token\":\"b\"}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_string_equal(out, "b");

        /* Lifetimes below the spec's minimum, or malformed, are 60; huge ones clamp. */
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":10}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 60);
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":-5}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 60);
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":\"900\"}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 60);
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":900.7}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 900);
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":99999999999}",
                                                   out, sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 4294967295u);
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\",\"expires_in\":1e300}", out,
                                                   sizeof(out), &exp),
                         0);
        assert_int_equal(exp, 4294967295u);
        /* RET_EXPIRES_IN may be NULL. */
        assert_int_equal(auth_parse_token_response("{\"token\":\"t\"}", out, sizeof(out), NULL), 0);
}

static void test_token_rejects(void **state) {
        static const char *const bad[] = {
                "",
                "null",
                "[]",
                "\"token\"",
                "{}",
                "{\"token\":\"\"}",
                "{\"token\":5}",
                "{\"token\":null,\"access_token\":\"\"}",
                "{\"token\":\"a b\"}",                  /* space */
                "{\"token\":\"a\\r\\nX-Injected: 1\"}", /* header injection */
                "{\"token\":\"a\\u0000b\"}",
                "{\"token\":\"caf\\u00e9\"}", /* non-ASCII */
                "{\"token\":\"t\"",
                "{\"token\":\"t\"} trailing",
        };
        char out[64];
        unsigned exp = 12345;
        (void)state;

        memcpy(out, "untouched", sizeof("untouched"));
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int r = auth_parse_token_response(bad[i], out, sizeof(out), &exp);
                if (r != -EINVAL)
                        fail_msg("auth_parse_token_response(%s) = %d; want -EINVAL", bad[i], r);
        }
        assert_int_equal(auth_parse_token_response(NULL, out, sizeof(out), &exp), -EINVAL);
        assert_int_equal(auth_parse_token_response("{\"token\":\"0123456789\"}", out, 10, &exp),
                         -ENAMETOOLONG);
        assert_string_equal(out, "untouched");
        assert_int_equal(exp, 12345);
        assert_int_equal(auth_parse_token_response("{\"token\":\"012345678\"}", out, 10, &exp), 0);
        assert_string_equal(out, "012345678");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_challenge_bearer),
                cmocka_unit_test(test_challenge_basic_and_multi),
                cmocka_unit_test(test_challenge_rejects),
                cmocka_unit_test(test_challenge_too_long),
                cmocka_unit_test(test_credentials),
                cmocka_unit_test(test_credentials_base64_padding),
                cmocka_unit_test(test_credentials_malformed),
                cmocka_unit_test(test_credentials_too_long),
                cmocka_unit_test(test_token),
                cmocka_unit_test(test_token_rejects),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
