/* The daemon's parts, and the control API that exposes them (fs/api.c).
 *
 * main.c owns the lifecycle of struct daemon; api.c only reads it to answer blobctl. */
#pragma once
#include <stdatomic.h>
#include <time.h>

#include "fs/config.h"
#include "control/control.h"
#include "peer/httpd.h"

#define P2PBLOBS_VERSION "0.1.0"

struct store;
struct index;
struct origin;
struct engine;
struct fuse_session;
struct members;
struct netlink;
struct directory;
struct source;
struct announcer;
struct mirror;
struct ltree;

struct daemon {
        struct daemon_config cfg;
        struct store *store;
        struct index *ix;
        struct http_client *http; /* the one HTTP client: origin, probes, announces */
        struct origin *origin;
        struct engine *engine;
        struct control *control;
        struct fuse_session *se;
        struct resolver *resolver; /* FUSE lookups of digests other nodes know; NULL alone */
        struct httpd *httpd;
        struct mirror *mirror;
        struct snapshotter *snapshotter;
        struct netlink *nl;          /* NULL when netlink is unavailable */
        struct members *members;     /* peers; NULL when the node runs alone */
        struct directory *dir;       /* the home role: blobs this node is home for */
        struct source *source;       /* chunk fetches: peers, then the origin */
        struct announcer *announcer; /* tells homes what this node holds */
        struct ltree *layers;        /* layer trees (layertree/); freed before the engine */
        time_t started;
        atomic_bool serving; /* the mount answers and shutdown has not begun (/readyz) */
};

struct api_request;

/* A control API handler: one per row of net/api_routes.h's table, named there. Answers Q
 * with a new JSON value in *RET (0), or -errno with a reason (control/control.h maps it to a
 * status). Runs on the control server's threads and may block. */
typedef int (*api_handler_fn)(struct daemon *d, const struct api_request *q, json_t **ret,
                              char *reason, size_t reason_len);

/* The control-socket handlers bound to D (which must outlive the control server). */
struct control_ops api_control_ops(struct daemon *d);

/* /readyz and /metrics for the node's HTTP server, bound to D. */
struct httpd_ops api_httpd_ops(struct daemon *d);
