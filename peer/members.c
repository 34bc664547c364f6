/* Membership and peer health. See members.h for the contract.
 *
 * State: one sorted array of members (at most max_peers, self included), under one mutex.
 * Sorted by id so members_ids() is stable for rendezvous hashing and lookups are a bsearch.
 *
 * The thread does everything that may block: name resolution (getaddrinfo_a, waited on in
 * short steps so members_free() is not held up by a slow resolver), starting health probes
 * (jobs on the node's one HTTP client, net/http_client.h: all due probes at once; their
 * outcomes are applied by the client's thread, which then wakes ours), the decay of recent
 * failures and the persistence of the snapshot. Callers only take the mutex.
 *
 * Membership rules. A refresh builds the candidate set (static numeric peers, static names
 * and the DNS name resolved now) and merges it: new ids join (up until a request fails); an id
 * missing from one refresh is kept (a DNS answer can be partial during a rollout) and
 * forgotten when it is missing from a second one; when a lookup failed for another reason
 * than "no such name" nobody is aged at all, so a resolver outage does not empty the
 * membership. An address that is ours (the advertised one, or any of our addresses per
 * netlink) with our listen port is self, whatever list it came from, and self appears once.
 *
 * Health. A failure reported by a client marks the peer down at once; the thread probes it
 * (GET /healthz) after 250 ms, then at doubling intervals up to 10 s, each with +-50 % jitter
 * so that nodes that lost the same peer do not probe it in step. A 200 brings it back.
 *
 * Lock order: members.lock, then the HTTP client's lock (a probe is submitted with ours
 * held; submitting does no I/O), then the log rate limiter's lock (inside log_ratelimit_ok).
 * A probe's completion runs on the client's thread with none of the client's locks held and
 * takes ours. The index is called without the lock held.
 *
 * Costs: one thread; per refresh one resolution; per down peer one probe per backoff
 * interval; memory bounded by max_peers. */
#include "peer/members.h"
#include "peer/rendezvous.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index/index.h"
#include "net/http_client.h"
#include "util/log.h"
#include "util/parse.h"

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

/* ---- small helpers ------------------------------------------------------------------------ */

static void format_id(const char *addr, uint16_t port, char out[PEER_ID_MAX]) {
        if (strchr(addr, ':'))
                snprintf(out, PEER_ID_MAX, "[%s]:%u", addr, (unsigned)port);
        else
                snprintf(out, PEER_ID_MAX, "%s:%u", addr, (unsigned)port);
}

/* Canonical numeric text of S (brackets accepted) into OUT; -EINVAL when not numeric. */
static int normalise_addr(const char *s, char out[INET6_ADDRSTRLEN]) {
        int family;
        uint8_t bytes[16];
        if (parse_ip_literal(s, &family, bytes) < 0)
                return -EINVAL;
        return inet_ntop(family, bytes, out, INET6_ADDRSTRLEN) ? 0 : -EINVAL;
}

static int cmp_member(const void *a, const void *b) {
        return strcmp(((const struct member *)a)->info.id, ((const struct member *)b)->info.id);
}

static struct member *find(struct members *m, const char *id) {
        struct member key;
        snprintf(key.info.id, sizeof(key.info.id), "%s", id);
        return bsearch(&key, m->v, m->n, sizeof(*m->v), cmp_member);
}

/* Uniform in [d/2, 3d/2): the jittered wait before the next probe. */
static uint64_t jitter(struct members *m, uint64_t d) {
        m->rng ^= m->rng << 13;
        m->rng ^= m->rng >> 7;
        m->rng ^= m->rng << 17;
        return d / 2 + (d ? m->rng % d : 0);
}

static void append_id(char *list, size_t len, const char *id) {
        size_t used = strlen(list);
        if (used + strlen(id) + 5 >= len) {
                if (used + 4 < len && !strstr(list, "..."))
                        snprintf(list + used, len - used, ",...");
                return;
        }
        snprintf(list + used, len - used, "%s%s", used ? "," : "", id);
}

/* A sort key, lower is better: up, on-link, unknown, routed; then latency; then recent
 * failures. An unmeasured latency counts as 0, so a new peer gets tried and measured. */
static uint64_t rank_key(const struct member *p) {
        if (p->info.is_self || p->info.state != PEER_UP)
                return UINT64_MAX;
        uint64_t loc = p->info.locality == NL_LOC_ONLINK   ? 0
                       : p->info.locality == NL_LOC_ROUTED ? 2
                                                           : 1;
        uint64_t lat = p->info.latency_us < (1ull << 40) ? p->info.latency_us : (1ull << 40) - 1;
        uint64_t fails =
                p->info.recent_failures < (1ull << 20) ? p->info.recent_failures : (1ull << 20) - 1;
        return loc << 60 | lat << 20 | fails;
}

