/* The checks across keys, made once flags are applied too, and the comparison SIGHUP makes
 * between the running config and the file read again. */
#include "fs/config_int.h"

#include <errno.h>
#include <string.h>

#include "util/parse.h"

int config_check(const struct daemon_config *cfg) {
        char host[256];
        uint16_t port;
        if (strcmp(cfg->listen, "off") != 0 &&
            parse_hostport(cfg->listen, host, sizeof(host), &port) < 0) {
                fprintf(ERRS, "invalid value \"%s\" for listen: want ADDR:PORT or off\n",
                        cfg->listen);
                return -EINVAL;
        }
        if (strcmp(cfg->mirror_listen, "off") != 0 &&
            parse_hostport(cfg->mirror_listen, host, sizeof(host), &port) < 0) {
                fprintf(ERRS, "invalid value \"%s\" for mirror-listen: want ADDR:PORT or off\n",
                        cfg->mirror_listen);
                return -EINVAL;
        }
        return 0;
}

static bool opt_equal(const struct daemon_config *a, const struct daemon_config *b,
                      const struct opt_def *o) {
        const void *fa = (const char *)a + o->offset, *fb = (const char *)b + o->offset;
        switch (o->type) {
        case OPT_STRING: {
                const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
                return sa == sb || (sa && sb && strcmp(sa, sb) == 0);
        }
        case OPT_LIST: {
                char *const *la = fa, *const *lb = fb;
                size_t na = *(const size_t *)(const void *)((const char *)a + o->count_offset);
                size_t nb = *(const size_t *)(const void *)((const char *)b + o->count_offset);
                if (na != nb)
                        return false;
                for (size_t i = 0; i < na; i++)
                        if (strcmp(la[i], lb[i]) != 0)
                                return false;
                return true;
        }
        case OPT_SIZE:
        case OPT_DURATION:
        case OPT_UINT:
                return *(const uint64_t *)fa == *(const uint64_t *)fb;
        case OPT_BOOL:
        case OPT_FLAG:
                return *(const bool *)fa == *(const bool *)fb;
        case OPT_LEVEL:
                return *(const int *)fa == *(const int *)fb;
        }
        return true;
}

void config_diff(const struct daemon_config *old, const struct daemon_config *new,
                 void (*fn)(void *ud, const char *key, bool live), void *ud) {
        for (size_t i = 0; i < cfg_n_options; i++)
                if (cfg_options[i].reload != OPT_START_ONLY &&
                    !opt_equal(old, new, &cfg_options[i]))
                        fn(ud, cfg_options[i].name, cfg_options[i].reload == OPT_LIVE);
}
