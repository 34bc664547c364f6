/* Unit tests for net/netlink.c: the prefix arithmetic, locality and the choice of the
 * advertised address as pure functions (this file includes netlink.c to reach them), then
 * nl_open() against the real kernel in a throw-away network namespace: a forked child
 * unshares its network namespace, builds a veth pair with an address and a default route
 * (iproute2), checks what nl_open() reports, renumbers the node and waits for the event
 * thread to notice. The child reports the first check that failed as its exit status, so a
 * failure names its step without cmocka running in two processes. Without the privilege to
 * create a namespace (not root, a restricted container) that test is skipped. */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/netlink.c"

static struct nl_local local(const char *text, uint8_t plen, int ifindex, bool primary,
                             bool global) {
        struct nl_local l = {
                .plen = plen, .ifindex = ifindex, .primary = primary, .global = global};
        assert_int_equal(parse_addr(text, &l.family, l.bytes), 0);
        return l;
}

static void test_prefix_match(void **state) {
        (void)state;
        const uint8_t a[4] = {10, 0, 0, 2}, b[4] = {10, 0, 0, 200}, c[4] = {10, 0, 1, 2},
                      d[4] = {10, 0, 0, 129};
        assert_true(prefix_match(a, b, 4, 24));
        assert_false(prefix_match(a, c, 4, 24));
        assert_true(prefix_match(a, c, 4, 23)); /* 10.0.0.0/23 holds 10.0.1.x */
        assert_true(prefix_match(a, a, 4, 32));
        assert_false(prefix_match(a, b, 4, 32));
        assert_true(prefix_match(a, c, 4, 0));   /* a default prefix holds everything */
        assert_false(prefix_match(a, d, 4, 25)); /* the bit after the 24th differs */
        assert_true(prefix_match(b, d, 4, 25));  /* 200 and 129 share the top bit */
        assert_false(prefix_match(a, a, 4, 33)); /* nonsense prefix: no match */

        uint8_t x[16], y[16];
        int fam;
        assert_int_equal(parse_addr("fd00:1:2:3::2", &fam, x), 0);
        assert_int_equal(fam, AF_INET6);
        assert_int_equal(parse_addr("[fd00:1:2:3:ffff::9]", &fam, y), 0);
        assert_true(prefix_match(x, y, 16, 64));
        assert_false(prefix_match(x, y, 16, 65));
        assert_int_equal(parse_addr("fd00:1:2:4::2", &fam, y), 0);
        assert_false(prefix_match(x, y, 16, 64));
        assert_true(prefix_match(x, y, 16, 45));
}

static void test_parse_addr(void **state) {
        (void)state;
        int fam;
        uint8_t b[16];
        assert_int_equal(parse_addr("192.0.2.1", &fam, b), 0);
        assert_int_equal(fam, AF_INET);
        assert_int_equal(b[0], 192);
        assert_int_equal(parse_addr("[::1]", &fam, b), 0);
        assert_int_equal(fam, AF_INET6);
        assert_int_equal(parse_addr("", &fam, b), -EINVAL);
        assert_int_equal(parse_addr("[]", &fam, b), -EINVAL);
        assert_int_equal(parse_addr("node-1", &fam, b), -EINVAL);
        assert_int_equal(parse_addr("10.0.0.1:5001", &fam, b), -EINVAL);
        assert_int_equal(parse_addr("10.0.0.256", &fam, b), -EINVAL);
}

