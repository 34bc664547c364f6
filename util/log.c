/* Logging to stderr, one line per event, with a level prefix journald understands ("<4>").
 * Lines are written with one write(2) so concurrent threads never interleave mid-line.
 *
 * No value can forge a line or a key. log_emit() walks the format itself: the literal text is
 * ours, but every conversion's output (a client's URL, a registry's error text, strerror) goes
 * through log_escape(): control bytes, DEL and non-ASCII bytes become \xNN, and a value that
 * sits between quotes in the format gets its quotes and backslashes escaped; a value outside
 * quotes that holds a space, a quote, '=' or a backslash is quoted whole (logfmt). So a mirror
 * tag "t\r\n<2>level=crit" is logged as tag="t\x0d\x0a<2>level=crit" on one line. The price:
 * each conversion is formatted on its own (snprintf of one argument), a few hundred
 * nanoseconds per line, paid only when the level is on. */
#include "util/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
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

static bool byte_needs_hex(unsigned char c) {
        return c < 0x20 || c >= 0x7f;
}

size_t log_escape(const char *in, size_t len, bool in_quotes, char *out, size_t cap) {
        if (cap == 0)
                return 0;
        bool wrap = false;
        for (size_t i = 0; !in_quotes && i < len; i++)
                if (in[i] == ' ' || in[i] == '"' || in[i] == '=' || in[i] == '\\')
                        wrap = true;
        size_t o = 0;
        size_t limit = cap - 1; /* the NUL */
        if (wrap) {
                if (limit < 2) {
                        out[0] = '\0';
                        return 0;
                }
                limit--; /* the closing quote */
                out[o++] = '"';
        }
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)in[i];
                char esc[5];
                size_t n = 1;
                esc[0] = (char)c;
                if (byte_needs_hex(c)) {
                        static const char hexd[] = "0123456789abcdef";
                        esc[0] = '\\';
                        esc[1] = 'x';
                        esc[2] = hexd[c >> 4];
                        esc[3] = hexd[c & 15];
                        n = 4;
                } else if ((wrap || in_quotes) && (c == '"' || c == '\\')) {
                        esc[0] = '\\';
                        esc[1] = (char)c;
                        n = 2;
                }
                if (o + n > limit)
                        break; /* truncated, never mid-escape */
                memcpy(out + o, esc, n);
                o += n;
        }
        if (wrap)
                out[o++] = '"';
        out[o] = '\0';
        return o;
}

