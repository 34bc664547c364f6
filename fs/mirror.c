/* The containerd mirror. See mirror.h for the contract.
 *
 * Why in fs/: the mirror is the engine's second front end after fs/fuse.c, and the peer layer
 * (peer/) must not depend on the engine. It is the one place outside peer/ that speaks HTTP
 * itself, because what it serves is the engine's read path, not a protocol of its own.
 *
 * Threads: libmicrohttpd with a thread per connection. A connection's thread blocks only on its own
 * request: a blob read waits for the engine's reply (which the engine guarantees within its fetch
 * timeout), a manifest waits for one origin request (bounded by origin_timeout_ms). Nothing the
 * mirror does is retried: containerd retries, and falls back to the origin, by itself; a mirror
 * that also retried would multiply the cost of a failure (one mirror pinned CPU in a retry loop on
 * an odd media type; another made every miss cost 5 s).
 *
 * Blob bytes never pass through a second copy: MHD's response buffer (block size = min(chunk size,
 * MIRROR_MAX_READ)) is handed to engine_read()'s reply. A waiter gives up when the mirror stops;
 * the reply then finds no destination and drops the bytes (the wait record is reference-counted
 * between the two).
 *
 * Manifests are content-addressed like blobs, so they live where blobs do: one cache, one budget.
 * A manifest fetched from the origin is stored with engine_put() (registered as a blob of its
 * repository, under the cache budget, evicted like any chunk, announced and served to peers) and
 * served back by digest through the engine (this node's store or a peer that holds it), checked
 * against its digest before it is served. Not every registry serves a manifest on its blobs
 * endpoint (distribution 2.8 answers 404), so one whose chunks were evicted costs a fast miss and
 * then the origin's manifests endpoint. The store keeps bytes, not the media type the origin sent:
 * that is remembered in memory (MIRROR_TYPES_MAX digests, least recently used replaced), and a
 * manifest whose type is not remembered (after a restart, or from a peer) is served with the type
 * its body declares.
 *
 * Tags are not content-addressed: a tag is resolved at the origin on every request, which is the
 * only authority on what it means now; the tag table (MIRROR_TAGS_MAX, in memory) keeps the last
 * digest each resolved to, used only while the origin is unreachable (served as stale, logged).
 *
 * Files: this one routes a request (which clients, which registries) and holds the replies and
 * the lifecycle; mirror_blob.c serves blobs through the engine, mirror_manifest.c manifests, tags
 * and what the mirror remembers of the origin (media types, tags, unreachable registries).
 * mirror_int.h has what they share; internal functions are named mir_*.
 *
 * Locks: `lock` protects the media-type table, the tag table, the odd-type table and the down
 * list; it is never held across I/O or a call into the engine or the origin. */
#include "fs/mirror_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net/http_server.h"
#include "registry/auth.h"
#include "util/log.h"

#define API_VERSION_HEADER "Docker-Distribution-API-Version"
#define API_VERSION "registry/2.0"

/* ---- replies --------------------------------------------------------------------------------- */

enum MHD_Result mir_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r) {
        if (r)
                MHD_add_response_header(r, API_VERSION_HEADER, API_VERSION);
        return http_queue(conn, status, r);
}

/* A distribution-style error: {"errors":[{"code":CODE,"message":MSG}]}. MSG holds no quotes or
 * backslashes (our own fixed texts). */
enum MHD_Result mir_error_reply(struct MHD_Connection *conn, unsigned status, const char *code,
                                const char *msg) {
        char body[512];
        int n = snprintf(body, sizeof(body),
                         "{\"errors\":[{\"code\":\"%s\",\"message\":\"%s\"}]}\n", code, msg);
        if (n < 0 || (size_t)n >= sizeof(body))
                n = 0;
        struct MHD_Response *r =
                MHD_create_response_from_buffer((size_t)n, body, MHD_RESPMEM_MUST_COPY);
        if (r)
                MHD_add_response_header(r, "Content-Type", "application/json");
        return mir_queue(conn, status, r);
}

/* ---- which registries ------------------------------------------------------------------------ */

/* Two spellings of one registry: case, a scheme and a trailing slash do not matter, and
 * Docker Hub answers to three names. */
static bool same_registry(const char *a, const char *b) {
        static const char *const hub[] = {"docker.io", "registry-1.docker.io", "index.docker.io"};
        for (int i = 0; i < 2; i++) {
                const char **p = i ? &b : &a;
                if (strncasecmp(*p, "https://", 8) == 0)
                        *p += 8;
                else if (strncasecmp(*p, "http://", 7) == 0)
                        *p += 7;
        }
        size_t al = strcspn(a, "/"), bl = strcspn(b, "/");
        if (al == bl && strncasecmp(a, b, al) == 0)
                return true;
        bool ah = false, bh = false;
        for (size_t i = 0; i < 3; i++) {
                ah |= strlen(hub[i]) == al && strncasecmp(a, hub[i], al) == 0;
                bh |= strlen(hub[i]) == bl && strncasecmp(b, hub[i], bl) == 0;
        }
        return ah && bh;
}

