/* Bounded growing buffers. See dynbuf.h.
 *
 * Growth doubles from DYNBUF_MIN so a body of n bytes costs O(log n) reallocations, and the
 * allocation is clamped to max + 1 so a buffer at its cap wastes nothing: a caller that sizes
 * the cap from the bytes it expects (a chunk, a manifest limit) pays exactly that. */
#include "util/dynbuf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DYNBUF_MIN 256

void dynbuf_init(struct dynbuf *b, size_t max) {
        *b = (struct dynbuf){.max = max};
}

int dynbuf_add(struct dynbuf *b, const void *p, size_t n) {
        if (n > b->max - b->len) /* len <= max always: no overflow */
                return -EFBIG;
        size_t need = b->len + n + 1;
        if (need > b->alloc) {
                size_t a = b->alloc ? b->alloc : DYNBUF_MIN;
                while (a < need)
                        a = a > SIZE_MAX / 2 ? SIZE_MAX : a * 2;
                if (b->max < SIZE_MAX && a > b->max + 1)
                        a = b->max + 1;
                uint8_t *d = realloc(b->data, a);
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->alloc = a;
        }
        if (n)
                memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
}

void dynbuf_reset(struct dynbuf *b) {
        b->len = 0;
        if (b->data)
                b->data[0] = '\0';
}

uint8_t *dynbuf_take(struct dynbuf *b, size_t *ret_len) {
        uint8_t *d = b->data;
        size_t len = b->len;
        if (!d) {
                d = malloc(1);
                if (!d)
                        return NULL;
                d[0] = '\0';
        }
        dynbuf_init(b, b->max);
        if (ret_len)
                *ret_len = len;
        return d;
}

void dynbuf_free(struct dynbuf *b) {
        free(b->data);
        dynbuf_init(b, b->max);
}
