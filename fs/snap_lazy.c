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
 * never outlives the tree it mounts.
 *
 * Bytes fetched for a layer are the engine's per-blob count of fetched chunks that landed
 * (engine_blob_info.fetched_bytes: peers and origin, never store hits), of the layer blob
 * itself: for a zstd layer, whose files are read from its seekable copy, that misses the
 * copy's fetches (the copy is a derived blob this helper cannot name).
 *
 * Prefetch (--snapshotter-prefetch) hands the snapshotter's scheduler (snapshot/prefetch.h)
 * the engine: a probe is one engine_find and one engine_get_stats (the budget in force), a
 * start is engine_prefetch, whose window keeps a layer's fetches to a few chunks. */
#include "fs/snap_lazy.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "engine/engine.h"
#include "fs/api.h"
#include "layertree/layertree.h"
#include "snapshot/lazy.h"
#include "snapshot/snapshotter.h"
#include "util/log.h"

static char layers_root[PATH_MAX];

/* The chunks engine_prefetch keeps in flight per blob. */
#define PREFETCH_CHUNKS ENGINE_PREFETCH_WINDOW

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

static int layer_fetched(void *ud, const char *layer, uint64_t *ret) {
        struct daemon *d = ud;
        struct digest dg;
        struct engine_blob_info bi;
        int r = digest_parse(layer, &dg);
        if (r == 0)
                r = engine_find(d->engine, &dg, &bi);
        if (r < 0)
                return r;
        *ret = bi.fetched_bytes;
        return 0;
}

static int probe(void *ud, const struct digest *dg, struct prefetch_probe *ret) {
        struct daemon *d = ud;
        struct engine_blob_info bi;
        struct ltree_layer_info li;
        int r = engine_find(d->engine, dg, &bi);
        if (r < 0)
                return r;
        struct engine_stats es;
        engine_get_stats(d->engine, &es);
        *ret = (struct prefetch_probe){
                .size = bi.size,
                .budget = es.effective_budget_bytes,
                .held = bi.chunks_present == bi.chunks,
                .unsupported = ltree_find(d->layers, dg, &li) == 0 && li.format == LAYER_FMT_ZSTD,
                .prefetching = bi.prefetching,
                .prefetch_err = bi.prefetch_err,
        };
        return 0;
}

static int start(void *ud, const struct digest *dg) {
        struct daemon *d = ud;
        struct engine_blob_info bi;
        return engine_prefetch(d->engine, dg, &bi);
}

uint64_t snap_lazy_fetched_total(struct daemon *d) {
        if (!d->layers)
                return 0;
        uint64_t sum = 0;
        uint32_t n = ltree_count(d->layers);
        for (uint32_t i = 0; i < n; i++) {
                struct ltree_layer_info li;
                struct engine_blob_info bi;
                if (ltree_get(d->layers, i, &li) == 0 &&
                    engine_find(d->engine, &li.digest, &bi) == 0)
                        sum += bi.fetched_bytes;
        }
        return sum;
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
        struct snapshotter_lazy ops = {.ud = d,
                                       .serve = serve,
                                       .restore = restore,
                                       .layers_root = layers_root,
                                       .layer_fetched = layer_fetched};
        snapshotter_set_lazy(d->snapshotter, &ops, d->cfg.snapshotter_lazy_wait_ms);
        if (!d->cfg.snapshotter_prefetch)
                return;
        /* Readers ahead of prefetch: a reader's chunk fetch starts at once in the engine (only
         * readahead and prefetch count against --max-inflight), but the origin runs at most
         * --max-connections transfers and queues the rest in order. Each prefetching layer
         * keeps up to PREFETCH_CHUNKS in flight, so at most half the connections go to
         * prefetch and a reader's fetch never waits behind a layer's. */
        unsigned layers = (unsigned)d->cfg.snapshotter_prefetch_layers;
        unsigned fit = (unsigned)(d->cfg.max_connections / 2 / PREFETCH_CHUNKS);
        if (layers > fit) {
                unsigned want = layers;
                layers = fit ? fit : 1;
                log_notice("layer prefetch narrowed layers=%u asked=%u max_connections=%" PRIu64
                           " hint=\"each prefetching layer keeps %u fetches in flight; half the "
                           "origin connections stay for readers%s\"",
                           layers, want, d->cfg.max_connections, PREFETCH_CHUNKS,
                           fit ? "" : " (fewer than that: readers may wait behind a prefetch)");
        }
        struct prefetch_config pc = {
                .max_active = layers,
                .max_layer_bytes = d->cfg.snapshotter_prefetch_max_layer,
                .queue_max = 256,
                .poll_ms = 100,
        };
        struct prefetch_ops po = {.ud = d, .probe = probe, .start = start};
        int r = snapshotter_set_prefetch(d->snapshotter, &pc, &po);
        if (r < 0)
                log_warning(
                        "layer prefetch off err=%s hint=\"containers fetch what they read only\"",
                        strerror(-r));
        else
                log_info("layer prefetch on layers=%u max_layer=%" PRIu64, pc.max_active,
                         pc.max_layer_bytes);
}
