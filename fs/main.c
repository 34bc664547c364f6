/* p2pblobsd: wires the modules together and owns the process.
 *
 * The order things start and stop in is written once, atop the lifecycle code at the end of
 * this file (daemon_start, serve, daemon_stop). READY=1 goes to the service manager only once
 * a lookup through the mount has been answered, i.e. once the FUSE loop is really serving.
 *
 * Threads of our own: the signal thread (sigwait; no work happens in signal context) and the
 * status thread (readiness, STATUS= lines, watchdog pings after checking that the mount still
 * answers).
 *
 * SIGHUP re-reads the configuration file and flags and applies what can change live (the
 * option table in config.c says which): the cache budget (the store shrinks to it at once),
 * the log level and the shutdown timeout. Every other changed key is logged as needing a
 * restart. An invalid file, or a file that existed at start and is gone, keeps the running
 * configuration. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cache/store.h"
#include "fs/api.h"
#include "fs/config.h"
#include "engine/engine.h"
#include "fs/fuse.h"
#include "fs/layers.h"
#include "layertree/layertree.h"
#include "fs/notify.h"
#include "fs/peers.h"
#include "fs/resolver.h"
#include "fs/snap_lazy.h"
#include "fs/sources.h"
#include "fs/statedir.h"
#include "index/index.h"
#include "control/control.h"
#include "net/http_client.h"
#include "fs/mirror.h"
#include "snapshot/snapshotter.h"
#include "peer/directory.h"
#include "peer/members.h"
#include "registry/origin.h"
#include "peer/source.h"
#include "util/log.h"
#include "util/parse.h"

#define READY_TIMEOUT_MS 60000   /* the mount must answer this soon after mounting */
#define READY_PROBE_MS 20        /* how often we look before it does */
#define STATUS_INTERVAL_MS 10000 /* STATUS= lines (and watchdog pings, if more often) */
#define DRAIN_POLL_MS 50

/* The process's lifecycle state. The lock protects the flags marked (L); the rest is written
 * before the threads that read it start, or by main's thread after joining them. */
struct service {
        struct daemon *d;
        int argc;
        char **argv;
        bool curl_ready;     /* curl_global_init() succeeded */
        struct statedir *sd; /* the state dir's lock, held until the index is closed */
        pthread_mutex_t lock;
        pthread_cond_t cond; /* wakes the status thread early when stopping */
        bool stopping;       /* (L) shutdown has begun */
        bool loop_done;      /* (L) the FUSE loop has returned */
        bool ready;          /* (L) the mount answered; READY=1 sent */
        bool failed;         /* (L) exit non-zero */
        bool status_started;
        pthread_t status_thread;
};

static bool svc_get(struct service *s, const bool *flag) {
        pthread_mutex_lock(&s->lock);
        bool v = *flag;
        pthread_mutex_unlock(&s->lock);
        return v;
}

/* ---- detaching (no --foreground) ----------------------------------------------------------- */

/* Write end of the pipe the launching parent waits on; -1 when running in the foreground. */
static int detach_fd = -1;

/* Forks before any thread exists (a fork keeps only the calling thread). The parent waits
 * until the child is serving (a byte on the pipe: exit 0) or gives up (EOF: exit 1, the
 * child's own log says why), so `p2pblobsd && use-the-mount` works. The child starts a new
 * session and reads nothing from the terminal; its log stays on the inherited stderr. */
static void detach(void) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) {
                log_err("cannot detach: pipe failed err=%m");
                exit(1);
        }
        pid_t pid = fork();
        if (pid < 0) {
                log_err("cannot detach: fork failed err=%m");
                exit(1);
        }
        if (pid > 0) {
                close(p[1]);
                char c;
                ssize_t n;
                while ((n = read(p[0], &c, 1)) < 0 && errno == EINTR)
                        ;
                _exit(n == 1 ? 0 : 1);
        }
        close(p[0]);
        detach_fd = p[1];
        setsid();
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null >= 0) {
                dup2(null, STDIN_FILENO);
                close(null);
        }
}

/* Serving: let the launching parent exit 0. */
static void detach_done(void) {
        if (detach_fd < 0)
                return;
        char c = 1;
        ssize_t w = write(detach_fd, &c, 1);
        (void)w;
        close(detach_fd);
        detach_fd = -1;
}

/* ---- status: readiness, STATUS= lines, watchdog ------------------------------------------- */

