/* The containerd pull-through mirror on --mirror-listen (default 127.0.0.1:5000).
 *
 * containerd, told by hosts.toml that this node is a mirror for a registry, sends it the
 * distribution API's pull requests with `?ns=<registry>` naming the upstream:
 *
 *   GET      /v2/                                  200, Docker-Distribution-API-Version
 *   GET/HEAD /v2/<name>/blobs/sha256:<hex>?ns=R    the blob, through the engine (the FUSE
 *                                                  tree's read path: cache, peers, origin),
 *                                                  registered as R/<name>@sha256:<hex>; Range
 *   GET/HEAD /v2/<name>/manifests/<ref>?ns=R       a tag: resolved at R every time (the last
 *                                                  known digest when R is unreachable, logged
 *                                                  as stale); a digest: through the engine
 *                                                  (store, peers), else fetched from R and
 *                                                  stored in the engine
 *
 * Whatever it cannot serve it answers at once with 404 (never a wait on a dead origin's
 * retries): containerd then falls back to the next host, the origin itself, and the error a
 * user finally sees is the origin's own. It never forwards a client's Authorization header:
 * the origin is reached with the daemon's own credentials (--registry-config). Every answer
 * is content-addressed and verified, or a fresh tag lookup.
 *
 * Which clients: local root only (containerd; the uid of a loopback client is the kernel's
 * word, net/peercred.h), unless allow_users: anyone else gets 403 at once, since what the
 * mirror fetches it fetches with the node's registry credentials (DESIGN §12).
 *
 * Which registries: only those the node is configured for: listed in --mirror-registries
 * (or '*' for every one) or --insecure-registry, given credentials in --registry-config, or
 * given a hosts.toml of their own by `blobctl containerd-config --write` in
 * --mirror-hosts-dir. Anything else is 404 at once (containerd falls back to the origin
 * itself): the mirror is on 127.0.0.1 and any local user can talk to it, and it must not make
 * the node fetch from wherever they name.
 *
 * Bounds: MIRROR_MAX_CONNECTIONS connections (one thread each, blocking only on its own
 * request), MIRROR_RESERVED_CONNECTIONS of them only for root (containerd), at most
 * MIRROR_MAX_PER_CLIENT per other local user (net/http_server.h: the uid of a loopback client
 * is the kernel's word) and a deadline for each request's headers; a blob response owns one buffer of min(chunk size, MIRROR_MAX_READ); manifests,
 * each at most MIRROR_MANIFEST_MAX, are kept in the engine's store under the cache budget, like
 * blobs; in memory, the media types of MIRROR_TYPES_MAX manifests and MIRROR_TAGS_MAX tags. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIRROR_MAX_CONNECTIONS 64      /* all clients */
#define MIRROR_RESERVED_CONNECTIONS 32 /* of those, only root (containerd) may take */
#define MIRROR_MAX_PER_CLIENT 8        /* per local non-root user, or per address */
#define MIRROR_MAX_READ (1u << 20)
#define MIRROR_MANIFEST_MAX (4u << 20) /* distribution's own limit for a manifest */
#define MIRROR_TYPES_MAX 1024          /* manifests whose origin media type is remembered */
#define MIRROR_TAGS_MAX 1024
#define MIRROR_ORIGIN_TIMEOUT_MS 5000 /* manifest requests to the origin, one attempt */

struct mirror;
struct engine;
struct origin;

struct mirror_config {
        const char *listen;    /* "addr:port", "[v6]:port" */
        const char *state_dir; /* its old manifests/ directory is removed */
        struct engine *engine; /* borrowed: must outlive the mirror */
        struct origin *origin; /* borrowed: must outlive the mirror */
        uint32_t chunk_size;
        uint64_t origin_timeout_ms; /* 0: MIRROR_ORIGIN_TIMEOUT_MS */
        uint64_t header_timeout_ms; /* 0: HTTP_HEADER_TIMEOUT_MS */
        /* The registries it fetches from (see "Which registries" above); all copied. */
        const char *registry_list; /* "host[:port],...", or "*" for every one; NULL: none */
        char *const *registries;   /* more host[:port] (the insecure ones); n_registries */
        size_t n_registries;
        const char *credentials_path; /* --registry-config: a registry with credentials */
        const char *hosts_dir;        /* <hosts_dir>/<registry>/hosts.toml; NULL: none */
        bool allow_users;             /* serve clients other than local root (else 403 to them) */
};

/* Removes the old manifest cache directory, if any, and starts serving. 0; -EINVAL (malformed
 * address); -errno (bind, e.g. -EADDRINUSE). Does not block on the network. */
int mirror_start(const struct mirror_config *cfg, struct mirror **ret);

/* Stops serving: requests waiting on the engine are abandoned (their connections closed)
 * within a fraction of a second. Call before the engine and the origin go. NULL-safe. */
void mirror_stop(struct mirror *m);
