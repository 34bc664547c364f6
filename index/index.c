/* SQLite index. See index.h for the contract.
 *
 * Schema (migration 1):
 *   blobs(digest hex PK, size, chunk_size, source, media_type, verified, added_at)
 *   chunks(blob, idx, present, sha256)   -- a row per chunk ever fetched
 * Migration 5 adds layers (index/layers.c: image layers and the digests of their indexes).
 * Migration 3 adds peers (the membership's last snapshot, replaced whole) and locations (which
 * peer holds which chunks of a blob, as a bitmap, until an expiry: soft state from announces).
 * A chunk row outlives the chunk's bytes (present = 0 after eviction) because its sha256,
 * recorded when it first came from the origin, is what lets later copies be checked.
 * Migrations are numbered and tracked in PRAGMA user_version; add one, never edit one.
 *
 * The writer: producers push fixed-size ops into a bounded ring; one thread drains up to
 * WRITE_BATCH ops per transaction. With WAL and synchronous=NORMAL a commit is an append,
 * durable at the next checkpoint; losing the last batch in a power cut only makes the index
 * forget chunks, which costs a refetch, never wrong bytes. */
#include "index/index.h"

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

#define WRITE_QUEUE_MAX 16384
#define WRITE_BATCH 2048

enum op_kind {
        OP_PUT_BLOB,
        OP_CHUNK_PRESENT,
        OP_CHUNK_ABSENT,
        OP_FORGET_CHUNKS,
        OP_VERIFIED,
        OP_PINNED,
        OP_ACCESSED,
        OP_PUT_PEERS,
        OP_PUT_LOCATION,
        OP_EXPIRE_LOCATIONS,
};

/* OP_PUT_LOCATION's payload: one allocation, the bitmap after the header. */
struct location_op {
        char peer[IDX_PEER_ID_MAX];
        size_t nbytes;
        uint8_t present[];
};

struct op {
        enum op_kind kind;
        struct digest blob;
        uint32_t idx;
        bool flag;
        int64_t when;
        bool has_sha;
        struct digest sha;
        struct idx_blob *b;     /* OP_PUT_BLOB only; owned by the op */
        struct idx_peer *peers; /* OP_PUT_PEERS only (npeers); owned by the op */
        size_t npeers;
        struct location_op *loc; /* OP_PUT_LOCATION only; owned by the op */
};

static void op_free_payload(struct op *op) {
        free(op->b);
        free(op->peers);
        free(op->loc);
}

