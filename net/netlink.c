/* rtnetlink: the node's advertised address and peer locality. See netlink.h for the contract.
 *
 * What the kernel tells us is folded into a small view (struct nl_view): our addresses on
 * interfaces that are up, with their prefixes, and the advertised address chosen from them.
 * The view is rebuilt whole from fresh dumps (links, addresses, routes) rather than patched
 * from individual events: a dump costs a few hundred microseconds on a node with a handful of
 * interfaces, events come in bursts (an interface going up brings its addresses and routes
 * with it), and a rebuild cannot drift from the kernel the way incremental bookkeeping can.
 * So the event socket only says "something changed": the thread drains it, then rebuilds once.
 * An overrun of the event socket (ENOBUFS) is handled the same way.
 *
 * Invariants: the view is replaced under `lock`, never modified in place; readers copy what
 * they need under the lock and never call into libnl. Only the thread touches the sockets once
 * nl_open() has returned. At most NL_ADDR_MAX addresses are kept (more are ignored: locality
 * then errs towards "routed", which only costs a preference).
 *
 * Costs: one thread, two netlink sockets, one pipe; a rebuild per burst of events. */
#include "net/netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <netlink/route/rtnl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "util/parse.h"

#define NL_ADDR_MAX 256 /* addresses of up interfaces kept for locality */

struct nl_local {
        int family; /* AF_INET or AF_INET6 */
        int ifindex;
        uint8_t bytes[16];
        uint8_t plen;
        bool primary; /* not IFA_F_SECONDARY, not tentative or deprecated */
        bool global;  /* scope universe */
};

struct nl_view {
        struct nl_local addrs[NL_ADDR_MAX];
        size_t n;
        char advertised[INET6_ADDRSTRLEN]; /* "" when none */
};

struct netlink {
        pthread_mutex_t lock;
        struct nl_view *view;         /* lock; replaced whole by the thread */
        char fixed[INET6_ADDRSTRLEN]; /* --advertise-address, "" when discovered; immutable */

        /* The thread's own (and nl_open's, before the thread starts). */
        struct nl_sock *query;  /* dumps */
        struct nl_sock *events; /* multicast groups */
        bool dirty;             /* an event arrived since the last rebuild */
        int stop_pipe[2];
        pthread_t thread;
        void (*on_change)(void *ud);
        void *ud;
};

/* ---- pure logic (unit-tested through the .c) ------------------------------------------- */

/* Whether the first PLEN bits of A and B agree (LEN bytes each). */
static bool prefix_match(const uint8_t *a, const uint8_t *b, size_t len, unsigned plen) {
        if (plen > len * 8)
                return false;
        size_t whole = plen / 8;
        if (memcmp(a, b, whole) != 0)
                return false;
        unsigned rest = plen % 8;
        if (rest == 0)
                return true;
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        return (a[whole] & mask) == (b[whole] & mask);
}

/* Numeric text to family and bytes (brackets accepted, v4-mapped v6 is v4). */
static int parse_addr(const char *s, int *ret_family, uint8_t ret_bytes[16]) {
        return parse_ip_literal(s, ret_family, ret_bytes);
}

static size_t family_len(int family) {
        return family == AF_INET ? 4 : 16;
}

/* Ours when it equals one of our addresses; on-link when it falls inside one of their
 * prefixes; routed otherwise. */
static enum nl_locality classify(const struct nl_view *v, int family, const uint8_t *bytes) {
        bool onlink = false;
        size_t len = family_len(family);
        for (size_t i = 0; i < v->n; i++) {
                const struct nl_local *a = &v->addrs[i];
                if (a->family != family)
                        continue;
                if (memcmp(a->bytes, bytes, len) == 0)
                        return NL_LOC_SELF;
                if (prefix_match(a->bytes, bytes, len, a->plen))
                        onlink = true;
        }
        return onlink ? NL_LOC_ONLINK : NL_LOC_ROUTED;
}

/* The advertised address: the first primary IPv4 address of the interface of the IPv4 default
 * route (V4_IF), else the first global IPv6 one of the IPv6 default route's (V6_IF), else of
 * V4_IF. An interface index of 0 means no such route. "" when nothing fits. */
