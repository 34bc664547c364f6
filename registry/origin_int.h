/* The registry client's private parts, shared by origin.c (fetches, attempts, answers) and
 * origin_token.c (bearer and basic credentials, the fetches parked on a token). Not for
 * other modules: registry/origin.h is the interface. Locking: see origin.c's essay. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/http_client.h"
#include "registry/auth.h"
#include "registry/origin.h"
#include "util/ref.h"

#define TOKEN_SLOTS 64  /* cached bearer tokens (one per repository) */
#define HEALTH_SLOTS 32 /* registries whose up/down state we remember */
#define TOKEN_BODY_MAX (64 << 10)
#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_REDIRECTS 5
#define CREDENTIALS_MAX 1024
#define URL_MAX 2048
/* curl's default 16 KiB receive buffer costs a recvfrom and a callback per 16 KiB (34k of
 * each per 512 MiB); 512 KiB measured +7% on a cold read. The memory: this per blob transfer,
 * at most max_connections of them. */
#define ORIGIN_RECV_BUFFER HTTP_CLIENT_RECV_BUFFER

/* Manifests are asked for with every manifest and index type we know, and anything else last:
 * a registry then answers with the type it stored (artifacts, attestations, vendor types). */
#define MANIFEST_ACCEPT                                                                            \
        "Accept: application/vnd.oci.image.index.v1+json, "                                        \
        "application/vnd.oci.image.manifest.v1+json, "                                             \
        "application/vnd.docker.distribution.manifest.list.v2+json, "                              \
        "application/vnd.docker.distribution.manifest.v2+json, */*;q=0.1"
#define MANIFEST_REFERENCE_MAX 136 /* a 128-character tag, or "sha256:" and 64 hex */

enum job_kind { JOB_GET, JOB_HEAD, JOB_TOKEN, JOB_MANIFEST_GET, JOB_MANIFEST_HEAD };

struct token_slot;

struct job {
        struct origin *o;
        struct job *next; /* parked on a token fetch */
        enum job_kind kind;
        char registry[REF_REGISTRY_MAX];
        char repository[REF_REPOSITORY_MAX];
        struct digest blob;
        uint64_t deadline_ms;
        unsigned attempt;
        bool once;       /* transient failures fail at once instead of being retried */
        bool auth_tried; /* a 401 already led to (re)authentication */
        char reference[MANIFEST_REFERENCE_MAX]; /* manifest jobs: tag or digest */
        size_t max_len;                         /* manifest GET: the caller's size limit */
        struct origin_manifest *mout;           /* manifest jobs: filled on success */
        struct token_slot *token;               /* JOB_TOKEN: the slot it fills */
        char *token_url;                        /* JOB_TOKEN */
        origin_done_fn done;
        void *ud;

        /* A GET is a run (origin_fetch_run; origin_fetch() is a run of one chunk): RUN_N
         * chunks of CHUNK_SIZE bytes from RUN_OFF, the last one ending at RUN_END. RUN_DONE of
         * them were delivered already; [off, off + len) is what is left, so a retry asks only
         * for that. buf holds the chunk being received (got bytes of it), never more than one
         * chunk: a run costs one chunk of memory whatever its length. UDS[i] is chunk i's. */
        uint64_t off;
        size_t len;
        unsigned run_n, run_done;
        size_t chunk_size;
        uint64_t run_off, run_end;
        void **uds;
        int answer;    /* this attempt's answer: 0 unchecked, 1 our bytes, -1 not */
        bool overflow; /* we ended the body ourselves: not our bytes, or our part is in */
        uint8_t *buf;
        size_t got;
        uint64_t run_bytes; /* delivered, for the byte counter */
};

struct token_slot {
        char key[REF_REGISTRY_MAX + REF_REPOSITORY_MAX + 2]; /* "registry|repository" */
        char value[4096]; /* "Bearer ..." or "Basic ..." header value; "" when none */
        uint64_t expires_ms;
        uint64_t used_ms;
        bool fetching;
        struct job *parked; /* fetches waiting for this token */
};

struct health_slot {
        char registry[REF_REGISTRY_MAX];
        bool failing;
        uint64_t failures;
};

struct origin {
        struct origin_config cfg;
        char **insecure;        /* owned copies */
        char *credentials_json; /* NULL when none */
        char *ca_file;
        struct http_client *http; /* cfg.http, or our own (own_http) */
        bool own_http;
        struct http_group *group; /* our attempts; capped at max_connections */

        pthread_mutex_t lock; /* stats, tokens, health, stopping */
        bool stopping;
        struct origin_stats stats;
        struct token_slot tokens[TOKEN_SLOTS];
        struct health_slot health[HEALTH_SLOTS];
};

/* Ends J's fetch: DONE for every chunk not delivered (a run) or once, with ERR; frees J. */
void origin_job_finish(struct origin *o, struct job *j, int err, const char *reason);
void origin_job_free(struct job *j);
/* Submits one attempt of J, to start no earlier than NOT_BEFORE; a refusal ends J. */
void origin_submit_attempt(struct origin *o, struct job *j, uint64_t not_before);

/* origin_token.c. The "Authorization: ..." line for J into OUT; false when there is none. */
bool origin_auth_header(struct origin *o, const struct job *j, char *out, size_t len);
/* config.json credentials ("user:pass") for REGISTRY into OUT; false when none. */
bool origin_credentials_for(struct origin *o, const char *registry, char *out, size_t len);
/* Starts or joins a token fetch for J after a 401 carrying CH (J is parked on it). */
void origin_authenticate(struct origin *o, struct job *j, const struct auth_challenge *ch);
/* The end of token job TJ's attempt R: the token is stored and the parked fetches go on, or
 * they fail. Frees TJ. */
void origin_token_done(struct origin *o, struct job *tj, const struct http_response *r);
/* Ends J with ERR whatever its kind: a token job takes its parked fetches with it. */
void origin_job_abort(struct origin *o, struct job *j, int err, const char *reason);
