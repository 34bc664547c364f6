/* Membership and peer health: who the peers are, and which of them to ask first.
 *
 * Members come from a static list (--peers) and/or a DNS name (--peer-dns: a headless
 * Service whose A/AAAA records are the nodes, port --peer-port), re-resolved every
 * refresh interval on a thread of our own; nothing else — no leader, no consensus, so
 * start-up costs the same at any cluster size. A peer that leaves DNS is forgotten after a
 * grace of one more refresh (and is no longer a home); static peers stay.
 *
 * Health. A peer that fails a request is marked down at once (members_report_failure) and
 * readers skip it; the same thread probes down peers (GET /healthz, short connect timeout)
 * with exponential backoff and jitter, and marks them up when they answer. Latency is an
 * EWMA of successful requests' time to first byte.
 *
 * Ranking (members_rank_key): up before down; self never a source; on-link before routed
 * (netlink); then lower latency; then fewer recent failures.
 *
 * Bounds: at most max_peers members (DNS answers beyond that are ignored, with a log line).
 * Thread-safe: one mutex; calls never block on the network. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/netlink.h"
#include "peer/wire.h"

struct members;
struct index;
struct http_client;

struct members_config {
        const char *const *static_peers; /* "host:port" (host numeric or a name resolved once
                                            per refresh) */
        size_t n_static;
        const char *dns_name;      /* NULL: none */
        uint16_t peer_port;        /* port for DNS-discovered peers */
        uint16_t listen_port;      /* our own port: self id is "<advertised>:<listen_port>" */
        uint64_t refresh_ms;       /* DNS re-resolution interval */
        uint64_t probe_timeout_ms; /* connect + answer timeout of a health probe */
        size_t max_peers;          /* 1 .. 65536 */
        struct netlink *nl;    /* borrowed; NULL = locality unknown, self from --advertise only */
        const char *advertise; /* --advertise-address: self when NL is NULL (NL has it too) */
        struct index *ix;      /* borrowed, may be NULL: the snapshot is persisted there (at
                                  most once per refresh, and at members_free) */
        /* Health probes go through this client (borrowed; it must outlive the membership).
         * NULL: the membership makes one of its own (tests, tools). */
        struct http_client *http;
        /* No thread, no resolution, no probes: the membership changes only through
         * members_update(). For simulations (bench/sim) and tests; static_peers and dns_name
         * must be empty. */
        bool manual;
};

enum peer_state { PEER_UP = 0, PEER_DOWN };

struct peer_info {
        char id[PEER_ID_MAX];
        enum peer_state state;
        enum nl_locality locality;
        bool is_self;
        bool from_static, from_dns;
        uint64_t latency_us;      /* EWMA; 0 = not measured yet */
        uint64_t failures;        /* total */
        uint64_t recent_failures; /* decays: halved every minute */
        uint64_t bytes_from;      /* chunk bytes we fetched from it */
        uint64_t bytes_to;        /* chunk bytes we served to it */
        int64_t last_seen;        /* unix seconds of the last success; 0 = never */
};

/* Starts the membership thread; resolves once before returning (bounded by a few seconds)
 * so the first reads already know their peers. 0 or -errno. */
int members_new(const struct members_config *cfg, struct members **ret);
void members_free(struct members *m); /* NULL-safe; stops the thread */

/* Our own id ("addr:port") into OUT. 0 or -ENOENT (no advertised address known). */
int members_self(struct members *m, char *out, size_t len);

/* Copies the ids of every member into IDS (at most MAX), self included when known; returns
 * the count. The order is stable (sorted) so callers can hash it. Also *RET_VERSION (may be
 * NULL): bumped whenever the set changes. */
size_t members_ids(struct members *m, char (*ids)[PEER_ID_MAX], size_t max, uint64_t *ret_version);

/* Bumped whenever the set of members changes (homes may have moved). */
uint64_t members_version(struct members *m);

#define MEMBERS_MAX_HOMES 16

/* The K (at most MEMBERS_MAX_HOMES) homes of digest D among the members, self included, best
 * first (rendezvous hashing), into HOMES; returns how many. *RET_VERSION (may be NULL): the
 * membership's version they were computed from. O(members), never blocks. */
size_t members_homes(struct members *m, const struct digest *d, size_t k,
                     char (*homes)[PEER_ID_MAX], uint64_t *ret_version);

/* Whether ID is a member that is up and not self. */
bool members_usable(struct members *m, const char *id);

/* A sort key for choosing sources: lower is better; UINT64_MAX for self, unknown or down
 * peers. */
uint64_t members_rank_key(struct members *m, const char *id);

/* Request outcomes, from the peer client. Success records latency and bytes; failure marks
 * the peer down at once (the prober brings it back). Unknown ids are ignored. */
void members_report_success(struct members *m, const char *id, uint64_t latency_us, uint64_t bytes);
void members_report_failure(struct members *m, const char *id, const char *why);

/* Bytes served to the peer at numeric address ADDR (any port). */
void members_report_served(struct members *m, const char *addr, uint64_t bytes);

/* A malloc'd snapshot of every member (free() it) and its length. 0 or -ENOMEM. */
int members_snapshot(struct members *m, struct peer_info **ret, size_t *ret_n);

/* Re-reads our own address and resolves again now rather than at the next refresh (the
 * advertised address changed). Never blocks. */
void members_refresh_soon(struct members *m);

/* For a manual membership (members_config.manual): one refresh whose answer is the N
 * "addr:port" ids in IDS (numeric addresses), merged by the same rules as a resolution
 * (newcomers join, a member missing from two updates in a row leaves unless COMPLETE is
 * false, at most max_peers, the lowest ids kept). 0; -EINVAL for a malformed id or a
 * membership that is not manual. Never blocks. */
int members_update(struct members *m, const char *const *ids, size_t n, bool complete);

/* Up / known, self excluded. */
void members_counts(struct members *m, uint64_t *ret_up, uint64_t *ret_known);