static void pick_advertised(const struct nl_view *v, int v4_if, int v6_if, char *out, size_t len) {
        const struct nl_local *pick = NULL;
        for (size_t i = 0; i < v->n && !pick && v4_if > 0; i++) {
                const struct nl_local *a = &v->addrs[i];
                if (a->family == AF_INET && a->ifindex == v4_if && a->primary)
                        pick = a;
        }
        int v6_ifs[2] = {v6_if, v4_if};
        for (int k = 0; k < 2 && !pick; k++) {
                for (size_t i = 0; i < v->n && !pick && v6_ifs[k] > 0; i++) {
                        const struct nl_local *a = &v->addrs[i];
                        if (a->family == AF_INET6 && a->ifindex == v6_ifs[k] && a->primary &&
                            a->global)
                                pick = a;
                }
        }
        out[0] = '\0';
        if (pick && !inet_ntop(pick->family, pick->bytes, out, (socklen_t)len))
                out[0] = '\0';
}

/* ---- reading the kernel ------------------------------------------------------------------ */

static int nlerr_to_errno(int nlerr) {
        switch (nlerr < 0 ? -nlerr : nlerr) {
        case NLE_NOMEM:
                return -ENOMEM;
        case NLE_PERM:
                return -EPERM;
        case NLE_AF_NOSUPPORT:
        case NLE_PROTO_MISMATCH:
                return -EAFNOSUPPORT;
        case NLE_AGAIN:
                return -EAGAIN;
        default:
                return -EIO;
        }
}

static bool link_is_up(struct nl_cache *links, int ifindex) {
        struct rtnl_link *l = rtnl_link_get(links, ifindex);
        if (!l)
                return false;
        bool up = (rtnl_link_get_flags(l) & IFF_UP) != 0;
        rtnl_link_put(l);
        return up;
}

static void collect_addrs(struct nl_cache *addrs, struct nl_cache *links, struct nl_view *v) {
        size_t ignored = 0;
        for (struct nl_object *o = nl_cache_get_first(addrs); o; o = nl_cache_get_next(o)) {
                struct rtnl_addr *a = (struct rtnl_addr *)o;
                struct nl_addr *local = rtnl_addr_get_local(a);
                int family = rtnl_addr_get_family(a);
                if (!local || (family != AF_INET && family != AF_INET6) ||
                    nl_addr_get_len(local) != family_len(family))
                        continue;
                int ifindex = rtnl_addr_get_ifindex(a);
                if (!link_is_up(links, ifindex))
                        continue;
                if (v->n == NL_ADDR_MAX) {
                        ignored++;
                        continue;
                }
                struct nl_local *l = &v->addrs[v->n++];
                unsigned flags = rtnl_addr_get_flags(a);
                l->family = family;
                l->ifindex = ifindex;
                memcpy(l->bytes, nl_addr_get_binary_addr(local), family_len(family));
                l->plen = (uint8_t)rtnl_addr_get_prefixlen(a);
                l->primary = !(flags & (IFA_F_SECONDARY | IFA_F_TENTATIVE | IFA_F_DEPRECATED |
                                        IFA_F_DADFAILED));
                l->global = rtnl_addr_get_scope(a) == RT_SCOPE_UNIVERSE;
        }
        if (ignored)
                log_debug("netlink addresses ignored n=%zu max=%d", ignored, NL_ADDR_MAX);
}

/* The interface of the lowest-metric default route of FAMILY in the main table, on an
 * interface that is up; 0 when none. */
static int default_route_if(struct nl_cache *routes, struct nl_cache *links, int family) {
        int best_if = 0;
        uint32_t best_metric = UINT32_MAX;
        for (struct nl_object *o = nl_cache_get_first(routes); o; o = nl_cache_get_next(o)) {
                struct rtnl_route *r = (struct rtnl_route *)o;
                if (rtnl_route_get_family(r) != family ||
                    rtnl_route_get_table(r) != RT_TABLE_MAIN ||
                    rtnl_route_get_type(r) != RTN_UNICAST)
                        continue;
                struct nl_addr *dst = rtnl_route_get_dst(r);
                if (dst && nl_addr_get_prefixlen(dst) != 0)
                        continue;
                if (rtnl_route_get_nnexthops(r) < 1)
                        continue;
                int ifindex = rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(r, 0));
                uint32_t metric = rtnl_route_get_priority(r);
                if (ifindex > 0 && link_is_up(links, ifindex) &&
                    (best_if == 0 || metric < best_metric)) {
                        best_if = ifindex;
                        best_metric = metric;
                }
        }
        return best_if;
}

