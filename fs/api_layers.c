/* The control API's layer routes. See api_layers.h.
 *
 * Handlers run on the control server's threads and may block: adding a layer asks the origin
 * for its size (engine_add), and ?wait= waits for its index (bounded by MAX_WAIT_S). Listings
 * read the layer's index in memory only. */
#include "fs/api_layers.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fs/api.h"
#include "layertree/layertree.h"
#include "net/api_routes.h"
#include "util/log.h"
#include "util/parse.h"

#define MAX_WAIT_S 3600
#define LS_MAX 200000 /* entries of one listing */

static const char *format_name(enum layer_format f) {
        switch (f) {
        case LAYER_FMT_TAR:
                return "tar";
        case LAYER_FMT_GZIP:
                return "gzip";
        case LAYER_FMT_ZSTD:
                return "zstd";
        case LAYER_FMT_ESTARGZ:
                return "estargz";
        }
        return "unknown";
}

static const char *state_name(const struct ltree_layer_info *l) {
        if (l->state == LTREE_PENDING)
                return "building";
        if (l->state == LTREE_FAILED)
                return "failed";
        switch (l->index_origin) {
        case LTREE_INDEX_BUILT:
                return "built";
        case LTREE_INDEX_LOCAL:
                return "local";
        case LTREE_INDEX_PEER:
                return "peer";
        case LTREE_INDEX_TOC:
                return "toc";
        default:
                return "ready";
        }
}

static json_t *layer_json(const struct ltree_layer_info *l) {
        char hex[DIGEST_HEX_LEN + 8] = "sha256:", ihex[DIGEST_HEX_LEN + 8] = "sha256:";
        digest_to_hex(&l->digest, hex + 7);
        digest_to_hex(&l->index_digest, ihex + 7);
        bool ready = l->state == LTREE_READY;
        return json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:s?, s:s?}", "digest", hex,
                         "format", format_name(l->format), "state", state_name(l), "ready", ready,
                         "blob_size", (json_int_t)l->blob_size, "tar_size", (json_int_t)l->tar_size,
                         "files", (json_int_t)l->files, "bytes_fetched",
                         (json_int_t)l->bytes_fetched, "index_digest", ready ? ihex : NULL, "error",
                         l->error[0] ? l->error : NULL);
}

static int opt_digest(const struct api_request *q, enum api_arg name, struct digest *d,
                      const struct digest **ret, char *reason, size_t reason_len) {
        const char *v = q->arg[name];
        *ret = NULL;
        if (!v || !v[0])
                return 0;
        if (digest_parse(v, d) < 0) {
                snprintf(reason, reason_len, "%s must be sha256:<64 hex>", api_arg_keys[name]);
                return -EINVAL;
        }
        *ret = d;
        return 0;
}

/* Every handler answers -ENOENT while the layer trees are off, before it looks at anything:
 * after the table's checks (a malformed digest or query is 400 here as on every route). */
static bool running(const struct daemon *d, char *reason, size_t reason_len) {
        if (!d->layers)
                snprintf(reason, reason_len, "layer trees are not running");
        return d->layers != NULL;
}

int api_on_layer_add(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                     size_t reason_len) {
        if (!running(d, reason, reason_len))
                return -ENOENT;
        const char *ref = q->arg[API_ARG_REF];
        const char *mt = q->arg[API_ARG_MEDIA_TYPE];
        const char *wait = q->arg[API_ARG_WAIT];
        struct digest diff, toc;
        const struct digest *pdiff, *ptoc;
        uint64_t wait_s = 0;
        if (!ref || !ref[0]) {
                snprintf(reason, reason_len, "missing ref=REGISTRY/REPOSITORY@sha256:<hex>");
                return -EINVAL;
        }
        int r = opt_digest(q, API_ARG_DIFF_ID, &diff, &pdiff, reason, reason_len);
        if (r == 0)
                r = opt_digest(q, API_ARG_TOC_DIGEST, &toc, &ptoc, reason, reason_len);
        if (r < 0)
                return r;
        if (wait && parse_u64(wait, 0, MAX_WAIT_S, &wait_s) < 0) {
                snprintf(reason, reason_len, "wait must be 0-%d seconds", MAX_WAIT_S);
                return -EINVAL;
        }
        struct ltree_layer_info info;
        r = ltree_add(d->layers, ref, pdiff, ptoc, mt, &info, reason, reason_len);
        if (r < 0) {
                log_notice("layer add failed ref=\"%s\" err=%s reason=\"%s\"", ref, strerror(-r),
                           reason);
                return r == -EPROTONOSUPPORT ? -EINVAL : r;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&info.digest, hex);
        log_info("layer added digest=sha256:%s source_ref=\"%s\"", hex, ref);
        if (wait_s) {
                r = ltree_wait(d->layers, &info.digest, wait_s * 1000, &info);
                if (r == -EIO)
                        log_notice("layer index failed digest=sha256:%s reason=\"%s\"", hex,
                                   info.error);
                else if (r == 0)
                        log_info("layer ready digest=sha256:%s files=%" PRIu64 " state=%s", hex,
                                 info.files, state_name(&info));
        }
        *ret = layer_json(&info);
        return 0;
}

