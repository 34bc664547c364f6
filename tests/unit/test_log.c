/* Unit tests for util/log.c: what a line looks like once values are escaped (issue 14.4),
 * read back from the log's own stderr through a pipe, and log_escape()'s edges. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/log.h"

/* Runs the log_emit call in CALL with stderr on a pipe; the line lands in OUT. */
#define CAPTURE(out, call)                                                                         \
        do {                                                                                       \
                int p[2], saved = dup(STDERR_FILENO);                                              \
                assert_int_equal(pipe(p), 0);                                                      \
                dup2(p[1], STDERR_FILENO);                                                         \
                call;                                                                              \
                dup2(saved, STDERR_FILENO);                                                        \
                close(saved);                                                                      \
                close(p[1]);                                                                       \
                ssize_t n = read(p[0], out, sizeof(out) - 1);                                      \
                close(p[0]);                                                                       \
                assert_true(n > 0);                                                                \
                out[n] = '\0';                                                                     \
        } while (0)

static void test_forged_line_is_one_line(void **state) {
        (void)state;
        char out[4096];
        CAPTURE(out, log_emit(LOG_LVL_INFO, "mirror tag=%s ms=%" PRIu64,
                              "t\r\n<2>level=crit forged", (uint64_t)5));
        assert_string_equal(out,
                            "<6>level=info mirror tag=\"t\\x0d\\x0a<2>level=crit forged\" ms=5\n");
}

static void test_quoted_values_escape_quotes(void **state) {
        (void)state;
        char out[4096];
        CAPTURE(out, log_emit(LOG_LVL_WARNING, "reason=\"%s\" n=%d", "a \"b\" \\c", -3));
        assert_string_equal(out, "<4>level=warning reason=\"a \\\"b\\\" \\\\c\" n=-3\n");
}

static void test_conversions(void **state) {
        (void)state;
        char out[4096];
        errno = ENOENT;
        CAPTURE(out, log_emit(LOG_LVL_DEBUG, "a=%zu b=%.1f c=%.*s d=%ld e=%m f=%% g=%x h=%s",
                              (size_t)7, 2.25, 2, "xyz", -1L, 255u, ""));
        assert_string_equal(out, "<7>level=debug a=7 b=2.2 c=xy d=-1 e=\"No such file or "
                                 "directory\" f=% g=ff h=\n");
        assert_int_equal(errno, ENOENT); /* preserved for the caller */
}

static void test_long_line_keeps_newline(void **state) {
        (void)state;
        char big[5000], out[8192];
        memset(big, '\n', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        CAPTURE(out, log_emit(LOG_LVL_INFO, "v=%s", big));
        size_t n = strlen(out);
        assert_true(n < 2048);
        assert_int_equal(out[n - 1], '\n');
        assert_null(memchr(out, '\n', n - 1)); /* one line, however long the value */
}

static void test_escape_edges(void **state) {
        (void)state;
        char out[16];
        assert_int_equal(log_escape("ab", 2, false, out, 0), 0);
        assert_int_equal(log_escape("a b", 3, false, out, 2), 0); /* no room for the quotes */
        assert_string_equal(out, "");
        assert_int_equal(log_escape("\x01\x02", 2, true, out, 6), 4); /* never half an escape */
        assert_string_equal(out, "\\x01");
        assert_int_equal(log_escape("\xc3\xa9", 2, false, out, sizeof(out)), 8);
        assert_string_equal(out, "\\xc3\\xa9");
        assert_int_equal(log_escape("k=v", 3, false, out, sizeof(out)), 5);
        assert_string_equal(out, "\"k=v\"");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_forged_line_is_one_line),
                cmocka_unit_test(test_quoted_values_escape_quotes),
                cmocka_unit_test(test_conversions),
                cmocka_unit_test(test_long_line_keeps_newline),
                cmocka_unit_test(test_escape_edges),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
