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
 * Manifests are not blobs at every registry (distribution 2.8 answers 404 for a manifest digest on
 * the blobs endpoint), so they have a cache of their own: one file per digest in
 * <state-dir>/manifests, "media type\n" then the body, written to a temporary name and renamed;
 * checked against its digest before it is written and again before it is served (a damaged file is
 * deleted and refetched). The in-memory index (digest, bytes, last use) is rebuilt from the
 * directory at start; eviction is least-recently-used within a count and a byte cap.
 *
 * Locks: `lock` protects the manifest index, the tag table and the odd-type table; it is never held
 * across I/O or a call into the engine or the origin. */
#include "fs/mirror.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <inttypes.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "net/http_server.h"
#include "net/route.h"
#include "peer/auth.h"
#include "peer/origin.h"
#include "peer/ref.h"
#include "util/digest.h"
#include "util/log.h"
#include "util/parse.h"

#define API_VERSION_HEADER "Docker-Distribution-API-Version"
#define API_VERSION "registry/2.0"
#define TAG_KEY_MAX (REF_REGISTRY_MAX + REF_REPOSITORY_MAX + ROUTE_REF_MAX + 3)
#define ODD_TYPES_MAX                                                                              \
        256               /* digests whose odd media type was logged already   \
                           */
#define WAIT_SLICE_MS 200 /* how often a waiting reader checks whether we are stopping */
#define DOWN_SLOTS 16     /* registries remembered as unreachable */
#define DOWN_MS 10000     /* how long an unreachable registry is believed down */

struct manifest_entry {
        struct digest digest;
        uint64_t bytes; /* file size on disk */
        uint64_t used;  /* last use, from use_clock */
};

struct tag_entry {
        char key[TAG_KEY_MAX]; /* "registry/repository:tag"; "" when free */
        struct digest digest;
        uint64_t used;
};

/* A registry our last manifest request found unreachable: until UNTIL_MS, blobs unknown to the
 * engine are refused at once rather than registered (which waits out the origin's retries, the
 * fetch timeout). Any successful manifest request clears it. */
struct down_entry {
        char registry[REF_REGISTRY_MAX];
        uint64_t until_ms;
};

struct mirror {
        struct mirror_config cfg;
        char *state_dir;
        char dir[PATH_MAX - DIGEST_HEX_LEN - 64]; /* <state_dir>/manifests */
        struct http_server *srv;
        atomic_bool stopping;
        char hosts_dir[PATH_MAX / 2]; /* "" when none */
        char *credentials;            /* --registry-config's JSON, or NULL */
        char **allow;                 /* the registry list and cfg.registries, copied */
        size_t n_allow;
        bool any_registry; /* "*" in the list */

        pthread_mutex_t lock;             /* protects everything below */
        struct manifest_entry *manifests; /* MIRROR_MANIFESTS_MAX slots, n_manifests used */
        size_t n_manifests;
        uint64_t manifest_bytes;
        uint64_t use_clock;
        struct tag_entry *tags; /* MIRROR_TAGS_MAX */
        struct digest odd[ODD_TYPES_MAX];
        size_t n_odd, odd_next;
        struct down_entry down[DOWN_SLOTS];
};

static const char *const known_manifest_types[] = {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
};

/* ---- replies --------------------------------------------------------------------------------- */

static enum MHD_Result queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r) {
        if (r)
                MHD_add_response_header(r, API_VERSION_HEADER, API_VERSION);
        return http_queue(conn, status, r);
}

/* A distribution-style error: {"errors":[{"code":CODE,"message":MSG}]}. MSG holds no quotes or
 * backslashes (our own fixed texts). */
static enum MHD_Result error_reply(struct MHD_Connection *conn, unsigned status, const char *code,
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
        return queue(conn, status, r);
}

/* ---- odd media types ------------------------------------------------------------------------- */

static bool media_type_known(const char *t) {
        for (size_t i = 0; i < sizeof(known_manifest_types) / sizeof(known_manifest_types[0]); i++)
                if (strcmp(t, known_manifest_types[i]) == 0)
                        return true;
        return false;
}

/* Logs an unknown media type once per digest (a bounded table: a flood of distinct odd digests logs
 * more than once each, never unboundedly often per digest in a row). */