static const char *const migrations[] = {
        /* 1 */
        "CREATE TABLE blobs ("
        "  digest TEXT PRIMARY KEY,"
        "  size INTEGER NOT NULL,"
        "  chunk_size INTEGER NOT NULL,"
        "  source TEXT NOT NULL,"
        "  media_type TEXT NOT NULL DEFAULT '',"
        "  verified INTEGER NOT NULL DEFAULT 0,"
        "  added_at INTEGER NOT NULL);"
        "CREATE TABLE chunks ("
        "  blob TEXT NOT NULL,"
        "  idx INTEGER NOT NULL,"
        "  present INTEGER NOT NULL,"
        "  sha256 BLOB,"
        "  PRIMARY KEY (blob, idx)) WITHOUT ROWID;",
        /* 2: operator pins and last access, for blobctl pin/ls */
        "ALTER TABLE blobs ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE blobs ADD COLUMN last_access INTEGER NOT NULL DEFAULT 0;",
        /* 3: peers and chunk locations, for blobctl peers and a warm directory */
        "CREATE TABLE peers ("
        "  id TEXT PRIMARY KEY,"
        "  state TEXT NOT NULL,"
        "  locality TEXT NOT NULL,"
        "  latency_us INTEGER NOT NULL DEFAULT 0,"
        "  failures INTEGER NOT NULL DEFAULT 0,"
        "  bytes_from INTEGER NOT NULL DEFAULT 0,"
        "  bytes_to INTEGER NOT NULL DEFAULT 0,"
        "  last_seen INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE locations ("
        "  blob TEXT NOT NULL,"
        "  peer TEXT NOT NULL,"
        "  present BLOB,"
        "  expires_at INTEGER NOT NULL,"
        "  PRIMARY KEY (blob, peer));"
        "CREATE INDEX locations_expiry ON locations (expires_at);",
        /* 4: the containerd snapshotter's metadata (index/snapshots.c) */
        "CREATE TABLE snapshots ("
        "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  key TEXT NOT NULL UNIQUE,"
        "  parent_id INTEGER,"
        "  kind INTEGER NOT NULL,"
        "  created_ns INTEGER NOT NULL,"
        "  updated_ns INTEGER NOT NULL,"
        "  usage_size INTEGER NOT NULL DEFAULT 0,"
        "  usage_inodes INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX snapshots_parent ON snapshots (parent_id);"
        "CREATE TABLE snapshot_labels ("
        "  snap_id INTEGER NOT NULL,"
        "  name TEXT NOT NULL,"
        "  value TEXT NOT NULL,"
        "  PRIMARY KEY (snap_id, name)) WITHOUT ROWID;",
        /* 5: image layers and their indexes (index/layers.c) */
        "CREATE TABLE layers ("
        "  digest TEXT PRIMARY KEY,"
        "  source TEXT NOT NULL,"
        "  media_type TEXT NOT NULL DEFAULT '',"
        "  diff_id TEXT NOT NULL DEFAULT '',"
        "  toc_digest TEXT NOT NULL DEFAULT '',"
        "  format INTEGER NOT NULL DEFAULT 0,"
        "  index_digest TEXT NOT NULL DEFAULT '',"
        "  index_size INTEGER NOT NULL DEFAULT 0,"
        "  state INTEGER NOT NULL DEFAULT 0,"
        "  error TEXT NOT NULL DEFAULT '',"
        "  added_at INTEGER NOT NULL);",
        /* 6: remote snapshots: committed snapshots whose tree is a layer tree, not a dir */
        "CREATE TABLE snapshot_remote ("
        "  snap_id INTEGER PRIMARY KEY,"
        "  layer TEXT NOT NULL,"
        "  ref TEXT NOT NULL);",
        /* 7: a failed layer's -errno, so a start retries transient failures (0: unknown) */
        "ALTER TABLE layers ADD COLUMN error_code INTEGER NOT NULL DEFAULT 0;",
};

enum stmt_id {
        ST_PUT_BLOB,
        ST_CHUNK_PRESENT,
        ST_CHUNK_ABSENT,
        ST_FORGET_CHUNKS,
        ST_VERIFIED,
        ST_PINNED,
        ST_ACCESSED,
        ST_DELETE_PEERS,
        ST_PUT_PEER,
        ST_PUT_LOCATION,
        ST_EXPIRE_LOCATIONS,
        ST_MAX,
};