static void format_status(struct daemon *d, const char *state, char *buf, size_t len) {
        struct engine_stats es;
        struct origin_stats os;
        engine_get_stats(d->engine, &es);
        origin_get_stats(d->origin, &os);
        char used[32], budget[32], origin[32];
        format_size(es.used_bytes, used, sizeof(used));
        format_size(es.budget_bytes, budget, sizeof(budget));
        format_size(os.bytes, origin, sizeof(origin));
        uint64_t lookups = es.hits + es.misses;
        char peers[96] = "peers: none configured";
        if (d->members) {
                uint64_t up = 0, known = 0;
                struct source_stats ss = {0};
                members_counts(d->members, &up, &known);
                if (d->source)
                        source_get_stats(d->source, &ss);
                char from[32];
                format_size(ss.peer_bytes, from, sizeof(from));
                snprintf(peers, sizeof(peers), "peers %" PRIu64 "/%" PRIu64 " up, %s from peers",
                         up, known, from);
        }
        snprintf(buf, len,
                 "%s: cache %s of %s, hit ratio %.1f%%, %" PRIu64 " blobs, origin %s in %" PRIu64
                 " requests (%" PRIu64 " failed), %" PRIu64 " chunks in flight, %s",
                 state, used, budget, lookups ? 100.0 * (double)es.hits / (double)lookups : 0.0,
                 es.blobs, origin, os.requests, os.errors, es.inflight_chunks, peers);
}

/* True when a lookup + opendir of <mountpoint>/blobs is answered by our FUSE loop. Blocks
 * while the loop has not picked the request up yet, which is what readiness means. */
static bool mount_answers(const char *mountpoint) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/blobs", mountpoint);
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return false;
        close(fd);
        return true;
}

/* Waits up to MS or until stopping; returns true when stopping. */
static bool svc_sleep(struct service *s, uint64_t ms) {
        struct timespec ts = deadline_after_ms(CLOCK_REALTIME, ms);
        pthread_mutex_lock(&s->lock);
        while (!s->stopping && pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
                ;
        bool stopping = s->stopping;
        pthread_mutex_unlock(&s->lock);
        return stopping;
}

static void *status_main(void *arg) {
        struct service *s = arg;
        struct daemon *d = s->d;
        char status[512];

        uint64_t deadline = now_ms() + READY_TIMEOUT_MS;
        while (!mount_answers(d->cfg.mountpoint)) {
                if (now_ms() >= deadline) {
                        log_err("mount does not answer path=%s waited_ms=%d hint=\"is another "
                                "process mounted over it?\"",
                                d->cfg.mountpoint, READY_TIMEOUT_MS);
                        pthread_mutex_lock(&s->lock);
                        s->failed = true;
                        pthread_mutex_unlock(&s->lock);
                        kill(getpid(), SIGTERM);
                        return NULL;
                }
                if (svc_sleep(s, READY_PROBE_MS))
                        return NULL;
        }
        pthread_mutex_lock(&s->lock);
        bool stopping = s->stopping;
        if (!stopping)
                s->ready = true;
        atomic_store(&d->serving, !stopping); /* /readyz */
        pthread_mutex_unlock(&s->lock);
        if (stopping)
                return NULL;
        format_status(d, "serving", status, sizeof(status));
        notify_ready(status);
        detach_done();
        log_notice("ready mountpoint=%s", d->cfg.mountpoint);

        /* systemd wants a ping at least every WATCHDOG_USEC; ping twice as often. */
        uint64_t wd_ms = notify_watchdog_usec() / 1000;
        uint64_t interval = STATUS_INTERVAL_MS;
        if (wd_ms && wd_ms / 2 < interval)
                interval = wd_ms / 2 ? wd_ms / 2 : 1;
        static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000);
        while (!svc_sleep(s, interval)) {
                /* A wedged loop leaves this open() hanging: no more pings, and systemd's
                 * watchdog restarts us, which is what we want it to do. */
                if (!mount_answers(d->cfg.mountpoint)) {
                        uint64_t suppressed;
                        if (log_ratelimit_ok(&rl, &suppressed))
                                log_warning("mount does not answer path=%s suppressed=%" PRIu64
                                            " hint=\"was it unmounted under us?\"",
                                            d->cfg.mountpoint, suppressed);
                        continue;
                }
                if (wd_ms)
                        notify_watchdog();
                format_status(d, "serving", status, sizeof(status));
                notify_status(status);
        }
        return NULL;
}

