/* Logging: one line per event, key=value, to stderr (journald picks it up).
 *
 *   log_warning("origin fetch failed blob=%s off=%" PRIu64 " err=%s", hex, off, reason);
 *
 * Arguments are not evaluated when the level is off. Repeated events go through a
 * struct log_ratelimit so a failing origin logs once per interval with a count, not a storm. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <time.h>

enum log_level {
        LOG_LVL_ERR = 3,
        LOG_LVL_WARNING = 4,
        LOG_LVL_NOTICE = 5,
        LOG_LVL_INFO = 6,
        LOG_LVL_DEBUG = 7
};

extern int log_max_level;

/* "error", "warning", "notice", "info", "debug" -> level. 0 or -EINVAL. */
int log_parse_level(const char *s, int *ret);

/* Writes one line; every conversion's output is escaped (log_escape), so no value can start a
 * line or add a key. */
void log_emit(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Escapes LEN bytes of IN for a log line into OUT (CAP bytes, NUL-terminated; truncated at an
 * escape boundary): bytes below 0x20, DEL and above become \xNN. IN_QUOTES: the value sits
 * between quotes of the format, so '"' and '\' get a backslash. Otherwise a value holding a
 * space, '"', '=' or '\' is wrapped in quotes (and escaped as inside them). Returns the bytes
 * written, without the NUL. Pure; for the fuzz target and log_emit. */
size_t log_escape(const char *in, size_t len, bool in_quotes, char *out, size_t cap);

#define log_at(lvl, ...)                                                                           \
        do {                                                                                       \
                if ((lvl) <= log_max_level)                                                        \
                        log_emit((lvl), __VA_ARGS__);                                              \
        } while (0)
#define log_err(...) log_at(LOG_LVL_ERR, __VA_ARGS__)
#define log_warning(...) log_at(LOG_LVL_WARNING, __VA_ARGS__)
#define log_notice(...) log_at(LOG_LVL_NOTICE, __VA_ARGS__)
#define log_info(...) log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)

/* Allows one event per INTERVAL_MS; log_ratelimit_ok() returns true when this one may be
 * logged and reports in *RET_SUPPRESSED how many were swallowed since the last one.
 * Thread-safe. */
struct log_ratelimit {
        pthread_mutex_t lock;
        uint64_t interval_ms;
        uint64_t last_ms;
        uint64_t suppressed;
};
#define LOG_RATELIMIT_INIT(ms)                                                                     \
        { PTHREAD_MUTEX_INITIALIZER, (ms), 0, 0 }
bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t *ret_suppressed);

/* Monotonic milliseconds (CLOCK_MONOTONIC). */
uint64_t now_ms(void);

/* The time on CLOCK that is MS milliseconds from now: the absolute deadline
 * pthread_cond_timedwait() wants (CLOCK must be the condition's clock, CLOCK_REALTIME unless it
 * was set with pthread_condattr_setclock). */
struct timespec deadline_after_ms(clockid_t clock, uint64_t ms);