static void note_media_type(struct mirror *m, const struct digest *d, const char *type) {
        if (media_type_known(type))
                return;
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->n_odd; i++)
                if (digest_equal(&m->odd[i], d)) {
                        pthread_mutex_unlock(&m->lock);
                        return;
                }
        m->odd[m->odd_next] = *d;
        m->odd_next = (m->odd_next + 1) % ODD_TYPES_MAX;
        if (m->n_odd < ODD_TYPES_MAX)
                m->n_odd++;
        pthread_mutex_unlock(&m->lock);
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        log_notice("mirror serving an unusual media type by digest digest=sha256:%s "
                   "type=\"%s\" "
                   "hint=\"served as is; logged once\"",
                   hex, type[0] ? type : "(none)");
}

/* ---- manifest cache -------------------------------------------------------------------------- */

static void manifest_path(const struct mirror *m, const struct digest *d, char *out, size_t len) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        snprintf(out, len, "%s/%s", m->dir, hex);
}

static struct manifest_entry *manifest_find(struct mirror *m, const struct digest *d) {
        for (size_t i = 0; i < m->n_manifests; i++)
                if (digest_equal(&m->manifests[i].digest, d))
                        return &m->manifests[i];
        return NULL;
}

/* Drops entry I from the index and its file from disk. Lock held. */
static void manifest_drop(struct mirror *m, size_t i) {
        char path[PATH_MAX];
        manifest_path(m, &m->manifests[i].digest, path, sizeof(path));
        if (unlink(path) < 0 && errno != ENOENT)
                log_debug("mirror cannot delete cached manifest path=%s err=\"%m\"", path);
        m->manifest_bytes -= m->manifests[i].bytes;
        m->manifests[i] = m->manifests[--m->n_manifests];
}

/* Evicts least recently used manifests until one more of BYTES fits. Lock held. */
static void manifest_make_room(struct mirror *m, uint64_t bytes) {
        while (m->n_manifests > 0 && (m->n_manifests >= MIRROR_MANIFESTS_MAX ||
                                      m->manifest_bytes + bytes > MIRROR_MANIFEST_BYTES_MAX)) {
                size_t victim = 0;
                for (size_t i = 1; i < m->n_manifests; i++)
                        if (m->manifests[i].used < m->manifests[victim].used)
                                victim = i;
                manifest_drop(m, victim);
        }
}

/* Reads the cached manifest D: 0 with a malloc'd *RET_BODY, its length and media type; -ENOENT when
 * not cached or damaged (a damaged file is dropped). Blocks on disk. */
