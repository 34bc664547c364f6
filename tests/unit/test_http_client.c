/* Unit tests for net/http_client.c and util/dynbuf.c against a real HTTP server on 127.0.0.1
 * (libmicrohttpd on a free port, a thread per connection so a handler may stall): a body and
 * headers captured, keep-alive reuse, arrival order, the body cap, a stall, a deadline while
 * running and while queued, status classes, streaming to on_data, a POST, the queue bound,
 * a group closed and the client freed with jobs in flight (every one completes once, with
 * -ECANCELED), many concurrent jobs under the per-host cap, a group's own caps (total and per
 * host), max_time, and calls (http_client_call: run on the client's thread, in order, at their
 * start time, past running transfers, cancelled with their group). */
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "net/http_client.h"
#include "util/log.h"

static struct MHD_Daemon *srv;
static uint16_t port;
static atomic_bool srv_stop;
static atomic_int conc_now, conc_max;
static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;
static int order_seen[64];
static int norder;

/* Sleeps up to MS in small steps; false when the server is stopping. */
static bool nap(int ms) {
        for (int i = 0; i < ms / 5; i++) {
                if (atomic_load(&srv_stop))
                        return false;
                usleep(5000);
        }
        return true;
}

static ssize_t stall_reader(void *cls, uint64_t pos, char *buf, size_t max) {
        (void)cls;
        (void)max;
        if (pos == 0) {
                memcpy(buf, "abcd", 4);
                return 4;
        }
        nap(5000); /* then nothing more: the client's stall time ends it first */
        return MHD_CONTENT_READER_END_WITH_ERROR;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const void *body,
                             size_t len) {
        struct MHD_Response *r =
                MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
        MHD_add_response_header(r, "X-Test", "yes");
        MHD_add_response_header(r, "Content-Type", "text/plain");
        enum MHD_Result ret = MHD_queue_response(conn, status, r);
        MHD_destroy_response(r);
        return ret;
}

struct post {
        char data[4096];
        size_t len;
};

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
        (void)cls;
        (void)version;
        static int first_call;
        /* Answering on the first call (before MHD knows the request has no body) makes MHD
         * close the connection; answer on the second, as real servers do. */
        if (strcmp(method, "POST") != 0 && !*con_cls) {
                *con_cls = &first_call;
                return MHD_YES;
        }
        if (strcmp(method, "POST") == 0) {
                struct post *p = *con_cls;
                if (!p) {
                        *con_cls = calloc(1, sizeof(*p));
                        return MHD_YES;
                }
                if (*upload_size) {
                        size_t n = *upload_size;
                        if (n > sizeof(p->data) - p->len)
                                n = sizeof(p->data) - p->len;
                        memcpy(p->data + p->len, upload, n);
                        p->len += n;
                        *upload_size = 0;
                        return MHD_YES;
                }
                enum MHD_Result r = reply(conn, 200, p->data, p->len);
                free(p);
                *con_cls = NULL;
                return r;
        }
        if (strcmp(url, "/ok") == 0)
                return reply(conn, 200, "hello", 5);
        if (strncmp(url, "/size/", 6) == 0) {
                size_t n = strtoul(url + 6, NULL, 10);
                char *b = malloc(n ? n : 1);
                memset(b, 'a', n);
                enum MHD_Result r = reply(conn, 200, b, n);
                free(b);
                return r;
        }
        if (strncmp(url, "/status/", 8) == 0)
                return reply(conn, (unsigned)strtoul(url + 8, NULL, 10), "no", 2);
        if (strcmp(url, "/stall") == 0) {
                struct MHD_Response *r =
                        MHD_create_response_from_callback(1 << 20, 4096, stall_reader, NULL, NULL);
                enum MHD_Result ret = MHD_queue_response(conn, 200, r);
                MHD_destroy_response(r);
                return ret;
        }
        if (strcmp(url, "/slow") == 0) {
                nap(3000);
                return reply(conn, 200, "late", 4);
        }
        if (strncmp(url, "/order/", 7) == 0) {
                pthread_mutex_lock(&order_lock);
                if (norder < 64)
                        order_seen[norder++] = (int)strtol(url + 7, NULL, 10);
                pthread_mutex_unlock(&order_lock);
                return reply(conn, 200, "ok", 2);
        }
        if (strcmp(url, "/conc") == 0) {
                int now = atomic_fetch_add(&conc_now, 1) + 1;
                int seen = atomic_load(&conc_max);
                while (now > seen && !atomic_compare_exchange_weak(&conc_max, &seen, now))
                        ;
                nap(20);
                atomic_fetch_sub(&conc_now, 1);
                return reply(conn, 200, "ok", 2);
        }
        return reply(conn, 404, "nf", 2);
}

