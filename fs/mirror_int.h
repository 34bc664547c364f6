/* The mirror's private header (engine/engine_int.h's habit): the state every file of the mirror
 * shares and the prototypes of the internal functions one file defines and another calls. Nothing
 * outside fs/mirror*.c includes it; the contract is mirror.h.
 *
 * Internal functions are named mir_*. They run on the connection's thread (libmicrohttpd, one
 * thread per connection); `lock` is taken as mirror.c's essay says. */
#pragma once
#include "fs/mirror.h"

#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "engine/engine.h"
#include "net/route.h"
#include "registry/origin.h"
#include "util/digest.h"
#include "util/ref.h"

#define TAG_KEY_MAX (REF_REGISTRY_MAX + REF_REPOSITORY_MAX + ROUTE_REF_MAX + 3)
#define ODD_TYPES_MAX 256 /* digests whose odd media type was logged already */
#define DOWN_SLOTS 16     /* registries remembered as unreachable */
#define DOWN_MS 10000     /* how long an unreachable registry is believed down */

/* The media type the origin sent with manifest DIGEST; "" in type when the slot is free. */
struct type_entry {
        struct digest digest;
        char type[ORIGIN_MEDIA_TYPE_MAX];
        uint64_t used; /* last use, from use_clock */
};

struct tag_entry {
        char key[TAG_KEY_MAX]; /* "registry/repository:tag"; "" when free */
        struct digest digest;
        uint64_t used;
};

/* A registry our last manifest request found unreachable: until UNTIL_MS, blobs unknown to the
 * engine are refused at once rather than registered (which waits out the origin's retries, the
 * fetch timeout). Any successful manifest request clears it. */
struct down_entry {
        char registry[REF_REGISTRY_MAX];
        uint64_t until_ms;
};

struct mirror {
        struct mirror_config cfg;
        struct http_server *srv;
        atomic_bool stopping;
        char hosts_dir[PATH_MAX / 2]; /* "" when none */
        char *credentials;            /* --registry-config's JSON, or NULL */
        char **allow;                 /* the registry list and cfg.registries, copied */
        size_t n_allow;
        bool any_registry; /* "*" in the list */

        pthread_mutex_t lock;     /* protects everything below */
        struct type_entry *types; /* MIRROR_TYPES_MAX */
        uint64_t use_clock;
        struct tag_entry *tags; /* MIRROR_TAGS_MAX */
        struct digest odd[ODD_TYPES_MAX];
        size_t n_odd, odd_next;
        struct down_entry down[DOWN_SLOTS];
};

/* One blob response (or a whole manifest read through the engine): what mir_blob_reader() reads
 * from. */
struct blob_response {
        struct mirror *m;
        uint32_t id;
        struct digest digest;
        uint64_t start; /* first byte served (Range) */
        uint64_t len;   /* bytes served */
        struct engine_stream stream;
};

/* ---- mirror.c: replies ---- */

/* http_queue() of R (NULL-safe: the connection is closed) with the distribution API's version
 * header. */
enum MHD_Result mir_queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r);
/* A distribution-style error reply (CODE, MSG: our own fixed texts, see mirror.c). */
enum MHD_Result mir_error_reply(struct MHD_Connection *conn, unsigned status, const char *code,
                                const char *msg);

/* ---- mirror_blob.c ---- */

/* MHD's content reader for BR (CLS): up to MAX bytes at POS, read through the engine and waited
 * for (giving up when the mirror stops). Bytes, or MHD_CONTENT_READER_END_*. */
ssize_t mir_blob_reader(void *cls, uint64_t pos, char *buf, size_t max);
/* GET/HEAD of blob REF (a digest) of REGISTRY/NAME: registered with the engine when unknown. */
enum MHD_Result mir_serve_blob(struct mirror *m, struct MHD_Connection *conn, const char *registry,
                               const char *name, const char *ref);

/* ---- mirror_manifest.c ---- */

/* Whether our last manifest request found REGISTRY unreachable, less than DOWN_MS ago. */
bool mir_is_down(struct mirror *m, const char *registry);
/* GET/HEAD of manifest REF (a tag or a digest) of REGISTRY/NAME. */
enum MHD_Result mir_serve_manifest(struct mirror *m, struct MHD_Connection *conn,
                                   const char *registry, const char *name, const char *ref);