static int manifest_get(struct mirror *m, const struct digest *d, uint8_t **ret_body,
                        size_t *ret_len, char *type, size_t type_len) {
        pthread_mutex_lock(&m->lock);
        struct manifest_entry *me = manifest_find(m, d);
        if (me)
                me->used = ++m->use_clock;
        pthread_mutex_unlock(&m->lock);
        if (!me)
                return -ENOENT;
        char path[PATH_MAX];
        manifest_path(m, d, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                goto out_damaged;
        struct stat st;
        size_t max = MIRROR_MANIFEST_MAX + ORIGIN_MEDIA_TYPE_MAX + 1;
        if (fstat(fd, &st) < 0 || st.st_size <= 0 || (uint64_t)st.st_size > max) {
                close(fd);
                goto out_damaged;
        }
        size_t size = (size_t)st.st_size;
        uint8_t *buf = malloc(size);
        size_t got = 0;
        while (buf && got < size) {
                ssize_t n = read(fd, buf + got, size - got);
                if (n <= 0)
                        break;
                got += (size_t)n;
        }
        close(fd);
        if (!buf)
                return -ENOMEM;
        uint8_t *nl = got == size ? memchr(buf, '\n', size) : NULL;
        if (!nl || (size_t)(nl - buf) >= type_len) {
                free(buf);
                goto out_damaged;
        }
        size_t tl = (size_t)(nl - buf);
        size_t body_len = size - tl - 1;
        struct digest actual;
        digest_sha256(nl + 1, body_len, &actual);
        if (!digest_equal(&actual, d)) {
                free(buf);
                goto out_damaged;
        }
        memcpy(type, buf, tl);
        type[tl] = '\0';
        memmove(buf, nl + 1, body_len);
        *ret_body = buf;
        *ret_len = body_len;
        return 0;
out_damaged:
        log_warning("mirror dropped a damaged cached manifest path=%s hint=\"it is fetched "
                    "again from the origin\"",
                    path);
        pthread_mutex_lock(&m->lock);
        me = manifest_find(m, d);
        if (me)
                manifest_drop(m, (size_t)(me - m->manifests));
        pthread_mutex_unlock(&m->lock);
        return -ENOENT;
}

/* Caches BODY as manifest D of media type TYPE, after checking that it is D. 0, -EBADMSG (not D),
 * -errno (disk). Blocks on disk. */
static int manifest_put(struct mirror *m, const struct digest *d, const uint8_t *body, size_t len,
                        const char *type) {
        struct digest actual;
        digest_sha256(body, len, &actual);
        if (!digest_equal(&actual, d))
                return -EBADMSG;
        pthread_mutex_lock(&m->lock);
        bool have = manifest_find(m, d) != NULL;
        pthread_mutex_unlock(&m->lock);
        if (have)
                return 0;
        char path[PATH_MAX], tmp[PATH_MAX + 32];
        manifest_path(m, d, path, sizeof(path));
        snprintf(tmp, sizeof(tmp), "%s.tmp%lu", path, (unsigned long)pthread_self());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        int r = 0;
        size_t tl = strlen(type);
        struct {
                const void *p;
                size_t n;
        } parts[] = {{type, tl}, {"\n", 1}, {body, len}};
        for (size_t i = 0; i < 3 && r == 0; i++) {
                const uint8_t *p = parts[i].p;
                size_t left = parts[i].n;
                while (left > 0) {
                        ssize_t n = write(fd, p, left);
                        if (n < 0) {
                                r = -errno;
                                break;
                        }
                        p += n;
                        left -= (size_t)n;
                }
        }
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return r;
        }
        uint64_t bytes = tl + 1 + len;
        pthread_mutex_lock(&m->lock);
        if (!manifest_find(m, d)) {
                manifest_make_room(m, bytes);
                m->manifests[m->n_manifests++] = (struct manifest_entry){
                        .digest = *d, .bytes = bytes, .used = ++m->use_clock};
                m->manifest_bytes += bytes;
        }
        pthread_mutex_unlock(&m->lock);
        return 0;
}

/* Rebuilds the index from the directory, oldest first by mtime, dropping leftovers of interrupted
 * writes and whatever exceeds the caps. */
