/* Wiring of the peer layer. See peers.h.
 *
 * Order matters and is the same in both directions: netlink -> members -> directory ->
 * source -> (engine) -> announcer at start, the reverse at stop. The engine's change hook
 * may fire before the announcer exists (engine_load registers every blob); it reads the
 * announcer pointer atomically and drops the news, which the announcer's first round —
 * always a full one — makes up for. */
#include "fs/peers.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "peer/announce.h"
#include "peer/directory.h"
#include "peer/httpd.h"
#include "peer/members.h"
#include "net/netlink.h"
#include "peer/source.h"
#include "util/log.h"
#include "util/parse.h"

#define CLAIM_TTL_MS 10000 /* a claimant that has not announced the chunk by then lost it */
#define CLAIM_WAIT_MS 5000 /* how long a reader waits on a claimant for a chunk */
#define MAX_PER_PEER 8

/* A digest question a home holds keeps its connection's thread (dir_wait_digest): with the
 * most the option allows held, and every chunk waiter, a quarter of the peer server's
 * connections stay free for announces, locates and chunk answers. */
_Static_assert(CONFIG_DIGEST_WAITERS_MAX + HTTPD_MAX_WAITERS <= HTTPD_MAX_CONNECTIONS * 3 / 4,
               "--digest-waiters could take the peer server's connections");

/* This daemon's boot id (peer/wire.h), drawn in peers_start(). */
static uint64_t boot_id;

/* The boot id each node last announced with, so a restarted home (it lost its directory) is
 * noticed and sent everything soon. A small hashed table: a collision only costs a full
 * announce round more (the announcer allows one a second). */
#define BOOT_SLOTS 1024
static struct {
        char node[PEER_ID_MAX];
        uint64_t boot;
} boots[BOOT_SLOTS];
static pthread_mutex_t boots_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether NODE's announce carries a boot id other than the one it last sent us. */
static bool boot_changed(const char *node, uint64_t boot) {
        uint64_t h = 1469598103934665603ull; /* FNV-1a */
        for (const char *p = node; *p; p++)
                h = (h ^ (uint8_t)*p) * 1099511628211ull;
        size_t i = (size_t)(h % BOOT_SLOTS);
        pthread_mutex_lock(&boots_lock);
        bool changed = boots[i].boot != boot || strcmp(boots[i].node, node) != 0;
        if (changed) {
                snprintf(boots[i].node, sizeof(boots[i].node), "%s", node);
                boots[i].boot = boot;
        }
        pthread_mutex_unlock(&boots_lock);
        return changed;
}

/* Layer indexes published before the announcer exists (the trees load the indexes in the
 * store at ltree_new, maybe before peers_start_announcer), handed over when it starts. The
 * lock also orders publish against announcer start and stop: a publish never reaches a
 * freed announcer, and none is lost between "no announcer yet" and the hand-over. */
static pthread_mutex_t publish_lock = PTHREAD_MUTEX_INITIALIZER; /* pending, d->announcer swap */
static struct wire_index pending[ANNOUNCE_INDEX_MAX];
static size_t npending;

/* The cluster token (--cluster-token-file), read once at start; "" when none. */
static char cluster_token[HTTPD_TOKEN_MAX + 1];

static const char *token(void) {
        return cluster_token[0] ? cluster_token : NULL;
}

static bool peered(const struct daemon *d) {
        return d->cfg.n_peers > 0 || d->cfg.peer_dns;
}

/* The source was granted a claim: the announcer announces the chunk as soon as it lands. */
static void on_claimed(void *ud, const struct digest *blob, uint32_t idx) {
        struct daemon *d = ud;
        struct announcer *a = __atomic_load_n(&d->announcer, __ATOMIC_ACQUIRE);
        if (a)
                announce_claimed(a, blob, idx);
}

/* Netlink thread: our address changed. The membership re-reads it at once; our id changes
 * with it, which changes the membership's version, so the announcer's next round is a full
 * announce under the new id (and the old id expires at the homes). */
static pthread_mutex_t members_lock = PTHREAD_MUTEX_INITIALIZER; /* d->members vs netlink */

static void on_address_change(void *ud) {
        struct daemon *d = ud;
        log_notice("advertised address changed; announcing again");
        /* Under the lock: peers_stop() frees the membership only after taking it, so a late
         * event never reaches a freed one. members_refresh_soon() never blocks. */
        pthread_mutex_lock(&members_lock);
        if (d->members)
                members_refresh_soon(d->members);
        pthread_mutex_unlock(&members_lock);
}

