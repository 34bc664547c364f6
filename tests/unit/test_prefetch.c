/* The snapshotter's prefetch scheduler (snapshot/prefetch.c) over fake ops: the verdicts, the
 * bound on layers running at once, the queue's bound and de-duplication, outcomes (held whole,
 * stopped with an error, could not start), skipped layers counted once, running layers
 * together within half the budget, and a stop while prefetches run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "snapshot/prefetch.h"

#define MiB (UINT64_C(1) << 20)
#define NL 8

/* The fake engine: layer i is the digest whose bytes are all i. */
struct fake {
        pthread_mutex_t m;
        struct prefetch_probe l[NL];
        bool known[NL];
        int start_err[NL];
        unsigned starts[NL];
        unsigned running, max_running;
};

static int idx_of(const struct digest *d) {
        return d->bytes[0] < NL ? d->bytes[0] : -1;
}

static struct digest dg(int i) {
        struct digest d;
        memset(&d, i, sizeof(d));
        return d;
}

static int f_probe(void *ud, const struct digest *d, struct prefetch_probe *ret) {
        struct fake *f = ud;
        int i = idx_of(d);
        pthread_mutex_lock(&f->m);
        int r = i >= 0 && f->known[i] ? 0 : -ENOENT;
        if (r == 0)
                *ret = f->l[i];
        pthread_mutex_unlock(&f->m);
        return r;
}

static int f_start(void *ud, const struct digest *d) {
        struct fake *f = ud;
        int i = idx_of(d);
        pthread_mutex_lock(&f->m);
        int r = f->start_err[i];
        if (r == 0) {
                f->starts[i]++;
                f->l[i].prefetching = true;
                f->running++;
                if (f->running > f->max_running)
                        f->max_running = f->running;
        }
        pthread_mutex_unlock(&f->m);
        return r;
}

/* Layer I's prefetch ends: held whole, or stopped with ERR. */
static void finish(struct fake *f, int i, int err) {
        pthread_mutex_lock(&f->m);
        f->l[i].prefetching = false;
        f->l[i].prefetch_err = err;
        f->l[i].held = err == 0;
        f->running--;
        pthread_mutex_unlock(&f->m);
}

static void fake_init(struct fake *f) {
        memset(f, 0, sizeof(*f));
        pthread_mutex_init(&f->m, NULL);
        for (int i = 0; i < NL; i++) {
                f->known[i] = true;
                f->l[i] = (struct prefetch_probe){.size = 4 * MiB, .budget = 100 * MiB};
        }
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
}

/* Waits (bounded: 10 s) until FIELD of the stats reaches WANT. */
#define WAIT_STAT(p, field, want)                                                                  \
        do {                                                                                       \
                struct prefetch_stats st_;                                                         \
                for (int n_ = 0; n_ < 1000; n_++) {                                                \
                        prefetch_get_stats((p), &st_);                                             \
                        if (st_.field >= (want))                                                   \
                                break;                                                             \
                        sleep_ms(10);                                                              \
                }                                                                                  \
                prefetch_get_stats((p), &st_);                                                     \
                assert_int_equal(st_.field, (want));                                               \
        } while (0)

static void test_decide(void **state) {
        (void)state;
        struct prefetch_probe p = {.size = 10 * MiB, .budget = 100 * MiB};
        assert_int_equal(prefetch_decide(&p, 0), PREFETCH_GO);
        assert_int_equal(prefetch_decide(&p, 10 * MiB), PREFETCH_GO);
        assert_int_equal(prefetch_decide(&p, 10 * MiB - 1), PREFETCH_TOO_LARGE);
        p.size = 50 * MiB; /* exactly half the budget still fits */
        assert_int_equal(prefetch_decide(&p, 0), PREFETCH_GO);
        p.size = 50 * MiB + 1;
        assert_int_equal(prefetch_decide(&p, 0), PREFETCH_OVER_BUDGET);
        p.held = true; /* held wins over size: nothing would be fetched */
        assert_int_equal(prefetch_decide(&p, 1), PREFETCH_HELD);
        p.unsupported = true;
        assert_int_equal(prefetch_decide(&p, 0), PREFETCH_UNSUPPORTED);
        assert_non_null(prefetch_verdict_name(PREFETCH_OVER_BUDGET));
}

