/* The snapshotter's metadata. See snapshots.h for the contract.
 *
 * Tables (migration 4 in schema.c):
 *   snapshots(id PK AUTOINCREMENT, key UNIQUE, parent_id, kind, created_ns, updated_ns,
 *             usage_size, usage_inodes)
 *   snapshot_labels(snap_id, name, value)
 *   snapshot_remote(snap_id PK, layer, ref)      (migration 6) a remote snapshot's layer
 * AUTOINCREMENT so that an id, which names a directory, is never reused: a directory left
 * behind by a crash between "row deleted" and "directory removed" cannot be adopted by a new
 * snapshot, and Cleanup removes it.
 *
 * Every public call is one transaction on a private connection (BEGIN IMMEDIATE for writes, so
 * a check and the write it guards cannot interleave with another writer), serialised by a
 * mutex. The check order follows containerd's bolt storage, because callers observe it: Commit
 * reports a taken name before a missing key, Create a missing parent before a taken key. */
#include "index/snapshots.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"

#define MAX_CHAIN 4096 /* ancestors followed before the chain is called corrupt */

struct snapdb {
        pthread_mutex_t lock; /* serialises every use of conn */
        sqlite3 *conn;
};

static int db_fail(struct snapdb *db, const char *what) {
        log_debug("snapdb error op=%s err=\"%s\"", what, sqlite3_errmsg(db->conn));
        return -EIO;
}

int snapdb_open(const char *path, struct snapdb **ret) {
        struct snapdb *db = calloc(1, sizeof(*db));
        if (!db)
                return -ENOMEM;
        pthread_mutex_init(&db->lock, NULL);
        if (sqlite3_open_v2(path, &db->conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK) {
                log_debug("snapdb open failed path=%s err=\"%s\"", path,
                          db->conn ? sqlite3_errmsg(db->conn) : "out of memory");
                snapdb_close(db);
                return -EIO;
        }
        sqlite3_busy_timeout(db->conn, 10000);
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db->conn, "SELECT 1 FROM snapshots LIMIT 0", -1, &st, NULL) !=
            SQLITE_OK) {
                snapdb_close(db);
                return -EPROTO;
        }
        sqlite3_finalize(st);
        *ret = db;
        return 0;
}

void snapdb_close(struct snapdb *db) {
        if (!db)
                return;
        sqlite3_close(db->conn);
        pthread_mutex_destroy(&db->lock);
        free(db);
}

void snap_info_free(struct snap_info *info) {
        if (!info)
                return;
        for (size_t i = 0; i < info->nlabels; i++) {
                free(info->labels[i].name);
                free(info->labels[i].value);
        }
        free(info->labels);
        free(info->key);
        free(info->parent);
        free(info->remote_layer);
        free(info->remote_ref);
        free(info);
}

static int64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A one-off statement (these calls are rare next to the index's hot path: not cached). */
static sqlite3_stmt *prep(struct snapdb *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL) != SQLITE_OK)
                return NULL;
        return st;
}

static int exec(struct snapdb *db, const char *sql) {
        return sqlite3_exec(db->conn, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : db_fail(db, sql);
}

static int begin(struct snapdb *db, bool write) {
        pthread_mutex_lock(&db->lock);
        int r = exec(db, write ? "BEGIN IMMEDIATE" : "BEGIN");
        if (r < 0)
                pthread_mutex_unlock(&db->lock);
        return r;
}

/* Commits when R is 0, rolls back otherwise; returns R (or the commit's failure). */
static int end(struct snapdb *db, int r) {
        if (r == 0)
                r = exec(db, "COMMIT");
        if (r < 0)
                sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
        pthread_mutex_unlock(&db->lock);
        return r;
}

/* The id, kind and parent id of KEY (parent 0: none). 0, -ENOENT, -EIO. */
static int lookup(struct snapdb *db, const char *key, int64_t *ret_id, int *ret_kind,
                  int64_t *ret_parent) {
        sqlite3_stmt *st = prep(db, "SELECT id, kind, COALESCE(parent_id, 0) FROM snapshots "
                                    "WHERE key = ?1");
        if (!st)
                return db_fail(db, "lookup");
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st), r = 0;
        if (rc == SQLITE_ROW) {
                *ret_id = sqlite3_column_int64(st, 0);
                if (ret_kind)
                        *ret_kind = sqlite3_column_int(st, 1);
                if (ret_parent)
                        *ret_parent = sqlite3_column_int64(st, 2);
        } else {
                r = rc == SQLITE_DONE ? -ENOENT : db_fail(db, "lookup");
        }
        sqlite3_finalize(st);
        return r;
}

