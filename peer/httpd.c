/* The node's HTTP server. See httpd.h.
 *
 * libmicrohttpd with one internal polling thread: health, readiness and metrics are cheap and
 * never block, so a thread per connection would only cost memory. */
#include "peer/httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util/log.h"
#include "util/parse.h"

struct httpd {
        struct MHD_Daemon *mhd;
        struct httpd_ops ops;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body, size_t len, enum MHD_ResponseMemoryMode mode) {
        struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
        if (!r) {
                if (mode == MHD_RESPMEM_MUST_FREE)
                        free(body);
                return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", type);
        enum MHD_Result ret = MHD_queue_response(conn, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result text(struct MHD_Connection *conn, unsigned status, const char *msg) {
        return reply(conn, status, "text/plain; charset=utf-8", (char *)msg, strlen(msg),
                     MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls) {
        (void)version;
        (void)upload_data;
        struct httpd *h = cls;
        if (*req_cls == NULL) { /* headers only so far */
                *req_cls = h;
                return MHD_YES;
        }
        if (*upload_data_size) {
                *upload_data_size = 0; /* no endpoint takes a body */
                return MHD_YES;
        }
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
                return text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
        if (strcmp(url, "/healthz") == 0)
                return text(conn, MHD_HTTP_OK, "ok\n");
        if (strcmp(url, "/readyz") == 0)
                return h->ops.ready(h->ops.ud)
                               ? text(conn, MHD_HTTP_OK, "ready\n")
                               : text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n");
        if (strcmp(url, "/metrics") == 0) {
                char *body = NULL;
                size_t len = 0;
                if (h->ops.metrics(h->ops.ud, &body, &len) < 0)
                        return text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics failed\n");
                return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body,
                             len, MHD_RESPMEM_MUST_FREE);
        }
        return text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

int httpd_start(const char *listen, const struct httpd_ops *ops, struct httpd **ret) {
        char host[256];
        uint16_t port;
        if (parse_hostport(listen, host, sizeof(host), &port) < 0)
                return -EINVAL;
        struct sockaddr_storage ss = {0};
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
        if (!host[0] || strcmp(host, "0.0.0.0") == 0 ||
            inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
                struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
                sin->sin_family = AF_INET;
                sin->sin_port = htons(port);
                if (!host[0])
                        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(port);
                flags |= MHD_USE_IPv6;
        } else {
                return -EINVAL; /* an address, not a name: we bind before DNS matters */
        }
        struct httpd *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->ops = *ops;
        h->mhd = MHD_start_daemon(flags, port, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR, &ss,
                                  MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTPD_MAX_CONNECTIONS,
                                  MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
        if (!h->mhd) {
                int r = errno ? -errno : -EADDRINUSE;
                free(h);
                return r;
        }
        *ret = h;
        return 0;
}

void httpd_stop(struct httpd *h) {
        if (!h)
                return;
        MHD_stop_daemon(h->mhd);
        free(h);
}