static int manifest_load(struct mirror *m) {
        if (mkdir(m->dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        DIR *dir = opendir(m->dir);
        if (!dir)
                return -errno;
        struct dirent *de;
        while ((de = readdir(dir))) {
                if (de->d_name[0] == '.')
                        continue;
                struct digest d;
                struct stat st;
                if (fstatat(dirfd(dir), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
                        continue;
                if (strlen(de->d_name) != DIGEST_HEX_LEN ||
                    digest_from_hex(de->d_name, DIGEST_HEX_LEN, &d) < 0) {
                        unlinkat(dirfd(dir), de->d_name, 0); /* a .tmp of a write cut short */
                        continue;
                }
                pthread_mutex_lock(&m->lock);
                manifest_make_room(m, (uint64_t)st.st_size);
                m->manifests[m->n_manifests++] = (struct manifest_entry){
                        .digest = d, .bytes = (uint64_t)st.st_size, .used = (uint64_t)st.st_mtime};
                m->manifest_bytes += (uint64_t)st.st_size;
                if ((uint64_t)st.st_mtime > m->use_clock)
                        m->use_clock = (uint64_t)st.st_mtime;
                pthread_mutex_unlock(&m->lock);
        }
        closedir(dir);
        return 0;
}

/* ---- tags ------------------------------------------------------------------------------------ */

static void tag_set(struct mirror *m, const char *key, const struct digest *d) {
        pthread_mutex_lock(&m->lock);
        struct tag_entry *slot = NULL;
        for (size_t i = 0; i < MIRROR_TAGS_MAX; i++) {
                struct tag_entry *t = &m->tags[i];
                if (strcmp(t->key, key) == 0) {
                        slot = t;
                        break;
                }
                if (!slot || t->used < slot->used)
                        slot = t; /* a free slot has used 0 */
        }
        snprintf(slot->key, sizeof(slot->key), "%s", key);
        slot->digest = *d;
        slot->used = ++m->use_clock;
        pthread_mutex_unlock(&m->lock);
}

static bool tag_get(struct mirror *m, const char *key, struct digest *ret) {
        bool found = false;
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < MIRROR_TAGS_MAX; i++)
                if (m->tags[i].key[0] && strcmp(m->tags[i].key, key) == 0) {
                        *ret = m->tags[i].digest;
                        found = true;
                        break;
                }
        pthread_mutex_unlock(&m->lock);
        return found;
}

/* ---- unreachable registries ------------------------------------------------------------------ */

static void set_down(struct mirror *m, const char *registry, bool down) {
        pthread_mutex_lock(&m->lock);
        struct down_entry *slot = NULL;
        for (size_t i = 0; i < DOWN_SLOTS; i++) {
                struct down_entry *e = &m->down[i];
                if (strcmp(e->registry, registry) == 0) {
                        slot = e;
                        break;
                }
                if (!slot || e->until_ms < slot->until_ms)
                        slot = e;
        }
        if (down) {
                snprintf(slot->registry, sizeof(slot->registry), "%s", registry);
                slot->until_ms = now_ms() + DOWN_MS;
        } else if (strcmp(slot->registry, registry) == 0) {
                slot->until_ms = 0;
        }
        pthread_mutex_unlock(&m->lock);
}

static bool is_down(struct mirror *m, const char *registry) {
        bool down = false;
        uint64_t now = now_ms();
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < DOWN_SLOTS; i++)
                if (m->down[i].until_ms > now && strcmp(m->down[i].registry, registry) == 0)
                        down = true;
        pthread_mutex_unlock(&m->lock);
        return down;
}

/* ---- blobs ----------------------------------------------------------------------------------- */

/* One engine_read in flight: shared by the waiting connection thread and the engine's reply (two
 * references). DEST is cleared when the waiter gives up, so a late reply writes nowhere. */
struct read_wait {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        unsigned refs;
        bool done;
        int err;
        size_t got;
        char *dest;
        size_t cap;
};

static void read_wait_unref(struct read_wait *w) {
        pthread_mutex_lock(&w->lock);
        bool last = --w->refs == 0;
        pthread_mutex_unlock(&w->lock);
        if (last) {
                pthread_mutex_destroy(&w->lock);
                pthread_cond_destroy(&w->cond);
                free(w);
        }
}

static void on_read(void *ctx, int err, const void *buf, size_t len) {
        struct read_wait *w = ctx;
        pthread_mutex_lock(&w->lock);
        if (w->dest && err == 0) {
                if (len > w->cap)
                        len = w->cap;
                memcpy(w->dest, buf, len);
                w->got = len;
        }
        w->err = err;
        w->done = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        read_wait_unref(w);
}

struct blob_response {
        struct mirror *m;
        uint32_t id;
        struct digest digest;
        uint64_t start; /* first byte served (Range) */
        uint64_t len;   /* bytes served */
        struct engine_stream stream;
};

static ssize_t blob_reader(void *cls, uint64_t pos, char *buf, size_t max) {
        struct blob_response *br = cls;
        struct mirror *m = br->m;
        if (pos >= br->len)
                return MHD_CONTENT_READER_END_OF_STREAM;
        if (max > br->len - pos)
                max = (size_t)(br->len - pos);
        struct read_wait *w = calloc(1, sizeof(*w));
        if (!w)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        w->refs = 2;
        w->dest = buf;
        w->cap = max;
        engine_read(m->cfg.engine, br->id, br->start + pos, max, &br->stream, on_read, w);
        pthread_mutex_lock(&w->lock);
        while (!w->done && !atomic_load(&m->stopping)) {
                struct timespec ts = deadline_after_ms(CLOCK_REALTIME, WAIT_SLICE_MS);
                pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        }
        bool done = w->done;
        int err = w->err;
        size_t got = w->got;
        w->dest = NULL;
        pthread_mutex_unlock(&w->lock);
        read_wait_unref(w);
        if (!done || err < 0 || got == 0) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&br->digest, hex);
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("mirror blob read failed digest=sha256:%s off=%" PRIu64
                                 " err=%s suppressed=%" PRIu64
                                 " hint=\"the connection is closed; containerd resumes or "
                                 "falls back\"",
                                 hex, br->start + pos,
                                 !done ? "stopping" : strerror(err < 0 ? -err : EIO), suppressed);
                return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        return (ssize_t)got;
}

static void free_blob_response(void *cls) {
        free(cls);
}

static enum MHD_Result serve_bytes(struct MHD_Connection *conn, const uint8_t *body, size_t len,
                                   const char *type, const struct digest *d) {
        char dig[DIGEST_HEX_LEN + 8];
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        snprintf(dig, sizeof(dig), "sha256:%s", hex);
        struct MHD_Response *r =
                MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
        if (r) {
                MHD_add_response_header(r, "Content-Type", type);
                MHD_add_response_header(r, "Docker-Content-Digest", dig);
        }
        return queue(conn, MHD_HTTP_OK, r);
}

static enum MHD_Result serve_blob(struct mirror *m, struct MHD_Connection *conn,
                                  const char *registry, const char *name, const char *ref) {
        struct digest d;
        if (digest_parse(ref, &d) < 0)
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "DIGEST_INVALID",
                                   "only sha256 digests are served");
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&d, hex);

        /* A manifest asked for on the blobs endpoint (containerd's fall-back path). */
        uint8_t *body = NULL;
        size_t body_len = 0;
        char type[ORIGIN_MEDIA_TYPE_MAX];
        if (manifest_get(m, &d, &body, &body_len, type, sizeof(type)) == 0) {
                enum MHD_Result ret =
                        serve_bytes(conn, body, body_len, "application/octet-stream", &d);
                free(body);
                return ret;
        }

        struct engine_blob_info bi;
        /* Known here, or to a peer (the directory answers in milliseconds): then neither the
         * origin's health nor its round trip matter. */
        bool known = engine_lookup(m->cfg.engine, &d, &bi) == 0;
        if (!known && is_down(m, registry)) {
                log_info("mirror cannot serve blob: its registry is unreachable "
                         "registry=%s digest=sha256:%s",
                         registry, hex);
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                   "not here, and the origin is unreachable");
        }
        if (!known) {
                char full[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + DIGEST_HEX_LEN + 16];
                char reason[256] = "";
                snprintf(full, sizeof(full), "%s/%s@sha256:%s", registry, name, hex);
                uint64_t t0 = now_ms();
                int r = engine_add(m->cfg.engine, full, &bi, reason, sizeof(reason));
                if (r < 0) {
                        log_info("mirror cannot serve blob ref=%s err=%s reason=\"%s\" ms=%" PRIu64,
                                 full, strerror(-r), reason, now_ms() - t0);
                        return r == -ENOENT
                                       ? error_reply(conn, MHD_HTTP_NOT_FOUND, "BLOB_UNKNOWN",
                                                     "blob unknown to the origin")
                                       : error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                                     "not here, and the origin failed: ask it");
                }
                log_debug("mirror registered blob ref=%s size=%" PRIu64, full, bi.size);
        }

        uint64_t start = 0, len = bi.size;
        const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
        /* One simple range is honoured; anything else gets the whole blob (RFC 9110). */
        int rr = range ? parse_http_range(range, bi.size, &start, &len) : -EINVAL;
        if (rr == -EINVAL) {
                start = 0;
                len = bi.size;
        }
        char cr[96];
        if (rr == -ERANGE) {
                struct MHD_Response *resp =
                        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
                snprintf(cr, sizeof(cr), "bytes */%" PRIu64, bi.size);
                if (resp)
                        MHD_add_response_header(resp, "Content-Range", cr);
                return queue(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
        }
        struct blob_response *br = calloc(1, sizeof(*br));
        if (!br)
                return MHD_NO;
        br->m = m;
        br->id = bi.id;
        br->digest = d;
        br->start = start;
        br->len = len;
        size_t block = m->cfg.chunk_size < MIRROR_MAX_READ ? m->cfg.chunk_size : MIRROR_MAX_READ;
        struct MHD_Response *resp =
                MHD_create_response_from_callback(len, block, blob_reader, br, free_blob_response);
        if (!resp) {
                free(br);
                return MHD_NO;
        }
        char dig[DIGEST_HEX_LEN + 8];
        snprintf(dig, sizeof(dig), "sha256:%s", hex);
        MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
        MHD_add_response_header(resp, "Docker-Content-Digest", dig);
        MHD_add_response_header(resp, "Accept-Ranges", "bytes");
        if (rr == 0) {
                snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start,
                         start + len - 1, bi.size);
                MHD_add_response_header(resp, "Content-Range", cr);
        }
        log_debug("mirror blob digest=sha256:%s off=%" PRIu64 " len=%" PRIu64 " size=%" PRIu64, hex,
                  start, len, bi.size);
        return queue(conn, rr == 0 ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
}

