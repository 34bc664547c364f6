#!/bin/sh
# make lint: banned calls, then formatting. Exits non-zero on any finding.
set -u
cd "$(dirname "$0")/.."
status=0
SOURCES=$(git ls-files '*.c' '*.h')

# Calls that overflow or hide errors; use snprintf, strtoull with checks, strtok_r-free parsing.
banned='\<(strcpy|strcat|sprintf|vsprintf|gets|strtok|atoi|atol|atoll|atof)[[:space:]]*\('
if grep -nE "$banned" $SOURCES; then
	echo "lint: banned call(s) above; see CONVENTIONS.md" >&2
	status=1
fi

# FUSE stays in fs/ (the core is FUSE-free); SQL stays in index/.
if grep -lE '#include <fuse' $SOURCES | grep -v '^fs/'; then
	echo "lint: FUSE included outside fs/" >&2
	status=1
fi
# The engine reaches the network only through its operations table (engine_source_ops): none
# of its files includes anything from peer/ (reference parsing is util/ref.h).
if grep -lE '#include "peer/' engine/*.h engine/*.c; then
	echo "lint: engine/ includes a peer/ header; use engine_source_ops (or util/)" >&2
	status=1
fi
if grep -lE '#include <sqlite3.h>' $SOURCES | grep -v '^index/'; then
	echo "lint: SQLite used outside index/" >&2
	status=1
fi

# The OPTIONS entries of man/p2pblobsd.8 are generated from the option table (fs/config.c):
# regenerate them with a tiny program built on the fly (libinih only, no daemon build) and
# compare. `make man` rewrites the page.
if ! scripts/man-options.sh --check; then
	echo "lint: man/p2pblobsd.8 OPTIONS differ from the option table in fs/config.c (run: make man)" >&2
	status=1
fi

if command -v clang-format >/dev/null 2>&1; then
	unformatted=""
	for f in $SOURCES; do
		clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || unformatted="$unformatted $f"
	done
	if [ -n "$unformatted" ]; then
		echo "lint: not clang-formatted:$unformatted (run: clang-format -i FILE)" >&2
		status=1
	fi
fi
exit $status