static int setup(void **state) {
        (void)state;
        atomic_store(&srv_stop, false);
        srv = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                       MHD_USE_POLL,
                               0, NULL, NULL, handler, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned)30, MHD_OPTION_END);
        if (!srv)
                return -1;
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv, MHD_DAEMON_INFO_BIND_PORT);
        port = info->port;
        return 0;
}

static int teardown(void **state) {
        (void)state;
        atomic_store(&srv_stop, true);
        MHD_stop_daemon(srv);
        return 0;
}

static const char *url(const char *path) {
        static __thread char buf[256];
        snprintf(buf, sizeof(buf), "http://127.0.0.1:%u%s", (unsigned)port, path);
        return buf;
}

static struct http_client *client(unsigned inflight, unsigned per_host, size_t queued) {
        struct http_client_config cfg = {
                .max_inflight = inflight, .per_host = per_host, .max_queued = queued};
        struct http_client *c;
        assert_int_equal(http_client_new(&cfg, &c), 0);
        return c;
}

static struct http_request get(const char *path) {
        return (struct http_request){.url = url(path),
                                     .no_proxy = true,
                                     .body_max = 1 << 20,
                                     .deadline_ms = now_ms() + 10000};
}

/* ---- async bookkeeping ------------------------------------------------------------------ */

struct tally {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int done, canceled, ok, timedout;
        int order[256];
        int calls[256];                                /* completions per job: exactly one each */
        char last_reason[HTTP_CLIENT_REASON_MAX + 64]; /* of the last failure, for the log */
        uint64_t at_ms[256];                           /* calls: when each completion ran */
        pthread_t thread[256];                         /* and on which thread */
        struct http_client *client;                    /* test_call's, for a call to queue one */
};

static struct tally tally;

static void tally_reset(void) {
        pthread_mutex_lock(&tally.lock);
        tally.done = tally.canceled = tally.ok = tally.timedout = 0;
        memset(tally.calls, 0, sizeof(tally.calls));
        pthread_mutex_unlock(&tally.lock);
}

static void on_done(void *ud, struct http_response *r) {
        int id = (int)(intptr_t)ud;
        pthread_mutex_lock(&tally.lock);
        tally.order[tally.done++] = id;
        tally.calls[id]++;
        tally.canceled += r->err == -ECANCELED && r->fclass == FETCH_ERR_CANCELED;
        tally.ok += r->fclass == FETCH_OK;
        tally.timedout += r->err == -ETIMEDOUT;
        if (r->fclass != FETCH_OK && r->err != -ECANCELED)
                snprintf(tally.last_reason, sizeof(tally.last_reason), "%s (err %d status %ld)",
                         r->reason, r->err, r->status);
        pthread_cond_broadcast(&tally.cond);
        pthread_mutex_unlock(&tally.lock);
}

