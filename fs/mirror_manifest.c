/* The mirror's manifests and tags (mirror.h): served by digest through the engine or fetched from
 * the origin and kept in the engine; the media types, tags and unreachable registries the mirror
 * remembers about the origin (mirror.c's essay says why each). */
#include "fs/mirror_int.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/fetch_err.h"
#include "util/log.h"
#include "util/parse.h"

static const char *const known_manifest_types[] = {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
};

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

bool mir_is_down(struct mirror *m, const char *registry) {
        bool down = false;
        uint64_t now = now_ms();
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < DOWN_SLOTS; i++)
                if (m->down[i].until_ms > now && strcmp(m->down[i].registry, registry) == 0)
                        down = true;
        pthread_mutex_unlock(&m->lock);
        return down;
}

/* ---- manifests ------------------------------------------------------------------------------- */

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
        return mir_queue(conn, MHD_HTTP_OK, r);
}

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
                ssize_t n = mir_blob_reader(&br, got, (char *)body + got, (size_t)(b.size - got));
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

/* The answer when neither the engine nor the origin gave the manifest or resolved the tag (ERR
 * is fetch_manifest()'s): a 404 either way, so containerd falls back to the origin itself. */
static enum MHD_Result manifest_failed(struct MHD_Connection *conn, int err) {
        return err == -ENOENT ? mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "MANIFEST_UNKNOWN",
                                                "manifest unknown to the origin")
                              : mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
                                                "not here, and the origin failed: ask it");
}

enum MHD_Result mir_serve_manifest(struct mirror *m, struct MHD_Connection *conn,
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
                        return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "DIGEST_INVALID",
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
                return manifest_failed(conn, r);
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
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "TAG_INVALID", "malformed tag");
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
        return manifest_failed(conn, r);
out_serve:
        ret = serve_manifest_body(m, conn, &d, body, len);
        free(body);
        return ret;
}
