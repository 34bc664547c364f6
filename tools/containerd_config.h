/* `blobctl containerd-config`: the hosts.toml files that send containerd's pulls through the
 * node's p2pblobs mirror, with fall-back to the origin. */
#pragma once

/* ARGV[0] is "containerd-config". Prints the files, or installs them with --write DIR.
 * Returns blobctl's exit status (0 ok, 1 a file could not be written, 2 bad arguments). */
int cmd_containerd_config(int argc, char **argv);
