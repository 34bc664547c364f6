"""Background prefetch of a started container's lazy layers, and the bytes a start fetched.

A real containerd 1.6 over the daemon's snapshotter (test_snapshotter_lazy.py's Node): an
image of three gzip layers, the top one 16 MiB of incompressible bytes with a small file at
its start. The pull builds each layer's index here (one pass, so every chunk lands); the big
layer's chunks are then evicted, so what a container start fetches is what its reads (or the
prefetch) bring back, from the origin, and nothing else.

- Prefetch off (the default): the container reads the small file and its output is right;
  the big layer is not fetched beyond that read (chunks_present stays below its chunks), and
  `blobctl snapshots` shows for the container's active snapshot the bytes its start fetched,
  bounded by the read's span and chunk rounding, and equal to what the origin sent.
- Prefetch on: the whole layer becomes held, the container's output is right (all 16 MiB
  read back whole), the prefetch counters say so.
- A layer over --snapshotter-prefetch-max-layer is skipped, not fetched; more layers at once
  than half the origin connections allow are lowered to fit.
- A layer over half the cache budget is skipped too (it would evict its own first chunks),
  whatever the cap.
"""

import hashlib
import json
import os

import pytest

import harness
import test_httpd
import test_snapshotter_lazy as lazy

node_factory = lazy.node_factory  # the fixture, re-exported for this module's tests

pytestmark = lazy.pytestmark

MiB = 1 << 20
BIG = 16 * MiB
SMALL = b"a small file at the start of a big layer\n"


def image(big_bytes):
    base, top = lazy.image_layers()
    big = lazy._tar_layer([("big", None, 0o755, 0), ("big/small.txt", SMALL, 0o644, 0),
                           ("big/blob.bin", big_bytes, 0o644, 0)])
    return [base, top, big]


