/* The configuration's private header: what its files share. config.c holds the option table
 * and config_load (the command line over the file); config_parse.c a value's text into the
 * config, the INI file, the defaults and config_free; config_check.c the checks across keys
 * and the comparison SIGHUP makes; config_help.c --help and the man page's OPTIONS. What one
 * file defines and another uses is named cfg_*. Nothing outside fs/config*.c includes it. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fs/config.h"

enum opt_type {
        OPT_STRING,
        OPT_SIZE,
        OPT_DURATION,
        OPT_UINT,
        OPT_BOOL,
        OPT_LEVEL,
        OPT_LIST,
        OPT_FLAG
};

/* What SIGHUP does with a changed value (fs/main.c's reload()). */
enum opt_reload {
        OPT_RESTART = 0, /* wired into threads, sockets or the mount at start: logged as such */
        OPT_LIVE,        /* applied by reload() at once */
        OPT_START_ONLY,  /* command-line only (--config, --foreground ...): never compared */
};

struct opt_def {
        const char *name;
        enum opt_type type;
        const char *def; /* NULL: no default */
        uint64_t min, max;
        size_t offset;
        size_t count_offset; /* OPT_LIST: where the element count lives */
        const char *metavar;
        const char *help;
        enum opt_reload reload;
};

/* config.c: the option table, cfg_n_options rows in the order --help and the man page
 * list them. */
extern const struct opt_def *const cfg_options;
extern const size_t cfg_n_options;

/* config_parse.c: where parse errors go (stderr unless config_set_error_stream() said). */
extern FILE *cfg_error_stream;
#define ERRS (cfg_error_stream ? cfg_error_stream : stderr)

/* Sets option O of CFG from the text VALUE, checked against O's type and bounds (a list
 * option appends). ORIGIN names where VALUE came from in the message on ERRS. 0, -EINVAL,
 * -ERANGE, -ENOMEM. */
int cfg_set_value(struct daemon_config *cfg, const struct opt_def *o, const char *value,
                  const char *origin);
