/* Control server on a unix socket. See control.h.
 *
 * net/http_server is given our own bound AF_UNIX socket; it runs a thread per connection,
 * capped, with a deadline for each request's headers so a stuck client cannot hold a slot.
 *
 * Each request's raw query string is copied (at most ROUTE_QUERY_MAX bytes: a longer one is
 * refused by the parser all the same) from the request-target MHD shows its URI hook, into a
 * record that lives from that hook to MHD's completion notice: the daemon parses the query
 * against its route table itself (net/route.c), where MHD's own argument table would hide a
 * key given twice and tolerate escapes that are not ones. */
#include "control/control.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net/http_server.h"
#include "net/route.h"
#include "util/log.h"

/* One request, from the URI hook to its completion. */
struct control_rq {
        bool started;   /* the handler has seen the headers */
        bool has_query; /* the target had a '?' */
        char query[];   /* what followed it, raw */
};

struct control_req {
        struct MHD_Connection *conn;
        const char *method;
        const char *path;
        const char *query;
};

const char *control_req_method(const struct control_req *r) {
        return r->method;
}

const char *control_req_path(const struct control_req *r) {
        return r->path;
}

const char *control_req_query(const struct control_req *r) {
        return r->query;
}

struct control {
        struct http_server *srv;
        struct control_ops ops;
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static int status_for(int err) {
        switch (err) {
        case -EINVAL:
        case -ENAMETOOLONG:
                return MHD_HTTP_BAD_REQUEST;
        case -ENOENT:
                return MHD_HTTP_NOT_FOUND;
        case -EACCES:
                return MHD_HTTP_FORBIDDEN;
        case -EOPNOTSUPP:
                return MHD_HTTP_METHOD_NOT_ALLOWED;
        case -EFBIG:
                return MHD_HTTP_CONTENT_TOO_LARGE;
        case -EBUSY:
                return MHD_HTTP_CONFLICT;
        case -ENOSPC:
                return MHD_HTTP_INSUFFICIENT_STORAGE;
        default:
                return MHD_HTTP_BAD_GATEWAY;
        }
}

static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, json_t *body) {
        char *text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        if (!text)
                return MHD_NO;
        return http_reply(conn, status, "application/json", text, strlen(text),
                          MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, const char *msg) {
        return send_json(conn, status, json_pack("{s:s}", "error", msg));
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls) {
        (void)version;
        (void)upload_data;
        struct control *c = cls;
        struct control_rq *rq = *req_cls;
        if (!rq) /* the URI hook found no memory: close, the one answer without any */
                return MHD_NO;
        /* First call per request: headers only. We take no bodies; answer on the second. */
        if (!rq->started) {
                rq->started = true;
                return MHD_YES;
        }
        if (*upload_data_size) {
                *upload_data_size = 0; /* ignore bodies */
                return MHD_YES;
        }
        json_t *out = NULL;
        char reason[512] = "";
        struct control_req req = {.conn = conn,
                                  .method = method,
                                  .path = url,
                                  .query = rq->has_query ? rq->query : NULL};
        int r = c->ops.handle(c->ops.ud, &req, &out, reason, sizeof(reason));
        if (r < 0)
                return send_error(conn, status_for(r), reason[0] ? reason : strerror(-r));
        return send_json(conn, MHD_HTTP_OK, out);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
        (void)cls;
        (void)conn;
        const char *q = strchr(uri, '?');
        size_t n = q ? strnlen(q + 1, ROUTE_QUERY_MAX) : 0;
        struct control_rq *rq = calloc(1, sizeof(*rq) + n + 1);
        if (rq && q) {
                rq->has_query = true;
                memcpy(rq->query, q + 1, n);
        }
        return rq;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code) {
        (void)cls;
        (void)conn;
        (void)code;
        free(*req_cls);
        *req_cls = NULL;
}

static int mkdir_parent(const char *path) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir)
                return 0;
        *slash = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int control_start(const char *socket_path, const struct control_ops *ops, struct control **ret) {
        struct control *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->ops = *ops;
        if (strlen(socket_path) >= sizeof(c->path)) {
                free(c);
                return -ENAMETOOLONG;
        }
        snprintf(c->path, sizeof(c->path), "%s", socket_path);
        int r = mkdir_parent(socket_path);
        if (r < 0)
                goto out_free;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                goto out_free;
        }
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, c->path, sizeof(sa.sun_path));
        unlink(c->path); /* a stale socket from a previous run */
        /* 0600 from the start (umask), and again explicitly: the umask is the process's, and
         * a caller's wider one must not leave the socket open to everyone. */
        mode_t old = umask(0077);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
        umask(old);
        if (r == 0 && chmod(c->path, 0600) < 0)
                r = -errno;
        if (r < 0 || listen(fd, 16) < 0) {
                r = r < 0 ? r : -errno;
                close(fd);
                goto out_free;
        }
        struct http_server_config hc = {
                .name = "control",
                .listen_fd = fd,
                .max_connections = CONTROL_MAX_CONNECTIONS,
                .idle_timeout_s = 120, /* blobctl verify reads a whole blob before answering */
                .handler = handle,
                .handler_cls = c,
                .completed = on_completed,
                .uri_hook = on_uri,
        };
        r = http_server_start(&hc, &c->srv);
        if (r < 0) {
                close(fd);
                unlink(c->path);
                goto out_free;
        }
        *ret = c;
        return 0;
out_free:
        free(c);
        return r;
}

void control_stop(struct control *c) {
        if (!c)
                return;
        http_server_stop(c->srv); /* closes the listen socket it was given */
        unlink(c->path);
        free(c);
}