static int put_labels(struct snapdb *db, int64_t id, const struct snap_label *labels, size_t n) {
        sqlite3_stmt *del = prep(db, "DELETE FROM snapshot_labels WHERE snap_id = ?1");
        if (!del)
                return db_fail(db, "labels");
        sqlite3_bind_int64(del, 1, id);
        int r = sqlite3_step(del) == SQLITE_DONE ? 0 : db_fail(db, "labels");
        sqlite3_finalize(del);
        if (r < 0 || n == 0)
                return r;
        sqlite3_stmt *ins = prep(db, "INSERT OR REPLACE INTO snapshot_labels (snap_id, name, "
                                     "value) VALUES (?1, ?2, ?3)");
        if (!ins)
                return db_fail(db, "labels");
        for (size_t i = 0; i < n && r == 0; i++) {
                if (!labels[i].value || !labels[i].value[0])
                        continue; /* containerd stores no empty label */
                sqlite3_bind_int64(ins, 1, id);
                sqlite3_bind_text(ins, 2, labels[i].name, -1, SQLITE_STATIC);
                sqlite3_bind_text(ins, 3, labels[i].value, -1, SQLITE_STATIC);
                if (sqlite3_step(ins) != SQLITE_DONE)
                        r = db_fail(db, "labels");
                sqlite3_reset(ins);
        }
        sqlite3_finalize(ins);
        return r;
}

static char *dup_col(sqlite3_stmt *st, int col) {
        const unsigned char *t = sqlite3_column_text(st, col);
        return strdup(t ? (const char *)t : "");
}

/* Builds the snap_info of the current row of ST (columns as in INFO_SQL) with its labels. */
#define INFO_SQL                                                                                   \
        "SELECT s.id, s.key, COALESCE(p.key, ''), s.kind, s.created_ns, s.updated_ns, "            \
        "s.usage_size, s.usage_inodes, COALESCE(r.layer, ''), COALESCE(r.ref, '') "                \
        "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id "                            \
        "LEFT JOIN snapshot_remote r ON r.snap_id = s.id "
static int info_from_row(struct snapdb *db, sqlite3_stmt *st, struct snap_info **ret) {
        struct snap_info *info = calloc(1, sizeof(*info));
        if (!info)
                return -ENOMEM;
        info->id = sqlite3_column_int64(st, 0);
        info->key = dup_col(st, 1);
        info->parent = dup_col(st, 2);
        info->kind = (enum snap_kind)sqlite3_column_int(st, 3);
        info->created_ns = sqlite3_column_int64(st, 4);
        info->updated_ns = sqlite3_column_int64(st, 5);
        info->usage_size = sqlite3_column_int64(st, 6);
        info->usage_inodes = sqlite3_column_int64(st, 7);
        info->remote_layer = dup_col(st, 8);
        info->remote_ref = dup_col(st, 9);
        int r = info->key && info->parent && info->remote_layer && info->remote_ref ? 0 : -ENOMEM;
        sqlite3_stmt *ls = r == 0 ? prep(db, "SELECT name, value FROM snapshot_labels "
                                             "WHERE snap_id = ?1 ORDER BY name")
                                  : NULL;
        if (r == 0 && !ls)
                r = db_fail(db, "labels");
        if (ls) {
                size_t cap = 0;
                sqlite3_bind_int64(ls, 1, info->id);
                int rc;
                while (r == 0 && (rc = sqlite3_step(ls)) == SQLITE_ROW) {
                        if (info->nlabels == cap) {
                                size_t ncap = cap ? cap * 2 : 8;
                                struct snap_label *nl = realloc(info->labels, ncap * sizeof(*nl));
                                if (!nl) {
                                        r = -ENOMEM;
                                        break;
                                }
                                info->labels = nl;
                                cap = ncap;
                        }
                        struct snap_label *l = &info->labels[info->nlabels++];
                        l->name = dup_col(ls, 0);
                        l->value = dup_col(ls, 1);
                        if (!l->name || !l->value)
                                r = -ENOMEM;
                }
                if (r == 0 && rc != SQLITE_DONE)
                        r = db_fail(db, "labels");
                sqlite3_finalize(ls);
        }
        if (r < 0) {
                snap_info_free(info);
                return r;
        }
        *ret = info;
        return 0;
}

