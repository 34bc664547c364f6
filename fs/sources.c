/* The engine's operations table bound to the peer source and the origin client. See
 * sources.h. Each operation is a direct call: the engine's contract (done exactly once,
 * ownership of the buffer, never blocking on fetch) is the clients' own, so nothing is adapted
 * but the argument order. */
#include "fs/sources.h"

#include <errno.h>

#include "registry/origin.h"
#include "peer/source.h"

static void fetch_via_source(void *ud, const struct digest *blob, uint64_t size, const char *source,
                             uint32_t idx, uint64_t off, size_t len, uint64_t deadline_ms,
                             engine_fetch_done_fn done, void *ctx) {
        struct daemon *d = ud;
        source_fetch(d->source, blob, size, source, idx, off, len, deadline_ms, done, ctx);
}

static void fetch_from_origin(void *ud, const struct digest *blob, uint64_t size,
                              const char *source, uint32_t idx, uint64_t off, size_t len,
                              uint64_t deadline_ms, engine_fetch_done_fn done, void *ctx) {
        struct daemon *d = ud;
        (void)size;
        (void)idx;
        origin_fetch(d->origin, source, blob, off, len, deadline_ms, done, ctx);
}

static void fetch_run_via_source(void *ud, const struct digest *blob, uint64_t size,
                                 const char *source, uint32_t idx, unsigned n, uint32_t chunk_size,
                                 uint64_t deadline_ms, engine_fetch_done_fn done,
                                 void *const *ctxs) {
        struct daemon *d = ud;
        source_fetch_run(d->source, blob, size, source, idx, n, chunk_size, deadline_ms, done,
                         ctxs);
}

static void fetch_run_from_origin(void *ud, const struct digest *blob, uint64_t size,
                                  const char *source, uint32_t idx, unsigned n, uint32_t chunk_size,
                                  uint64_t deadline_ms, engine_fetch_done_fn done,
                                  void *const *ctxs) {
        struct daemon *d = ud;
        uint64_t off = (uint64_t)idx * chunk_size;
        uint64_t end =
                off + (uint64_t)n * chunk_size < size ? off + (uint64_t)n * chunk_size : size;
        origin_fetch_run(d->origin, source, blob, off, end, chunk_size, n, deadline_ms, done, ctxs);
}

static int lookup_via_source(void *ud, const struct digest *blob, uint64_t deadline_ms,
                             uint64_t *ret_size, char *ret_source, size_t source_len) {
        struct daemon *d = ud;
        return source_lookup(d->source, blob, deadline_ms, ret_size, ret_source, source_len);
}

static int origin_size(void *ud, const char *source, const struct digest *blob,
                       uint64_t deadline_ms, uint64_t *ret_size, char *reason, size_t reason_len) {
        struct daemon *d = ud;
        return origin_blob_size(d->origin, source, blob, deadline_ms, ret_size, reason, reason_len);
}

struct engine_source_ops sources_engine_ops(struct daemon *d) {
        if (d->source)
                return (struct engine_source_ops){.ud = d,
                                                  .fetch = fetch_via_source,
                                                  .fetch_run = fetch_run_via_source,
                                                  .lookup = lookup_via_source,
                                                  .blob_size = origin_size};
        return (struct engine_source_ops){.ud = d,
                                          .fetch = fetch_from_origin,
                                          .fetch_run = fetch_run_from_origin,
                                          .lookup = NULL,
                                          .blob_size = origin_size};
}
