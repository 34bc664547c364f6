/* The HTTP server wrapper. See http_server.h for what it adds to libmicrohttpd and why.
 *
 * Every connection has a record (struct conn) from MHD's "started" notification to its
 * "closed" one, on a list under `lock`. The record says whose connection it is (uid or
 * address: the key its cap is counted under) and which deadline applies now:
 *
 *   WAIT_HEADERS  since the connection opened, or the previous answer finished (keep-alive):
 *                 the request line and headers must be in within header_timeout_ms
 *   WAIT_BODY     the handler saw the headers: the body must be in within body_timeout_ms
 *   ANSWERING     the handler has the request: only MHD's activity timeout applies
 *
 * The reaper wakes every REAP_TICK_MS and shuts down (shutdown(2), not close: the descriptor
 * stays MHD's) each socket past its deadline; MHD's thread then sees the end of the stream
 * and closes the connection itself. MHD calls "closed" before it closes the socket, and the
 * reaper holds `lock` while it shuts sockets down, so a descriptor is never touched after
 * MHD let it go.
 *
 * Admission happens in "started": a connection over a cap is shut down at once (its client
 * sees the connection closed, and containerd or a peer moves on) and counted as refused. MHD's
 * own limit is set above ours (REFUSE_SLACK), so MHD never refuses first (it would then close
 * root's connection as readily as anyone's), and refusals cost a thread for a moment only. */
#include "net/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net/peercred.h"
#include "util/log.h"
#include "util/parse.h"

#define REAP_TICK_MS 100
#define REFUSE_SLACK 64 /* connections MHD may hold beyond ours while we close refused ones */
#define KEY_MAX 64

enum phase { WAIT_HEADERS, WAIT_BODY, ANSWERING };

struct conn {
        struct conn *prev, *next;
        int fd;
        uid_t uid; /* HTTP_CLIENT_UNKNOWN: not a local client */
        bool root;
        bool admitted; /* counted in open/open_others and its client's slot */
        bool refused;
        bool reaped;
        enum phase phase;
        uint64_t since_ms; /* start of the current deadline */
        char key[KEY_MAX]; /* "uid:N" or "addr:A" */
};

struct client_slot {
        char key[KEY_MAX]; /* "" when free */
        unsigned n;
};

struct http_server {
        struct http_server_config cfg;
        char name[16];
        struct MHD_Daemon *mhd;
        pthread_t reaper;
        bool reaper_started;

        pthread_mutex_t lock; /* protects everything below */
        pthread_cond_t cond;  /* CLOCK_MONOTONIC: wakes the reaper to stop */
        bool stopping;
        struct conn *head;
        unsigned open;               /* admitted connections */
        unsigned open_others;        /* of those, not local root */
        struct client_slot *clients; /* cfg.max_connections slots */
        uint64_t refused, timed_out;
};

/* ---- addresses ------------------------------------------------------------------------------ */

int http_listen_parse(const char *listen, struct sockaddr_storage *ret) {
        char host[256];
        uint16_t port;
        if (!listen || parse_hostport(listen, host, sizeof(host), &port) < 0)
                return -EINVAL;
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        if (!host[0]) {
                sin.sin_addr.s_addr = htonl(INADDR_ANY);
                memcpy(&ss, &sin, sizeof(sin));
        } else if (inet_pton(AF_INET, host, &sin.sin_addr) == 1) {
                memcpy(&ss, &sin, sizeof(sin));
        } else if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1) {
                memcpy(&ss, &sin6, sizeof(sin6));
        } else {
                return -EINVAL; /* an address, not a name */
        }
        *ret = ss;
        return 0;
}

static void format_addr(const struct sockaddr *sa, char *out, size_t len) {
        out[0] = '\0';
        if (!sa)
                return;
        /* Copied out: MHD's struct sockaddr * promises only its own (2-byte) alignment. */
        if (sa->sa_family == AF_INET) {
                struct sockaddr_in in;
                memcpy(&in, sa, sizeof(in));
                inet_ntop(AF_INET, &in.sin_addr, out, (socklen_t)len);
        } else if (sa->sa_family == AF_INET6) {
                struct sockaddr_in6 in6;
                memcpy(&in6, sa, sizeof(in6));
                inet_ntop(AF_INET6, &in6.sin6_addr, out, (socklen_t)len);
        }
}

