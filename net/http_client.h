/* One HTTP client for the node: a job queue over ONE curl multi loop on one thread, shared by
 * every module that speaks HTTP outward (membership probes, announces, later the registry and
 * peer clients), so the daemon runs one loop, one connection cache and one set of bounds
 * instead of one skeleton per module (issue 12).
 *
 * Jobs. A caller fills a struct http_request and submits it: asynchronously with a completion
 * callback (http_client_submit), or blocking until the answer (http_client_run). Jobs start in
 * arrival order (first submitted, first started), subject to two bounds: at most
 * max_inflight transfers at once, and at most per_host of them to one host ("host:port" of
 * the URL); a job held back by its host's cap does not hold back jobs to other hosts. At most
 * max_queued jobs wait; past that a submit is refused with -EAGAIN (the caller's back
 * pressure, never an unbounded queue).
 *
 * Time. Each job may carry an absolute deadline (now_ms() clock): a job still queued at its
 * deadline completes with -ETIMEDOUT without being sent, one running is cut off then. A stall
 * time ends a transfer that received no byte (header or body) for that long, counted from the
 * moment it started; a connect timeout bounds the TCP/TLS connect. A start time (not before)
 * lets a caller queue a retry after a backoff without a timer of its own.
 *
 * Answers. The final response's status, its headers (raw lines, bounded by header_max; an
 * earlier redirect's or 100's headers are dropped) and its body: kept in a bounded buffer
 * (body_max; one byte more ends the transfer with -EFBIG), or streamed to on_data as it
 * arrives (the registry client completes each chunk of a run as soon as its bytes are in).
 * Connections are kept alive in the multi's cache and reused by later jobs to the same host.
 *
 * Errors. Every completion carries err (0 when an HTTP answer arrived in full, whatever its
 * status; -errno when none did) and class, one net/fetch_err class computed from curl's code
 * and the status in one place (http_classify()), so callers decide fail-over with
 * fetch_err_is_peer_fault()/fetch_err_is_transient() instead of lists of codes.
 *
 * Threads and ownership. Submit, run, group calls and stats are thread-safe. Callbacks
 * (on_data, done) run on the client's thread, one at a time, and must not block nor call
 * http_client_run, http_group_close or http_client_free (they may submit). The request's
 * strings and header lines are copied at submit; its POST body is borrowed until done. A
 * response is the client's: valid during done, whose callee may take its buffers
 * (dynbuf_take). Every job whose submit returned 0 completes exactly once.
 *
 * Groups. A module that shares the client makes a group and tags its jobs with it; closing the
 * group cancels its jobs still queued or running (-ECANCELED), refuses new ones, and returns
 * once every one of them has completed, so the module may be freed while the client lives on.
 * http_client_free() does the same for every job: pending ones complete with -ECANCELED.
 * A group may also cap how many of its jobs run at once, and how many of them run at once to
 * one host (the peer source's max_total and max_per_peer); a job at either cap is skipped like
 * a host at the client's cap.
 *
 * Calls. http_client_call() queues a job with no transfer: a function run on the client's
 * thread (at once, or at a start time), in the same order as the other jobs and taking no
 * transfer slot. A module whose state belongs to the client's thread uses it to hand work to
 * that thread from others, and as a timer; a group's close cancels its calls like its jobs.
 *
 * Costs: one thread; per running job an easy handle, its receive buffer (recv_buffer) and its
 * body buffer; per queued job a small record. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/fetch_err.h"
#include "util/dynbuf.h"

#define HTTP_CLIENT_MAX_INFLIGHT 64
#define HTTP_CLIENT_MAX_QUEUED 4096
#define HTTP_CLIENT_CONNECT_TIMEOUT_MS 5000
#define HTTP_CLIENT_HEADER_MAX (16 << 10) /* default cap on one response's header lines */
#define HTTP_CLIENT_RECV_BUFFER (512 << 10)
#define HTTP_CLIENT_HEADERS_MAX 16 /* request header lines per job */
#define HTTP_CLIENT_URL_MAX 4096
#define HTTP_CLIENT_REASON_MAX 256

