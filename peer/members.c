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
#include "peer/members_int.h"
#include "peer/proto.h"
#include "peer/rendezvous.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
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

/* ---- small helpers ------------------------------------------------------------------------ */

void members_format_id(const char *addr, uint16_t port, char out[PEER_ID_MAX]) {
        if (strchr(addr, ':'))
                snprintf(out, PEER_ID_MAX, "[%s]:%u", addr, (unsigned)port);
        else
                snprintf(out, PEER_ID_MAX, "%s:%u", addr, (unsigned)port);
}

/* Canonical numeric text of S (brackets accepted) into OUT; -EINVAL when not numeric. */
int members_normalise_addr(const char *s, char out[INET6_ADDRSTRLEN]) {
        int family;
        uint8_t bytes[16];
        if (parse_ip_literal(s, &family, bytes) < 0)
                return -EINVAL;
        return inet_ntop(family, bytes, out, INET6_ADDRSTRLEN) ? 0 : -EINVAL;
}

int member_cmp(const void *a, const void *b) {
        return strcmp(((const struct member *)a)->info.id, ((const struct member *)b)->info.id);
}

static struct member *find(struct members *m, const char *id) {
        struct member key;
        snprintf(key.info.id, sizeof(key.info.id), "%s", id);
        return bsearch(&key, m->v, m->n, sizeof(*m->v), member_cmp);
}

/* Uniform in [d/2, 3d/2): the jittered wait before the next probe. */
static uint64_t jitter(struct members *m, uint64_t d) {
        m->rng ^= m->rng << 13;
        m->rng ^= m->rng >> 7;
        m->rng ^= m->rng << 17;
        return d / 2 + (d ? m->rng % d : 0);
}

void members_append_id(char *list, size_t len, const char *id) {
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
uint64_t member_rank(const struct member *p) {
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
                snprintf(url, sizeof(url), "http://%s" PROTO_HEALTHZ_PATH, p->info.id);
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
                        members_do_refresh(m);
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
        if (members_normalise_addr(sp.host, addr) == 0) {
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
                r = members_normalise_addr(cfg->advertise, addr);
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
        uint64_t k = p ? member_rank(p) : UINT64_MAX;
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
        if (!addr || members_normalise_addr(addr, a) < 0)
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
