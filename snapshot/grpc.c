/* gRPC over h2c on a unix socket, on libnghttp2. See grpc.h for the contract.
 *
 * Why by hand and not libgrpc: the snapshotter needs ten unary methods and one server-streaming
 * one, from one client (containerd) on a local socket. The framing gRPC adds to HTTP/2 is small
 * (a 5-byte prefix per message: a compressed flag and a big-endian length; the status in
 * grpc-status/grpc-message trailers, or in the headers alone for an error), nghttp2 does all of
 * HTTP/2 (settings, flow control, HPACK), and protobuf-c the messages. libgrpc's C core would
 * bring dozens of libraries and its own thread pools into a daemon that bounds its threads.
 *
 * Threads: one accept thread, one thread per connection (at most GRPC_MAX_CONNS). A connection
 * thread polls its socket and the stop pipe, feeds what it reads to nghttp2, runs each request
 * when its END_STREAM arrives, and writes what nghttp2 has to send. Stop closes the stop pipe's
 * write end, which wakes every poller at once.
 *
 * A method marked slow (one that may block, like a Prepare waiting for a layer's index) runs on
 * a job thread of its own (at most GRPC_MAX_JOBS per connection; past that it runs inline), so
 * the other requests containerd multiplexes on the same connection are answered meanwhile. The
 * job owns the request's bytes and its response; when it ends it queues itself and wakes the
 * connection's poller through a pipe, and the connection thread, the only one that touches
 * nghttp2, submits the response if the stream is still open (matched by a serial number, not
 * a pointer that could have been reused). A connection waits for its jobs before it closes.
 *
 * Costs: a request is buffered whole (bounded by GRPC_MAX_REQUEST), a response too (a List of
 * every snapshot is a few hundred bytes per snapshot). */
#include "snapshot/grpc.h"

#include <errno.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/log.h"

struct conn_slot {
        pthread_t thread;
        int fd;
        bool used, done; /* protected by grpc_server.lock */
};

struct grpc_server {
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        int lfd;
        int stop_pipe[2];
        const struct grpc_method *methods;
        size_t nmethods;
        void *ud;
        pthread_t acceptor;
        pthread_mutex_t lock; /* protects slots */
        struct conn_slot slots[GRPC_MAX_CONNS];
};

struct stream {
        uint64_t serial; /* matches a job to the stream it answers */
        char path[256];
        uint8_t *body;
        size_t len, cap;
        bool too_big;
        struct grpc_resp resp;
        size_t sent;
        struct stream *prev, *next; /* the connection's open streams */
};

struct conn;

struct job {
        struct conn *c;
        pthread_t thread;
        const struct grpc_method *m;
        int32_t stream_id;
        uint64_t serial;
        uint8_t *body; /* the request as received: 5-byte prefix, then the message */
        size_t len;
        struct grpc_resp resp;
        bool used, done; /* protected by conn.lock (used: also set/cleared by the conn thread) */
};

struct conn {
        struct grpc_server *srv;
        struct conn_slot *slot;
        nghttp2_session *session;
        struct stream *streams; /* open streams: nghttp2_session_del does not close them */
        uint64_t next_serial;
        int wake[2];          /* a job that ended writes a byte */
        pthread_mutex_t lock; /* protects jobs[].done */
        struct job jobs[GRPC_MAX_JOBS];
};

int grpc_resp_add(struct grpc_resp *resp, const ProtobufCMessage *msg) {
        size_t n = protobuf_c_message_get_packed_size(msg);
        if (n > UINT32_MAX || resp->len + 5 + n < resp->len)
                return -ENOMEM;
        if (resp->len + 5 + n > resp->cap) {
                size_t cap = resp->cap ? resp->cap : 256;
                while (cap < resp->len + 5 + n)
                        cap *= 2;
                uint8_t *b = realloc(resp->buf, cap);
                if (!b)
                        return -ENOMEM;
                resp->buf = b;
                resp->cap = cap;
        }
        uint8_t *p = resp->buf + resp->len;
        p[0] = 0; /* not compressed */
        p[1] = (uint8_t)(n >> 24);
        p[2] = (uint8_t)(n >> 16);
        p[3] = (uint8_t)(n >> 8);
        p[4] = (uint8_t)n;
        protobuf_c_message_pack(msg, p + 5);
        resp->len += 5 + n;
        return 0;
}

void grpc_resp_error(struct grpc_resp *resp, enum grpc_code code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(resp->message, sizeof(resp->message), fmt, ap);
        va_end(ap);
        resp->status = code;
}

static void stream_free(struct stream *s) {
        if (!s)
                return;
        free(s->body);
        free(s->resp.buf);
        free(s);
}

