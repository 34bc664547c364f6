#!/bin/bash
# p2pblobs demo, on this machine alone (run as root: it mounts FUSE).
#
#   scripts/demo.sh BUILD_DIR        (BUILD_DIR holds p2pblobsd and blobctl; `make demo` does this)
#
# Starts a real docker-registry on a free 127.0.0.1 port, generates and pushes a small sample
# image (a tar.gz layer of a few files, a ~64 MiB random layer, an OCI config and manifest),
# mounts the blobs with p2pblobsd, reads 1 MiB from the middle of the large layer and shows that
# only a few MiB came from the registry, checks the small layer's sha256 through the mount,
# and prints `blobctl stat`. Everything is removed on exit.
set -euo pipefail

BUILD_DIR=${1:-${P2PBLOBS_BUILD:-}}
if [ -z "$BUILD_DIR" ]; then
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
fi
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
DAEMON=$BUILD_DIR/p2pblobsd
BLOBCTL=$BUILD_DIR/blobctl
for b in "$DAEMON" "$BLOBCTL"; do
	[ -x "$b" ] || { echo "demo: $b not found; build first (make build)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "demo: run as root (FUSE mount)" >&2; exit 1; }
command -v docker-registry >/dev/null || { echo "demo: docker-registry not installed (make deps)" >&2; exit 1; }

REPO=demo/app
WORK=$(mktemp -d /tmp/p2pblobs-demo.XXXXXX)
MNT=$WORK/mnt
STATE=$WORK/state
SOCK=$WORK/ctl.sock
REG_PID=""
DAEMON_PID=""

cleanup() {
	set +e
	if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -TERM "$DAEMON_PID"
		for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$DAEMON_PID" 2>/dev/null
		wait "$DAEMON_PID" 2>/dev/null
	fi
	if grep -qs " $MNT " /proc/self/mountinfo; then
		fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
	fi
	if [ -n "$REG_PID" ] && kill -0 "$REG_PID" 2>/dev/null; then
		kill -TERM "$REG_PID"
		wait "$REG_PID" 2>/dev/null
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

heading() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }

mkdir -p "$MNT" "$STATE" "$WORK/registry"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT

# --------------------------------------------------------------------------------------------
heading "1. origin registry (docker-registry on $REG)"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: $REG
  secret: p2pblobs-demo
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do
	python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$REG/v2/', timeout=1)" 2>/dev/null && break
	kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry/registry.log"; exit 1; }
	sleep 0.1
done
echo "registry up, pid $REG_PID, storage $WORK/registry/storage"

# --------------------------------------------------------------------------------------------
heading "2. generate and push a sample image ($REPO:demo)"
python3 - "$REG" "$REPO" "$WORK/image.env" <<'PY'
import gzip, hashlib, io, json, random, sys, tarfile, urllib.parse, http.client

reg, repo, envfile = sys.argv[1:4]
host, port = reg.rsplit(":", 1)

def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()

def gz(data, level):
    return gzip.compress(data, compresslevel=level, mtime=0)

def push(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    c.request("POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
    r = c.getresponse(); r.read()
    assert r.status == 202, r.status
    loc = urllib.parse.urlsplit(r.getheader("Location"))
    c.request("PUT", "%s?%s&digest=%s" % (loc.path, loc.query, digest), body=data,
              headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
    return digest

rnd = random.Random(42)
small_tar = tar_of([
    ("etc/hostname", b"p2pblobs-demo\n"),
    ("etc/motd", b"Welcome to a lazily fetched container image.\n" * 20),
    ("app/config.json", json.dumps({"greeting": "hello", "workers": 4}).encode()),
    ("app/data.bin", rnd.randbytes(300 * 1024)),
])
big_tar = tar_of([("app/model.bin", rnd.randbytes(64 * 1024 * 1024))])
layers = [(small_tar, gz(small_tar, 6)), (big_tar, gz(big_tar, 1))]

config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/app/run"], "Env": ["PATH=/usr/bin:/bin"]},
    "rootfs": {"type": "layers",
               "diff_ids": ["sha256:" + hashlib.sha256(u).hexdigest() for u, _ in layers]},
}, sort_keys=True).encode()

cfg_digest = push(config)
layer_digests = [push(c) for _, c in layers]
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": cfg_digest, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d, "size": len(c)} for d, (_, c) in zip(layer_digests, layers)],
}, sort_keys=True).encode()
c = http.client.HTTPConnection(host, int(port), timeout=60)
c.request("PUT", "/v2/%s/manifests/demo" % repo, body=manifest,
          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
r = c.getresponse(); r.read()
assert r.status == 201, r.status
man_digest = r.getheader("Docker-Content-Digest")

print("manifest  %s  %9d bytes" % (man_digest, len(manifest)))
print("config    %s  %9d bytes" % (cfg_digest, len(config)))
for name, d, (_, comp) in zip(("small", "large"), layer_digests, layers):
    print("layer     %s  %9d bytes  (%s)" % (d, len(comp), name))
with open(envfile, "w") as f:
    f.write("CONFIG=%s\nSMALL=%s\nLARGE=%s\nLARGE_SIZE=%d\nMANIFEST=%s\n" % (
        cfg_digest, layer_digests[0], layer_digests[1], len(layers[1][1]), man_digest))
PY
# shellcheck disable=SC1091
. "$WORK/image.env"

# --------------------------------------------------------------------------------------------
heading "3. start p2pblobsd (mount $MNT)"
"$DAEMON" --foreground --mountpoint "$MNT" --state-dir "$STATE" --control-socket "$SOCK" \
	--config /dev/null --insecure-registry "$REG" --cache-budget 256M --log-level info \
	--listen "127.0.0.1:$HTTP_PORT" \
	>"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 200); do
	if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
		echo "p2pblobsd exited early:" >&2
		cat "$WORK/daemon.log" >&2
		exit 1
	fi
	mountpoint -q "$MNT" && [ -d "$MNT/blobs/sha256" ] && break
	sleep 0.1
done
mountpoint -q "$MNT" || { echo "p2pblobsd did not mount" >&2; cat "$WORK/daemon.log" >&2; exit 1; }
echo "p2pblobsd up, pid $DAEMON_PID"

# --------------------------------------------------------------------------------------------
heading "4. register the image's blobs (blobctl add)"
for d in "$CONFIG" "$SMALL" "$LARGE"; do
	printf '%s  ->  ' "$REG/$REPO@$d"
	"$BLOBCTL" --socket "$SOCK" add "$REG/$REPO@$d"
done

heading "5. the tree"
ls -l "$MNT/blobs/sha256/"

# --------------------------------------------------------------------------------------------
served() {  # bytes the registry's own log says it sent for blob $1
	grep -F "http.request.method=GET" "$WORK/registry/registry.log" |
		grep -F "/blobs/$1" |
		sed -n 's/.*http\.response\.written=\([0-9]*\).*/\1/p' |
		awk '{ s += $1 } END { print s + 0 }'
}
LARGE_HEX=${LARGE#sha256:}
MID=$((LARGE_SIZE / 2 + 12345))
heading "6. read 1 MiB from the middle of the $(mib "$LARGE_SIZE") layer"
echo "dd if=$MNT/blobs/sha256/${LARGE_HEX:0:12}... bs=1M count=1 skip=$MID (bytes)"
dd if="$MNT/blobs/sha256/$LARGE_HEX" of=/dev/null bs=1M count=1 skip="$MID" iflag=skip_bytes status=none
sleep 0.5 # the registry logs a response once it is complete
echo "registry log: served $(mib "$(served "$LARGE")") of this layer's $(mib "$LARGE_SIZE")"
ORIGIN=$("$BLOBCTL" --socket "$SOCK" stat --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["fetched"]["origin_bytes"])')
echo "daemon:       fetched $(mib "$ORIGIN") from the origin in total"

# --------------------------------------------------------------------------------------------
SMALL_HEX=${SMALL#sha256:}
heading "7. sha256sum of the small layer through the mount"
SUM=$(sha256sum "$MNT/blobs/sha256/$SMALL_HEX" | cut -d' ' -f1)
echo "sha256sum: $SUM"
echo "digest:    $SMALL_HEX"
if [ "$SUM" = "$SMALL_HEX" ]; then echo "OK: content matches its digest"; else echo "MISMATCH" >&2; exit 1; fi

# --------------------------------------------------------------------------------------------
heading "8. blobctl ls"
"$BLOBCTL" --socket "$SOCK" ls
heading "9. blobctl stat"
"$BLOBCTL" --socket "$SOCK" stat

heading "done (cleaning up $WORK)"
