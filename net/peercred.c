/* See peercred.h. The one place that speaks sock_diag netlink. */
#include "net/peercred.h"

#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static int tcp_uid(const struct sockaddr_storage *peer, const struct sockaddr_storage *local,
                   uid_t *ret_uid) {
        struct {
                struct nlmsghdr nh;
                struct inet_diag_req_v2 r;
        } req;
        memset(&req, 0, sizeof(req));
        req.nh.nlmsg_len = sizeof(req);
        req.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.nh.nlmsg_flags = NLM_F_REQUEST;
        req.r.sdiag_family = (__u8)peer->ss_family;
        req.r.sdiag_protocol = IPPROTO_TCP;
        req.r.idiag_states = ~0u;
        req.r.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
        req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
        /* The client's socket: its source is the peer address, its destination us. */
        if (peer->ss_family == AF_INET) {
                struct sockaddr_in p, l;
                memcpy(&p, peer, sizeof(p));
                memcpy(&l, local, sizeof(l));
                req.r.id.idiag_sport = p.sin_port;
                req.r.id.idiag_dport = l.sin_port;
                memcpy(req.r.id.idiag_src, &p.sin_addr, 4);
                memcpy(req.r.id.idiag_dst, &l.sin_addr, 4);
        } else {
                struct sockaddr_in6 p, l;
                memcpy(&p, peer, sizeof(p));
                memcpy(&l, local, sizeof(l));
                req.r.id.idiag_sport = p.sin6_port;
                req.r.id.idiag_dport = l.sin6_port;
                memcpy(req.r.id.idiag_src, &p.sin6_addr, 16);
                memcpy(req.r.id.idiag_dst, &l.sin6_addr, 16);
        }
        int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        if (nl < 0)
                return -errno;
        struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
        setsockopt(nl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
        int r = -ENOENT;
        if (sendto(nl, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
                r = -errno;
                goto out_close;
        }
        char buf[8192];
        ssize_t n = recv(nl, buf, sizeof(buf), 0);
        if (n < 0) {
                r = -errno;
                goto out_close;
        }
        /* Copied out of the buffer, not cast: a char buffer promises no alignment. */
        for (size_t off = 0; off + sizeof(struct nlmsghdr) <= (size_t)n;) {
                struct nlmsghdr h;
                memcpy(&h, buf + off, sizeof(h));
                if (h.nlmsg_len < sizeof(h) || off + h.nlmsg_len > (size_t)n)
                        break;
                const char *payload = buf + off + NLMSG_HDRLEN;
                if (h.nlmsg_type == NLMSG_ERROR) {
                        struct nlmsgerr e;
                        if (h.nlmsg_len >= NLMSG_LENGTH(sizeof(e))) {
                                memcpy(&e, payload, sizeof(e));
                                r = e.error ? e.error : -ENOENT;
                        }
                        break;
                }
                if (h.nlmsg_type == SOCK_DIAG_BY_FAMILY &&
                    h.nlmsg_len >= NLMSG_LENGTH(sizeof(struct inet_diag_msg))) {
                        struct inet_diag_msg m;
                        memcpy(&m, payload, sizeof(m));
                        *ret_uid = (uid_t)m.idiag_uid;
                        r = 0;
                        break;
                }
                off += NLMSG_ALIGN(h.nlmsg_len);
        }
out_close:
        close(nl);
        return r;
}

int peercred_uid(int fd, uid_t *ret_uid) {
        struct sockaddr_storage local, peer;
        socklen_t ll = sizeof(local), pl = sizeof(peer);
        if (getsockname(fd, (struct sockaddr *)&local, &ll) < 0 ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) < 0)
                return -errno;
        if (local.ss_family == AF_UNIX) {
                struct ucred uc;
                socklen_t len = sizeof(uc);
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0)
                        return -errno;
                *ret_uid = uc.uid;
                return 0;
        }
        if ((local.ss_family != AF_INET && local.ss_family != AF_INET6) ||
            peer.ss_family != local.ss_family)
                return -ENOENT;
        return tcp_uid(&peer, &local, ret_uid);
}
