/* Unit tests for peer/members.c: parsing of the static list, self detection (from the static
 * list and from a DNS answer: "localhost" resolves through /etc/hosts, no network), the bound
 * on members, failure and recovery bookkeeping, the ranking order, real probes (a closed
 * port on 127.0.0.1 stays down; a tiny HTTP server on loopback brings its peer back up), a
 * prompt members_free() with a probe in flight, and persistence into the index.
 *
 * This file includes members.c to set localities (netlink is NULL here) and to read the
 * backoff, both private. */
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "peer/members.c"

static struct members_config config(const char *const *peers, size_t n) {
        return (struct members_config){.static_peers = peers,
                                       .n_static = n,
                                       .peer_port = 5001,
                                       .listen_port = 5001,
                                       .refresh_ms = 60000,
                                       .probe_timeout_ms = 500,
                                       .max_peers = 16,
                                       .advertise = "10.0.0.1"};
}

static struct peer_info info_of(struct members *m, const char *id) {
        struct peer_info *v;
        size_t n;
        assert_int_equal(members_snapshot(m, &v, &n), 0);
        struct peer_info out = {0};
        bool found = false;
        for (size_t i = 0; i < n; i++)
                if (strcmp(v[i].id, id) == 0) {
                        out = v[i];
                        found = true;
                }
        free(v);
        if (!found)
                fail_msg("%s is not a member", id);
        return out;
}

static void test_static_parsing(void **state) {
        (void)state;
        const char *bad[] = {"nohost",         ":5001",         "10.0.0.2", "10.0.0.2:0",
                             "10.0.0.2:70000", "[fd00::2:5001", ""};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct members_config c = config(&bad[i], 1);
                struct members *m = NULL;
                if (members_new(&c, &m) != -EINVAL)
                        fail_msg("\"%s\" accepted", bad[i]);
        }
        struct members_config c = config(NULL, 0);
        struct members *m = NULL;
        c.max_peers = 0;
        assert_int_equal(members_new(&c, &m), -EINVAL);
        c = config(NULL, 0);
        c.advertise = "not-an-address";
        assert_int_equal(members_new(&c, &m), -EINVAL);

        const char *good[] = {"10.0.0.3:5002", "[fd00::0002]:5001", "10.0.0.2:5001",
                              "10.0.0.2:5001", "[::ffff:10.0.0.9]:5001"};
        c = config(good, 5);
        assert_int_equal(members_new(&c, &m), 0);
        char ids[8][PEER_ID_MAX];
        uint64_t version = 0;
        size_t n = members_ids(m, ids, 8, &version);
        assert_int_equal(n, 5); /* a duplicate counts once; self is a member */
        assert_string_equal(ids[0], "10.0.0.1:5001"); /* sorted: stable for hashing */
        assert_string_equal(ids[1], "10.0.0.2:5001");
        assert_string_equal(ids[2], "10.0.0.3:5002");
        assert_string_equal(ids[3], "10.0.0.9:5001");  /* a mapped v4 is the v4 peer */
        assert_string_equal(ids[4], "[fd00::2]:5001"); /* canonical text */
        assert_true(version >= 1);
        assert_int_equal(members_ids(m, ids, 2, NULL), 2);
        /* Homes are rendezvous hashing over exactly these ids, self included. */
        n = members_ids(m, ids, 8, NULL);
        const char *ptrs[8];
        for (size_t i = 0; i < n; i++)
                ptrs[i] = ids[i];
        for (int t = 0; t < 20; t++) {
                struct digest d;
                memset(&d, t * 7 + 1, sizeof(d));
                size_t pick[3];
                char homes[MEMBERS_MAX_HOMES][PEER_ID_MAX];
                uint64_t hv = 0;
                assert_int_equal(rdv_homes(ptrs, n, &d, 3, pick), 3);
                assert_int_equal(members_homes(m, &d, 3, homes, &hv), 3);
                for (size_t i = 0; i < 3; i++)
                        assert_string_equal(homes[i], ids[pick[i]]);
                assert_true(hv == version && members_version(m) == version);
        }
        assert_int_equal(members_homes(m, &(struct digest){{0}}, 99, ids, NULL), 5); /* k > n */
        struct peer_info p = info_of(m, "10.0.0.2:5001");
        assert_true(p.from_static);
        assert_false(p.from_dns);
        assert_int_equal(p.state, PEER_UP);
        assert_int_equal(p.locality, NL_LOC_UNKNOWN);
        uint64_t up, known;
        members_counts(m, &up, &known);
        assert_int_equal(known, 4);
        assert_int_equal(up, 4);
        members_free(m);
        members_free(NULL);
}

