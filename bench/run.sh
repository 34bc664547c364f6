#!/bin/sh
# make bench: measures, never asserts. Writes bench/RESULTS.md.
set -eu
BUILD=${1:?usage: bench/run.sh BUILD_DIR}
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/stream.py --build "$BUILD" --out bench/RESULTS.md