static int load_info(struct snapdb *db, const char *key, struct snap_info **ret) {
        sqlite3_stmt *st = prep(db, INFO_SQL "WHERE s.key = ?1");
        if (!st)
                return db_fail(db, "get");
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st), r;
        if (rc == SQLITE_ROW)
                r = info_from_row(db, st, ret);
        else
                r = rc == SQLITE_DONE ? -ENOENT : db_fail(db, "get");
        sqlite3_finalize(st);
        return r;
}

static int load_chain(struct snapdb *db, int64_t parent, int64_t **ret, size_t *ret_n) {
        int64_t *ids = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        sqlite3_stmt *st = prep(db, "SELECT COALESCE(parent_id, 0) FROM snapshots WHERE id = ?1");
        if (!st)
                return db_fail(db, "chain");
        while (parent != 0 && r == 0) {
                if (n == MAX_CHAIN) {
                        r = -EIO;
                        break;
                }
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        int64_t *ni = realloc(ids, ncap * sizeof(*ni));
                        if (!ni) {
                                r = -ENOMEM;
                                break;
                        }
                        ids = ni;
                        cap = ncap;
                }
                ids[n++] = parent;
                sqlite3_bind_int64(st, 1, parent);
                parent = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
                sqlite3_reset(st);
                if (parent < 0)
                        r = -EIO; /* a dangling parent id: the table is corrupt */
        }
        sqlite3_finalize(st);
        if (r < 0) {
                free(ids);
                return r;
        }
        *ret = ids;
        *ret_n = n;
        return 0;
}

static int get_locked(struct snapdb *db, const char *key, struct snap_info **ret_info,
                      int64_t **ret_parents, size_t *ret_nparents) {
        struct snap_info *info;
        int64_t id, parent;
        int r = lookup(db, key, &id, NULL, &parent);
        if (r < 0)
                return r;
        r = load_info(db, key, &info);
        if (r < 0)
                return r;
        if (ret_parents) {
                r = load_chain(db, parent, ret_parents, ret_nparents);
                if (r < 0) {
                        snap_info_free(info);
                        return r;
                }
        }
        *ret_info = info;
        return 0;
}

int snapdb_create(struct snapdb *db, enum snap_kind kind, const char *key, const char *parent,
                  const struct snap_label *labels, size_t nlabels, struct snap_info **ret_info,
                  int64_t **ret_parents, size_t *ret_nparents) {
        if (kind != SNAP_VIEW && kind != SNAP_ACTIVE)
                return -EINVAL;
        int r = begin(db, true);
        if (r < 0)
                return r;
        int64_t parent_id = 0, id;
        if (parent && parent[0]) {
                int pkind;
                r = lookup(db, parent, &parent_id, &pkind, NULL);
                if (r == 0 && pkind != SNAP_COMMITTED)
                        r = -EINVAL;
        }
        if (r == 0) {
                r = lookup(db, key, &id, NULL, NULL);
                r = r == 0 ? -EEXIST : r == -ENOENT ? 0 : r;
        }
        if (r == 0) {
                sqlite3_stmt *st = prep(db, "INSERT INTO snapshots (key, parent_id, kind, "
                                            "created_ns, updated_ns) VALUES (?1, ?2, ?3, ?4, ?4)");
                if (!st)
                        r = db_fail(db, "create");
                else {
                        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
                        if (parent_id)
                                sqlite3_bind_int64(st, 2, parent_id);
                        else
                                sqlite3_bind_null(st, 2);
                        sqlite3_bind_int(st, 3, kind);
                        sqlite3_bind_int64(st, 4, now_ns());
                        r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "create");
                        sqlite3_finalize(st);
                }
        }
        if (r == 0)
                r = put_labels(db, sqlite3_last_insert_rowid(db->conn), labels, nlabels);
        if (r == 0)
                r = get_locked(db, key, ret_info, ret_parents, ret_nparents);
        if (r == 0) {
                r = end(db, 0);
                if (r < 0) {
                        snap_info_free(*ret_info);
                        free(*ret_parents);
                }
                return r;
        }
        return end(db, r);
}

