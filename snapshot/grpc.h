/* A minimal unary and server-streaming gRPC server over HTTP/2 cleartext on a unix socket.
 *
 * Enough gRPC for a containerd proxy plugin: h2c with prior knowledge (containerd's client
 * never upgrades), length-prefixed uncompressed messages, a status in the trailers. A method
 * is a path ("/pkg.Service/Method") and a handler that gets the request's bytes and fills a
 * response: zero or more messages (more than one only for a server-streaming method) and a
 * status. Handlers run on the connection's thread, one request at a time per connection, except
 * those of slow methods, which run on threads of their own (at most GRPC_MAX_JOBS at once per
 * connection, then inline), concurrently with the others: handlers must be thread-safe.
 *
 * Bounds: GRPC_MAX_CONNS connections (more are refused), GRPC_MAX_REQUEST bytes per request. */
#pragma once
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GRPC_MAX_CONNS 64
#define GRPC_MAX_REQUEST (4u << 20)
#define GRPC_MAX_JOBS 16

/* gRPC status codes we answer with (google.golang.org/grpc/codes). */
enum grpc_code {
        GRPC_OK = 0,
        GRPC_UNKNOWN = 2,
        GRPC_INVALID_ARGUMENT = 3,
        GRPC_NOT_FOUND = 5,
        GRPC_ALREADY_EXISTS = 6,
        GRPC_FAILED_PRECONDITION = 9,
        GRPC_UNIMPLEMENTED = 12,
        GRPC_INTERNAL = 13,
};

struct grpc_resp {
        uint8_t *buf; /* length-prefixed messages, in order */
        size_t len, cap;
        enum grpc_code status;
        char message[512];
};

/* Appends MSG to RESP. 0 or -ENOMEM. */
int grpc_resp_add(struct grpc_resp *resp, const ProtobufCMessage *msg);
/* Sets a non-OK status with a printf-style message. */
void grpc_resp_error(struct grpc_resp *resp, enum grpc_code code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

struct grpc_method {
        const char *path;
        void (*handler)(void *ud, const uint8_t *req, size_t len, struct grpc_resp *resp);
        bool slow; /* may block: runs on a job thread, not the connection's */
};

struct grpc_server;

/* Listens on the unix socket PATH (replacing a stale socket file, mode 0600) and serves
 * METHODS (N of them, which must outlive the server) with UD, on its own threads.
 * 0 or -errno. */
int grpc_server_start(const char *path, const struct grpc_method *methods, size_t n, void *ud,
                      struct grpc_server **ret);

/* Stops accepting, closes every connection, joins the threads, removes the socket. NULL-safe. */
void grpc_server_stop(struct grpc_server *srv);