/* Marks P down (lock held). True when it was up: the caller logs. */
static bool mark_down(struct members *m, struct member *p, uint64_t now) {
        p->info.failures++;
        p->info.recent_failures++;
        m->persist_dirty = true;
        if (p->info.state == PEER_DOWN)
                return false;
        p->info.state = PEER_DOWN;
        p->backoff_ms = BACKOFF_START_MS;
        p->next_probe_ms = now + jitter(m, BACKOFF_START_MS);
        return true;
}

static void log_state(struct members *m, const char *id, bool up, const char *why) {
        uint64_t suppressed = 0;
        if (!log_ratelimit_ok(&m->rl, &suppressed))
                return;
        if (up)
                log_info("peer up id=%s suppressed=%" PRIu64, id, suppressed);
        else
                log_info("peer down id=%s why=\"%s\" suppressed=%" PRIu64
                         " hint=\"probing it with backoff\"",
                         id, why ? why : "unknown", suppressed);
}

/* ---- refresh: resolve, then merge ------------------------------------------------------- */

/* Adds ADDR:PORT to the candidates. Duplicates are merged, and the cap applied, by
 * dedupe_cands() once the whole answer is in: a check here would cost O(n) per candidate,
 * O(n^2) per refresh (12.5 M comparisons at 5000 members). */
static void add_cand(struct members *m, size_t *n, size_t *ignored, const char *addr, uint16_t port,
                     bool from_static, bool from_dns) {
        if (*n >= m->cand_cap) {
                /* The whole answer must be in before the cap picks the lowest ids: grow, up
                 * to CAND_MAX_FACTOR x max_peers (one DNS answer is ~4000 records anyway). */
                size_t cap = m->cand_cap * 2;
                if (cap > CAND_MAX_FACTOR * m->max_peers + 1)
                        cap = CAND_MAX_FACTOR * m->max_peers + 1;
                struct cand *v = cap > m->cand_cap ? realloc(m->cand, cap * sizeof(*v)) : NULL;
                if (!v) { /* past the bound: counted, not kept */
                        (*ignored)++;
                        return;
                }
                m->cand = v;
                m->cand_cap = cap;
        }
        struct cand *c = &m->cand[(*n)++];
        memset(c, 0, sizeof(*c));
        format_id(addr, port, c->id);
        snprintf(c->addr, sizeof(c->addr), "%s", addr);
        c->port = port;
        c->from_static = from_static;
        c->from_dns = from_dns;
}

static int cmp_cand(const void *a, const void *b) {
        return strcmp(((const struct cand *)a)->id, ((const struct cand *)b)->id);
}

/* Sorts the candidates by id, merges duplicates (their flags OR'd) and keeps the first
 * max_peers ids. Keeping the lowest ids (not the first ones the resolver returned) matters:
 * nodes that receive the same oversized answer in different orders (DNS servers rotate
 * records) still keep the same members, so they still agree on every blob's homes. Returns
 * the new count; *IGNORED gets the ids dropped by the cap. O(n log n). */
static size_t dedupe_cands(struct members *m, size_t n, size_t *ignored) {
        if (n == 0)
                return 0;
        qsort(m->cand, n, sizeof(*m->cand), cmp_cand);
        size_t out = 0;
        for (size_t i = 0; i < n; i++) {
                if (out > 0 && strcmp(m->cand[out - 1].id, m->cand[i].id) == 0) {
                        m->cand[out - 1].from_static |= m->cand[i].from_static;
                        m->cand[out - 1].from_dns |= m->cand[i].from_dns;
                        continue;
                }
                m->cand[out++] = m->cand[i];
        }
        if (out > m->max_peers) {
                *ignored += out - m->max_peers;
                out = m->max_peers;
        }
        return out;
}

static void add_addrinfo(struct members *m, size_t *n, size_t *ignored, struct addrinfo *res,
                         uint16_t port, bool from_static, bool from_dns) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                char addr[INET6_ADDRSTRLEN];
                const void *src;
                if (ai->ai_family == AF_INET)
                        src = &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr;
                else if (ai->ai_family == AF_INET6)
                        src = &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr;
                else
                        continue;
                if (inet_ntop(ai->ai_family, src, addr, sizeof(addr)))
                        add_cand(m, n, ignored, addr, port, from_static, from_dns);
        }
}

/* Resolves every name (static names, the DNS name) at once. Waits in short steps so a stop
 * is noticed; a resolution still running at a stop or after RESOLVE_MAX_MS is cancelled, or
 * left to finish on glibc's thread with its memory (a few hundred bytes) deliberately not
 * freed, since that thread still writes to it. Returns the candidate count; *RET_COMPLETE is
 * false when a lookup failed for another reason than "no such name". */
