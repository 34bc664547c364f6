/* Unit tests for the engine lock's owner tracking (engine/engine_int.h): eng_lock()/eng_unlock(),
 * eng_cond_wait() and the ASSERT_HELD / ASSERT_NOT_HELD checks the engine's "caller holds lock"
 * functions open with.
 *
 * The checks exist only in SANITIZE builds (P2PBLOBS_DEBUG_LOCKS); in other builds the tests
 * that expect an abort are skipped. A violation aborts the process, so those tests run the
 * offending call in a forked child and check that it died of SIGABRT. */
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/engine_int.h"

static struct eng_mutex test_lock;

static void init_lock(struct eng_mutex *l) {
        memset(l, 0, sizeof(*l));
        assert_int_equal(pthread_mutex_init(&l->m, NULL), 0);
}

/* Runs FN in a child; returns the signal that ended it (0 if it exited). */
static int run_in_child(void (*fn)(void)) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                fn(); /* prints the violation to stderr, then aborts */
                _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void test_held_and_not_held(void **state) {
        (void)state;
        init_lock(&test_lock);
        ASSERT_NOT_HELD(&test_lock);
        eng_lock(&test_lock);
        ASSERT_HELD(&test_lock);
        eng_unlock(&test_lock);
        ASSERT_NOT_HELD(&test_lock);
        pthread_mutex_destroy(&test_lock.m);
}

static void assert_held_unlocked(void) {
        init_lock(&test_lock);
        ASSERT_HELD(&test_lock);
}

static void test_held_without_lock_aborts(void **state) {
        (void)state;
#ifndef P2PBLOBS_DEBUG_LOCKS
        skip();
#endif
        assert_int_equal(run_in_child(assert_held_unlocked), SIGABRT);
}

static void not_held_while_locked(void) {
        init_lock(&test_lock);
        eng_lock(&test_lock);
        ASSERT_NOT_HELD(&test_lock);
}

static void test_not_held_with_lock_aborts(void **state) {
        (void)state;
#ifndef P2PBLOBS_DEBUG_LOCKS
        skip();
#endif
        assert_int_equal(run_in_child(not_held_while_locked), SIGABRT);
}

static void unlock_unheld(void) {
        init_lock(&test_lock);
        eng_unlock(&test_lock);
}

static void test_unlock_without_lock_aborts(void **state) {
        (void)state;
#ifndef P2PBLOBS_DEBUG_LOCKS
        skip();
#endif
        assert_int_equal(run_in_child(unlock_unheld), SIGABRT);
}

/* Another thread holding the lock is not this thread holding it. */
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool taken;

static void *take_and_keep(void *arg) {
        (void)arg;
        eng_lock(&test_lock);
        pthread_mutex_lock(&gate);
        taken = true;
        pthread_cond_signal(&gate_cond);
        pthread_mutex_unlock(&gate);
        for (;;)
                pause();
        return NULL;
}

static void held_by_other_thread(void) {
        init_lock(&test_lock);
        pthread_t t;
        if (pthread_create(&t, NULL, take_and_keep, NULL) != 0)
                _exit(2);
        pthread_mutex_lock(&gate);
        while (!taken)
                pthread_cond_wait(&gate_cond, &gate);
        pthread_mutex_unlock(&gate);
        ASSERT_HELD(&test_lock);
}

static void test_held_by_other_thread_aborts(void **state) {
        (void)state;
#ifndef P2PBLOBS_DEBUG_LOCKS
        skip();
#endif
        assert_int_equal(run_in_child(held_by_other_thread), SIGABRT);
}

/* eng_cond_wait() gives the lock (and its ownership) up while waiting and takes both back. */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static bool waiting, woken;

static void *wait_for_wake(void *arg) {
        (void)arg;
        eng_lock(&test_lock);
        waiting = true;
        while (!woken)
                eng_cond_wait(&wake, &test_lock);
        ASSERT_HELD(&test_lock);
        eng_unlock(&test_lock);
        return NULL;
}

static void test_cond_wait_hands_over(void **state) {
        (void)state;
        init_lock(&test_lock);
        waiting = woken = false;
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, wait_for_wake, NULL), 0);
        for (;;) {
                eng_lock(&test_lock); /* taken while the other thread waits on it */
                ASSERT_HELD(&test_lock);
                bool w = waiting;
                if (w) {
                        woken = true;
                        pthread_cond_signal(&wake);
                }
                eng_unlock(&test_lock);
                if (w)
                        break;
                sched_yield();
        }
        assert_int_equal(pthread_join(t, NULL), 0);
        ASSERT_NOT_HELD(&test_lock);
        pthread_mutex_destroy(&test_lock.m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_held_and_not_held),
                cmocka_unit_test(test_held_without_lock_aborts),
                cmocka_unit_test(test_not_held_with_lock_aborts),
                cmocka_unit_test(test_unlock_without_lock_aborts),
                cmocka_unit_test(test_held_by_other_thread_aborts),
                cmocka_unit_test(test_cond_wait_hands_over),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