int peers_start(struct daemon *d) {
        if (!peered(d))
                return 0;
        char host[256];
        uint16_t port = 0;
        if (parse_hostport(d->cfg.listen, host, sizeof(host), &port) < 0) {
                log_err("peers need the HTTP server: set --listen ADDR:PORT");
                return -EINVAL;
        }
        int r;
        if (getrandom(&boot_id, sizeof(boot_id), GRND_NONBLOCK) != sizeof(boot_id))
                boot_id = now_ms() ^ ((uint64_t)getpid() << 32);
        boot_id &= INT64_MAX;
        if (!boot_id)
                boot_id = 1;
        if (d->cfg.cluster_token_file) {
                r = httpd_read_token(d->cfg.cluster_token_file, cluster_token);
                if (r < 0) {
                        log_err("cannot read the cluster token path=%s err=%s hint=\"one line of "
                                "printable ASCII, at most %d bytes\"",
                                d->cfg.cluster_token_file, strerror(-r), HTTPD_TOKEN_MAX);
                        return r;
                }
        }
        r = nl_open(d->cfg.advertise_address, on_address_change, d, &d->nl);
        if (r < 0) {
                log_warning("netlink unavailable err=%s hint=\"peer locality is unknown; set "
                            "--advertise-address\"",
                            strerror(-r));
                d->nl = NULL;
        }
        struct members_config mc = {
                .static_peers = (const char *const *)d->cfg.peers,
                .n_static = d->cfg.n_peers,
                .dns_name = d->cfg.peer_dns,
                .peer_port = (uint16_t)d->cfg.peer_port,
                .listen_port = port,
                .refresh_ms = d->cfg.peer_refresh_ms,
                .probe_timeout_ms = d->cfg.peer_connect_timeout_ms * 4,
                .max_peers = d->cfg.max_peers,
                .nl = d->nl,
                .advertise = d->cfg.advertise_address,
                .ix = d->ix,
                .http = d->http,
        };
        struct members *members = NULL;
        r = members_new(&mc, &members);
        if (r < 0) {
                log_err("cannot start membership err=%s", strerror(-r));
                return r;
        }
        pthread_mutex_lock(&members_lock);
        d->members = members;
        pthread_mutex_unlock(&members_lock);
        struct dir_config dc = {
                .chunk_size = (uint32_t)d->cfg.chunk_size,
                .max_blobs = d->cfg.max_blobs,
                .max_holders = d->cfg.max_holders,
                .ttl_ms = d->cfg.location_ttl_ms,
                .claim_ttl_ms = CLAIM_TTL_MS,
                .locate_rate = (uint32_t)d->cfg.home_locate_rate,
                .max_digest_waiters = (unsigned)d->cfg.digest_waiters,
        };
        r = dir_new(&dc, &d->dir);
        if (r < 0) {
                log_err("cannot create the directory err=%s", strerror(-r));
                return r;
        }
        struct source_config sc = {
                .origin = d->origin,
                .members = d->members,
                .dir = d->dir,
                .ix = d->ix,
                .location_ttl_ms = d->cfg.location_ttl_ms,
                .chunk_size = (uint32_t)d->cfg.chunk_size,
                .homes = (unsigned)d->cfg.homes,
                .connect_timeout_ms = d->cfg.peer_connect_timeout_ms,
                .stall_timeout_ms = d->cfg.peer_stall_timeout_ms,
                .claim_wait_ms = CLAIM_WAIT_MS,
                .digest_wait_ms = d->cfg.announce_interval_ms * 4 + 1000,
                .origin_reserve_ms = d->cfg.fetch_timeout_ms / 2,
                .http = d->http,
                .max_total = PEERS_MAX_TRANSFERS,
                .max_per_peer = MAX_PER_PEER,
                .token = token(),
                .claimed = on_claimed,
                .claimed_ud = d,
        };
        r = source_new(&sc, &d->source);
        if (r < 0) {
                log_err("cannot start the peer client err=%s", strerror(-r));
                return r;
        }
        char self[PEER_ID_MAX] = "";
        members_self(d->members, self, sizeof(self));
        log_info("peers enabled self=%s static=%zu dns=%s homes=%" PRIu64, self[0] ? self : "-",
                 d->cfg.n_peers, d->cfg.peer_dns ? d->cfg.peer_dns : "-", d->cfg.homes);
        return 0;
}

static void on_engine_change(void *ud, const struct digest *blob, uint32_t idx) {
        struct daemon *d = ud;
        struct announcer *a = __atomic_load_n(&d->announcer, __ATOMIC_ACQUIRE);
        if (a)
                announce_changed(a, blob, idx);
}

void peers_engine_config(struct daemon *d, struct engine_config *ec) {
        if (!peered(d))
                return;
        ec->on_change = on_engine_change;
        ec->change_ud = d;
}

static uint32_t ops_count(void *ud) {
        struct daemon *d = ud;
        return engine_blob_count(d->engine);
}

