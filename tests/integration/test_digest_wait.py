"""Digest questions that wait at the home (issue 18, the front of a wave). A reader holding a
claimant's bytes of a chunk whose only digest is the claimant's word asks another home for the
digest (peer/source_verify.c CONFIRM); the home holds the question until an announce brings the
digest (peer/httpd.c locate, peer/directory_locate.c dir_wait_digest), at most 64 questions at
once by default (--digest-waiters; test_digest_waiters.py checks the cap), answering the rest
at once. The reader then
asks about once per chunk instead of every 50 ms until the claimant's announce.

A claimant announces a chunk it was granted a claim on as soon as it lands (peer/announce.h
announce_claimed), at most one early round per 100 ms, so the digest reaches the other homes
in milliseconds rather than up to an announce interval later.

Real nodes in network namespaces (netns.py), a real registry, real FUSE mounts; counters from
/metrics. Figures are printed: run with -s to see them.
"""

import os
import threading
import time

import harness
from harness import MiB
from test_peers import PEER_PORT, REPO, full_read, start_nodes, wait_peers_up

CAP = 64          # peer/directory.h DIR_DEFAULT_DIGEST_WAITERS (fs/peers.c keeps the default)
STRIPES = 8       # concurrent readers on each node in the wave test


def metrics(net, d):
    return net.metrics(d.host.ip, PEER_PORT)


def delta(after, before, key):
    return after.get(key, 0) - before.get(key, 0)


def test_wave_readers_ask_once_per_confirmed_chunk(build_dir, net):
    """Three nodes, all homes of the blob (--homes 3); A and B read it at the same moment, H
    does not; each reads with STRIPES threads at once. Each chunk is claimed by one reader; the other gets it from the claimant (the
    claimant's word its only digest) and asks the third home for the digest. With a 1 s
    announce interval the digest comes up to 1 s later: polling every 50 ms asked up to ~20
    times a chunk (digest_wait_ms = 5 s); held at the home, it asks about once. Bytes right,
    the registry serves the blob about once."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    hosts = [net.add_host(n, s) for n in ("a", "b", "h")]
    blob = harness.make_blob(reg, "wave24", harness.gen_bytes(2701, 24 * MiB), repo=REPO)
    a, b, h = start_nodes(net, build_dir, reg, hosts,
                          extra=["--homes", "3", "--announce-interval", "1s"])
    wait_peers_up([a, b, h])
    for d in (a, b):
        d.add(blob.ref)
    harness.wait_until(lambda: all(st == 200 for st, _h, _b in
                                   (net.http(d.host.ip, PEER_PORT, "GET",
                                             "/p2p/v1/locate/%s?chunk=0" % blob.digest)
                                    for d in (a, b, h))),
                       15, interval=0.2, what="every home to know the blob")

    mark = reg.mark()
    m0 = {d.host.name: metrics(net, d) for d in (a, b, h)}
    errs = []

    def read(d, k):
        # Stripes: thread K of STRIPES reads chunks K, K + STRIPES, ... at once with the
        # other node's, so each node is at the front for the chunks the other claimed.
        try:
            fd = os.open(d.blob_path(blob.digest), os.O_RDONLY)
            try:
                for c in range(k, blob.size // MiB, STRIPES):
                    got = os.pread(fd, MiB, c * MiB)
                    if got != blob.data[c * MiB:(c + 1) * MiB]:
                        errs.append("%s: chunk %d wrong" % (d.host.name, c))
            finally:
                os.close(fd)
        except OSError as e:
            errs.append(e)
    ts = [threading.Thread(target=read, args=(d, k)) for d in (a, b) for k in range(STRIPES)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    wall = time.monotonic() - t0
    assert not errs, errs
    for d in (a, b):
        full_read(d, blob)
    m1 = {d.host.name: metrics(net, d) for d in (a, b, h)}
    served = reg.bytes_served(blob.digest, since=mark)

    def dl(name, key):
        return delta(m1[name], m0[name], key)
    queries = sum(dl(n, "peer_confirm_queries_total") for n in ("a", "b"))
    confirmed = sum(dl(n, "peer_confirmed_chunks_total") for n in ("a", "b"))
    unchecked = sum(dl(n, "peer_unchecked_chunks_total") for n in ("a", "b"))
    held = sum(dl(n, "directory_digest_waits_total") for n in ("a", "b", "h"))
    peak = max(m1[n].get("directory_digest_waiters_peak", 0) for n in ("a", "b", "h"))
    print("\n[wave] %d chunks: confirmed %d with %d digest questions (%.2f a chunk), held at "
          "homes %d (peak %d), unchecked %d; registry bytes %.3fx"
          % (blob.size // MiB, confirmed, queries, queries / confirmed if confirmed else 0,
             held, peak, unchecked, served / blob.size))
    for n in ("a", "b", "h"):
        print("  %s: %s" % (n, {k: dl(n, k) for k in sorted(m1[n]) if dl(n, k) and ("peer" in k or "director" in k or "origin" in k)}))
    assert confirmed >= 1, "no chunk came from a claimant before its digest: nothing tested"
    assert held >= 1, "no digest question was held at a home"
    # One home other than the sender is remote for each held chunk (the reader's own directory
    # is asked in memory): about one question a chunk; polling asked up to ~20.
    assert queries <= 2 * confirmed, "%d digest questions for %d confirmed chunks" % (
        queries, confirmed)
    assert peak <= CAP
    assert served <= 1.25 * blob.size, "the registry served %.2fx" % (served / blob.size)
    # The claimants announced their claimed chunks as they landed (announce_claimed), in at
    # most one early round per ANNOUNCE_EARLY_GAP_MS (100 ms) each, not one per chunk.
    early = {n: dl(n, "peer_announce_early_rounds_total") for n in ("a", "b")}
    print("[wave] early announce rounds %s in %.1f s" % (early, wall))
    assert sum(early.values()) >= 1, "no claimed chunk was announced early"
    for n, e in early.items():
        assert e <= wall / 0.1 + 2, "%s ran %d early rounds in %.1f s" % (n, e, wall)
