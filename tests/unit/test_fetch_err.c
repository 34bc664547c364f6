/* Unit tests for net/fetch_err.c: every class has a name and an errno that maps back to a
 * class with the same fail-over meaning; the HTTP and curl mappings the clients rely on; and
 * the predicates keep the decisions the clients made before they shared them (origin.c's
 * retry set, source.c's blame set, the mirror's unreachable set). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "net/fetch_err.h"

static void test_every_class_named_and_round_trips(void **state) {
        (void)state;
        for (int e = 0; e < FETCH_ERR_COUNT; e++) {
                const char *name = fetch_err_strerror((enum fetch_err)e);
                assert_non_null(name);
                assert_true(name[0] != '\0');
                int err = fetch_err_to_errno((enum fetch_err)e);
                assert_true(e == FETCH_OK ? err == 0 : err < 0);
                /* Shared errnos (-EPROTO: setup, refused, protocol; -EREMOTEIO: server, busy)
                 * come back as a sibling with the same retry decision; the rest as themselves. */
                enum fetch_err back = fetch_err_from_errno(err);
                assert_int_equal(fetch_err_is_transient(back),
                                 fetch_err_is_transient((enum fetch_err)e));
                if (e != FETCH_ERR_SETUP && e != FETCH_ERR_REFUSED && e != FETCH_ERR_BUSY)
                        assert_int_equal(back, e);
        }
        assert_string_equal(fetch_err_strerror((enum fetch_err)999), "unknown failure");
        assert_false(fetch_err_is_transient((enum fetch_err) - 1));
}

static void test_mirror_unreachable_set(void **state) {
        (void)state;
        /* fs/mirror.c's list before the classification: exactly these. */
        const int yes[] = {-ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT, -EREMOTEIO, -ECANCELED};
        const int no[] = {0, -ENOENT, -EACCES, -EPROTO, -EBADMSG, -EIO, -EAGAIN, -ENOMEM};
        for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
                assert_true(fetch_err_is_unreachable(fetch_err_from_errno(yes[i])));
        for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
                assert_false(fetch_err_is_unreachable(fetch_err_from_errno(no[i])));
}

static void test_origin_retry_set(void **state) {
        (void)state;
        /* registry/origin.c retries these errnos and fails the rest at once. */
        const int retry[] = {-ECONNREFUSED, -ETIMEDOUT, -EIO, -EREMOTEIO};
        const int now[] = {-EPROTO, -EACCES, -ENOENT, -EBADMSG, -ECANCELED};
        for (size_t i = 0; i < sizeof(retry) / sizeof(retry[0]); i++)
                assert_true(fetch_err_is_transient(fetch_err_from_errno(retry[i])));
        for (size_t i = 0; i < sizeof(now) / sizeof(now[0]); i++)
                assert_false(fetch_err_is_transient(fetch_err_from_errno(now[i])));
        assert_true(fetch_err_is_transient(fetch_err_from_http(429)));
        assert_true(fetch_err_is_transient(fetch_err_from_http(500)));
        assert_true(fetch_err_is_transient(fetch_err_from_http(503)));
        assert_false(fetch_err_is_transient(fetch_err_from_http(404)));
        assert_false(fetch_err_is_transient(fetch_err_from_http(403)));
        assert_true(fetch_err_is_transient(fetch_err_from_curl(CURLE_COULDNT_CONNECT)));
        assert_true(fetch_err_is_transient(fetch_err_from_curl(CURLE_OPERATION_TIMEDOUT)));
        assert_true(fetch_err_is_transient(fetch_err_from_curl(CURLE_RECV_ERROR)));
        assert_false(fetch_err_is_transient(fetch_err_from_curl(CURLE_PEER_FAILED_VERIFICATION)));
        assert_false(fetch_err_is_transient(fetch_err_from_curl(CURLE_TOO_MANY_REDIRECTS)));
}

static void test_peer_blame_set(void **state) {
        (void)state;
        /* peer/source.c blames a peer for any curl failure, a stall, a short or long answer and
         * corrupt bytes; not for an HTTP answer that says no, nor for being busy. */
        assert_true(fetch_err_is_peer_fault(fetch_err_from_curl(CURLE_COULDNT_CONNECT)));
        assert_true(fetch_err_is_peer_fault(fetch_err_from_curl(CURLE_RECV_ERROR)));
        assert_true(fetch_err_is_peer_fault(fetch_err_from_curl(CURLE_SSL_CONNECT_ERROR)));
        assert_true(fetch_err_is_peer_fault(FETCH_ERR_TIMEOUT));
        assert_true(fetch_err_is_peer_fault(FETCH_ERR_PROTOCOL));
        assert_true(fetch_err_is_peer_fault(FETCH_ERR_CORRUPT));
        const long no[] = {404, 416, 403, 400, 500, 503};
        for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
                assert_false(fetch_err_is_peer_fault(fetch_err_from_http(no[i])));
        assert_int_equal(fetch_err_from_http(503), FETCH_ERR_BUSY);
        assert_int_equal(fetch_err_from_http(206), FETCH_OK);
        assert_int_equal(fetch_err_from_curl(CURLE_OK), FETCH_OK);
        assert_false(fetch_err_is_peer_fault(FETCH_ERR_CANCELED));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_class_named_and_round_trips),
                cmocka_unit_test(test_mirror_unreachable_set),
                cmocka_unit_test(test_origin_retry_set),
                cmocka_unit_test(test_peer_blame_set),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
