/* Thin wrapper over libsystemd's sd_notify(). See notify.h.
 *
 * Kept apart from main.c so the protocol's details (which keys, MONOTONIC_USEC for reloads,
 * a bounded STATUS) live in one place. libsystemd opens a fresh datagram socket per call,
 * which costs a few microseconds; we send a handful of messages a minute. */
#include "fs/notify.h"

#include <stdbool.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#define STATUS_MAX 512 /* systemctl status shows one line; longer is noise */

static void send_with_status(const char *head, const char *status) {
        char msg[STATUS_MAX + 64];
        if (status)
                snprintf(msg, sizeof(msg), "%s%sSTATUS=%.*s", head, head[0] ? "\n" : "", STATUS_MAX,
                         status);
        else
                snprintf(msg, sizeof(msg), "%s", head);
        (void)sd_notify(0, msg);
}

void notify_ready(const char *status) {
        send_with_status("READY=1", status);
}

void notify_reloading(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        char msg[96];
        snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ull +
                         (unsigned long long)ts.tv_nsec / 1000ull);
        (void)sd_notify(0, msg);
}

void notify_stopping(const char *status) {
        send_with_status("STOPPING=1", status);
}

void notify_status(const char *status) {
        send_with_status("", status);
}

void notify_watchdog(void) {
        (void)sd_notify(0, "WATCHDOG=1");
}

uint64_t notify_watchdog_usec(void) {
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) <= 0)
                return 0;
        return usec;
}