struct http_client;
struct http_group;

struct http_client_config {
        unsigned max_inflight;       /* transfers at once; 0: HTTP_CLIENT_MAX_INFLIGHT */
        unsigned per_host;           /* transfers at once to one host; 0: max_inflight */
        size_t max_queued;           /* jobs waiting to start; 0: HTTP_CLIENT_MAX_QUEUED */
        uint64_t connect_timeout_ms; /* default of requests that set none; 0: 5 s */
        const char *user_agent;      /* NULL: "p2pblobs/0.1" */
};

struct http_response {
        int err;               /* 0: an answer came in full (see status); else -errno */
        enum fetch_err fclass; /* FETCH_OK only for err 0 and a 2xx status */
        long status;           /* the final response's HTTP status; 0 when none came */
        int curl_code;         /* CURLcode of the transfer */
        char reason[HTTP_CLIENT_REASON_MAX]; /* for people; "" when fclass is FETCH_OK */
        struct dynbuf headers;  /* the final response's header lines, "Name: value\r\n" each */
        struct dynbuf body;     /* the body, unless streamed to on_data */
        int64_t content_length; /* as the server announced it; -1 when it did not */
        uint64_t ttfb_us;       /* start of the transfer to its first byte; 0: none came */
        long new_connections;   /* connections opened for it (0: a kept-alive one reused) */
        bool started;           /* it was sent (false: it ended in the queue) */
};

/* Body bytes as they arrive. 0 to go on; a -errno ends the transfer with that err (and class
 * LOCAL, unless the callee sets the class in RESP). RESP is the job's response so far (its
 * status and headers are the final response's). */
typedef int (*http_data_fn)(void *ud, struct http_response *resp, const uint8_t *data, size_t n);
typedef void (*http_done_fn)(void *ud, struct http_response *resp);

struct http_request {
        const char *method; /* "GET" (NULL), "HEAD" or "POST" */
        const char *url;
        const char *headers[HTTP_CLIENT_HEADERS_MAX]; /* "Name: value", NULL-terminated early */
        const char *range;                            /* "first-last" for a GET, or NULL */
        const void *post_body;                        /* POST: borrowed until done */
        size_t post_len;
        const char *protocols;       /* curl's list, NULL: "http,https" */
        const char *redir_protocols; /* NULL: as protocols */
        unsigned max_redirects;      /* 0: redirects are not followed */
        bool no_proxy;               /* peers are never behind a proxy */
        bool fresh_connection;       /* a new connection, closed after: no stale reuse */
        const char *ca_file;         /* NULL: the system's */
        const char *userpwd;         /* "user:password" for basic auth, or NULL */
        uint64_t deadline_ms;        /* absolute, now_ms(); 0: none */
        uint64_t not_before_ms;      /* absolute: start no earlier; 0: at once */
        uint64_t connect_timeout_ms; /* 0: the client's */
        uint64_t stall_ms;           /* no byte for this long ends it; 0: never */
        uint64_t max_time_ms;        /* running longer than this ends it (-ETIMEDOUT); 0: never */
        size_t body_max;             /* cap on a kept body (no on_data); 0: the body is dropped */
        size_t header_max;           /* 0: HTTP_CLIENT_HEADER_MAX */
        size_t recv_buffer;          /* curl's receive buffer; 0: curl's default */
        http_data_fn on_data;        /* NULL: the body goes to resp->body */
        http_done_fn done;           /* submit: required; run: ignored */
        void *ud;                    /* done's (run: on_data's too) */
        void *data_ud;               /* on_data's; NULL: ud */
        struct http_group *group;    /* NULL: none */
        /* Asked on the client's thread when the job's turn to start comes (its start time
         * passed, every cap allows it), with on_data's ud: false drops it unsent, completing
         * with -ESTALE (class LOCAL, started false), as when what it was for went away while
         * it waited (the peer source: a peer marked down). NULL: always started. */
        bool (*may_start)(void *ud);
};