static void test_bounded_and_in_order(void **state) {
        (void)state;
        struct fake f;
        fake_init(&f);
        struct prefetcher *p;
        struct prefetch_config cfg = {.max_active = 2, .queue_max = 8, .poll_ms = 5};
        struct prefetch_ops ops = {.ud = &f, .probe = f_probe, .start = f_start};
        assert_int_equal(prefetch_new(&cfg, &ops, &p), 0);
        for (int i = 0; i < 4; i++) {
                struct digest d = dg(i);
                assert_int_equal(prefetch_queue(p, &d), 0);
        }
        WAIT_STAT(p, started, 2);
        sleep_ms(50); /* time for a wrong third start to show */
        struct prefetch_stats st;
        prefetch_get_stats(p, &st);
        assert_int_equal(st.started, 2);
        assert_int_equal(st.active, 2);
        assert_int_equal(f.starts[0] + f.starts[1], 2); /* FIFO: the first two */
        /* Queued or running again: refused, not counted. */
        struct digest d0 = dg(0), d3 = dg(3);
        assert_int_equal(prefetch_queue(p, &d0), -EALREADY);
        assert_int_equal(prefetch_queue(p, &d3), -EALREADY);
        finish(&f, 0, 0);
        WAIT_STAT(p, prefetched, 1);
        WAIT_STAT(p, started, 3);
        finish(&f, 1, -EIO); /* stopped by a failed fetch */
        WAIT_STAT(p, failed, 1);
        WAIT_STAT(p, started, 4);
        finish(&f, 2, 0);
        finish(&f, 3, 0);
        WAIT_STAT(p, prefetched, 3);
        prefetch_get_stats(p, &st);
        assert_int_equal(st.queued, 4);
        assert_int_equal(st.active, 0);
        assert_int_equal(st.skipped, 0);
        assert_true(f.max_running <= 2);
        /* Held whole now: queued again (a second container), a no-op, not a start. */
        assert_int_equal(prefetch_queue(p, &d0), 0);
        WAIT_STAT(p, queued, 5);
        sleep_ms(50);
        prefetch_get_stats(p, &st);
        assert_int_equal(st.started, 4);
        assert_int_equal(st.skipped, 0);
        assert_int_equal(f.starts[0], 1);
        prefetch_free(p);
}

static void test_skips_and_failures(void **state) {
        (void)state;
        struct fake f;
        fake_init(&f);
        f.l[0].size = 20 * MiB; /* over the cap */
        f.l[1].size = 60 * MiB; /* over half the budget (and the cap) */
        f.l[2].unsupported = true;
        f.known[3] = false;      /* the engine does not know it */
        f.start_err[4] = -EFBIG; /* the engine refuses */
        struct prefetcher *p;
        struct prefetch_config cfg = {
                .max_active = 1, .max_layer_bytes = 16 * MiB, .queue_max = 5, .poll_ms = 5};
        struct prefetch_ops ops = {.ud = &f, .probe = f_probe, .start = f_start};
        assert_int_equal(prefetch_new(&cfg, &ops, &p), 0);
        for (int i = 0; i < 5; i++) {
                struct digest d = dg(i);
                assert_int_equal(prefetch_queue(p, &d), 0);
        }
        WAIT_STAT(p, skipped, 4);
        WAIT_STAT(p, failed, 1);
        struct prefetch_stats st;
        prefetch_get_stats(p, &st);
        assert_int_equal(st.started, 0);
        for (int i = 0; i < 5; i++)
                assert_int_equal(f.starts[i], 0);
        /* A skipped layer is remembered: the next start over it is not counted again. One
         * that failed is tried again. */
        struct digest d0 = dg(0), d4 = dg(4);
        assert_int_equal(prefetch_queue(p, &d0), -EALREADY);
        f.start_err[4] = 0;
        assert_int_equal(prefetch_queue(p, &d4), 0);
        WAIT_STAT(p, started, 1);
        prefetch_get_stats(p, &st);
        assert_int_equal(st.skipped, 4);
        assert_int_equal(st.failed, 1);
        prefetch_free(p);
}

