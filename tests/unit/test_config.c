/* Unit tests for the daemon's configuration (fs/config*.c): the option table read the three
 * ways the daemon reads it (defaults, the INI file, the command line), for --digest-waiters
 * (its default, its bounds, where it is documented) and for what every row of the table
 * promises (a default within its own bounds).
 *
 * fs/ is not in the core library the unit tests link, so this file includes the four
 * config*.c files (their statics are distinct); they need only inih and util/, which the core
 * library and its packages provide. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fs/config.c"
#include "fs/config_check.c"
#include "fs/config_help.c"
#include "fs/config_parse.c"
#include "peer/directory.h"
#include "peer/httpd.h"

/* Messages of rejected values go here rather than to the test's output. */
static FILE *quiet;

static int setup(void **state) {
        (void)state;
        quiet = fopen("/dev/null", "we");
        if (!quiet)
                return -1;
        config_set_error_stream(quiet);
        return 0;
}

static int teardown(void **state) {
        (void)state;
        config_set_error_stream(NULL);
        fclose(quiet);
        return 0;
}

/* The defaults, then the INI text TEXT over them, as the daemon reads its --config file:
 * config_parse_file's result; CFG holds the outcome either way (config_free it). */
static int parse_ini(struct daemon_config *cfg, const char *text) {
        assert_int_equal(config_defaults(cfg), 0);
        FILE *f = fmemopen((void *)(uintptr_t)text, strlen(text), "r");
        assert_non_null(f);
        int r = config_parse_file(cfg, f, "test.conf");
        fclose(f);
        return r;
}

/* config_load over ARGS (argv[0] and a --config naming no file are added): its result. */
static int load_args(struct daemon_config *cfg, const char *const *args, int n) {
        char *argv[16];
        assert_true(n + 3 < (int)(sizeof(argv) / sizeof(argv[0])));
        int argc = 0;
        argv[argc++] = (char *)"p2pblobsd";
        argv[argc++] = (char *)"--config";
        argv[argc++] = (char *)"/nonexistent/p2pblobs-test.conf";
        for (int i = 0; i < n; i++)
                argv[argc++] = (char *)(uintptr_t)args[i];
        argv[argc] = NULL;
        return config_load(cfg, argc, argv);
}

static void test_digest_waiters_default(void **state) {
        (void)state;
        struct daemon_config cfg;
        assert_int_equal(config_defaults(&cfg), 0);
        /* The directory's own default, so a node that does not set it behaves as before. */
        assert_int_equal(cfg.digest_waiters, DIR_DEFAULT_DIGEST_WAITERS);
        config_free(&cfg);
}

static void test_digest_waiters_ini(void **state) {
        (void)state;
        static const struct {
                const char *text;
                int r;
                uint64_t want; /* when r == 0 */
        } cases[] = {
                {"[peers]\ndigest-waiters = 8\n", 0, 8},
                {"digest-waiters = 1\n", 0, 1},
                {"digest-waiters = 128\n", 0, CONFIG_DIGEST_WAITERS_MAX},
                {"digest-waiters = 0\n", -EINVAL, 0},   /* holding none is not an option */
                {"digest-waiters = 129\n", -EINVAL, 0}, /* past the ceiling */
                {"digest-waiters = 100000\n", -EINVAL, 0},
                {"digest-waiters = -1\n", -EINVAL, 0},
                {"digest-waiters = 8x\n", -EINVAL, 0},
                {"digest-waiters =\n", -EINVAL, 0},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct daemon_config cfg;
                int r = parse_ini(&cfg, cases[i].text);
                if (r != cases[i].r)
                        fail_msg("\"%s\": %d, want %d", cases[i].text, r, cases[i].r);
                if (r == 0)
                        assert_int_equal(cfg.digest_waiters, cases[i].want);
                else /* a rejected value leaves the default */
                        assert_int_equal(cfg.digest_waiters, DIR_DEFAULT_DIGEST_WAITERS);
                config_free(&cfg);
        }
}

static void test_digest_waiters_flag(void **state) {
        (void)state;
        struct daemon_config cfg;
        const char *eight[] = {"--digest-waiters", "8"};
        assert_int_equal(load_args(&cfg, eight, 2), 0);
        assert_int_equal(cfg.digest_waiters, 8);
        config_free(&cfg);

        const char *joined[] = {"--digest-waiters=128"};
        assert_int_equal(load_args(&cfg, joined, 1), 0);
        assert_int_equal(cfg.digest_waiters, 128);
        config_free(&cfg);

        const char *over[] = {"--digest-waiters", "129"};
        assert_int_equal(load_args(&cfg, over, 2), -EINVAL);
        config_free(&cfg);
}

/* The ceiling leaves the peer server room (fs/peers.c asserts the same at compile time). */
static void test_digest_waiters_ceiling(void **state) {
        (void)state;
        const struct opt_def *o = find_option("digest-waiters");
        assert_non_null(o);
        assert_int_equal(o->min, 1);
        assert_int_equal(o->max, CONFIG_DIGEST_WAITERS_MAX);
        assert_true(o->max + HTTPD_MAX_WAITERS <= HTTPD_MAX_CONNECTIONS * 3 / 4);
        assert_int_equal(o->reload, OPT_RESTART); /* the directory takes it at start */
}

/* --help and the man page both name it, with its default. */
static void test_digest_waiters_documented(void **state) {
        (void)state;
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        assert_non_null(f);
        config_usage(f, "p2pblobsd");
        fclose(f);
        const char *line = strstr(buf, "--digest-waiters N");
        assert_non_null(line);
        const char *eol = strchr(line, '\n');
        assert_non_null(eol);
        const char *def = strstr(line, "[64]");
        assert_true(def && def < eol);
        free(buf);

        f = open_memstream(&buf, &len);
        assert_non_null(f);
        config_man_options(f);
        fclose(f);
        const char *entry = strstr(buf, ".BI \\-\\-digest-waiters \" N\"\n");
        assert_non_null(entry);
        const char *next = strstr(entry + 1, ".TP\n");
        assert_non_null(next);
        def = strstr(entry, "Default: 64.\n");
        assert_true(def && def < next);
        assert_non_null(strstr(entry, "at most 128"));
        free(buf);
}

/* Every numeric default lies within its option's bounds: config_defaults would fail the
 * daemon's start otherwise, and --help would advertise a value it refuses. */
static void test_defaults_within_bounds(void **state) {
        (void)state;
        struct daemon_config cfg;
        assert_int_equal(config_defaults(&cfg), 0);
        for (size_t i = 0; i < cfg_n_options; i++) {
                const struct opt_def *o = &cfg_options[i];
                if (o->type != OPT_UINT && o->type != OPT_SIZE && o->type != OPT_DURATION)
                        continue;
                uint64_t v;
                memcpy(&v, (const char *)&cfg + o->offset, sizeof(v));
                if (v < o->min || (o->max && v > o->max))
                        fail_msg("--%s defaults to %llu outside [%llu, %llu]", o->name,
                                 (unsigned long long)v, (unsigned long long)o->min,
                                 (unsigned long long)o->max);
        }
        config_free(&cfg);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_digest_waiters_default),
                cmocka_unit_test(test_digest_waiters_ini),
                cmocka_unit_test(test_digest_waiters_flag),
                cmocka_unit_test(test_digest_waiters_ceiling),
                cmocka_unit_test(test_digest_waiters_documented),
                cmocka_unit_test(test_defaults_within_bounds),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