/* ---- SIGHUP: reload ------------------------------------------------------------------------ */

/* Restart-only keys that changed: one line each. Live keys are applied by reload() itself. */
static void log_restart_needed(void *ud, const char *key, bool live) {
        (void)ud;
        if (!live)
                log_notice("setting changed, restart needed key=%s", key);
}

static void reload(struct service *s) {
        struct daemon *d = s->d;
        struct daemon_config nc;
        notify_reloading();
        log_notice("reloading configuration path=%s", d->cfg.config_path);
        if (config_load(&nc, s->argc, s->argv) < 0) {
                log_warning("reload failed: the configuration is invalid (see the line above); "
                            "keeping the running one path=%s",
                            d->cfg.config_path);
                goto out_keep;
        }
        if (d->cfg.config_found && !nc.config_found) {
                /* Read as missing, the file would reset every key to its default (a 10 GiB
                 * budget): more likely a mistake than a wish. */
                log_warning("reload failed: the configuration file is gone; keeping the running "
                            "configuration path=%s hint=\"restore the file, or restart to run "
                            "without it\"",
                            d->cfg.config_path);
                goto out_keep;
        }
        /* The option table says which keys are live; these are they. */
        if (nc.cache_budget != d->cfg.cache_budget) {
                log_notice("cache budget changed old=%" PRIu64 " new=%" PRIu64, d->cfg.cache_budget,
                           nc.cache_budget);
                engine_set_budget(d->engine, nc.cache_budget);
                d->cfg.cache_budget = nc.cache_budget;
        }
        if (nc.log_level != d->cfg.log_level) {
                log_notice("log level changed old=%d new=%d", d->cfg.log_level, nc.log_level);
                log_max_level = nc.log_level;
                d->cfg.log_level = nc.log_level;
        }
        if (nc.shutdown_timeout_ms != d->cfg.shutdown_timeout_ms) {
                /* Read by drain(), on this same thread. */
                log_notice("shutdown timeout changed old_ms=%" PRIu64 " new_ms=%" PRIu64,
                           d->cfg.shutdown_timeout_ms, nc.shutdown_timeout_ms);
                d->cfg.shutdown_timeout_ms = nc.shutdown_timeout_ms;
        }
        /* Everything else is wired into threads, sockets and the mount at start-up: the running
         * value stays, and each changed key is said to need a restart (on every reload until
         * then). */
        config_diff(&d->cfg, &nc, log_restart_needed, NULL);
        config_free(&nc);
        char status[512];
        format_status(d, "serving", status, sizeof(status));
        notify_ready(status);
        return;
out_keep:
        config_free(&nc);
        notify_ready("serving: reload failed, running configuration kept");
}

/* ---- SIGTERM: graceful stop ---------------------------------------------------------------- */

/* fs_shutdown()'s drain: waits until no chunk fetch is in flight (true), or the deadline
 * (false). UD is the daemon. */
static bool drain(void *ud) {
        struct daemon *d = ud;
        uint64_t deadline = now_ms() + d->cfg.shutdown_timeout_ms;
        for (;;) {
                struct engine_stats es;
                engine_get_stats(d->engine, &es);
                if (es.inflight_chunks == 0)
                        return true;
                if (now_ms() >= deadline) {
                        log_warning("shutdown deadline reached, failing in-flight reads "
                                    "chunks=%" PRIu64 " waited_ms=%" PRIu64,
                                    es.inflight_chunks, d->cfg.shutdown_timeout_ms);
                        return false;
                }
                char status[128];
                snprintf(status, sizeof(status),
                         "stopping: waiting for %" PRIu64 " chunk fetches to finish",
                         es.inflight_chunks);
                notify_status(status);
                struct timespec ts = {0, DRAIN_POLL_MS * 1000000L};
                nanosleep(&ts, NULL);
        }
}

/* Stop, steps 1 and 2 (the lifecycle comment below), on the signal thread. */
static void shutdown_daemon(struct service *s, int sig) {
        struct daemon *d = s->d;
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        atomic_store(&s->d->serving, false); /* /readyz: 503 from now on */
        bool loop_done = s->loop_done, ready = s->ready;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        if (sig)
                log_notice("signal received, shutting down signal=%s", strsignal(sig));
        notify_stopping("stopping: draining in-flight reads");
        /* The status thread's probes are answered while the loop runs; join it before the
         * loop stops so none is left waiting on a dead connection. */
        if (s->status_started) {
                pthread_join(s->status_thread, NULL);
                s->status_started = false;
        }
        control_stop(d->control); /* no new blobs, no blobctl work */
        d->control = NULL;
        if (!loop_done) /* not serving yet: nothing to drain */
                fs_shutdown(d->se, d->cfg.mountpoint, ready ? drain : NULL, d);
}

