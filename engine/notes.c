/* The index write queue. Work done under the engine lock changes what the index must record
 * (a chunk present or absent, a blob verified, a blob's chunks forgotten), but index calls may
 * block on the index's own lock and its writer: so they are collected into a `struct notes`
 * while the lock is held and pushed by eng_notes_flush() after it is released.
 *
 * Invariant: a note describes a change already made in memory; losing one (out of memory)
 * leaves the index with a stale "present" that start-up validation (load.c) catches.
 * Cost: one small array per lock hold, grown by doubling; freed by the flush. */
#include "engine/engine_int.h"

void eng_note(struct notes *ns, enum idx_note_kind k, const struct blob *b, uint32_t idx, bool flag,
              const struct digest *sha) {
        if (ns->n == ns->cap) {
                size_t cap = ns->cap ? ns->cap * 2 : 16;
                struct idx_note *v = realloc(ns->v, cap * sizeof(*v));
                if (!v) {
                        /* The index then keeps a stale "present": start-up validation catches
                         * it, at the cost of a probe. */
                        log_debug("index note dropped: out of memory");
                        return;
                }
                ns->v = v;
                ns->cap = cap;
        }
        struct idx_note *n = &ns->v[ns->n++];
        n->kind = k;
        n->blob = b->digest;
        n->idx = idx;
        n->flag = flag;
        n->has_sha = sha != NULL;
        if (sha)
                n->sha = *sha;
}

void eng_notes_flush(struct engine *e, struct notes *ns) {
        ASSERT_NOT_HELD(&e->lock);
        for (size_t i = 0; i < ns->n; i++) {
                struct idx_note *n = &ns->v[i];
                switch (n->kind) {
                case NOTE_ABSENT:
                        idx_chunk_absent(e->ix, &n->blob, n->idx);
                        break;
                case NOTE_PRESENT:
                        idx_chunk_present(e->ix, &n->blob, n->idx, n->has_sha ? &n->sha : NULL);
                        break;
                case NOTE_CHAIN:
                        idx_chunk_chain(e->ix, &n->blob, n->idx, &n->sha);
                        break;
                case NOTE_VERIFIED:
                        idx_blob_verified(e->ix, &n->blob, n->flag);
                        break;
                case NOTE_FORGET:
                        idx_blob_forget_chunks(e->ix, &n->blob);
                        break;
                }
        }
        free(ns->v);
        *ns = (struct notes){0};
}