/* grpc-message is percent-encoded (the gRPC HTTP/2 spec): everything outside printable ASCII,
 * and '%' itself. */
static void percent_encode(const char *in, char *out, size_t cap) {
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < cap; p++) {
                if (*p >= 0x20 && *p < 0x7f && *p != '%') {
                        out[o++] = (char)*p;
                } else {
                        out[o++] = '%';
                        out[o++] = hex[*p >> 4];
                        out[o++] = hex[*p & 15];
                }
        }
        out[o] = '\0';
}

#define NV(n, v)                                                                                   \
        { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data) {
        (void)user_data;
        struct stream *s = source->ptr;
        size_t left = s->resp.len - s->sent, n = left < len ? left : len;
        if (n > 0)
                memcpy(buf, s->resp.buf + s->sent, n);
        s->sent += n;
        if (s->sent == s->resp.len) {
                *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
                nghttp2_nv trailers[] = {NV("grpc-status", "0")};
                if (nghttp2_submit_trailer(session, stream_id, trailers, 1) != 0)
                        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
}

static const struct grpc_method *find_method(struct grpc_server *srv, const char *path) {
        for (size_t i = 0; i < srv->nmethods; i++)
                if (strcmp(srv->methods[i].path, path) == 0)
                        return &srv->methods[i];
        return NULL;
}

/* Submits the response in S->resp for STREAM_ID. */
static int submit(struct conn *c, int32_t stream_id, struct stream *s) {
        struct grpc_resp *resp = &s->resp;
        if (resp->status == GRPC_OK) {
                nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
                nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
                return nghttp2_submit_response(c->session, stream_id, hdrs, 2, &prd);
        }
        /* Trailers-only: the status in the one HEADERS frame, which ends the stream. */
        char code[16], msg[3 * sizeof(resp->message)];
        snprintf(code, sizeof(code), "%d", (int)resp->status);
        percent_encode(resp->message, msg, sizeof(msg));
        nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                             NV("grpc-status", code), NV("grpc-message", msg)};
        return nghttp2_submit_response(c->session, stream_id, hdrs, 4, NULL);
}

static void *job_main(void *arg) {
        struct job *j = arg;
        j->m->handler(j->c->srv->ud, j->body + 5, j->len - 5, &j->resp);
        pthread_mutex_lock(&j->c->lock);
        j->done = true;
        pthread_mutex_unlock(&j->c->lock);
        ssize_t w;
        do
                w = write(j->c->wake[1], "j", 1);
        while (w < 0 && errno == EINTR);
        return NULL; /* a full pipe already has a wake-up pending */
}

/* Hands the request of S to a job thread. 0: it will be answered later; -EBUSY: no job slot
 * (or no thread): run it inline. */
static int start_job(struct conn *c, int32_t stream_id, struct stream *s,
                     const struct grpc_method *m) {
        struct job *j = NULL;
        for (int i = 0; i < GRPC_MAX_JOBS && !j; i++)
                if (!c->jobs[i].used)
                        j = &c->jobs[i];
        if (!j)
                return -EBUSY;
        *j = (struct job){.c = c,
                          .m = m,
                          .stream_id = stream_id,
                          .serial = s->serial,
                          .body = s->body,
                          .len = s->len,
                          .used = true};
        if (pthread_create(&j->thread, NULL, job_main, j) != 0) {
                j->used = false;
                return -EBUSY;
        }
        s->body = NULL; /* the job's now */
        s->len = s->cap = 0;
        return 0;
}

/* Submits the responses of the jobs that ended (conn thread). */
static int finish_jobs(struct conn *c) {
        int r = 0;
        for (int i = 0; i < GRPC_MAX_JOBS; i++) {
                struct job *j = &c->jobs[i];
                pthread_mutex_lock(&c->lock);
                bool done = j->used && j->done;
                pthread_mutex_unlock(&c->lock);
                if (!done)
                        continue;
                pthread_join(j->thread, NULL);
                struct stream *s = nghttp2_session_get_stream_user_data(c->session, j->stream_id);
                if (s && s->serial == j->serial) {
                        free(s->resp.buf);
                        s->resp = j->resp;
                        j->resp.buf = NULL;
                        if (r == 0 && submit(c, j->stream_id, s) != 0)
                                r = -EPROTO;
                }
                free(j->resp.buf);
                free(j->body);
                j->used = false;
        }
        return r;
}

/* Waits for every job (a connection closing). */
static void drain_jobs(struct conn *c) {
        for (int i = 0; i < GRPC_MAX_JOBS; i++) {
                struct job *j = &c->jobs[i];
                if (!j->used)
                        continue;
                pthread_join(j->thread, NULL);
                free(j->resp.buf);
                free(j->body);
                j->used = false;
        }
}

