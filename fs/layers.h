/* The layer trees in the FUSE tree: <mountpoint>/layers/sha256/<layer digest>/... (fs/fuse.c
 * hands these inodes over; layertree/ does the work).
 *
 *   layers/            directory
 *   layers/sha256/     the READY layers (a PENDING or FAILED one is ENOENT: a lookup never
 *                      waits for an index, so no FUSE thread sleeps; `blobctl layer add
 *                      --wait` is the way to wait)
 *   layers/sha256/<hex>/...  the layer's files as overlayfs wants a lower layer: modes,
 *                      owners, times, devices, FIFOs, symlinks, hard links (one inode, the
 *                      right st_nlink), whiteouts as character devices 0/0, opaque
 *                      directories with trusted.overlay.opaque=y, PAX xattrs.
 *
 * Inodes: FS_INO_LAYERS and FS_INO_LAYERS_SHA256 are fixed; a layer's file is
 * FS_LAYER_INO_BIT | layer id << 32 | file index (the canonical file for hard links), which
 * cannot meet a blob's inode (16 + engine id, below 2^33). Everything is immutable once a
 * layer is READY, so entries and attributes are cached for long and files open keep_cache. */
#pragma once
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ltree;

#define FS_INO_LAYERS 4
#define FS_INO_LAYERS_SHA256 5
#define FS_LAYER_INO_BIT (UINT64_C(1) << 63)

/* Sets the tree shown (NULL: none; waits for the requests using the old one). */
void fs_layers_set(struct ltree *lt);

/* Whether INO is one of ours (and the tree is set). */
bool fs_layers_owns(fuse_ino_t ino);
/* Whether the root lists "layers". */
bool fs_layers_enabled(void);

/* The handlers for our inodes: each replies exactly once. */
void fs_layers_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_layers_getattr(fuse_req_t req, fuse_ino_t ino);
void fs_layers_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_layers_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
void fs_layers_readlink(fuse_req_t req, fuse_ino_t ino);
void fs_layers_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_layers_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
/* Also for blob inodes (none have xattrs): a FUSE filesystem that answers ENOSYS once loses
 * xattrs for the whole mount, overlayfs's trusted.overlay.opaque included. */
void fs_layers_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void fs_layers_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