static void test_self(void **state) {
        (void)state;
        const char *peers[] = {"10.0.0.1:5001", "10.0.0.1:5002", "10.0.0.2:5001"};
        struct members_config c = config(peers, 3);
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        char self[PEER_ID_MAX];
        assert_int_equal(members_self(m, self, sizeof(self)), 0);
        assert_string_equal(self, "10.0.0.1:5001");
        assert_int_equal(members_self(m, self, 4), -ENAMETOOLONG);
        struct peer_info p = info_of(m, "10.0.0.1:5001");
        assert_true(p.is_self);
        assert_true(p.from_static);
        assert_int_equal(p.locality, NL_LOC_SELF);
        assert_false(info_of(m, "10.0.0.1:5002").is_self); /* our address, another port */
        assert_false(members_usable(m, self));
        assert_int_equal(members_rank_key(m, self), UINT64_MAX);
        members_report_failure(m, self, "test"); /* never marks self down */
        assert_int_equal(info_of(m, self).state, PEER_UP);
        uint64_t up, known;
        members_counts(m, &up, &known);
        assert_int_equal(known, 2);
        members_free(m);

        /* No advertised address and no netlink: no self, and members_self says so. */
        c.advertise = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        assert_int_equal(members_self(m, self, sizeof(self)), -ENOENT);
        char ids[8][PEER_ID_MAX];
        assert_int_equal(members_ids(m, ids, 8, NULL), 3);
        members_free(m);
}

/* "localhost" through /etc/hosts: 127.0.0.1 (and ::1 where listed). Our own address in a DNS
 * answer is self, once, flagged as from DNS. */
static void test_self_from_dns(void **state) {
        (void)state;
        const char *peers[] = {"10.0.0.2:5001"};
        struct members_config c = config(peers, 1);
        c.dns_name = "localhost";
        c.advertise = "127.0.0.1";
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        struct peer_info p = info_of(m, "127.0.0.1:5001");
        assert_true(p.is_self);
        assert_true(p.from_dns);
        assert_false(p.from_static);
        char ids[8][PEER_ID_MAX];
        size_t n = members_ids(m, ids, 8, NULL);
        size_t selves = 0;
        for (size_t i = 0; i < n; i++)
                selves += strcmp(ids[i], "127.0.0.1:5001") == 0;
        assert_int_equal(selves, 1);
        assert_false(info_of(m, "10.0.0.2:5001").from_dns);
        members_free(m);
}

static void test_bound(void **state) {
        (void)state;
        const char *peers[] = {"10.0.0.2:5001", "10.0.0.3:5001", "10.0.0.4:5001", "10.0.0.5:5001"};
        struct members_config c = config(peers, 4);
        c.max_peers = 3;
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        char ids[8][PEER_ID_MAX];
        size_t n = members_ids(m, ids, 8, NULL);
        assert_int_equal(n, 3);
        bool has_self = false;
        for (size_t i = 0; i < n; i++)
                has_self |= strcmp(ids[i], "10.0.0.1:5001") == 0;
        assert_true(has_self); /* self is never the one left out */
        members_free(m);
}

