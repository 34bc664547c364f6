/* libFuzzer target for peer/ref.c. The oracle: an accepted reference prints back to exactly
 * the input (nothing was dropped or normalised), its repository passes
 * ref_repository_valid(), and a failed parse wrote nothing. */
#include <errno.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/ref.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct blob_ref ref, orig;
        char *s, back[1024], hex[DIGEST_HEX_LEN + 1];
        int r;

        s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';

        memset(&orig, 0xa5, sizeof(orig));
        ref = orig;
        r = ref_parse(s, &ref);
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG || r == -EPROTONOSUPPORT);
        if (r == 0) {
                CHECK(ref.registry[0] != '\0' && ref.repository[0] != '\0');
                CHECK(ref_repository_valid(ref.repository));
                digest_to_hex(&ref.digest, hex);
                snprintf(back, sizeof(back), "%s/%s@sha256:%s", ref.registry, ref.repository, hex);
                CHECK(strcmp(back, s) == 0);
        } else {
                CHECK(memcmp(&ref, &orig, sizeof(ref)) == 0);
        }

        ref = orig;
        r = ref_parse_source(s, &ref);
        CHECK(r == 0 || r == -EINVAL || r == -ENAMETOOLONG);
        if (r == 0) {
                snprintf(back, sizeof(back), "%s/%s", ref.registry, ref.repository);
                CHECK(strcmp(back, s) == 0);
                CHECK(memcmp(&ref.digest, &orig.digest, sizeof(ref.digest)) == 0);
        } else {
                CHECK(memcmp(&ref, &orig, sizeof(ref)) == 0);
        }

        if (ref_repository_valid(s))
                CHECK(strchr(s, '@') == NULL && strstr(s, "//") == NULL && s[0] != '/');
        free(s);
        return 0;
}