/* Appends ESCAPED(V) to LINE at *N (capacity CAP, NUL kept). */
static void put_value(char *line, size_t cap, size_t *n, const char *v, size_t len, bool quoted) {
        if (*n + 1 >= cap)
                return;
        *n += log_escape(v, len, quoted, line + *n, cap - *n);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
/* Formats FMT into LINE from *N on, one conversion at a time, each escaped (see the top of the
 * file). ERR is the errno %m stands for. Stops at a conversion it does not know (the format
 * attribute makes that a compile-time warning at the call site first). */
static void format_escaped(char *line, size_t cap, size_t *n, int err, const char *fmt,
                           va_list ap) {
        bool quoted = false;
        const char *p = fmt;
        while (*p && *n + 1 < cap) {
                if (*p != '%') {
                        const char *lit = p;
                        while (*p && *p != '%') {
                                if (*p == '"')
                                        quoted = !quoted;
                                p++;
                        }
                        /* Our own text: copied as is, bar control bytes. */
                        for (const char *q = lit; q < p && *n + 1 < cap; q++) {
                                if (byte_needs_hex((unsigned char)*q))
                                        put_value(line, cap, n, q, 1, true);
                                else
                                        line[(*n)++] = *q;
                        }
                        line[*n] = '\0';
                        continue;
                }
                p++;
                if (*p == '%') {
                        line[(*n)++] = '%';
                        line[*n] = '\0';
                        p++;
                        continue;
                }
                /* Rebuild the conversion with '*' replaced by its value. */
                char spec[48];
                size_t s = 0;
                spec[s++] = '%';
                while (*p && strchr("-+ #0'", *p) && s < 8)
                        spec[s++] = *p++;
                if (*p == '*') {
                        s += (size_t)snprintf(spec + s, sizeof(spec) - s, "%d", va_arg(ap, int));
                        p++;
                } else {
                        while (*p >= '0' && *p <= '9' && s < 20)
                                spec[s++] = *p++;
                }
                if (*p == '.') {
                        spec[s++] = *p++;
                        if (*p == '*') {
                                int prec = va_arg(ap, int);
                                s += (size_t)snprintf(spec + s, sizeof(spec) - s, "%d",
                                                      prec < 0 ? 0 : prec);
                                p++;
                        } else {
                                while (*p >= '0' && *p <= '9' && s < 32)
                                        spec[s++] = *p++;
                        }
                }
                int lmod = 0; /* 'H' hh, 'h', 'l', 'q' ll, 'z', 'j', 't', 'L' */
                if (p[0] == 'h' && p[1] == 'h') {
                        lmod = 'H';
                        spec[s++] = *p++;
                        spec[s++] = *p++;
                } else if (p[0] == 'l' && p[1] == 'l') {
                        lmod = 'q';
                        spec[s++] = *p++;
                        spec[s++] = *p++;
                } else if (*p && strchr("hlzjtL", *p)) {
                        lmod = *p;
                        spec[s++] = *p++;
                }
                char conv = *p;
                if (!conv || s + 2 > sizeof(spec))
                        return;
                spec[s++] = *p++;
                spec[s] = '\0';
                char val[1024];
                int m;
                switch (conv) {
                case 'd':
                case 'i':
                        if (lmod == 'l')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, long));
                        else if (lmod == 'q')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, long long));
                        else if (lmod == 'z')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, ssize_t));
                        else if (lmod == 'j')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, intmax_t));
                        else if (lmod == 't')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, ptrdiff_t));
                        else
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, int));
                        break;
                case 'u':
                case 'o':
                case 'x':
                case 'X':
                        if (lmod == 'l')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, unsigned long));
                        else if (lmod == 'q')
                                m = snprintf(val, sizeof(val), spec,
                                             va_arg(ap, unsigned long long));
                        else if (lmod == 'z')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, size_t));
                        else if (lmod == 'j')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, uintmax_t));
                        else if (lmod == 't')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, ptrdiff_t));
                        else
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, unsigned));
                        break;
                case 'c':
                        m = snprintf(val, sizeof(val), spec, va_arg(ap, int));
                        break;
                case 's': {
                        const char *str = va_arg(ap, const char *);
                        m = snprintf(val, sizeof(val), spec, str ? str : "(null)");
                        break;
                }
                case 'p':
                        m = snprintf(val, sizeof(val), spec, va_arg(ap, void *));
                        break;
                case 'f':
                case 'F':
                case 'e':
                case 'E':
                case 'g':
                case 'G':
                case 'a':
                case 'A':
                        if (lmod == 'L')
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, long double));
                        else
                                m = snprintf(val, sizeof(val), spec, va_arg(ap, double));
                        break;
                case 'm':
                        errno = err;
                        m = snprintf(val, sizeof(val), spec, 0);
                        break;
                default:
                        return; /* %n and anything unknown: stop here */
                }
                if (m < 0)
                        m = 0;
                size_t vl = (size_t)m < sizeof(val) ? (size_t)m : sizeof(val) - 1;
                put_value(line, cap, n, val, vl, quoted);
        }
}
#pragma GCC diagnostic pop

void log_emit(int level, const char *fmt, ...) {
        char line[2048];
        int saved_errno = errno;
        int h = snprintf(line, sizeof(line), "<%d>level=%s ", level,
                         level >= LOG_LVL_ERR && level <= LOG_LVL_DEBUG ? level_names[level] : "?");
        size_t len = h < 0 ? 0 : (size_t)h;
        va_list ap;
        va_start(ap, fmt);
        format_escaped(line, sizeof(line) - 1, &len, saved_errno, fmt, ap); /* room for '\n' */
        va_end(ap);
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