static const char *const stmt_sql[ST_MAX] = {
        [ST_PUT_BLOB] = "INSERT INTO blobs (digest, size, chunk_size, source, media_type, "
                        "verified, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                        "ON CONFLICT(digest) DO UPDATE SET source = excluded.source, "
                        "chunk_size = excluded.chunk_size, media_type = CASE WHEN "
                        "excluded.media_type = '' THEN media_type "
                        "ELSE excluded.media_type END",
        [ST_CHUNK_PRESENT] =
                "INSERT INTO chunks (blob, idx, present, sha256) VALUES (?1, ?2, 1, ?3) "
                "ON CONFLICT(blob, idx) DO UPDATE SET present = 1, "
                "sha256 = COALESCE(excluded.sha256, sha256)",
        [ST_CHUNK_ABSENT] = "UPDATE chunks SET present = 0 WHERE blob = ?1 AND idx = ?2",
        [ST_FORGET_CHUNKS] = "DELETE FROM chunks WHERE blob = ?1",
        [ST_VERIFIED] = "UPDATE blobs SET verified = ?2 WHERE digest = ?1",
        [ST_PINNED] = "UPDATE blobs SET pinned = ?2 WHERE digest = ?1",
        [ST_ACCESSED] = "UPDATE blobs SET last_access = ?2 WHERE digest = ?1",
        [ST_DELETE_PEERS] = "DELETE FROM peers",
        [ST_PUT_PEER] = ("INSERT OR REPLACE INTO peers (id, state, locality, latency_us, "
                         "failures, bytes_from, bytes_to, last_seen) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        [ST_PUT_LOCATION] = "INSERT OR REPLACE INTO locations (blob, peer, present, expires_at) "
                            "VALUES (?1, ?2, ?3, ?4)",
        [ST_EXPIRE_LOCATIONS] = "DELETE FROM locations WHERE expires_at <= ?1",
};

struct index {
        sqlite3 *wdb; /* writer connection: writer thread only (and open/close) */
        sqlite3 *rdb; /* reader connection: serialised by rlock */
        pthread_mutex_t rlock;
        sqlite3_stmt *stmt[ST_MAX];
        bool readonly;
        char path[PATH_MAX]; /* for modules with a connection of their own (index/layers.c) */

        pthread_mutex_t lock; /* protects everything below */
        pthread_cond_t not_empty, not_full, committed;
        struct op *ring; /* WRITE_QUEUE_MAX ops */
        size_t head, count;
        uint64_t pushed, done; /* sequence numbers: ops pushed / ops committed */
        uint64_t write_errors;
        bool stopping;
        pthread_t writer;
};

static int db_error(sqlite3 *db, const char *what) {
        log_err("index error op=%s err=\"%s\"", what, db ? sqlite3_errmsg(db) : "out of memory");
        return -EIO;
}

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* The schema version recorded in DB (0 for a new database), or -EIO. */
static int schema_version(sqlite3 *db) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
                return db_error(db, "user_version");
        int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
        sqlite3_finalize(st);
        return version;
}

static int migrate(sqlite3 *db) {
        int version = schema_version(db);
        if (version < 0)
                return version;
        int n = N_MIGRATIONS;
        if (version > n) {
                log_err("index error=\"database is newer than this program\" version=%d known=%d",
                        version, n);
                return -EPROTO;
        }
        for (int v = version; v < n; v++) {
                char pragma[64];
                snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", v + 1);
                if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
                    sqlite3_exec(db, migrations[v], NULL, NULL, NULL) != SQLITE_OK ||
                    sqlite3_exec(db, pragma, NULL, NULL, NULL) != SQLITE_OK ||
                    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
                        int r = db_error(db, "migrate");
                        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
                        return r;
                }
        }
        return 0;
}

static void bind_digest_hex(sqlite3_stmt *st, int col, const struct digest *d) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        sqlite3_bind_text(st, col, hex, DIGEST_HEX_LEN, SQLITE_TRANSIENT);
}

static int step_reset(sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return rc == SQLITE_DONE ? 0 : -EIO;
}

/* The peers table is a snapshot: replaced whole, inside the batch's transaction. */
static int apply_put_peers(struct index *ix, const struct op *op) {
        int r = step_reset(ix->stmt[ST_DELETE_PEERS]);
        for (size_t i = 0; i < op->npeers && r == 0; i++) {
                const struct idx_peer *p = &op->peers[i];
                sqlite3_stmt *st = ix->stmt[ST_PUT_PEER];
                sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 2, p->state, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 3, p->locality, -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, 4, (sqlite3_int64)p->latency_us);
                sqlite3_bind_int64(st, 5, (sqlite3_int64)p->failures);
                sqlite3_bind_int64(st, 6, (sqlite3_int64)p->bytes_from);
                sqlite3_bind_int64(st, 7, (sqlite3_int64)p->bytes_to);
                sqlite3_bind_int64(st, 8, p->last_seen);
                r = step_reset(st);
        }
        return r;
}

