/* The containerd proxy snapshotter: the daemon's third front end.
 *
 * Serves containerd.services.snapshots.v1.Snapshots on a unix socket, so containerd can use it
 * as `[proxy_plugins.p2pblobs] type = "snapshot" address = "<socket>"`. Snapshots are overlay
 * snapshots with containerd's overlayfs semantics: <state-dir>/snapshots/<id>/fs is a
 * snapshot's own tree (the upper dir while active), <id>/work its overlay work dir; an active
 * snapshot or view with no parent mounts as a bind of its fs dir, with parents as an overlay
 * whose lowerdirs are the parents' fs dirs, nearest first. Metadata lives in the node's index
 * (index/snapshots.h) and survives restarts.
 *
 * Not yet: lazy layers (layer trees under the FUSE mount as lowerdirs, ALREADY_EXISTS for a
 * layer served remotely). Every layer is a normal snapshot that containerd unpacks. */
#pragma once

struct snapshotter;

/* Opens the metadata in INDEX_PATH (migrated by idx_open), creates STATE_DIR/snapshots and
 * starts serving on SOCKET_PATH. 0 or -errno. */
int snapshotter_start(const char *state_dir, const char *index_path, const char *socket_path,
                      struct snapshotter **ret);

/* Stops serving (in-flight requests finish first) and closes. NULL-safe. */
void snapshotter_stop(struct snapshotter *sn);
