/* Unit tests for util/parse.c: every accepted spelling, every rejection, and that nothing is
 * written to an out-parameter on failure. */
#include <errno.h>
#include <sys/socket.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/parse.h"

#define SENTINEL UINT64_C(0xdeadbeefcafef00d)

static void expect_size(const char *s, uint64_t want) {
        uint64_t v = SENTINEL;
        int r = parse_size(s, &v);
        if (r != 0 || v != want)
                fail_msg("parse_size(\"%s\") = %d, %llu; want 0, %llu", s, r, (unsigned long long)v,
                         (unsigned long long)want);
}

static void expect_size_err(const char *s, int err) {
        uint64_t v = SENTINEL;
        int r = parse_size(s, &v);
        if (r != err)
                fail_msg("parse_size(\"%s\") = %d; want %d", s, r, err);
        assert_true(v == SENTINEL);
}

static void test_size_ok(void **state) {
        (void)state;
        expect_size("0", 0);
        expect_size("4096", 4096);
        expect_size("512B", 512);
        expect_size("512K", 512u << 10);
        expect_size("512k", 512u << 10);
        expect_size("512M", UINT64_C(512) << 20);
        expect_size("10G", UINT64_C(10) << 30);
        expect_size("1T", UINT64_C(1) << 40);
        expect_size("1MiB", 1u << 20);
        expect_size("1MB", 1u << 20);
        expect_size("1Mi", 1u << 20);
        expect_size("2KiB", 2048);
        expect_size("3P", UINT64_C(3) << 50);
        expect_size("15E", UINT64_C(15) << 60);
        expect_size("18446744073709551615", UINT64_MAX);
        expect_size("007", 7);
}

static void test_size_bad(void **state) {
        (void)state;
        expect_size_err("", -EINVAL);
        expect_size_err("-1", -EINVAL);
        expect_size_err("+1", -EINVAL);
        expect_size_err(" 1", -EINVAL);
        expect_size_err("1 ", -EINVAL);
        expect_size_err("1 M", -EINVAL);
        expect_size_err("K", -EINVAL);
        expect_size_err("1X", -EINVAL);
        expect_size_err("1MiBs", -EINVAL);
        expect_size_err("1BB", -EINVAL);
        expect_size_err("1iB", -EINVAL);
        expect_size_err("1.5G", -EINVAL);
        expect_size_err("0x10", -EINVAL);
        expect_size_err("16E", -ERANGE);
        expect_size_err("18446744073709551616", -ERANGE);
        expect_size_err("99999999999999999999999", -ERANGE);
        expect_size_err("99999999999999999999999q", -EINVAL); /* junk beats overflow */
        expect_size_err("17179869184G", -ERANGE);
        expect_size_err(NULL, -EINVAL);
}

