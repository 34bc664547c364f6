#!/bin/sh
# Installs every Debian package p2pblobs needs to build, test, fuzz and run.
# Idempotent and quiet when everything is already there.
set -eu
PACKAGES="
  gcc make pkg-config clang libclang-rt-14-dev
  libfuse3-dev fuse3
  libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev libinih-dev
  libssl-dev libsqlite3-dev sqlite3 libsystemd-dev libzstd-dev zlib1g-dev libnl-3-dev libnl-route-3-dev
  libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
  golang-go golang-github-containerd-containerd-dev
  golang-github-containerd-stargz-snapshotter-dev
  libcmocka-dev python3 python3-pytest python3-grpcio python3-protobuf
  docker-registry iproute2 util-linux procps tmux openssl
  systemd python3-yaml groff-base
  dnsmasq-base containerd runc gnuplot-nox curl busybox-static stargz-snapshotter zstd
"
missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing packages:$missing; run 'make deps' as root" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
