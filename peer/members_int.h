/* The membership's private header: its state and the helpers shared by members.c (the
 * thread, probes, persistence, the interface) and members_refresh.c (a refresh: resolve the
 * names, merge the answer). Nothing outside peer/members*.c includes it. */
#ifndef P2PBLOBS_PEER_MEMBERS_INT_H
#define P2PBLOBS_PEER_MEMBERS_INT_H

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "peer/members.h"
#include "util/digest.h"
#include "util/log.h"

#define BACKOFF_START_MS 250
#define BACKOFF_MAX_MS 10000
#define DECAY_INTERVAL_MS 60000
#define FIRST_RESOLVE_WAIT_MS 3000 /* members_new() waits this long for the first refresh */
#define RESOLVE_STEP_MS 100        /* how often a pending resolution checks for stop */
#define RESOLVE_MAX_MS 15000       /* a resolution slower than this is abandoned */
#define STATE_LOG_INTERVAL_MS 5000 /* peer up/down lines */
#define HOST_MAX 256
#define ID_LIST_LOG_MAX 512 /* joined=/left= lists are cut beyond this */
#define CAND_MAX_FACTOR 16  /* records one refresh may hold before the cap: x max_peers */
/* Digests whose homes are remembered (80 bytes each: 1.25 MiB). A full announce round asks
 * for the homes of every blob the node holds, so the cache should exceed that count: at
 * 5000 members a round over 2000 blobs cost 380 ms of CPU with 1024 slots, 2.5 ms with
 * every blob cached. */
#define HOMES_CACHE_SLOTS 16384
#define MEMBERS_MAX_PEERS 65536 /* member indexes fit the cache's uint16_t */

struct member {
        struct peer_info info;       /* info.id is the sort key */
        char addr[INET6_ADDRSTRLEN]; /* numeric, without brackets */
        uint16_t port;
        unsigned missing;       /* refreshes in a row that did not return it */
        uint64_t backoff_ms;    /* while down: the current probe interval */
        uint64_t next_probe_ms; /* while down: when to probe (monotonic) */
        bool probing;           /* a probe is in flight */
};

/* The homes of one digest at one membership version, as indexes into members.v (which only
 * moves when the version changes). A reader asks for a blob's homes on every chunk miss, and
 * each computation scores every member: 5000 scores per 1 MiB chunk at 5000 members. */
struct homes_entry {
        struct digest d;
        uint64_t version;
        uint8_t k, got; /* k == 0: empty slot */
        uint16_t idx[MEMBERS_MAX_HOMES];
};

struct static_peer {
        char host[HOST_MAX];
        uint16_t port;
        bool numeric;
};

/* A member found by one refresh. */
struct cand {
        char id[PEER_ID_MAX];
        char addr[INET6_ADDRSTRLEN];
        uint16_t port;
        bool from_static, from_dns, is_self;
};

/* A probe in flight: what its completion needs. */
struct probe {
        struct members *m;
        char id[PEER_ID_MAX];
};

struct members {
        /* Immutable after members_new(). */
        struct static_peer *statics;
        size_t n_static;
        char *dns_name;
        char *advertise; /* normalised --advertise-address; NULL when none */
        uint16_t peer_port, listen_port;
        uint64_t refresh_ms, probe_timeout_ms;
        size_t max_peers;
        struct netlink *nl;
        struct index *ix;

        pthread_mutex_t lock;
        pthread_cond_t wake;             /* lock: stop, new failures, first refresh done */
        struct member *v;                /* lock: n sorted by id, capacity max_peers */
        const char **id_ptrs;            /* lock: scratch for rendezvous hashing, max_peers */
        struct homes_entry *homes_cache; /* lock: HOMES_CACHE_SLOTS, direct-mapped */
        bool manual;                     /* no thread: members_update() is the only refresh */
        size_t n;                        /* lock */
        uint64_t version;                /* lock: bumped when the set changes */
        char self[PEER_ID_MAX];          /* lock: "" when not known */
        bool resolved_once;              /* lock */
        bool persist_dirty;              /* lock: changed since the last idx_put_peers */
        uint64_t rng;                    /* lock: jitter */
        atomic_bool stopping;            /* read without the lock by the resolver's wait loop */
        atomic_bool refresh_now;         /* the advertised address changed: refresh at once */
        struct log_ratelimit rl;         /* up/down lines */

        /* Probes go through HTTP (borrowed, or our own when the config gave none); GROUP
         * tags them so members_free() can cancel them and wait for their completions. */
        struct http_client *http;
        bool own_http;
        struct http_group *group;
        size_t inflight; /* lock: probes submitted and not completed */

        /* The thread's own. */
        pthread_t thread;
        struct cand *cand; /* an answer before dedupe_cands(): cand_cap, from 2 x max_peers + 1
                              up to CAND_MAX_FACTOR x max_peers + 1 */
        size_t cand_cap;
};

/* "ADDR:PORT", or "[ADDR]:PORT" for IPv6, into OUT. */
void members_format_id(const char *addr, uint16_t port, char out[PEER_ID_MAX]);
/* Canonical numeric text of S (brackets accepted) into OUT; -EINVAL when not numeric. */
int members_normalise_addr(const char *s, char out[INET6_ADDRSTRLEN]);
/* Appends ",ID" to the LEN-byte LIST, or ",..." once when it does not fit. */
void members_append_id(char *list, size_t len, const char *id);
/* A sort key, lower is better: up, on-link, unknown, routed; then latency; then recent
 * failures. An unmeasured latency counts as 0, so a new peer gets tried and measured. */
uint64_t member_rank(const struct member *p);

/* Orders members by id (the array is kept sorted for bsearch). */
int member_cmp(const void *a, const void *b);

/* One refresh (members_refresh.c): resolves the static names and the DNS name, then merges
 * the answer into the members under the lock. The thread's (or members_update's) alone. */
void members_do_refresh(struct members *m);

#endif
