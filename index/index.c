/* SQLite index. See index.h for the contract.
 *
 * One database, two connections: the writer's (ix->wdb, the writer thread's only, and open's
 * and close's) and the readers' (ix->rdb, serialised by ix->rlock). This file opens and closes
 * them: the file made private, its pages checked once, the schema migrated (schema.c) before
 * WAL is switched on, the writer's statements prepared and its thread started (writer.c). The
 * reads are in query.c; the structures they share in index_int.h. */
#include "index/index_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

int ix_db_error(sqlite3 *db, const char *what) {
        log_err("index error op=%s err=\"%s\"", what, db ? sqlite3_errmsg(db) : "out of memory");
        return -EIO;
}

static int open_db(const char *path, int flags, sqlite3 **ret) {
        sqlite3 *db = NULL;
        if (sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
                int r = ix_db_error(db, "open");
                sqlite3_close(db);
                return r;
        }
        sqlite3_busy_timeout(db, 5000);
        *ret = db;
        return 0;
}

static int index_new(struct index **ret) {
        struct index *ix = calloc(1, sizeof(*ix));
        if (!ix)
                return -ENOMEM;
        pthread_mutex_init(&ix->lock, NULL);
        pthread_mutex_init(&ix->rlock, NULL);
        pthread_cond_init(&ix->not_empty, NULL);
        pthread_cond_init(&ix->not_full, NULL);
        pthread_cond_init(&ix->committed, NULL);
        *ret = ix;
        return 0;
}

static void index_free(struct index *ix) {
        for (int i = 0; i < ST_MAX; i++)
                sqlite3_finalize(ix->stmt[i]);
        sqlite3_close(ix->wdb);
        sqlite3_close(ix->rdb);
        pthread_mutex_destroy(&ix->lock);
        pthread_mutex_destroy(&ix->rlock);
        pthread_cond_destroy(&ix->not_empty);
        pthread_cond_destroy(&ix->not_full);
        pthread_cond_destroy(&ix->committed);
        free(ix->ring);
        free(ix);
}

/* The index says what the node holds and where from: 0600 whatever the caller's umask (SQLite
 * would create it 0644 & ~umask), and so are its -wal and -shm, which SQLite creates with the
 * database's own mode; files left wider by an older version are narrowed. */
static int make_private(const char *path) {
        static const char *const suffix[] = {"", "-wal", "-shm"};
        for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
                char p[PATH_MAX];
                int n = snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
                if (n < 0 || (size_t)n >= sizeof(p))
                        return -ENAMETOOLONG;
                int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | (i == 0 ? O_CREAT : 0);
                int fd = open(p, flags, 0600);
                if (fd < 0) {
                        if (errno == ENOENT && i > 0)
                                continue;
                        return -errno;
                }
                struct stat st;
                int r = fstat(fd, &st) < 0 ? -errno : 0;
                if (r == 0 && (st.st_mode & 077) && fchmod(fd, st.st_mode & 0700) < 0)
                        r = -errno;
                close(fd);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Whether DB's last error says the file is damaged or not a database at all. */
static bool db_is_corrupt(sqlite3 *db) {
        int c = db ? sqlite3_errcode(db) & 0xff : SQLITE_OK;
        return c == SQLITE_CORRUPT || c == SQLITE_NOTADB;
}

/* A damaged page is often found only when it is read: look at every page once at open (a
 * cache's index is a few MB; this costs milliseconds). -EBADMSG when it is damaged. */
static int check_integrity(sqlite3 *db) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &st, NULL) != SQLITE_OK)
                return db_is_corrupt(db) ? -EBADMSG : ix_db_error(db, "quick_check");
        int rc = sqlite3_step(st);
        const unsigned char *res = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
        int r = 0;
        if (rc != SQLITE_ROW && !db_is_corrupt(db)) {
                r = ix_db_error(db, "quick_check"); /* I/O, busy ...: not a verdict on the file */
        } else if (!res || strcmp((const char *)res, "ok") != 0) {
                log_err("index error op=quick_check err=\"%s\"",
                        res ? (const char *)res : sqlite3_errmsg(db));
                r = -EBADMSG;
        }
        sqlite3_finalize(st);
        return r;
}