static void test_failure_bookkeeping(void **state) {
        (void)state;
        const char *peers[] = {"10.0.0.2:5001", "10.0.0.3:5001"};
        struct members_config c = config(peers, 2);
        c.probe_timeout_ms = 100;
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        const char *a = "10.0.0.2:5001";
        assert_true(members_usable(m, a));
        members_report_failure(m, a, "connect refused");
        struct peer_info p = info_of(m, a);
        assert_int_equal(p.state, PEER_DOWN);
        assert_int_equal(p.failures, 1);
        assert_int_equal(p.recent_failures, 1);
        assert_false(members_usable(m, a));
        assert_int_equal(members_rank_key(m, a), UINT64_MAX);
        members_report_failure(m, a, "again");
        assert_int_equal(info_of(m, a).failures, 2);
        uint64_t up, known;
        members_counts(m, &up, &known);
        assert_int_equal(up, 1);
        assert_int_equal(known, 2);

        /* A success from a real request brings it back and is measured. */
        members_report_success(m, a, 2000, 4096);
        p = info_of(m, a);
        assert_int_equal(p.state, PEER_UP);
        assert_int_equal(p.latency_us, 2000);
        assert_int_equal(p.bytes_from, 4096);
        assert_true(p.last_seen > 0);
        members_report_success(m, a, 6000, 4096);
        p = info_of(m, a);
        assert_int_equal(p.latency_us, 3000); /* EWMA, weight 1/4 */
        assert_int_equal(p.bytes_from, 8192);
        assert_int_equal(p.failures, 2);

        /* Served bytes by address, any port; unknown ids and addresses are ignored. */
        members_report_served(m, "10.0.0.3", 100);
        members_report_served(m, "::ffff:10.0.0.3", 20);
        members_report_served(m, "192.0.2.1", 1000);
        members_report_served(m, "garbage", 1000);
        assert_int_equal(info_of(m, "10.0.0.3:5001").bytes_to, 120);
        members_report_failure(m, "192.0.2.1:5001", "x");
        members_report_success(m, "192.0.2.1:5001", 1, 1);
        assert_false(members_usable(m, "192.0.2.1:5001"));

        /* Recent failures decay by halves. */
        pthread_mutex_lock(&m->lock);
        find(m, a)->info.recent_failures = 5;
        decay(m);
        pthread_mutex_unlock(&m->lock);
        assert_int_equal(info_of(m, a).recent_failures, 2);
        assert_int_equal(info_of(m, a).failures, 2);
        members_free(m);
}

static void set_peer(struct members *m, const char *id, enum nl_locality loc, uint64_t lat,
                     uint64_t recent) {
        pthread_mutex_lock(&m->lock);
        struct member *p = find(m, id);
        assert_non_null(p);
        p->info.locality = loc;
        p->info.latency_us = lat;
        p->info.recent_failures = recent;
        pthread_mutex_unlock(&m->lock);
}

static void test_ranking(void **state) {
        (void)state;
        const char *peers[] = {"10.0.0.2:5001", "10.0.0.3:5001", "10.0.0.4:5001",
                               "10.0.0.5:5001", "10.0.0.6:5001", "10.0.0.7:5001"};
        struct members_config c = config(peers, 6);
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        set_peer(m, "10.0.0.2:5001", NL_LOC_ROUTED, 100, 0);  /* fast but routed */
        set_peer(m, "10.0.0.3:5001", NL_LOC_ONLINK, 9000, 0); /* slow on-link */
        set_peer(m, "10.0.0.4:5001", NL_LOC_ONLINK, 500, 0);  /* fast on-link */
        set_peer(m, "10.0.0.5:5001", NL_LOC_ONLINK, 500, 3);  /* same, but failing lately */
        set_peer(m, "10.0.0.6:5001", NL_LOC_UNKNOWN, 100, 0); /* unknown: between */
        set_peer(m, "10.0.0.7:5001", NL_LOC_ONLINK, 1, 0);    /* best, but down */
        members_report_failure(m, "10.0.0.7:5001", "test");
        const char *want[] = {"10.0.0.4:5001", "10.0.0.5:5001", "10.0.0.3:5001", "10.0.0.6:5001",
                              "10.0.0.2:5001"};
        for (size_t i = 0; i + 1 < sizeof(want) / sizeof(want[0]); i++) {
                uint64_t a = members_rank_key(m, want[i]), b = members_rank_key(m, want[i + 1]);
                if (!(a < b))
                        fail_msg("%s (%" PRIu64 ") should rank before %s (%" PRIu64 ")", want[i], a,
                                 want[i + 1], b);
        }
        assert_true(members_rank_key(m, "10.0.0.2:5001") < UINT64_MAX);
        assert_int_equal(members_rank_key(m, "10.0.0.7:5001"), UINT64_MAX); /* down */
        assert_int_equal(members_rank_key(m, "10.0.0.1:5001"), UINT64_MAX); /* self */
        assert_int_equal(members_rank_key(m, "10.9.9.9:1"), UINT64_MAX);    /* unknown */
        members_free(m);
}

