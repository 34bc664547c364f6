/* p2pblobsd's configuration: one table (config.c) describes every option — name, type,
 * default, bounds, help. The INI file (--config, default /etc/p2pblobs/p2pblobs.conf; a missing
 * file is fine), the command-line flags and --help all come from it. Flags override the file. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_LIST_MAX 32

struct daemon_config {
        char *config_path;
        char *mountpoint;
        char *state_dir;
        char *control_socket;
        /* containerd proxy snapshotter socket; "" = off */
        char *snapshotter_socket;
        uint64_t snapshotter_lazy_wait_ms;       /* 0: lazy layers off */
        bool snapshotter_prefetch;               /* prefetch started containers' remote layers */
        uint64_t snapshotter_prefetch_layers;    /* layers prefetching at once */
        uint64_t snapshotter_prefetch_max_layer; /* a larger layer is not prefetched; 0: none */
        char *registry_config;                   /* docker config.json with credentials */
        char *ca_file;
        char *listen;            /* "host:port" of the node's HTTP server, or "off" */
        char *mirror_listen;     /* "host:port" of the containerd mirror, or "off" */
        char *mirror_registries; /* comma-separated hosts the mirror fetches from, "*", NULL */
        char *mirror_hosts_dir;  /* per-registry hosts.toml directories; NULL: none */
        bool allow_other;        /* the tree is readable by every local user */
        bool mirror_allow_users; /* the mirror serves clients other than local root */
        uint64_t http_header_timeout_ms;
        uint64_t cache_budget;
        uint64_t chunk_size;
        uint64_t readahead;
        uint64_t max_inflight;
        uint64_t landed_chunks;    /* chunks just landed kept in memory (engine/landed.c) */
        uint64_t store_open_blobs; /* blobs whose store descriptors stay open */
        uint64_t max_connections;
        uint64_t workers;
        uint64_t max_blobs;
        uint64_t layer_span, layer_span_cache, layer_workers, max_layers; /* layer trees */
        uint64_t fetch_timeout_ms;
        uint64_t connect_timeout_ms;
        uint64_t verify_retry_ms;
        uint64_t shutdown_timeout_ms;
        bool config_found; /* the config file existed and was read */
        bool foreground;
        bool help;
        bool version;
        int log_level;
        char *insecure[CONFIG_LIST_MAX];
        size_t n_insecure;
        /* peers */
        char *peers[CONFIG_LIST_MAX]; /* static members, "host:port" */
        size_t n_peers;
        char *peer_dns;           /* a name whose A/AAAA records are the peers; NULL: none */
        char *advertise_address;  /* NULL: the address of the default route's interface */
        char *cluster_token_file; /* NULL: peer requests are not authenticated */
        uint64_t peer_port;
        uint64_t peer_refresh_ms;
        uint64_t max_peers;
        uint64_t homes;
        uint64_t peer_connect_timeout_ms;
        uint64_t peer_stall_timeout_ms;
        uint64_t announce_interval_ms;
        uint64_t location_ttl_ms;
        uint64_t max_holders;      /* holder records a home keeps per blob */
        uint64_t home_locate_rate; /* reader locates per blob per second a home aims at */
        uint64_t digest_waiters;   /* digest questions a home holds at once (peer/directory.h) */
};

/* --digest-waiters' ceiling. Each question a home holds keeps one of the peer server's
 * connections, and its thread, until it is answered (peer/httpd.c): fs/peers.c asserts that
 * with this many held, and every chunk waiter too, a quarter of them stay for announces,
 * locates and chunk answers. */
#define CONFIG_DIGEST_WAITERS_MAX 128

/* Fills CFG from defaults, the config file and ARGV. 0; -EINVAL with a message on stderr for
 * bad input (a directory given as the config file included; a missing file is fine, and
 * leaves config_found false). With --help / --version set, the caller prints and exits. */
int config_load(struct daemon_config *cfg, int argc, char **argv);

/* config_load's steps, for tests and the fuzz target: every option's default (0, -EINVAL);
 * the INI text read from F applied over CFG, exactly as the config file is (PATH names it in
 * messages; 0, -EINVAL, -ENOMEM); the checks across keys made once flags are applied too
 * (0, -EINVAL). CFG may hold partial results after a failure: config_free() it. */
int config_defaults(struct daemon_config *cfg);
int config_parse_file(struct daemon_config *cfg, FILE *f, const char *path);
int config_check(const struct daemon_config *cfg);

/* Parse errors go to F instead of stderr (NULL: stderr again). Not thread-safe. */
void config_set_error_stream(FILE *f);

void config_free(struct daemon_config *cfg);

/* Calls FN for every option whose value differs between OLD and NEW, in table order, with
 * LIVE set for those SIGHUP applies at once (cache-budget, log-level, shutdown-timeout); the
 * rest need a restart. Command-line-only options (--config, --foreground ...) are skipped. */
void config_diff(const struct daemon_config *old, const struct daemon_config *new,
                 void (*fn)(void *ud, const char *key, bool live), void *ud);

void config_usage(FILE *out, const char *prog);

/* Writes the OPTIONS entries of man/p2pblobsd.8 (roff: .TP paragraphs, in table order) from
 * the option table. scripts/man-options.c is its program; `make man` and `make lint` use it. */
void config_man_options(FILE *out);
