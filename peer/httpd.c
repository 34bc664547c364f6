/* The node's HTTP server. See httpd.h.
 *
 * net/http_server (libmicrohttpd) with a thread per connection: blob answers read the disk and
 * may wait for a chunk in flight, and must not hold up probes or other peers. Bounded by the
 * connection caps (per client, and in all, with a reserve for local root: kubelet's probes
 * on the node), the header deadline and, for buffers, by HTTPD_MAX_SERVES. */
#include "peer/httpd.h"

#include <errno.h>
#include <microhttpd.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/http_server.h"
#include "net/route.h"
#include "peer/wire.h"

#include "util/log.h"
#include "util/parse.h"

struct httpd {
        struct http_server *srv;
        struct httpd_ops ops;
};

/* Per-request state: the POST body collected so far. */
struct request {
        char *body;
        size_t len, cap;
        bool too_big;
};

static void request_done(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code) {
        (void)cls;
        (void)conn;
        (void)code;
        struct request *rq = *req_cls;
        if (rq) {
                free(rq->body);
                free(rq);
        }
        *req_cls = NULL;
}

static int collect(struct request *rq, const char *data, size_t n) {
        if (rq->too_big || rq->len + n + 1 > WIRE_MAX_BODY) {
                rq->too_big = true;
                return 0;
        }
        if (rq->len + n + 1 > rq->cap) {
                size_t cap = rq->cap ? rq->cap : 16384;
                while (cap < rq->len + n + 1)
                        cap *= 2;
                char *b = realloc(rq->body, cap);
                if (!b)
                        return -ENOMEM;
                rq->body = b;
                rq->cap = cap;
        }
        memcpy(rq->body + rq->len, data, n);
        rq->len += n;
        rq->body[rq->len] = '\0';
        return 0;
}

static void client_addr(struct MHD_Connection *conn, char *out, size_t len) {
        http_client_addr(conn, out, len);
}

static atomic_uint serves;  /* blob answers holding a buffer now */
static atomic_uint waiters; /* askers waiting for a chunk in flight now */

/* Streams a large range a chunk at a time (a client reading a whole blob from a peer). */
struct stream {
        struct httpd *h;
        struct digest d;
        uint64_t off, end;
        uint8_t *buf;
        uint64_t buf_off;
        size_t buf_len;
        char client[64];
};

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
        struct stream *st = cls;
        uint64_t at = st->off + pos;
        if (at >= st->end)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (!(at >= st->buf_off && at < st->buf_off + st->buf_len)) {
                uint32_t cs = st->h->ops.chunk_size;
                uint64_t coff = at / cs * cs;
                size_t n = (size_t)(st->end - coff < cs ? st->end - coff : cs);
                if (st->h->ops.blob_read(st->h->ops.ud, &st->d, coff, n, 0, st->buf, NULL, NULL) <
                    0)
                        return MHD_CONTENT_READER_END_WITH_ERROR; /* chunk went away */
                st->buf_off = coff;
                st->buf_len = n;
        }
        size_t n = (size_t)(st->buf_off + st->buf_len - at);
        if (n > max)
                n = max;
        memcpy(out, st->buf + (at - st->buf_off), n);
        if (st->h->ops.served)
                st->h->ops.served(st->h->ops.ud, st->client, n);
        return (ssize_t)n;
}

static void stream_free(void *cls) {
        struct stream *st = cls;
        free(st->buf);
        free(st);
        atomic_fetch_sub(&serves, 1);
}

static ssize_t no_body(void *cls, uint64_t pos, char *out, size_t max) {
        (void)cls;
        (void)pos;
        (void)out;
        (void)max;
        return MHD_CONTENT_READER_END_OF_STREAM;
}

/* X-P2PBlobs-Wait: the asker was told we are fetching this chunk; wait (bounded) until it
 * lands, holding neither a serve slot nor a buffer, so waiters cannot crowd out answers.
 * 0 (present, or no wait asked), -ERANGE (did not land), -EBUSY (too many waiting). */