/* ---- real probes on loopback ---------------------------------------------------------------- */

static uint16_t closed_port(void) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        socklen_t len = sizeof(sa);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        close(fd); /* nothing listens there now */
        return ntohs(sa.sin_port);
}

struct server {
        int fd;
        uint16_t port;
        pthread_t thread;
        atomic_int served;
};

/* Answers every connection with 200 and an empty body, until the socket is shut down. */
static void *serve(void *arg) {
        struct server *s = arg;
        for (;;) {
                int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0)
                        return NULL;
                char buf[1024];
                if (read(c, buf, sizeof(buf)) > 0) {
                        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                                 "Connection: close\r\n\r\n";
                        if (write(c, ok, sizeof(ok) - 1) > 0)
                                atomic_fetch_add(&s->served, 1);
                }
                close(c);
        }
}

static void server_start(struct server *s) {
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(s->fd >= 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(s->fd, 16), 0);
        socklen_t len = sizeof(sa);
        assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
        s->port = ntohs(sa.sin_port);
        assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
}

static void server_stop(struct server *s) {
        shutdown(s->fd, SHUT_RDWR);
        pthread_join(s->thread, NULL);
        close(s->fd);
}

/* Polls COND on SPEC's member (taking the members lock) every 10 ms until it holds or
 * TIMEOUT_MS passes; returns whether it held. Probes run on the members thread with jittered
 * backoff, and a loaded machine runs them late: a fixed sleep would assert on a state that is
 * not reached yet, so tests wait for the state and assert after it. */
static bool member_eventually(struct members *m, const char *spec,
                              bool (*cond)(const struct member *), uint64_t timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        for (;;) {
                pthread_mutex_lock(&m->lock);
                const struct member *p = find(m, spec);
                bool ok = p && cond(p);
                pthread_mutex_unlock(&m->lock);
                if (ok)
                        return true;
                if (now_ms() >= deadline)
                        return false;
                usleep(10 * 1000);
        }
}

/* Two probes failed: the interval doubled twice from its start. */
static bool probed_twice(const struct member *p) {
        return p->backoff_ms >= 4 * BACKOFF_START_MS;
}

static bool is_up(const struct member *p) {
        return p->info.state == PEER_UP;
}

static bool is_probing(const struct member *p) {
        return p->probing;
}

static void test_probe_down_stays_down(void **state) {
        (void)state;
        char spec[32];
        snprintf(spec, sizeof(spec), "127.0.0.1:%u", (unsigned)closed_port());
        const char *peers[] = {spec};
        struct members_config c = config(peers, 1);
        c.probe_timeout_ms = 200;
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        members_report_failure(m, spec, "refused");
        /* First probe after 125..375 ms, the second 250..750 ms later: both refused. */
        assert_true(member_eventually(m, spec, probed_twice, 20000));
        assert_int_equal(info_of(m, spec).state, PEER_DOWN);
        assert_int_equal(info_of(m, spec).failures, 1); /* probes are not request failures */
        members_free(m);
}

