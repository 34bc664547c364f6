/* One classification of network fetch failures, so that whether to retry, whether to blame
 * the source and whether the source is unreachable is decided in one place (CernVM-FS's
 * habit) instead of by errno lists in every client.
 *
 * A failure is classified once, where it is seen (a curl result, an HTTP status, a digest
 * check, or a -errno from a client that already answered with one), and the predicates below
 * drive fail-over:
 *   transient    the same source may well succeed later: retry it after a backoff;
 *   peer fault   the source misbehaved (no connection, a stall, a broken or wrong answer,
 *                bytes that fail their digest): count it against the source, try the next;
 *   unreachable  no answer came at all (connect, timeout, a 5xx, shutting down): a front end
 *                may fall back to what it knew (a stale tag) or refuse at once for a while.
 * An answer that says no (404, 401/403, a refused request) is none of these: ask elsewhere or
 * give up, but the source did its job. Pure, thread-safe. */
#pragma once
#include <stdbool.h>

enum fetch_err {
        FETCH_OK = 0,
        FETCH_ERR_CONNECT,   /* cannot resolve or connect */
        FETCH_ERR_TIMEOUT,   /* connect, stall or deadline */
        FETCH_ERR_TRANSFER,  /* the transfer broke off (reset, truncated by the network) */
        FETCH_ERR_SETUP,     /* cannot work as configured: TLS, certificate, scheme, redirects */
        FETCH_ERR_SERVER,    /* the source failed: HTTP 5xx */
        FETCH_ERR_BUSY,      /* the source is overloaded: HTTP 429, 503 */
        FETCH_ERR_NOT_FOUND, /* HTTP 404, 416: the source does not hold it */
        FETCH_ERR_DENIED,    /* HTTP 401, 403 */
        FETCH_ERR_REFUSED,   /* any other status that is not an answer to what was asked */
        FETCH_ERR_PROTOCOL,  /* an answer, but not the one asked for (range, size, format) */
        FETCH_ERR_CORRUPT,   /* bytes that do not match their digest */
        FETCH_ERR_CANCELED,  /* shutting down */
        FETCH_ERR_LOCAL,     /* failed on this node (memory, too many at once) */
};
#define FETCH_ERR_COUNT (FETCH_ERR_LOCAL + 1)

/* "connect failed", ...: lowercase, for logs and reasons. Never NULL. */
const char *fetch_err_strerror(enum fetch_err e);

bool fetch_err_is_transient(enum fetch_err e);
bool fetch_err_is_peer_fault(enum fetch_err e);
bool fetch_err_is_unreachable(enum fetch_err e);

/* The -errno the clients report a class with (0 for FETCH_OK): -ECONNREFUSED, -ETIMEDOUT,
 * -EIO, -EPROTO (setup, refused, protocol), -EREMOTEIO (server, busy), -ENOENT, -EACCES,
 * -EBADMSG, -ECANCELED, -ENOMEM. */
int fetch_err_to_errno(enum fetch_err e);

/* The class of a -errno a client answered with (the inverse of fetch_err_to_errno, where
 * the errno says enough; -EHOSTUNREACH is CONNECT; an errno no client uses for the network
 * is LOCAL). */
enum fetch_err fetch_err_from_errno(int err);

/* The class of an HTTP STATUS (2xx: FETCH_OK). */
enum fetch_err fetch_err_from_http(long status);

/* The class of a curl CODE (a CURLcode; CURLE_OK: FETCH_OK). */
enum fetch_err fetch_err_from_curl(int code);
