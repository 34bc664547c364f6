/* The engine's sources, wired: the operations table (engine_source_ops, engine/engine.h)
 * through which the engine fetches chunks, looks up blobs it has never seen and asks the
 * origin for sizes, bound to the daemon's peer source and origin client.
 *
 * On a node with peers (d->source set by peers_start()) chunks come through the source (peers,
 * then the origin) and unknown digests are asked of the peers' directory; on a node alone they
 * come from the origin directly and there is no lookup. Sizes always come from the origin. */
#pragma once
#include "engine/engine.h"
#include "fs/api.h"

/* The table for D. Call after peers_start() (it decides by whether D has a source). D's
 * source and origin must outlive engine_stop_fetching() and the last lookup. */
struct engine_source_ops sources_engine_ops(struct daemon *d);
