/* Who is on the other end of a local socket: the uid of the process that opened it.
 *
 * Unix sockets carry it (SO_PEERCRED). For TCP the kernel knows the owner of the client's
 * socket when the client runs on this host (in this network namespace): one exact sock_diag
 * lookup by the connection's four-tuple answers it, the same figure /proc/net/tcp shows,
 * without reading the whole table. A client elsewhere has no socket here: -ENOENT. */
#pragma once
#include <sys/socket.h>
#include <sys/types.h>

/* The uid owning the peer of connected socket FD. 0 and *RET_UID; -ENOENT (a remote client,
 * or it closed meanwhile); -errno. Blocks for at most one netlink round trip. */
int peercred_uid(int fd, uid_t *ret_uid);