static size_t resolve(struct members *m, bool *ret_complete) {
        size_t n = 0, ignored = 0;
        bool complete = true;
        for (size_t i = 0; i < m->n_static; i++)
                if (m->statics[i].numeric)
                        add_cand(m, &n, &ignored, m->statics[i].host, m->statics[i].port, true,
                                 false);

        size_t nreq = 0;
        struct gaicb **reqs = calloc(m->n_static + 1, sizeof(*reqs));
        struct gaicb *cbs = calloc(m->n_static + 1, sizeof(*cbs));
        static const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        if (!reqs || !cbs) {
                free(reqs);
                free(cbs);
                *ret_complete = false;
                return n;
        }
        for (size_t i = 0; i < m->n_static; i++)
                if (!m->statics[i].numeric) {
                        cbs[nreq] =
                                (struct gaicb){.ar_name = m->statics[i].host, .ar_request = &hints};
                        reqs[nreq] = &cbs[nreq];
                        nreq++;
                }
        if (m->dns_name) {
                cbs[nreq] = (struct gaicb){.ar_name = m->dns_name, .ar_request = &hints};
                reqs[nreq] = &cbs[nreq];
                nreq++;
        }
        bool abandoned = false;
        if (nreq > 0) {
                int e = getaddrinfo_a(GAI_NOWAIT, reqs, (int)nreq, NULL);
                if (e != 0) {
                        log_debug("members resolve failed err=\"%s\"", gai_strerror(e));
                        complete = false;
                        nreq = 0; /* nothing was queued */
                }
                uint64_t deadline = now_ms() + RESOLVE_MAX_MS;
                for (;;) {
                        bool pending = false;
                        for (size_t i = 0; i < nreq; i++)
                                pending |= gai_error(reqs[i]) == EAI_INPROGRESS;
                        if (!pending)
                                break;
                        if (atomic_load(&m->stopping) || now_ms() >= deadline) {
                                for (size_t i = 0; i < nreq; i++)
                                        if (gai_cancel(reqs[i]) == EAI_NOTCANCELED)
                                                abandoned = true;
                                complete = false;
                                break;
                        }
                        struct timespec step = {0, RESOLVE_STEP_MS * 1000000L};
                        gai_suspend((const struct gaicb *const *)reqs, (int)nreq, &step);
                }
        }
        size_t s = 0;
        for (size_t i = 0; i < nreq; i++) {
                bool is_dns = m->dns_name && reqs[i]->ar_name == m->dns_name;
                uint16_t port = m->peer_port;
                if (!is_dns) {
                        while (s < m->n_static && m->statics[s].numeric)
                                s++;
                        port = m->statics[s++].port;
                }
                int e = gai_error(reqs[i]);
                if (e == 0) {
                        add_addrinfo(m, &n, &ignored, reqs[i]->ar_result, port, !is_dns, is_dns);
                } else if (e != EAI_NONAME && e != EAI_NODATA) {
                        /* The members are kept (nobody ages), but say so: a name with more
                         * A records than one 64 KiB answer holds (~4000) fails like this on
                         * every refresh, and a new node then never learns anyone. */
                        static struct log_ratelimit frl = LOG_RATELIMIT_INIT(300000);
                        uint64_t suppressed;
                        complete = false;
                        if (e != EAI_INPROGRESS && e != EAI_CANCELED &&
                            log_ratelimit_ok(&frl, &suppressed))
                                log_warning("peer name does not resolve name=%s err=\"%s\" "
                                            "members_kept=%zu suppressed=%" PRIu64
                                            " hint=\"a DNS answer holds about 4000 A records "
                                            "at most: past that, split the Service and list "
                                            "the names in --peers\"",
                                            reqs[i]->ar_name, gai_strerror(e), m->n, suppressed);
                }
                if (e != EAI_INPROGRESS)
                        freeaddrinfo(reqs[i]->ar_result);
        }
        n = dedupe_cands(m, n, &ignored);
        if (ignored) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
                uint64_t suppressed;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("peers ignored n=%zu max_peers=%zu suppressed=%" PRIu64
                                 " hint=\"raise max-peers\"",
                                 ignored, m->max_peers, suppressed);
        }
        free(reqs);
        if (!abandoned)
                free(cbs);
        *ret_complete = complete;
        return n;
}

/* Our advertised address, normalised, into OUT; -ENOENT when unknown. */
static int self_addr(struct members *m, char out[INET6_ADDRSTRLEN]) {
        char buf[INET6_ADDRSTRLEN];
        if (m->nl && nl_advertised(m->nl, buf, sizeof(buf)) == 0)
                return normalise_addr(buf, out);
        if (m->advertise) {
                snprintf(out, INET6_ADDRSTRLEN, "%s", m->advertise);
                return 0;
        }
        return -ENOENT;
}

/* Merges the N candidates in m->cand (deduplicated, at most max_peers) into the membership:
 * the rules of the essay above. O(n log n): one bsearch per candidate against the members
 * as they were, newcomers appended and sorted once, the departed compacted out in one pass.
 * (Sorting after every newcomer cost O(n^2 log n) on a first refresh: seconds at 5000.) */
