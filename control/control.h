/* The control API: HTTP/1.1 over a unix socket (libmicrohttpd), for blobctl and operators.
 *
 * This file knows HTTP; the routes (GET /v1/stat, POST /v1/blobs?ref=..., ...) are
 * net/api_routes.h's table, dispatched by the daemon in fs/api.c.
 *
 * The socket is created mode 0600 (root only): registering blobs makes the node fetch on
 * someone's behalf. Handlers run on the server's threads (one per connection, at most
 * CONTROL_MAX_CONNECTIONS) and may block: nothing here is on the read path. */
#pragma once
#include <jansson.h>
#include <stddef.h>

#define CONTROL_MAX_CONNECTIONS 16

struct control;
struct control_req; /* one request, valid during the handler call */

const char *control_req_method(const struct control_req *r);
const char *control_req_path(const struct control_req *r);
/* The raw query string (after '?', not percent-decoded; at most ROUTE_QUERY_MAX bytes of it,
 * net/route.h), or NULL when the request had none. */
const char *control_req_query(const struct control_req *r);

struct control_ops {
        void *ud;
        /* Answers one request: 0 with a new JSON value in *RET (the server frees it), or -errno
         * with a message in REASON. Status codes: -EINVAL -> 400, -ENOENT -> 404,
         * -EOPNOTSUPP -> 405, -EACCES -> 403, -EFBIG -> 413, -ENOSPC -> 507, -EBUSY -> 409,
         * other -> 502. */
        int (*handle)(void *ud, const struct control_req *req, json_t **ret, char *reason,
                      size_t reason_len);
};

/* Binds SOCKET_PATH (replacing a stale socket file, creating its directory) and serves.
 * 0 or -errno. */
int control_start(const char *socket_path, const struct control_ops *ops, struct control **ret);

/* Stops serving and removes the socket file. NULL-safe. */
void control_stop(struct control *c);
