/* The mirror's blobs (mirror.h): served through the engine, its read path's bytes handed straight
 * to MHD's response buffer (the essay in mirror.c says why and how a waiter gives up). */
#include "fs/mirror_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "util/parse.h"

#define WAIT_SLICE_MS 200 /* how often a waiting reader checks whether we are stopping */

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

ssize_t mir_blob_reader(void *cls, uint64_t pos, char *buf, size_t max) {
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

enum MHD_Result mir_serve_blob(struct mirror *m, struct MHD_Connection *conn, const char *registry,
                               const char *name, const char *ref) {
        struct digest d;
        if (digest_parse(ref, &d) < 0)
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "DIGEST_INVALID",
                                       "only sha256 digests are served");
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&d, hex);

        struct engine_blob_info bi;
        /* Known here, or to a peer (the directory answers in milliseconds): then neither the
         * origin's health nor its round trip matter. */
        bool known = engine_lookup(m->cfg.engine, &d, &bi) == 0;
        if (!known && mir_is_down(m, registry)) {
                log_info("mirror cannot serve blob: its registry is unreachable "
                         "registry=%s digest=sha256:%s",
                         registry, hex);
                return mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
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
                                       ? mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "BLOB_UNKNOWN",
                                                         "blob unknown to the origin")
                                       : mir_error_reply(conn, MHD_HTTP_NOT_FOUND, "UNAVAILABLE",
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
                return mir_queue(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
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
        struct MHD_Response *resp = MHD_create_response_from_callback(len, block, mir_blob_reader,
                                                                      br, free_blob_response);
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
        return mir_queue(conn, rr == 0 ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
}
