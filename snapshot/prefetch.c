/* The prefetch scheduler. See prefetch.h for the contract.
 *
 * State is two small arrays under one mutex: the queue (FIFO, at most queue_max digests) and
 * the running set (at most max_active). The thread takes the next queued layer only while the
 * running set has room, asks the ops what it is (prefetch_decide), starts it or counts why
 * not, and looks at the running ones every poll_ms: held whole, or stopped (engine_prefetch
 * clears `prefetching` when every chunk was tried; prefetch_err says whether one failed). The
 * ops run without the mutex held, so prefetch_queue (called from gRPC threads during a Mounts)
 * never waits on the engine.
 *
 * Why polling: engine_prefetch reports progress only through engine_find; a completion hook
 * into the engine would cost more engine code than one engine_find per running layer per
 * poll_ms (a handful of layers, a lock held for a copy of one struct).
 *
 * A layer is queued again by every Mounts of a snapshot over it; one already queued or running
 * is refused (-EALREADY) and one held whole is a no-op at probe time, so repeated container
 * starts cost one probe per layer. A layer that is skipped is remembered (the last 256), so
 * it is counted once, not at every start over it (containerd even asks Mounts twice per `ctr
 * run`); one skipped for the budget is thus not retried after a larger budget until it falls
 * out of that memory or the daemon restarts. A layer that failed is retried by the next start.
 *
 * The half-budget bound holds for the running set together, not only per layer: a layer that
 * would take the running layers' sizes past half the budget waits (deferred, one slot, ahead
 * of the queue, so FIFO order holds) until one of them ends, then is decided again. It never
 * waits on an empty running set, so it cannot wait forever. */
#include "snapshot/prefetch.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/log.h"

#define SKIPPED_MAX 256

struct prefetcher {
        struct prefetch_config cfg; /* (immutable) */
        struct prefetch_ops ops;    /* (immutable) */
        pthread_t thread;

        pthread_mutex_t lock;
        pthread_cond_t cond;   /* queued, or stopping (lock) */
        bool stopping;         /* (lock) */
        struct digest *queue;  /* ring of queue_max (lock) */
        unsigned qhead, qlen;  /* (lock) */
        struct digest *active; /* max_active (lock) */
        uint64_t *active_size; /* max_active: each running layer's size (lock) */
        unsigned nactive;      /* (lock) */
        uint64_t ended;        /* running layers that ended, ever (lock) */
        /* A layer that did not fit beside the running ones, waiting for one to end. (lock) */
        struct digest deferred;
        bool has_deferred;
        uint64_t deferred_at;     /* `ended` when it was deferred (lock) */
        struct prefetch_stats st; /* (lock) */
        /* The last SKIPPED_MAX layers skipped, so the next starts over them (and containerd's
         * second Mounts of one start) neither probe nor count them again. (lock) */
        struct digest skipped[SKIPPED_MAX];
        unsigned nskipped, skipped_next; /* (lock) */
};

enum prefetch_verdict prefetch_decide(const struct prefetch_probe *p, uint64_t max_layer_bytes) {
        if (p->unsupported)
                return PREFETCH_UNSUPPORTED;
        if (p->held)
                return PREFETCH_HELD;
        if (max_layer_bytes && p->size > max_layer_bytes)
                return PREFETCH_TOO_LARGE;
        /* Half the budget: a layer that fills more of the cache would push out its own first
         * chunks (and everything else the node reads) before its last ones land. */
        if (p->size > p->budget / 2)
                return PREFETCH_OVER_BUDGET;
        return PREFETCH_GO;
}

bool prefetch_fits(uint64_t running_bytes, uint64_t size, uint64_t budget) {
        /* Alone, a layer that passed prefetch_decide always fits: never wait on nothing. */
        return running_bytes == 0 || running_bytes + size <= budget / 2;
}

const char *prefetch_verdict_name(enum prefetch_verdict v) {
        switch (v) {
        case PREFETCH_GO:
                return "go";
        case PREFETCH_HELD:
                return "held";
        case PREFETCH_TOO_LARGE:
                return "larger than --snapshotter-prefetch-max-layer";
        case PREFETCH_OVER_BUDGET:
                return "larger than half the cache budget";
        case PREFETCH_UNSUPPORTED:
                return "its reads do not use the layer's own bytes (zstd: the seekable copy)";
        }
        return "?";
}