static void *signal_main(void *arg) {
        struct service *s = arg;
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        for (;;) {
                int sig = 0;
                if (sigwait(&set, &sig) != 0)
                        continue;
                if (sig == SIGHUP) {
                        if (!svc_get(s, &s->loop_done))
                                reload(s);
                        continue;
                }
                shutdown_daemon(s, svc_get(s, &s->loop_done) ? 0 : sig);
                return NULL;
        }
}

/* ---- the lifecycle ------------------------------------------------------------------------ */

/* The daemon's lifecycle, in one place: this comment is where its order is written.
 *
 * Start (daemon_start), in order; whatever fails stops the start, and daemon_stop() frees
 * what had started:
 *    curl -> the HTTP client (net/http_client.h: one curl multi loop for the origin, the
 *    peer source, membership probes and announces) -> state dir (created, narrowed to 0700, locked: one daemon per state
 *    dir) -> chunk store -> index (a corrupt one is moved aside) -> origin -> peers (netlink,
 *    membership, home directory, source) -> engine -> load (the index, validated) -> reclaim (before
 *    anything writes to the store) -> announcer -> layer trees -> control socket -> HTTP server (peers,
 *    /metrics) -> mirror (a failure only warns) -> snapshotter -> lookup resolver -> mount (a
 *    stale mount left by a crash is detached first).
 *
 * Serve (serve): the signal and status threads start; main's thread runs the FUSE loop.
 *
 * Stop. SIGTERM/SIGINT, bounded by --shutdown-timeout (default 10 s) plus teardown; the loop
 * ending by itself (the mount went away) takes the same path. On the signal thread
 * (shutdown_daemon):
 *  1. STOPPING=1; the status thread ends and the control socket stops (no new blobs, no new
 *     work);
 *  2. fs_shutdown(): the mount is detached (MNT_DETACH; files already open keep working);
 *     drain: wait until no chunk fetch is in flight, at most --shutdown-timeout, past which
 *     the reads still waiting, and the kernel's retries of them, get EIO from the loop itself;
 *     then the loop is told to exit and woken.
 * Then on main's thread, after a failed start just the same (daemon_stop; each step only for
 * what exists):
 *  3. the announcer stops (it reads the engine); the engine stops fetching: nothing new reaches
 *     the source or the origin, and peers waiting in the HTTP server for a chunk give up, so
 *     stopping the servers below does not wait on them;
 *  4. the resolver (lookups still asking peers get ECANCELED), the snapshotter (its metadata
 *     is in the index, which goes last), the mirror (reads the engine and the origin), the
 *     HTTP server (its /metrics reads the engine), the control socket, the layer trees
 *     (their workers read the engine; their reads fail fast once it stops fetching);
 *  5. the source (fails pending peer fetches, before the origin goes), the origin (fails
 *     pending fetches: their readers get EIO), the engine (answers every read still queued);
 *  6. the FUSE session (fs_destroy: the connection is aborted if a reader still holds a file,
 *     the device closed), the peer layer's directory, membership and netlink; then the HTTP
 *     client (its users are gone: origin, announcer, membership; anything left gets
 *     ECANCELED);
 *  7. the index is flushed and closed, the store closed, the state dir's lock released, curl
 *     cleaned up. Exit 0 when serving ended on a signal and nothing failed. */

/* The layer trees, once the engine has loaded (ltree_new reloads the recorded layers). */
static int layers_start(struct daemon *d) {
        struct ltree_config lc = {.span = (uint32_t)d->cfg.layer_span,
                                  .span_cache_bytes = (size_t)d->cfg.layer_span_cache,
                                  .max_layers = (uint32_t)d->cfg.max_layers,
                                  .workers = (unsigned)d->cfg.layer_workers,
                                  .index_timeout_ms = d->cfg.fetch_timeout_ms};
        int r = ltree_new(&lc, d->engine, d->ix, peers_ltree_ops(d), &d->layers);
        if (r < 0) {
                log_err("cannot start the layer trees err=%s", strerror(-r));
                return r;
        }
        fs_layers_set(d->layers);
        return 0;
}