/* ---- manifests ------------------------------------------------------------------------------- */

static bool origin_unreachable(int err) {
        return err == -ECONNREFUSED || err == -EHOSTUNREACH || err == -ETIMEDOUT ||
               err == -EREMOTEIO || err == -ECANCELED;
}

/* Serves cached manifest D (GET or HEAD: MHD drops the body for HEAD). -ENOENT when it is not
 * cached (nothing queued then). */
static int serve_cached_manifest(struct mirror *m, struct MHD_Connection *conn,
                                 const struct digest *d, enum MHD_Result *ret) {
        uint8_t *body = NULL;
        size_t len = 0;
        char type[ORIGIN_MEDIA_TYPE_MAX];
        int r = manifest_get(m, d, &body, &len, type, sizeof(type));
        if (r < 0)
                return r;
        note_media_type(m, d, type);
        *ret = serve_bytes(conn, body, len, type[0] ? type : "application/octet-stream", d);
        free(body);
        return 0;
}

/* Fetches manifest REF (tag or digest) of SOURCE from the origin and caches it; WANT, when not
 * NULL, is the digest it must have. 0 and *RET_DIGEST, or -errno with REASON. */
static int fetch_manifest(struct mirror *m, const char *source, const char *ref,
                          const struct digest *want, struct digest *ret_digest, char *reason,
                          size_t reason_len) {
        struct origin_manifest om;
        uint64_t timeout =
                m->cfg.origin_timeout_ms ? m->cfg.origin_timeout_ms : MIRROR_ORIGIN_TIMEOUT_MS;
        int r = origin_manifest(m->cfg.origin, source, ref, false, MIRROR_MANIFEST_MAX,
                                now_ms() + timeout, &om, reason, reason_len);
        struct blob_ref br;
        if (ref_parse_source(source, &br) == 0)
                set_down(m, br.registry, r < 0 && origin_unreachable(r));
        if (r < 0)
                return r;
        struct digest actual;
        digest_sha256(om.body, om.size, &actual);
        if ((want && !digest_equal(&actual, want)) ||
            (om.has_digest && !digest_equal(&actual, &om.digest))) {
                snprintf(reason, reason_len, "the origin's manifest does not match its digest");
                free(om.body);
                return -EBADMSG;
        }
        r = manifest_put(m, &actual, om.body, om.size, om.media_type);
        /* Into the engine too: content-addressed, it is then announced and served to peers
         * like any blob, so another node's mirror need not ask the origin for it. */
        if (r == 0) {
                int pr = engine_put(m->cfg.engine, &actual, source, om.body, om.size);
                if (pr < 0)
                        log_debug("mirror could not share a manifest err=%s", strerror(-pr));
        }
        free(om.body);
        if (r < 0) {
                snprintf(reason, reason_len, "cannot cache the manifest: %s", strerror(-r));
                return r;
        }
        *ret_digest = actual;
        return 0;
}