static void test_classify(void **state) {
        (void)state;
        static struct nl_view v;
        memset(&v, 0, sizeof(v));
        v.addrs[v.n++] = local("10.0.0.2", 24, 2, true, true);
        v.addrs[v.n++] = local("127.0.0.1", 8, 1, true, false);
        v.addrs[v.n++] = local("fd00::2", 64, 2, true, true);
        int fam;
        uint8_t b[16];
        struct {
                const char *addr;
                enum nl_locality want;
        } cases[] = {
                {"10.0.0.2", NL_LOC_SELF},          {"10.0.0.9", NL_LOC_ONLINK},
                {"10.0.1.9", NL_LOC_ROUTED},        {"127.0.0.1", NL_LOC_SELF},
                {"127.1.2.3", NL_LOC_ONLINK},       {"fd00::2", NL_LOC_SELF},
                {"fd00::abcd", NL_LOC_ONLINK},      {"2001:db8::1", NL_LOC_ROUTED},
                {"::ffff:10.0.0.9", NL_LOC_ONLINK}, /* v4-mapped: the v4 host it names */
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                assert_int_equal(parse_addr(cases[i].addr, &fam, b), 0);
                enum nl_locality got = classify(&v, fam, b);
                if (got != cases[i].want)
                        fail_msg("%s: %s, want %s", cases[i].addr, nl_locality_name(got),
                                 nl_locality_name(cases[i].want));
        }
        memset(&v, 0, sizeof(v)); /* no addresses at all: everything is routed */
        assert_int_equal(parse_addr("10.0.0.9", &fam, b), 0);
        assert_int_equal(classify(&v, fam, b), NL_LOC_ROUTED);
}

static void test_pick_advertised(void **state) {
        (void)state;
        static struct nl_view v;
        char out[INET6_ADDRSTRLEN];
        memset(&v, 0, sizeof(v));
        v.addrs[v.n++] = local("127.0.0.1", 8, 1, true, false);
        v.addrs[v.n++] = local("192.168.9.9", 24, 3, true, true);
        v.addrs[v.n++] = local("fd00::2", 64, 2, true, true);
        v.addrs[v.n++] = local("fe80::2", 64, 2, true, false);
        v.addrs[v.n++] = local("10.0.0.3", 24, 2, false, true); /* secondary */
        v.addrs[v.n++] = local("10.0.0.2", 24, 2, true, true);

        pick_advertised(&v, 2, 0, out, sizeof(out));
        assert_string_equal(out, "10.0.0.2"); /* the primary v4 of the default route's link */
        pick_advertised(&v, 3, 2, out, sizeof(out));
        assert_string_equal(out, "192.168.9.9"); /* v4 wins over v6 */
        pick_advertised(&v, 0, 2, out, sizeof(out));
        assert_string_equal(out, "fd00::2"); /* v6 only: global, not link-local */
        pick_advertised(&v, 0, 0, out, sizeof(out));
        assert_string_equal(out, ""); /* no default route */
        pick_advertised(&v, 7, 0, out, sizeof(out));
        assert_string_equal(out, ""); /* a route on a link without addresses */

        memset(&v, 0, sizeof(v)); /* v4 route on a link with only v6: its global v6 */
        v.addrs[v.n++] = local("fe80::2", 64, 2, true, false);
        v.addrs[v.n++] = local("2001:db8::2", 64, 2, true, true);
        pick_advertised(&v, 2, 0, out, sizeof(out));
        assert_string_equal(out, "2001:db8::2");
}

static void test_names_and_null(void **state) {
        (void)state;
        assert_string_equal(nl_locality_name(NL_LOC_SELF), "self");
        assert_string_equal(nl_locality_name(NL_LOC_ONLINK), "on-link");
        assert_string_equal(nl_locality_name(NL_LOC_ROUTED), "routed");
        assert_string_equal(nl_locality_name(NL_LOC_UNKNOWN), "unknown");
        assert_string_equal(nl_locality_name((enum nl_locality)42), "unknown");
        assert_int_equal(nl_locality(NULL, "10.0.0.1"), NL_LOC_UNKNOWN);
        nl_free(NULL);
        struct netlink *nl = NULL;
        assert_int_equal(nl_open("not-an-address", NULL, NULL, &nl), -EINVAL);
        assert_null(nl);
}

/* ---- against the kernel, in a namespace of our own --------------------------------------- */

static pthread_mutex_t changed_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed_cond = PTHREAD_COND_INITIALIZER;
static int changes;

static void on_change(void *ud) {
        (void)ud;
        pthread_mutex_lock(&changed_lock);
        changes++;
        pthread_cond_broadcast(&changed_cond);
        pthread_mutex_unlock(&changed_lock);
}

