/* The layers table (migration 5). See layers.h.
 *
 * Digests are stored as 64 lowercase hex ('' when absent), like the other tables. A row is
 * small and written rarely (a layer added, its index found or failed), so every call is one
 * synchronous statement on this module's own connection, serialised by a mutex; the index's
 * batched writer is for the chunk traffic. WAL lets this connection and the writer share the
 * file; SQLite's busy timeout covers the writer's transactions. */
#include "index/layers.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

struct idx_layers {
        pthread_mutex_t lock; /* serialises every use of db */
        sqlite3 *db;
        bool readonly;
};

static int db_fail(struct idx_layers *l, const char *what) {
        log_debug("index layers error op=%s err=\"%s\"", what,
                  l->db ? sqlite3_errmsg(l->db) : "out of memory");
        return -EIO;
}

int idx_layers_open(struct index *ix, struct idx_layers **ret) {
        struct idx_layers *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        pthread_mutex_init(&l->lock, NULL);
        l->readonly = idx_is_readonly(ix);
        int flags =
                (l->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
        if (sqlite3_open_v2(idx_db_path(ix), &l->db, flags, NULL) != SQLITE_OK) {
                int r = db_fail(l, "open");
                idx_layers_close(l);
                return r;
        }
        sqlite3_busy_timeout(l->db, 5000);
        *ret = l;
        return 0;
}

void idx_layers_close(struct idx_layers *l) {
        if (!l)
                return;
        sqlite3_close(l->db);
        pthread_mutex_destroy(&l->lock);
        free(l);
}

static void bind_hex(sqlite3_stmt *st, int col, bool have, const struct digest *d) {
        char hex[DIGEST_HEX_LEN + 1] = "";
        if (have)
                digest_to_hex(d, hex);
        sqlite3_bind_text(st, col, hex, -1, SQLITE_TRANSIENT);
}

int idx_layer_put(struct idx_layers *l, const struct idx_layer *row) {
        if (l->readonly)
                return -EROFS;
        pthread_mutex_lock(&l->lock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(l->db,
                               "INSERT OR REPLACE INTO layers (digest, source, media_type, "
                               "diff_id, toc_digest, format, index_digest, index_size, state, "
                               "error, added_at, error_code) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                               "?8, ?9, ?10, ?11, ?12)",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_fail(l, "prepare put");
                goto out_unlock;
        }
        bind_hex(st, 1, true, &row->digest);
        sqlite3_bind_text(st, 2, row->source, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, row->media_type, -1, SQLITE_TRANSIENT);
        bind_hex(st, 4, row->has_diff_id, &row->diff_id);
        bind_hex(st, 5, row->has_toc_digest, &row->toc_digest);
        sqlite3_bind_int(st, 6, row->format);
        bind_hex(st, 7, row->has_index, &row->index_digest);
        sqlite3_bind_int64(st, 8, (sqlite3_int64)row->index_size);
        sqlite3_bind_int(st, 9, row->state);
        sqlite3_bind_text(st, 10, row->error, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 11, row->added_at);
        sqlite3_bind_int(st, 12, row->error_code);
        if (sqlite3_step(st) != SQLITE_DONE)
                r = db_fail(l, "put");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&l->lock);
        return r;
}

/* Column COL as a digest: true when it holds one. */
static bool col_digest(sqlite3_stmt *st, int col, struct digest *ret) {
        const unsigned char *t = sqlite3_column_text(st, col);
        return t && t[0] && digest_from_hex((const char *)t, strlen((const char *)t), ret) == 0;
}

static void col_text(sqlite3_stmt *st, int col, char *dst, size_t len) {
        const unsigned char *t = sqlite3_column_text(st, col);
        snprintf(dst, len, "%s", t ? (const char *)t : "");
}

int idx_layers_for_each(struct idx_layers *l, int (*fn)(void *ud, const struct idx_layer *row),
                        void *ud) {
        pthread_mutex_lock(&l->lock);
        sqlite3_stmt *st;
        int r = 0, rc;
        if (sqlite3_prepare_v2(l->db,
                               "SELECT digest, source, media_type, diff_id, toc_digest, format, "
                               "index_digest, index_size, state, error, added_at, error_code "
                               "FROM layers "
                               "ORDER BY added_at, digest",
                               -1, &st, NULL) != SQLITE_OK) {
                r = db_fail(l, "prepare list");
                goto out_unlock;
        }
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct idx_layer row;
                memset(&row, 0, sizeof(row));
                if (!col_digest(st, 0, &row.digest))
                        continue; /* not ours: skip rather than fail the walk */
                col_text(st, 1, row.source, sizeof(row.source));
                col_text(st, 2, row.media_type, sizeof(row.media_type));
                row.has_diff_id = col_digest(st, 3, &row.diff_id);
                row.has_toc_digest = col_digest(st, 4, &row.toc_digest);
                row.format = sqlite3_column_int(st, 5);
                row.has_index = col_digest(st, 6, &row.index_digest);
                row.index_size = (uint64_t)sqlite3_column_int64(st, 7);
                row.state = sqlite3_column_int(st, 8);
                col_text(st, 9, row.error, sizeof(row.error));
                row.added_at = sqlite3_column_int64(st, 10);
                row.error_code = sqlite3_column_int(st, 11);
                r = fn(ud, &row);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_fail(l, "list");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&l->lock);
        return r;
}