/* The media type a manifest declares ("mediaType"), for one that came from a peer as plain
 * bytes; an index or an image manifest of OCI's types when it declares none. */
static void manifest_media_type(const uint8_t *body, size_t len, char *out, size_t out_len) {
        json_t *j = json_loadb((const char *)body, len, 0, NULL);
        const char *t = j ? json_string_value(json_object_get(j, "mediaType")) : NULL;
        if (!t || !t[0] || strlen(t) >= out_len || strpbrk(t, "\r\n"))
                t = j && json_object_get(j, "manifests")
                            ? "application/vnd.oci.image.index.v1+json"
                            : "application/vnd.oci.image.manifest.v1+json";
        snprintf(out, out_len, "%s", t);
        json_decref(j);
}

/* Reads manifest D whole from the engine (this node's store or a peer that holds it, never
 * the origin's blobs endpoint, which does not serve manifests: a miss fails fast) and caches
 * it. 0, or -errno: the caller then asks the origin. */
static int manifest_from_peers(struct mirror *m, const struct digest *d) {
        struct engine_blob_info b;
        if (engine_lookup(m->cfg.engine, d, &b) < 0 || b.size == 0 || b.size > MIRROR_MANIFEST_MAX)
                return -ENOENT;
        uint8_t *body = malloc((size_t)b.size);
        if (!body)
                return -ENOMEM;
        struct blob_response br = {.m = m, .id = b.id, .digest = *d, .len = b.size};
        uint64_t got = 0;
        while (got < b.size) {
                ssize_t n = blob_reader(&br, got, (char *)body + got, (size_t)(b.size - got));
                if (n <= 0)
                        break;
                got += (uint64_t)n;
        }
        int r = -EIO;
        if (got == b.size) {
                char type[ORIGIN_MEDIA_TYPE_MAX];
                manifest_media_type(body, (size_t)b.size, type, sizeof(type));
                r = manifest_put(m, d, body, (size_t)b.size, type); /* checks it is D */
        }
        free(body);
        return r;
}

