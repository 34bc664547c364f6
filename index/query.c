/* The index's reads: chunk digests and the walks over blobs, chunks, peers and locations, on
 * the reader connection (ix->rdb, serialised by ix->rlock), which sees the committed state
 * (idx_flush() first to include what is still queued). Part of the index (index.c; contract in
 * index.h). */
#include "index/index_int.h"

#include <stdio.h>
#include <string.h>

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
                r = ix_db_error(ix->rdb, "chunk digests");
                goto out_unlock;
        }
        ix_bind_digest_hex(st, 1, blob);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                sqlite3_int64 i = sqlite3_column_int64(st, 0);
                if (i < 0 || i >= nchunks || sqlite3_column_bytes(st, 1) != DIGEST_LEN)
                        continue;
                memcpy(digests[i].bytes, sqlite3_column_blob(st, 1), DIGEST_LEN);
                known[i] = true;
        }
        if (rc != SQLITE_DONE)
                r = ix_db_error(ix->rdb, "chunk digests");
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
                r = ix_db_error(ix->rdb, "list blobs");
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
                r = ix_db_error(ix->rdb, "list blobs");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}

int idx_for_each_chunk(struct index *ix,
                       int (*fn)(void *ud, const struct digest *blob, uint32_t idx, bool present,
                                 const struct digest *sha, const struct digest *chain),
                       void *ud) {
        pthread_mutex_lock(&ix->rlock);
        sqlite3_stmt *st;
        int r = 0;
        if (sqlite3_prepare_v2(ix->rdb,
                               "SELECT blob, idx, present, sha256, chain FROM chunks "
                               "ORDER BY blob, idx",
                               -1, &st, NULL) != SQLITE_OK) {
                r = ix_db_error(ix->rdb, "list chunks");
                goto out_unlock;
        }
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct digest blob, sha, chain;
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
                bool has_chain = sqlite3_column_bytes(st, 4) == DIGEST_LEN;
                if (has_chain)
                        memcpy(chain.bytes, sqlite3_column_blob(st, 4), DIGEST_LEN);
                r = fn(ud, &blob, (uint32_t)idx, sqlite3_column_int(st, 2) != 0,
                       has_sha ? &sha : NULL, has_chain ? &chain : NULL);
                if (r < 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = ix_db_error(ix->rdb, "list chunks");
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
                r = ix_db_error(ix->rdb, "list peers");
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
                r = ix_db_error(ix->rdb, "list peers");
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
                r = ix_db_error(ix->rdb, "list locations");
                goto out_unlock;
        }
        ix_bind_digest_hex(st, 1, blob);
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
                r = ix_db_error(ix->rdb, "list locations");
        sqlite3_finalize(st);
out_unlock:
        pthread_mutex_unlock(&ix->rlock);
        return r;
}
