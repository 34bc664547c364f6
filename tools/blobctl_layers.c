/* blobctl's layer commands. See blobctl_layers.h.
 *
 * Output follows the rest of blobctl: aligned columns for people, --json with the daemon's
 * stable keys for scripts, exit codes from blobctl.c's call (2 bad arguments, 3 daemon down,
 * 4 no such layer). */
#include "tools/blobctl_layers.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/api_routes.h"
#include "util/digest.h"
#include "util/parse.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2 };

static void usage_err(const char *what) {
        fprintf(stderr, "blobctl layer: %s; see blobctl --help\n", what);
}

static uint64_t num(json_t *o, const char *k) {
        json_t *v = json_object_get(o, k);
        return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static const char *str(json_t *o, const char *k) {
        const char *s = json_string_value(json_object_get(o, k));
        return s ? s : "";
}

static void print_json(json_t *v) {
        json_dumpf(v, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        putchar('\n');
}

/* Sets argument ARG of Q to VALUE; a usage error when it was set already (the daemon takes
 * every argument once). */
static int set_arg(struct api_request *q, enum api_arg arg, const char *value, const char *opt) {
        if (q->arg[arg]) {
                fprintf(stderr, "blobctl layer add: %s given twice\n", opt);
                return -1;
        }
        q->arg[arg] = value;
        return 0;
}

/* "sha256:<hex>" or "<hex>" into *RET. */
static int digest_arg(const char *arg, struct digest *ret) {
        const char *hex = strncmp(arg, "sha256:", 7) == 0 ? arg + 7 : arg;
        return digest_from_hex(hex, strlen(hex), ret) < 0 ? -1 : 0;
}

static void print_layer_line(json_t *l) {
        const char *err = str(l, "error");
        printf("%-71s %-8s %-9s %8" PRIu64 " %12" PRIu64 "%s%s\n", str(l, "digest"),
               str(l, "format"), str(l, "state"), num(l, "files"), num(l, "bytes_fetched"),
               err[0] ? "  " : "", err);
}

static void print_layers_header(void) {
        printf("%-71s %-8s %-9s %8s %12s\n", "DIGEST", "FORMAT", "STATE", "FILES", "FETCHED");
}

static int cmd_add(int argc, char **argv, bool json, blobctl_request_fn call, void *ud) {
        struct api_request q = {.route = API_LAYER_ADD};
        char wait[24];
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i];
                int arg = strcmp(a, "--diff-id") == 0      ? API_ARG_DIFF_ID
                          : strcmp(a, "--toc-digest") == 0 ? API_ARG_TOC_DIGEST
                          : strcmp(a, "--media-type") == 0 ? API_ARG_MEDIA_TYPE
                                                           : -1;
                if (arg >= 0) {
                        if (i + 1 >= argc) {
                                usage_err("an option lacks its value");
                                return EXIT_USAGE;
                        }
                        if (set_arg(&q, (enum api_arg)arg, argv[++i], a) < 0)
                                return EXIT_USAGE;
                } else if (strcmp(a, "--wait") == 0) {
                        uint64_t v = 600;
                        if (i + 1 < argc && parse_u64(argv[i + 1], 1, 3600, &v) == 0)
                                i++;
                        snprintf(wait, sizeof(wait), "%" PRIu64, v);
                        if (set_arg(&q, API_ARG_WAIT, wait, a) < 0)
                                return EXIT_USAGE;
                } else if (a[0] == '-') {
                        fprintf(stderr, "blobctl layer add: unknown option \"%s\"\n", a);
                        return EXIT_USAGE;
                } else if (!q.arg[API_ARG_REF]) {
                        q.arg[API_ARG_REF] = a;
                } else {
                        usage_err("too many arguments");
                        return EXIT_USAGE;
                }
        }
        if (!q.arg[API_ARG_REF]) {
                usage_err("layer add needs REGISTRY/REPOSITORY@sha256:<hex>");
                return EXIT_USAGE;
        }
        json_t *out = NULL;
        int rc = call(ud, &q, &out);
        if (rc != EXIT_OK)
                return rc;
        if (json)
                print_json(out);
        else
                print_layer_line(out);
        bool failed = strcmp(str(out, "state"), "failed") == 0;
        if (failed && !json)
                fprintf(stderr, "blobctl: layer index failed: %s\n", str(out, "error"));
        json_decref(out);
        return failed ? EXIT_FAILED : EXIT_OK;
}

