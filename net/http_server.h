/* One HTTP server wrapper over libmicrohttpd, for the node's three servers: the peer server
 * (peer/httpd.c), the containerd mirror (fs/mirror.c) and the control socket (control/control.c).
 *
 * What it adds to MHD, and why (issue 14):
 *   - A deadline for each request's headers (and one for its body) counted from the moment
 *     the connection opened or the previous answer finished. MHD's own connection timeout is
 *     reset by every byte, so a client trickling a header a byte every few seconds held a
 *     thread forever; a reaper thread now shuts such sockets down when their deadline passes,
 *     whatever they send. Idle keep-alive connections fall under the same deadline.
 *   - Per-client caps. A client is a local user (its uid: SO_PEERCRED on unix sockets, the
 *     kernel's socket table through sock_diag for TCP from this host) or, from elsewhere, an
 *     address. No client holds more than PER_CLIENT connections; local root is exempt, and
 *     RESERVE of the MAX_CONNECTIONS are kept for root alone (containerd, kubelet on the
 *     node), so no other client can starve them. A refused connection is closed at once,
 *     never left in the listen backlog.
 *   - Listen-address parsing, start/stop, reply helpers and the client's identity, written
 *     once instead of in each server.
 *
 * Threads: MHD's listener and one thread per connection (poll(), not select(), so the
 * descriptor number is not capped at FD_SETSIZE), plus the reaper, which takes the server
 * lock only to walk the connections. MHD reports a connection's end before it closes the
 * socket, under the same lock, so the reaper never shuts down a descriptor that was reused.
 *
 * Costs: per connection a small record and, for TCP, one netlink round trip at accept. */
#pragma once
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define HTTP_HEADER_TIMEOUT_MS 10000 /* default: connect (or last answer) -> headers in */
#define HTTP_BODY_TIMEOUT_MS 30000   /* default: headers in -> whole body in */
#define HTTP_IDLE_TIMEOUT_S 30       /* MHD's activity timeout while answering */
#define HTTP_CLIENT_UNKNOWN ((uid_t)-1)

struct http_server;

struct http_server_config {
        const char *name;   /* for logs: "peer", "mirror", "control" */
        const char *listen; /* "host:port", "[v6]:port"; NULL when LISTEN_FD is given */
        int listen_fd;      /* a bound, listening socket handed over (closed by stop); or -1 */
        unsigned max_connections;   /* all clients together, the reserve included */
        unsigned reserve;           /* of those, kept for local root */
        unsigned per_client;        /* per uid (local) or address (remote); 0: no cap. Not root */
        uint64_t header_timeout_ms; /* 0: HTTP_HEADER_TIMEOUT_MS */
        uint64_t body_timeout_ms;   /* 0: HTTP_BODY_TIMEOUT_MS */
        unsigned idle_timeout_s;    /* 0: HTTP_IDLE_TIMEOUT_S */
        size_t thread_stack;        /* 0: the system's default */
        /* MHD's access handler and completion callback, called as MHD would. */
        MHD_AccessHandlerCallback handler;
        void *handler_cls;
        MHD_RequestCompletedCallback completed; /* may be NULL */
        void *completed_cls;
        /* Called once per request with its raw request-target (path and query as sent, not
         * percent-decoded) before MHD parses it, which is the only way to see the query
         * string as the client wrote it; what it returns is the request's *req_cls when the
         * handler is first called (so that first call no longer finds NULL there), and
         * COMPLETED is then called for every request, answered or not. May be NULL: the
         * peer server and the mirror do without. */
        void *(*uri_hook)(void *cls, const char *uri, struct MHD_Connection *conn);
        void *uri_hook_cls;
};

/* Parses LISTEN ("host:port", "[v6]:port", ":port" for every IPv4 address) into *RET.
 * Addresses only, no names: we bind before DNS matters. 0 or -EINVAL. Pure. */
int http_listen_parse(const char *listen, struct sockaddr_storage *ret);

/* Starts serving. 0; -EINVAL (bad address or config); -errno (bind: -EADDRINUSE...). */
int http_server_start(const struct http_server_config *cfg, struct http_server **ret);

/* Stops accepting, closes every connection (handlers running are waited for) and frees.
 * NULL-safe. */
void http_server_stop(struct http_server *s);

struct http_server_stats {
        uint64_t refused;   /* connections closed at accept: over a cap */
        uint64_t timed_out; /* connections shut down by the header/body deadline */
        unsigned open;      /* connections open now */
};
void http_server_get_stats(struct http_server *s, struct http_server_stats *ret);

/* The connecting user for a local client (unix socket, or TCP from this host), else
 * HTTP_CLIENT_UNKNOWN. Valid in the handler. */
uid_t http_client_uid(struct MHD_Connection *conn);

/* The client's address as text ("" for a unix socket). */
void http_client_addr(struct MHD_Connection *conn, char *out, size_t len);

/* Queues R with STATUS and drops our reference. R may be NULL (then MHD_NO: the connection
 * is closed, which is all that can be done without memory). */
enum MHD_Result http_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r);

/* A body of LEN bytes with Content-Type TYPE. MODE as MHD's (MUST_FREE: freed even on
 * failure). */
enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *type,
                           void *body, size_t len, enum MHD_ResponseMemoryMode mode);

/* A static text/plain message. */
enum MHD_Result http_text(struct MHD_Connection *conn, unsigned status, const char *msg);