/* Dumps links, addresses and routes into a new view. 0 or -errno. */
static int read_view(struct nl_sock *sk, struct nl_view **ret) {
        struct nl_cache *links = NULL, *addrs = NULL, *routes = NULL;
        struct nl_view *v = calloc(1, sizeof(*v));
        int r = -ENOMEM;
        if (!v)
                goto out;
        int e = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links);
        if (e == 0)
                e = rtnl_addr_alloc_cache(sk, &addrs);
        if (e == 0)
                e = rtnl_route_alloc_cache(sk, AF_UNSPEC, 0, &routes);
        if (e < 0) {
                r = nlerr_to_errno(e);
                log_debug("netlink dump failed err=\"%s\"", nl_geterror(e));
                goto out;
        }
        collect_addrs(addrs, links, v);
        pick_advertised(v, default_route_if(routes, links, AF_INET),
                        default_route_if(routes, links, AF_INET6), v->advertised,
                        sizeof(v->advertised));
        *ret = v;
        v = NULL;
        r = 0;
out:
        nl_cache_free(routes);
        nl_cache_free(addrs);
        nl_cache_free(links);
        free(v);
        return r;
}

/* Rebuilds the view; true when the advertised address changed. */
static bool refresh(struct netlink *nl) {
        struct nl_view *v;
        if (read_view(nl->query, &v) < 0)
                return false; /* keep the old view: stale beats empty */
        pthread_mutex_lock(&nl->lock);
        struct nl_view *old = nl->view;
        bool changed = !old || strcmp(old->advertised, v->advertised) != 0;
        nl->view = v;
        pthread_mutex_unlock(&nl->lock);
        if (changed && !nl->fixed[0])
                log_debug("netlink advertised address=%s", v->advertised[0] ? v->advertised : "-");
        free(old);
        return changed && !nl->fixed[0];
}

static int on_event(struct nl_msg *msg, void *arg) {
        (void)msg;
        struct netlink *nl = arg;
        nl->dirty = true;
        return NL_OK;
}