static enum MHD_Result serve_manifest(struct mirror *m, struct MHD_Connection *conn,
                                      const char *registry, const char *name, const char *ref) {
        char source[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2];
        snprintf(source, sizeof(source), "%s/%s", registry, name);
        enum MHD_Result ret = MHD_NO;
        char reason[256] = "";
        struct digest d;
        uint64_t t0 = now_ms();
        if (strncmp(ref, "sha256:", 7) == 0) {
                if (digest_parse(ref, &d) < 0)
                        return error_reply(conn, MHD_HTTP_NOT_FOUND, "DIGEST_INVALID",
                                           "malformed digest");
                if (serve_cached_manifest(m, conn, &d, &ret) == 0) {
                        log_debug("mirror manifest from cache source=%s ref=%s", source, ref);
                        return ret;
                }
                if (manifest_from_peers(m, &d) == 0 &&
                    serve_cached_manifest(m, conn, &d, &ret) == 0) {
                        log_debug("mirror manifest from peers source=%s ref=%s ms=%" PRIu64, source,
                                  ref, now_ms() - t0);
                        return ret;
                }
                struct digest got;
                int r = fetch_manifest(m, source, ref, &d, &got, reason, sizeof(reason));
                if (r == 0 && serve_cached_manifest(m, conn, &d, &ret) == 0) {
                        log_debug("mirror manifest from origin source=%s ref=%s ms=%" PRIu64,
                                  source, ref, now_ms() - t0);
                        return ret;
                }
                log_info("mirror cannot serve manifest source=%s ref=%s err=%s reason=\"%s\" "
                         "ms=%" PRIu64,
                         source, ref, strerror(r < 0 ? -r : EIO), reason, now_ms() - t0);
                return r == -ENOENT ? error_reply(conn, MHD_HTTP_NOT_FOUND, "MANIFEST_UNKNOWN",
                                                  "manifest unknown to the origin")
                                    : error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                                  "not here, and the origin failed: ask it");
        }
        /* A tag: always asked of the origin, which is the only authority on what it means now.
         * Only a well-formed one: anything else (a CR LF, a space) never reaches a URL. */
        if (!route_tag_valid(ref)) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("mirror refused a malformed tag source=%s tag=%s "
                                 "suppressed=%" PRIu64,
                                 source, ref, suppressed);
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "TAG_INVALID", "malformed tag");
        }
        char key[TAG_KEY_MAX];
        snprintf(key, sizeof(key), "%s:%s", source, ref);
        int r = fetch_manifest(m, source, ref, NULL, &d, reason, sizeof(reason));
        if (r == 0) {
                tag_set(m, key, &d);
                if (serve_cached_manifest(m, conn, &d, &ret) == 0) {
                        log_debug("mirror tag resolved source=%s tag=%s ms=%" PRIu64, source, ref,
                                  now_ms() - t0);
                        return ret;
                }
                r = -EIO;
        } else if (origin_unreachable(r) && tag_get(m, key, &d) &&
                   serve_cached_manifest(m, conn, &d, &ret) == 0) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&d, hex);
                log_warning("mirror serving a stale tag: the origin is unreachable source=%s "
                            "tag=%s digest=sha256:%s reason=\"%s\" hint=\"the tag may have moved "
                            "at the origin\"",
                            source, ref, hex, reason);
                return ret;
        }
        log_info("mirror cannot resolve tag source=%s tag=%s err=%s reason=\"%s\" "
                 "ms=%" PRIu64,
                 source, ref, strerror(-r), reason, now_ms() - t0);
        return r == -ENOENT ? error_reply(conn, MHD_HTTP_NOT_FOUND, "MANIFEST_UNKNOWN",
                                          "manifest unknown to the origin")
                            : error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                          "not here, and the origin failed: ask it");
}

