/* Service-manager notifications: systemd's sd_notify protocol, which anything listening on
 * $NOTIFY_SOCKET understands (systemd for Type=notify units, the integration tests).
 *
 * Every call is a cheap no-op when $NOTIFY_SOCKET is unset, never blocks (the socket is a
 * datagram socket; a full queue drops the message) and is safe from any thread. Failures are
 * ignored: a missed STATUS line must never stop the daemon. */
#pragma once
#include <stdint.h>

/* READY=1 with a STATUS line: the mount answers and blobs can be read. */
void notify_ready(const char *status);

/* RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 wants); follow with notify_ready(). */
void notify_reloading(void);

/* STOPPING=1 with a STATUS line: shutdown has begun. */
void notify_stopping(const char *status);

/* A STATUS line only (shown by systemctl status). */
void notify_status(const char *status);

/* WATCHDOG=1: the service is healthy. Send only after checking that it is. */
void notify_watchdog(void);

/* The watchdog interval systemd asked of this process in microseconds, 0 when it asked for
 * none. */
uint64_t notify_watchdog_usec(void);
