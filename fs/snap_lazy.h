/* The snapshotter's lazy layers served by the daemon's layer trees (fs/main.c attaches them). */
#pragma once
#include <stdint.h>

struct daemon;

/* Gives D's snapshotter the layer trees of D (both must be running; otherwise nothing
 * happens), with the wait of --snapshotter-lazy-wait, and re-registers the layers of the
 * remote snapshots recorded. Blocks while those register (like ltree_add). With
 * --snapshotter-prefetch, also starts the snapshotter's prefetcher over the engine. */
void snap_lazy_attach(struct daemon *d);

/* Bytes of every layer tree's blob fetched from peers and the origin since the daemon started
 * (index passes, container reads, prefetch): one engine_find per registered layer. */
uint64_t snap_lazy_fetched_total(struct daemon *d);
