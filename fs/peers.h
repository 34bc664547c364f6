/* The daemon's peer layer, wired together: netlink, membership, the home directory, the
 * chunk source and the announcer, and the peer protocol's handlers for the HTTP server.
 * peer/ knows nothing of the engine; this file is where the two meet.
 *
 * A node runs with peers when --peers or --peer-dns is set; otherwise none of this starts
 * and every fetch goes to the origin as before. */
#pragma once
#include "fs/api.h"
#include "engine/engine.h"
#include "layertree/layertree.h"

/* Chunk transfers from peers at once: the source's max_total, which fs/main.c's HTTP client
 * leaves room for beside the origin's connections. */
#define PEERS_MAX_TRANSFERS 64

/* Starts netlink, members, directory and source (before the engine: the engine fetches
 * through the source). No-op without --peers/--peer-dns. 0 or -errno (logged). */
int peers_start(struct daemon *d);

/* Fills the engine configuration's peer fields (the change hook). The engine's fetches and
 * lookups are wired in fs/sources.c. */
void peers_engine_config(struct daemon *d, struct engine_config *ec);

/* Starts the announcer (after engine_load, so the first full announce has the blobs). */
int peers_start_announcer(struct daemon *d);

/* Adds the peer protocol's handlers to the node's HTTP server operations. */
void peers_httpd_ops(struct daemon *d, struct httpd_ops *ops);

/* The layer trees' way to the cluster (ltree_new's PEERS), bound to this daemon's directory,
 * source and announcer: NULL without --peers/--peer-dns (a node alone builds every index).
 * locate_index asks the layer's homes (source_locate_index); publish_index hands the record
 * to the announcer (announce_index), or keeps it until the announcer starts when the trees
 * publish earlier. Valid until peers_stop(); call after peers_start(). */
const struct ltree_peer_ops *peers_ltree_ops(struct daemon *d);

/* Stops the announcer (it reads the engine). Call first at shutdown. */
void peers_stop_announcer(struct daemon *d);

/* Stops the source (its pending fetches fail with ECANCELED). Before origin_free(). */
void peers_stop_source(struct daemon *d);

/* Frees directory, members and netlink. After engine_free(). NULL-safe parts. */
void peers_stop(struct daemon *d);
