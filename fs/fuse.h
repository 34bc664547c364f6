/* The FUSE low-level adapter (with fs/layers.c, the only files that include <fuse_lowlevel.h>).
 *
 * Tree:  /  ->  blobs/  ->  sha256/  ->  <64 hex>   (regular files, 0444, their true size)
 *        /  ->  layers/ ->  sha256/  ->  <layer digest>/...   (fs/layers.h)
 * Inodes are fixed for the three directories and 16 + engine id for blobs, so lookups are
 * pure arithmetic and a blob's inode never changes while the daemon runs. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct engine;
struct resolver;
struct fuse_session;

#define FS_MAX_READ (1u << 20) /* negotiated max read and readahead: 1 MiB */

/* Mounts the tree at MOUNTPOINT (recovering a stale mount left by a crash). Lookups of digests
 * the engine does not know go to RESOLVER (NULL: ENOENT at once); both must outlive the
 * session's loop. ALLOW_OTHER: every local user may enter the tree (else only the mounting
 * user, root). 0 or -errno. */
int fs_mount(struct engine *e, struct resolver *resolver, const char *mountpoint, bool allow_other,
             struct fuse_session **ret);

/* The engine's on_invalidate (engine.h): drops the kernel's page cache of blob ID's bytes
 * [OFF, OFF + LEN) (LEN 0: to the end) with fuse_lowlevel_notify_inval_inode(). A no-op
 * before fs_mount() and after fs_destroy(). Blocks while the kernel drops the pages, which
 * waits for any of them locked by a read in flight: never call it on a FUSE request thread
 * or with a pending read's range (the engine leaves those out, and calls it on a worker).
 * UD is unused. */
void fs_invalidate(void *ud, uint32_t id, uint64_t off, uint64_t len);

/* Serves requests until fs_shutdown() ends the loop. Returns 0 or -errno. */
int fs_run(struct fuse_session *se, unsigned max_threads);

/* Ends the loop; call once, from a thread other than the loop's, while it runs. With DRAIN
 * (the mount has answered): detaches the mount at MOUNTPOINT (new opens no longer reach us,
 * files already open keep working), calls DRAIN(UD), which waits for the reads in flight and
 * returns false past its deadline, in which case every read still waiting, and the kernel's
 * retries of them (up to 1 s), get EIO from the loop itself; then tells the loop to exit and
 * wakes it with one request of our own (a reader holding a file open keeps the connection
 * alive, so nothing else would). Without DRAIN, or when the mount cannot be opened or the
 * waker not started: exit flag and unmount at once. The session and its device stay until
 * fs_destroy(), so the engine's late answers still reach their readers. */
void fs_shutdown(struct fuse_session *se, const char *mountpoint, bool (*drain)(void *ud),
                 void *ud);

/* After fs_run() has returned and the engine has answered every read (engine_free()): aborts
 * the connection through fusectl if a reader still holds a file on the detached mount,
 * unmounts, closes the device (a request still waiting on it fails), joins the waker and
 * frees. NULL-safe. */
void fs_destroy(struct fuse_session *se);
