/* The peer protocol's names in one place: the paths one node asks another for and the headers
 * it sends or answers with. The bodies are peer/wire.h's; what each route answers is in
 * peer/httpd.h. Clients (peer/source.c, peer/announce.c, peer/members.c) and the server
 * (peer/httpd.c, net/route.c) must agree on every byte of these, and a node of another
 * version must too: change one only with a new /p2p/vN/ and both spoken for a release. */
#pragma once

/* Paths. The ones ending in '/' or ':' take what follows (a digest's hex, a query). */
#define PROTO_ANNOUNCE_PATH "/p2p/v1/announce"          /* POST, wire_announce body */
#define PROTO_LOCATE_PREFIX "/p2p/v1/locate/"           /* + a digest (net/route.c) */
#define PROTO_LOCATE_PATH PROTO_LOCATE_PREFIX "sha256:" /* + hex [?chunk=I[&node=ID]] */
#define PROTO_INDEX_PREFIX "/p2p/v1/index/"             /* + a layer's digest */
#define PROTO_INDEX_PATH PROTO_INDEX_PREFIX "sha256:"   /* + layer hex */
#define PROTO_BLOB_PATH "/v2/p2pblobs/blobs/sha256:"    /* + hex; any repository name works */
#define PROTO_HEALTHZ_PATH "/healthz"                   /* liveness probe between members */
#define PROTO_READYZ_PATH "/readyz"

/* Query arguments of a locate: the chunk asked about, and the asker's node id (a claim). */
#define PROTO_ARG_CHUNK "chunk"
#define PROTO_ARG_NODE "node"

/* Headers. */
#define PROTO_TOKEN_HEADER "X-P2PBlobs-Token"               /* the cluster token */
#define PROTO_WAIT_HEADER "X-P2PBlobs-Wait"                 /* ms to wait for a claimed chunk */
#define PROTO_CHUNK_DIGEST_HEADER "X-P2PBlobs-Chunk-Digest" /* sender's word: never trusted */
#define PROTO_CHUNK_SIZE_HEADER "X-P2PBlobs-Chunk-Size"
