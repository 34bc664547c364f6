#!/bin/sh
# The OPTIONS entries of man/p2pblobsd.8, between its BEGIN OPTIONS and END OPTIONS comments,
# are generated from the option table in fs/config.c by scripts/man-options.c.
#   scripts/man-options.sh           rewrite the page (make man)
#   scripts/man-options.sh --check   exit 1 when the page differs from the table (make lint)
set -eu
cd "$(dirname "$0")/.."
page=man/p2pblobsd.8
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CC=${CC:-cc}
# shellcheck disable=SC2046
if ! $CC -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. $(pkg-config --cflags inih) \
	-o "$tmp/man-options" scripts/man-options.c fs/config*.c util/parse.c util/log.c \
	$(pkg-config --libs inih) 2>"$tmp/cc.log"; then
	cat "$tmp/cc.log" >&2
	echo "man-options: cannot build the generator (make deps?)" >&2
	exit 2
fi
"$tmp/man-options" > "$tmp/options"
begin=$(grep -n '^\.\\" BEGIN OPTIONS' "$page" | cut -d: -f1)
end=$(grep -n '^\.\\" END OPTIONS' "$page" | cut -d: -f1)
if [ -z "$begin" ] || [ -z "$end" ]; then
	echo "man-options: $page has no BEGIN OPTIONS / END OPTIONS comments" >&2
	exit 2
fi
# The BEGIN comment is two lines.
{ head -n $((begin + 1)) "$page"; cat "$tmp/options"; tail -n +"$end" "$page"; } > "$tmp/page"
if [ "${1:-}" = "--check" ]; then
	if ! cmp -s "$tmp/page" "$page"; then
		diff -u "$page" "$tmp/page" >&2 || true
		exit 1
	fi
	exit 0
fi
cmp -s "$tmp/page" "$page" || cp "$tmp/page" "$page"
