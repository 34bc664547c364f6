/* Control server on a unix socket. See control.h.
 *
 * libmicrohttpd is given our own bound AF_UNIX socket (MHD_OPTION_LISTEN_SOCKET); it runs a
 * thread per connection, capped, with a timeout so a stuck client cannot hold a slot. */
#include "peer/control.h"

#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/log.h"

struct control_req {
        struct MHD_Connection *conn;
        const char *method;
        const char *path;
};

const char *control_req_method(const struct control_req *r) {
        return r->method;
}

const char *control_req_path(const struct control_req *r) {
        return r->path;
}

const char *control_req_arg(const struct control_req *r, const char *name) {
        return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

struct control {
        struct MHD_Daemon *mhd;
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
        size_t len = strlen(text);
        struct MHD_Response *resp =
                MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "application/json");
        enum MHD_Result r = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return r;
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
        /* First call per request: headers only. We take no bodies; answer on the second. */
        if (*req_cls == NULL) {
                *req_cls = c;
                return MHD_YES;
        }
        if (*upload_data_size) {
                *upload_data_size = 0; /* ignore bodies */
                return MHD_YES;
        }
        json_t *out = NULL;
        char reason[512] = "";
        struct control_req req = {.conn = conn, .method = method, .path = url};
        int r = c->ops.handle(c->ops.ud, &req, &out, reason, sizeof(reason));
        if (r < 0)
                return send_error(conn, status_for(r), reason[0] ? reason : strerror(-r));
        return send_json(conn, MHD_HTTP_OK, out);
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
        mode_t old = umask(0077);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
        umask(old);
        if (r < 0 || listen(fd, 16) < 0) {
                r = r < 0 ? r : -errno;
                close(fd);
                goto out_free;
        }
        c->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                  0, NULL, NULL, handle, c, MHD_OPTION_LISTEN_SOCKET, fd,
                                  MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONTROL_MAX_CONNECTIONS,
                                  MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
        if (!c->mhd) {
                close(fd);
                unlink(c->path);
                r = -EIO;
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
        MHD_stop_daemon(c->mhd); /* closes the listen socket it was given */
        unlink(c->path);
        free(c);
}