static int apply(struct index *ix, const struct op *op) {
        sqlite3_stmt *st;
        switch (op->kind) {
        case OP_PUT_BLOB:
                st = ix->stmt[ST_PUT_BLOB];
                bind_digest_hex(st, 1, &op->b->digest);
                sqlite3_bind_int64(st, 2, (sqlite3_int64)op->b->size);
                sqlite3_bind_int64(st, 3, op->b->chunk_size);
                sqlite3_bind_text(st, 4, op->b->source, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 5, op->b->media_type, -1, SQLITE_STATIC);
                sqlite3_bind_int(st, 6, op->b->verified);
                sqlite3_bind_int64(st, 7, op->b->added_at);
                break;
        case OP_CHUNK_PRESENT:
                st = ix->stmt[ST_CHUNK_PRESENT];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->idx);
                if (op->has_sha)
                        sqlite3_bind_blob(st, 3, op->sha.bytes, DIGEST_LEN, SQLITE_STATIC);
                else
                        sqlite3_bind_null(st, 3);
                break;
        case OP_CHUNK_ABSENT:
                st = ix->stmt[ST_CHUNK_ABSENT];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->idx);
                break;
        case OP_FORGET_CHUNKS:
                st = ix->stmt[ST_FORGET_CHUNKS];
                bind_digest_hex(st, 1, &op->blob);
                break;
        case OP_VERIFIED:
                st = ix->stmt[ST_VERIFIED];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int(st, 2, op->flag);
                break;
        case OP_PINNED:
                st = ix->stmt[ST_PINNED];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int(st, 2, op->flag);
                break;
        case OP_ACCESSED:
                st = ix->stmt[ST_ACCESSED];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->when);
                break;
        case OP_PUT_PEERS:
                return apply_put_peers(ix, op);
        case OP_PUT_LOCATION:
                st = ix->stmt[ST_PUT_LOCATION];
                bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_text(st, 2, op->loc->peer, -1, SQLITE_STATIC);
                sqlite3_bind_blob(st, 3, op->loc->present, (int)op->loc->nbytes, SQLITE_STATIC);
                sqlite3_bind_int64(st, 4, op->when);
                break;
        case OP_EXPIRE_LOCATIONS:
                st = ix->stmt[ST_EXPIRE_LOCATIONS];
                sqlite3_bind_int64(st, 1, op->when);
                break;
        default:
                return -EINVAL;
        }
        return step_reset(st);
}

static void *writer_main(void *arg) {
        struct index *ix = arg;
        struct op *batch = calloc(WRITE_BATCH, sizeof(*batch));
        if (!batch) {
                log_err("index error=\"out of memory\" what=writer");
                abort(); /* nothing sensible to do without a writer */
        }
        pthread_mutex_lock(&ix->lock);
        for (;;) {
                while (ix->count == 0 && !ix->stopping)
                        pthread_cond_wait(&ix->not_empty, &ix->lock);
                if (ix->count == 0 && ix->stopping)
                        break;
                size_t n = ix->count < WRITE_BATCH ? ix->count : WRITE_BATCH;
                for (size_t i = 0; i < n; i++)
                        batch[i] = ix->ring[(ix->head + i) % WRITE_QUEUE_MAX];
                ix->head = (ix->head + n) % WRITE_QUEUE_MAX;
                ix->count -= n;
                pthread_cond_broadcast(&ix->not_full);
                pthread_mutex_unlock(&ix->lock);

                bool failed = sqlite3_exec(ix->wdb, "BEGIN", NULL, NULL, NULL) != SQLITE_OK;
                for (size_t i = 0; i < n && !failed; i++)
                        failed = apply(ix, &batch[i]) < 0;
                if (!failed)
                        failed = sqlite3_exec(ix->wdb, "COMMIT", NULL, NULL, NULL) != SQLITE_OK;
                if (failed) {
                        static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                        uint64_t suppressed = 0;
                        if (log_ratelimit_ok(&rl, &suppressed))
                                log_warning(
                                        "index write failed ops=%zu err=\"%s\" suppressed=%" PRIu64
                                        " hint=\"start-up validation will repair the index\"",
                                        n, sqlite3_errmsg(ix->wdb), suppressed);
                        sqlite3_exec(ix->wdb, "ROLLBACK", NULL, NULL, NULL);
                }
                for (size_t i = 0; i < n; i++)
                        op_free_payload(&batch[i]);

                pthread_mutex_lock(&ix->lock);
                if (failed)
                        ix->write_errors += n;
                ix->done += n;
                pthread_cond_broadcast(&ix->committed);
        }
        pthread_mutex_unlock(&ix->lock);
        free(batch);
        return NULL;
}