static void merge(struct members *m, size_t n, bool complete) {
        /* Self: recognised by address and port, whichever list named it. */
        char self_a[INET6_ADDRSTRLEN], self_id[PEER_ID_MAX] = "";
        bool have_self = self_addr(m, self_a) == 0;
        if (have_self)
                format_id(self_a, m->listen_port, self_id);
        bool self_static = false, self_dns = false;
        for (size_t i = 0; i < n;) {
                struct cand *c = &m->cand[i];
                bool ours = have_self && c->port == m->listen_port &&
                            (strcmp(c->addr, self_a) == 0 ||
                             nl_locality(m->nl, c->addr) == NL_LOC_SELF);
                if (!ours) {
                        i++;
                        continue;
                }
                self_static |= c->from_static;
                self_dns |= c->from_dns;
                m->cand[i] = m->cand[--n];
        }
        if (have_self) { /* dedupe_cands() left at most max_peers: self always fits */
                struct cand *c = &m->cand[n++];
                memset(c, 0, sizeof(*c));
                memcpy(c->id, self_id, sizeof(self_id));
                snprintf(c->addr, sizeof(c->addr), "%s", self_a);
                c->port = m->listen_port;
                c->from_static = self_static;
                c->from_dns = self_dns;
                c->is_self = true;
        }
        enum nl_locality *loc = calloc(n ? n : 1, sizeof(*loc));
        for (size_t i = 0; loc && i < n; i++) /* outside the lock: nl takes its own */
                loc[i] = m->cand[i].is_self ? NL_LOC_SELF : nl_locality(m->nl, m->cand[i].addr);

        char joined[ID_LIST_LOG_MAX] = "", left[ID_LIST_LOG_MAX] = "";
        size_t njoined = 0, nleft = 0;
        pthread_mutex_lock(&m->lock);
        snprintf(m->self, sizeof(m->self), "%s", self_id);
        for (size_t i = 0; i < m->n; i++)
                m->v[i].missing++;
        size_t full = 0, sorted_n = m->n; /* v[0, sorted_n) is sorted; newcomers follow */
        for (size_t i = 0; i < n; i++) {
                struct cand *c = &m->cand[i];
                struct member key, *p;
                memcpy(key.info.id, c->id, sizeof(c->id));
                p = bsearch(&key, m->v, sorted_n, sizeof(*m->v), cmp_member);
                if (!p) {
                        size_t cap = m->max_peers;
                        if (m->n >= cap && !c->is_self) {
                                full++;
                                continue;
                        }
                        if (m->n >= cap) { /* self displaces nobody: drop the worst peer */
                                size_t worst = 0;
                                for (size_t k = 1; k < m->n; k++)
                                        if (rank_key(&m->v[k]) >= rank_key(&m->v[worst]))
                                                worst = k;
                                append_id(left, sizeof(left), m->v[worst].info.id);
                                nleft++;
                                /* Keep v[0, sorted_n) sorted: shift the tail down by one. */
                                memmove(&m->v[worst], &m->v[worst + 1],
                                        (m->n - worst - 1) * sizeof(*m->v));
                                m->n--;
                                if (worst < sorted_n)
                                        sorted_n--;
                        }
                        p = &m->v[m->n++];
                        memset(p, 0, sizeof(*p));
                        memcpy(p->info.id, c->id, sizeof(c->id));
                        p->info.state = PEER_UP;
                        snprintf(p->addr, sizeof(p->addr), "%s", c->addr);
                        p->port = c->port;
                        append_id(joined, sizeof(joined), c->id);
                        njoined++;
                }
                p->missing = 0;
                p->info.from_static = c->from_static;
                p->info.from_dns = c->from_dns;
                p->info.is_self = c->is_self;
                p->info.locality = loc ? loc[i] : NL_LOC_UNKNOWN;
                if (c->is_self)
                        p->info.state = PEER_UP;
        }
        if (m->n > sorted_n)
                qsort(m->v, m->n, sizeof(*m->v), cmp_member);
        /* Forget: a former self at once; others after a second miss, and only when every
         * lookup answered (a resolver outage must not empty the membership). */
        size_t kept = 0;
        for (size_t i = 0; i < m->n; i++) {
                struct member *p = &m->v[i];
                bool gone = p->missing > 0 && (p->info.is_self || (complete && p->missing >= 2));
                if (gone) {
                        append_id(left, sizeof(left), p->info.id);
                        nleft++;
                        continue;
                }
                if (kept != i)
                        m->v[kept] = *p;
                kept++;
        }
        m->n = kept;
        if (njoined || nleft) {
                m->version++;
                m->persist_dirty = true;
        }
        size_t total = m->n;
        pthread_mutex_unlock(&m->lock);
        free(loc);
        if (njoined || nleft)
                log_info("membership changed members=%zu joined=%zu left=%zu joined_ids=%s "
                         "left_ids=%s",
                         total, njoined, nleft, joined[0] ? joined : "-", left[0] ? left : "-");
        if (full)
                log_debug("members full n=%zu max_peers=%zu", full, m->max_peers);
}

static void refresh(struct members *m) {
        bool complete;
        size_t n = resolve(m, &complete);
        merge(m, n, complete);
}