/* Before the sources stop: workers may be waiting on engine reads. */
static void layers_stop(struct daemon *d) {
        fs_layers_set(NULL);
        ltree_free(d->layers);
        d->layers = NULL;
}

static int mkdir_p(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        snprintf(buf, sizeof(buf), "%s", path);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int daemon_start(struct service *s) {
        struct daemon *d = s->d;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_err("curl initialisation failed");
                return -EIO;
        }
        s->curl_ready = true;
        /* The origin's share (max_connections, its group's cap), the peer source's chunk
         * transfers (its group's cap), so that neither starves the other, plus room for
         * directory queries, probes and announces, which are small. */
        struct http_client_config hc = {.max_inflight = (unsigned)d->cfg.max_connections +
                                                        PEERS_MAX_TRANSFERS +
                                                        HTTP_CLIENT_MAX_INFLIGHT};
        int r = http_client_new(&hc, &d->http);
        if (r < 0) {
                log_err("cannot start the http client err=%s", strerror(-r));
                return r;
        }
        r = mkdir_p(d->cfg.state_dir, 0700);
        if (r < 0) {
                log_err("cannot create state directory path=%s err=%s", d->cfg.state_dir,
                        strerror(-r));
                return r;
        }
        struct stat sst;
        if (stat(d->cfg.state_dir, &sst) == 0 && (sst.st_mode & 077)) {
                log_notice("state directory was open to other users; narrowed to 0700 path=%s",
                           d->cfg.state_dir);
                if (chmod(d->cfg.state_dir, sst.st_mode & 0700) < 0)
                        log_warning("cannot narrow the state directory path=%s err=\"%m\"",
                                    d->cfg.state_dir);
        }
        r = statedir_open(d->cfg.state_dir, &s->sd); /* one daemon per state dir; writable */
        if (r < 0)
                return r;
        if (d->cfg.chunk_size % STORE_BLOCK) { /* the store checksums whole 4 KiB blocks */
                log_err("chunk size must be a multiple of 4K chunk_size=%" PRIu64
                        " hint=\"set --chunk-size to a power of two such as 1M\"",
                        d->cfg.chunk_size);
                return -EINVAL;
        }
        r = store_open(d->cfg.state_dir, &d->store);
        if (r < 0) {
                log_err("cannot open chunk store dir=%s err=%s", d->cfg.state_dir, strerror(-r));
                return r;
        }
        store_set_open_blobs(d->store, (unsigned)d->cfg.store_open_blobs);
        r = statedir_check_writable(store_dir(d->store));
        if (r < 0)
                return r;
        r = statedir_open_index(s->sd, &d->ix); /* a corrupt one is moved aside */
        if (r < 0)
                return r;
        struct origin_config oc = {
                .insecure = (const char *const *)d->cfg.insecure,
                .n_insecure = d->cfg.n_insecure,
                .credentials_path = d->cfg.registry_config,
                .ca_file = d->cfg.ca_file,
                .connect_timeout_ms = d->cfg.connect_timeout_ms,
                .stall_timeout_ms = 10000,
                .max_connections = (unsigned)d->cfg.max_connections,
                .http = d->http,
        };
        r = origin_new(&oc, &d->origin);
        if (r < 0) {
                log_err("cannot start origin client err=%s", strerror(-r));
                return r;
        }
        r = peers_start(d);
        if (r < 0)
                return r;
        struct engine_config ec = {
                .cache_budget = d->cfg.cache_budget,
                .chunk_size = (uint32_t)d->cfg.chunk_size,
                .readahead_chunks = (unsigned)d->cfg.readahead,
                .max_inflight = (unsigned)d->cfg.max_inflight,
                .workers = (unsigned)d->cfg.workers,
                .fetch_timeout_ms = d->cfg.fetch_timeout_ms,
                .verify_retry_ms = d->cfg.verify_retry_ms,
                .max_blobs = (uint32_t)d->cfg.max_blobs,
                .max_read = FS_MAX_READ,
                .landed_chunks = (unsigned)d->cfg.landed_chunks,
                .on_invalidate = fs_invalidate, /* a no-op until the tree is mounted */
        };
        peers_engine_config(d, &ec);
        struct engine_source_ops src = sources_engine_ops(d);
        r = engine_new(&ec, d->ix, d->store, &src, &d->engine);
        if (r < 0) {
                log_err("cannot start engine err=%s", strerror(-r));
                return r;
        }
        r = engine_load(d->engine);
        if (r < 0) {
                log_err("cannot load index err=%s", strerror(-r));
                return r;
        }
        statedir_reclaim(d->store, d->engine); /* before anything can write to the store */
        r = peers_start_announcer(d);
        if (r < 0)
                return r;
        r = layers_start(d);
        if (r < 0)
                return r;
        struct control_ops cops = api_control_ops(d);
        r = control_start(d->cfg.control_socket, &cops, &d->control);
        if (r < 0) {
                log_err("cannot listen on control socket path=%s err=%s", d->cfg.control_socket,
                        strerror(-r));
                return r;
        }
        if (strcmp(d->cfg.listen, "off") != 0) {
                struct httpd_ops hops = api_httpd_ops(d);
                peers_httpd_ops(d, &hops);
                hops.header_timeout_ms = d->cfg.http_header_timeout_ms;
                r = httpd_start(d->cfg.listen, &hops, &d->httpd);
                if (r < 0) {
                        log_err("cannot serve HTTP listen=%s err=%s hint=\"another process on "
                                "the port? set --listen, or --listen off\"",
                                d->cfg.listen, strerror(-r));
                        return r;
                }
        }
        if (strcmp(d->cfg.mirror_listen, "off") != 0) {
                struct mirror_config mc = {.listen = d->cfg.mirror_listen,
                                           .state_dir = d->cfg.state_dir,
                                           .engine = d->engine,
                                           .origin = d->origin,
                                           .chunk_size = (uint32_t)d->cfg.chunk_size,
                                           .header_timeout_ms = d->cfg.http_header_timeout_ms,
                                           .registry_list = d->cfg.mirror_registries,
                                           .registries = d->cfg.insecure,
                                           .n_registries = d->cfg.n_insecure,
                                           .credentials_path = d->cfg.registry_config,
                                           .hosts_dir = d->cfg.mirror_hosts_dir,
                                           .allow_users = d->cfg.mirror_allow_users};
                r = mirror_start(&mc, &d->mirror);
                if (r < 0) /* containerd then pulls from the origin: worth a warning, no more */
                        log_warning("cannot serve the containerd mirror listen=%s err=%s "
                                    "hint=\"containerd pulls from origins directly; set "
                                    "--mirror-listen, or off\"",
                                    d->cfg.mirror_listen, strerror(-r));
        }
        if (d->cfg.snapshotter_socket && d->cfg.snapshotter_socket[0]) {
                char ipath[PATH_MAX]; /* its own connection to the index statedir opened */
                snprintf(ipath, sizeof(ipath), "%s/index.db", d->cfg.state_dir);
                r = snapshotter_start(d->cfg.state_dir, ipath, d->cfg.snapshotter_socket,
                                      &d->snapshotter);
                if (r < 0) {
                        log_err("cannot serve the containerd snapshotter socket=%s err=%s "
                                "hint=\"is the socket's directory there? set "
                                "--snapshotter-socket, or empty\"",
                                d->cfg.snapshotter_socket, strerror(-r));
                        return r;
                }
                log_notice("serving containerd snapshotter socket=%s", d->cfg.snapshotter_socket);
                snap_lazy_attach(d); /* lazy layers from the layer trees (fs/snap_lazy.c) */
        }
        if (d->source) {
                r = resolver_new(d->engine, 2, 256, &d->resolver);
                if (r < 0) {
                        log_err("cannot start the lookup resolver err=%s", strerror(-r));
                        return r;
                }
        }
        r = fs_mount(d->engine, d->resolver, d->cfg.mountpoint, d->cfg.allow_other, &d->se);
        if (r < 0) {
                /* -EIO: the kernel refused the mount itself; anything else: the mountpoint
                 * could not be created, checked or freed of a stale mount. */
                log_err("cannot mount path=%s err=%s hint=\"%s\"", d->cfg.mountpoint, strerror(-r),
                        r == -EIO ? "is /dev/fuse available and the mountpoint free?"
                                  : "the mountpoint must be a directory, or a path the daemon "
                                    "can create one at");
                return r;
        }
        return 0;
}