static void wait_done(int n) {
        pthread_mutex_lock(&tally.lock);
        while (tally.done < n)
                pthread_cond_wait(&tally.cond, &tally.lock);
        pthread_mutex_unlock(&tally.lock);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_dynbuf(void **state) {
        (void)state;
        struct dynbuf b;
        dynbuf_init(&b, 10);
        assert_int_equal(dynbuf_add(&b, "hello", 5), 0);
        assert_int_equal(dynbuf_add(&b, "world", 5), 0);
        assert_int_equal(b.len, 10);
        assert_string_equal((char *)b.data, "helloworld");
        assert_true(b.alloc <= 11); /* clamped to the cap */
        assert_int_equal(dynbuf_add(&b, "!", 1), -EFBIG);
        assert_int_equal(b.len, 10);
        size_t n;
        uint8_t *p = dynbuf_take(&b, &n);
        assert_int_equal(n, 10);
        assert_null(b.data);
        assert_int_equal(b.max, 10);
        free(p);
        p = dynbuf_take(&b, &n); /* empty: a "" of its own */
        assert_non_null(p);
        assert_int_equal(n, 0);
        assert_int_equal(p[0], 0);
        free(p);
        struct dynbuf z;
        dynbuf_init(&z, 0);
        assert_int_equal(dynbuf_add(&z, "x", 1), -EFBIG);
        assert_int_equal(dynbuf_add(&z, "", 0), 0);
        dynbuf_free(&z);
}

static void test_body_and_headers(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        struct http_request q = get("/ok");
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.fclass, FETCH_OK);
        assert_int_equal(r.body.len, 5);
        assert_memory_equal(r.body.data, "hello", 5);
        assert_int_equal(r.content_length, 5);
        assert_true(r.ttfb_us > 0);
        char v[64];
        assert_int_equal(http_response_header(&r, "x-test", v, sizeof(v)), 0);
        assert_string_equal(v, "yes");
        assert_int_equal(http_response_header(&r, "Content-Type", v, sizeof(v)), 0);
        assert_string_equal(v, "text/plain");
        assert_int_equal(http_response_header(&r, "X-Absent", v, sizeof(v)), -ENOENT);
        assert_true(r.new_connections >= 1);
        http_response_clear(&r);
        /* The connection is kept alive and reused. */
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.new_connections, 0);
        http_response_clear(&r);
        /* HEAD: no body, the length announced. */
        q = get("/ok");
        q.method = "HEAD";
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.body.len, 0);
        assert_int_equal(r.content_length, 5);
        http_response_clear(&r);
        /* A header block past its cap ends the transfer. */
        q = get("/ok");
        q.header_max = 8;
        assert_int_equal(http_client_run(c, &q, &r), -EFBIG);
        assert_int_equal(r.fclass, FETCH_ERR_PROTOCOL);
        http_response_clear(&r);
        http_client_free(c);
}

static void test_body_cap(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        struct http_request q = get("/size/1000");
        q.body_max = 999;
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), -EFBIG);
        assert_int_equal(r.fclass, FETCH_ERR_PROTOCOL);
        assert_true(fetch_err_is_peer_fault(r.fclass));
        assert_true(r.body.len <= 999);
        http_response_clear(&r);
        q.body_max = 1000;
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.body.len, 1000);
        http_response_clear(&r);
        /* body_max 0: the body is not kept, the answer is still a success. */
        q.body_max = 0;
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.fclass, FETCH_OK);
        assert_int_equal(r.body.len, 0);
        http_response_clear(&r);
        http_client_free(c);
}

/* Submits /order/0 .. /order/N-1 to C, in that order, each recording its number in `order`
 * when done (on_done), with MAY_START as the requests' may_start (NULL: none). */
static void submit_numbered(struct http_client *c, int n, bool (*may_start)(void *ud)) {
        tally_reset();
        pthread_mutex_lock(&order_lock);
        norder = 0;
        pthread_mutex_unlock(&order_lock);
        for (int i = 0; i < n; i++) {
                char path[32];
                snprintf(path, sizeof(path), "/order/%d", i);
                struct http_request q = get(path);
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                q.may_start = may_start;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
}

static void test_order(void **state) {
        (void)state;
        struct http_client *c = client(1, 0, 0);
        submit_numbered(c, 20, NULL);
        wait_done(20);
        assert_int_equal(norder, 20);
        for (int i = 0; i < 20; i++) {
                assert_int_equal(order_seen[i], i);
                assert_int_equal(tally.order[i], i);
                assert_int_equal(tally.calls[i], 1);
        }
        assert_int_equal(tally.ok, 20);
        http_client_free(c);
}

static void test_stall(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        struct http_request q = get("/stall");
        q.stall_ms = 200;
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), -ETIMEDOUT);
        assert_int_equal(r.fclass, FETCH_ERR_TIMEOUT);
        assert_int_equal(r.status, 200);
        assert_true(fetch_err_is_transient(r.fclass));
        assert_non_null(strstr(r.reason, "no data"));
        http_response_clear(&r);
        struct http_client_stats st;
        http_client_get_stats(c, &st);
        assert_int_equal(st.stalls, 1);
        http_client_free(c);
}

