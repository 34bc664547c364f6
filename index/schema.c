/* The index's schema: numbered migrations, tracked in PRAGMA user_version. Add one, never edit
 * one. Part of the index (index.c; contract in index.h).
 *
 * Schema (migration 1):
 *   blobs(digest hex PK, size, chunk_size, source, media_type, verified, added_at)
 *   chunks(blob, idx, present, sha256)   -- a row per chunk ever fetched
 * Migration 8 adds chunks.chain, the chunk's chain value (util/chain.h).
 * Migration 5 adds layers (index/layers.c: image layers and the digests of their indexes).
 * Migration 3 adds peers (the membership's last snapshot, replaced whole) and locations (which
 * peer holds which chunks of a blob, as a bitmap, until an expiry: soft state from announces).
 * A chunk row outlives the chunk's bytes (present = 0 after eviction) because its sha256,
 * recorded when it first came from the origin, is what lets later copies be checked. */
#include "index/index_int.h"

#include <errno.h>
#include <stdio.h>

#include "util/log.h"

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
        /* 8: chunks' chain values (util/chain.h), so a verified blob's survive a restart */
        "ALTER TABLE chunks ADD COLUMN chain BLOB;",
};

const int ix_n_migrations = (int)(sizeof(migrations) / sizeof(migrations[0]));

int ix_schema_version(sqlite3 *db) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
                return ix_db_error(db, "user_version");
        int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
        sqlite3_finalize(st);
        return version;
}

int ix_migrate(sqlite3 *db) {
        int version = ix_schema_version(db);
        if (version < 0)
                return version;
        int n = ix_n_migrations;
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
                        int r = ix_db_error(db, "migrate");
                        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
                        return r;
                }
        }
        return 0;
}
