/* Prints the OPTIONS entries of man/p2pblobsd.8 from the option table in fs/config.c. Built on
 * the fly by scripts/lint.sh and `make man` (needs only libinih: no FUSE, no daemon build). */
#include <stdio.h>

#include "fs/config.h"

int main(void) {
        config_man_options(stdout);
        return fflush(stdout) == 0 ? 0 : 1;
}