static void test_deadline(void **state) {
        (void)state;
        struct http_client *c = client(1, 0, 0);
        struct http_request q = get("/slow");
        q.deadline_ms = now_ms() + 300;
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), -ETIMEDOUT);
        assert_int_equal(r.fclass, FETCH_ERR_TIMEOUT);
        http_response_clear(&r);
        /* Queued behind a slow one (one transfer at a time): ends at its deadline unsent. */
        tally_reset();
        struct http_request slow = get("/slow");
        slow.done = on_done;
        slow.ud = (void *)(intptr_t)0;
        assert_int_equal(http_client_submit(c, &slow), 0);
        q = get("/ok");
        q.deadline_ms = now_ms() + 200;
        assert_int_equal(http_client_run(c, &q, &r), -ETIMEDOUT);
        assert_non_null(strstr(r.reason, "queued"));
        assert_int_equal(r.status, 0);
        http_response_clear(&r);
        http_client_free(c); /* the slow one is cancelled */
        assert_int_equal(tally.calls[0], 1);
        assert_int_equal(tally.canceled, 1);
}

static void test_status_classes(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        const struct {
                const char *path;
                enum fetch_err cls;
        } cases[] = {{"/status/404", FETCH_ERR_NOT_FOUND},
                     {"/status/403", FETCH_ERR_DENIED},
                     {"/status/503", FETCH_ERR_BUSY},
                     {"/status/500", FETCH_ERR_SERVER},
                     {"/status/418", FETCH_ERR_REFUSED}};
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct http_request q = get(cases[i].path);
                struct http_response r;
                assert_int_equal(http_client_run(c, &q, &r), 0); /* an answer came */
                assert_int_equal(r.fclass, cases[i].cls);
                assert_int_equal(r.fclass, http_classify(CURLE_OK, r.status));
                http_response_clear(&r);
        }
        /* Nobody listens: connect failed, the source's fault, worth a retry. */
        struct http_request q = {.url = "http://127.0.0.1:1/x", .no_proxy = true};
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), -ECONNREFUSED);
        assert_int_equal(r.fclass, FETCH_ERR_CONNECT);
        assert_true(fetch_err_is_peer_fault(r.fclass));
        assert_int_equal(r.status, 0);
        http_response_clear(&r);
        /* Refused at submit: no URL, bad method. */
        q = (struct http_request){.url = NULL};
        assert_int_equal(http_client_run(c, &q, &r), -EINVAL);
        q = get("/ok");
        q.method = "DELETE";
        assert_int_equal(http_client_run(c, &q, &r), -EINVAL);
        http_client_free(c);
}

struct stream {
        size_t bytes, calls;
        long status;
};

static int on_data(void *ud, struct http_response *resp, const uint8_t *data, size_t n) {
        struct stream *s = ud;
        for (size_t i = 0; i < n; i++)
                if (data[i] != 'a')
                        return -EPROTO;
        s->bytes += n;
        s->calls++;
        s->status = resp->status;
        return s->bytes > 300000 ? -ENOSPC : 0;
}

static void test_streaming_and_post(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        struct stream s = {0};
        struct http_request q = get("/size/200000");
        q.on_data = on_data;
        q.ud = &s;
        q.recv_buffer = HTTP_CLIENT_RECV_BUFFER;
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(s.bytes, 200000);
        assert_int_equal(s.status, 200);
        assert_int_equal(r.body.len, 0); /* streamed, not kept */
        http_response_clear(&r);
        /* The receiver's -errno ends the transfer with it. */
        s = (struct stream){0};
        q = get("/size/400000");
        q.on_data = on_data;
        q.ud = &s;
        assert_int_equal(http_client_run(c, &q, &r), -ENOSPC);
        assert_int_not_equal(r.fclass, FETCH_OK);
        http_response_clear(&r);
        /* POST with a body and a header line. */
        q = get("/echo");
        q.method = "POST";
        q.post_body = "{\"x\":1}";
        q.post_len = 7;
        q.headers[0] = "Content-Type: application/json";
        assert_int_equal(http_client_run(c, &q, &r), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body.len, 7);
        assert_memory_equal(r.body.data, "{\"x\":1}", 7);
        http_response_clear(&r);
        http_client_free(c);
}

