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
 * Locks: `lock` protects the media-type table, the tag table, the odd-type table and the down
 * list; it is never held across I/O or a call into the engine or the origin. */
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
#include "net/fetch_err.h"
#include "net/http_server.h"
#include "net/route.h"
#include "registry/auth.h"
#include "registry/origin.h"
#include "util/ref.h"
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

/* The media type the origin sent with manifest DIGEST; "" in type when the slot is free. */
struct type_entry {
        struct digest digest;
        char type[ORIGIN_MEDIA_TYPE_MAX];
        uint64_t used; /* last use, from use_clock */
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
        struct http_server *srv;
        atomic_bool stopping;
        char hosts_dir[PATH_MAX / 2]; /* "" when none */
        char *credentials;            /* --registry-config's JSON, or NULL */
        char **allow;                 /* the registry list and cfg.registries, copied */
        size_t n_allow;
        bool any_registry; /* "*" in the list */

        pthread_mutex_t lock;     /* protects everything below */
        struct type_entry *types; /* MIRROR_TYPES_MAX */
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

/* ---- media types ----------------------------------------------------------------------------- */

static void type_set(struct mirror *m, const struct digest *d, const char *type) {
        if (!type[0])
                return; /* nothing to remember: the body says it */
        pthread_mutex_lock(&m->lock);
        struct type_entry *slot = &m->types[0];
        for (size_t i = 0; i < MIRROR_TYPES_MAX; i++) {
                struct type_entry *t = &m->types[i];
                if (t->type[0] && digest_equal(&t->digest, d)) {
                        slot = t;
                        break;
                }
                if (t->used < slot->used)
                        slot = t; /* a free slot has used 0 */
        }
        slot->digest = *d;
        snprintf(slot->type, sizeof(slot->type), "%s", type);
        slot->used = ++m->use_clock;
        pthread_mutex_unlock(&m->lock);
}

/* The media type a manifest declares ("mediaType"), for one whose origin type is not
 * remembered; an index or an image manifest of OCI's types when it declares none, and
 * application/octet-stream for what is not JSON at all (an odd index entry's bytes). */
static void manifest_media_type(const uint8_t *body, size_t len, char *out, size_t out_len) {
        json_t *j = json_loadb((const char *)body, len, 0, NULL);
        const char *t = j ? json_string_value(json_object_get(j, "mediaType")) : NULL;
        if (!t || !t[0] || strlen(t) >= out_len || strpbrk(t, "\r\n"))
                t = !j ? "application/octet-stream"
                    : json_object_get(j, "manifests")
                            ? "application/vnd.oci.image.index.v1+json"
                            : "application/vnd.oci.image.manifest.v1+json";
        snprintf(out, out_len, "%s", t);
        json_decref(j);
}

/* The media type manifest D (BODY, LEN bytes) is served with: the one the origin sent, else
 * the one its body declares. */
static void manifest_type(struct mirror *m, const struct digest *d, const uint8_t *body, size_t len,
                          char *out, size_t out_len) {
        out[0] = '\0';
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < MIRROR_TYPES_MAX; i++) {
                struct type_entry *t = &m->types[i];
                if (t->type[0] && digest_equal(&t->digest, d)) {
                        t->used = ++m->use_clock;
                        snprintf(out, out_len, "%s", t->type);
                        break;
                }
        }
        pthread_mutex_unlock(&m->lock);
        if (!out[0])
                manifest_media_type(body, len, out, out_len);
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

/* ERR, an origin_manifest() answer: no answer came at all (net/fetch_err.h decides which). */
static bool origin_unreachable(int err) {
        return fetch_err_is_unreachable(fetch_err_from_errno(err));
}

/* Serves manifest D, BODY of LEN bytes (GET or HEAD: MHD drops the body for HEAD). */
static enum MHD_Result serve_manifest_body(struct mirror *m, struct MHD_Connection *conn,
                                           const struct digest *d, const uint8_t *body,
                                           size_t len) {
        char type[ORIGIN_MEDIA_TYPE_MAX];
        manifest_type(m, d, body, len, type, sizeof(type));
        note_media_type(m, d, type);
        return serve_bytes(conn, body, len, type, d);
}

/* Reads manifest D whole from the engine: this node's store, or a peer that holds it (a
 * registered one whose chunks were evicted is asked of the origin's blobs endpoint, which fails
 * fast where it does not serve manifests). 0 and a malloc'd *RET_BODY of *RET_LEN bytes whose
 * sha256 is D, or -errno: the caller then asks the origin's manifests endpoint. Blocks. */
static int manifest_from_engine(struct mirror *m, const struct digest *d, uint8_t **ret_body,
                                size_t *ret_len) {
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
        struct digest actual;
        if (got == b.size)
                digest_sha256(body, (size_t)b.size, &actual);
        if (got != b.size || !digest_equal(&actual, d)) {
                free(body);
                return -EIO;
        }
        *ret_body = body;
        *ret_len = (size_t)b.size;
        return 0;
}

/* Fetches manifest REF (tag or digest) of SOURCE from the origin and stores it in the engine;
 * WANT, when not NULL, is the digest it must have. 0, *RET_DIGEST and the malloc'd body
 * (*RET_BODY, *RET_LEN), or -errno with REASON. A manifest the engine cannot store (larger than
 * a quarter of the budget, a full disk) is served all the same, just not kept. */
static int fetch_manifest(struct mirror *m, const char *source, const char *ref,
                          const struct digest *want, struct digest *ret_digest, uint8_t **ret_body,
                          size_t *ret_len, char *reason, size_t reason_len) {
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
        type_set(m, &actual, om.media_type);
        /* Content-addressed: kept under the cache budget, announced and served to peers like
         * any blob, so another node's mirror need not ask the origin for it. */
        int pr = engine_put(m->cfg.engine, &actual, source, om.body, om.size);
        if (pr < 0)
                log_debug("mirror cannot keep a manifest err=%s size=%zu", strerror(-pr), om.size);
        *ret_digest = actual;
        *ret_body = om.body;
        *ret_len = om.size;
        return 0;
}

static enum MHD_Result serve_manifest(struct mirror *m, struct MHD_Connection *conn,
                                      const char *registry, const char *name, const char *ref) {
        char source[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2];
        snprintf(source, sizeof(source), "%s/%s", registry, name);
        enum MHD_Result ret = MHD_NO;
        char reason[256] = "";
        struct digest d;
        uint8_t *body = NULL;
        size_t len = 0;
        uint64_t t0 = now_ms();
        if (strncmp(ref, "sha256:", 7) == 0) {
                if (digest_parse(ref, &d) < 0)
                        return error_reply(conn, MHD_HTTP_NOT_FOUND, "DIGEST_INVALID",
                                           "malformed digest");
                if (manifest_from_engine(m, &d, &body, &len) == 0) {
                        log_debug("mirror manifest from the engine source=%s ref=%s ms=%" PRIu64,
                                  source, ref, now_ms() - t0);
                        goto out_serve;
                }
                struct digest got;
                int r = fetch_manifest(m, source, ref, &d, &got, &body, &len, reason,
                                       sizeof(reason));
                if (r == 0) {
                        log_debug("mirror manifest from origin source=%s ref=%s ms=%" PRIu64,
                                  source, ref, now_ms() - t0);
                        goto out_serve;
                }
                log_info("mirror cannot serve manifest source=%s ref=%s err=%s reason=\"%s\" "
                         "ms=%" PRIu64,
                         source, ref, strerror(-r), reason, now_ms() - t0);
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
        int r = fetch_manifest(m, source, ref, NULL, &d, &body, &len, reason, sizeof(reason));
        if (r == 0) {
                tag_set(m, key, &d);
                log_debug("mirror tag resolved source=%s tag=%s ms=%" PRIu64, source, ref,
                          now_ms() - t0);
                goto out_serve;
        }
        if (origin_unreachable(r) && tag_get(m, key, &d) &&
            manifest_from_engine(m, &d, &body, &len) == 0) {
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&d, hex);
                log_warning("mirror serving a stale tag: the origin is unreachable source=%s "
                            "tag=%s digest=sha256:%s reason=\"%s\" hint=\"the tag may have moved "
                            "at the origin\"",
                            source, ref, hex, reason);
                goto out_serve;
        }
        log_info("mirror cannot resolve tag source=%s tag=%s err=%s reason=\"%s\" "
                 "ms=%" PRIu64,
                 source, ref, strerror(-r), reason, now_ms() - t0);
        return r == -ENOENT ? error_reply(conn, MHD_HTTP_NOT_FOUND, "MANIFEST_UNKNOWN",
                                          "manifest unknown to the origin")
                            : error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                          "not here, and the origin failed: ask it");
out_serve:
        ret = serve_manifest_body(m, conn, &d, body, len);
        free(body);
        return ret;
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