def blobs(n):
    r = n.d.blobctl("ls", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return {b["digest"]: b for b in json.loads(r.stdout)}


def held(n, digest):
    b = blobs(n)[digest]
    return b["chunks_present"], b["chunks"]


def idle(n):
    """Nothing in flight: the fetches a read or a prefetch started have landed."""
    harness.wait_until(lambda: n.d.stat()["fetched"]["inflight_chunks"] == 0, 30,
                       what="no chunk fetch in flight")


def prepared(n, registry, repo, layers):
    """Pushes and pulls the image of LAYERS, then evicts the big layer: returns (digests, ref)."""
    img, ref = lazy.push(registry, repo, layers)
    n.rpull(ref)
    big = img["layers"][2]
    assert sum(1 for s in n.snapshots() if s["remote"]) == 3
    idle(n)
    r = n.d.blobctl("evict", big)
    assert r.returncode == 0, r.stdout + r.stderr
    assert held(n, big)[0] == 0
    return img, ref


def run_kept(n, ref, cid, script):
    """ctr run without --rm: the container (and its active snapshot, key CID) stays."""
    r = n.c.ctr("run", "--snapshotter", "p2pblobs", ref, cid, "/bin/busybox", "sh", "-c",
                script, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + n.c.log_text()[-3000:] + n.log_tail()
    return r.stdout


def start_of(n, cid):
    """The active snapshot of container CID (containerd names it <namespace>/<n>/<key>)."""
    snaps = [s for s in n.snapshots() if s["key"].endswith("/" + cid)]
    assert len(snaps) == 1, n.snapshots()
    return snaps[0]


def test_prefetch_off_fetches_only_what_the_container_reads(node_factory, private_registry):
    n = node_factory()
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    layers = image(os.urandom(BIG))
    img, ref = prepared(n, private_registry, "snapprefetch/off", layers)
    big = img["layers"][2]
    before = private_registry.bytes_served(big)
    assert run_kept(n, ref, "off1", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    idle(n)
    present, chunks = held(n, big)
    assert 0 < present < chunks, (present, chunks)
    st = n.d.stat()
    assert st["snapshotter"]["prefetch"]["queued"] == 0, st["snapshotter"]
    assert st["snapshotter"]["starts"] == 1, st["snapshotter"]  # the layers' Prepares are not
    # The container's start: its three lowers are remote; the bytes fetched since its Prepare
    # are the big layer's read (the others were held), at most one span of the index (2 MiB)
    # plus a chunk at each end; the chunks that landed, no more than the origin sent for
    # that layer meanwhile (an abandoned, retried request would send more).
    s = start_of(n, "off1")
    assert s["kind"] == "active" and s["remote_lowers"] == 3, s
    assert s["start_counted_since"] == "prepare", s
    origin = private_registry.bytes_served(big) - before
    assert 0 < s["start_fetched_bytes"] <= 2 * MiB + 2 * MiB, s
    assert s["start_fetched_bytes"] <= origin, (s, origin)
    assert (present - 1) * MiB < s["start_fetched_bytes"] <= present * MiB, (s, present)
    # The total counts every layer's index pass here (each fetched its layer whole) and this
    # read of the evicted one.
    passes = sum(len(blob) for blob, _diff in layers)
    assert n.d.stat()["snapshotter"]["lazy_fetched_bytes"] >= passes + s["start_fetched_bytes"]
    # A second container over the same layers: its own count starts at its own Prepare.
    assert run_kept(n, ref, "off2", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    assert start_of(n, "off2")["start_fetched_bytes"] == 0
    assert n.d.stat()["snapshotter"]["starts"] == 2
    # The human table shows the figure in the START column.
    r = n.d.blobctl("snapshots")
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.rstrip().endswith("/off1")]
    assert line and (" %d " % s["start_fetched_bytes"]) in line[0], r.stdout
    assert "bytes fetched for their starts" in r.stdout, r.stdout
    # After a restart the Prepare's figure is gone (the engine's counts start again): the
    # snapshot says its count runs from the daemon's start, and the table marks it.
    n.d.restart()
    harness.wait_until(lambda: os.path.exists(n.sock), 20, what="snapshotter socket")
    n.wait_reconnected()
    s = start_of(n, "off1")
    assert s["start_counted_since"] == "daemon start" and s["start_fetched_bytes"] == 0, s
    r = n.d.blobctl("snapshots")
    line = [l for l in r.stdout.splitlines() if l.rstrip().endswith("/off1")]
    assert line and " 0* " in line[0], r.stdout
    for cid in ("off1", "off2"):
        n.c.ctr("containers", "rm", cid)


def test_prefetch_on_holds_the_whole_layer(node_factory, private_registry):
    n = node_factory(["--snapshotter-prefetch"])
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    data = os.urandom(BIG)
    layers = image(data)
    img, ref = prepared(n, private_registry, "snapprefetch/on", layers)
    big = img["layers"][2]
    assert run_kept(n, ref, "on1", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    harness.wait_until(lambda: held(n, big)[0] == held(n, big)[1], 60,
                       what="the prefetched layer held whole")
    harness.wait_until(lambda: n.d.stat()["snapshotter"]["prefetch"]["prefetched"] >= 1, 30,
                       what="the prefetch counted")
    pf = n.d.stat()["snapshotter"]["prefetch"]
    # The three layers were queued (at each of containerd's Mounts of the start); the two
    # held ones were no-ops; the big one ran once.
    assert pf["queued"] >= 3 and pf["started"] == 1 and pf["prefetched"] == 1, pf
    assert pf["skipped"] == 0 and pf["failed"] == 0 and pf["active"] == 0, pf
    # The same figures on /metrics.
    _status, _ctype, body = test_httpd.get(n.d.listen, "/metrics")
    m = test_httpd.parse_metrics(body)
    assert m['p2pblobs_snapshotter_prefetch_layers_total{outcome="prefetched"}'] == 1, m
    assert m['p2pblobs_snapshotter_prefetch_layers_total{outcome="started"}'] == 1, m
    assert m["p2pblobs_snapshotter_prefetch_active"] == 0, m
    assert (m["p2pblobs_snapshotter_lazy_fetched_bytes_total"]
            == n.d.stat()["snapshotter"]["lazy_fetched_bytes"]), m
    # blobctl stat's human lines say the same.
    r = n.d.blobctl("stat")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 prefetched, 0 skipped, 0 failed, 0 running" in r.stdout, r.stdout
    assert "1 container snapshots over lazy layers;" in r.stdout, r.stdout
    assert "MiB of lazy layers fetched from peers and origins" in r.stdout, r.stdout
    # The start's count includes the prefetch: the whole layer, once.
    s = start_of(n, "on1")
    assert s["start_fetched_bytes"] >= len(layers[2][0]) - MiB, s
    # What the container reads now comes from the held chunks, and is right.
    before = private_registry.bytes_served(big)
    out = run_kept(n, ref, "on2", "/bin/busybox sha256sum /big/blob.bin")
    assert out.split()[0] == hashlib.sha256(data).hexdigest(), out
    assert private_registry.bytes_served(big) == before
    assert start_of(n, "on2")["start_fetched_bytes"] == 0
    for cid in ("on1", "on2"):
        n.c.ctr("containers", "rm", cid)


def test_a_layer_over_the_cap_is_not_prefetched(node_factory, private_registry):
    n = node_factory(["--snapshotter-prefetch", "--snapshotter-prefetch-max-layer", "8M",
                      "--snapshotter-prefetch-layers", "4"])
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    # 4 layers of 8 fetches each would take every one of the default 16 origin connections:
    # lowered to the one that leaves half of them to readers.
    assert "layer prefetch narrowed layers=1 asked=4 max_connections=16" in n.d.log_text()
    img, ref = prepared(n, private_registry, "snapprefetch/cap", image(os.urandom(BIG)))
    big = img["layers"][2]
    assert run_kept(n, ref, "cap1", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    harness.wait_until(lambda: n.d.stat()["snapshotter"]["prefetch"]["skipped"] >= 1, 30,
                       what="the big layer skipped")
    idle(n)
    pf = n.d.stat()["snapshotter"]["prefetch"]
    assert pf["skipped"] == 1 and pf["started"] == 0, pf
    present, chunks = held(n, big)
    assert present < chunks, (present, chunks)
    n.c.ctr("containers", "rm", "cap1")


def test_a_layer_over_half_the_budget_is_not_prefetched(node_factory, private_registry):
    # 24 MiB of budget holds the 16 MiB layer (its index pass, then the container's read), but
    # prefetching it would take more than half: skipped, though under the 1G default cap.
    n = node_factory(["--snapshotter-prefetch", "--cache-budget", "24M"])
    if not n.has_layer_trees():
        pytest.skip("this daemon has no layer trees (<mountpoint>/layers): nothing to serve")
    img, ref = prepared(n, private_registry, "snapprefetch/budget", image(os.urandom(BIG)))
    big = img["layers"][2]
    assert run_kept(n, ref, "budget1", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    harness.wait_until(lambda: n.d.stat()["snapshotter"]["prefetch"]["skipped"] >= 1, 30,
                       what="the big layer skipped")
    idle(n)
    pf = n.d.stat()["snapshotter"]["prefetch"]
    assert pf["skipped"] == 1 and pf["started"] == 0 and pf["failed"] == 0, pf
    assert ("layer prefetch skipped layer=%s reason=\"larger than half the cache budget\"" % big
            in n.d.log_text()), n.log_tail()
    present, chunks = held(n, big)
    assert 0 < present < chunks, (present, chunks)
    # A second start over it is not counted again (the skip is remembered).
    assert run_kept(n, ref, "budget2", "/bin/busybox cat /big/small.txt") == SMALL.decode()
    assert n.d.stat()["snapshotter"]["prefetch"]["skipped"] == 1
    for cid in ("budget1", "budget2"):
        n.c.ctr("containers", "rm", cid)
