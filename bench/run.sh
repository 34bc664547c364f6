#!/bin/sh
# make bench: measures, never asserts. Builds the bench tools into BUILD/bench, runs every item
# and rewrites bench/RESULTS.md and bench/memory.png. Run as root.
#   bench/run.sh BUILD_DIR                 everything (what `make bench` runs)
#   bench/run.sh BUILD_DIR --only ITEM     one item (cached, cold, peer, swarm, memory, evict,
#                                          containerd, layer, start); prints its rows, leaves
#                                          RESULTS.md alone (layer, start: bench/bench_lazy.py)
# peer, swarm and containerd run several nodes in network namespaces (tests/integration/netns.py)
# and a private containerd (tests/integration/ctrd.py). Repetitions: --reps (cached, cold,
# peer; 5), --mem-reps (3), --swarm-reps (3), --swarm-max (8), --ctrd-reps (3).
set -eu
BUILD=${1:?usage: bench/run.sh BUILD_DIR [--only ITEM]...}
shift
cd "$(dirname "$0")/.."
CC=${CC:-cc}
mkdir -p "$BUILD/bench"
$CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o "$BUILD/bench/readbench" bench/readbench.c
$CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o "$BUILD/bench/evict_trace" bench/evict_trace.c -lm
$CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. -o "$BUILD/bench/evict_sim" bench/evict_sim.c \
	"$BUILD/libp2pblobs-core.a"
$CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. -o "$BUILD/bench/layer_pass" bench/layer_pass.c \
	"$BUILD/libp2pblobs-core.a" -pthread $(pkg-config --libs zlib libzstd libcrypto)
if [ $# -eq 0 ]; then
	exec /usr/bin/python3 bench/bench.py --build "$BUILD" --out bench/RESULTS.md
fi
exec /usr/bin/python3 bench/bench.py --build "$BUILD" "$@"
