/* The origin registry client: OCI distribution blob GETs with Range (and manifest GETs and
 * HEADs for the containerd mirror), as jobs on the node's one HTTP client
 * (net/http_client.h), whose thread runs the done callbacks below.
 *
 * A fetch either succeeds or fails by its deadline: transient failures (connection refused,
 * timeouts, 5xx, 429) are retried with exponential backoff and jitter; permanent ones (404,
 * 401/403 after auth, a registry that ignores Range) fail at once. Bearer tokens are fetched
 * when a registry asks for them (anonymously, or with config.json credentials) and cached per
 * repository until they expire. TLS is verified; plain HTTP only for registries configured as
 * insecure. Redirects are followed (CDNs), without the Authorization header leaving the host.
 *
 * Bounds: at most MAX_CONNECTIONS transfers run at once (the cap of the origin's group on the
 * HTTP client), each owning one chunk buffer, so the client's memory is MAX_CONNECTIONS x
 * chunk size; more requests wait in the HTTP client's queue, whose length the caller bounds
 * (the engine's in-flight limit) and the HTTP client caps (max_queued: past it a fetch fails
 * at once, its DONE called before the submit returns, with -EAGAIN). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/chain.h"
#include "util/digest.h"

struct origin;
struct http_client;

struct origin_config {
        const char *const *insecure; /* "host:port" registries reached over plain HTTP */
        size_t n_insecure;
        const char *credentials_path; /* docker config.json; NULL or missing = anonymous */
        const char *ca_file;          /* extra CA bundle; NULL = system */
        uint64_t connect_timeout_ms;  /* per attempt */
        uint64_t stall_timeout_ms;    /* abandon an attempt that receives nothing this long */
        unsigned max_connections;     /* attempts running at once */
        /* The HTTP client requests go through (borrowed; it must outlive the origin). NULL:
         * the origin makes one of its own. */
        struct http_client *http;
};

/* DONE gets 0 and a malloc'd BUF of exactly the requested LEN (ownership passes to DONE), or a
 * -errno and a REASON for people (-ENOENT: blob gone; -EACCES: denied; -ETIMEDOUT: deadline;
 * -ECONNREFUSED / -EHOSTUNREACH: origin down; -EREMOTEIO: HTTP error; -EPROTO: bad answer).
 * It runs on the origin thread and must not block. */
typedef void (*origin_done_fn)(void *ud, int err, const char *reason, uint8_t *buf, size_t len,
                               const struct chunk_check *chk);

int origin_new(const struct origin_config *cfg, struct origin **ret);

/* Stops the thread; pending fetches complete with -ECANCELED. NULL-safe. */
void origin_free(struct origin *o);

/* Queues a GET of LEN bytes at OFF of BLOB from SOURCE ("registry/repository"), retried until
 * DEADLINE_MS (now_ms() clock). DONE is called exactly once, possibly before this returns when
 * SOURCE is malformed. Never blocks. */
void origin_fetch(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                  size_t len, uint64_t deadline_ms, origin_done_fn done, void *ud);

/* As origin_fetch(), for the N consecutive chunks of CHUNK_SIZE bytes that cover [OFF, END)
 * (the last one may be shorter), with ONE ranged GET: the registry's cost per request is paid
 * once per run, not per chunk. DONE(UDS[i], ...) is called exactly once for chunk i, in order,
 * each as soon as its bytes have arrived (the first chunk's readers do not wait for the rest).
 * A failure that is retried asks only for the chunks not delivered yet; one that is not fails
 * them all. UDS is copied. Memory: one chunk buffer per run being received. Never blocks. */
void origin_fetch_run(struct origin *o, const char *source, const struct digest *blob, uint64_t off,
                      uint64_t end, size_t chunk_size, unsigned n, uint64_t deadline_ms,
                      origin_done_fn done, void *const *uds);

/* Asks the origin for BLOB's size (HEAD), blocking the caller until the answer or DEADLINE_MS.
 * 0 and *RET_SIZE, or -errno with REASON filled. For the control thread, never the FUSE path. */
int origin_blob_size(struct origin *o, const char *source, const struct digest *blob,
                     uint64_t deadline_ms, uint64_t *ret_size, char *reason, size_t reason_len);

#define ORIGIN_MEDIA_TYPE_MAX 256

/* What a registry said about a manifest (or index, or artifact). */
struct origin_manifest {
        char media_type[ORIGIN_MEDIA_TYPE_MAX]; /* its Content-Type; "" when none was sent */
        struct digest digest;                   /* its Docker-Content-Digest, when has_digest */
        bool has_digest;
        uint64_t size; /* GET: the body's length; HEAD: Content-Length (0 when absent) */
        uint8_t *body; /* GET: malloc'd body, the caller frees it; HEAD: NULL */
};

/* GETs (HEAD false) or HEADs the manifest REFERENCE (a tag, or "sha256:<hex>") of SOURCE
 * ("registry/repository"), accepting the OCI and Docker manifest and index types and, last,
 * any other. One attempt, no retries (the mirror's client falls back to the origin by itself,
 * so retrying here would only make it wait); auth and redirects as for blobs. Blocks the
 * caller until the answer or DEADLINE_MS. The body is NOT verified: the caller compares it
 * with the digest it asked for. 0 and *RET; -EINVAL (malformed reference), -ENOENT (404),
 * -EACCES, -ECONNREFUSED / -ETIMEDOUT (unreachable), -EREMOTEIO (5xx, 429), -EFBIG (larger
 * than MAX_LEN), -EPROTO, with REASON filled. */
int origin_manifest(struct origin *o, const char *source, const char *reference, bool head,
                    size_t max_len, uint64_t deadline_ms, struct origin_manifest *ret, char *reason,
                    size_t reason_len);

struct origin_stats {
        uint64_t bytes;    /* body bytes received for blob GETs that succeeded */
        uint64_t requests; /* blob GET attempts started */
        uint64_t errors;   /* attempts that failed, all causes */
        /* ... by cause */
        uint64_t err_connect;   /* refused, unreachable, unresolvable */
        uint64_t err_timeout;   /* connect, stall or deadline */
        uint64_t err_http;      /* 5xx and 429 */
        uint64_t err_not_found; /* 404 */
        uint64_t err_denied;    /* 401/403, token refused */
        uint64_t err_protocol;  /* TLS, redirects, Range not honoured, odd answers */
        unsigned active;        /* transfers running now */
        unsigned queued;        /* waiting for a connection slot or a retry */
};
void origin_get_stats(struct origin *o, struct origin_stats *ret);
