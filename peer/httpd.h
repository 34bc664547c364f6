/* The node's HTTP server on --listen (default 0.0.0.0:5001): health and metrics today; the
 * peer blob protocol (GET /v2/<name>/blobs/sha256:<hex>) joins it with peer support.
 *
 *   GET /healthz  200 while the process serves HTTP at all (liveness)
 *   GET /readyz   200 once the mount answers and until shutdown begins, else 503
 *   GET /metrics  Prometheus text exposition
 *
 * Answers never depend on other nodes, so probes cost the same at any cluster size. One
 * polling thread; at most HTTPD_MAX_CONNECTIONS connections, each with a timeout. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#define HTTPD_MAX_CONNECTIONS 64

struct httpd;

struct httpd_ops {
        void *ud;
        bool (*ready)(void *ud);
        /* A malloc'd Prometheus text body in *RET (the server frees it). 0 or -errno. */
        int (*metrics)(void *ud, char **ret, size_t *ret_len);
};

/* Listens on LISTEN ("host:port", "[v6]:port"). 0, -EINVAL (malformed), -errno (bind). */
int httpd_start(const char *listen, const struct httpd_ops *ops, struct httpd **ret);

void httpd_stop(struct httpd *h); /* NULL-safe */