/* ---- probes ------------------------------------------------------------------------------- */

static void probe_finished(void *ud, struct http_response *resp);

/* Starts a probe of every down peer that is due (lock held). Submitting does no I/O. */
static void start_probes(struct members *m, uint64_t now) {
        for (size_t i = 0; i < m->n; i++) {
                struct member *p = &m->v[i];
                if (p->info.state != PEER_DOWN || p->probing || p->info.is_self ||
                    p->next_probe_ms > now)
                        continue;
                struct probe *pr = malloc(sizeof(*pr));
                char url[PEER_ID_MAX + 32];
                snprintf(url, sizeof(url), "http://%s/healthz", p->info.id);
                struct http_request q = {
                        .url = url,
                        .protocols = "http",
                        .no_proxy = true, /* peers are never behind a proxy */
                        .connect_timeout_ms = m->probe_timeout_ms,
                        .deadline_ms = now + m->probe_timeout_ms,
                        .done = probe_finished,
                        .ud = pr,
                        .group = m->group,
                };
                if (pr) { /* before the submit: the probe may end at once */
                        pr->m = m;
                        memcpy(pr->id, p->info.id, sizeof(pr->id));
                }
                int r = pr ? http_client_submit(m->http, &q) : -ENOMEM;
                if (r < 0) {
                        /* The client is full or stopping: try again after the backoff, not
                         * in a loop. */
                        free(pr);
                        p->next_probe_ms = now + jitter(m, p->backoff_ms);
                        continue;
                }
                m->inflight++; /* its end needs our lock, held here: it counts after us */
                p->probing = true;
        }
}

/* Applies the outcome of a finished probe (lock held). True when the peer came back up. */
static bool probe_done(struct members *m, const char *id, bool ok, uint64_t now) {
        struct member *p = find(m, id);
        if (!p)
                return false; /* left while we probed it */
        p->probing = false;
        if (p->info.state != PEER_DOWN)
                return false;
        if (ok) {
                p->info.state = PEER_UP;
                p->info.last_seen = (int64_t)time(NULL);
                m->persist_dirty = true;
                return true;
        }
        p->backoff_ms = p->backoff_ms * 2 < BACKOFF_MAX_MS ? p->backoff_ms * 2 : BACKOFF_MAX_MS;
        p->next_probe_ms = now + jitter(m, p->backoff_ms);
        return false;
}

/* A probe's end, on the HTTP client's thread: applies it and wakes ours to schedule the
 * next (a cancelled one, at members_free(), changes nothing but the count). */
static void probe_finished(void *ud, struct http_response *resp) {
        struct probe *pr = ud;
        struct members *m = pr->m;
        bool ok = resp->err == 0 && resp->status == 200;
        bool up = false;
        pthread_mutex_lock(&m->lock);
        if (resp->err != -ECANCELED)
                up = probe_done(m, pr->id, ok, now_ms());
        m->inflight--;
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        if (up)
                log_state(m, pr->id, true, NULL);
        free(pr);
}

/* ---- persistence ------------------------------------------------------------------------- */

static void persist(struct members *m) {
        pthread_mutex_lock(&m->lock);
        if (!m->ix || !m->persist_dirty) {
                pthread_mutex_unlock(&m->lock);
                return;
        }
        struct idx_peer *v = calloc(m->n ? m->n : 1, sizeof(*v));
        size_t n = v ? m->n : 0;
        for (size_t i = 0; i < n; i++) {
                const struct peer_info *p = &m->v[i].info;
                snprintf(v[i].id, sizeof(v[i].id), "%s", p->id);
                snprintf(v[i].state, sizeof(v[i].state), "%s", p->state == PEER_UP ? "up" : "down");
                snprintf(v[i].locality, sizeof(v[i].locality), "%s", nl_locality_name(p->locality));
                v[i].latency_us = p->latency_us;
                v[i].failures = p->failures;
                v[i].bytes_from = p->bytes_from;
                v[i].bytes_to = p->bytes_to;
                v[i].last_seen = p->last_seen;
        }
        if (v)
                m->persist_dirty = false;
        pthread_mutex_unlock(&m->lock);
        if (v && idx_put_peers(m->ix, v, n) < 0) {
                pthread_mutex_lock(&m->lock);
                m->persist_dirty = true; /* try again next time */
                pthread_mutex_unlock(&m->lock);
        }
        free(v);
}

/* Halves every member's recent failures (lock held): a peer that failed an hour ago ranks
 * like one that never did. */
static void decay(struct members *m) {
        for (size_t i = 0; i < m->n; i++)
                m->v[i].info.recent_failures /= 2;
}

/* ---- the thread -------------------------------------------------------------------------- */

static void timed_wait(struct members *m, uint64_t ms) {
        struct timespec ts = deadline_after_ms(CLOCK_MONOTONIC, ms);
        pthread_cond_timedwait(&m->wake, &m->lock, &ts);
}