int api_on_layers(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                  size_t reason_len) {
        (void)q;
        if (!running(d, reason, reason_len))
                return -ENOENT;
        json_t *arr = json_array();
        if (!arr)
                return -ENOMEM;
        uint32_t n = ltree_count(d->layers);
        for (uint32_t i = 0; i < n; i++) {
                struct ltree_layer_info info;
                if (ltree_get(d->layers, i, &info) == 0)
                        json_array_append_new(arr, layer_json(&info));
        }
        *ret = arr;
        return 0;
}

static const char *type_name(uint8_t t) {
        static const char *const names[] = {
                [TAR_REG] = "file",      [TAR_DIR] = "dir",          [TAR_SYMLINK] = "symlink",
                [TAR_HARDLINK] = "link", [TAR_CHR] = "char",         [TAR_BLK] = "block",
                [TAR_FIFO] = "fifo",     [TAR_WHITEOUT] = "whiteout"};
        return t < sizeof(names) / sizeof(names[0]) && names[t] ? names[t] : "unknown";
}

static json_t *file_json(const struct layer_file *f) {
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:s?}", "path", f->path, "type",
                              type_name(f->type), "mode", (json_int_t)f->mode, "uid",
                              (json_int_t)f->uid, "gid", (json_int_t)f->gid, "size",
                              (json_int_t)f->size, "mtime", (json_int_t)f->mtime, "link", f->link);
        if (o && (f->type == TAR_CHR || f->type == TAR_BLK)) {
                json_object_set_new(o, "devmajor", json_integer(f->devmajor));
                json_object_set_new(o, "devminor", json_integer(f->devminor));
        }
        if (o && (f->flags & LAYER_F_OPAQUE))
                json_object_set_new(o, "opaque", json_true());
        return o;
}

/* The layer Q names: 0 and *INFO, or -ENOENT with a reason. */
static int find_layer(struct daemon *d, const struct api_request *q, struct ltree_layer_info *info,
                      char *reason, size_t reason_len) {
        if (!running(d, reason, reason_len))
                return -ENOENT;
        if (ltree_find(d->layers, &q->digest, info) < 0) {
                snprintf(reason, reason_len, "no such layer on this node; add it first");
                return -ENOENT;
        }
        return 0;
}

int api_on_layer(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                 size_t reason_len) {
        struct ltree_layer_info info;
        int r = find_layer(d, q, &info, reason, reason_len);
        if (r < 0)
                return r;
        *ret = layer_json(&info);
        return *ret ? 0 : -ENOMEM;
}

int api_on_layer_files(struct daemon *d, const struct api_request *q, json_t **ret, char *reason,
                       size_t reason_len) {
        struct ltree_layer_info layer, *info = &layer;
        int r = find_layer(d, q, &layer, reason, reason_len);
        if (r < 0)
                return r;
        const struct layer_index *ix;
        r = ltree_index_get(d->layers, info->id, &ix);
        if (r < 0) {
                snprintf(reason, reason_len, "the layer's index is %s",
                         r == -EAGAIN ? "not ready yet; retry, or add it with --wait"
                                      : "not available (blobctl layers says why)");
                return r == -EAGAIN ? -EBUSY : r;
        }
        const char *path = q->arg[API_ARG_PATH];
        char norm[4096];
        size_t n = 0;
        if (path) { /* "/a/b/" and "a/b" name the same entry */
                while (*path == '/')
                        path++;
                n = strlen(path);
                while (n > 0 && path[n - 1] == '/')
                        n--;
                if (n >= sizeof(norm)) {
                        ltree_index_put(d->layers, info->id);
                        return -ENAMETOOLONG;
                }
                memcpy(norm, path, n);
        }
        norm[n] = '\0';
        ssize_t at = layer_index_lookup(ix, norm);
        json_t *arr = json_array();
        if (at < 0 || !arr) {
                json_decref(arr);
                ltree_index_put(d->layers, info->id);
                snprintf(reason, reason_len, "no such path in the layer");
                return at < 0 ? -ENOENT : -ENOMEM;
        }
        const struct layer_file *f = layer_index_file(ix, (size_t)at);
        if (f->type != TAR_DIR) {
                json_array_append_new(arr, file_json(f));
        } else {
                size_t cursor = (size_t)at, count = 0;
                for (ssize_t c;
                     count < LS_MAX && (c = layer_index_next_child(ix, (size_t)at, cursor)) >= 0;
                     cursor = (size_t)c, count++)
                        json_array_append_new(arr, file_json(layer_index_file(ix, (size_t)c)));
        }
        ltree_index_put(d->layers, info->id);
        *ret = arr;
        return 0;
}