/* Runs the request of stream S (or starts its job) and submits its response. */
static int serve(struct conn *c, int32_t stream_id, struct stream *s) {
        struct grpc_resp *resp = &s->resp;
        const struct grpc_method *m = find_method(c->srv, s->path);
        if (s->too_big)
                grpc_resp_error(resp, GRPC_INVALID_ARGUMENT, "request larger than %u bytes",
                                GRPC_MAX_REQUEST);
        else if (!m)
                grpc_resp_error(resp, GRPC_UNIMPLEMENTED, "unknown method %s", s->path);
        else if (s->len < 5 || s->body[0] != 0)
                grpc_resp_error(resp, GRPC_INVALID_ARGUMENT, "%s",
                                s->len < 5 ? "no request message"
                                           : "compressed messages are "
                                             "not supported");
        else {
                size_t n = (size_t)s->body[1] << 24 | (size_t)s->body[2] << 16 |
                           (size_t)s->body[3] << 8 | s->body[4];
                if (n != s->len - 5)
                        grpc_resp_error(resp, GRPC_INVALID_ARGUMENT,
                                        "one request message "
                                        "expected");
                else if (m->slow && start_job(c, stream_id, s, m) == 0)
                        return 0;
                else
                        m->handler(c->srv->ud, s->body + 5, n, resp);
        }
        return submit(c, stream_id, s);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
        struct conn *c = user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0;
        struct stream *s = calloc(1, sizeof(*s));
        if (!s)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        s->serial = ++c->next_serial;
        nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
        s->next = c->streams;
        if (c->streams)
                c->streams->prev = s;
        c->streams = s;
        return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
        (void)flags;
        (void)user_data;
        if (frame->hd.type != NGHTTP2_HEADERS)
                return 0;
        struct stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (s && namelen == 5 && memcmp(name, ":path", 5) == 0 && valuelen < sizeof(s->path)) {
                memcpy(s->path, value, valuelen);
                s->path[valuelen] = '\0';
        }
        return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
        (void)flags;
        (void)user_data;
        struct stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
        if (!s || s->too_big)
                return 0;
        if (s->len + len > GRPC_MAX_REQUEST) {
                s->too_big = true;
                return 0;
        }
        if (s->len + len > s->cap) {
                size_t cap = s->cap ? s->cap : 512;
                while (cap < s->len + len)
                        cap *= 2;
                uint8_t *b = realloc(s->body, cap);
                if (!b)
                        return NGHTTP2_ERR_CALLBACK_FAILURE;
                s->body = b;
                s->cap = cap;
        }
        memcpy(s->body + s->len, data, len);
        s->len += len;
        return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
        struct conn *c = user_data;
        if ((frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) ||
            !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                return 0;
        struct stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (!s)
                return 0;
        if (serve(c, frame->hd.stream_id, s) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
        (void)error_code;
        struct conn *c = user_data;
        struct stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
        if (!s)
                return 0;
        if (s->prev)
                s->prev->next = s->next;
        else
                c->streams = s->next;
        if (s->next)
                s->next->prev = s->prev;
        stream_free(s);
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -errno;
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

static int flush(struct conn *c, int fd) {
        for (;;) {
                const uint8_t *data;
                ssize_t n = nghttp2_session_mem_send(c->session, &data);
                if (n < 0)
                        return -EPROTO;
                if (n == 0)
                        return 0;
                int r = write_all(fd, data, (size_t)n);
                if (r < 0)
                        return r;
        }
}

static void serve_conn(struct conn *c, int fd) {
        nghttp2_session_callbacks *cb;
        if (nghttp2_session_callbacks_new(&cb) != 0)
                return;
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
        int rc = nghttp2_session_server_new(&c->session, cb, c);
        nghttp2_session_callbacks_del(cb);
        if (rc != 0)
                return;
        nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100}};
        if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 1) != 0 || flush(c, fd) < 0)
                goto out_session;
        uint8_t buf[16384];
        while (nghttp2_session_want_read(c->session) || nghttp2_session_want_write(c->session)) {
                struct pollfd pfd[3] = {{.fd = fd, .events = POLLIN},
                                        {.fd = c->srv->stop_pipe[0], .events = POLLIN},
                                        {.fd = c->wake[0], .events = POLLIN}};
                if (poll(pfd, 3, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (pfd[1].revents)
                        break; /* stopping */
                if (pfd[2].revents) {
                        char drain[64];
                        while (read(c->wake[0], drain, sizeof(drain)) > 0)
                                ;
                        if (finish_jobs(c) < 0 || flush(c, fd) < 0)
                                break;
                }
                if (!pfd[0].revents)
                        continue;
                ssize_t n = recv(fd, buf, sizeof(buf), 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                if (nghttp2_session_mem_recv(c->session, buf, (size_t)n) < 0)
                        break;
                if (flush(c, fd) < 0)
                        break;
        }
out_session:
        drain_jobs(c); /* before the session: no job may outlive its connection */
        nghttp2_session_del(c->session);
        while (c->streams) { /* streams the peer or a stop left open */
                struct stream *s = c->streams;
                c->streams = s->next;
                stream_free(s);
        }
}

static void *conn_main(void *arg) {
        struct conn *c = arg;
        int fd = c->slot->fd;
        pthread_mutex_init(&c->lock, NULL);
        if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) == 0) {
                serve_conn(c, fd);
                close(c->wake[0]);
                close(c->wake[1]);
        }
        pthread_mutex_destroy(&c->lock);
        close(fd);
        pthread_mutex_lock(&c->srv->lock);
        c->slot->done = true;
        pthread_mutex_unlock(&c->srv->lock);
        free(c);
        return NULL;
}