static int ops_snapshot(void *ud, uint32_t id, uint32_t from, uint32_t to, struct wire_blob *ret) {
        struct daemon *d = ud;
        struct engine_blob_snapshot s;
        int r = engine_snapshot(d->engine, id, from, to, &s);
        if (r < 0)
                return r;
        /* The engine's snapshot in the announce's wire form: the arrays change hands. */
        *ret = (struct wire_blob){.digest = s.digest,
                                  .size = s.size,
                                  .nchunks = s.nchunks,
                                  .verified = s.verified,
                                  .present = s.present,
                                  .ndigests = s.ndigests,
                                  .sha_idx = s.sha_idx,
                                  .sha = s.sha,
                                  .nchain = s.nchain, /* over the same range as the digests */
                                  .chain_idx = s.chain_idx,
                                  .chain = s.chain};
        _Static_assert(sizeof(ret->source) == sizeof(s.source), "source fields differ");
        memcpy(ret->source, s.source, sizeof(ret->source));
        return 0;
}

static int ops_find(void *ud, const struct digest *dg, uint32_t *ret_id) {
        struct daemon *d = ud;
        struct engine_blob_info b;
        int r = engine_find(d->engine, dg, &b);
        if (r == 0)
                *ret_id = b.id;
        return r;
}

int peers_start_announcer(struct daemon *d) {
        if (!peered(d))
                return 0;
        struct announce_config ac = {
                .ops = {.ud = d, .count = ops_count, .snapshot = ops_snapshot, .find = ops_find},
                .members = d->members,
                .dir = d->dir,
                .chunk_size = (uint32_t)d->cfg.chunk_size,
                .homes = (unsigned)d->cfg.homes,
                .interval_ms = d->cfg.announce_interval_ms,
                .refresh_ms = d->cfg.location_ttl_ms / 3,
                .timeout_ms = d->cfg.peer_connect_timeout_ms * 4,
                .token = token(),
                .boot = boot_id,
                .http = d->http,
        };
        struct announcer *a = NULL;
        int r = announce_new(&ac, &a);
        if (r < 0) {
                log_err("cannot start the announcer err=%s", strerror(-r));
                return r;
        }
        pthread_mutex_lock(&publish_lock);
        __atomic_store_n(&d->announcer, a, __ATOMIC_RELEASE);
        for (size_t i = 0; i < npending; i++)
                announce_index(a, &pending[i].layer, &pending[i].index, pending[i].size);
        npending = 0;
        pthread_mutex_unlock(&publish_lock);
        return 0;
}

/* ---- layer indexes (layertree.h's peer ops) ------------------------------------------------- */

static int lt_locate_index(void *ud, const struct digest *layer, uint64_t deadline_ms,
                           struct digest *ret_index, uint64_t *ret_size) {
        struct daemon *d = ud;
        if (!d->source)
                return -ENOTCONN;
        /* The digest comes from a home of the layer (or our own directory when we are one),
         * never from the node that will send the index's bytes; the trees check those bytes
         * against it before decoding. */
        return source_locate_index(d->source, layer, deadline_ms, ret_index, ret_size);
}

static void lt_publish_index(void *ud, const struct digest *layer, const struct digest *index,
                             uint64_t size) {
        struct daemon *d = ud;
        pthread_mutex_lock(&publish_lock);
        struct announcer *a = __atomic_load_n(&d->announcer, __ATOMIC_ACQUIRE);
        int r = 0;
        if (a) {
                r = announce_index(a, layer, index, size);
        } else {
                size_t i = 0;
                while (i < npending && !digest_equal(&pending[i].layer, layer))
                        i++;
                if (i < ANNOUNCE_INDEX_MAX) {
                        pending[i] =
                                (struct wire_index){.layer = *layer, .index = *index, .size = size};
                        if (i == npending)
                                npending++;
                } else {
                        r = -ENOSPC;
                }
        }
        pthread_mutex_unlock(&publish_lock);
        if (r == -ENOSPC) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
                uint64_t suppressed = 0;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_notice("layer index not shared: this node announces %d already "
                                   "hint=\"other nodes build the index of this layer "
                                   "themselves\" suppressed=%" PRIu64,
                                   ANNOUNCE_INDEX_MAX, suppressed);
        }
}

static struct ltree_peer_ops ltree_ops;

const struct ltree_peer_ops *peers_ltree_ops(struct daemon *d) {
        if (!peered(d))
                return NULL;
        ltree_ops = (struct ltree_peer_ops){
                .ud = d, .locate_index = lt_locate_index, .publish_index = lt_publish_index};
        return &ltree_ops;
}

/* ---- the peer protocol's handlers ----------------------------------------------------------- */

static int op_blob_size(void *ud, const struct digest *dg, uint64_t *ret) {
        struct daemon *d = ud;
        return engine_blob_size(d->engine, dg, ret);
}