static int wait_for_chunk(struct httpd *h, struct MHD_Connection *conn, const struct digest *d,
                          uint64_t off, uint64_t len) {
        uint64_t wait = 0;
        const char *w = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PROTO_WAIT_HEADER);
        if (!w || len > h->ops.chunk_size || parse_u64(w, 0, HTTPD_MAX_WAIT_MS, &wait) < 0 ||
            wait == 0)
                return 0;
        if (atomic_fetch_add(&waiters, 1) >= HTTPD_MAX_WAITERS) {
                atomic_fetch_sub(&waiters, 1);
                return -EBUSY;
        }
        int r = h->ops.blob_read(h->ops.ud, d, off, (size_t)len, wait, NULL, NULL, NULL);
        atomic_fetch_sub(&waiters, 1);
        return r == -ERANGE ? -ERANGE : 0;
}

static enum MHD_Result serve_blob(struct httpd *h, struct MHD_Connection *conn,
                                  const struct digest *d, bool head) {
        int wr;
        uint64_t size;
        if (!h->ops.blob_size || h->ops.blob_size(h->ops.ud, d, &size) < 0)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "blob unknown here\n");
        uint64_t off = 0, len = size;
        const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
        bool ranged = false;
        if (range) {
                int r = parse_http_range(range, size, &off, &len);
                if (r == -ERANGE)
                        return http_text(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE,
                                         "range not satisfiable\n");
                ranged = r == 0;
                if (!ranged) {
                        off = 0;
                        len = size;
                }
        }
        char hex[DIGEST_HEX_LEN + 8];
        memcpy(hex, "sha256:", 7);
        digest_to_hex(d, hex + 7);
        unsigned status = ranged ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK;
        char cr[96];
        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, off,
                 len ? off + len - 1 : off, size);
        struct MHD_Response *resp;
        char client[64];
        client_addr(conn, client, sizeof(client));
        if (head) {
                /* MHD sends a HEAD response's headers only, with the length it was made with:
                 * a callback response of the right size whose reader is never called. */
                resp = MHD_create_response_from_callback(len, 4096, no_body, NULL, NULL);
                if (!resp)
                        return MHD_NO;
        } else if (len == 0) {
                resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
                if (!resp)
                        return MHD_NO;
        } else if ((wr = wait_for_chunk(h, conn, d, off, len)) < 0) {
                if (wr == -EBUSY)
                        return http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "busy: ask again\n");
                return http_text(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE, "chunk not held here\n");
        } else if (atomic_fetch_add(&serves, 1) >= HTTPD_MAX_SERVES) {
                atomic_fetch_sub(&serves, 1);
                return http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "busy: ask another source\n");
        } else if (len <= h->ops.chunk_size) {
                uint8_t *buf = malloc((size_t)len);
                struct digest sha;
                bool known = false;
                int r = buf ? h->ops.blob_read(h->ops.ud, d, off, (size_t)len, 0, buf, &sha, &known)
                            : -ENOMEM;
                atomic_fetch_sub(&serves, 1);
                if (r < 0) {
                        free(buf);
                        if (r == -ERANGE)
                                return http_text(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE,
                                                 "chunk not held here\n");
                        if (r == -ENOENT)
                                return http_text(conn, MHD_HTTP_NOT_FOUND, "blob unknown here\n");
                        return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "read failed\n");
                }
                if (h->ops.served)
                        h->ops.served(h->ops.ud, client, len);
                resp = MHD_create_response_from_buffer((size_t)len, buf, MHD_RESPMEM_MUST_FREE);
                if (!resp) {
                        free(buf);
                        return MHD_NO;
                }
                if (known) {
                        char sh[DIGEST_HEX_LEN + 8];
                        memcpy(sh, "sha256:", 7);
                        digest_to_hex(&sha, sh + 7);
                        MHD_add_response_header(resp, PROTO_CHUNK_DIGEST_HEADER, sh);
                }
        } else {
                struct stream *st = calloc(1, sizeof(*st));
                uint8_t *buf = malloc(h->ops.chunk_size);
                if (!st || !buf) {
                        free(st);
                        free(buf);
                        atomic_fetch_sub(&serves, 1);
                        return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
                }
                *st = (struct stream){.h = h, .d = *d, .off = off, .end = off + len, .buf = buf};
                snprintf(st->client, sizeof(st->client), "%s", client);
                /* A range we do not hold whole would fail mid-way: say so now. (A chunk
                 * evicted while streaming still cuts the answer short; the asker sees a short
                 * body, never wrong bytes.) */
                bool held = true;
                uint32_t cs = h->ops.chunk_size;
                for (uint64_t c = off / cs * cs; held && c < off + len; c += cs) {
                        uint64_t n = size - c < cs ? size - c : cs;
                        held = h->ops.blob_read(h->ops.ud, d, c, (size_t)n, 0, NULL, NULL, NULL) ==
                               0;
                }
                if (!held) {
                        stream_free(st);
                        return http_text(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE,
                                         "chunk not held here\n");
                }
                resp = MHD_create_response_from_callback(len, 64 * 1024, stream_read, st,
                                                         stream_free);
                if (!resp) {
                        stream_free(st);
                        return MHD_NO;
                }
        }
        MHD_add_response_header(resp, "Docker-Content-Digest", hex);
        MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
        MHD_add_response_header(resp, "Accept-Ranges", "bytes");
        if (ranged)
                MHD_add_response_header(resp, "Content-Range", cr);
        char cs[32];
        snprintf(cs, sizeof(cs), "%" PRIu32, h->ops.chunk_size);
        MHD_add_response_header(resp, PROTO_CHUNK_SIZE_HEADER, cs);
        enum MHD_Result ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result locate(struct httpd *h, struct MHD_Connection *conn,
                              const struct digest *dp) {
        struct digest d = *dp;
        if (!h->ops.locate)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
        const char *node = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, PROTO_ARG_NODE);
        const char *chunk =
                MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, PROTO_ARG_CHUNK);
        uint64_t idx = 0;
        if (chunk && parse_u64(chunk, 0, WIRE_MAX_CHUNKS, &idx) < 0)
                return http_text(conn, MHD_HTTP_BAD_REQUEST, "bad chunk\n");
        char host[PEER_ID_MAX];
        uint16_t port;
        if (node && (strlen(node) >= PEER_ID_MAX ||
                     parse_hostport(node, host, sizeof(host), &port) < 0 || !host[0]))
                return http_text(conn, MHD_HTTP_BAD_REQUEST, "bad node\n");
        /* A reader's digest question (issue 18): held until an announce brings the digest, so
         * it asks once rather than every CONFIRM_POLL_MS. Beyond the directory's cap of
         * waiters it is answered at once, as without the header; the reader then asks again
         * after its poll interval. */
        const char *w = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PROTO_WAIT_HEADER);
        uint64_t wait = 0;
        if (w && chunk && !node && h->ops.locate_wait &&
            parse_u64(w, 0, HTTPD_MAX_WAIT_MS, &wait) == 0 && wait > 0)
                (void)h->ops.locate_wait(h->ops.ud, &d, (uint32_t)idx, wait);
        char *body = NULL;
        size_t len = 0;
        int r = h->ops.locate(h->ops.ud, &d, chunk ? node : NULL, chunk ? (int64_t)idx : -1, &body,
                              &len);
        if (r == -ENOENT)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "blob unknown to this home\n");
        if (r < 0)
                return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "locate failed\n");
        return http_reply(conn, MHD_HTTP_OK, "application/json", body, len, MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result locate_index(struct httpd *h, struct MHD_Connection *conn,
                                    const struct digest *layer) {
        if (!h->ops.locate_index)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
        char *body = NULL;
        size_t len = 0;
        int r = h->ops.locate_index(h->ops.ud, layer, &body, &len);
        if (r == -ENOENT)
                return http_text(conn, MHD_HTTP_NOT_FOUND, "no index of this layer known here\n");
        if (r < 0)
                return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "index locate failed\n");
        return http_reply(conn, MHD_HTTP_OK, "application/json", body, len, MHD_RESPMEM_MUST_FREE);
}

