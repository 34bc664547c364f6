/* The snapshotter's lazy layers served by the daemon's layer trees (fs/main.c attaches them). */
#pragma once

struct daemon;

/* Gives D's snapshotter the layer trees of D (both must be running; otherwise nothing
 * happens), with the wait of --snapshotter-lazy-wait, and re-registers the layers of the
 * remote snapshots recorded. Blocks while those register (like ltree_add). */
void snap_lazy_attach(struct daemon *d);
