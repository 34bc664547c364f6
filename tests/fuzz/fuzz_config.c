/* libFuzzer target for the INI configuration file (fs/config.c): the input is a config file's
 * text, read through config_parse_file() — the code the daemon runs on its --config file (inih
 * over the option table) — then config_check(). The oracle: the result is 0, -EINVAL or
 * -ENOMEM; an accepted file leaves every numeric option within the table's bounds, every list
 * within CONFIG_LIST_MAX, the defaulted strings set; and config_free() releases everything
 * (LeakSanitizer sees the rest). */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/config.h"
#include "tests/fuzz/fuzz.h"

#define MiB (UINT64_C(1) << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static FILE *devnull;
        if (!devnull) {
                devnull = fopen("/dev/null", "we");
                config_set_error_stream(devnull); /* one message per bad key: keep runs fast */
        }
        struct daemon_config cfg;
        CHECK(config_defaults(&cfg) == 0);
        /* fmemopen() of a zero-length buffer fails; an empty file is one newline away. */
        FILE *f = size ? fmemopen((void *)(uintptr_t)data, size, "r") : fopen("/dev/null", "re");
        if (!f) {
                config_free(&cfg);
                return 0;
        }
        int r = config_parse_file(&cfg, f, "fuzz.conf");
        fclose(f);
        CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
        if (r == 0)
                r = config_check(&cfg);
        CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
        if (r == 0) {
                CHECK(cfg.cache_budget >= 4 * MiB && cfg.cache_budget <= UINT64_C(1) << 50);
                CHECK(cfg.chunk_size >= (64 << 10) && cfg.chunk_size <= 16 * MiB);
                CHECK(cfg.readahead <= 256);
                CHECK(cfg.max_inflight >= 1 && cfg.max_inflight <= 4096);
                CHECK(cfg.workers >= 1 && cfg.workers <= 64);
                CHECK(cfg.peer_port >= 1 && cfg.peer_port <= 65535);
                CHECK(cfg.homes >= 1 && cfg.homes <= 16);
                CHECK(cfg.fetch_timeout_ms >= 100 && cfg.fetch_timeout_ms <= 3600 * 1000);
                CHECK(cfg.shutdown_timeout_ms <= 600 * 1000);
                CHECK(cfg.location_ttl_ms >= 1000);
                CHECK(cfg.log_level >= 0 && cfg.log_level <= 7);
                CHECK(cfg.n_peers <= CONFIG_LIST_MAX && cfg.n_insecure <= CONFIG_LIST_MAX);
                for (size_t i = 0; i < cfg.n_peers; i++)
                        CHECK(cfg.peers[i] && cfg.peers[i][0] != '\0' &&
                              !strchr(cfg.peers[i], ','));
                CHECK(cfg.mountpoint && cfg.state_dir && cfg.control_socket && cfg.listen &&
                      cfg.mirror_listen);
                CHECK(!cfg.help && !cfg.version && !cfg.foreground); /* flags: not file keys */
        }
        config_free(&cfg);
        return 0;
}
