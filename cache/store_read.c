/* The store's reads: store_read(), the readahead ranges a sequential caller asks for, and the
 * batching of page-cache drops behind reads. Part of the store (store.c; contract in store.h).
 *
 * Page cache of reads: dropped in batches (store.h), since every POSIX_FADV_DONTNEED whose
 * pages are still on another CPU's LRU batch makes the kernel drain every CPU's
 * (lru_add_drain_all: a fifth of the samples of random 4 KiB reads when done per read).
 *
 * Reads and readahead. store_read() reads exactly what it is asked for (POSIX_FADV_RANDOM: no
 * kernel readahead) and drops it: kernel readahead on every read added pages nobody read, paid
 * for twice (reading, then evicting), and cost a quarter of the daemon's CPU. But a sequential
 * reader served that way waits for one synchronous disk read per chunk at queue depth one: a
 * fifth of what the disk gives the same reads of the store file. So readahead is the caller's
 * decision, per range (store_readahead: the engine asks for the next few chunks of a sequential
 * stream, which it knows are present), and the store keeps the account: a fixed list of ranges
 * asked for and not yet read whole, at most STORE_RA_MAX_BYTES in all. A range read whole
 * leaves the list (its reads dropped its pages); when a new range does not fit, the oldest are
 * dropped from the page cache (DONTNEED) and forgotten, so an abandoned stream costs nothing
 * after the list turns over. Readahead pages are thus bounded by design, however many readers
 * there are and whatever they do. One gap: DONTNEED skips pages whose read is still in flight,
 * so a range dropped within a disk latency of being asked for keeps those pages until they are
 * read or reclaimed; that takes more than STORE_RA_MAX_BYTES of readahead asked for in that
 * time (the engine asks for a few chunks per sequential stream). */
#include "cache/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static void dontneed(int fd, uint64_t from, uint64_t to) {
        if (to > from)
                posix_fadvise(fd, (off_t)from, (off_t)(to - from), POSIX_FADV_DONTNEED);
}

/* Drops the pages of [FROM, TO) of ENT's file, except those of readahead ranges not read
 * whole yet: a batch spans whatever its reads spanned (concurrent requests of one stream
 * arrive out of order), and dropping the chunk a reader is about to read would make it wait
 * for the disk. Those pages are the readahead list's to drop (when read whole, or when they
 * age out). Called with a reference, without fd_lock and ra_lock. */
void sto_fd_flush_range(const struct fd_ent *ent, uint64_t from, uint64_t to) {
        if (to <= from)
                return;
        struct store *s = ent->s;
        uint64_t keep_off[RA_SLOTS], keep_end[RA_SLOTS];
        unsigned n = 0;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count; i++) {
                const struct ra_range *r = &s->ra[i];
                if (r->off < to && from < r->off + r->len && digest_equal(&r->blob, &ent->blob)) {
                        /* insertion sort by offset: a handful of ranges */
                        unsigned j = n++;
                        for (; j > 0 && keep_off[j - 1] > r->off; j--) {
                                keep_off[j] = keep_off[j - 1];
                                keep_end[j] = keep_end[j - 1];
                        }
                        keep_off[j] = r->off;
                        keep_end[j] = r->off + r->len;
                }
        }
        pthread_mutex_unlock(&s->ra_lock);
        uint64_t pos = from;
        for (unsigned i = 0; i < n && pos < to; i++) {
                dontneed(ent->fd, pos, keep_off[i] < to ? keep_off[i] : to);
                if (keep_end[i] > pos)
                        pos = keep_end[i];
        }
        dontneed(ent->fd, pos, to);
}

/* A number of KiB from a sysfs file, or 0. */
static uint64_t sysfs_kib(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return 0;
        unsigned long long kib = 0;
        if (fscanf(f, "%llu", &kib) != 1)
                kib = 0;
        fclose(f);
        return kib > UINT64_MAX / 1024 ? 0 : (uint64_t)kib;
}

uint64_t sto_ra_piece(const char *sysfs, const char *dir) {
        struct stat st;
        if (stat(dir, &st) < 0)
                return RA_PIECE_MIN;
        /* The kernel's cap is max(bdi io_pages, the file's ra_pages): the queue's max_sectors_kb
         * and read_ahead_kb. A partition's directory has no queue; its disk's (the parent) has. */
        static const char *const queues[] = {"queue", "../queue"};
        uint64_t kib = 0;
        for (size_t i = 0; i < sizeof(queues) / sizeof(queues[0]) && kib == 0; i++) {
                char path[PATH_MAX];
                const char *const files[] = {"max_sectors_kb", "read_ahead_kb"};
                for (size_t j = 0; j < 2; j++) {
                        int n = snprintf(path, sizeof(path), "%s/dev/block/%u:%u/%s/%s", sysfs,
                                         major(st.st_dev), minor(st.st_dev), queues[i], files[j]);
                        uint64_t v = n > 0 && (size_t)n < sizeof(path) ? sysfs_kib(path) : 0;
                        if (v > kib)
                                kib = v;
                }
        }
        uint64_t piece = kib * 1024;
        if (piece < RA_PIECE_MIN)
                return RA_PIECE_MIN;
        return piece > STORE_RA_MAX_BYTES ? STORE_RA_MAX_BYTES : piece;
}