static void test_duration(void **state) {
        uint64_t v;
        (void)state;
        assert_int_equal(parse_duration_ms("250ms", &v), 0);
        assert_true(v == 250);
        assert_int_equal(parse_duration_ms("30s", &v), 0);
        assert_true(v == 30000);
        assert_int_equal(parse_duration_ms("30", &v), 0);
        assert_true(v == 30000);
        assert_int_equal(parse_duration_ms("5m", &v), 0);
        assert_true(v == 300000);
        assert_int_equal(parse_duration_ms("1h", &v), 0);
        assert_true(v == 3600000);
        assert_int_equal(parse_duration_ms("0", &v), 0);
        assert_true(v == 0);
        assert_int_equal(parse_duration_ms("18446744073709551615ms", &v), 0);
        assert_true(v == UINT64_MAX);

        v = SENTINEL;
        assert_int_equal(parse_duration_ms("", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("s", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("-5s", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("5S", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("5 s", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("5sec", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("5mss", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("1d", &v), -EINVAL);
        assert_int_equal(parse_duration_ms("18446744073709551615", &v), -ERANGE);
        assert_int_equal(parse_duration_ms("5124095576030432h", &v), -ERANGE);
        assert_int_equal(parse_duration_ms(NULL, &v), -EINVAL);
        assert_true(v == SENTINEL);
}

static void test_u64(void **state) {
        uint64_t v;
        (void)state;
        assert_int_equal(parse_u64("42", 0, 100, &v), 0);
        assert_true(v == 42);
        assert_int_equal(parse_u64("0", 0, 0, &v), 0);
        assert_true(v == 0);
        assert_int_equal(parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
        assert_true(v == UINT64_MAX);
        assert_int_equal(parse_u64("100", 1, 100, &v), 0);
        assert_true(v == 100);

        v = SENTINEL;
        assert_int_equal(parse_u64("101", 1, 100, &v), -ERANGE);
        assert_int_equal(parse_u64("0", 1, 100, &v), -ERANGE);
        assert_int_equal(parse_u64("18446744073709551616", 0, UINT64_MAX, &v), -ERANGE);
        assert_int_equal(parse_u64("", 0, 10, &v), -EINVAL);
        assert_int_equal(parse_u64("-1", 0, UINT64_MAX, &v), -EINVAL);
        assert_int_equal(parse_u64("+1", 0, 10, &v), -EINVAL);
        assert_int_equal(parse_u64(" 1", 0, 10, &v), -EINVAL);
        assert_int_equal(parse_u64("1k", 0, 10000, &v), -EINVAL);
        assert_int_equal(parse_u64("5", 10, 1, &v), -EINVAL);
        assert_int_equal(parse_u64(NULL, 0, 1, &v), -EINVAL);
        assert_true(v == SENTINEL);
}

static void test_bool(void **state) {
        static const char *const t[] = {"1", "true", "TRUE", "Yes", "on", "ON"};
        static const char *const f[] = {"0", "false", "False", "no", "NO", "off"};
        static const char *const bad[] = {"",      "2",   "y",    "n",     "tru",
                                          "truex", " on", "off ", "enable"};
        bool b;
        (void)state;
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
                b = false;
                assert_int_equal(parse_bool(t[i], &b), 0);
                assert_true(b);
        }
        for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
                b = true;
                assert_int_equal(parse_bool(f[i], &b), 0);
                assert_false(b);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                b = true;
                assert_int_equal(parse_bool(bad[i], &b), -EINVAL);
                assert_true(b);
        }
        assert_int_equal(parse_bool(NULL, &b), -EINVAL);
}

static void test_hostport_ok(void **state) {
        char host[64];
        uint16_t port = 0;
        (void)state;

        assert_int_equal(parse_hostport("localhost:5000", host, sizeof(host), &port), 0);
        assert_string_equal(host, "localhost");
        assert_int_equal(port, 5000);
        assert_int_equal(parse_hostport("10.0.0.1:1", host, sizeof(host), &port), 0);
        assert_string_equal(host, "10.0.0.1");
        assert_int_equal(port, 1);
        assert_int_equal(parse_hostport("p2p.kube-system.svc:65535", host, sizeof(host), &port), 0);
        assert_string_equal(host, "p2p.kube-system.svc");
        assert_int_equal(port, 65535);
        assert_int_equal(parse_hostport("[::1]:5001", host, sizeof(host), &port), 0);
        assert_string_equal(host, "::1");
        assert_int_equal(port, 5001);
        assert_int_equal(parse_hostport("[fe80::1%eth0]:80", host, sizeof(host), &port), 0);
        assert_string_equal(host, "fe80::1%eth0");
        assert_int_equal(parse_hostport("[::ffff:10.1.2.3]:80", host, sizeof(host), &port), 0);
        assert_string_equal(host, "::ffff:10.1.2.3");
        /* The listen default: every address. */
        assert_int_equal(parse_hostport(":5001", host, sizeof(host), &port), 0);
        assert_string_equal(host, "");
        assert_int_equal(port, 5001);
}

static void test_hostport_bad(void **state) {
        static const char *const bad[] = {
                "",
                "localhost",
                "localhost:",
                "localhost:0",
                "host:65536",
                "host:-1",
                "host:+80",
                "host:80x",
                "host: 80",
                "::1:80",
                "[::1]",
                "[::1]80",
                "[::1:80",
                "[]:80",
                "[1.2.3.4]:80",
                "[::1]:",
                "ho st:80",
                "host/x:80",
                "[fe80::1%]:80",
                "[::1%e/0]:80",
                "a:b:80",
                "host:99999999999999999999",
                "[:]:80",
                "[1::2::3]:80",
                "[::1%aaaaaaaaaaaaaaaaaaaa]:80",
                "[12345::1]:80",
        };
        char host[64];
        uint16_t port = 7;
        (void)state;

        memcpy(host, "untouched", sizeof("untouched"));
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int r = parse_hostport(bad[i], host, sizeof(host), &port);
                if (r != -EINVAL)
                        fail_msg("parse_hostport(\"%s\") = %d; want -EINVAL", bad[i], r);
        }
        assert_string_equal(host, "untouched");
        assert_int_equal(port, 7);
        assert_int_equal(parse_hostport(NULL, host, sizeof(host), &port), -EINVAL);
}

static void test_hostport_toolong(void **state) {
        char host[10];
        uint16_t port = 7;
        (void)state;

        memset(host, 'x', sizeof(host));
        assert_int_equal(parse_hostport("0123456789:80", host, sizeof(host), &port), -ENAMETOOLONG);
        assert_int_equal(parse_hostport("[::1]:80", host, 3, &port), -ENAMETOOLONG);
        assert_int_equal(parse_hostport("a:80", host, 0, &port), -ENAMETOOLONG);
        assert_int_equal(host[0], 'x');
        assert_int_equal(port, 7);
        /* Exactly fits: 9 characters and the NUL. */
        assert_int_equal(parse_hostport("012345678:80", host, sizeof(host), &port), 0);
        assert_string_equal(host, "012345678");
}

static void expect_fmt(uint64_t bytes, const char *want) {
        char buf[32];
        format_size(bytes, buf, sizeof(buf));
        if (strcmp(buf, want) != 0)
                fail_msg("format_size(%llu) = \"%s\"; want \"%s\"", (unsigned long long)bytes, buf,
                         want);
}

static void test_format_size(void **state) {
        char small[5];
        (void)state;
        expect_fmt(0, "0 B");
        expect_fmt(512, "512 B");
        expect_fmt(1023, "1023 B");
        expect_fmt(1024, "1.0 KiB");
        expect_fmt(1536, "1.5 KiB");
        expect_fmt(10ull << 30, "10.0 GiB");
        expect_fmt((1ull << 20) - 1, "1.0 MiB");     /* 1023.999 KiB rounds up a unit */
        expect_fmt((1ull << 20) + 52429, "1.1 MiB"); /* just over 1.05: rounds up */
        expect_fmt((1ull << 20) + 52428, "1.0 MiB"); /* just under: rounds down */
        expect_fmt(1ull << 40, "1.0 TiB");
        expect_fmt(1ull << 60, "1.0 EiB");
        expect_fmt(UINT64_MAX, "16.0 EiB");

        memset(small, 'x', sizeof(small));
        format_size(10ull << 30, small, sizeof(small));
        assert_int_equal(small[sizeof(small) - 1], '\0');
        assert_string_equal(small, "10.0");
        memset(small, 'x', sizeof(small));
        format_size(5, small, 1);
        assert_int_equal(small[0], '\0');
        format_size(5, small, 0); /* must not write at all */
        assert_int_equal(small[1], 'x');
        format_size(5, NULL, 0);
}

static void test_range(void **state) {
        (void)state;
        uint64_t off, len;
        assert_int_equal(parse_http_range("bytes=0-1023", 4096, &off, &len), 0);
        assert_int_equal(off, 0);
        assert_int_equal(len, 1024);
        assert_int_equal(parse_http_range("bytes=4000-9999", 4096, &off, &len), 0); /* clamped */
        assert_int_equal(off, 4000);
        assert_int_equal(len, 96);
        assert_int_equal(parse_http_range("bytes=100-", 4096, &off, &len), 0);
        assert_int_equal(len, 3996);
        assert_int_equal(parse_http_range("bytes=-10", 4096, &off, &len), 0);
        assert_int_equal(off, 4086);
        assert_int_equal(len, 10);
        assert_int_equal(parse_http_range("bytes=-99999", 4096, &off, &len), 0);
        assert_int_equal(off, 0);
        assert_int_equal(len, 4096);
        assert_int_equal(parse_http_range("bytes=4096-", 4096, &off, &len), -ERANGE);
        assert_int_equal(parse_http_range("bytes=-0", 4096, &off, &len), -ERANGE);
        assert_int_equal(parse_http_range("bytes=0-0", 0, &off, &len), -ERANGE);
        assert_int_equal(parse_http_range("bytes=5-4", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("bytes=0-1,5-6", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("items=0-1", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("bytes=", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("bytes=-", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("bytes= 0-1", 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range(NULL, 4096, &off, &len), -EINVAL);
        assert_int_equal(parse_http_range("bytes=99999999999999999999999-", 4096, &off, &len),
                         -ERANGE);
}

static void test_ip_literal(void **state) {
        (void)state;
        int fam;
        uint8_t b[16];
        assert_int_equal(parse_ip_literal("10.0.0.2", &fam, b), 0);
        assert_int_equal(fam, AF_INET);
        assert_int_equal(b[0], 10);
        assert_int_equal(b[3], 2);
        assert_int_equal(parse_ip_literal("[fd00::2]", &fam, b), 0);
        assert_int_equal(fam, AF_INET6);
        assert_int_equal(b[0], 0xfd);
        assert_int_equal(b[15], 2);
        assert_int_equal(parse_ip_literal("::ffff:192.0.2.7", &fam, b), 0); /* v4-mapped */
        assert_int_equal(fam, AF_INET);
        assert_int_equal(b[0], 192);
        assert_int_equal(b[3], 7);
        assert_int_equal(parse_ip_literal("example.com", &fam, b), -EINVAL);
        assert_int_equal(parse_ip_literal("", &fam, b), -EINVAL);
        assert_int_equal(parse_ip_literal("[]", &fam, b), -EINVAL);
        assert_int_equal(parse_ip_literal("10.0.0.256", &fam, b), -EINVAL);
        assert_int_equal(parse_ip_literal(NULL, &fam, b), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_size_ok),      cmocka_unit_test(test_size_bad),
                cmocka_unit_test(test_duration),     cmocka_unit_test(test_u64),
                cmocka_unit_test(test_bool),         cmocka_unit_test(test_hostport_ok),
                cmocka_unit_test(test_hostport_bad), cmocka_unit_test(test_hostport_toolong),
                cmocka_unit_test(test_format_size),  cmocka_unit_test(test_range),
                cmocka_unit_test(test_ip_literal),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
