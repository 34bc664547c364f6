/* The control API: HTTP/1.1 over a unix socket (libmicrohttpd), for blobctl and operators.
 *
 *   GET  /v1/stat              -> JSON figures (see fs/status.c)
 *   GET  /v1/blobs             -> JSON array of blobs
 *   POST /v1/blobs?ref=REF     -> registers REF@DIGEST, JSON of the blob
 *
 * The socket is created mode 0600 (root only): registering blobs makes the node fetch on
 * someone's behalf. Handlers run on the server's threads (one per connection, at most
 * CONTROL_MAX_CONNECTIONS) and may block: nothing here is on the read path. */
#pragma once
#include <jansson.h>
#include <stddef.h>

#define CONTROL_MAX_CONNECTIONS 16

struct control;

struct control_ops {
        void *ud;
        /* Each returns 0 with a new JSON value in *RET (the server frees it), or -errno with a
         * message in REASON: -EINVAL -> 400, -ENOENT -> 404, -EACCES -> 403, other -> 502. */
        int (*stat)(void *ud, json_t **ret, char *reason, size_t reason_len);
        int (*list)(void *ud, json_t **ret, char *reason, size_t reason_len);
        int (*add)(void *ud, const char *ref, json_t **ret, char *reason, size_t reason_len);
};

/* Binds SOCKET_PATH (replacing a stale socket file, creating its directory) and serves.
 * 0 or -errno. */
int control_start(const char *socket_path, const struct control_ops *ops, struct control **ret);

/* Stops serving and removes the socket file. NULL-safe. */
void control_stop(struct control *c);
