"""Digest questions that wait at the home (issue 18, the front of a wave). A reader holding a
claimant's bytes of a chunk whose only digest is the claimant's word asks another home for the
digest (peer/source_verify.c CONFIRM); the home holds the question until an announce brings the
digest (peer/httpd.c locate, peer/directory_locate.c dir_wait_digest), at most 64 questions at
once (peer/directory.h DIR_DEFAULT_DIGEST_WAITERS), answering the rest at once. The reader then
asks about once per chunk instead of every 50 ms until the claimant's announce.

A claimant announces a chunk it was granted a claim on as soon as it lands (peer/announce.h
announce_claimed), at most one early round per 100 ms, so the digest reaches the other homes
in milliseconds rather than up to an announce interval later.

Real nodes in network namespaces (netns.py), a real registry, real FUSE mounts; counters from
/metrics. Figures are printed: run with -s to see them.
"""

import hashlib
import json
import os
import threading
import time

import harness
from harness import MiB
from liar import chain_values
from test_peers import PEER_PORT, REPO, full_read, start_nodes, wait_peers_up

CAP = 64          # peer/directory.h DIR_DEFAULT_DIGEST_WAITERS (fs/peers.c keeps the default)
STRIPES = 8       # concurrent readers on each node in the wave test
PER_CLIENT = 32   # peer/httpd.h HTTPD_MAX_PER_CLIENT: questions one address may have open


def metrics(net, d):
    return net.metrics(d.host.ip, PEER_PORT)


def delta(after, before, key):
    return after.get(key, 0) - before.get(key, 0)


def test_home_holds_digest_questions_up_to_its_cap(build_dir, net):
    """One node H, the home of its blob (it registered it: the blob is known, no chunk digest
    is). Three clients send CAP + 5 digest questions about chunk 0 with X-P2PBlobs-Wait: 10 s
    (no more than PER_CLIENT from one address). H holds CAP of them and answers the other 5 at
    once without the digest; then H reads the blob, its announce records chunk 0's digest, and
    every held question is answered with it (woken: the wait was 10 s)."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    hh = net.add_host("h", s)
    clients = [net.add_host("c%d" % i, s) for i in range(3)]
    blob = harness.make_blob(reg, "wait4", harness.gen_bytes(2601, 4 * MiB), repo=REPO)
    want0 = hashlib.sha256(blob.data[:MiB]).hexdigest()
    chain0 = chain_values(blob.data, MiB)[0]
    (h,) = start_nodes(net, build_dir, reg, [hh])
    h.add(blob.ref)
    path = "/p2p/v1/locate/%s?chunk=0" % blob.digest

    def known():
        st, _h, _b = net.http(hh.ip, PEER_PORT, "GET", path)
        return st == 200
    harness.wait_until(known, 15, interval=0.2, what="H's directory to know the blob")

    n = CAP + 5
    answers = [None] * n

    def ask(i):
        c = clients[i % len(clients)]
        st, _hdr, body = c.http(hh.ip, PEER_PORT, "GET", path,
                                headers={"X-P2PBlobs-Wait": "10000"}, timeout=20)
        answers[i] = (st, json.loads(body) if st == 200 else body)
    assert n <= len(clients) * PER_CLIENT
    m0 = metrics(net, h)
    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def settled():
        m = metrics(net, h)
        return (delta(m, m0, "directory_digest_waits_total") >= CAP and
                delta(m, m0, "directory_digest_waits_refused_total") >= n - CAP)
    harness.wait_until(settled, 15, interval=0.1, what="H to hold %d questions" % CAP)
    m1 = metrics(net, h)
    early = [a for a in answers if a is not None]
    print("\n[digest wait cap] %d questions: held %d (peak %d), refused %d, answered early %d"
          % (n, delta(m1, m0, "directory_digest_waits_total"),
             m1.get("directory_digest_waiters_peak", 0),
             delta(m1, m0, "directory_digest_waits_refused_total"), len(early)))
    assert delta(m1, m0, "directory_digest_waits_total") == CAP
    assert delta(m1, m0, "directory_digest_waits_refused_total") == n - CAP
    assert m1.get("directory_digest_waiters_peak", 0) == CAP
    # The refused ones were answered at once, as without the header: no digest of chunk 0.
    assert len(early) == n - CAP, "%d answered while %d should be held" % (len(early), CAP)
    for st, body in early:
        assert st == 200
        assert all(d[0] != 0 for d in body.get("digests", []) + body.get("chain", []))

    full_read(h, blob)
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads), "held questions were never answered"
    m2 = metrics(net, h)
    # H reads in order, so chunk 0 gets a chain value (what a reader checks it by: chunk 0
    # starts from SHA-256's initial state), or a plain digest if it landed out of order.
    with_digest = 0
    for st, body in answers:
        assert st == 200
        ds = {d[0]: d[1] for d in body.get("digests", [])}
        cs = {d[0]: d[1] for d in body.get("chain", [])}
        if 0 in ds:
            assert ds[0].removeprefix("sha256:") == want0
        if 0 in cs:
            assert cs[0].removeprefix("sha256:") == chain0
        with_digest += 0 in ds or 0 in cs
    print("[digest wait cap] after H's read: %d answers carry chunk 0's digest or chain value; "
          "found %d"
          % (with_digest, delta(m2, m0, "directory_digest_waits_found_total")))
    assert with_digest == CAP
    assert delta(m2, m0, "directory_digest_waits_found_total") == CAP
    assert m2.get("directory_digest_waiters_peak", 0) == CAP


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