/* Runs the FUSE loop until a stop (steps 1 and 2 above) ends it. Returns the exit code. */
static int serve(struct service *s) {
        struct daemon *d = s->d;
        pthread_t sig_thread;
        int r = -pthread_create(&sig_thread, NULL, signal_main, s);
        if (r < 0) {
                log_err("cannot start signal thread err=%s", strerror(-r));
                return 1;
        }
        r = -pthread_create(&s->status_thread, NULL, status_main, s);
        if (r < 0) {
                log_warning("cannot start status thread err=%s; READY=1 will not be sent",
                            strerror(-r));
                detach_done(); /* mounted; nobody will say so later */
        } else
                s->status_started = true;
        log_notice("serving mountpoint=%s state_dir=%s budget=%" PRIu64 " chunk_size=%" PRIu64
                   " control=%s",
                   d->cfg.mountpoint, d->cfg.state_dir, d->cfg.cache_budget, d->cfg.chunk_size,
                   d->cfg.control_socket);
        r = fs_run(d->se, 16);
        if (r < 0)
                log_err("fuse loop failed err=%s", strerror(-r));
        pthread_mutex_lock(&s->lock);
        s->loop_done = true;
        bool ours = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (!ours) {
                /* The loop ended by itself (the mount went away): drop the session's device so
                 * nothing waits on it, then let the signal thread stop the rest. */
                log_notice("fuse loop ended without a stop request mountpoint=%s",
                           d->cfg.mountpoint);
                fs_shutdown(d->se, d->cfg.mountpoint, NULL, NULL);
                pthread_kill(sig_thread, SIGTERM);
        }
        pthread_join(sig_thread, NULL);
        pthread_mutex_lock(&s->lock);
        int exit_code = r == 0 && !s->failed ? 0 : 1;
        pthread_mutex_unlock(&s->lock);
        notify_status("stopping: flushing the index");
        return exit_code;
}