int snapdb_get(struct snapdb *db, const char *key, struct snap_info **ret_info,
               int64_t **ret_parents, size_t *ret_nparents) {
        int r = begin(db, false);
        if (r < 0)
                return r;
        r = get_locked(db, key, ret_info, ret_parents, ret_nparents);
        end(db, 0);
        return r;
}

static int commit_locked(struct snapdb *db, const char *name, const char *key,
                         const struct snap_label *labels, size_t nlabels, int64_t usage_size,
                         int64_t usage_inodes, int64_t *ret_id) {
        int64_t id;
        int kind;
        int r = lookup(db, name, &id, NULL, NULL);
        r = r == 0 ? -EEXIST : r == -ENOENT ? 0 : r;
        if (r == 0)
                r = lookup(db, key, &id, &kind, NULL);
        if (r == 0 && kind != SNAP_ACTIVE)
                r = -EBUSY;
        if (r == 0) {
                sqlite3_stmt *st = prep(db, "UPDATE snapshots SET key = ?2, kind = ?3, "
                                            "created_ns = ?4, updated_ns = ?4, usage_size = ?5, "
                                            "usage_inodes = ?6 WHERE id = ?1");
                if (!st)
                        r = db_fail(db, "commit");
                else {
                        sqlite3_bind_int64(st, 1, id);
                        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
                        sqlite3_bind_int(st, 3, SNAP_COMMITTED);
                        sqlite3_bind_int64(st, 4, now_ns());
                        sqlite3_bind_int64(st, 5, usage_size);
                        sqlite3_bind_int64(st, 6, usage_inodes);
                        r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "commit");
                        sqlite3_finalize(st);
                }
        }
        if (r == 0)
                r = put_labels(db, id, labels, nlabels); /* replaced, not inherited */
        if (r == 0)
                *ret_id = id;
        return r;
}

int snapdb_commit(struct snapdb *db, const char *name, const char *key,
                  const struct snap_label *labels, size_t nlabels, int64_t usage_size,
                  int64_t usage_inodes) {
        int r = begin(db, true);
        if (r < 0)
                return r;
        int64_t id;
        return end(db,
                   commit_locked(db, name, key, labels, nlabels, usage_size, usage_inodes, &id));
}

int snapdb_commit_remote(struct snapdb *db, const char *name, const char *key,
                         const struct snap_label *labels, size_t nlabels, const char *layer,
                         const char *ref) {
        if (!layer || !layer[0] || !ref)
                return -EINVAL;
        int r = begin(db, true);
        if (r < 0)
                return r;
        int64_t id;
        r = commit_locked(db, name, key, labels, nlabels, 0, 0, &id);
        if (r == 0) {
                sqlite3_stmt *st = prep(db, "INSERT OR REPLACE INTO snapshot_remote (snap_id, "
                                            "layer, ref) VALUES (?1, ?2, ?3)");
                if (!st)
                        r = db_fail(db, "commit remote");
                else {
                        sqlite3_bind_int64(st, 1, id);
                        sqlite3_bind_text(st, 2, layer, -1, SQLITE_STATIC);
                        sqlite3_bind_text(st, 3, ref, -1, SQLITE_STATIC);
                        r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "commit remote");
                        sqlite3_finalize(st);
                }
        }
        return end(db, r);
}

int snapdb_remote_layer(struct snapdb *db, int64_t id, char *buf, size_t cap) {
        if (cap == 0)
                return -EINVAL;
        int r = begin(db, false);
        if (r < 0)
                return r;
        sqlite3_stmt *st = prep(db, "SELECT layer FROM snapshot_remote WHERE snap_id = ?1");
        if (!st)
                return end(db, db_fail(db, "remote layer"));
        sqlite3_bind_int64(st, 1, id);
        int rc = sqlite3_step(st);
        buf[0] = 0;
        if (rc == SQLITE_ROW) {
                const unsigned char *t = sqlite3_column_text(st, 0);
                if (t && (size_t)snprintf(buf, cap, "%s", (const char *)t) >= cap)
                        r = -ENAMETOOLONG;
        } else if (rc != SQLITE_DONE) {
                r = db_fail(db, "remote layer");
        }
        sqlite3_finalize(st);
        end(db, 0);
        return r;
}

