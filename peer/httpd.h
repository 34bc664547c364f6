/* The node's HTTP server on --listen (default 0.0.0.0:5001): health, metrics, and the peer
 * protocol.
 *
 *   GET /healthz  200 while the process serves HTTP at all (liveness)
 *   GET /readyz   200 once the mount answers and until shutdown begins, else 503
 *   GET /metrics  Prometheus text exposition
 *   GET|HEAD /v2/<name>/blobs/sha256:<hex>   a blob's bytes from this node's chunks only
 *        (OCI distribution shape, Range honoured): 200/206, 416 when a chunk is not here,
 *        404 for an unknown blob. Never a fetch on the asker's behalf, so no loops. With
 *        X-P2PBlobs-Wait: MS, a chunk this node is fetching right now is waited for.
 *        A one-chunk answer carries X-P2PBlobs-Chunk-Digest (recorded at arrival).
 *   POST /p2p/v1/announce                    a holder's announce (peer/wire.h), for homes
 *   GET  /p2p/v1/locate/sha256:<hex>[?chunk=I&node=ID]   who holds / fetches which chunks
 *        (with chunk=I, no node and X-P2PBlobs-Wait: held until chunk I's digest is known
 *        here or the wait ends, at most HTTPD_MAX_WAIT_MS; see httpd_ops.locate_wait)
 *   GET  /p2p/v1/index/sha256:<hex>          which blob holds the index of a layer (wire.h)
 *   (with a cluster token configured, the /v2/ and /p2p/ ones need X-P2PBlobs-Token; else 401)
 *
 * Probes never depend on other nodes, so they cost the same at any cluster size. One thread
 * per connection (blob reads block on the disk and on waits), at most HTTPD_MAX_CONNECTIONS
 * plus HTTPD_RESERVED_CONNECTIONS that only local root (kubelet probing the node) may take,
 * at most HTTPD_MAX_PER_CLIENT per address or local user (a peer opens 8), and a request's
 * headers must be in within the header timeout however slowly they trickle (net/http_server.h); at most HTTPD_MAX_SERVES blob answers hold a buffer and at most
 * HTTPD_MAX_WAITERS askers wait for a chunk in flight at once (503 beyond: the asker asks
 * again shortly), so waiters never crowd out probes, locates and announces. */
#pragma once
#include "peer/proto.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/digest.h"

#define HTTPD_MAX_CONNECTIONS 256     /* threads with 256 KiB stacks; most wait or idle */
#define HTTPD_RESERVED_CONNECTIONS 32 /* more, for local root only (probes on the node) */
#define HTTPD_MAX_PER_CLIENT 32       /* per address, or per local non-root user */
#define HTTPD_MAX_SERVES 16           /* answers holding a chunk buffer */
#define HTTPD_MAX_WAITERS 64          /* askers waiting for a chunk in flight (503 beyond) */
#define HTTPD_MAX_WAIT_MS 10000       /* cap on X-P2PBlobs-Wait */
#define HTTPD_TOKEN_MAX 256           /* longest cluster token */

/* Reads the cluster token from PATH (trailing whitespace dropped) into OUT. 0; -EINVAL when
 * it is empty, longer than HTTPD_TOKEN_MAX or not printable ASCII; -errno. */
int httpd_read_token(const char *path, char out[HTTPD_TOKEN_MAX + 1]);

struct httpd;

struct httpd_ops {
        void *ud;
        bool (*ready)(void *ud);
        /* A malloc'd Prometheus text body in *RET (the server frees it). 0 or -errno. */
        int (*metrics)(void *ud, char **ret, size_t *ret_len);
        /* The peer protocol; each may be NULL (then 404). Same contracts as engine_blob_size,
         * engine_serve, dir_apply (on a parsed body: 0, -EINVAL, -EPROTO) and dir_locate
         * (a malloc'd JSON answer, or -ENOENT); BLOB_READ with BUF NULL only waits for the
         * range to be present. SERVED counts bytes sent to CLIENT (an address). */
        int (*blob_size)(void *ud, const struct digest *d, uint64_t *ret_size);
        int (*blob_read)(void *ud, const struct digest *d, uint64_t off, size_t len,
                         uint64_t wait_ms, void *buf, struct digest *ret_sha, bool *ret_known);
        /* ANNOUNCE may set *RET_BODY to a malloc'd JSON reply (peer/wire_reply.h, the
         * server frees it), sent with 200; left NULL, the reply is "ok\n". */
        int (*announce)(void *ud, const char *body, size_t len, char **ret_body, size_t *ret_len,
                        char *reason, size_t reason_len);
        int (*locate)(void *ud, const struct digest *d, const char *claimant, int64_t chunk,
                      char **ret, size_t *ret_len);
        void (*served)(void *ud, const char *client, uint64_t bytes);
        /* dir_wait_digest's contract (0, -ETIMEDOUT, -EBUSY; blocks up to WAIT_MS). A reader's
         * locate of one chunk without a claim and with X-P2PBlobs-Wait (its CONFIRM digest
         * question) is held here first, then answered by LOCATE whatever this returned.
         * NULL: answered at once. */
        int (*locate_wait)(void *ud, const struct digest *d, uint32_t chunk, uint64_t wait_ms);
        /* dir_locate_index's contract, the answer built (wire_index_build): 0, -ENOENT. */
        int (*locate_index)(void *ud, const struct digest *layer, char **ret, size_t *ret_len);
        uint32_t chunk_size; /* blob answers are assembled a chunk at a time */
        /* The cluster's shared secret, or NULL: when set, the peer protocol (blobs, announce,
         * locate) answers 401 to requests without X-P2PBlobs-Token: TOKEN. Probes and
         * /metrics stay open (kubelet, Prometheus). Borrowed. */
        const char *token;
        uint64_t header_timeout_ms; /* 0: HTTP_HEADER_TIMEOUT_MS */
};

/* Listens on LISTEN ("host:port", "[v6]:port"). 0, -EINVAL (malformed), -errno (bind). */
int httpd_start(const char *listen, const struct httpd_ops *ops, struct httpd **ret);

void httpd_stop(struct httpd *h); /* NULL-safe */
