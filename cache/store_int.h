/* The chunk store's private header (engine/engine_int.h's habit): the structures the store's
 * files share and the prototypes of the internal functions one file defines and another calls.
 * Nothing outside cache/store*.c includes it; the contract is cache/store.h.
 *
 * Internal functions are named sto_*. Locks: s->fd_lock (the descriptor cache and the drop
 * batches) and s->ra_lock (the readahead list) are leaves, never held together and never across
 * a syscall that waits for the disk; a function's comment says which it must be called without. */
#pragma once
#include "cache/store.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* A range store_readahead() brought in that store_read() has not yet read whole. */
struct ra_range {
        struct digest blob;
        uint64_t off, len;
        uint64_t read; /* bytes of it read since; a byte read twice counts twice, which at worst
                        * forgets the range early (its reads still drop what they read) */
};

/* Ranges remembered at once; with chunk-sized ranges, STORE_RA_MAX_BYTES binds first. */
#define RA_SLOTS 64

/* One POSIX_FADV_WILLNEED is cut short by the kernel at max(the disk's largest request, the
 * file's readahead window) (force_page_cache_ra), so store_readahead() asks in pieces no larger
 * and the whole range is submitted, all of it in flight at once. The pieces are as large as the
 * store's disk allows (s->ra_piece, read from sysfs at store_open: sto_ra_piece), because each
 * piece reaches the disk as requests of its own: 128 KiB pieces made a 1 MiB chunk eight disk
 * requests, where the kernel's own readahead of the same file sends about one (bench item 1:
 * 7500 vs 950 requests per GiB). RA_PIECE_MIN, the cap with default settings, is what is used
 * when sysfs says nothing (no block device behind the store: tmpfs, btrfs, overlay). Read once:
 * an operator who lowers the disk's settings later gets ranges read ahead in part (the rest is
 * read when asked for, as without readahead) until the next start. */
#define RA_PIECE_MIN (UINT64_C(128) << 10)

/* One open blob: its data file and its checksum file, shared by every thread reading the blob.
 * The two descriptors are immutable once the entry exists and are used only with pread(),
 * fstat(), posix_fadvise() and (on a failed check) lseek(SEEK_DATA/SEEK_HOLE): nothing relies
 * on a file offset, so threads share them without a lock. What must not happen is a close()
 * while another thread is inside a pread() (the number could be reused by an open of another
 * file meanwhile): hence the reference count, and the descriptors are closed by whoever drops
 * the last reference. */
struct fd_ent {
        struct store *s;    /* (immutable) */
        struct digest blob; /* (immutable) */
        int fd, sfd;        /* data, checksums, O_RDONLY (immutable) */
        unsigned refs;      /* the table's (while cached) + one per user (fd_lock) */
        bool cached;        /* in s->fds[] (fd_lock) */
        uint64_t used;      /* LRU clock (fd_lock) */
        /* Pages read and not dropped yet: [drop_from, drop_to), drop_bytes read in it; see
         * "Page cache" in the essay. (fd_lock) */
        uint64_t drop_from, drop_to, drop_bytes;
};

struct store {
        char dir[PATH_MAX];           /* <state>/chunks/sha256; immutable after open, so no lock */
        char sum_dir[PATH_MAX];       /* <state>/chunks/crc32c; the same */
        pthread_mutex_t ra_lock;      /* protects the three fields below; taken alone */
        struct ra_range ra[RA_SLOTS]; /* oldest first */
        unsigned ra_count;
        uint64_t ra_bytes; /* sum of ra[].len: at most STORE_RA_MAX_BYTES */
        uint64_t ra_piece; /* bytes per WILLNEED (see RA_PIECE_MIN); immutable after open */
        /* The descriptor cache. fd_lock is a leaf (never held across a syscall that waits for
         * the disk, never together with ra_lock). */
        pthread_mutex_t fd_lock;
        struct fd_ent **fds; /* max_fds slots, nfds used (fd_lock) */
        unsigned nfds, max_fds;
        uint64_t clock;     /* (fd_lock) */
        uint64_t undropped; /* sum of every entry's drop_bytes (fd_lock) */
};

/* Checksum entries (store_sum.c tells their format): one of SUM_LEN bytes per BLOCK bytes. */
#define BLOCK STORE_BLOCK
#define SUM_LEN 8u
#define SUM_WINDOW 256u /* entries read at once: 2 KiB, for 1 MiB of data */

/* ---- store.c: paths and the descriptor cache ---- */

/* DIR/<hex of BLOB> into PATH. 0 or -ENAMETOOLONG. */
int sto_file_path(const char *dir, const struct digest *blob, char path[PATH_MAX]);
/* open(2) of BLOB's file in DIR with FLAGS | O_CLOEXEC | O_NOFOLLOW: an fd or -errno. */
int sto_open_in(const char *dir, const struct digest *blob, int flags);
/* ... of its data file. */
int sto_open_blob(struct store *s, const struct digest *blob, int flags);
/* Opens BLOB's file in DIR for writing (creating it), recreating DIR when it was deleted under
 * us. An fd or -errno. */
int sto_open_for_write(const char *dir, const struct digest *blob);

/* A referenced entry for BLOB, from the cache or opened now (and cached, evicting the least
 * recently used entry when the table is full). 0; -ESTALE when the blob file is missing;
 * -EBADMSG when its checksum file is (nothing of it can be checked); -errno. Without fd_lock. */
int sto_fd_get(struct store *s, const struct digest *blob, struct fd_ent **ret);
/* Drops a reference (NULL-safe); the last one drops what the entry owes the page cache and
 * closes its descriptors. Without fd_lock. */
void sto_fd_put(struct store *s, struct fd_ent *ent);
/* Forgets BLOB's entry, if any: its descriptors close once the last reader is done. */
void sto_fd_forget(struct store *s, const struct digest *blob);
/* Forgets ENT if it is still the cached entry (a reader found its file replaced). */
void sto_fd_forget_ent(struct store *s, struct fd_ent *ent);

/* ---- store_read.c ---- */

/* The largest WILLNEED the kernel submits whole for files in DIR (see RA_PIECE_MIN): from the
 * sysfs queue of DIR's block device, at least RA_PIECE_MIN, at most STORE_RA_MAX_BYTES. SYSFS is
 * the sysfs mount ("/sys"; tests pass a directory of their own). */
uint64_t sto_ra_piece(const char *sysfs, const char *dir);

/* Drops the pages of [FROM, TO) of ENT's file, except those of readahead ranges not read whole
 * yet. Called with a reference, without fd_lock and ra_lock. */
void sto_fd_flush_range(const struct fd_ent *ent, uint64_t from, uint64_t to);

/* ---- store_sum.c ---- */

/* Whether [OFF, OFF+LEN) of FD is data (no hole, file long enough). 0, -ESTALE, -errno. */
int sto_probe_fd(int fd, uint64_t off, size_t len);
/* Reads [OFF, OFF+LEN) of FD into BUF, every block it touches checked against its entry in
 * SFD. SIZE is the file's size. 0, -EBADMSG, -ESTALE, -errno. */
int sto_read_verified(int fd, int sfd, uint64_t size, uint64_t off, uint8_t *buf, size_t len);