/* Submits reads of [OFF, OFF+LEN) without waiting for them; see RA_PIECE_MIN. */
static void willneed(int fd, uint64_t piece, uint64_t off, uint64_t len) {
        for (uint64_t done = 0; done < len; done += piece) {
                uint64_t n = len - done < piece ? len - done : piece;
                posix_fadvise(fd, (off_t)(off + done), (off_t)n, POSIX_FADV_WILLNEED);
        }
}

/* Drops the page cache of a range; a file that is gone has none. */
static void drop_range(struct store *s, const struct digest *blob, uint64_t off, uint64_t len) {
        struct fd_ent *ent;
        if (sto_fd_get(s, blob, &ent) < 0)
                return;
        sto_fd_flush_range(ent, off, off + len);
        sto_fd_put(s, ent);
}

/* Caller holds ra_lock. */
static void ra_remove(struct store *s, unsigned i) {
        s->ra_bytes -= s->ra[i].len;
        memmove(&s->ra[i], &s->ra[i + 1], (s->ra_count - i - 1) * sizeof(s->ra[0]));
        s->ra_count--;
}

static bool overlaps(const struct ra_range *r, const struct digest *blob, uint64_t off,
                     uint64_t len) {
        return off < r->off + r->len && r->off < off + len && digest_equal(&r->blob, blob);
}

/* store_read() read [OFF, OFF+LEN) of BLOB through ENT: readahead ranges now read whole are
 * forgotten and their pages dropped (the read batches leave them alone while they are on the
 * list, see sto_fd_flush_range). (A read that failed notes nothing: its ranges age out of the
 * list, dropped.) */
static void ra_note_read(struct store *s, const struct fd_ent *ent, uint64_t off, uint64_t len) {
        const struct digest *blob = &ent->blob;
        uint64_t done_off[RA_SLOTS], done_end[RA_SLOTS];
        unsigned ndone = 0;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count;) {
                struct ra_range *r = &s->ra[i];
                if (!overlaps(r, blob, off, len)) {
                        i++;
                        continue;
                }
                uint64_t from = off > r->off ? off : r->off;
                uint64_t to = off + len < r->off + r->len ? off + len : r->off + r->len;
                r->read += to - from;
                if (r->read >= r->len) {
                        done_off[ndone] = r->off;
                        done_end[ndone++] = r->off + r->len;
                        ra_remove(s, i);
                } else {
                        i++;
                }
        }
        pthread_mutex_unlock(&s->ra_lock);
        for (unsigned i = 0; i < ndone; i++)
                sto_fd_flush_range(ent, done_off[i], done_end[i]);
}

void store_note_served(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        bool any = false;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count && !any; i++)
                any = overlaps(&s->ra[i], blob, off, len);
        pthread_mutex_unlock(&s->ra_lock);
        struct fd_ent *ent;
        if (!any || sto_fd_get(s, blob, &ent) < 0)
                return;
        ra_note_read(s, ent, off, len);
        sto_fd_put(s, ent);
}

int store_readahead(struct store *s, const struct digest *blob, uint64_t off, size_t len) {
        if (len == 0 || len > STORE_RA_MAX_BYTES)
                return -E2BIG;
        struct ra_range old[RA_SLOTS];
        unsigned nold = 0;
        pthread_mutex_lock(&s->ra_lock);
        for (unsigned i = 0; i < s->ra_count; i++) {
                const struct ra_range *r = &s->ra[i];
                if (r->off <= off && off + len <= r->off + r->len && digest_equal(&r->blob, blob)) {
                        pthread_mutex_unlock(&s->ra_lock);
                        return 0; /* asked for already, not read yet */
                }
        }
        while (s->ra_count == RA_SLOTS || s->ra_bytes + len > STORE_RA_MAX_BYTES) {
                old[nold++] = s->ra[0];
                ra_remove(s, 0);
        }
        s->ra[s->ra_count++] = (struct ra_range){.blob = *blob, .off = off, .len = len};
        s->ra_bytes += len;
        pthread_mutex_unlock(&s->ra_lock);

        /* Dropped outside the lock: readers never wait for these syscalls. A page a reader
         * is copying this instant is skipped by DONTNEED, and that reader drops it after. */
        for (unsigned i = 0; i < nold; i++)
                drop_range(s, &old[i].blob, old[i].off, old[i].len);
        struct fd_ent *ent;
        int r = sto_fd_get(s, blob, &ent);
        if (r < 0) { /* nothing was read ahead: take the range back off the list */
                pthread_mutex_lock(&s->ra_lock);
                for (unsigned i = s->ra_count; i-- > 0;)
                        if (s->ra[i].off == off && s->ra[i].len == len &&
                            digest_equal(&s->ra[i].blob, blob)) {
                                ra_remove(s, i);
                                break;
                        }
                pthread_mutex_unlock(&s->ra_lock);
                return r == -EBADMSG ? -ESTALE : r;
        }
        willneed(ent->fd, s->ra_piece, (uint64_t)off, len);
        sto_fd_put(s, ent);
        return 0;
}