/* ---- dispatch -------------------------------------------------------------------------------- */

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
                return error_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "UNSUPPORTED",
                                   "the mirror serves pulls only");
        case ROUTE_MIRROR_BASE: {
                struct MHD_Response *r =
                        MHD_create_response_from_buffer(3, (void *)"{}\n", MHD_RESPMEM_PERSISTENT);
                if (r)
                        MHD_add_response_header(r, "Content-Type", "application/json");
                return queue(conn, MHD_HTTP_OK, r);
        }
        case ROUTE_MIRROR_NAME_TOO_LONG:
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_INVALID", "name too long");
        case ROUTE_MIRROR_NOT_FOUND:
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "NOT_FOUND", "not found");
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
                return error_reply(conn, MHD_HTTP_FORBIDDEN, "DENIED",
                                   "this mirror serves the node's containerd (root) only");
        }
        const char *ns = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "ns");
        if (!ns || !*ns)
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_UNKNOWN",
                                   "no ns= parameter: the upstream registry is unknown");
        char source[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2];
        struct blob_ref br;
        int n = snprintf(source, sizeof(source), "%s/%s", ns, rt.name);
        if (n < 0 || (size_t)n >= sizeof(source) || ref_parse_source(source, &br) < 0)
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_INVALID",
                                   "malformed registry, name or reference");
        if (!registry_configured(m, br.registry)) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_info("mirror refused a registry it is not configured for "
                                 "registry=%s uid=%ld suppressed=%" PRIu64
                                 " hint=\"list it in --mirror-registries to mirror it\"",
                                 br.registry, (long)(int)http_client_uid(conn), suppressed);
                return error_reply(conn, MHD_HTTP_NOT_FOUND, "NAME_UNKNOWN",
                                   "this node does not mirror that registry: ask it");
        }
        return rt.kind == ROUTE_MIRROR_BLOB
                       ? serve_blob(m, conn, br.registry, br.repository, rt.ref)
                       : serve_manifest(m, conn, br.registry, br.repository, rt.ref);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void mirror_free(struct mirror *m) {
        pthread_mutex_destroy(&m->lock);
        for (size_t i = 0; i < m->n_allow; i++)
                free(m->allow[i]);
        free(m->allow);
        if (m->credentials)
                explicit_bzero(m->credentials, strlen(m->credentials));
        free(m->credentials);
        free(m->manifests);
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
        m->manifests = calloc(MIRROR_MANIFESTS_MAX, sizeof(*m->manifests));
        m->tags = calloc(MIRROR_TAGS_MAX, sizeof(*m->tags));
        if (!m->manifests || !m->tags)
                goto out_free;
        r = -ENAMETOOLONG;
        int n = snprintf(m->dir, sizeof(m->dir), "%s/manifests", cfg->state_dir);
        if (n < 0 || (size_t)n >= sizeof(m->dir))
                goto out_free;
        r = manifest_load(m);
        if (r < 0)
                goto out_free;
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
        log_info("mirror serving listen=%s manifests_cached=%zu", cfg->listen, m->n_manifests);
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