static void test_probe_brings_back(void **state) {
        (void)state;
        struct server s = {0};
        server_start(&s);
        char spec[32];
        snprintf(spec, sizeof(spec), "127.0.0.1:%u", (unsigned)s.port);
        const char *peers[] = {spec};
        struct members_config c = config(peers, 1);
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        members_report_failure(m, spec, "stalled");
        assert_int_equal(info_of(m, spec).state, PEER_DOWN);
        assert_true(member_eventually(m, spec, is_up, 20000));
        struct peer_info p = info_of(m, spec);
        assert_int_equal(p.state, PEER_UP);
        assert_true(p.last_seen > 0);
        assert_true(atomic_load(&s.served) >= 1);
        assert_true(members_usable(m, spec));
        members_free(m);
        server_stop(&s);
}

/* A probe that cannot finish (a listener that never answers) does not hold up members_free. */
static void test_free_is_prompt(void **state) {
        (void)state;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 16), 0); /* accepts (in the kernel), never answers */
        socklen_t len = sizeof(sa);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
        char spec[32];
        snprintf(spec, sizeof(spec), "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
        const char *peers[] = {spec};
        struct members_config c = config(peers, 1);
        c.probe_timeout_ms = 20000;
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        members_report_failure(m, spec, "stalled");
        /* The first probe starts after 125..375 ms and then hangs for 20 s. */
        assert_true(member_eventually(m, spec, is_probing, 20000));
        uint64_t t0 = now_ms();
        members_free(m);
        assert_true(now_ms() - t0 < 1000);
        close(fd);
}

/* ---- persistence -------------------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(path);
}

struct seen {
        struct idx_peer v[8];
        size_t n;
};

static int collect(void *ud, const struct idx_peer *p) {
        struct seen *s = ud;
        if (s->n < 8)
                s->v[s->n++] = *p;
        return 0;
}

static void test_persist(void **state) {
        (void)state;
        char dir[] = "/tmp/p2pblobs-test-members-XXXXXX", db[64];
        assert_non_null(mkdtemp(dir));
        snprintf(db, sizeof(db), "%s/index.db", dir);
        struct index *ix = NULL;
        assert_int_equal(idx_open(db, &ix), 0);
        const char *peers[] = {"10.0.0.2:5001", "10.0.0.3:5001"};
        struct members_config c = config(peers, 2);
        c.ix = ix;
        struct members *m = NULL;
        assert_int_equal(members_new(&c, &m), 0);
        members_report_success(m, "10.0.0.2:5001", 1500, 777);
        members_report_failure(m, "10.0.0.3:5001", "test");
        members_free(m); /* persists the last snapshot */
        assert_int_equal(idx_flush(ix), 0);
        struct seen s = {0};
        assert_int_equal(idx_for_each_peer(ix, collect, &s), 0);
        assert_int_equal(s.n, 3);
        assert_string_equal(s.v[0].id, "10.0.0.1:5001");
        assert_string_equal(s.v[0].locality, "self");
        assert_string_equal(s.v[1].id, "10.0.0.2:5001");
        assert_string_equal(s.v[1].state, "up");
        assert_int_equal(s.v[1].latency_us, 1500);
        assert_int_equal(s.v[1].bytes_from, 777);
        assert_string_equal(s.v[2].state, "down");
        assert_int_equal(s.v[2].failures, 1);
        idx_close(ix);
        assert_int_equal(nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS), 0);
}

int main(void) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        log_max_level = LOG_LVL_WARNING; /* the info lines are the daemon's, not the test's */
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_static_parsing),
                cmocka_unit_test(test_self),
                cmocka_unit_test(test_self_from_dns),
                cmocka_unit_test(test_bound),
                cmocka_unit_test(test_failure_bookkeeping),
                cmocka_unit_test(test_ranking),
                cmocka_unit_test(test_probe_down_stays_down),
                cmocka_unit_test(test_probe_brings_back),
                cmocka_unit_test(test_free_is_prompt),
                cmocka_unit_test(test_persist),
        };
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        curl_global_cleanup();
        return r;
}
