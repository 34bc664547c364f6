/* What the node learns from the kernel over rtnetlink (libnl-route-3): its own advertised
 * address and whether a peer is on-link. The only file that talks netlink.
 *
 *  - Advertised address: --advertise-address when given; otherwise the first IPv4 address
 *    (else global IPv6) of the interface that carries the default route. Re-read when the
 *    kernel reports an address or route change (RTNLGRP_IPV4_IFADDR / IPV6_IFADDR /
 *    IPV4_ROUTE events on a socket of our own), so a DHCP renumbering is announced again.
 *  - Locality: a peer address is on-link when it falls inside the prefix of an address on one
 *    of our interfaces that is up (same L2 segment, no router in between); otherwise routed.
 *
 * One thread of its own listens for events; the cached answers are read under a mutex, so
 * every call below is cheap and never blocks on the kernel. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct netlink;

enum nl_locality { NL_LOC_UNKNOWN = 0, NL_LOC_SELF, NL_LOC_ONLINK, NL_LOC_ROUTED };

/* ADVERTISE: a literal address to use instead of discovery, or NULL. ON_CHANGE (may be NULL)
 * is called from the netlink thread after the advertised address changed. 0 or -errno (no
 * netlink socket: the caller may run without, with locality unknown). */
int nl_open(const char *advertise, void (*on_change)(void *ud), void *ud, struct netlink **ret);
/* Stops the thread and frees NL. NULL-safe. (Not nl_close: libnl-3 exports that name for its
 * sockets, and a second definition would interpose on libnl's own calls.) */
void nl_free(struct netlink *nl);

/* The advertised address as text ("10.0.0.2", or "fd00::2" without brackets) into OUT.
 * 0, or -ENOENT when there is none yet (no default route and no --advertise-address). */
int nl_advertised(struct netlink *nl, char *out, size_t len);

/* On-link, routed, or ours, for a numeric address (AF_INET / AF_INET6 text). NULL NL: unknown. */
enum nl_locality nl_locality(struct netlink *nl, const char *addr);

const char *nl_locality_name(enum nl_locality l); /* "self", "on-link", "routed", "unknown" */