static bool in_list(const struct digest *v, unsigned n, unsigned head, unsigned cap,
                    const struct digest *d) {
        for (unsigned i = 0; i < n; i++)
                if (digest_equal(&v[(head + i) % cap], d))
                        return true;
        return false;
}

int prefetch_queue(struct prefetcher *p, const struct digest *d) {
        int r = 0;
        pthread_mutex_lock(&p->lock);
        if (p->stopping)
                r = -ESHUTDOWN;
        else if (in_list(p->queue, p->qlen, p->qhead, p->cfg.queue_max, d) ||
                 in_list(p->active, p->nactive, 0, p->cfg.max_active, d) ||
                 (p->has_deferred && digest_equal(&p->deferred, d)) ||
                 in_list(p->skipped, p->nskipped, 0, SKIPPED_MAX, d))
                r = -EALREADY;
        else if (p->qlen == p->cfg.queue_max) {
                p->st.skipped++;
                r = -ENOSPC;
        } else {
                p->queue[(p->qhead + p->qlen++) % p->cfg.queue_max] = *d;
                p->st.queued++;
                pthread_cond_signal(&p->cond);
        }
        pthread_mutex_unlock(&p->lock);
        return r;
}

/* Takes the next layer into *RET while there is room to run it: the deferred one once a
 * running layer ended since it was deferred (the queue waits behind it), else the queue's
 * head. Caller holds lock. */
static bool take_next(struct prefetcher *p, struct digest *ret) {
        if (p->nactive >= p->cfg.max_active)
                return false;
        if (p->has_deferred) {
                if (p->ended == p->deferred_at)
                        return false;
                *ret = p->deferred;
                p->has_deferred = false;
                return true;
        }
        if (p->qlen == 0)
                return false;
        *ret = p->queue[p->qhead];
        p->qhead = (p->qhead + 1) % p->cfg.queue_max;
        p->qlen--;
        return true;
}

/* Decides on layer D and starts it, without the lock. */
static void consider(struct prefetcher *p, const struct digest *d) {
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(d, hex);
        struct prefetch_probe pr;
        int r = p->ops.probe(p->ops.ud, d, &pr);
        enum prefetch_verdict v =
                r < 0 ? PREFETCH_UNSUPPORTED : prefetch_decide(&pr, p->cfg.max_layer_bytes);
        if (v == PREFETCH_GO) {
                /* Only this thread changes the running set, so the sum cannot grow between
                 * this look and the start below. */
                pthread_mutex_lock(&p->lock);
                uint64_t running = 0;
                for (unsigned i = 0; i < p->nactive; i++)
                        running += p->active_size[i];
                bool defer = !prefetch_fits(running, pr.size, pr.budget);
                if (defer) {
                        p->deferred = *d;
                        p->has_deferred = true;
                        p->deferred_at = p->ended;
                }
                pthread_mutex_unlock(&p->lock);
                if (defer) {
                        log_debug("layer prefetch deferred layer=sha256:%s size=%" PRIu64
                                  " running_bytes=%" PRIu64,
                                  hex, pr.size, running);
                        return;
                }
                r = p->ops.start(p->ops.ud, d);
        }
        pthread_mutex_lock(&p->lock);
        if (v == PREFETCH_GO && r == 0) {
                p->active_size[p->nactive] = pr.size;
                p->active[p->nactive++] = *d;
                p->st.started++;
        } else if (v == PREFETCH_GO) {
                p->st.failed++;
        } else if (v != PREFETCH_HELD) {
                p->st.skipped++;
                p->skipped[p->skipped_next] = *d;
                p->skipped_next = (p->skipped_next + 1) % SKIPPED_MAX;
                if (p->nskipped < SKIPPED_MAX)
                        p->nskipped++;
        }
        pthread_mutex_unlock(&p->lock);
        if (v == PREFETCH_GO && r == 0)
                log_debug("layer prefetch started layer=sha256:%s size=%" PRIu64, hex, pr.size);
        else if (v == PREFETCH_GO)
                log_info("layer prefetch failed layer=sha256:%s err=%s", hex, strerror(-r));
        else if (v != PREFETCH_HELD)
                log_info("layer prefetch skipped layer=sha256:%s reason=\"%s\"", hex,
                         r < 0 ? strerror(-r) : prefetch_verdict_name(v));
}

