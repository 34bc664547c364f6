/* blobctl containerd-config: writes containerd's per-registry hosts.toml (hosts.toml(5),
 * containerd >= 1.5: CRI's `config_path`, `ctr --hosts-dir`), one directory per registry:
 *
 *   DIR/<registry>/hosts.toml     server = the registry itself (the fall-back)
 *                                 [host."http://<mirror>"] capabilities = pull, resolve
 *
 * containerd tries the hosts in order, then the server. The mirror answers what it cannot
 * serve at once (404), so the fall-back costs milliseconds; with the daemon down the
 * connection is refused and it costs nothing. Pushes never go to the mirror (no "push"
 * capability). Files are written to a temporary name and renamed, so containerd, which reads
 * them on every pull, never sees half a file.
 *
 * A registry is HOST[:PORT] (HTTPS), http://HOST[:PORT] (a plain-HTTP origin), docker.io
 * (whose API lives at registry-1.docker.io) or _default (every registry without a directory
 * of its own: no server line, containerd falls back to the registry it was asked for). */
#include "tools/containerd_config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/parse.h"

#define REGISTRIES_MAX 64
#define DEFAULT_MIRROR "127.0.0.1:5000"
#define HOSTS_TOML_MAX 2048

enum { CC_OK = 0, CC_FAILED = 1, CC_USAGE = 2 };

struct registry {
        char dir[256];    /* the directory name containerd looks up: host[:port] or _default */
        char server[300]; /* the origin's URL; "" for _default */
};

static void cc_usage(FILE *out) {
        fprintf(out, "Usage: blobctl containerd-config --registry HOST [--registry HOST...] "
                     "[--mirror ADDR:PORT] [--write DIR]\n\n"
                     "Prints (or, with --write, installs under DIR) a hosts.toml per registry that "
                     "makes containerd\n"
                     "pull through the p2pblobs mirror first and fall back to the registry.\n\n"
                     "  --registry HOST   HOST[:PORT] (HTTPS), http://HOST[:PORT] (plain HTTP), "
                     "docker.io, or _default\n"
                     "  --mirror ADDR     the daemon's --mirror-listen [" DEFAULT_MIRROR "]\n"
                     "  --write DIR       e.g. /etc/p2pblobs/certs.d (CRI's config_path, ctr "
                     "--hosts-dir)\n");
}

/* A host name or address as it may appear in a directory name and a URL. */
static bool host_valid(const char *s) {
        char host[256];
        uint16_t port;
        if (parse_hostport(s, host, sizeof(host), &port) == 0)
                s = host;
        else if (strchr(s, ':') && s[0] != '[')
                return false;
        size_t n = strlen(s);
        if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-')
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
                        return false;
        }
        return strstr(s, "..") == NULL;
}

static int parse_registry(const char *arg, struct registry *ret) {
        const char *scheme = "https";
        const char *host = arg;
        if (strncmp(arg, "http://", 7) == 0) {
                scheme = "http";
                host = arg + 7;
        } else if (strncmp(arg, "https://", 8) == 0) {
                host = arg + 8;
        }
        size_t n = strlen(host);
        if (n > 0 && host[n - 1] == '/')
                n--;
        char h[256];
        if (n == 0 || n >= sizeof(h))
                return -EINVAL;
        memcpy(h, host, n);
        h[n] = '\0';
        if (strcmp(h, "_default") == 0) {
                if (host != arg)
                        return -EINVAL;
                snprintf(ret->dir, sizeof(ret->dir), "_default");
                ret->server[0] = '\0';
                return 0;
        }
        if (!host_valid(h))
                return -EINVAL;
        snprintf(ret->dir, sizeof(ret->dir), "%s", h);
        snprintf(ret->server, sizeof(ret->server), "%s://%s", scheme,
                 strcmp(h, "docker.io") == 0 ? "registry-1.docker.io" : h);
        return 0;
}

static int render(const struct registry *r, const char *mirror, char *out, size_t len) {
        char server[400] = "";
        if (r->server[0])
                snprintf(server, sizeof(server), "server = \"%s\"\n\n", r->server);
        int n = snprintf(out, len,
                         "# hosts.toml(5) for %s, from `blobctl containerd-config`: pulls try\n"
                         "# the p2pblobs mirror first; what it cannot serve it answers at once,\n"
                         "# and containerd falls back to %s.\n"
                         "%s"
                         "[host.\"http://%s\"]\n"
                         "  capabilities = [\"pull\", \"resolve\"]\n",
                         r->dir, r->server[0] ? "the server below" : "the registry itself", server,
                         mirror);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : n;
}

