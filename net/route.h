/* Request routing for the node's HTTP servers, as pure functions of the request line: what
 * the peer server (peer/httpd.c) and the mirror (fs/mirror.c) do with a URL is decided here,
 * without sockets, so a fuzz target can drive it (tests/fuzz/fuzz_route.c); and the query
 * string's arguments, parsed against the keys a route takes (the control API's table,
 * net/api_routes.h, is the user). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/digest.h"

enum route_peer_kind {
        ROUTE_PEER_NOT_FOUND = 0,
        ROUTE_PEER_BAD_METHOD, /* 405 */
        ROUTE_PEER_HEALTHZ,
        ROUTE_PEER_READYZ,
        ROUTE_PEER_METRICS,
        ROUTE_PEER_ANNOUNCE, /* POST /p2p/v1/announce */
        ROUTE_PEER_LOCATE,   /* GET /p2p/v1/locate/sha256:<hex>; DIGEST set */
        ROUTE_PEER_BLOB,     /* GET|HEAD /v2/<name>/blobs/sha256:<hex>; DIGEST set, HEAD said */
        ROUTE_PEER_INDEX,    /* GET /p2p/v1/index/sha256:<layer hex>; DIGEST set */
};

struct route_peer {
        enum route_peer_kind kind;
        bool protocol; /* /v2/ or /p2p/: needs the cluster token when one is set */
        bool head;
        struct digest digest;
};

/* Routes METHOD URL (URL: the path, query string removed, as MHD gives it). Always fills
 * *RET. A locate or index query with a malformed digest is NOT_FOUND. Pure. */
void route_peer(const char *method, const char *url, struct route_peer *ret);

#define ROUTE_NAME_MAX 256 /* = REF_REPOSITORY_MAX */
#define ROUTE_REF_MAX 136  /* a tag (128) or "sha256:" + 64 hex, with room */

enum route_mirror_kind {
        ROUTE_MIRROR_NOT_FOUND = 0,
        ROUTE_MIRROR_BAD_METHOD,    /* not GET or HEAD */
        ROUTE_MIRROR_BASE,          /* /v2/ */
        ROUTE_MIRROR_NAME_TOO_LONG, /* a name of ROUTE_NAME_MAX or more */
        ROUTE_MIRROR_BLOB,          /* /v2/<name>/blobs/<ref> */
        ROUTE_MIRROR_MANIFEST,      /* /v2/<name>/manifests/<ref> */
};

struct route_mirror {
        enum route_mirror_kind kind;
        char name[ROUTE_NAME_MAX]; /* BLOB, MANIFEST: the repository, may hold slashes */
        char ref[ROUTE_REF_MAX];   /* BLOB, MANIFEST: never empty, never holds '/' */
};

/* Routes a mirror request. A ref of ROUTE_REF_MAX or more is NOT_FOUND. Pure. */
void route_mirror(const char *method, const char *url, struct route_mirror *ret);

/* A tag as the distribution spec has it: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}. Pure. */
bool route_tag_valid(const char *tag);

/* ---- query arguments ---------------------------------------------------------------------- */

#define ROUTE_QUERY_MAX 16384   /* bytes of a raw query string, NUL excluded: less than this */
#define ROUTE_QUERY_KEYS_MAX 32 /* keys a caller's table may name (bits of a uint32_t) */
#define ROUTE_QUERY_KEY_MAX 64  /* bytes of one decoded key: longer is unknown */

/* The arguments of one query string, decoded. VALUE[i] is key i's value (pointing into BUF,
 * NUL-terminated; "" for "k" or "k="), NULL when the query did not carry it. Not copyable:
 * VALUE points into the same struct. */
struct route_query {
        const char *value[ROUTE_QUERY_KEYS_MAX];
        char buf[ROUTE_QUERY_MAX];
};

/* Parses QUERY, a request's raw query string (what follows '?', still percent-encoded; NULL
 * or "" for none): '&'-separated KEY[=VALUE] pairs, empty pairs skipped, keys and values
 * percent-decoded ("%XX", either case) and '+' decoded to a space, as
 * application/x-www-form-urlencoded has it and MHD's argument table did (a plus is %2B, which
 * blobctl sends: it escapes every byte outside RFC 3986's unreserved set).
 * KEYS[0..NKEYS) are the keys the caller knows (NKEYS <= ROUTE_QUERY_KEYS_MAX), ALLOWED the
 * bits (1u << i) of those this request may carry.
 * 0 with RET filled. -EINVAL with a reason (lowercase, what to do) for: a malformed escape or
 * one decoding to NUL, an empty key, a key given twice, a key not in KEYS or not ALLOWED;
 * -ENAMETOOLONG for a QUERY of ROUTE_QUERY_MAX bytes or more. RET is scratch: written on
 * failure too. Pure: no allocation, no I/O. */
int route_query_parse(const char *query, const char *const *keys, size_t nkeys, uint32_t allowed,
                      struct route_query *ret, char *reason, size_t reason_len);
