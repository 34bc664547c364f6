/* Streaming puts: storing a large derived blob (a zstd layer's seekable copy) that its producer
 * writes in order and whose digest is known only once the last byte is written, without ever
 * holding it in memory (engine_put() takes one whole buffer).
 *
 * The store names files by digest, so the bytes go first to a staging file under a name no
 * blob has (the sha256 of a per-process counter, the pid and the clock, with a prefix no
 * content hashes to by accident), one chunk at a time, checksummed by the store like any
 * chunk. At finish the digest is known and checked; the blob is registered (verified: its
 * bytes were hashed whole) and each chunk is read back from staging (the store checks its
 * CRCs) and stored through engine_put's own steps (eng_put_chunk: present only once on disk,
 * under the budget, announced to peers like any chunk); the staging file is removed. Before
 * finish nothing is visible: no blob in the table or the index, no chunk present, nothing
 * announced.
 *
 * Costs and bounds: one chunk of memory per put; the blob is written twice (staging, then its
 * place; a rename inside the store would save the second write and read, but the store has no
 * such call yet); staging bytes are outside the budget while the put runs, at most a quarter of
 * the effective budget per put (the same bound engine_put has), and a put over it fails with
 * -EFBIG as soon as it passes it. A crash leaves a staging file no index row names, which
 * store_reclaim() removes at the next start.
 */
#include "engine/engine_int.h"

#include <unistd.h>

struct engine_put_stream {
        struct engine *e;
        char source[IDX_SOURCE_MAX];
        bool check;
        struct digest want;
        struct digest staging;
        EVP_MD_CTX *md;
        uint8_t *chunk; /* the chunk being filled: chunk_size bytes */
        size_t fill;
        uint64_t size;  /* bytes written so far */
        uint64_t limit; /* the most it may take (a quarter of the effective budget) */
        int err;        /* sticky */
        bool staged;    /* the staging file may exist */
};

static uint64_t staging_counter; /* atomic */

int engine_put_begin(struct engine *e, const char *source, const struct digest *want,
                     struct engine_put_stream **ret) {
        struct engine_put_stream *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->e = e;
        snprintf(p->source, sizeof(p->source), "%s", source ? source : "");
        if (want) {
                p->check = true;
                p->want = *want;
        }
        p->limit = __atomic_load_n(&e->effective_budget, __ATOMIC_RELAXED) / 4;
        p->chunk = malloc(e->cfg.chunk_size);
        p->md = EVP_MD_CTX_new();
        if (!p->chunk || !p->md || EVP_DigestInit_ex(p->md, EVP_sha256(), NULL) != 1) {
                engine_put_abort(p);
                return -ENOMEM;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        char name[160];
        int n = snprintf(name, sizeof(name), "p2pblobs staging %ld %" PRIu64 " %lld.%09ld %p",
                         (long)getpid(), __atomic_add_fetch(&staging_counter, 1, __ATOMIC_RELAXED),
                         (long long)ts.tv_sec, ts.tv_nsec, (void *)p);
        digest_sha256(name, (size_t)n, &p->staging);
        *ret = p;
        return 0;
}

/* Writes the chunk being filled to the staging file. */
static int stage_chunk(struct engine_put_stream *p) {
        uint64_t off = p->size - p->fill;
        /* The staging file's size is what has been written so far: every write ends it, so
         * the store takes a short last block, and grows it by the next write. */
        int r = store_write(p->e->store, &p->staging, p->size, off, p->chunk, p->fill);
        p->staged = true;
        if (r < 0)
                return r;
        p->fill = 0;
        return 0;
}

int engine_put_write(struct engine_put_stream *p, const void *buf, size_t len) {
        const uint8_t *s = buf;
        if (p->err)
                return p->err;
        if (len > p->limit - p->size)
                return p->err = -EFBIG;
        if (EVP_DigestUpdate(p->md, buf, len) != 1)
                return p->err = -ENOMEM;
        while (len > 0) {
                size_t k = p->e->cfg.chunk_size - p->fill;
                if (k > len)
                        k = len;
                memcpy(p->chunk + p->fill, s, k);
                p->fill += k;
                p->size += k;
                s += k;
                len -= k;
                if (p->fill == p->e->cfg.chunk_size) {
                        int r = stage_chunk(p);
                        if (r < 0)
                                return p->err = r;
                }
        }
        return 0;
}

/* Moves the staged bytes into blob D: registered, then chunk by chunk from staging. */
static int publish(struct engine_put_stream *p, const struct digest *d) {
        struct engine *e = p->e;
        struct notes ns = {0};
        struct blob *b;
        uint64_t gen;
        int r = eng_put_open(e, d, p->size, p->source, &b, &gen);
        if (r < 0)
                return r;
        bool vouched_all = true;
        for (uint32_t i = 0; i < b->nchunks; i++) {
                r = store_read(e->store, &p->staging, chunk_off(e, i), p->chunk,
                               chunk_len(e, b, i));
                if (r == 0)
                        r = eng_put_chunk(e, b, gen, i, p->chunk, &ns);
                if (r < 0) {
                        /* The blob stays registered with what made it (a blob that is
                         * only partly here is an ordinary state): reads fetch the rest. */
                        eng_notes_flush(e, &ns);
                        return r;
                }
                vouched_all &= r == 1;
        }
        eng_put_close(e, b, gen, vouched_all, &ns);
        return 0;
}

int engine_put_finish(struct engine_put_stream *p, struct digest *ret_digest, uint64_t *ret_size) {
        struct digest d;
        unsigned dlen;
        int r = p->err;
        if (r == 0 && p->size == 0)
                r = -EINVAL;
        if (r == 0 && p->fill)
                r = stage_chunk(p);
        if (r == 0 && EVP_DigestFinal_ex(p->md, d.bytes, &dlen) != 1)
                r = -ENOMEM;
        if (r == 0 && p->check && !digest_equal(&d, &p->want))
                r = -EBADMSG;
        if (r == 0)
                r = publish(p, &d);
        if (r == 0) {
                if (ret_digest)
                        *ret_digest = d;
                if (ret_size)
                        *ret_size = p->size;
        }
        engine_put_abort(p);
        return r;
}

void engine_put_abort(struct engine_put_stream *p) {
        if (!p)
                return;
        if (p->staged)
                store_remove(p->e->store, &p->staging);
        EVP_MD_CTX_free(p->md);
        free(p->chunk);
        free(p);
}

int engine_put_sink_write(void *ctx, const void *buf, size_t len) {
        struct engine_put_sink *s = ctx;
        if (!s->ps) {
                int r = engine_put_begin(s->e, s->source, NULL, &s->ps);
                if (r < 0)
                        return r;
        }
        return engine_put_write(s->ps, buf, len);
}
