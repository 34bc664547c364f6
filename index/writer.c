/* The index's writer: producers push fixed-size ops into a bounded ring (WRITE_QUEUE_MAX; a
 * producer waits when it is full); one thread drains up to WRITE_BATCH ops per transaction.
 * With WAL and synchronous=NORMAL a commit is an append, durable at the next checkpoint; losing
 * the last batch in a power cut only makes the index forget chunks, which costs a refetch,
 * never wrong bytes. Part of the index (index.c; contract in index.h). */
#include "index/index_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

static void op_free_payload(struct op *op) {
        free(op->b);
        free(op->peers);
        free(op->loc);
}

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
        /* A chain value may come before its chunk (the value a neighbour is checked from). */
        [ST_CHUNK_CHAIN] = "INSERT INTO chunks (blob, idx, present, chain) VALUES (?1, ?2, 0, ?3) "
                           "ON CONFLICT(blob, idx) DO UPDATE SET chain = excluded.chain",
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

int ix_prepare_writes(struct index *ix) {
        for (int i = 0; i < ST_MAX; i++)
                if (sqlite3_prepare_v3(ix->wdb, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                       &ix->stmt[i], NULL) != SQLITE_OK)
                        return ix_db_error(ix->wdb, "prepare");
        return 0;
}

void ix_bind_digest_hex(sqlite3_stmt *st, int col, const struct digest *d) {
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
                ix_bind_digest_hex(st, 1, &op->b->digest);
                sqlite3_bind_int64(st, 2, (sqlite3_int64)op->b->size);
                sqlite3_bind_int64(st, 3, op->b->chunk_size);
                sqlite3_bind_text(st, 4, op->b->source, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 5, op->b->media_type, -1, SQLITE_STATIC);
                sqlite3_bind_int(st, 6, op->b->verified);
                sqlite3_bind_int64(st, 7, op->b->added_at);
                break;
        case OP_CHUNK_PRESENT:
                st = ix->stmt[ST_CHUNK_PRESENT];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->idx);
                if (op->has_sha)
                        sqlite3_bind_blob(st, 3, op->sha.bytes, DIGEST_LEN, SQLITE_STATIC);
                else
                        sqlite3_bind_null(st, 3);
                break;
        case OP_CHUNK_CHAIN:
                st = ix->stmt[ST_CHUNK_CHAIN];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->idx);
                sqlite3_bind_blob(st, 3, op->sha.bytes, DIGEST_LEN, SQLITE_STATIC);
                break;
        case OP_CHUNK_ABSENT:
                st = ix->stmt[ST_CHUNK_ABSENT];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->idx);
                break;
        case OP_FORGET_CHUNKS:
                st = ix->stmt[ST_FORGET_CHUNKS];
                ix_bind_digest_hex(st, 1, &op->blob);
                break;
        case OP_VERIFIED:
                st = ix->stmt[ST_VERIFIED];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int(st, 2, op->flag);
                break;
        case OP_PINNED:
                st = ix->stmt[ST_PINNED];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int(st, 2, op->flag);
                break;
        case OP_ACCESSED:
                st = ix->stmt[ST_ACCESSED];
                ix_bind_digest_hex(st, 1, &op->blob);
                sqlite3_bind_int64(st, 2, op->when);
                break;
        case OP_PUT_PEERS:
                return apply_put_peers(ix, op);
        case OP_PUT_LOCATION:
                st = ix->stmt[ST_PUT_LOCATION];
                ix_bind_digest_hex(st, 1, &op->blob);
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

void *ix_writer_main(void *arg) {
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

void idx_chunk_chain(struct index *ix, const struct digest *blob, uint32_t idx,
                     const struct digest *chain) {
        struct op op = {
                .kind = OP_CHUNK_CHAIN, .blob = *blob, .idx = idx, .has_sha = true, .sha = *chain};
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
