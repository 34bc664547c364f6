/* Logging to stderr, one line per event, with a level prefix journald understands ("<4>").
 * Lines are written with one write(2) so concurrent threads never interleave mid-line. */
#include "util/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int log_max_level = LOG_LVL_INFO;

static const char *const level_names[] = {
        [LOG_LVL_ERR] = "error", [LOG_LVL_WARNING] = "warning", [LOG_LVL_NOTICE] = "notice",
        [LOG_LVL_INFO] = "info", [LOG_LVL_DEBUG] = "debug",
};

int log_parse_level(const char *s, int *ret) {
        for (int l = LOG_LVL_ERR; l <= LOG_LVL_DEBUG; l++)
                if (strcasecmp(s, level_names[l]) == 0) {
                        *ret = l;
                        return 0;
                }
        return -EINVAL;
}

uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec deadline_after_ms(clockid_t clock, uint64_t ms) {
        struct timespec ts;
        clock_gettime(clock, &ts);
        ts.tv_sec += (time_t)(ms / 1000);
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

void log_emit(int level, const char *fmt, ...) {
        char line[2048];
        int saved_errno = errno;
        int n = snprintf(line, sizeof(line), "<%d>level=%s ", level,
                         level >= LOG_LVL_ERR && level <= LOG_LVL_DEBUG ? level_names[level] : "?");
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        if (len > sizeof(line) - 2)
                len = sizeof(line) - 2; /* truncated: keep the newline */
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
        errno = saved_errno;
}

bool log_ratelimit_ok(struct log_ratelimit *rl, uint64_t *ret_suppressed) {
        uint64_t now = now_ms();
        bool ok = false;
        pthread_mutex_lock(&rl->lock);
        if (rl->last_ms == 0 || now - rl->last_ms >= rl->interval_ms) {
                ok = true;
                rl->last_ms = now;
                if (ret_suppressed)
                        *ret_suppressed = rl->suppressed;
                rl->suppressed = 0;
        } else {
                rl->suppressed++;
        }
        pthread_mutex_unlock(&rl->lock);
        return ok;
}