static void push(struct index *ix, struct op *op) {
        if (ix->readonly) {
                op_free_payload(op);
                return;
        }
        pthread_mutex_lock(&ix->lock);
        while (ix->count == WRITE_QUEUE_MAX)
                pthread_cond_wait(&ix->not_full, &ix->lock);
        ix->ring[(ix->head + ix->count) % WRITE_QUEUE_MAX] = *op;
        ix->count++;
        ix->pushed++;
        pthread_cond_signal(&ix->not_empty);
        pthread_mutex_unlock(&ix->lock);
}

static int open_db(const char *path, int flags, sqlite3 **ret) {
        sqlite3 *db = NULL;
        if (sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
                int r = db_error(db, "open");
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
                return db_is_corrupt(db) ? -EBADMSG : db_error(db, "quick_check");
        int rc = sqlite3_step(st);
        const unsigned char *res = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
        int r = 0;
        if (rc != SQLITE_ROW && !db_is_corrupt(db)) {
                r = db_error(db, "quick_check"); /* I/O, busy ...: not a verdict on the file */
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
                r = migrate(ix->wdb);
        if (r < 0)
                goto out_free;
        if (sqlite3_exec(ix->wdb, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", NULL,
                         NULL, NULL) != SQLITE_OK) {
                r = db_error(ix->wdb, "pragma");
                goto out_free;
        }
        for (int i = 0; i < ST_MAX; i++)
                if (sqlite3_prepare_v3(ix->wdb, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                       &ix->stmt[i], NULL) != SQLITE_OK) {
                        r = db_error(ix->wdb, "prepare");
                        goto out_free;
                }
        r = open_db(path, SQLITE_OPEN_READONLY, &ix->rdb);
        if (r < 0)
                goto out_free;
        ix->ring = calloc(WRITE_QUEUE_MAX, sizeof(*ix->ring));
        if (!ix->ring) {
                r = -ENOMEM;
                goto out_free;
        }
        r = -pthread_create(&ix->writer, NULL, writer_main, ix);
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
                int version = schema_version(ix->rdb);
                if (version >= 0 && version != N_MIGRATIONS) {
                        log_err("index version mismatch version=%d expected=%d hint=\"%s\"",
                                version, N_MIGRATIONS,
                                version < N_MIGRATIONS ? "start p2pblobsd once to migrate it"
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
                sqlite3_exec(ix->wdb, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
        }
        index_free(ix);
}

int idx_flush(struct index *ix) {
        if (ix->readonly)
                return 0;
        pthread_mutex_lock(&ix->lock);
        uint64_t target = ix->pushed;
        uint64_t errors_before = ix->write_errors;
        while (ix->done < target)
                pthread_cond_wait(&ix->committed, &ix->lock);
        bool failed = ix->write_errors != errors_before;
        pthread_mutex_unlock(&ix->lock);
        return failed ? -EIO : 0;
}

const char *idx_db_path(const struct index *ix) {
        return ix->path;
}

bool idx_is_readonly(const struct index *ix) {
        return ix->readonly;
}

uint64_t idx_write_errors(struct index *ix) {
        pthread_mutex_lock(&ix->lock);
        uint64_t n = ix->write_errors;
        pthread_mutex_unlock(&ix->lock);
        return n;
}

void idx_put_blob(struct index *ix, const struct idx_blob *b) {
        struct op op = {.kind = OP_PUT_BLOB, .b = malloc(sizeof(*b))};
        if (!op.b) {
                log_err("index error=\"out of memory\" what=put_blob");
                return;
        }
        *op.b = *b;
        push(ix, &op);
}

void idx_chunk_present(struct index *ix, const struct digest *blob, uint32_t idx,
                       const struct digest *sha) {
        struct op op = {
                .kind = OP_CHUNK_PRESENT, .blob = *blob, .idx = idx, .has_sha = sha != NULL};
        if (sha)
                op.sha = *sha;
        push(ix, &op);
}

void idx_chunk_absent(struct index *ix, const struct digest *blob, uint32_t idx) {
        struct op op = {.kind = OP_CHUNK_ABSENT, .blob = *blob, .idx = idx};
        push(ix, &op);
}

void idx_blob_forget_chunks(struct index *ix, const struct digest *blob) {
        struct op op = {.kind = OP_FORGET_CHUNKS, .blob = *blob};
        push(ix, &op);
}

void idx_blob_verified(struct index *ix, const struct digest *blob, bool verified) {
        struct op op = {.kind = OP_VERIFIED, .blob = *blob, .flag = verified};
        push(ix, &op);
}

void idx_blob_pinned(struct index *ix, const struct digest *blob, bool pinned) {
        struct op op = {.kind = OP_PINNED, .blob = *blob, .flag = pinned};
        push(ix, &op);
}

void idx_blob_accessed(struct index *ix, const struct digest *blob, int64_t when) {
        struct op op = {.kind = OP_ACCESSED, .blob = *blob, .when = when};
        push(ix, &op);
}

int idx_put_peers(struct index *ix, const struct idx_peer *v, size_t n) {
        struct op op = {.kind = OP_PUT_PEERS, .npeers = n};
        if (n > 0) {
                op.peers = calloc(n, sizeof(*v));
                if (!op.peers)
                        return -ENOMEM;
                memcpy(op.peers, v, n * sizeof(*v));
                for (size_t i = 0; i < n; i++) { /* the writer binds them as C strings */
                        op.peers[i].id[sizeof(v->id) - 1] = '\0';
                        op.peers[i].state[sizeof(v->state) - 1] = '\0';
                        op.peers[i].locality[sizeof(v->locality) - 1] = '\0';
                }
        }
        push(ix, &op);
        return 0;
}

int idx_put_location(struct index *ix, const struct digest *blob, const char *peer,
                     const uint8_t *present, size_t nbytes, int64_t expires_at) {
        size_t plen = strlen(peer);
        if (plen == 0 || plen >= IDX_PEER_ID_MAX || nbytes > IDX_LOCATION_BITMAP_MAX)
                return -EINVAL;
        struct op op = {.kind = OP_PUT_LOCATION, .blob = *blob, .when = expires_at};
        op.loc = malloc(sizeof(*op.loc) + nbytes);
        if (!op.loc)
                return -ENOMEM;
        memcpy(op.loc->peer, peer, plen + 1);
        op.loc->nbytes = nbytes;
        if (nbytes > 0)
                memcpy(op.loc->present, present, nbytes);
        push(ix, &op);
        return 0;
}

void idx_expire_locations(struct index *ix, int64_t now) {
        struct op op = {.kind = OP_EXPIRE_LOCATIONS, .when = now};
        push(ix, &op);
}

int idx_chunk_digests(struct index *ix, const struct digest *blob, uint32_t nchunks,
                      struct digest *digests, bool *known) {
        memset(known, 0, nchunks * sizeof(*known));
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(
                    ix->rdb,
                    "SELECT idx, sha256 FROM chunks WHERE blob = ?1 AND sha256 IS NOT NULL", -1,
                    &st, NULL) != SQLITE_OK) {
                r = db_error(ix->rdb, "chunk digests");
                goto out_unlock;
        }
        bind_digest_hex(st, 1, blob);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                sqlite3_int64 i = sqlite3_column_int64(st, 0);
                if (i < 0 || i >= nchunks || sqlite3_column_bytes(st, 1) != DIGEST_LEN)
                        continue;
                memcpy(digests[i].bytes, sqlite3_column_blob(st, 1), DIGEST_LEN);
                known[i] = true;
        }
        if (rc != SQLITE_DONE)
                r = db_error(ix->rdb, "chunk digests");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}

static void copy_text(char *dst, size_t len, const unsigned char *src) {
        snprintf(dst, len, "%s", src ? (const char *)src : "");
}

int idx_for_each_blob(struct index *ix, int (*fn)(void *ud, const struct idx_blob *b), void *ud) {
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(ix->rdb,
                               "SELECT digest, size, chunk_size, source, media_type, verified, "
                               "added_at, pinned, last_access FROM blobs "
                               "ORDER BY added_at, digest",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_error(ix->rdb, "list blobs");
                goto out_unlock;
        }
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct idx_blob b = {0};
                const unsigned char *hex = sqlite3_column_text(st, 0);
                if (!hex ||
                    digest_from_hex((const char *)hex, strlen((const char *)hex), &b.digest) < 0)
                        continue; /* not ours: skip rather than fail the whole walk */
                b.size = (uint64_t)sqlite3_column_int64(st, 1);
                b.chunk_size = (uint32_t)sqlite3_column_int64(st, 2);
                copy_text(b.source, sizeof(b.source), sqlite3_column_text(st, 3));
                copy_text(b.media_type, sizeof(b.media_type), sqlite3_column_text(st, 4));
                b.verified = sqlite3_column_int(st, 5) != 0;
                b.added_at = sqlite3_column_int64(st, 6);
                b.pinned = sqlite3_column_int(st, 7) != 0;
                b.last_access = sqlite3_column_int64(st, 8);
                r = fn(ud, &b);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_error(ix->rdb, "list blobs");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}

int idx_for_each_chunk(struct index *ix,
                       int (*fn)(void *ud, const struct digest *blob, uint32_t idx, bool present,
                                 const struct digest *sha),
                       void *ud) {
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(ix->rdb,
                               "SELECT blob, idx, present, sha256 FROM chunks ORDER BY blob, idx",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_error(ix->rdb, "list chunks");
                goto out_unlock;
        }
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct digest blob, sha;
                const unsigned char *hex = sqlite3_column_text(st, 0);
                if (!hex ||
                    digest_from_hex((const char *)hex, strlen((const char *)hex), &blob) < 0)
                        continue;
                sqlite3_int64 idx = sqlite3_column_int64(st, 1);
                if (idx < 0 || idx > UINT32_MAX)
                        continue;
                bool has_sha = sqlite3_column_bytes(st, 3) == DIGEST_LEN;
                if (has_sha)
                        memcpy(sha.bytes, sqlite3_column_blob(st, 3), DIGEST_LEN);
                r = fn(ud, &blob, (uint32_t)idx, sqlite3_column_int(st, 2) != 0,
                       has_sha ? &sha : NULL);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_error(ix->rdb, "list chunks");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}

int idx_for_each_peer(struct index *ix, int (*fn)(void *ud, const struct idx_peer *p), void *ud) {
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(ix->rdb,
                               "SELECT id, state, locality, latency_us, failures, bytes_from, "
                               "bytes_to, last_seen FROM peers ORDER BY id",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_error(ix->rdb, "list peers");
                goto out_unlock;
        }
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct idx_peer p = {0};
                copy_text(p.id, sizeof(p.id), sqlite3_column_text(st, 0));
                copy_text(p.state, sizeof(p.state), sqlite3_column_text(st, 1));
                copy_text(p.locality, sizeof(p.locality), sqlite3_column_text(st, 2));
                p.latency_us = (uint64_t)sqlite3_column_int64(st, 3);
                p.failures = (uint64_t)sqlite3_column_int64(st, 4);
                p.bytes_from = (uint64_t)sqlite3_column_int64(st, 5);
                p.bytes_to = (uint64_t)sqlite3_column_int64(st, 6);
                p.last_seen = sqlite3_column_int64(st, 7);
                r = fn(ud, &p);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_error(ix->rdb, "list peers");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}

int idx_for_each_location(struct index *ix, const struct digest *blob,
                          int (*fn)(void *ud, const char *peer, const uint8_t *present,
                                    size_t nbytes, int64_t expires_at),
                          void *ud) {
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(ix->rdb,
                               "SELECT peer, present, expires_at FROM locations "
                               "WHERE blob = ?1 ORDER BY peer",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_error(ix->rdb, "list locations");
                goto out_unlock;
        }
        bind_digest_hex(st, 1, blob);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                const unsigned char *peer = sqlite3_column_text(st, 0);
                if (!peer)
                        continue;
                /* Blob before bytes: sqlite3_column_bytes() is defined for the converted value. */
                const uint8_t *present = sqlite3_column_blob(st, 1);
                int nbytes = sqlite3_column_bytes(st, 1);
                static const uint8_t none[1];
                r = fn(ud, (const char *)peer, present ? present : none,
                       nbytes > 0 ? (size_t)nbytes : 0, sqlite3_column_int64(st, 2));
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_error(ix->rdb, "list locations");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}
