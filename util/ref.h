/* Blob references as operators type them: REGISTRY/REPOSITORY@sha256:<hex>.
 *
 * The registry is the first path component and is mandatory (host, host:port, [v6]:port);
 * the repository is one or more lowercase components of [a-z0-9._-] joined by '/', as the
 * OCI distribution spec allows. */
#pragma once
#include "util/digest.h"

#define REF_REGISTRY_MAX 256
#define REF_REPOSITORY_MAX 256

struct blob_ref {
        char registry[REF_REGISTRY_MAX];
        char repository[REF_REPOSITORY_MAX];
        struct digest digest;
};

/* Parses S. Returns 0, -EINVAL (malformed; nothing written), -ENAMETOOLONG,
 * -EPROTONOSUPPORT (a digest algorithm other than sha256). */
int ref_parse(const char *s, struct blob_ref *ret);

/* Splits a source "REGISTRY/REPOSITORY" (a blob's recorded source, no digest) into REF's
 * registry and repository; leaves REF->digest alone. Same errors as ref_parse. */
int ref_parse_source(const char *s, struct blob_ref *ref);

/* Validates a repository name alone (components of [a-z0-9._-] separated by '/', no empty
 * component, no leading/trailing separator). */
bool ref_repository_valid(const char *repo);