/* Joins the threads of finished connections. Called with srv->lock held. */
static void reap(struct grpc_server *srv) {
        for (int i = 0; i < GRPC_MAX_CONNS; i++)
                if (srv->slots[i].used && srv->slots[i].done) {
                        pthread_join(srv->slots[i].thread, NULL);
                        srv->slots[i].used = srv->slots[i].done = false;
                }
}

static void *accept_main(void *arg) {
        struct grpc_server *srv = arg;
        for (;;) {
                struct pollfd pfd[2] = {{.fd = srv->lfd, .events = POLLIN},
                                        {.fd = srv->stop_pipe[0], .events = POLLIN}};
                if (poll(pfd, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (pfd[1].revents)
                        break;
                int fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        continue;
                pthread_mutex_lock(&srv->lock);
                reap(srv);
                struct conn_slot *slot = NULL;
                for (int i = 0; i < GRPC_MAX_CONNS && !slot; i++)
                        if (!srv->slots[i].used)
                                slot = &srv->slots[i];
                struct conn *c = slot ? calloc(1, sizeof(*c)) : NULL;
                if (c) {
                        c->srv = srv;
                        c->slot = slot;
                        slot->fd = fd;
                        slot->done = false;
                        slot->used = pthread_create(&slot->thread, NULL, conn_main, c) == 0;
                }
                pthread_mutex_unlock(&srv->lock);
                if (!c || !slot->used) {
                        log_debug("grpc connection refused reason=%s",
                                  slot ? "no memory or thread" : "too many connections");
                        free(c);
                        close(fd);
                }
        }
        return NULL;
}

int grpc_server_start(const char *path, const struct grpc_method *methods, size_t n, void *ud,
                      struct grpc_server **ret) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        struct grpc_server *srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        memcpy(srv->path, path, strlen(path) + 1);
        srv->methods = methods;
        srv->nmethods = n;
        srv->ud = ud;
        srv->stop_pipe[0] = srv->stop_pipe[1] = -1;
        pthread_mutex_init(&srv->lock, NULL);
        int r;
        srv->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (srv->lfd < 0) {
                r = -errno;
                goto out_free;
        }
        /* A socket file left by a crash would make bind fail; anything else there is kept. */
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
                unlink(path);
        mode_t old = umask(077);
        r = bind(srv->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
        umask(old);
        if (r < 0)
                goto out_close;
        if (listen(srv->lfd, 64) < 0 || pipe2(srv->stop_pipe, O_CLOEXEC) < 0) {
                r = -errno;
                goto out_unlink;
        }
        r = -pthread_create(&srv->acceptor, NULL, accept_main, srv);
        if (r < 0)
                goto out_unlink;
        *ret = srv;
        return 0;
out_unlink:
        unlink(path);
out_close:
        close(srv->lfd);
        if (srv->stop_pipe[0] >= 0) {
                close(srv->stop_pipe[0]);
                close(srv->stop_pipe[1]);
        }
out_free:
        pthread_mutex_destroy(&srv->lock);
        free(srv);
        return r;
}

void grpc_server_stop(struct grpc_server *srv) {
        if (!srv)
                return;
        close(srv->stop_pipe[1]); /* every poller sees the read end readable */
        pthread_join(srv->acceptor, NULL);
        for (int i = 0; i < GRPC_MAX_CONNS; i++)
                if (srv->slots[i].used)
                        pthread_join(srv->slots[i].thread, NULL);
        close(srv->lfd);
        close(srv->stop_pipe[0]);
        unlink(srv->path);
        pthread_mutex_destroy(&srv->lock);
        free(srv);
}
