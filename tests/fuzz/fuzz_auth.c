/* libFuzzer target for registry/auth.c: the WWW-Authenticate parser, docker config.json lookups
 * and token responses, all from one input. The input up to its first NUL is the text; the
 * rest (if any) names the registry to look up. The oracle: error codes are the documented
 * ones, outputs are NUL-terminated within their buffers, a Bearer challenge has an http(s)
 * realm, a token is printable without spaces, and credentials hold a ':'. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "registry/auth.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct auth_challenge c, orig;
        char *s, out[256], tiny[6];
        const char *registry;
        unsigned exp = 0;
        int r;

        s = malloc(size + 2);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = s[size + 1] = '\0';
        registry = s + strlen(s) + 1;
        if (registry > s + size + 1)
                registry = s + size + 1;
        if (!*registry)
                registry = "registry.example.com";

        memset(&orig, 0xa5, sizeof(orig));
        c = orig;
        r = auth_parse_challenge(s, &c);
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
        if (r == 0) {
                CHECK(c.scheme == AUTH_BASIC || c.scheme == AUTH_BEARER);
                CHECK(memchr(c.realm, '\0', sizeof(c.realm)) != NULL);
                CHECK(memchr(c.service, '\0', sizeof(c.service)) != NULL);
                CHECK(memchr(c.scope, '\0', sizeof(c.scope)) != NULL);
                if (c.scheme == AUTH_BEARER)
                        CHECK(strncasecmp(c.realm, "http://", 7) == 0 ||
                              strncasecmp(c.realm, "https://", 8) == 0);
        } else {
                CHECK(memcmp(&c, &orig, sizeof(c)) == 0);
        }

        r = auth_find_credentials(s, registry, out, sizeof(out));
        CHECK(r == 0 || r == -ENOENT || r == -EINVAL || r == -ENAMETOOLONG);
        if (r == 0)
                CHECK(strlen(out) < sizeof(out) && strchr(out, ':') != NULL);
        r = auth_find_credentials(s, registry, tiny, sizeof(tiny));
        if (r == 0)
                CHECK(strlen(tiny) < sizeof(tiny));

        r = auth_parse_token_response(s, out, sizeof(out), &exp);
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
        if (r == 0) {
                CHECK(exp >= 60);
                CHECK(out[0] != '\0');
                for (const char *p = out; *p; p++)
                        CHECK(*p > ' ' && *p < 0x7f);
        }
        r = auth_parse_token_response(s, tiny, sizeof(tiny), NULL);
        if (r == 0)
                CHECK(strlen(tiny) < sizeof(tiny));
        free(s);
        return 0;
}