int idx_open(const char *path, struct index **ret) {
        struct index *ix;
        int r = make_private(path);
        if (r < 0)
                return r;
        r = index_new(&ix);
        if (r < 0)
                return r;
        snprintf(ix->path, sizeof(ix->path), "%s", path);
        r = open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &ix->wdb);
        if (r < 0)
                goto out_free;
        /* Migrate (and refuse a newer schema) before switching the journal mode, so a database
         * we will not use is left exactly as we found it. */
        r = check_integrity(ix->wdb); /* first: a migration would fail on it less clearly */
        if (r == 0)
                r = ix_migrate(ix->wdb);
        if (r < 0)
                goto out_free;
        if (sqlite3_exec(ix->wdb, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", NULL,
                         NULL, NULL) != SQLITE_OK) {
                r = ix_db_error(ix->wdb, "pragma");
                goto out_free;
        }
        r = ix_prepare_writes(ix);
        if (r < 0)
                goto out_free;
        r = open_db(path, SQLITE_OPEN_READONLY, &ix->rdb);
        if (r < 0)
                goto out_free;
        ix->ring = calloc(WRITE_QUEUE_MAX, sizeof(*ix->ring));
        if (!ix->ring) {
                r = -ENOMEM;
                goto out_free;
        }
        r = -pthread_create(&ix->writer, NULL, ix_writer_main, ix);
        if (r < 0)
                goto out_free;
        *ret = ix;
        return 0;
out_free:
        if (r == -EIO && db_is_corrupt(ix->wdb))
                r = -EBADMSG;
        index_free(ix);
        return r;
}

int idx_move_aside(const char *path, int64_t now, char *ret_path, size_t len) {
        int n = snprintf(ret_path, len, "%s.corrupt-%lld", path, (long long)now);
        if (n < 0 || (size_t)n >= len)
                return -ENAMETOOLONG;
        if (rename(path, ret_path) < 0)
                return -errno;
        /* Its WAL and shared memory follow under the names SQLite looks for next to it. */
        static const char *const sfx[] = {"-wal", "-shm"};
        for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
                char from[4096], to[4096];
                int a = snprintf(from, sizeof(from), "%s%s", path, sfx[i]);
                int b = snprintf(to, sizeof(to), "%s%s", ret_path, sfx[i]);
                if (a < 0 || (size_t)a >= sizeof(from) || b < 0 || (size_t)b >= sizeof(to))
                        return -ENAMETOOLONG;
                if (rename(from, to) < 0 && errno != ENOENT)
                        return -errno;
        }
        return 0;
}

int idx_open_readonly(const char *path, struct index **ret) {
        struct index *ix;
        int r = index_new(&ix);
        if (r < 0)
                return r;
        ix->readonly = true;
        snprintf(ix->path, sizeof(ix->path), "%s", path);
        r = open_db(path, SQLITE_OPEN_READONLY, &ix->rdb);
        if (r == 0) {
                /* We cannot migrate a database we may not write: say which side is old. */
                int version = ix_schema_version(ix->rdb);
                if (version >= 0 && version != ix_n_migrations) {
                        log_err("index version mismatch version=%d expected=%d hint=\"%s\"",
                                version, ix_n_migrations,
                                version < ix_n_migrations
                                        ? "start p2pblobsd once to migrate it"
                                        : "this blobctl is older than the daemon");
                        r = -EPROTO;
                } else if (version < 0) {
                        r = version;
                }
        }
        if (r < 0) {
                index_free(ix);
                return r;
        }
        *ret = ix;
        return 0;
}

void idx_close(struct index *ix) {
        if (!ix)
                return;
        if (!ix->readonly) {
                pthread_mutex_lock(&ix->lock);
                ix->stopping = true;
                pthread_cond_signal(&ix->not_empty);
                pthread_mutex_unlock(&ix->lock);
                pthread_join(ix->writer, NULL);
                /* The C call, not "PRAGMA wal_checkpoint(TRUNCATE)": a connection that has run
                 * no transaction since WAL was switched on (no chunk traffic: only the
                 * snapshotter's or the layers' connections wrote) has not opened its WAL yet,
                 * and SQLite opens it inside the checkpoint with a "PRAGMA table_list" of its
                 * own. Inside a PRAGMA statement that read stays open (its statement is still
                 * active), so the TRUNCATE waited for this very connection, the whole busy
                 * timeout (5 s at every such stop), and failed. Called directly, the read ends
                 * before the checkpoint starts. */
                int nlog = 0, nckpt = 0;
                int rc = sqlite3_wal_checkpoint_v2(ix->wdb, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog,
                                                   &nckpt);
                if (rc != SQLITE_OK) /* the last close below checkpoints what it can */
                        log_debug("index checkpoint at close incomplete rc=%d err=\"%s\" "
                                  "wal_frames=%d checkpointed=%d",
                                  rc, sqlite3_errmsg(ix->wdb), nlog, nckpt);
        }
        index_free(ix);
}

const char *idx_db_path(const struct index *ix) {
        return ix->path;
}

bool idx_is_readonly(const struct index *ix) {
        return ix->readonly;
}