static void *members_main(void *arg) {
        struct members *m = arg;
        uint64_t now = now_ms();
        uint64_t next_refresh = now, next_decay = now + DECAY_INTERVAL_MS;
        uint64_t next_persist = now;
        pthread_mutex_lock(&m->lock);
        while (!atomic_load(&m->stopping)) {
                now = now_ms();
                if (now >= next_refresh || atomic_exchange(&m->refresh_now, false)) {
                        pthread_mutex_unlock(&m->lock);
                        refresh(m);
                        pthread_mutex_lock(&m->lock);
                        m->resolved_once = true;
                        pthread_cond_broadcast(&m->wake);
                        next_refresh = now_ms() + m->refresh_ms;
                        continue;
                }
                if (now >= next_decay) {
                        decay(m);
                        next_decay = now + DECAY_INTERVAL_MS;
                }
                if (m->persist_dirty && now >= next_persist) {
                        pthread_mutex_unlock(&m->lock);
                        persist(m);
                        pthread_mutex_lock(&m->lock);
                        next_persist = now + m->refresh_ms;
                }
                start_probes(m, now);
                uint64_t wake_at = next_refresh < next_decay ? next_refresh : next_decay;
                if (m->persist_dirty && m->ix && next_persist < wake_at)
                        wake_at = next_persist;
                for (size_t i = 0; i < m->n; i++) {
                        const struct member *p = &m->v[i];
                        if (p->info.state == PEER_DOWN && !p->probing && !p->info.is_self &&
                            p->next_probe_ms < wake_at)
                                wake_at = p->next_probe_ms;
                }
                uint64_t wait = wake_at > now ? wake_at - now : 0;
                /* Re-checked under the lock: a stop requested while persist() had it released
                 * must not be slept through. A probe's end wakes us (probe_finished). */
                if (wait > 0 && !atomic_load(&m->stopping))
                        timed_wait(m, wait);
        }
        pthread_mutex_unlock(&m->lock);
        return NULL;
}

/* ---- the interface ---------------------------------------------------------------------- */

static void members_destroy(struct members *m) {
        http_group_free(m->group); /* cancels probes in flight and waits for their ends */
        if (m->own_http)
                http_client_free(m->http);
        free(m->cand);
        free(m->v);
        free(m->id_ptrs);
        free(m->homes_cache);
        free(m->statics);
        free(m->dns_name);
        free(m->advertise);
        pthread_mutex_destroy(&m->rl.lock);
        pthread_cond_destroy(&m->wake);
        pthread_mutex_destroy(&m->lock);
        free(m);
}

/* "host:port" of the static list; a numeric host is normalised. -EINVAL otherwise. */
static int parse_static(const char *spec, struct static_peer *ret) {
        struct static_peer sp = {0};
        if (parse_hostport(spec, sp.host, sizeof(sp.host), &sp.port) < 0 || !sp.host[0])
                return -EINVAL;
        char addr[INET6_ADDRSTRLEN];
        if (normalise_addr(sp.host, addr) == 0) {
                snprintf(sp.host, sizeof(sp.host), "%s", addr);
                sp.numeric = true;
        }
        *ret = sp;
        return 0;
}

