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
#include <jansson.h>
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
#include "fs/config.h"
#include "fs/engine.h"
#include "fs/fuse.h"
#include "index/index.h"
#include "peer/control.h"
#include "peer/origin.h"
#include "util/log.h"
#include "util/memstat.h"

#define P2PBLOBS_VERSION "0.1.0"

struct daemon {
        struct daemon_config cfg;
        struct store *store;
        struct index *ix;
        struct origin *origin;
        struct engine *engine;
        struct control *control;
        struct fuse_session *se;
        time_t started;
};

/* ---- control API handlers -------------------------------------------------------------- */

static int add_u64(json_t *obj, const char *key, uint64_t v) {
        return json_object_set_new(obj, key, json_integer((json_int_t)v));
}

static int on_stat(void *ud, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
        struct engine_stats es;
        struct origin_stats os;
        engine_get_stats(d->engine, &es);
        origin_get_stats(d->origin, &os);

        json_t *cache = json_object(), *fetched = json_object(), *memory = json_object(),
               *errors = json_object(), *root = json_object();
        if (!cache || !fetched || !memory || !errors || !root) {
                json_decref(cache);
                json_decref(fetched);
                json_decref(memory);
                json_decref(errors);
                json_decref(root);
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        add_u64(cache, "budget_bytes", es.budget_bytes);
        add_u64(cache, "effective_budget_bytes", es.effective_budget_bytes);
        add_u64(cache, "used_bytes", es.used_bytes);
        add_u64(cache, "pinned_bytes", es.pinned_bytes);
        add_u64(cache, "chunks_present", es.chunks_present);
        add_u64(cache, "hits", es.hits);
        add_u64(cache, "misses", es.misses);
        add_u64(cache, "evicted_chunks", es.evicted_chunks);
        add_u64(cache, "store_allocated_bytes", store_allocated_bytes(d->store));

        add_u64(fetched, "origin_bytes", os.bytes);
        add_u64(fetched, "origin_requests", os.requests);
        add_u64(fetched, "origin_errors", os.errors);
        add_u64(fetched, "peer_bytes", 0);
        add_u64(fetched, "inflight_chunks", es.inflight_chunks);
        add_u64(fetched, "readahead_chunks", es.readahead_chunks);

        add_u64(errors, "read_errors", es.read_errors);
        add_u64(errors, "verify_failures", es.verify_failures);
        add_u64(errors, "store_full_events", es.store_full_events);
        add_u64(errors, "lost_chunks", es.lost_chunks);
        add_u64(errors, "index_write_errors", idx_write_errors(d->ix));

        uint64_t rss = 0;
        memstat_rss(&rss);
        add_u64(memory, "rss_bytes", rss);
        struct cgroup_memory cm = {0};
        if (memstat_self(&cm) == 0) {
                add_u64(memory, "cgroup_version", (uint64_t)cm.version);
                add_u64(memory, "cgroup_usage_bytes", cm.usage_bytes);
                add_u64(memory, "cgroup_inactive_file_bytes", cm.inactive_file_bytes);
                add_u64(memory, "cgroup_working_set_bytes", cm.working_set_bytes);
        } else {
                json_object_set_new(memory, "cgroup_version", json_integer(0));
                json_object_set_new(memory, "cgroup_usage_bytes", json_null());
                json_object_set_new(memory, "cgroup_working_set_bytes", json_null());
        }
        add_u64(memory, "store_page_cache_bytes", store_page_cache_bytes(d->store));

        json_object_set_new(root, "version", json_string(P2PBLOBS_VERSION));
        add_u64(root, "uptime_seconds", (uint64_t)(time(NULL) - d->started));
        add_u64(root, "chunk_size", d->cfg.chunk_size);
        add_u64(root, "blobs", es.blobs);
        add_u64(root, "blobs_verified", es.blobs_verified);
        json_object_set_new(root, "cache", cache);
        json_object_set_new(root, "fetched", fetched);
        json_object_set_new(root, "errors", errors);
        json_object_set_new(root, "memory", memory);
        *ret = root;
        return 0;
}

static json_t *blob_json(const struct engine_blob_info *b) {
        char hex[DIGEST_HEX_LEN + 8];
        memcpy(hex, "sha256:", 7);
        digest_to_hex(&b->digest, hex + 7);
        return json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:I}", "digest", hex, "size",
                         (json_int_t)b->size, "source", b->source, "chunks", (json_int_t)b->chunks,
                         "chunks_present", (json_int_t)b->chunks_present, "verified", b->verified,
                         "added_at", (json_int_t)b->added_at);
}

static int on_list(void *ud, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
        json_t *arr = json_array();
        if (!arr) {
                snprintf(reason, reason_len, "out of memory");
                return -ENOMEM;
        }
        uint32_t n = engine_blob_count(d->engine);
        for (uint32_t i = 0; i < n; i++) {
                struct engine_blob_info b;
                if (engine_get(d->engine, i, &b) == 0)
                        json_array_append_new(arr, blob_json(&b));
        }
        *ret = arr;
        return 0;
}

static int on_add(void *ud, const char *ref, json_t **ret, char *reason, size_t reason_len) {
        struct daemon *d = ud;
        struct engine_blob_info b;
        int r = engine_add(d->engine, ref, &b, reason, reason_len);
        if (r < 0) {
                log_notice("blob add failed ref=\"%s\" err=%s reason=\"%s\"", ref, strerror(-r),
                           reason);
                return r;
        }
        char hex[DIGEST_HEX_LEN + 1];
        digest_to_hex(&b.digest, hex);
        log_info("blob added digest=sha256:%s size=%" PRIu64 " source=%s", hex, b.size, b.source);
        *ret = blob_json(&b);
        return 0;
}

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
        struct control_ops cops = {.ud = &d, .stat = on_stat, .list = on_list, .add = on_add};
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
