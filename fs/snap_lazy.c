/* The snapshotter's layer server: the daemon's layer trees (layertree/layertree.h).
 *
 * A layer Prepare registers the layer by the ref its labels give (registry/repository of the
 * image, the layer's digest), so the engine fetches it from that origin with the daemon's
 * registry settings, and waits on the tree's index within the snapshotter's bound. What the
 * tree reports decides: READY serves the layer lazily; still pending (the index is being
 * built or fetched), failed, or refused (a blob that is not a layer, the layer table full)
 * falls back, with the reason in the snapshotter's log line. A pending index keeps being
 * built: the next pull of an image sharing the layer serves it lazily.
 *
 * Nothing here is held: the tree owns its layers for the daemon's life, so a remote snapshot
 * never outlives the tree it mounts. */
#include "fs/snap_lazy.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "fs/api.h"
#include "layertree/layertree.h"
#include "snapshot/lazy.h"
#include "snapshot/snapshotter.h"
#include "util/log.h"

static char layers_root[PATH_MAX];

static int serve(void *ud, const struct lazy_layer *l, uint64_t wait_ms, char *reason,
                 size_t reason_len) {
        struct daemon *d = ud;
        struct ltree_layer_info li;
        char why[256] = "";
        int r = ltree_add(d->layers, l->ref, NULL, l->has_toc ? &l->toc_digest : NULL, NULL, &li,
                          why, sizeof(why));
        if (r < 0) {
                snprintf(reason, reason_len, "cannot register the layer: %s",
                         why[0] ? why : strerror(-r));
                return r;
        }
        r = ltree_wait(d->layers, &l->digest, wait_ms, &li);
        switch (r) {
        case 0:
                return 0;
        case -EAGAIN:
                snprintf(reason, reason_len,
                         "its index was not ready within --snapshotter-lazy-wait (still being "
                         "made: a later pull of this layer is lazy)");
                return -ETIMEDOUT;
        case -EIO:
                snprintf(reason, reason_len, "no index: %s", li.error);
                return r;
        default:
                snprintf(reason, reason_len, "layer tree: %s", strerror(-r));
                return r;
        }
}

static int restore(void *ud, const char *ref, const char *layer) {
        struct daemon *d = ud;
        struct ltree_layer_info li;
        char why[256] = "";
        int r = ltree_add(d->layers, ref, NULL, NULL, NULL, &li, why, sizeof(why));
        if (r < 0)
                log_warning("remote snapshot layer not registered layer=%s ref=%s err=%s "
                            "reason=\"%s\" hint=\"containers on it fail to start; remove the "
                            "image and pull it again\"",
                            layer, ref, strerror(-r), why);
        return r;
}

void snap_lazy_attach(struct daemon *d) {
        if (!d->snapshotter || !d->layers)
                return;
        if ((size_t)snprintf(layers_root, sizeof(layers_root), "%s/layers", d->cfg.mountpoint) >=
            sizeof(layers_root)) {
                log_warning("lazy layers off err=%s hint=\"a shorter --mountpoint\"",
                            strerror(ENAMETOOLONG));
                return;
        }
        struct snapshotter_lazy ops = {
                .ud = d, .serve = serve, .restore = restore, .layers_root = layers_root};
        snapshotter_set_lazy(d->snapshotter, &ops, d->cfg.snapshotter_lazy_wait_ms);
}