static int write_file(const char *dir, const struct registry *r, const char *text) {
        char sub[PATH_MAX], path[PATH_MAX + 16], tmp[PATH_MAX + 32];
        int n = snprintf(sub, sizeof(sub), "%s/%s", dir, r->dir);
        if (n < 0 || (size_t)n >= sizeof(sub))
                return -ENAMETOOLONG;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        if (mkdir(sub, 0755) < 0 && errno != EEXIST)
                return -errno;
        snprintf(path, sizeof(path), "%s/hosts.toml", sub);
        snprintf(tmp, sizeof(tmp), "%s/.hosts.toml.%d", sub, (int)getpid());
        FILE *f = fopen(tmp, "we");
        if (!f)
                return -errno;
        int err = fputs(text, f) < 0 ? -EIO : 0;
        if (fclose(f) != 0 && err == 0)
                err = -errno;
        if (err == 0 && rename(tmp, path) < 0)
                err = -errno;
        if (err < 0) {
                unlink(tmp);
                return err;
        }
        printf("wrote %s\n", path);
        return 0;
}

int cmd_containerd_config(int argc, char **argv) {
        static const struct option lopts[] = {{"registry", required_argument, NULL, 'r'},
                                              {"mirror", required_argument, NULL, 'm'},
                                              {"write", required_argument, NULL, 'w'},
                                              {"help", no_argument, NULL, 'h'},
                                              {NULL, 0, NULL, 0}};
        static struct registry regs[REGISTRIES_MAX];
        size_t nregs = 0;
        const char *mirror = DEFAULT_MIRROR;
        const char *dir = NULL;
        int c;
        optind = 0; /* a full reset: blobctl's own getopt ran first */
        while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
                switch (c) {
                case 'r':
                        if (nregs >= REGISTRIES_MAX) {
                                fprintf(stderr,
                                        "blobctl containerd-config: too many registries "
                                        "(max %d)\n",
                                        REGISTRIES_MAX);
                                return CC_USAGE;
                        }
                        if (parse_registry(optarg, &regs[nregs]) < 0) {
                                fprintf(stderr,
                                        "blobctl containerd-config: invalid registry "
                                        "\"%s\": want HOST[:PORT], http://HOST[:PORT] or "
                                        "_default\n",
                                        optarg);
                                return CC_USAGE;
                        }
                        nregs++;
                        break;
                case 'm':
                        mirror = optarg;
                        break;
                case 'w':
                        dir = optarg;
                        break;
                case 'h':
                        cc_usage(stdout);
                        return CC_OK;
                default:
                        cc_usage(stderr);
                        return CC_USAGE;
                }
        }
        char host[256];
        uint16_t port;
        if (parse_hostport(mirror, host, sizeof(host), &port) < 0 || !host[0]) {
                fprintf(stderr,
                        "blobctl containerd-config: invalid --mirror \"%s\": want "
                        "ADDR:PORT\n",
                        mirror);
                return CC_USAGE;
        }
        if (nregs == 0 || optind < argc) {
                fprintf(stderr, "blobctl containerd-config: %s; see --help\n",
                        nregs == 0 ? "at least one --registry is needed" : "unexpected argument");
                return CC_USAGE;
        }
        for (size_t i = 0; i < nregs; i++) {
                char text[HOSTS_TOML_MAX];
                if (render(&regs[i], mirror, text, sizeof(text)) < 0) {
                        fprintf(stderr, "blobctl containerd-config: names too long\n");
                        return CC_USAGE;
                }
                if (!dir) {
                        printf("%s# ---- %s/hosts.toml\n%s", i ? "\n" : "", regs[i].dir, text);
                        continue;
                }
                int r = write_file(dir, &regs[i], text);
                if (r < 0) {
                        fprintf(stderr,
                                "blobctl containerd-config: cannot write %s/%s/hosts.toml: "
                                "%s\n",
                                dir, regs[i].dir, strerror(-r));
                        return CC_FAILED;
                }
        }
        return CC_OK;
}