void http_client_addr(struct MHD_Connection *conn, char *out, size_t len) {
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        format_addr(ci ? ci->client_addr : NULL, out, len);
}

static struct conn *conn_of(struct MHD_Connection *conn) {
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return ci ? ci->socket_context : NULL;
}

uid_t http_client_uid(struct MHD_Connection *conn) {
        struct conn *c = conn_of(conn);
        return c ? c->uid : HTTP_CLIENT_UNKNOWN;
}

/* ---- replies -------------------------------------------------------------------------------- */

enum MHD_Result http_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r) {
        if (!r)
                return MHD_NO;
        enum MHD_Result ret = MHD_queue_response(conn, status, r);
        MHD_destroy_response(r);
        return ret;
}

enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *type,
                           void *body, size_t len, enum MHD_ResponseMemoryMode mode) {
        struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
        if (!r) {
                if (mode == MHD_RESPMEM_MUST_FREE)
                        free(body);
                return MHD_NO;
        }
        if (type)
                MHD_add_response_header(r, "Content-Type", type);
        return http_queue(conn, status, r);
}

enum MHD_Result http_text(struct MHD_Connection *conn, unsigned status, const char *msg) {
        return http_reply(conn, status, "text/plain; charset=utf-8", (void *)msg, strlen(msg),
                          MHD_RESPMEM_PERSISTENT);
}

/* ---- admission ------------------------------------------------------------------------------ */

static struct client_slot *client_slot(struct http_server *s, const char *key, bool create) {
        struct client_slot *free_slot = NULL;
        for (unsigned i = 0; i < s->cfg.max_connections; i++) {
                if (strcmp(s->clients[i].key, key) == 0 && s->clients[i].n > 0)
                        return &s->clients[i];
                if (!free_slot && s->clients[i].n == 0)
                        free_slot = &s->clients[i];
        }
        if (create && free_slot)
                snprintf(free_slot->key, sizeof(free_slot->key), "%s", key);
        return create ? free_slot : NULL;
}

/* Decides whether C may stay. Lock held. */
static bool admit(struct http_server *s, struct conn *c) {
        if (s->open >= s->cfg.max_connections)
                return false;
        struct client_slot *slot = NULL;
        if (!c->root) {
                if (s->open_others >= s->cfg.max_connections - s->cfg.reserve)
                        return false;
                if (s->cfg.per_client) {
                        slot = client_slot(s, c->key, true);
                        if (!slot || slot->n >= s->cfg.per_client)
                                return false;
                        slot->n++;
                }
                s->open_others++;
        }
        s->open++;
        c->admitted = true;
        return true;
}

static void release(struct http_server *s, struct conn *c) {
        if (!c->admitted)
                return;
        c->admitted = false;
        s->open--;
        if (c->root)
                return;
        s->open_others--;
        if (s->cfg.per_client) {
                struct client_slot *slot = client_slot(s, c->key, false);
                if (slot && slot->n > 0)
                        slot->n--;
        }
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
        struct http_server *s = cls;
        if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
                struct conn *c = *socket_context;
                if (!c)
                        return;
                pthread_mutex_lock(&s->lock);
                release(s, c);
                if (c->prev)
                        c->prev->next = c->next;
                else
                        s->head = c->next;
                if (c->next)
                        c->next->prev = c->prev;
                pthread_mutex_unlock(&s->lock);
                free(c);
                *socket_context = NULL;
                return;
        }
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        int fd = ci ? ci->connect_fd : -1;
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
                if (fd >= 0)
                        shutdown(fd, SHUT_RDWR); /* untracked is unbounded: refuse */
                return;
        }
        c->fd = fd;
        c->uid = HTTP_CLIENT_UNKNOWN;
        uid_t uid;
        if (fd >= 0 && peercred_uid(fd, &uid) == 0) {
                c->uid = uid;
                c->root = uid == 0;
                snprintf(c->key, sizeof(c->key), "uid:%u", (unsigned)uid);
        } else {
                char addr[INET6_ADDRSTRLEN];
                http_client_addr(mc, addr, sizeof(addr));
                snprintf(c->key, sizeof(c->key), "addr:%s", addr);
        }
        c->phase = WAIT_HEADERS;
        c->since_ms = now_ms();
        pthread_mutex_lock(&s->lock);
        c->next = s->head;
        if (s->head)
                s->head->prev = c;
        s->head = c;
        bool ok = admit(s, c);
        if (!ok) {
                c->refused = true;
                s->refused++;
                if (fd >= 0)
                        shutdown(fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&s->lock);
        *socket_context = c;
        if (!ok) {
                static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                uint64_t suppressed;
                if (log_ratelimit_ok(&rl, &suppressed))
                        log_notice("http refused a connection over its client's cap server=%s "
                                   "client=%s suppressed=%" PRIu64,
                                   s->name, c->key, suppressed);
        }
}

