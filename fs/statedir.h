/* The state directory's guards at start-up: one daemon per directory, a directory we can
 * write, an index we can open (a damaged one is moved aside: the index is a cache), and no
 * store files outside the index's knowledge. Each step logs its own failure (these are the
 * daemon's edges) and returns -errno; the caller just exits. */
#pragma once
#include <stdint.h>

struct engine;
struct index;
struct store;

struct statedir;

/* Takes the exclusive lock of DIR (an existing directory): flock on DIR/lock (O_CLOEXEC),
 * which then holds this process's pid. -EBUSY when another process holds it (the error names
 * its pid); -EROFS/-EACCES when DIR cannot be written (checked by creating a file, not by
 * permission bits: a read-only mount refuses even root). The lock lasts until
 * statedir_close() or the process's exit (a crash releases it). */
int statedir_open(const char *dir, struct statedir **ret);
void statedir_close(struct statedir *sd); /* NULL-safe; leaves the lock file in place */

/* Checks that PATH (a directory of the state dir, e.g. the store's) can be written. */
int statedir_check_writable(const char *path);

/* Opens DIR/index.db. A file SQLite calls damaged or not a database is moved aside
 * (index.db.corrupt-<unix time>, with its -wal and -shm), logged, and a new empty index is
 * opened instead: the node starts cold and serves. 0 or -errno. */
int statedir_open_index(const struct statedir *sd, struct index **ret);

/* Removes store files the loaded engine has no present chunk of (blobs the index does not
 * know — a lost WAL, a moved-aside index — and blobs with no chunk present), so that nothing
 * on disk sits outside the budget. Call after engine_load() and before anything can fetch.
 * Logs what it freed. */
void statedir_reclaim(struct store *store, struct engine *e);
