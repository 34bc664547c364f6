/* The lookup resolver. See resolver.h.
 *
 * State: a list of questions (one per digest), each with its waiters, under one mutex; the
 * threads take the oldest unasked question, ask the engine (engine_lookup: the directory,
 * blocking) without the lock, then answer every waiter of that question. A waiter joining a
 * question already being asked gets that answer too. */
#include "fs/resolver.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>

#include "util/log.h"

struct waiter {
        struct waiter *next;
        resolver_done_fn done;
        void *ctx;
};

struct question {
        struct question *next;
        struct digest d;
        bool asking;
        size_t nwaiters;
        struct waiter *waiters;
};

struct resolver {
        struct engine *e;
        pthread_mutex_t lock; /* everything below */
        pthread_cond_t cond;
        struct question *head, **tail;
        size_t nquestions, max_pending;
        bool stopping;
        pthread_t *threads;
        unsigned nthreads;
};

static void answer_all(struct waiter *w, int err, const struct engine_blob_info *b) {
        while (w) {
                struct waiter *next = w->next;
                w->done(w->ctx, err, b);
                free(w);
                w = next;
        }
}

static void *resolver_main(void *arg) {
        struct resolver *r = arg;
        pthread_mutex_lock(&r->lock);
        for (;;) {
                struct question *q = r->head;
                while (q && q->asking)
                        q = q->next;
                if (r->stopping)
                        break;
                if (!q) {
                        pthread_cond_wait(&r->cond, &r->lock);
                        continue;
                }
                q->asking = true;
                pthread_mutex_unlock(&r->lock);

                struct engine_blob_info b;
                int err = engine_lookup(r->e, &q->d, &b);

                pthread_mutex_lock(&r->lock);
                for (struct question **pp = &r->head; *pp; pp = &(*pp)->next)
                        if (*pp == q) {
                                *pp = q->next;
                                break;
                        }
                r->tail = &r->head;
                while (*r->tail)
                        r->tail = &(*r->tail)->next;
                r->nquestions--;
                struct waiter *w = q->waiters;
                free(q);
                pthread_mutex_unlock(&r->lock);
                answer_all(w, err, err == 0 ? &b : NULL);
                pthread_mutex_lock(&r->lock);
        }
        pthread_mutex_unlock(&r->lock);
        return NULL;
}

int resolver_new(struct engine *e, unsigned threads, size_t max_pending, struct resolver **ret) {
        struct resolver *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->e = e;
        r->max_pending = max_pending ? max_pending : 1;
        r->tail = &r->head;
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->cond, NULL);
        r->threads = calloc(threads ? threads : 1, sizeof(*r->threads));
        if (!r->threads) {
                resolver_free(r);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < (threads ? threads : 1); i++) {
                int rr = -pthread_create(&r->threads[i], NULL, resolver_main, r);
                if (rr < 0) {
                        resolver_free(r);
                        return rr;
                }
                r->nthreads++;
        }
        *ret = r;
        return 0;
}

void resolver_free(struct resolver *r) {
        if (!r)
                return;
        pthread_mutex_lock(&r->lock);
        r->stopping = true;
        pthread_cond_broadcast(&r->cond);
        pthread_mutex_unlock(&r->lock);
        for (unsigned i = 0; i < r->nthreads; i++)
                pthread_join(r->threads[i], NULL);
        /* The threads are gone: whatever is left was never asked. */
        while (r->head) {
                struct question *q = r->head;
                r->head = q->next;
                answer_all(q->waiters, -ECANCELED, NULL);
                free(q);
        }
        pthread_mutex_destroy(&r->lock);
        pthread_cond_destroy(&r->cond);
        free(r->threads);
        free(r);
}

void resolver_lookup(struct resolver *r, const struct digest *d, resolver_done_fn done, void *ctx) {
        struct engine_blob_info b;
        if (engine_find(r->e, d, &b) == 0) {
                done(ctx, 0, &b);
                return;
        }
        struct waiter *w = malloc(sizeof(*w));
        if (!w) {
                done(ctx, -ENOMEM, NULL);
                return;
        }
        w->done = done;
        w->ctx = ctx;
        pthread_mutex_lock(&r->lock);
        struct question *q = r->head;
        while (q && !digest_equal(&q->d, d))
                q = q->next;
        if (!q && !r->stopping && r->nquestions < r->max_pending) {
                q = calloc(1, sizeof(*q));
                if (q) {
                        q->d = *d;
                        *r->tail = q;
                        r->tail = &q->next;
                        r->nquestions++;
                        pthread_cond_signal(&r->cond);
                }
        }
        if (!q || r->stopping || q->nwaiters >= r->max_pending) {
                bool stopping = r->stopping;
                pthread_mutex_unlock(&r->lock);
                free(w);
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed = 0;
                if (!stopping && log_ratelimit_ok(&rl, &suppressed))
                        log_debug("lookup refused: too many unknown digests being asked "
                                  "suppressed=%" PRIu64,
                                  suppressed);
                done(ctx, stopping ? -ECANCELED : -EBUSY, NULL);
                return;
        }
        w->next = q->waiters;
        q->waiters = w;
        q->nwaiters++;
        pthread_mutex_unlock(&r->lock);
}