/* Starts the client's thread. 0 or -errno. */
int http_client_new(const struct http_client_config *cfg, struct http_client **ret);

/* Stops the thread: every job not completed yet completes with -ECANCELED, then frees. Not
 * from a callback. NULL-safe. */
void http_client_free(struct http_client *c);

/* Queues REQ. 0: REQ->done will be called exactly once, on the client's thread (never before
 * this returns). -EAGAIN (max_queued jobs wait), -ECANCELED (stopping, or REQ's group is
 * closed), -EINVAL (no URL or done, a URL over HTTP_CLIENT_URL_MAX, an unknown method), -ENOMEM:
 * then done is never called. Never blocks on the network. */
int http_client_submit(struct http_client *c, const struct http_request *req);

/* Queues a call of FN(UD, RESP) on the client's thread, once NOT_BEFORE_MS (absolute, now_ms();
 * 0: at once) has come, tagged with group G (may be NULL). RESP->err is 0, or -ECANCELED when
 * the call was cancelled (G closed, the client stopping) before it was due; FN runs exactly
 * once either way, under the callbacks' rules (it may submit or call again, must not block).
 * 0; -EAGAIN, -ECANCELED, -EINVAL (no FN), -ENOMEM as http_client_submit (then FN never runs). */
int http_client_call(struct http_client *c, struct http_group *g, uint64_t not_before_ms,
                     http_done_fn fn, void *ud);

/* Submits REQ (done and ud are ignored) and waits for its end, filling *RESP (the caller
 * frees it with http_response_clear). Returns RESP->err, or the submit's -errno (then RESP
 * is cleared, its err set and reason filled). Blocks; never on the client's own thread
 * (-EDEADLK). */
int http_client_run(struct http_client *c, const struct http_request *req,
                    struct http_response *resp);

/* Frees RESP's buffers; it may be reused. */
void http_response_clear(struct http_response *resp);

/* The value of header NAME (case-insensitive) in RESP's captured headers into OUT (cut to
 * LEN - 1 bytes, leading and trailing blanks dropped). 0; -ENOENT when absent. */
int http_response_header(const struct http_response *resp, const char *name, char *out, size_t len);

/* The class of a transfer that ended with curl CODE and HTTP STATUS (both as reported): curl's
 * failure first, else the status. The client's one classification; pure. */
enum fetch_err http_classify(int curl_code, long status);

/* A group of jobs that can be cancelled together (see above), of which at most MAX_INFLIGHT
 * run at once (0: no cap of its own): a module's share of the client (the registry client's
 * connection limit). 0 or -ENOMEM. */
int http_group_new(struct http_client *c, unsigned max_inflight, struct http_group **ret);

/* As http_group_new, and at most PER_HOST of the group's jobs run at once to one host ("host:port"
 * of their URLs; 0: no cap of its own), under the client's own per_host. */
int http_group_new_per_host(struct http_client *c, unsigned max_inflight, unsigned per_host,
                            struct http_group **ret);

/* The group's jobs running now and waiting (queued, or for their start time). */
void http_group_counts(struct http_group *g, unsigned *ret_active, unsigned *ret_waiting);

/* Cancels the group's jobs (queued or running complete with -ECANCELED), refuses new ones, and
 * waits until every job of the group has completed. Not from a callback. NULL-safe;
 * idempotent. */
void http_group_close(struct http_group *g);

/* Closes G (if it is not) and frees it. NULL-safe. */
void http_group_free(struct http_group *g);

struct http_client_stats {
        uint64_t jobs;     /* completed (calls are not counted) */
        uint64_t failures; /* completed with fclass != FETCH_OK */
        uint64_t stalls;   /* ended by the stall time */
        uint64_t refused;  /* submits refused with -EAGAIN */
        uint64_t connects; /* connections opened */
        unsigned active;   /* transfers running now */
        unsigned queued;   /* jobs waiting now */
};
void http_client_get_stats(struct http_client *c, struct http_client_stats *ret);