/* Whether the node is configured for REGISTRY (as containerd names it in ?ns=, checked by
 * ref_parse_source: no '/', no ".."): listed (--mirror-registries, --insecure-registry), given
 * credentials (--registry-config), or given a hosts.toml of its own (blobctl
 * containerd-config --write into --mirror-hosts-dir; _default does not count: it names no
 * registry). Anything else would let any local user make the node fetch from anywhere. */
static bool registry_configured(struct mirror *m, const char *registry) {
        if (m->any_registry)
                return true;
        for (size_t i = 0; i < m->n_allow; i++)
                if (same_registry(m->allow[i], registry))
                        return true;
        if (m->credentials) {
                char cred[1024];
                int r = auth_find_credentials(m->credentials, registry, cred, sizeof(cred));
                explicit_bzero(cred, sizeof(cred));
                if (r == 0)
                        return true;
        }
        if (m->hosts_dir[0] && registry[0] != '.' && !strchr(registry, '/')) {
                char path[PATH_MAX];
                struct stat st;
                int n = snprintf(path, sizeof(path), "%s/%s/hosts.toml", m->hosts_dir, registry);
                if (n > 0 && (size_t)n < sizeof(path) && stat(path, &st) == 0 &&
                    S_ISREG(st.st_mode))
                        return true;
        }
        return false;
}

/* ---- dispatch -------------------------------------------------------------------------------- */

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls) {
        (void)version;
        (void)upload_data;
        struct mirror *m = cls;
        if (*req_cls == NULL) { /* headers only so far */
                *req_cls = m;
                return MHD_YES;
        }
        if (*upload_data_size) {
                *upload_data_size = 0; /* pulls only: bodies are ignored */
                return MHD_YES;
        }
        struct route_mirror rt;
        route_mirror(method, url, &rt);
        switch (rt.kind) {
        case ROUTE_MIRROR_BAD_METHOD:
                return mir_error_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "UNSUPPORTED",
                                       "the mirror serves pulls only");
        case ROUTE_MIRROR_BASE: {
                struct MHD_Response *r =
                        MHD_create_response_from_buffer(3, (void *)"{}\n", MHD_RESPMEM_PERSISTENT);
                if (r)
                        MHD_add_response_header(r, "Content-Type", "application/json");
                return mir_queue(conn, MHD_HTTP_OK, r);
        }
        case ROUTE_MIRROR_NAME_TOO_LONG:
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_INVALID", "name too long");
        case ROUTE_MIRROR_NOT_FOUND:
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "NOT_FOUND", "not found");
        case ROUTE_MIRROR_BLOB:
        case ROUTE_MIRROR_MANIFEST:
                break;
        }
        /* DESIGN §12: the mirror's client is the node's containerd, and the credentials it
         * holds are used for that client's requests only. Anyone else (another local user,
         * another host) would pull private images with them. */
        uid_t uid = http_client_uid(conn);
        if (uid != 0 && !m->cfg.allow_users) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                char addr[64];
                http_client_addr(conn, addr, sizeof(addr));
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("mirror refused a client that is not root uid=%ld client=%s "
                                 "suppressed=%" PRIu64 " hint=\"--mirror-allow-users serves "
                                 "them\"",
                                 (long)(int)uid, addr, suppressed);
                return mir_error_reply(conn, MHD_HTTP_FORBIDDEN, "DENIED",
                                       "this mirror serves the node's containerd (root) only");
        }
        const char *ns = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "ns");
        if (!ns || !*ns)
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_UNKNOWN",
                                       "no ns= parameter: the upstream registry is unknown");
        char source[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2];
        struct blob_ref br;
        int n = snprintf(source, sizeof(source), "%s/%s", ns, rt.name);
        if (n < 0 || (size_t)n >= sizeof(source) || ref_parse_source(source, &br) < 0)
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_INVALID",
                                       "malformed registry, name or reference");
        if (!registry_configured(m, br.registry)) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("mirror refused a registry it is not configured for "
                                 "registry=%s uid=%ld suppressed=%" PRIu64
                                 " hint=\"list it in --mirror-registries to mirror it\"",
                                 br.registry, (long)(int)http_client_uid(conn), suppressed);
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_UNKNOWN",
                                       "this node does not mirror that registry: ask it");
        }
        return rt.kind == ROUTE_MIRROR_BLOB
                       ? mir_serve_blob(m, conn, br.registry, br.repository, rt.ref)
                       : mir_serve_manifest(m, conn, br.registry, br.repository, rt.ref);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

