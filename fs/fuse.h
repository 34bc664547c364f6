/* The FUSE low-level adapter: the only file that includes <fuse_lowlevel.h>.
 *
 * Tree:  /  ->  blobs/  ->  sha256/  ->  <64 hex>   (regular files, 0444, their true size)
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

/* Serves requests until fs_stop(). Returns 0 or -errno. */
int fs_run(struct fuse_session *se, unsigned max_threads);

/* Asks the loop to stop (async-signal-unsafe: call from a normal thread). */
void fs_stop(struct fuse_session *se);

/* Sets the loop's exit flag only: the mount stays, requests already read are still served. */
void fs_exit(struct fuse_session *se);

/* Stopping past the drain deadline: answers every read still waiting for the engine with EIO
 * and every later read with EIO at once (the engine's own late answers are dropped), then waits
 * up to WAIT_MS for the kernel's retries of those reads, so their readers get EIO rather than
 * the aborted connection's ECONNABORTED. Call while the loop still runs. */
void fs_fail_reads(uint64_t wait_ms);

/* The session's /dev/fuse descriptor (for polling whether the kernel still talks to us). */
int fs_fd(struct fuse_session *se);

/* Unmounts and frees. NULL-safe. */
void fs_destroy(struct fuse_session *se);
