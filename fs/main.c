/* p2pblobsd: wires the modules together and owns the process.
 *
 * Start-up order: config -> store -> index -> origin -> engine (loads and validates the
 * index) -> control socket -> mount -> serve. Shutdown runs the other way round, with one
 * subtlety: the origin stops before the engine so that every fetch has completed (or failed)
 * and every queued read has been answered before the FUSE session is destroyed.
 *
 * Signals are blocked in every thread and taken by a dedicated thread with sigwait(), so no
 * work happens in signal context. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cache/store.h"
#include "fs/api.h"
#include "fs/config.h"
#include "fs/engine.h"
#include "fs/fuse.h"
#include "index/index.h"
#include "peer/control.h"
#include "peer/origin.h"
#include "util/log.h"

/* ---- signals -------------------------------------------------------------------------------- */

static void *signal_main(void *arg) {
        struct daemon *d = arg;
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
                        log_notice("SIGHUP received: reloading is not supported yet; ignoring");
                        continue;
                }
                log_notice("signal received, shutting down signal=%s", strsignal(sig));
                fs_stop(d->se);
                return NULL;
        }
}

/* ---- main ------------------------------------------------------------------------------------ */

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

int main(int argc, char **argv) {
        struct daemon d = {.started = time(NULL)};
        int r = config_load(&d.cfg, argc, argv);
        if (r < 0) {
                config_free(&d.cfg);
                return 2;
        }
        if (d.cfg.help) {
                config_usage(stdout, argv[0]);
                config_free(&d.cfg);
                return 0;
        }
        if (d.cfg.version) {
                printf("p2pblobsd %s\n", P2PBLOBS_VERSION);
                config_free(&d.cfg);
                return 0;
        }
        log_max_level = d.cfg.log_level;
        if (!d.cfg.foreground)
                log_notice("running in the foreground anyway: supervise p2pblobsd with systemd "
                           "or a container runtime");

        /* Block the signals in every thread we start; the signal thread takes them. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);

        int exit_code = 1;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_err("curl initialisation failed");
                goto out_config;
        }
        r = mkdir_p(d.cfg.state_dir, 0700);
        if (r < 0) {
                log_err("cannot create state directory path=%s err=%s", d.cfg.state_dir,
                        strerror(-r));
                goto out_curl;
        }
        r = store_open(d.cfg.state_dir, &d.store);
        if (r < 0) {
                log_err("cannot open chunk store dir=%s err=%s", d.cfg.state_dir, strerror(-r));
                goto out_curl;
        }
        char index_path[PATH_MAX];
        snprintf(index_path, sizeof(index_path), "%s/index.db", d.cfg.state_dir);
        r = idx_open(index_path, &d.ix);
        if (r < 0) {
                log_err("cannot open index path=%s err=%s", index_path, strerror(-r));
                goto out_store;
        }
        struct origin_config oc = {
                .insecure = (const char *const *)d.cfg.insecure,
                .n_insecure = d.cfg.n_insecure,
                .credentials_path = d.cfg.registry_config,
                .ca_file = d.cfg.ca_file,
                .connect_timeout_ms = d.cfg.connect_timeout_ms,
                .stall_timeout_ms = 10000,
                .max_connections = (unsigned)d.cfg.max_connections,
        };
        r = origin_new(&oc, &d.origin);
        if (r < 0) {
                log_err("cannot start origin client err=%s", strerror(-r));
                goto out_index;
        }
        struct engine_config ec = {
                .cache_budget = d.cfg.cache_budget,
                .chunk_size = (uint32_t)d.cfg.chunk_size,
                .readahead_chunks = (unsigned)d.cfg.readahead,
                .max_inflight = (unsigned)d.cfg.max_inflight,
                .workers = (unsigned)d.cfg.workers,
                .fetch_timeout_ms = d.cfg.fetch_timeout_ms,
                .verify_retry_ms = d.cfg.verify_retry_ms,
                .max_blobs = (uint32_t)d.cfg.max_blobs,
                .max_read = FS_MAX_READ,
        };
        r = engine_new(&ec, d.ix, d.store, d.origin, &d.engine);
        if (r < 0) {
                log_err("cannot start engine err=%s", strerror(-r));
                goto out_origin;
        }
        r = engine_load(d.engine);
        if (r < 0) {
                log_err("cannot load index err=%s", strerror(-r));
                goto out_engine;
        }
        struct control_ops cops = api_control_ops(&d);
        r = control_start(d.cfg.control_socket, &cops, &d.control);
        if (r < 0) {
                log_err("cannot listen on control socket path=%s err=%s", d.cfg.control_socket,
                        strerror(-r));
                goto out_engine;
        }
        r = fs_mount(d.engine, d.cfg.mountpoint, &d.se);
        if (r < 0) {
                log_err("cannot mount path=%s err=%s hint=\"is /dev/fuse available and the "
                        "mountpoint free?\"",
                        d.cfg.mountpoint, strerror(-r));
                goto out_control;
        }
        pthread_t sig_thread;
        r = -pthread_create(&sig_thread, NULL, signal_main, &d);
        if (r < 0) {
                log_err("cannot start signal thread err=%s", strerror(-r));
                goto out_unmount;
        }
        log_notice("serving mountpoint=%s state_dir=%s budget=%" PRIu64 " chunk_size=%" PRIu64
                   " control=%s",
                   d.cfg.mountpoint, d.cfg.state_dir, d.cfg.cache_budget, d.cfg.chunk_size,
                   d.cfg.control_socket);
        r = fs_run(d.se, 16);
        if (r < 0)
                log_err("fuse loop failed err=%s", strerror(-r));
        else
                exit_code = 0;
        /* The loop can also end because the mount went away; make the signal thread go. */
        pthread_kill(sig_thread, SIGTERM);
        pthread_join(sig_thread, NULL);
out_unmount:
        control_stop(d.control);
        d.control = NULL;
        origin_free(d.origin); /* fails pending fetches: their readers get EIO */
        d.origin = NULL;
        engine_free(d.engine);
        d.engine = NULL;
        fs_destroy(d.se);
out_control:
        control_stop(d.control);
out_engine:
        engine_free(d.engine);
out_origin:
        origin_free(d.origin);
out_index:
        idx_close(d.ix);
out_store:
        store_close(d.store);
out_curl:
        curl_global_cleanup();
out_config:
        config_free(&d.cfg);
        if (exit_code == 0)
                log_notice("stopped");
        return exit_code;
}