static void test_queue_bound_and_stop(void **state) {
        (void)state;
        struct fake f;
        fake_init(&f);
        struct prefetcher *p;
        struct prefetch_config cfg = {.max_active = 1, .queue_max = 2, .poll_ms = 5};
        struct prefetch_ops ops = {.ud = &f, .probe = f_probe, .start = f_start};
        assert_int_equal(prefetch_new(&cfg, &ops, &p), 0);
        struct digest d0 = dg(0), d1 = dg(1), d2 = dg(2), d3 = dg(3);
        assert_int_equal(prefetch_queue(p, &d0), 0);
        WAIT_STAT(p, started, 1); /* 0 runs and never ends: the queue stays */
        assert_int_equal(prefetch_queue(p, &d1), 0);
        assert_int_equal(prefetch_queue(p, &d2), 0);
        assert_int_equal(prefetch_queue(p, &d3), -ENOSPC);
        struct prefetch_stats st;
        prefetch_get_stats(p, &st);
        assert_int_equal(st.skipped, 1);
        assert_int_equal(st.queued, 3);
        /* Stops with a prefetch running and two waiting: no hang, nothing leaks (ASan). */
        prefetch_free(p);
        prefetch_free(NULL);
        struct prefetch_config bad = {.max_active = 0, .queue_max = 2};
        assert_int_equal(prefetch_new(&bad, &ops, &p), -EINVAL);
}

static void test_fits(void **state) {
        (void)state;
        assert_true(prefetch_fits(0, 50 * MiB, 100 * MiB));
        assert_true(prefetch_fits(0, 80 * MiB, 100 * MiB)); /* alone: never waits on nothing */
        assert_true(prefetch_fits(20 * MiB, 30 * MiB, 100 * MiB)); /* exactly half */
        assert_false(prefetch_fits(20 * MiB, 30 * MiB + 1, 100 * MiB));
        assert_false(prefetch_fits(1, 50 * MiB, 100 * MiB));
}

/* Two layers that each fit half the budget but not together: the second waits for the first
 * to end (not skipped, not started beside it), and the queue waits behind it in order. */
static void test_running_layers_share_half_the_budget(void **state) {
        (void)state;
        struct fake f;
        fake_init(&f);
        f.l[0].size = 40 * MiB;
        f.l[1].size = 40 * MiB;
        f.l[2].size = 1 * MiB; /* would fit beside 0, but comes after 1 */
        struct prefetcher *p;
        struct prefetch_config cfg = {.max_active = 3, .queue_max = 8, .poll_ms = 5};
        struct prefetch_ops ops = {.ud = &f, .probe = f_probe, .start = f_start};
        assert_int_equal(prefetch_new(&cfg, &ops, &p), 0);
        for (int i = 0; i < 3; i++) {
                struct digest d = dg(i);
                assert_int_equal(prefetch_queue(p, &d), 0);
        }
        WAIT_STAT(p, started, 1);
        sleep_ms(50); /* time for a wrong second start to show */
        struct prefetch_stats st;
        prefetch_get_stats(p, &st);
        assert_int_equal(st.started, 1);
        assert_int_equal(st.skipped, 0);
        assert_int_equal(f.starts[0], 1);
        assert_int_equal(f.starts[1] + f.starts[2], 0);
        struct digest d1 = dg(1); /* the deferred one is not queued twice */
        assert_int_equal(prefetch_queue(p, &d1), -EALREADY);
        finish(&f, 0, 0);
        WAIT_STAT(p, started, 3); /* 1 (40 MiB) and then 2 (1 MiB) beside it: 41 <= 50 */
        assert_int_equal(f.starts[1], 1);
        assert_int_equal(f.starts[2], 1);
        assert_true(f.max_running <= 2);
        finish(&f, 1, 0);
        finish(&f, 2, 0);
        WAIT_STAT(p, prefetched, 3);
        prefetch_get_stats(p, &st);
        assert_int_equal(st.skipped, 0);
        assert_int_equal(st.failed, 0);
        prefetch_free(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_decide),
                cmocka_unit_test(test_bounded_and_in_order),
                cmocka_unit_test(test_skips_and_failures),
                cmocka_unit_test(test_queue_bound_and_stop),
                cmocka_unit_test(test_fits),
                cmocka_unit_test(test_running_layers_share_half_the_budget),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