int members_new(const struct members_config *cfg, struct members **ret) {
        if (!cfg || cfg->max_peers == 0 || cfg->max_peers > MEMBERS_MAX_PEERS ||
            cfg->refresh_ms == 0 || cfg->probe_timeout_ms == 0 ||
            (cfg->n_static > 0 && !cfg->static_peers) ||
            (cfg->manual && (cfg->n_static > 0 || (cfg->dns_name && cfg->dns_name[0]))))
                return -EINVAL;
        struct members *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        pthread_mutex_init(&m->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&m->wake, &ca);
        pthread_condattr_destroy(&ca);
        pthread_mutex_init(&m->rl.lock, NULL);
        m->rl.interval_ms = STATE_LOG_INTERVAL_MS;
        m->peer_port = cfg->peer_port;
        m->listen_port = cfg->listen_port;
        m->refresh_ms = cfg->refresh_ms;
        m->probe_timeout_ms = cfg->probe_timeout_ms;
        m->max_peers = cfg->max_peers;
        m->nl = cfg->nl;
        m->ix = cfg->ix;
        m->rng = now_ms() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() ^ (uintptr_t)m;
        if (m->rng == 0)
                m->rng = 1;
        int r = -ENOMEM;
        m->statics = calloc(cfg->n_static ? cfg->n_static : 1, sizeof(*m->statics));
        m->v = calloc(m->max_peers, sizeof(*m->v));
        m->id_ptrs = calloc(m->max_peers, sizeof(*m->id_ptrs));
        m->homes_cache = calloc(HOMES_CACHE_SLOTS, sizeof(*m->homes_cache));
        m->cand_cap = 2 * m->max_peers + 1;
        m->cand = calloc(m->cand_cap, sizeof(*m->cand));
        m->manual = cfg->manual;
        if (!m->statics || !m->v || !m->id_ptrs || !m->cand || !m->homes_cache)
                goto out_destroy;
        if (!m->manual) { /* a manual membership never probes */
                m->http = cfg->http;
                if (!m->http) {
                        struct http_client_config hc = {.max_inflight = 16};
                        r = http_client_new(&hc, &m->http);
                        if (r < 0)
                                goto out_destroy;
                        m->own_http = true;
                }
                r = http_group_new(m->http, 0, &m->group);
                if (r < 0)
                        goto out_destroy;
                r = -ENOMEM;
        }
        for (size_t i = 0; i < cfg->n_static; i++) {
                r = parse_static(cfg->static_peers[i], &m->statics[i]);
                if (r < 0)
                        goto out_destroy;
        }
        m->n_static = cfg->n_static;
        if (cfg->dns_name && cfg->dns_name[0]) {
                r = -EINVAL;
                if (strlen(cfg->dns_name) >= HOST_MAX || cfg->peer_port == 0)
                        goto out_destroy;
                r = -ENOMEM;
                if (!(m->dns_name = strdup(cfg->dns_name)))
                        goto out_destroy;
        }
        if (cfg->advertise && cfg->advertise[0]) {
                char addr[INET6_ADDRSTRLEN];
                r = normalise_addr(cfg->advertise, addr);
                if (r < 0)
                        goto out_destroy;
                r = -ENOMEM;
                if (!(m->advertise = strdup(addr)))
                        goto out_destroy;
        }
        if (m->manual) {
                *ret = m;
                return 0;
        }
        r = -pthread_create(&m->thread, NULL, members_main, m);
        if (r < 0)
                goto out_destroy;

        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += FIRST_RESOLVE_WAIT_MS / 1000;
        pthread_mutex_lock(&m->lock);
        while (!m->resolved_once)
                if (pthread_cond_timedwait(&m->wake, &m->lock, &deadline) == ETIMEDOUT)
                        break; /* a slow resolver: start without, the thread carries on */
        pthread_mutex_unlock(&m->lock);
        *ret = m;
        return 0;
out_destroy:
        members_destroy(m);
        return r;
}

void members_free(struct members *m) {
        if (!m)
                return;
        if (m->manual) {
                persist(m);
                members_destroy(m);
                return;
        }
        pthread_mutex_lock(&m->lock);
        atomic_store(&m->stopping, true);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->thread, NULL);
        http_group_close(m->group); /* no probe completes after this */
        persist(m);                 /* the last word, for blobctl with the daemon down */
        members_destroy(m);
}

int members_self(struct members *m, char *out, size_t len) {
        pthread_mutex_lock(&m->lock);
        int r = -ENOENT;
        if (m->self[0]) {
                size_t n = strlen(m->self);
                r = n < len ? 0 : -ENAMETOOLONG;
                if (r == 0) /* OUT is written only on success */
                        memcpy(out, m->self, n + 1);
        }
        pthread_mutex_unlock(&m->lock);
        return r;
}

size_t members_ids(struct members *m, char (*ids)[PEER_ID_MAX], size_t max, uint64_t *ret_version) {
        pthread_mutex_lock(&m->lock);
        size_t n = m->n < max ? m->n : max;
        for (size_t i = 0; i < n; i++)
                memcpy(ids[i], m->v[i].info.id, PEER_ID_MAX);
        if (ret_version)
                *ret_version = m->version;
        pthread_mutex_unlock(&m->lock);
        return n;
}

uint64_t members_version(struct members *m) {
        pthread_mutex_lock(&m->lock);
        uint64_t v = m->version;
        pthread_mutex_unlock(&m->lock);
        return v;
}

size_t members_homes(struct members *m, const struct digest *d, size_t k,
                     char (*homes)[PEER_ID_MAX], uint64_t *ret_version) {
        if (k > MEMBERS_MAX_HOMES)
                k = MEMBERS_MAX_HOMES;
        uint64_t slot;
        memcpy(&slot, d->bytes, sizeof(slot));
        pthread_mutex_lock(&m->lock);
        struct homes_entry *e = &m->homes_cache[slot % HOMES_CACHE_SLOTS];
        if (e->k != k || e->version != m->version || !digest_equal(&e->d, d)) {
                size_t pick[MEMBERS_MAX_HOMES];
                for (size_t i = 0; i < m->n; i++)
                        m->id_ptrs[i] = m->v[i].info.id;
                size_t got = rdv_homes(m->id_ptrs, m->n, d, k, pick);
                e->d = *d;
                e->version = m->version;
                e->k = (uint8_t)k;
                e->got = (uint8_t)got;
                for (size_t i = 0; i < got; i++)
                        e->idx[i] = (uint16_t)pick[i];
        }
        size_t got = e->got;
        for (size_t i = 0; i < got; i++)
                memcpy(homes[i], m->v[e->idx[i]].info.id, PEER_ID_MAX);
        if (ret_version)
                *ret_version = m->version;
        pthread_mutex_unlock(&m->lock);
        return got;
}

