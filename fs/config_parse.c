/* A value's text into the config (checked against its option's type and bounds), the INI
 * file (inih), the defaults, and config_free: the table's readers but the command line,
 * which is config_load's (config.c). */
#include "fs/config_int.h"

#include <errno.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/parse.h"

/* Where parse errors go: stderr (the daemon's log), or what config_set_error_stream() said. */
FILE *cfg_error_stream;

void config_set_error_stream(FILE *f) {
        cfg_error_stream = f;
}

/* The field at OFFSET of CFG. offsetof() of a member of the right type put it there, so the
 * alignment is the member's own; going through void * says so to -Wcast-align. */
static void *opt_field(struct daemon_config *cfg, size_t offset) {
        return (char *)cfg + offset;
}

/* Appends "host:port" values, comma-separated, to the list option O. */
static int add_list_values(struct daemon_config *cfg, const struct opt_def *o, const char *value,
                           const char *origin) {
        char **list = opt_field(cfg, o->offset);
        size_t *count = opt_field(cfg, o->count_offset);
        const char *p = value;
        for (;;) {
                const char *end = strchr(p, ',');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                char item[300];
                char host[256];
                uint16_t port;
                if (n == 0 || n >= sizeof(item)) {
                        fprintf(ERRS, "%s: --%s wants HOST:PORT[,HOST:PORT...], got \"%s\"\n",
                                origin, o->name, value);
                        return -EINVAL;
                }
                memcpy(item, p, n);
                item[n] = '\0';
                if (parse_hostport(item, host, sizeof(host), &port) < 0) {
                        fprintf(ERRS, "%s: --%s wants HOST:PORT, got \"%s\"\n", origin, o->name,
                                item);
                        return -EINVAL;
                }
                if (*count >= CONFIG_LIST_MAX) {
                        fprintf(ERRS, "%s: too many --%s values (max %d)\n", origin, o->name,
                                CONFIG_LIST_MAX);
                        return -EINVAL;
                }
                char *copy = strdup(item);
                if (!copy)
                        return -ENOMEM;
                list[(*count)++] = copy;
                if (!end)
                        return 0;
                p = end + 1;
        }
}

int cfg_set_value(struct daemon_config *cfg, const struct opt_def *o, const char *value,
                  const char *origin) {
        void *field = (char *)cfg + o->offset;
        int r = 0;
        uint64_t u = 0;
        switch (o->type) {
        case OPT_STRING: {
                char *copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
                free(*(char **)field);
                *(char **)field = copy;
                return 0;
        }
        case OPT_LIST:
                return add_list_values(cfg, o, value, origin);
        case OPT_SIZE:
                r = parse_size(value, &u);
                break;
        case OPT_DURATION:
                r = parse_duration_ms(value, &u);
                break;
        case OPT_UINT:
                r = parse_u64(value, o->min, o->max, &u);
                break;
        case OPT_BOOL:
        case OPT_FLAG: {
                bool b;
                r = parse_bool(value, &b);
                if (r == 0)
                        *(bool *)field = b;
                break;
        }
        case OPT_LEVEL: {
                int l;
                r = log_parse_level(value, &l);
                if (r == 0)
                        *(int *)field = l;
                break;
        }
        }
        if (r == 0 && (o->type == OPT_SIZE || o->type == OPT_DURATION || o->type == OPT_UINT)) {
                if (u < o->min || (o->max && u > o->max))
                        r = -ERANGE;
                else
                        *(uint64_t *)field = u;
        }
        if (r < 0)
                fprintf(ERRS, "%s: invalid value \"%s\" for %s: %s\n", origin, value, o->name,
                        r == -ERANGE ? "out of range" : "malformed");
        return r;
}

static const struct opt_def *find_option(const char *name) {
        for (size_t i = 0; i < cfg_n_options; i++)
                if (strcmp(cfg_options[i].name, name) == 0)
                        return &cfg_options[i];
        return NULL;
}

struct ini_ctx {
        struct daemon_config *cfg;
        const char *path;
        int err;
};

static int on_ini(void *ud, const char *section, const char *name, const char *value) {
        struct ini_ctx *c = ud;
        (void)section; /* one flat namespace; sections are allowed for readability */
        const struct opt_def *o = find_option(name);
        if (!o || o->type == OPT_FLAG || strcmp(name, "config") == 0) {
                fprintf(ERRS, "%s: unknown key \"%s\"\n", c->path, name);
                c->err = -EINVAL;
                return 1; /* keep going: report every bad key at once */
        }
        if (cfg_set_value(c->cfg, o, value, c->path) < 0)
                c->err = -EINVAL;
        return 1;
}

int config_defaults(struct daemon_config *cfg) {
        memset(cfg, 0, sizeof(*cfg));
        for (size_t i = 0; i < cfg_n_options; i++)
                if (cfg_options[i].def &&
                    cfg_set_value(cfg, &cfg_options[i], cfg_options[i].def, "default") < 0)
                        return -EINVAL;
        return 0;
}

int config_parse_file(struct daemon_config *cfg, FILE *f, const char *path) {
        struct ini_ctx ctx = {.cfg = cfg, .path = path};
        int line = ini_parse_file(f, on_ini, &ctx);
        if (line > 0) {
                fprintf(ERRS, "%s:%d: syntax error\n", path, line);
                return -EINVAL;
        }
        if (line < 0) /* -1: cannot open (not for a stream), -2: out of memory */
                return line == -2 ? -ENOMEM : -EINVAL;
        return ctx.err;
}

void config_free(struct daemon_config *cfg) {
        for (size_t i = 0; i < cfg_n_options; i++)
                if (cfg_options[i].type == OPT_STRING) {
                        char **p = opt_field(cfg, cfg_options[i].offset);
                        free(*p);
                        *p = NULL;
                }
        for (size_t i = 0; i < cfg_n_options; i++)
                if (cfg_options[i].type == OPT_LIST) {
                        char **list = opt_field(cfg, cfg_options[i].offset);
                        size_t *count = opt_field(cfg, cfg_options[i].count_offset);
                        for (size_t j = 0; j < *count; j++)
                                free(list[j]);
                        *count = 0;
                }
}