static int cmd_list(bool json, blobctl_request_fn call, void *ud) {
        json_t *arr = NULL;
        int rc = call(ud, &(struct api_request){.route = API_LAYERS}, &arr);
        if (rc != EXIT_OK)
                return rc;
        if (json) {
                print_json(arr);
        } else {
                print_layers_header();
                size_t i;
                json_t *l;
                json_array_foreach(arr, i, l) print_layer_line(l);
        }
        json_decref(arr);
        return EXIT_OK;
}

static void print_mode(const char *type, uint64_t mode) {
        char t = strcmp(type, "dir") == 0        ? 'd'
                 : strcmp(type, "symlink") == 0  ? 'l'
                 : strcmp(type, "char") == 0     ? 'c'
                 : strcmp(type, "whiteout") == 0 ? 'c'
                 : strcmp(type, "block") == 0    ? 'b'
                 : strcmp(type, "fifo") == 0     ? 'p'
                                                 : '-';
        char s[11] = {t};
        const char *rwx = "rwxrwxrwx";
        for (int i = 0; i < 9; i++)
                s[1 + i] = (mode >> (8 - i)) & 1 ? rwx[i] : '-';
        s[10] = '\0';
        printf("%s", s);
}

static int cmd_ls(int argc, char **argv, bool json, blobctl_request_fn call, void *ud) {
        const char *pos[2];
        int n = 0;
        for (int i = 0; i < argc; i++) {
                if (argv[i][0] == '-' && argv[i][1]) {
                        fprintf(stderr, "blobctl layer ls: unknown option \"%s\"\n", argv[i]);
                        return EXIT_USAGE;
                }
                if (n == 2) {
                        usage_err("too many arguments");
                        return EXIT_USAGE;
                }
                pos[n++] = argv[i];
        }
        struct api_request q = {.route = API_LAYER_FILES};
        if (n < 1 || digest_arg(pos[0], &q.digest) < 0) {
                usage_err("layer ls needs DIGEST (sha256:<64 hex>) [PATH]");
                return EXIT_USAGE;
        }
        if (n == 2)
                q.arg[API_ARG_PATH] = pos[1];
        json_t *arr = NULL;
        int rc = call(ud, &q, &arr);
        if (rc != EXIT_OK)
                return rc;
        if (json) {
                print_json(arr);
        } else {
                size_t i;
                json_t *f;
                json_array_foreach(arr, i, f) {
                        const char *type = str(f, "type"), *link = str(f, "link");
                        print_mode(type, num(f, "mode"));
                        printf(" %5" PRIu64 " %5" PRIu64 " %12" PRIu64 " %s", num(f, "uid"),
                               num(f, "gid"), num(f, "size"), str(f, "path"));
                        if (strcmp(type, "symlink") == 0)
                                printf(" -> %s", link);
                        else if (strcmp(type, "link") == 0)
                                printf(" link to %s", link);
                        else if (strcmp(type, "whiteout") == 0)
                                printf(" (whiteout)");
                        if (json_is_true(json_object_get(f, "opaque")))
                                printf(" (opaque)");
                        putchar('\n');
                }
        }
        json_decref(arr);
        return EXIT_OK;
}

int blobctl_layers(const char *cmd, int argc, char **argv, blobctl_request_fn call, void *ud) {
        /* --json anywhere; the rest is the subcommand's. */
        bool json = false;
        char *rest[128];
        int n = 0;
        for (int i = 0; i < argc; i++) {
                if (strcmp(argv[i], "--json") == 0)
                        json = true;
                else if (n < (int)(sizeof(rest) / sizeof(rest[0])))
                        rest[n++] = argv[i];
                else {
                        usage_err("too many arguments");
                        return EXIT_USAGE;
                }
        }
        if (strcmp(cmd, "layers") == 0) {
                if (n) {
                        usage_err("layers takes no arguments");
                        return EXIT_USAGE;
                }
                return cmd_list(json, call, ud);
        }
        if (n >= 1 && strcmp(rest[0], "add") == 0)
                return cmd_add(n - 1, rest + 1, json, call, ud);
        if (n >= 1 && strcmp(rest[0], "ls") == 0)
                return cmd_ls(n - 1, rest + 1, json, call, ud);
        usage_err("want layer add or layer ls");
        return EXIT_USAGE;
}