bool members_usable(struct members *m, const char *id) {
        pthread_mutex_lock(&m->lock);
        const struct member *p = find(m, id);
        bool ok = p && p->info.state == PEER_UP && !p->info.is_self;
        pthread_mutex_unlock(&m->lock);
        return ok;
}

uint64_t members_rank_key(struct members *m, const char *id) {
        pthread_mutex_lock(&m->lock);
        const struct member *p = find(m, id);
        uint64_t k = p ? rank_key(p) : UINT64_MAX;
        pthread_mutex_unlock(&m->lock);
        return k;
}

void members_report_success(struct members *m, const char *id, uint64_t latency_us,
                            uint64_t bytes) {
        pthread_mutex_lock(&m->lock);
        struct member *p = find(m, id);
        bool up = false;
        if (p && !p->info.is_self) {
                /* EWMA with weight 1/4: one slow answer moves it, one does not dominate it. */
                uint64_t old = p->info.latency_us;
                p->info.latency_us = old ? old - old / 4 + latency_us / 4 : latency_us;
                if (p->info.latency_us == 0)
                        p->info.latency_us = 1; /* 0 means "not measured" */
                p->info.bytes_from += bytes;
                p->info.last_seen = (int64_t)time(NULL);
                if (p->info.state == PEER_DOWN) { /* it answered: it is up */
                        p->info.state = PEER_UP;
                        up = true;
                }
                m->persist_dirty = true;
        }
        pthread_mutex_unlock(&m->lock);
        if (up)
                log_state(m, id, true, NULL);
}

void members_refresh_soon(struct members *m) {
        atomic_store(&m->refresh_now, true);
        pthread_mutex_lock(&m->lock);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
}

void members_report_failure(struct members *m, const char *id, const char *why) {
        pthread_mutex_lock(&m->lock);
        struct member *p = find(m, id);
        bool down = p && !p->info.is_self && mark_down(m, p, now_ms());
        if (down)
                pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->lock);
        if (down)
                log_state(m, id, false, why);
}

/* Ids are "addr:port" or "[addr]:port", sorted: the ids of one address share the prefix
 * "addr:" (or "[addr]:") and so sit together. The first of them, by binary search: a peer
 * serves a chunk per request, and a scan of every member per chunk cost O(members). */
void members_report_served(struct members *m, const char *addr, uint64_t bytes) {
        char a[INET6_ADDRSTRLEN], prefix[INET6_ADDRSTRLEN + 4];
        if (!addr || normalise_addr(addr, a) < 0)
                return;
        if (strchr(a, ':'))
                snprintf(prefix, sizeof(prefix), "[%s]:", a);
        else
                snprintf(prefix, sizeof(prefix), "%s:", a);
        size_t plen = strlen(prefix);
        pthread_mutex_lock(&m->lock);
        size_t lo = 0, hi = m->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(m->v[mid].info.id, prefix) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (size_t i = lo; i < m->n && strncmp(m->v[i].info.id, prefix, plen) == 0; i++)
                if (!m->v[i].info.is_self) {
                        m->v[i].info.bytes_to += bytes;
                        m->persist_dirty = true;
                        break;
                }
        pthread_mutex_unlock(&m->lock);
}

int members_snapshot(struct members *m, struct peer_info **ret, size_t *ret_n) {
        pthread_mutex_lock(&m->lock);
        struct peer_info *v = calloc(m->n ? m->n : 1, sizeof(*v));
        size_t n = m->n;
        for (size_t i = 0; v && i < n; i++)
                v[i] = m->v[i].info;
        pthread_mutex_unlock(&m->lock);
        if (!v)
                return -ENOMEM;
        *ret = v;
        *ret_n = n;
        return 0;
}

int members_update(struct members *m, const char *const *ids, size_t n, bool complete) {
        if (!m->manual)
                return -EINVAL;
        size_t nc = 0, ignored = 0;
        for (size_t i = 0; i < n; i++) {
                char host[HOST_MAX], addr[INET6_ADDRSTRLEN];
                uint16_t port;
                if (parse_hostport(ids[i], host, sizeof(host), &port) < 0 ||
                    normalise_addr(host, addr) < 0)
                        return -EINVAL;
                add_cand(m, &nc, &ignored, addr, port, false, true);
        }
        nc = dedupe_cands(m, nc, &ignored);
        merge(m, nc, complete);
        pthread_mutex_lock(&m->lock);
        m->resolved_once = true;
        pthread_mutex_unlock(&m->lock);
        return 0;
}

void members_counts(struct members *m, uint64_t *ret_up, uint64_t *ret_known) {
        uint64_t up = 0, known = 0;
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->n; i++) {
                if (m->v[i].info.is_self)
                        continue;
                known++;
                up += m->v[i].info.state == PEER_UP;
        }
        pthread_mutex_unlock(&m->lock);
        *ret_up = up;
        *ret_known = known;
}