/* Looks at each running prefetch once; drops those that ended. */
static void poll_active(struct prefetcher *p) {
        struct digest v[64];
        pthread_mutex_lock(&p->lock);
        unsigned n = p->nactive < 64 ? p->nactive : 64;
        memcpy(v, p->active, n * sizeof(v[0]));
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < n; i++) {
                struct prefetch_probe pr;
                int r = p->ops.probe(p->ops.ud, &v[i], &pr);
                int outcome = 0; /* 0 running, 1 done, -errno failed */
                if (r < 0)
                        outcome = r;
                else if (pr.held)
                        outcome = 1;
                else if (!pr.prefetching)
                        /* Every chunk was tried: one a reader was fetching at that moment
                         * lands with the reader's fetch; an error stopped it. */
                        outcome = pr.prefetch_err < 0 ? pr.prefetch_err : 1;
                if (outcome == 0)
                        continue;
                char hex[DIGEST_HEX_LEN + 1];
                digest_to_hex(&v[i], hex);
                pthread_mutex_lock(&p->lock);
                for (unsigned j = 0; j < p->nactive; j++)
                        if (digest_equal(&p->active[j], &v[i])) {
                                p->nactive--;
                                p->active[j] = p->active[p->nactive];
                                p->active_size[j] = p->active_size[p->nactive];
                                p->ended++;
                                break;
                        }
                if (outcome > 0)
                        p->st.prefetched++;
                else
                        p->st.failed++;
                pthread_mutex_unlock(&p->lock);
                if (outcome > 0)
                        log_debug("layer prefetched layer=sha256:%s", hex);
                else
                        log_info("layer prefetch stopped layer=sha256:%s err=%s", hex,
                                 strerror(-outcome));
        }
}

static void *prefetch_main(void *arg) {
        struct prefetcher *p = arg;
        pthread_mutex_lock(&p->lock);
        while (!p->stopping) {
                struct digest d;
                if (take_next(p, &d)) {
                        pthread_mutex_unlock(&p->lock);
                        consider(p, &d);
                        pthread_mutex_lock(&p->lock);
                        continue;
                }
                if (p->nactive == 0) {
                        pthread_cond_wait(&p->cond, &p->lock);
                        continue;
                }
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t ns = (uint64_t)ts.tv_nsec + p->cfg.poll_ms * 1000000u;
                ts.tv_sec += (time_t)(ns / 1000000000u);
                ts.tv_nsec = (long)(ns % 1000000000u);
                pthread_cond_timedwait(&p->cond, &p->lock, &ts);
                if (p->stopping)
                        break;
                pthread_mutex_unlock(&p->lock);
                poll_active(p);
                pthread_mutex_lock(&p->lock);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

int prefetch_new(const struct prefetch_config *cfg, const struct prefetch_ops *ops,
                 struct prefetcher **ret) {
        if (!cfg->max_active || cfg->max_active > 64 || !cfg->queue_max || !ops->probe ||
            !ops->start)
                return -EINVAL;
        struct prefetcher *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->cfg = *cfg;
        if (!p->cfg.poll_ms)
                p->cfg.poll_ms = 100;
        p->ops = *ops;
        p->queue = calloc(cfg->queue_max, sizeof(*p->queue));
        p->active = calloc(cfg->max_active, sizeof(*p->active));
        p->active_size = calloc(cfg->max_active, sizeof(*p->active_size));
        int r = -ENOMEM;
        if (!p->queue || !p->active || !p->active_size)
                goto out_free;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cond, NULL);
        r = -pthread_create(&p->thread, NULL, prefetch_main, p);
        if (r < 0)
                goto out_sync;
        *ret = p;
        return 0;
out_sync:
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
out_free:
        free(p->queue);
        free(p->active);
        free(p->active_size);
        free(p);
        return r;
}

void prefetch_get_stats(struct prefetcher *p, struct prefetch_stats *ret) {
        pthread_mutex_lock(&p->lock);
        *ret = p->st;
        ret->active = p->nactive;
        pthread_mutex_unlock(&p->lock);
}

void prefetch_free(struct prefetcher *p) {
        if (!p)
                return;
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
        free(p->queue);
        free(p->active);
        free(p->active_size);
        free(p);
}