static void test_queue_bound(void **state) {
        (void)state;
        struct http_client *c = client(1, 0, 2);
        tally_reset();
        int accepted = 0, refused = 0;
        for (int i = 0; i < 6; i++) {
                struct http_request q = get("/slow");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                int r = http_client_submit(c, &q);
                assert_true(r == 0 || r == -EAGAIN);
                accepted += r == 0;
                refused += r == -EAGAIN;
        }
        assert_true(refused >= 3); /* one running and two queued at the most */
        assert_true(accepted <= 3);
        struct http_client_stats st;
        http_client_get_stats(c, &st);
        assert_int_equal(st.refused, (uint64_t)refused);
        http_client_free(c);
        assert_int_equal(tally.done, accepted);
        assert_int_equal(tally.canceled, accepted);
}

static void test_cancel(void **state) {
        (void)state;
        struct http_client *c = client(8, 0, 0);
        tally_reset();
        struct http_group *g;
        assert_int_equal(http_group_new(c, 0, &g), 0);
        /* Group jobs: four stalling (running), then the group is closed. */
        for (int i = 0; i < 4; i++) {
                struct http_request q = get("/stall");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                q.group = g;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        /* Outside the group: must not be cancelled by the group's close. */
        struct http_request other = get("/ok");
        other.done = on_done;
        other.ud = (void *)(intptr_t)10;
        assert_int_equal(http_client_submit(c, &other), 0);
        usleep(100000);
        http_group_close(g);
        pthread_mutex_lock(&tally.lock);
        for (int i = 0; i < 4; i++)
                assert_int_equal(tally.calls[i], 1);
        assert_int_equal(tally.canceled, 4);
        pthread_mutex_unlock(&tally.lock);
        struct http_request late = get("/ok");
        late.done = on_done;
        late.group = g;
        assert_int_equal(http_client_submit(c, &late), -ECANCELED);
        http_group_free(g);
        wait_done(5);
        assert_int_equal(tally.calls[10], 1);
        assert_int_equal(tally.ok, 1);

        /* Free with jobs running and queued: each completes once, cancelled. */
        tally_reset();
        for (int i = 0; i < 12; i++) {
                struct http_request q = get("/stall");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        usleep(100000);
        http_client_free(c);
        assert_int_equal(tally.done, 12);
        assert_int_equal(tally.canceled, 12);
        for (int i = 0; i < 12; i++)
                assert_int_equal(tally.calls[i], 1);
}

static void test_many_concurrent(void **state) {
        (void)state;
        struct http_client *c = client(8, 4, 0);
        tally_reset();
        atomic_store(&conc_max, 0);
        for (int i = 0; i < 200; i++) {
                struct http_request q = get("/conc");
                q.done = on_done;
                q.ud = (void *)(intptr_t)(i % 256);
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        wait_done(200);
        if (tally.ok != 200)
                print_message("last failure: %s\n", tally.last_reason);
        assert_int_equal(tally.ok, 200);
        assert_true(atomic_load(&conc_max) <= 4); /* the per-host cap */
        assert_true(atomic_load(&conc_max) >= 2); /* and they did run side by side */
        struct http_client_stats st;
        http_client_get_stats(c, &st);
        assert_int_equal(st.jobs, 200);
        assert_true(st.connects <= 8); /* connections were reused, not one per job */
        http_client_free(c);
}

static void test_group_cap(void **state) {
        (void)state;
        struct http_client *c = client(16, 0, 0);
        struct http_group *g;
        assert_int_equal(http_group_new(c, 2, &g), 0);
        tally_reset();
        atomic_store(&conc_max, 0);
        for (int i = 0; i < 30; i++) {
                struct http_request q = get("/conc");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                q.group = g;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        unsigned active, waiting;
        http_group_counts(g, &active, &waiting);
        assert_true(active <= 2);
        assert_true(active + waiting <= 30);
        wait_done(30);
        assert_int_equal(tally.ok, 30);
        assert_true(atomic_load(&conc_max) <= 2); /* the group's cap, under the client's 16 */
        http_group_free(g);
        http_client_free(c);
}

static const char *url_on(const char *ip, const char *path) {
        static __thread char buf[256];
        snprintf(buf, sizeof(buf), "http://%s:%u%s", ip, (unsigned)port, path);
        return buf;
}

static void test_group_per_host(void **state) {
        (void)state;
        struct http_client *c = client(16, 0, 0);
        struct http_group *g;
        assert_int_equal(http_group_new_per_host(c, 0, 2, &g), 0);
        tally_reset();
        atomic_store(&conc_max, 0);
        for (int i = 0; i < 40; i++) { /* two hosts (both loopback), 20 jobs each */
                struct http_request q = get("/conc");
                q.url = url_on(i % 2 ? "127.0.0.2" : "127.0.0.1", "/conc");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                q.group = g;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        wait_done(40);
        if (tally.ok != 40)
                print_message("last failure: %s\n", tally.last_reason);
        assert_int_equal(tally.ok, 40);
        /* 2 per host: at most 4 at once, and a host at its cap did not hold the other back. */
        assert_true(atomic_load(&conc_max) <= 4);
        assert_true(atomic_load(&conc_max) >= 3);
        http_group_free(g);

        /* A group's total cap and its per-host cap together: the smaller one holds. */
        assert_int_equal(http_group_new_per_host(c, 3, 2, &g), 0);
        tally_reset();
        atomic_store(&conc_max, 0);
        for (int i = 0; i < 30; i++) {
                struct http_request q = get("/conc");
                q.url = url_on(i % 2 ? "127.0.0.2" : "127.0.0.1", "/conc");
                q.done = on_done;
                q.ud = (void *)(intptr_t)i;
                q.group = g;
                assert_int_equal(http_client_submit(c, &q), 0);
        }
        wait_done(30);
        assert_int_equal(tally.ok, 30);
        assert_true(atomic_load(&conc_max) <= 3);
        http_group_free(g);
        http_client_free(c);
}

static void test_max_time(void **state) {
        (void)state;
        struct http_client *c = client(4, 0, 0);
        struct http_request q = get("/slow"); /* answers after 3 s */
        q.max_time_ms = 200;
        struct http_response r;
        uint64_t t0 = now_ms();
        assert_int_equal(http_client_run(c, &q, &r), -ETIMEDOUT);
        assert_int_equal(r.fclass, FETCH_ERR_TIMEOUT);
        assert_true(now_ms() - t0 < 2000);
        http_response_clear(&r);
        http_client_free(c);
}

/* Odd jobs are no longer wanted when their turn comes. */
static bool wanted(void *ud) {
        return (intptr_t)ud % 2 == 0;
}

static void test_may_start(void **state) {
        (void)state;
        struct http_client *c = client(1, 0, 0); /* one at a time: each waits for its turn */
        submit_numbered(c, 8, wanted);
        wait_done(8);
        assert_int_equal(tally.ok, 4);
        pthread_mutex_lock(&order_lock);
        assert_int_equal(norder, 4); /* the dropped ones were never sent */
        for (int i = 0; i < 4; i++)
                assert_int_equal(order_seen[i], 2 * i);
        pthread_mutex_unlock(&order_lock);
        for (int i = 0; i < 8; i++)
                assert_int_equal(tally.calls[i], 1);
        struct http_request q = get("/order/9");
        q.may_start = wanted;
        q.ud = (void *)(intptr_t)9;
        struct http_response r;
        assert_int_equal(http_client_run(c, &q, &r), -ESTALE);
        assert_int_equal(r.fclass, FETCH_ERR_LOCAL);
        assert_false(r.started);
        http_response_clear(&r);
        http_client_free(c);
}

static atomic_int slow_done;

static void on_slow(void *ud, struct http_response *r) {
        (void)ud;
        (void)r;
        atomic_fetch_add(&slow_done, 1);
}

/* A call's completion: when and where it ran (tally.at_ms, tally.thread), then as any job's. */
static void on_call(void *ud, struct http_response *r) {
        int id = (int)(intptr_t)ud;
        pthread_mutex_lock(&tally.lock);
        tally.at_ms[tally.done] = now_ms();
        tally.thread[tally.done] = pthread_self();
        pthread_mutex_unlock(&tally.lock);
        if (id == 7 && r->err == 0) /* a call may queue another from the client's thread */
                assert_int_equal(http_client_call(tally.client, NULL, 0, on_call, (void *)8), 0);
        on_done(ud, r);
}

static void test_call(void **state) {
        (void)state;
        struct http_client *c = client(1, 0, 0);
        tally.client = c;
        tally_reset();
        atomic_store(&slow_done, 0);
        assert_int_equal(http_client_call(c, NULL, 0, NULL, NULL), -EINVAL);
        /* The only transfer slot is taken by a slow job: calls do not wait for it. */
        struct http_request slow = get("/slow");
        slow.done = on_slow;
        assert_int_equal(http_client_submit(c, &slow), 0);
        usleep(50000);
        uint64_t t0 = now_ms();
        for (int i = 0; i < 3; i++)
                assert_int_equal(http_client_call(c, NULL, 0, on_call, (void *)(intptr_t)i), 0);
        wait_done(3);
        assert_true(now_ms() - t0 < 1000);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(tally.order[i], i); /* in order */
                assert_false(pthread_equal(tally.thread[i], pthread_self()));
                assert_true(pthread_equal(tally.thread[i], tally.thread[0])); /* one thread */
        }
        /* A start time is honoured; a call may queue another. */
        t0 = now_ms();
        assert_int_equal(http_client_call(c, NULL, t0 + 150, on_call, (void *)7), 0);
        wait_done(5);
        assert_int_equal(tally.order[3], 7);
        assert_true(tally.at_ms[3] >= t0 + 150);
        assert_int_equal(tally.order[4], 8);
        /* A group's close cancels its calls not due yet, each run once with -ECANCELED. */
        struct http_group *g;
        assert_int_equal(http_group_new(c, 0, &g), 0);
        for (int i = 0; i < 3; i++)
                assert_int_equal(http_client_call(c, g, now_ms() + 60000, on_call,
                                                  (void *)(intptr_t)(10 + i)),
                                 0);
        http_group_close(g);
        assert_int_equal(tally.done, 8);
        assert_int_equal(tally.canceled, 3);
        for (int i = 10; i < 13; i++)
                assert_int_equal(tally.calls[i], 1);
        assert_int_equal(http_client_call(c, g, 0, on_call, NULL), -ECANCELED);
        http_group_free(g);
        struct http_client_stats st;
        http_client_get_stats(c, &st);
        assert_int_equal(st.jobs, 0); /* calls are not transfers; the slow one still runs */
        /* Freeing the client cancels a call not due yet. */
        assert_int_equal(http_client_call(c, NULL, now_ms() + 60000, on_call, (void *)14), 0);
        http_client_free(c);
        assert_int_equal(tally.done, 9);
        assert_int_equal(tally.canceled, 4);
        assert_int_equal(atomic_load(&slow_done), 1);
}

int main(void) {
        pthread_mutex_init(&tally.lock, NULL);
        pthread_cond_init(&tally.cond, NULL);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dynbuf),
                cmocka_unit_test(test_body_and_headers),
                cmocka_unit_test(test_body_cap),
                cmocka_unit_test(test_order),
                cmocka_unit_test(test_stall),
                cmocka_unit_test(test_deadline),
                cmocka_unit_test(test_status_classes),
                cmocka_unit_test(test_streaming_and_post),
                cmocka_unit_test(test_queue_bound),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_many_concurrent),
                cmocka_unit_test(test_group_cap),
                cmocka_unit_test(test_group_per_host),
                cmocka_unit_test(test_max_time),
                cmocka_unit_test(test_call),
                cmocka_unit_test(test_may_start),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
