/* A membership refresh: resolve, then merge. See members.c for the membership rules this
 * applies and members.h for the contract. Runs on the membership thread (or in
 * members_update() for a manual set); takes the lock only to merge. */
#include "peer/members_int.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "index/index.h"
#include "util/parse.h"

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
        members_format_id(addr, port, c->id);
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
                return members_normalise_addr(buf, out);
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
                members_format_id(self_a, m->listen_port, self_id);
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
                p = bsearch(&key, m->v, sorted_n, sizeof(*m->v), member_cmp);
                if (!p) {
                        size_t cap = m->max_peers;
                        if (m->n >= cap && !c->is_self) {
                                full++;
                                continue;
                        }
                        if (m->n >= cap) { /* self displaces nobody: drop the worst peer */
                                size_t worst = 0;
                                for (size_t k = 1; k < m->n; k++)
                                        if (member_rank(&m->v[k]) >= member_rank(&m->v[worst]))
                                                worst = k;
                                members_append_id(left, sizeof(left), m->v[worst].info.id);
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
                        members_append_id(joined, sizeof(joined), c->id);
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
                qsort(m->v, m->n, sizeof(*m->v), member_cmp);
        /* Forget: a former self at once; others after a second miss, and only when every
         * lookup answered (a resolver outage must not empty the membership). */
        size_t kept = 0;
        for (size_t i = 0; i < m->n; i++) {
                struct member *p = &m->v[i];
                bool gone = p->missing > 0 && (p->info.is_self || (complete && p->missing >= 2));
                if (gone) {
                        members_append_id(left, sizeof(left), p->info.id);
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

void members_do_refresh(struct members *m) {
        bool complete;
        size_t n = resolve(m, &complete);
        merge(m, n, complete);
}

/* A manual membership's refresh (the simulation's): IDS are the whole answer. */
int members_update(struct members *m, const char *const *ids, size_t n, bool complete) {
        if (!m->manual)
                return -EINVAL;
        size_t nc = 0, ignored = 0;
        for (size_t i = 0; i < n; i++) {
                char host[HOST_MAX], addr[INET6_ADDRSTRLEN];
                uint16_t port;
                if (parse_hostport(ids[i], host, sizeof(host), &port) < 0 ||
                    members_normalise_addr(host, addr) < 0)
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
