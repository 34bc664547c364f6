/* A bounded, growing byte buffer (curl's dynbuf habit): it grows by doubling up to a cap set
 * when it is made, and refuses with -EFBIG what would take it past the cap, so a body, a
 * header block or a token answer from the network never costs more memory than configured.
 * The bytes are always followed by a NUL (not counted in len, not counted against the cap),
 * so a text answer can be parsed in place.
 *
 * Not thread-safe: one owner at a time. A zeroed struct dynbuf with max 0 holds nothing and
 * refuses every byte; dynbuf_init() sets the cap. */
#pragma once
#include <stddef.h>
#include <stdint.h>

struct dynbuf {
        uint8_t *data; /* NULL until the first byte; then len bytes and a NUL */
        size_t len;
        size_t alloc; /* bytes allocated (>= len + 1 once data is set) */
        size_t max;   /* the cap on len */
};

/* An empty buffer that may hold up to MAX bytes. Allocates nothing. */
void dynbuf_init(struct dynbuf *b, size_t max);

/* Appends N bytes of P. 0; -EFBIG when len + N would pass the cap (nothing is appended);
 * -ENOMEM. */
int dynbuf_add(struct dynbuf *b, const void *p, size_t n);

/* Forgets the bytes, keeps the memory and the cap. */
void dynbuf_reset(struct dynbuf *b);

/* Hands the bytes (malloc'd, NUL-terminated; a 1-byte "" when empty) to the caller, who frees
 * them, and leaves B empty with its cap. *RET_LEN (may be NULL): their length. NULL on
 * -ENOMEM (an empty buffer must allocate its NUL). */
uint8_t *dynbuf_take(struct dynbuf *b, size_t *ret_len);

/* Frees the bytes; B is empty with its cap after. NULL-safe on B->data. */
void dynbuf_free(struct dynbuf *b);