/* ---- request phases ------------------------------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
        struct http_server *s = cls;
        struct conn *c = conn_of(mc);
        if (c) {
                pthread_mutex_lock(&s->lock);
                bool dead = c->refused || c->reaped;
                if (c->phase == WAIT_HEADERS) {
                        c->phase = WAIT_BODY;
                        c->since_ms = now_ms();
                } else if (*upload_data_size == 0) {
                        c->phase = ANSWERING;
                }
                pthread_mutex_unlock(&s->lock);
                if (dead)
                        return MHD_NO;
        }
        return s->cfg.handler(s->cfg.handler_cls, mc, url, method, version, upload_data,
                              upload_data_size, req_cls);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **req_cls,
                         enum MHD_RequestTerminationCode code) {
        struct http_server *s = cls;
        struct conn *c = conn_of(mc);
        if (c) {
                pthread_mutex_lock(&s->lock);
                c->phase = WAIT_HEADERS; /* the next request on this connection */
                c->since_ms = now_ms();
                pthread_mutex_unlock(&s->lock);
        }
        if (s->cfg.completed)
                s->cfg.completed(s->cfg.completed_cls, mc, req_cls, code);
}

/* ---- the reaper ----------------------------------------------------------------------------- */

static void *reaper_main(void *arg) {
        struct http_server *s = arg;
        pthread_mutex_lock(&s->lock);
        while (!s->stopping) {
                struct timespec ts = deadline_after_ms(CLOCK_MONOTONIC, REAP_TICK_MS);
                pthread_cond_timedwait(&s->cond, &s->lock, &ts);
                if (s->stopping)
                        break;
                uint64_t now = now_ms(), n = 0;
                for (struct conn *c = s->head; c; c = c->next) {
                        if (c->reaped || c->refused || c->fd < 0 || c->phase == ANSWERING)
                                continue;
                        uint64_t limit = c->phase == WAIT_HEADERS ? s->cfg.header_timeout_ms
                                                                  : s->cfg.body_timeout_ms;
                        if (now - c->since_ms < limit)
                                continue;
                        shutdown(c->fd, SHUT_RDWR);
                        c->reaped = true;
                        n++;
                }
                s->timed_out += n;
                if (n) {
                        static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000);
                        uint64_t suppressed;
                        pthread_mutex_unlock(&s->lock);
                        if (log_ratelimit_ok(&rl, &suppressed))
                                log_notice("http closed connections whose request did not "
                                           "arrive in time server=%s count=%" PRIu64
                                           " header_timeout_ms=%" PRIu64 " suppressed=%" PRIu64,
                                           s->name, n, s->cfg.header_timeout_ms, suppressed);
                        pthread_mutex_lock(&s->lock);
                }
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
/* MHD's own messages ("connection limit reached", a client's malformed request) are the
 * client's doing, not ours: debug level, escaped like any value. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
        struct http_server *s = cls;
        if (LOG_LVL_DEBUG > log_max_level)
                return;
        char msg[512];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
                msg[--n] = '\0';
        log_debug("http library message server=%s msg=\"%s\"", s->name, msg);
}
#pragma GCC diagnostic pop

static void server_free(struct http_server *s) {
        if (s->reaper_started) {
                pthread_mutex_lock(&s->lock);
                s->stopping = true;
                pthread_cond_broadcast(&s->cond);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->reaper, NULL);
        }
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        free(s->clients);
        free(s);
}

int http_server_start(const struct http_server_config *cfg, struct http_server **ret) {
        if (!cfg->handler || cfg->max_connections == 0 || cfg->reserve >= cfg->max_connections ||
            (!cfg->listen && cfg->listen_fd < 0))
                return -EINVAL;
        struct sockaddr_storage ss;
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                         MHD_USE_POLL | MHD_USE_ERROR_LOG;
        if (cfg->listen_fd < 0) {
                if (http_listen_parse(cfg->listen, &ss) < 0)
                        return -EINVAL;
                if (ss.ss_family == AF_INET6)
                        flags |= MHD_USE_IPv6;
        }
        struct http_server *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->cfg = *cfg;
        s->cfg.listen = NULL; /* not kept: the caller's string may go */
        snprintf(s->name, sizeof(s->name), "%s", cfg->name ? cfg->name : "http");
        if (!s->cfg.header_timeout_ms)
                s->cfg.header_timeout_ms = HTTP_HEADER_TIMEOUT_MS;
        if (!s->cfg.body_timeout_ms)
                s->cfg.body_timeout_ms = HTTP_BODY_TIMEOUT_MS;
        if (!s->cfg.idle_timeout_s)
                s->cfg.idle_timeout_s = HTTP_IDLE_TIMEOUT_S;
        pthread_mutex_init(&s->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&s->cond, &ca);
        pthread_condattr_destroy(&ca);
        s->clients = calloc(cfg->max_connections, sizeof(*s->clients));
        if (!s->clients) {
                server_free(s);
                return -ENOMEM;
        }
        int r = -pthread_create(&s->reaper, NULL, reaper_main, s);
        if (r < 0) {
                server_free(s);
                return r;
        }
        s->reaper_started = true;
        unsigned limit = cfg->max_connections + REFUSE_SLACK;
        unsigned timeout = s->cfg.idle_timeout_s;
        size_t stack = cfg->thread_stack;
        /* Only a server that asked has the URI hook: with one, MHD reports the completion of
         * requests that never reached the handler too. An array whose first item is END is
         * empty. */
        struct MHD_OptionItem uri_hook[] = {
                {cfg->uri_hook ? MHD_OPTION_URI_LOG_CALLBACK : MHD_OPTION_END,
                 (intptr_t)cfg->uri_hook, cfg->uri_hook_cls},
                {MHD_OPTION_END, 0, NULL},
        };
        /* The logger first: MHD reports options it parses before it on its own stderr. */
#define COMMON_OPTIONS                                                                             \
        MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_TIMEOUT, timeout,                \
                MHD_OPTION_THREAD_STACK_SIZE, stack, MHD_OPTION_NOTIFY_CONNECTION, on_connection,  \
                s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_ARRAY, uri_hook,       \
                MHD_OPTION_END
        errno = 0;
        if (cfg->listen_fd >= 0)
                s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                                          MHD_OPTION_LISTEN_SOCKET, cfg->listen_fd, COMMON_OPTIONS);
        else
                s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                          MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                                          MHD_OPTION_SOCK_ADDR, &ss, COMMON_OPTIONS);
#undef COMMON_OPTIONS
        if (!s->mhd) {
                r = errno ? -errno : -EADDRINUSE;
                server_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

void http_server_stop(struct http_server *s) {
        if (!s)
                return;
        MHD_stop_daemon(s->mhd);
        server_free(s);
}

void http_server_get_stats(struct http_server *s, struct http_server_stats *ret) {
        pthread_mutex_lock(&s->lock);
        *ret = (struct http_server_stats){
                .refused = s->refused, .timed_out = s->timed_out, .open = s->open};
        pthread_mutex_unlock(&s->lock);
}
