/* The daemon's figures, described once: one table gives every figure's place in
 * `blobctl stat --json` (the control API's GET /v1/stat) and its Prometheus name, type and help
 * on GET /metrics, so the two views cannot drift apart.
 *
 * stats_collect() takes one snapshot of every module's counters; the two renderers walk the
 * table over that snapshot. Both run on the HTTP servers' threads and only read thread-safe
 * snapshots (engine, origin, peers, /proc and cgroup files). */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct daemon;

/* The JSON object for GET /v1/stat: every figure of the table under its group, plus the
 * daemon's identity (version, uptime, chunk size). NULL when out of memory. */
json_t *stats_json(struct daemon *d);

/* The Prometheus text exposition (format 0.0.4) of the table's exported figures into a buffer
 * the caller frees. 0 or -ENOMEM. */
int stats_prometheus(struct daemon *d, char **ret, size_t *ret_len);
