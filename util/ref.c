/* Blob references: REGISTRY/REPOSITORY@sha256:<hex>, as operators type them and as the
 * index records a blob's source.
 *
 * The registry is not optional. Docker's habit of filling in "docker.io/library/" turns a
 * typo into a pull from the wrong place, and a node daemon must never guess where bytes come
 * from. We use Docker's own rule to tell a registry from a first repository component: it
 * contains a '.' or a ':' (a port), is a bracketed IPv6 literal, or is "localhost". So
 * "library/busybox@..." is refused instead of fetching from a host named "library".
 *
 * Repository components follow the OCI distribution grammar, [a-z0-9]+ joined inside by
 * '.', '_', "__" or runs of '-': that keeps ".." and empty components out of the URLs we
 * build from them (/v2/<name>/blobs/...) and out of anything logged.
 *
 * Invariants: on error nothing is written; on success registry and repository are
 * NUL-terminated, non-empty and within REF_*_MAX - 1 bytes. Pure, thread-safe, O(length).
 */
#include "util/ref.h"

#include <errno.h>
#include <string.h>

#include "util/parse.h"

/* Longest input looked at: a registry, a '/', a repository, '@', "sha256:" and the hex. */
#define REF_INPUT_MAX (REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 8 + DIGEST_HEX_LEN)

static bool is_lower_alnum(char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_alnum(char c) {
        return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/* One OCI path component: [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*. */
static bool component_valid(const char *c, size_t len) {
        size_t i = 0;

        if (len == 0 || !is_lower_alnum(c[0]) || !is_lower_alnum(c[len - 1]))
                return false;
        while (i < len) {
                if (is_lower_alnum(c[i])) {
                        i++;
                        continue;
                }
                /* A separator: '.', '_', "__" or a run of '-', always between alnums (the
                 * first and last characters are alnum, so only the middle is checked). */
                if (c[i] == '.') {
                        i++;
                } else if (c[i] == '_') {
                        i++;
                        if (c[i] == '_')
                                i++;
                } else if (c[i] == '-') {
                        while (c[i] == '-')
                                i++;
                } else {
                        return false;
                }
                if (!is_lower_alnum(c[i]))
                        return false;
        }
        return true;
}

static bool repository_span_valid(const char *r, size_t len) {
        size_t start = 0;

        if (len == 0)
                return false;
        for (size_t i = 0; i <= len; i++) {
                if (i == len || r[i] == '/') {
                        if (!component_valid(r + start, i - start))
                                return false;
                        start = i + 1;
                }
        }
        return true;
}

bool ref_repository_valid(const char *repo) {
        size_t len;

        if (!repo)
                return false;
        /* Longer than a struct blob_ref can hold is not a name we can use. */
        len = strnlen(repo, REF_REPOSITORY_MAX);
        if (len >= REF_REPOSITORY_MAX)
                return false;
        return repository_span_valid(repo, len);
}

/* DNS name: labels of [A-Za-z0-9-], not starting or ending with '-', joined by '.'. */
static bool domain_valid(const char *d, size_t len) {
        size_t start = 0;

        if (len == 0)
                return false;
        for (size_t i = 0; i <= len; i++) {
                if (i == len || d[i] == '.') {
                        size_t l = i - start;
                        if (l == 0 || d[start] == '-' || d[i - 1] == '-')
                                return false;
                        for (size_t j = start; j < i; j++)
                                if (!is_alnum(d[j]) && d[j] != '-')
                                        return false;
                        start = i + 1;
                }
        }
        return true;
}

/* host, host:port, [v6], [v6]:port, and the rule that tells it from a repository component. */
static bool registry_span_valid(const char *r, size_t len) {
        char buf[REF_REGISTRY_MAX], host[REF_REGISTRY_MAX];
        const char *colon;
        uint16_t port;

        if (len == 0 || len >= sizeof(buf))
                return false;
        memcpy(buf, r, len);
        buf[len] = '\0';

        if (buf[0] == '[') {
                if (buf[len - 1] == ']') {
                        /* No port: give parse_hostport() one so it checks the literal. */
                        char with_port[REF_REGISTRY_MAX + 8];
                        memcpy(with_port, buf, len);
                        memcpy(with_port + len, ":1", 3);
                        return parse_hostport(with_port, host, sizeof(host), &port) == 0;
                }
                return parse_hostport(buf, host, sizeof(host), &port) == 0;
        }
        colon = strchr(buf, ':');
        if (colon) {
                /* parse_hostport() allows an empty host and '_' (it reads listen addresses); a
                 * registry needs a real DNS name or address. */
                if (parse_hostport(buf, host, sizeof(host), &port) < 0)
                        return false;
                return domain_valid(host, strlen(host));
        }
        if (!domain_valid(buf, len))
                return false;
        return strchr(buf, '.') != NULL || strcmp(buf, "localhost") == 0;
}

/* Splits "REGISTRY/REPOSITORY" held in [S, S + LEN) and writes both into REF. */
static int split_source(const char *s, size_t len, struct blob_ref *ref) {
        const char *slash = memchr(s, '/', len);
        size_t rlen, plen;

        if (!slash)
                return -EINVAL; /* no registry, or no repository */
        rlen = (size_t)(slash - s);
        plen = len - rlen - 1;
        if (rlen >= REF_REGISTRY_MAX || plen >= REF_REPOSITORY_MAX)
                return -ENAMETOOLONG;
        if (!registry_span_valid(s, rlen) || !repository_span_valid(slash + 1, plen))
                return -EINVAL;
        memcpy(ref->registry, s, rlen);
        ref->registry[rlen] = '\0';
        memcpy(ref->repository, slash + 1, plen);
        ref->repository[plen] = '\0';
        return 0;
}

int ref_parse(const char *s, struct blob_ref *ret) {
        struct blob_ref ref;
        const char *at;
        size_t len;
        int r;

        if (!s)
                return -EINVAL;
        len = strnlen(s, REF_INPUT_MAX + 1);
        if (len > REF_INPUT_MAX)
                return -ENAMETOOLONG;
        at = memchr(s, '@', len);
        if (!at)
                return -EINVAL; /* a tag is not a blob: only digests name bytes */
        r = split_source(s, (size_t)(at - s), &ref);
        if (r < 0)
                return r;
        r = digest_parse(at + 1, &ref.digest);
        if (r < 0)
                return r;
        *ret = ref;
        return 0;
}

int ref_parse_source(const char *s, struct blob_ref *ref) {
        struct blob_ref tmp;
        size_t len;
        int r;

        if (!s)
                return -EINVAL;
        len = strnlen(s, REF_INPUT_MAX + 1);
        if (len > REF_INPUT_MAX)
                return -ENAMETOOLONG;
        r = split_source(s, len, &tmp);
        if (r < 0)
                return r;
        memcpy(ref->registry, tmp.registry, sizeof(ref->registry));
        memcpy(ref->repository, tmp.repository, sizeof(ref->repository));
        return 0;
}