/* Notes that ENT's pages [FROM, TO) were read: they are dropped with the entry's next batch
 * (once STORE_DROP_BATCH bytes were read through it), or all entries' batches at once when
 * the store owes the page cache more than STORE_DROP_MAX in all. Without fd_lock. */
static void fd_flush_some(struct store *s);

static void fd_note_read(struct store *s, struct fd_ent *ent, uint64_t from, uint64_t to) {
        uint64_t dfrom = 0, dto = 0;
        pthread_mutex_lock(&s->fd_lock);
        if (ent->drop_bytes == 0) {
                ent->drop_from = from;
                ent->drop_to = to;
        } else {
                if (from < ent->drop_from)
                        ent->drop_from = from;
                if (to > ent->drop_to)
                        ent->drop_to = to;
        }
        ent->drop_bytes += to - from;
        s->undropped += to - from;
        if (ent->drop_bytes >= STORE_DROP_BATCH) {
                dfrom = ent->drop_from;
                dto = ent->drop_to;
                s->undropped -= ent->drop_bytes;
                ent->drop_bytes = ent->drop_from = ent->drop_to = 0;
        }
        bool over = s->undropped > STORE_DROP_MAX;
        pthread_mutex_unlock(&s->fd_lock);
        sto_fd_flush_range(ent, dfrom, dto);
        if (over)
                fd_flush_some(s);
}

/* Drops cached entries' batches until the store owes at most half of STORE_DROP_MAX. What
 * entries out of the table owe (a reader still holds one) is dropped when that reader lets
 * go. */
static void fd_flush_some(struct store *s) {
        for (;;) {
                struct fd_ent *ent = NULL;
                uint64_t from = 0, to = 0;
                pthread_mutex_lock(&s->fd_lock);
                for (unsigned i = 0; i < s->nfds && s->undropped > STORE_DROP_MAX / 2; i++)
                        if (s->fds[i]->drop_bytes) {
                                ent = s->fds[i];
                                break;
                        }
                if (ent) {
                        from = ent->drop_from;
                        to = ent->drop_to;
                        s->undropped -= ent->drop_bytes;
                        ent->drop_bytes = ent->drop_from = ent->drop_to = 0;
                        ent->refs++;
                }
                pthread_mutex_unlock(&s->fd_lock);
                if (!ent)
                        return;
                sto_fd_flush_range(ent, from, to);
                sto_fd_put(s, ent);
        }
}

/* The file ENT describes is no longer the one at its path: unlinked (rm), or replaced by a
 * rename. Checked on every read, one fstat of each descriptor, so a descriptor cached before
 * an operator's rm never serves the old inode's bytes as if the store still had them. */
#define FD_REPLACED 1

/* One attempt of store_read() through ENT. 0, FD_REPLACED, or store_read()'s errors. */
static int read_ent(struct fd_ent *ent, uint64_t off, void *buf, size_t len, uint64_t *ret_from,
                    uint64_t *ret_to) {
        struct stat st, sst;
        if (fstat(ent->fd, &st) < 0 || fstat(ent->sfd, &sst) < 0)
                return -errno;
        if (st.st_nlink == 0 || sst.st_nlink == 0)
                return FD_REPLACED;
        uint64_t size = (uint64_t)st.st_size;
        if (size < off + len)
                return -ESTALE; /* truncated under us */
        if (len == 0)
                return 0;
        /* The enclosing blocks are what gets read and checked. */
        uint64_t from = off - off % BLOCK;
        uint64_t to = (off + len + BLOCK - 1) / BLOCK * BLOCK;
        if (to > size)
                to = size;
        *ret_from = from;
        *ret_to = to;
        int r = sto_read_verified(ent->fd, ent->sfd, size, off, buf, len);
        /* Lost or damaged? A hole (bytes gone: punched, or a file truncated and grown again)
         * reads as zeros, which fail their checksums unless the bytes were zeros (then the
         * zeros are right): only a failure pays for the probe that tells the two apart. */
        if (r == -EBADMSG && sto_probe_fd(ent->fd, from, (size_t)(to - from)) == -ESTALE)
                r = -ESTALE;
        return r;
}

int store_read(struct store *s, const struct digest *blob, uint64_t off, void *buf, size_t len) {
        for (int attempt = 0;; attempt++) {
                struct fd_ent *ent;
                int r = sto_fd_get(s, blob, &ent);
                if (r < 0)
                        return r;
                uint64_t from = 0, to = 0;
                r = read_ent(ent, off, buf, len, &from, &to);
                if (r == FD_REPLACED) {
                        sto_fd_forget_ent(s, ent);
                        sto_fd_put(s, ent);
                        if (attempt == 0)
                                continue; /* open what the path names now */
                        return -ESTALE;
                }
                if (r == 0) /* first: a range read whole is dropped, not kept by the batch */
                        ra_note_read(s, ent, off, len);
                if (to > from)
                        fd_note_read(s, ent, from, to); /* also after a failure: it read them */
                sto_fd_put(s, ent);
                return r;
        }
}