/* Constant time in the token's length: the comparison must not tell an asker how much of a
 * guess was right. */
static bool token_ok(const struct httpd *h, struct MHD_Connection *conn) {
        if (!h->ops.token)
                return true;
        const char *got = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PROTO_TOKEN_HEADER);
        size_t want_len = strlen(h->ops.token);
        if (!got || strlen(got) != want_len)
                return false;
        unsigned char diff = 0;
        for (size_t i = 0; i < want_len; i++)
                diff |= (unsigned char)(got[i] ^ h->ops.token[i]);
        return diff == 0;
}

int httpd_read_token(const char *path, char out[HTTPD_TOKEN_MAX + 1]) {
        FILE *f = fopen(path, "re");
        if (!f)
                return -errno;
        size_t n = fread(out, 1, HTTPD_TOKEN_MAX + 1, f);
        bool err = ferror(f);
        fclose(f);
        if (err)
                return -EIO;
        while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ' ||
                         out[n - 1] == '\t'))
                n--;
        if (n == 0 || n > HTTPD_TOKEN_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (out[i] < 0x21 || out[i] > 0x7e)
                        return -EINVAL;
        out[n] = '\0';
        return 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls) {
        (void)version;
        struct httpd *h = cls;
        if (*req_cls == NULL) { /* headers only so far */
                struct request *rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                *req_cls = rq;
                return MHD_YES;
        }
        struct request *rq = *req_cls;
        if (*upload_data_size) {
                if (collect(rq, upload_data, *upload_data_size) < 0)
                        return MHD_NO;
                *upload_data_size = 0;
                return MHD_YES;
        }
        struct route_peer rt;
        route_peer(method, url, &rt);
        if (rt.protocol && !token_ok(h, conn)) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
                uint64_t suppressed = 0;
                char client[64];
                client_addr(conn, client, sizeof(client));
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_warning("refused a peer request without the cluster token client=%s "
                                    "path=%s hint=\"every node needs the same "
                                    "--cluster-token-file\" suppressed=%" PRIu64,
                                    client, url, suppressed);
                return http_text(conn, MHD_HTTP_UNAUTHORIZED, "cluster token required\n");
        }
        switch (rt.kind) {
        case ROUTE_PEER_ANNOUNCE: {
                if (!h->ops.announce)
                        return http_text(conn, MHD_HTTP_NOT_FOUND, "not a peer\n");
                if (rq->too_big)
                        return http_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, "announce too large\n");
                char reason[160] = "";
                char *reply = NULL;
                size_t reply_len = 0;
                int r = h->ops.announce(h->ops.ud, rq->body ? rq->body : "", rq->len, &reply,
                                        &reply_len, reason, sizeof(reason));
                if (r < 0)
                        free(reply);
                if (r == -EPROTO)
                        return http_text(conn, MHD_HTTP_CONFLICT, "chunk size differs\n");
                if (r < 0)
                        return http_text(conn, MHD_HTTP_BAD_REQUEST, "malformed announce\n");
                if (reply) /* the home's verdict: blobs it is full for (peer/wire_reply.h) */
                        return http_reply(conn, MHD_HTTP_OK, "application/json", reply, reply_len,
                                          MHD_RESPMEM_MUST_FREE);
                return http_text(conn, MHD_HTTP_OK, "ok\n");
        }
        case ROUTE_PEER_BAD_METHOD:
                return http_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
        case ROUTE_PEER_HEALTHZ:
                return http_text(conn, MHD_HTTP_OK, "ok\n");
        case ROUTE_PEER_READYZ:
                return h->ops.ready(h->ops.ud)
                               ? http_text(conn, MHD_HTTP_OK, "ready\n")
                               : http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n");
        case ROUTE_PEER_METRICS: {
                char *body = NULL;
                size_t len = 0;
                if (h->ops.metrics(h->ops.ud, &body, &len) < 0)
                        return http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics failed\n");
                return http_reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                                  body, len, MHD_RESPMEM_MUST_FREE);
        }
        case ROUTE_PEER_LOCATE:
                return locate(h, conn, &rt.digest);
        case ROUTE_PEER_BLOB:
                return serve_blob(h, conn, &rt.digest, rt.head);
        case ROUTE_PEER_INDEX:
                return locate_index(h, conn, &rt.digest);
        case ROUTE_PEER_NOT_FOUND:
                break;
        }
        return http_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

int httpd_start(const char *listen, const struct httpd_ops *ops, struct httpd **ret) {
        struct httpd *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->ops = *ops;
        struct http_server_config hc = {
                .name = "peer",
                .listen = listen,
                .listen_fd = -1,
                .max_connections = HTTPD_MAX_CONNECTIONS + HTTPD_RESERVED_CONNECTIONS,
                .reserve = HTTPD_RESERVED_CONNECTIONS,
                .per_client = HTTPD_MAX_PER_CLIENT,
                .header_timeout_ms = ops->header_timeout_ms,
                .thread_stack = (size_t)(256 << 10),
                .handler = handle,
                .handler_cls = h,
                .completed = request_done,
        };
        int r = http_server_start(&hc, &h->srv);
        if (r < 0) {
                free(h);
                return r;
        }
        *ret = h;
        return 0;
}

void httpd_stop(struct httpd *h) {
        if (!h)
                return;
        http_server_stop(h->srv);
        free(h);
}