/* Steps 3 to 7 above, for whatever exists: after serving, and after a start that failed
 * anywhere. Every call is NULL-safe but engine_stop_fetching(). */
static void daemon_stop(struct service *s) {
        struct daemon *d = s->d;
        peers_stop_announcer(d);
        if (d->engine)
                engine_stop_fetching(d->engine);
        resolver_free(d->resolver);
        snapshotter_stop(d->snapshotter);
        mirror_stop(d->mirror);
        dir_stop_waits(d->dir); /* held digest questions answer now, not at their wait's end */
        httpd_stop(d->httpd);
        control_stop(d->control); /* NULL already after a stop on a signal */
        layers_stop(d);           /* its workers read the engine through the sources, still up */
        peers_stop_source(d);
        origin_free(d->origin);
        engine_free(d->engine);
        fs_destroy(d->se);
        peers_stop(d);
        http_client_free(d->http); /* after every module that submits to it */
        idx_close(d->ix);          /* flushes what the writer still holds */
        store_close(d->store);
        statedir_close(s->sd);
        if (s->curl_ready)
                curl_global_cleanup();
        /* Runs once, after every thread that reads D has been joined or stopped: nothing
         * reads the freed pointers, so they are not cleared. */
}

int main(int argc, char **argv) {
        struct daemon d = {.started = time(NULL)};
        struct service svc = {
                .d = &d,
                .argc = argc,
                .argv = argv,
                .lock = PTHREAD_MUTEX_INITIALIZER,
                .cond = PTHREAD_COND_INITIALIZER,
        };
        int exit_code = 0;
        if (config_load(&d.cfg, argc, argv) < 0)
                exit_code = 2;
        else if (d.cfg.help)
                config_usage(stdout, argv[0]);
        else if (d.cfg.version)
                printf("p2pblobsd %s\n", P2PBLOBS_VERSION);
        else {
                log_max_level = d.cfg.log_level;
                /* Whatever the caller's umask: what we create (index, chunks, manifests,
                 * sockets) is the node's business only. */
                umask(0077);
                if (!d.cfg.foreground)
                        detach();
                /* Block the signals in every thread we start; the signal thread takes them. */
                sigset_t set;
                sigemptyset(&set);
                sigaddset(&set, SIGTERM);
                sigaddset(&set, SIGINT);
                sigaddset(&set, SIGHUP);
                pthread_sigmask(SIG_BLOCK, &set, NULL);
                signal(SIGPIPE, SIG_IGN);

                exit_code = daemon_start(&svc) == 0 ? serve(&svc) : 1;
                daemon_stop(&svc);
                if (exit_code == 0)
                        log_notice("stopped");
        }
        config_free(&d.cfg);
        return exit_code;
}