static int op_blob_read(void *ud, const struct digest *dg, uint64_t off, size_t len,
                        uint64_t wait_ms, void *buf, struct digest *ret_sha, bool *ret_known) {
        struct daemon *d = ud;
        return engine_serve(d->engine, dg, off, len, wait_ms, buf, ret_sha, ret_known);
}

static int op_announce(void *ud, const char *body, size_t len, char **ret_body, size_t *ret_len,
                       char *reason, size_t reason_len) {
        struct daemon *d = ud;
        struct wire_announce a;
        struct wire_reply full = {0};
        int r = wire_announce_parse(body, len, &a, reason, reason_len);
        if (r < 0) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed = 0;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_warning("malformed announce reason=\"%s\" suppressed=%" PRIu64, reason,
                                    suppressed);
                return r;
        }
        r = dir_apply_full(d->dir, &a, now_ms(), &full, reason, reason_len);
        /* The blobs we are full for: the announcer stops announcing them to us for a while
         * (peer/wire_reply.h). Without a body it would just keep announcing. */
        if (r >= 0 || r == -EINVAL) {
                if (full.nfull && wire_reply_build(&full, ret_body, ret_len) < 0)
                        *ret_body = NULL;
        }
        wire_reply_free(&full);
        if (r != -EPROTO && a.boot && boot_changed(a.node, a.boot)) {
                /* It restarted (or is new to us): if it is a home of what we hold, it knows
                 * nothing of it now. Readers there would otherwise wait a refresh for us. */
                struct announcer *an = __atomic_load_n(&d->announcer, __ATOMIC_ACQUIRE);
                if (an)
                        announce_home_restarted(an, a.node);
        }
        if (r == -EPROTO) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
                uint64_t suppressed = 0;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_warning(
                                "refused a peer with another chunk size node=%s chunk_size=%" PRIu32
                                " ours=%" PRIu64 " hint=\"every node must run the same "
                                "--chunk-size\" suppressed=%" PRIu64,
                                a.node, a.chunk_size, d->cfg.chunk_size, suppressed);
        }
        wire_announce_free(&a);
        return r == -EINVAL ? 0 : r; /* one odd blob does not refuse the rest */
}

static int op_locate(void *ud, const struct digest *dg, const char *claimant, int64_t chunk,
                     char **ret, size_t *ret_len) {
        struct daemon *d = ud;
        struct wire_locate l;
        int r = dir_locate(d->dir, dg, claimant, chunk, now_ms(), &l);
        if (r < 0)
                return r;
        r = wire_locate_build(&l, ret, ret_len);
        wire_locate_free(&l);
        return r;
}

static int op_locate_wait(void *ud, const struct digest *dg, uint32_t chunk, uint64_t wait_ms) {
        struct daemon *d = ud;
        return dir_wait_digest(d->dir, dg, chunk, now_ms(), wait_ms);
}

static int op_locate_index(void *ud, const struct digest *layer, char **ret, size_t *ret_len) {
        struct daemon *d = ud;
        struct wire_index x;
        int r = dir_locate_index(d->dir, layer, now_ms(), &x);
        if (r < 0)
                return r;
        return wire_index_build(&x, ret, ret_len);
}

static void op_served(void *ud, const char *client, uint64_t bytes) {
        struct daemon *d = ud;
        members_report_served(d->members, client, bytes);
}

void peers_httpd_ops(struct daemon *d, struct httpd_ops *ops) {
        ops->chunk_size = (uint32_t)d->cfg.chunk_size;
        /* Only a node with peers serves its chunks: one running alone has nobody to share
         * with, and --listen is often 0.0.0.0 (probes), where anyone could read them. */
        if (!peered(d))
                return;
        ops->token = token();
        ops->blob_size = op_blob_size;
        ops->blob_read = op_blob_read;
        ops->announce = op_announce;
        ops->locate = op_locate;
        ops->locate_wait = op_locate_wait;
        ops->locate_index = op_locate_index;
        ops->served = op_served;
}

void peers_stop_announcer(struct daemon *d) {
        pthread_mutex_lock(&publish_lock); /* no publish is inside announce_index() after this */
        struct announcer *a = __atomic_exchange_n(&d->announcer, NULL, __ATOMIC_ACQ_REL);
        pthread_mutex_unlock(&publish_lock);
        /* The change hook runs under the engine lock: once we have held it, no hook call that
         * loaded the old pointer is still running. */
        if (a && d->engine)
                engine_barrier(d->engine);
        announce_free(a);
}

void peers_stop_source(struct daemon *d) {
        source_free(d->source);
        d->source = NULL;
}

void peers_stop(struct daemon *d) {
        dir_free(d->dir);
        d->dir = NULL;
        pthread_mutex_lock(&members_lock);
        struct members *m = d->members;
        d->members = NULL;
        pthread_mutex_unlock(&members_lock);
        members_free(m);
        nl_free(d->nl);
        d->nl = NULL;
}