/* Waits up to 5 s until the advertised address is WANT ("" for none). */
static bool wait_advertised(struct netlink *nl, const char *want) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 5;
        pthread_mutex_lock(&changed_lock);
        for (;;) {
                char got[INET6_ADDRSTRLEN] = "";
                int r = nl_advertised(nl, got, sizeof(got));
                if ((want[0] && r == 0 && strcmp(got, want) == 0) || (!want[0] && r == -ENOENT))
                        break;
                if (pthread_cond_timedwait(&changed_cond, &changed_lock, &deadline) == ETIMEDOUT) {
                        pthread_mutex_unlock(&changed_lock);
                        return false;
                }
        }
        pthread_mutex_unlock(&changed_lock);
        return true;
}

static int sh(const char *cmd) {
        int st = system(cmd);
        return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Runs in the child; returns the number of the first failed step, 0 when all passed. */
static int namespace_checks(void) {
        if (sh("ip link set lo up && ip link add v0 type veth peer name v1 && "
               "ip link set v0 up && ip link set v1 up && "
               "ip addr add 10.77.0.2/24 dev v0 && "
               "ip route add default via 10.77.0.1 dev v0") < 0)
                return 10;
        struct netlink *nl = NULL;
        if (nl_open(NULL, on_change, NULL, &nl) != 0)
                return 11;
        char a[INET6_ADDRSTRLEN] = "";
        if (nl_advertised(nl, a, sizeof(a)) != 0 || strcmp(a, "10.77.0.2") != 0)
                return 12;
        if (nl_advertised(nl, a, 4) != -ENAMETOOLONG)
                return 13;
        if (nl_locality(nl, "10.77.0.9") != NL_LOC_ONLINK ||
            nl_locality(nl, "10.77.0.2") != NL_LOC_SELF ||
            nl_locality(nl, "127.0.0.1") != NL_LOC_SELF ||
            nl_locality(nl, "192.0.2.1") != NL_LOC_ROUTED ||
            nl_locality(nl, "nonsense") != NL_LOC_UNKNOWN)
                return 14;

        /* Renumbering: the old address goes (and its default route with it), a new one comes
         * on the other link. The thread must see it without being asked. */
        if (sh("ip addr add 10.88.0.2/24 dev v1 && ip addr del 10.77.0.2/24 dev v0 && "
               "ip route add default via 10.88.0.1 dev v1") < 0)
                return 20;
        if (!wait_advertised(nl, "10.88.0.2"))
                return 21;
        pthread_mutex_lock(&changed_lock);
        int seen = changes;
        pthread_mutex_unlock(&changed_lock);
        if (seen < 1)
                return 22;
        if (nl_locality(nl, "10.77.0.9") != NL_LOC_ROUTED ||
            nl_locality(nl, "10.88.0.7") != NL_LOC_ONLINK)
                return 23;

        /* A link going down takes its addresses out of locality and its route away. */
        if (sh("ip link set v1 down") < 0)
                return 30;
        if (!wait_advertised(nl, ""))
                return 31;
        if (nl_locality(nl, "10.88.0.7") != NL_LOC_ROUTED)
                return 32;
        nl_free(nl);

        /* A fixed address is reported as given (brackets dropped) and is ours. */
        nl = NULL;
        if (nl_open("[fd00::2]", NULL, NULL, &nl) != 0)
                return 40;
        if (nl_advertised(nl, a, sizeof(a)) != 0 || strcmp(a, "fd00::2") != 0 ||
            nl_locality(nl, "fd00::2") != NL_LOC_SELF)
                return 41;
        nl_free(nl);
        return 0;
}

static void test_kernel_namespace(void **state) {
        (void)state;
        if (geteuid() != 0 || access("/usr/sbin/ip", X_OK) < 0)
                skip();
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (unshare(CLONE_NEWNET) < 0)
                        _exit(77);
                _exit(namespace_checks());
        }
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        if (WEXITSTATUS(st) == 77)
                skip();
        if (WEXITSTATUS(st) != 0)
                fail_msg("namespace check failed at step %d (see namespace_checks)",
                         WEXITSTATUS(st));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_prefix_match),   cmocka_unit_test(test_parse_addr),
                cmocka_unit_test(test_classify),       cmocka_unit_test(test_pick_advertised),
                cmocka_unit_test(test_names_and_null), cmocka_unit_test(test_kernel_namespace),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
