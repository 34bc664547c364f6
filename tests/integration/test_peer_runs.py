"""Issues 15 and 18, the reader's side of the peer path: a blob's locate answer is kept for a
moment (one question per blob, not one per chunk miss), and consecutive chunks one peer holds
come in one ranged GET, each chunk checked against its own digest from a home. Faults in the
middle of such a run (a holder that dies, a link that goes silent, corrupt bytes) leave the
reader with the right bytes: the chunks not yet in go to their next sources one by one.

Real nodes in network namespaces (netns.py), a real registry. The counters are the daemon's
/metrics: peer_run_transfers_total, peer_run_chunks_total, peer_locate_cache_hits_total,
peer_locates_total.
"""

import os

import harness
from harness import MiB
from test_peers import (PEER_PORT, REPO, TimedRead, full_read, start_nodes, wait_announced,
                        wait_peers_up)


def metrics(net, d):
    """The unlabelled samples of D's peer-port /metrics (netns.Net.metrics)."""
    return net.metrics(d.host.ip, PEER_PORT)


def two_nodes_a_holds(net, build_dir, name, size, seed):
    """Nodes A and B, a blob of SIZE that A read from the registry and announced."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, name, harness.gen_bytes(seed, size), repo=REPO)
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [a, b], a, blob)
    b.add(blob.ref)
    return reg, blob, a, b


def test_runs_from_one_holder_and_few_locates(build_dir, net):
    """B reads a 64 MiB blob that only A holds: the bytes are right, none come from the
    registry, most chunks arrive in multi-chunk GETs to A, and B asks the homes far fewer
    questions than it has chunk misses (the answer carries every chunk's holders)."""
    reg, blob, a, b = two_nodes_a_holds(net, build_dir, "runs64", 64 * MiB, 801)
    nchunks = blob.size // MiB
    mark = reg.mark()
    before = metrics(net, b)
    full_read(b, blob)
    after = metrics(net, b)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    served = reg.bytes_served(blob.digest, since=mark)
    print("\n[runs] %d chunks: run GETs %d carrying %d chunks, locates %d, cache hits %d, "
          "peer failures %d, registry bytes %d"
          % (nchunks, d.get("peer_run_transfers_total", 0), d.get("peer_run_chunks_total", 0),
             d.get("peer_locates_total", 0), d.get("peer_locate_cache_hits_total", 0),
             d.get("peer_transfer_failures_total", 0), served))
    assert served == 0
    assert d.get("peer_run_transfers_total", 0) >= 1, "no chunk run was fetched in one GET"
    assert d.get("peer_run_chunks_total", 0) >= nchunks // 2, d
    assert d.get("peer_locate_cache_hits_total", 0) >= 1, d
    assert d.get("peer_locates_total", 0) <= nchunks // 4, \
        "B asked the homes %d times for %d chunks" % (d.get("peer_locates_total", 0), nchunks)


def test_corrupt_chunk_mid_run(build_dir, net):
    """A's store is overwritten in the middle of the blob after A read it: the chunk that
    fails its digest in B's run is fetched elsewhere, the run's later chunks too, and B's
    reader sees only right bytes."""
    reg, blob, a, b = two_nodes_a_holds(net, build_dir, "runbad64", 64 * MiB, 802)
    store = a.chunk_file(blob.digest)
    off, n = 30 * MiB + 4321, 4096
    fd = os.open(store, os.O_WRONLY)
    try:
        assert os.pwrite(fd, bytes(x ^ 0x5A for x in blob.data[off:off + n]), off) == n
        os.fsync(fd)
    finally:
        os.close(fd)
    b.expect_log(r"peer sent a corrupt chunk")
    mark = reg.mark()
    full_read(b, blob)
    m = metrics(net, b)
    served = reg.bytes_served(blob.digest, since=mark)
    print("\n[corrupt mid-run] run GETs %d, corrupt %d, registry bytes %d"
          % (m.get("peer_run_transfers_total", 0), m.get("peer_corrupt_chunks_total", 0),
             served))
    assert m.get("peer_run_transfers_total", 0) >= 1
    assert served >= MiB, "the corrupt chunk was not refetched from the origin"


def test_holder_dies_mid_run(build_dir, net):
    """A is killed (kill -9) while B reads in runs from it: B finishes from the origin with
    the right bytes."""
    reg, blob, a, b = two_nodes_a_holds(net, build_dir, "rundie128", 128 * MiB, 803)
    mark = reg.mark()
    killed = {}

    def progress(n):
        if n >= blob.size // 2 and not killed:
            killed["at"] = n
            a.kill9()

    r = TimedRead(b.blob_path(blob.digest), on_progress=progress).start()
    r.join(180)
    m = metrics(net, b)
    served = reg.bytes_served(blob.digest, since=mark)
    print("\n[dies mid-run] killed at %d MiB; %s; registry bytes %d"
          % (killed.get("at", 0) // MiB, {k: v for k, v in m.items() if k.startswith("peer_")},
             served))
    assert killed, "A was never killed"
    assert (r.digest, r.n) == (blob.digest, blob.size)
    assert m.get("peer_run_transfers_total", 0) >= 1
    assert served > 0, "nothing came from the registry after A died"


def test_silent_holder_mid_run(build_dir, net):
    """A's link goes silent while B reads in runs from it: B's run stalls, is given up, and
    the rest comes from the origin, bytes right."""
    reg, blob, a, b = two_nodes_a_holds(net, build_dir, "runsilent128", 128 * MiB, 804)
    mark = reg.mark()
    cut = {}

    def progress(n):
        if n >= blob.size // 4 and not cut:
            cut["at"] = n
            net.link_down(a.host)

    try:
        r = TimedRead(b.blob_path(blob.digest), on_progress=progress).start()
        r.join(180)
        m = metrics(net, b)
        served = reg.bytes_served(blob.digest, since=mark)
    finally:
        if a.host.link_is_down:
            net.link_up(a.host)
    assert cut, "the link was never cut"
    assert (r.digest, r.n) == (blob.digest, blob.size)
    assert m.get("peer_run_transfers_total", 0) >= 1
    assert served > 0, "the rest did not come from the origin"