int snapdb_remove(struct snapdb *db, const char *key, int64_t *ret_id) {
        int r = begin(db, true);
        if (r < 0)
                return r;
        int64_t id;
        r = lookup(db, key, &id, NULL, NULL);
        if (r == 0) {
                sqlite3_stmt *st = prep(db, "SELECT 1 FROM snapshots WHERE parent_id = ?1 LIMIT 1");
                if (!st)
                        r = db_fail(db, "remove");
                else {
                        sqlite3_bind_int64(st, 1, id);
                        int rc = sqlite3_step(st);
                        r = rc == SQLITE_ROW    ? -EBUSY
                            : rc == SQLITE_DONE ? 0
                                                : db_fail(db, "remove");
                        sqlite3_finalize(st);
                }
        }
        static const char *const del[] = {
                "DELETE FROM snapshot_labels WHERE snap_id = ?1",
                "DELETE FROM snapshot_remote WHERE snap_id = ?1",
                "DELETE FROM snapshots WHERE id = ?1",
        };
        for (size_t i = 0; i < sizeof(del) / sizeof(del[0]) && r == 0; i++) {
                sqlite3_stmt *st = prep(db, del[i]);
                if (!st) {
                        r = db_fail(db, "remove");
                        break;
                }
                sqlite3_bind_int64(st, 1, id);
                r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "remove");
                sqlite3_finalize(st);
        }
        r = end(db, r);
        if (r == 0)
                *ret_id = id;
        return r;
}

static const char *label_value(const struct snap_label *labels, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(labels[i].name, name) == 0)
                        return labels[i].value;
        return NULL;
}

int snapdb_update(struct snapdb *db, const char *key, const struct snap_label *labels,
                  size_t nlabels, char *const *paths, size_t npaths, struct snap_info **ret_info) {
        int r = begin(db, true);
        if (r < 0)
                return r;
        int64_t id;
        r = lookup(db, key, &id, NULL, NULL);
        bool replace_all = npaths == 0;
        for (size_t i = 0; i < npaths && r == 0; i++) {
                if (strcmp(paths[i], "labels") == 0)
                        replace_all = true;
                else if (strncmp(paths[i], "labels.", 7) != 0)
                        r = -EINVAL;
        }
        if (r == 0 && replace_all)
                r = put_labels(db, id, labels, nlabels);
        for (size_t i = 0; i < npaths && r == 0 && !replace_all; i++) {
                const char *name = paths[i] + 7, *value = label_value(labels, nlabels, name);
                sqlite3_stmt *st =
                        prep(db, value && value[0] ? "INSERT OR REPLACE INTO snapshot_labels "
                                                     "(snap_id, name, value) VALUES (?1, ?2, ?3)"
                                                   : "DELETE FROM snapshot_labels WHERE "
                                                     "snap_id = ?1 AND name = ?2");
                if (!st) {
                        r = db_fail(db, "update");
                        break;
                }
                sqlite3_bind_int64(st, 1, id);
                sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
                if (value && value[0])
                        sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
                r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "update");
                sqlite3_finalize(st);
        }
        if (r == 0) {
                sqlite3_stmt *st = prep(db, "UPDATE snapshots SET updated_ns = ?2 WHERE id = ?1");
                if (!st)
                        r = db_fail(db, "update");
                else {
                        sqlite3_bind_int64(st, 1, id);
                        sqlite3_bind_int64(st, 2, now_ns());
                        r = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(db, "update");
                        sqlite3_finalize(st);
                }
        }
        if (r == 0)
                r = load_info(db, key, ret_info);
        if (r == 0) {
                r = end(db, 0);
                if (r < 0)
                        snap_info_free(*ret_info);
                return r;
        }
        return end(db, r);
}

int snapdb_for_each(struct snapdb *db, int (*fn)(void *ud, const struct snap_info *info),
                    void *ud) {
        int r = begin(db, false);
        if (r < 0)
                return r;
        sqlite3_stmt *st = prep(db, INFO_SQL "ORDER BY s.id");
        if (!st)
                return end(db, db_fail(db, "list"));
        int rc;
        while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct snap_info *info;
                r = info_from_row(db, st, &info);
                if (r == 0) {
                        r = fn(ud, info);
                        snap_info_free(info);
                }
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = db_fail(db, "list");
        sqlite3_finalize(st);
        end(db, 0);
        return r;
}