/* Versions before the manifests went into the engine kept them in <STATE_DIR>/manifests, outside
 * the cache budget: that directory is removed (they are fetched again when asked for). Best
 * effort. */
static void remove_old_cache(const char *state_dir) {
        char dir[PATH_MAX];
        int n = snprintf(dir, sizeof(dir), "%s/manifests", state_dir);
        if (n < 0 || (size_t)n >= sizeof(dir))
                return;
        DIR *dp = opendir(dir);
        if (!dp)
                return;
        unsigned removed = 0;
        struct dirent *de;
        while ((de = readdir(dp)))
                if (de->d_name[0] != '.' && unlinkat(dirfd(dp), de->d_name, 0) == 0)
                        removed++;
        closedir(dp);
        if (rmdir(dir) < 0)
                log_info("mirror cannot remove the old manifest cache path=%s err=\"%m\"", dir);
        else
                log_notice("mirror removed the old manifest cache (manifests are in the cache "
                           "store now) path=%s files=%u",
                           dir, removed);
}

static void mirror_free(struct mirror *m) {
        pthread_mutex_destroy(&m->lock);
        for (size_t i = 0; i < m->n_allow; i++)
                free(m->allow[i]);
        free(m->allow);
        if (m->credentials)
                explicit_bzero(m->credentials, strlen(m->credentials));
        free(m->credentials);
        free(m->types);
        free(m->tags);
        free(m);
}

int mirror_start(const struct mirror_config *cfg, struct mirror **ret) {
        struct sockaddr_storage ss;
        if (!cfg->engine || !cfg->origin || !cfg->state_dir || cfg->chunk_size == 0 ||
            http_listen_parse(cfg->listen, &ss) < 0)
                return -EINVAL;
        struct mirror *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->cfg = *cfg;
        m->cfg.listen = NULL;
        m->cfg.state_dir = NULL; /* not kept: the caller's strings may go */
        m->cfg.hosts_dir = NULL;
        m->cfg.credentials_path = NULL;
        m->cfg.registries = NULL;
        m->cfg.n_registries = 0;
        pthread_mutex_init(&m->lock, NULL);
        int r = -ENOMEM;
        size_t listed = 0;
        for (const char *p = cfg->registry_list; p && *p; p++)
                listed += *p == ',';
        m->allow = calloc(cfg->n_registries + listed + 1, sizeof(char *));
        if (!m->allow)
                goto out_free;
        for (size_t i = 0; i < cfg->n_registries; i++) {
                m->allow[m->n_allow] = strdup(cfg->registries[i]);
                if (!m->allow[m->n_allow])
                        goto out_free;
                m->n_allow++;
        }
        for (const char *p = cfg->registry_list; p && *p;) {
                size_t n = strcspn(p, ",");
                while (n > 0 && *p == ' ') {
                        p++;
                        n--;
                }
                while (n > 0 && p[n - 1] == ' ')
                        n--;
                if (n == 1 && *p == '*') {
                        m->any_registry = true;
                } else if (n > 0) {
                        m->allow[m->n_allow] = strndup(p, n);
                        if (!m->allow[m->n_allow])
                                goto out_free;
                        m->n_allow++;
                }
                p += strcspn(p, ",");
                if (*p == ',')
                        p++;
        }
        if (cfg->hosts_dir)
                snprintf(m->hosts_dir, sizeof(m->hosts_dir), "%s", cfg->hosts_dir);
        if (cfg->credentials_path) {
                json_t *j = json_load_file(cfg->credentials_path, 0, NULL);
                if (j) {
                        m->credentials = json_dumps(j, JSON_COMPACT);
                        json_decref(j);
                }
        }
        m->types = calloc(MIRROR_TYPES_MAX, sizeof(*m->types));
        m->tags = calloc(MIRROR_TAGS_MAX, sizeof(*m->tags));
        if (!m->types || !m->tags)
                goto out_free;
        remove_old_cache(cfg->state_dir);
        struct http_server_config hc = {
                .name = "mirror",
                .listen = cfg->listen,
                .listen_fd = -1,
                .max_connections = MIRROR_MAX_CONNECTIONS,
                .reserve = MIRROR_RESERVED_CONNECTIONS,
                .per_client = MIRROR_MAX_PER_CLIENT,
                .header_timeout_ms = cfg->header_timeout_ms,
                .idle_timeout_s = 60,
                .handler = handle,
                .handler_cls = m,
        };
        r = http_server_start(&hc, &m->srv);
        if (r < 0)
                goto out_free;
        log_info("mirror serving listen=%s", cfg->listen);
        *ret = m;
        return 0;
out_free:
        mirror_free(m);
        return r;
}

void mirror_stop(struct mirror *m) {
        if (!m)
                return;
        atomic_store(&m->stopping, true);
        http_server_stop(m->srv);
        mirror_free(m);
}