static void *nl_thread(void *arg) {
        struct netlink *nl = arg;
        struct pollfd fds[2] = {{.fd = nl_socket_get_fd(nl->events), .events = POLLIN},
                                {.fd = nl->stop_pipe[0], .events = POLLIN}};
        for (;;) {
                if (poll(fds, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        log_debug("netlink poll failed err=%s", strerror(errno));
                        break;
                }
                if (fds[1].revents)
                        break;
                if (!(fds[0].revents & (POLLIN | POLLERR)))
                        continue;
                /* Drain every queued event, then rebuild once. An overrun (ENOBUFS) lost
                 * events: a rebuild is exactly the recovery. */
                for (;;) {
                        int e = nl_recvmsgs_default(nl->events);
                        if (e == -NLE_AGAIN)
                                break;
                        if (e < 0) {
                                nl->dirty = true;
                                if (e != -NLE_NOMEM && e != -NLE_DUMP_INTR)
                                        break;
                        }
                }
                if (nl->dirty) {
                        nl->dirty = false;
                        if (refresh(nl) && nl->on_change)
                                nl->on_change(nl->ud);
                }
        }
        return NULL;
}

/* ---- the interface ---------------------------------------------------------------------- */

static void nl_free_parts(struct netlink *nl) {
        nl_socket_free(nl->events);
        nl_socket_free(nl->query);
        if (nl->stop_pipe[0] >= 0)
                close(nl->stop_pipe[0]);
        if (nl->stop_pipe[1] >= 0)
                close(nl->stop_pipe[1]);
        free(nl->view);
        pthread_mutex_destroy(&nl->lock);
        free(nl);
}

int nl_open(const char *advertise, void (*on_change)(void *ud), void *ud, struct netlink **ret) {
        struct netlink *nl = calloc(1, sizeof(*nl));
        if (!nl)
                return -ENOMEM;
        pthread_mutex_init(&nl->lock, NULL);
        nl->stop_pipe[0] = nl->stop_pipe[1] = -1;
        nl->on_change = on_change;
        nl->ud = ud;
        int r;
        if (advertise && advertise[0]) {
                int family;
                uint8_t bytes[16];
                r = parse_addr(advertise, &family, bytes);
                if (r < 0)
                        goto out_free;
                if (!inet_ntop(family, bytes, nl->fixed, sizeof(nl->fixed))) {
                        r = -EINVAL;
                        goto out_free;
                }
        }
        if (pipe2(nl->stop_pipe, O_CLOEXEC) < 0) {
                r = -errno;
                goto out_free;
        }
        nl->query = nl_socket_alloc();
        nl->events = nl_socket_alloc();
        if (!nl->query || !nl->events) {
                r = -ENOMEM;
                goto out_free;
        }
        /* libnl opens its sockets with SOCK_CLOEXEC. */
        int e = nl_connect(nl->query, NETLINK_ROUTE);
        if (e == 0) {
                nl_socket_disable_seq_check(nl->events);
                nl_socket_modify_cb(nl->events, NL_CB_VALID, NL_CB_CUSTOM, on_event, nl);
                e = nl_connect(nl->events, NETLINK_ROUTE);
        }
        if (e == 0)
                e = nl_socket_add_memberships(nl->events, RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR,
                                              RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV4_ROUTE,
                                              RTNLGRP_IPV6_ROUTE, 0);
        if (e == 0)
                e = nl_socket_set_nonblocking(nl->events);
        if (e < 0) {
                r = nlerr_to_errno(e);
                goto out_free;
        }
        /* Subscribed before the first dump: a change racing with it is not lost. */
        r = read_view(nl->query, &nl->view);
        if (r < 0)
                goto out_free;
        r = -pthread_create(&nl->thread, NULL, nl_thread, nl);
        if (r < 0)
                goto out_free;
        *ret = nl;
        return 0;
out_free:
        nl_free_parts(nl);
        return r;
}

void nl_free(struct netlink *nl) {
        if (!nl)
                return;
        char c = 1;
        while (write(nl->stop_pipe[1], &c, 1) < 0 && errno == EINTR)
                ;
        pthread_join(nl->thread, NULL);
        nl_free_parts(nl);
}

/* Copies SRC into OUT only when it fits (out-parameters are written only on success). */
static int copy_out(const char *src, char *out, size_t len) {
        size_t n = strlen(src);
        if (n >= len)
                return -ENAMETOOLONG;
        memcpy(out, src, n + 1);
        return 0;
}

int nl_advertised(struct netlink *nl, char *out, size_t len) {
        if (nl->fixed[0])
                return copy_out(nl->fixed, out, len);
        int r = -ENOENT;
        pthread_mutex_lock(&nl->lock);
        if (nl->view && nl->view->advertised[0])
                r = copy_out(nl->view->advertised, out, len);
        pthread_mutex_unlock(&nl->lock);
        return r;
}

enum nl_locality nl_locality(struct netlink *nl, const char *addr) {
        int family;
        uint8_t bytes[16];
        if (!nl || !addr || parse_addr(addr, &family, bytes) < 0)
                return NL_LOC_UNKNOWN;
        int ffam;
        uint8_t fbytes[16];
        if (nl->fixed[0] && parse_addr(nl->fixed, &ffam, fbytes) == 0 && ffam == family &&
            memcmp(fbytes, bytes, family_len(family)) == 0)
                return NL_LOC_SELF;
        enum nl_locality l = NL_LOC_UNKNOWN;
        pthread_mutex_lock(&nl->lock);
        if (nl->view)
                l = classify(nl->view, family, bytes);
        pthread_mutex_unlock(&nl->lock);
        return l;
}

const char *nl_locality_name(enum nl_locality l) {
        switch (l) {
        case NL_LOC_SELF:
                return "self";
        case NL_LOC_ONLINK:
                return "on-link";
        case NL_LOC_ROUTED:
                return "routed";
        case NL_LOC_UNKNOWN:
        default:
                return "unknown";
        }
}
