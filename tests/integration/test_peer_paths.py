"""Peer paths that only unit tests covered: a reader that is a home planning from its own
directory (peer/source_plan.c own_answer), the CONFIRM rounds for bytes whose only digest is
their sender's word (peer/source_verify.c), the peer server's readahead only for peers reading
in order (engine/serve.c eng_serve_in_order), and queued transfers to a peer that went down
while they waited (peer/source_xfer.c still_wanted, the HTTP client's may_start).

Real nodes in network namespaces (netns.py), a real registry, real FUSE mounts; a lying member
(liar.py) where no honest node may know a digest. Counters: the nodes' /metrics and
`blobctl stat --json`. Blobs are picked by their homes (rdv.py, peer/rendezvous.c in Python)
where the path under test depends on which home a reader would ask first. Figures are printed:
run with -s to see them.
"""

import ctypes
import ctypes.util
import mmap
import os
import random
import threading

import harness
import rdv
from harness import MiB
from test_peers import (PEER_PORT, REPO, full_read, node_flags, start_nodes, wait_announced,
                        wait_peers_up)
from test_trust import liar_chunk_gets, start_liar

CONFIRM_POLL_MS = 50   # peer/source_int.h: the pause between CONFIRM rounds
# Rounds a held chunk's CONFIRM takes when homes hold the question (source_verify.c: each
# waits up to half of digest_wait_ms; a third only when a wait ended early, e.g. at a cap).
CONFIRM_ROUNDS_HELD = 3
MAX_PER_PEER = 8       # fs/peers.c: chunk transfers to one peer at once


def metrics(net, d):
    return net.metrics(d.host.ip, PEER_PORT)


def delta(after, before, key):
    return after.get(key, 0) - before.get(key, 0)


def pick_blob(reg, name, seed, size, want):
    """A blob of SIZE pushed to REG whose digest satisfies WANT(digest): the bytes of the first
    seed from SEED on that does (each try costs a sha256 of SIZE bytes; WANT holds for a half
    or a twelfth of all digests in the uses here, so 256 seeds all fail with odds < 1e-9)."""
    for s in range(seed, seed + 256):
        data = harness.gen_bytes(s, size)
        if want(harness.sha256_digest(data)):
            return harness.make_blob(reg, name, data, repo=REPO)
    raise AssertionError("no digest among 256 seeds has the homes the test needs")


# --------------------------------------------------------------------------- own answer

def test_home_reader_plans_from_its_own_directory(build_dir, net):
    """Two nodes, both homes of every blob. A read the blob and announced it (digests too);
    B reads it. B's own directory names A as the holder of every chunk with its digest, so
    B plans from it and sends no locate to A: A's directory answers no locate during B's
    read, B's bytes are right and all from A. The blob is picked so that without the own
    answer B's first question would go to A (rdv: the home B's spread picks is A)."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    ah, bh = net.add_host("a", s), net.add_host("b", s)
    ids = ["%s:%d" % (h.ip, PEER_PORT) for h in (ah, bh)]

    def b_would_ask_a_first(digest):
        homes = rdv.homes(ids, digest, 3)
        return homes[rdv.spread(ids[1], digest, len(homes))] == ids[0]
    blob = pick_blob(reg, "own16", 2101, 16 * MiB, b_would_ask_a_first)
    a, b = start_nodes(net, build_dir, reg, [ah, bh])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [b], a, blob)
    b.add(blob.ref)

    mark = reg.mark()
    a0, b0 = metrics(net, a), metrics(net, b)
    full_read(b, blob)
    a1, b1 = metrics(net, a), metrics(net, b)
    served = reg.bytes_served(blob.digest, since=mark)
    asked_a = delta(a1, a0, "directory_locates_total")
    print("\n[own answer] B: locates %d (own directory), cache hits %d, peer bytes %d, "
          "unchecked %d; A's directory answered %d locates; registry bytes %d"
          % (delta(b1, b0, "peer_locates_total"), delta(b1, b0, "peer_locate_cache_hits_total"),
             delta(b1, b0, "peer_fetched_bytes_total"),
             delta(b1, b0, "peer_unchecked_chunks_total"), asked_a, served))
    assert served == 0
    assert delta(b1, b0, "peer_fetched_bytes_total") == blob.size
    assert delta(b1, b0, "peer_locates_total") >= 1, "B planned no chunk from a directory"
    assert asked_a == 0, "B asked A %d locates though its own directory knew" % asked_a


# --------------------------------------------------------------------------- CONFIRM

def confirm_rounds_max(announce_interval_ms=250):
    """Rounds a held chunk's CONFIRM can take: digest_wait_ms (fs/peers.c: 4 announce
    intervals + 1 s) over the pause between rounds, plus the first."""
    return (4 * announce_interval_ms + 1000) // CONFIRM_POLL_MS + 1


def test_sender_word_held_until_another_home_confirms(build_dir, net):
    """Four nodes, two homes per blob (--homes 2): S and H are the homes, R and X are not. S
    read the blob (its announces gave both homes the digests). R's first question goes to S
    (the blob is picked so), whose answer names S as the holder with S's own digests: for S's
    bytes that is the sender's word, so R holds each chunk and asks the other home, H, for its
    digest, checks, and keeps the bytes. R's bytes are right, all from S; H answers one
    question per chunk (each confirmed in the first round)."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    rh, sh, hh, xh = (net.add_host(n, s) for n in ("r", "s", "h", "x"))
    rid, sid, hid, xid = ("%s:%d" % (h.ip, PEER_PORT) for h in (rh, sh, hh, xh))

    def homes_s_then_h_asked_s(digest):
        homes = rdv.homes([rid, sid, hid, xid], digest, 2)
        return set(homes) == {sid, hid} and homes[rdv.spread(rid, digest, 2)] == sid
    blob = pick_blob(reg, "held16", 2501, 16 * MiB, homes_s_then_h_asked_s)
    nchunks = blob.size // MiB
    r, sd, h, x = start_nodes(net, build_dir, reg, [rh, sh, hh, xh], extra=["--homes", "2"])
    wait_peers_up([r, sd, h, x])
    sd.add(blob.ref)
    full_read(sd, blob)
    wait_announced(net, [sd, h], sd, blob)
    r.add(blob.ref)

    mark = reg.mark()
    h0, s0, r0 = metrics(net, h), metrics(net, sd), metrics(net, r)
    full_read(r, blob)
    h1, s1, r1 = metrics(net, h), metrics(net, sd), metrics(net, r)
    served = reg.bytes_served(blob.digest, since=mark)
    asked_h = delta(h1, h0, "directory_locates_total")
    asked_s = delta(s1, s0, "directory_locates_total")
    print("\n[held] %d chunks: S answered %d locates, H %d questions; R: peer bytes %d, "
          "unchecked %d, corrupt %d; registry bytes %d"
          % (nchunks, asked_s, asked_h, delta(r1, r0, "peer_fetched_bytes_total"),
             delta(r1, r0, "peer_unchecked_chunks_total"),
             delta(r1, r0, "peer_corrupt_chunks_total"), served))
    assert served == 0
    assert delta(r1, r0, "peer_fetched_bytes_total") == blob.size
    assert delta(r1, r0, "peer_unchecked_chunks_total") == 0
    assert asked_s >= 1, "R's first question did not go to S: the blob does not test this"
    assert asked_h >= nchunks, \
        "R kept %d chunks on their sender's word alone (H was asked %d times)" % (
            nchunks - asked_h, asked_h)
    assert asked_h <= 2 * nchunks, "H was asked %d times for %d chunks" % (asked_h, nchunks)


def test_confirm_rounds_end_at_a_home_without_the_digest(build_dir, net, tmp_path):
    """Four members, every one a home of the blob (--homes 4): the reader R, two honest nodes
    H1 and H2 that know the blob but none of its chunks (R's registration announced it, no
    one read it), and the liar F, which announces to all of them that it holds every chunk
    (no digests) and serves altered bytes. R's candidates for every chunk are F alone, and
    the only digest of F's bytes is F's word, so R holds them and asks the other homes: R's
    own directory (in memory), H1, H2. Each round ends at the first home that answers without
    the digest, so H1 and H2 together answer at most one question per chunk per round; and a
    home holds each question until its digest is known or the wait (half of digest_wait) ends
    (issue 18, dir_wait_digest), so there are about two rounds, not digest_wait / 50 ms (plus
    each chunk's locate, at most one per home; main before the held questions: 322 questions
    for the 8 chunks, now ~23); then the chunk is refused unchecked and comes from the origin,
    bytes right, none of F's."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "confirm8", harness.gen_bytes(2201, 8 * MiB), repo=REPO)
    nchunks = blob.size // MiB
    rh, fh, h1h, h2h = (net.add_host(n, s) for n in ("r", "f", "h1", "h2"))
    hosts = [rh, fh, h1h, h2h]
    log = start_liar(net, fh, blob, str(tmp_path / "liar"), announce_to=[rh, h1h, h2h])
    r, h1, h2 = (net.daemon(build_dir, h, registries=[reg],
                            extra_args=node_flags(h, peers=hosts, extra=["--homes", "4"]))
                 for h in (rh, h1h, h2h))
    for d in (r, h1, h2):
        harness.wait_until(lambda d=d: all((d.peer("%s:%d" % (h.ip, PEER_PORT)) or {})
                                           .get("state") == "up"
                                           for h in hosts if h is not d.host),
                           15, interval=0.2, what="%s to see every member up" % d.host.name)
    r.add(blob.ref)
    # H1 and H2 know the blob (R's announce) and F as holding all of it (F's announces).
    want = {"%s:%d" % (fh.ip, PEER_PORT)}
    harness.wait_until(lambda: all(want <= net.holders([d], blob.digest) for d in (r, h1, h2)),
                       20, interval=0.2, what="every directory to list the liar as a holder")

    mark = reg.mark()
    h0 = {d.host.name: metrics(net, d) for d in (h1, h2)}
    r0 = metrics(net, r)
    full_read(r, blob)
    h_after = {d.host.name: metrics(net, d) for d in (h1, h2)}
    r1 = metrics(net, r)
    served = reg.bytes_served(blob.digest, since=mark)
    asked = sum(delta(h_after[n], h0[n], "directory_locates_total") for n in h0)
    unchecked = delta(r1, r0, "peer_unchecked_chunks_total")
    gets = liar_chunk_gets(log)
    bound = nchunks * (CONFIRM_ROUNDS_HELD + 4)
    print("\n[confirm] %d chunks: F served %d chunk requests; R: unchecked %d, peer bytes %d, "
          "locates %d; H1+H2 answered %d questions (bound %d: %d rounds + 4 locates a chunk, "
          "%d rounds if polled); "
          "registry bytes %d"
          % (nchunks, len(gets), unchecked, delta(r1, r0, "peer_fetched_bytes_total"),
             delta(r1, r0, "peer_locates_total"), asked, bound, CONFIRM_ROUNDS_HELD,
             confirm_rounds_max(), served))
    assert gets, "R never asked the liar for bytes: the test proved nothing"
    assert delta(r1, r0, "peer_fetched_bytes_total") == 0, "bytes from the liar were accepted"
    # Refused unchecked, or caught: R reads from the origin in order as F's chunks fail, so its
    # own frontier soon knows the chain value the last chunk is checked from (the last chunk's
    # own value is the blob digest), and F's last chunk fails that check instead.
    corrupt = delta(r1, r0, "peer_corrupt_chunks_total")
    assert unchecked + corrupt >= nchunks, \
        "chunks refused unchecked %d, caught %d, of %d" % (unchecked, corrupt, nchunks)
    assert served >= blob.size, "the refused chunks did not come from the origin"
    # More than one round per chunk (the digest was waited for), at most one question a round.
    assert asked >= 2 * nchunks, "H1 and H2 were asked %d times for %d chunks" % (asked, nchunks)
    assert asked <= bound, "H1 and H2 were asked %d times (at most %d)" % (asked, bound)


# --------------------------------------------------------------------------- readahead

class _Mincore:
    """Which pages of a file are in the page cache (mincore(2) on a shared read-only map)."""

    def __init__(self):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.mmap.restype = ctypes.c_void_p
        self.libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_long]
        self.libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]

    def resident(self, path, off, length):
        """The fraction of [OFF, OFF+LENGTH) of PATH in the page cache (OFF page-aligned)."""
        page = mmap.PAGESIZE
        npages = (length + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = self.libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, off)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap %s" % path)
            try:
                vec = ctypes.create_string_buffer(npages)
                if self.libc.mincore(addr, length, vec) < 0:
                    raise OSError(ctypes.get_errno(), "mincore %s" % path)
                return sum(b & 1 for b in vec.raw) / npages
            finally:
                self.libc.munmap(addr, length)
        finally:
            os.close(fd)


def test_serve_readahead_only_in_order(build_dir, net):
    """A holds a 32 MiB blob, its store file out of the page cache. A peer GETting chunks at
    random (each more than the in-order slack away from the others) makes A read nothing
    ahead: the chunks after each stay out of A's page cache. One reading in order gets the
    next two chunks read ahead (SERVE_RA_CHUNKS): they come into the page cache before it
    asks for them. The peer is this test, speaking the peer range interface."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "ra32", harness.gen_bytes(2301, 32 * MiB), repo=REPO)
    a, = start_nodes(net, build_dir, reg, [net.add_host("a", s)])
    a.add(blob.ref)
    full_read(a, blob)
    store = a.chunk_file(blob.digest)
    # Only this file's pages (the global drop_caches would disturb the machine's other users).
    fd = os.open(store, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    mc = _Mincore()

    def res(idx):
        return mc.resident(store, idx * MiB, MiB)
    assert all(res(i) < 0.05 for i in range(32)), "the store is still in the page cache"

    def get(idx):
        st, _h, body = net.http(a.host.ip, PEER_PORT, "GET", "/v2/x/blobs/" + blob.digest,
                                headers={"Range": "bytes=%d-%d" % (idx * MiB,
                                                                   (idx + 1) * MiB - 1)},
                                timeout=10)
        assert st == 206 and body == blob.data[idx * MiB:(idx + 1) * MiB], (idx, st)

    # At random: no two requests within the slack (4 chunks) of where another would go on.
    scattered = [20, 2, 29, 11]
    for i in scattered:
        get(i)
    # In order, from 14: the first request starts a stream; each later one reads ahead.
    for i in (14, 15):
        get(i)
    harness.wait_until(lambda: res(16) > 0.95 and res(17) > 0.95, 10, interval=0.05,
                       what="A to read chunks 16-17 ahead for the in-order reader")
    random_ahead = {i: (round(res(i + 1), 2), round(res(i + 2), 2)) for i in scattered}
    print("\n[serve readahead] in order: chunks 16, 17 resident %.2f %.2f; at random, the two "
          "chunks after each: %s" % (res(16), res(17), random_ahead))
    for i, (n1, n2) in random_ahead.items():
        assert n1 < 0.05 and n2 < 0.05, \
            "A read ahead after the random GET of chunk %d: %s resident" % (i, (n1, n2))


# --------------------------------------------------------------------------- may_start

def test_queued_transfers_to_a_frozen_peer_never_start(build_dir, net):
    """A holds a 32 MiB blob; B reads one 4 KiB piece of each of its 32 chunks at once, in
    random order: single-chunk transfers to A, MAX_PER_PEER at a time, the rest queued (the
    kernel hands B's daemon about 12 of these reads at once, by all signs FUSE's default
    max_background, so about 4 wait behind the cap; with the check gone, 12 transfers to A
    failed, not 8).
    A is frozen (SIGSTOP) just before: its kernel still accepts connections, nothing answers.
    The transfers that started stall and fail, which marks A down; those queued behind them
    are dropped unsent when their turn comes (may_start) and go to the next source, the
    origin. So B counts at most MAX_PER_PEER failed transfers to A (not one per chunk), every
    piece is right, and the reads end well within the deadline."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "frozen32", harness.gen_bytes(2401, 32 * MiB), repo=REPO)
    nchunks = blob.size // MiB
    # A long refresh: A stays "up" for B until a transfer to it fails, not because B's prober
    # noticed first (then nothing would be queued to A, and the test would prove nothing).
    a, b = start_nodes(net, build_dir, reg, [net.add_host("a", s), net.add_host("b", s)],
                       extra=["--peer-refresh", "30s"])
    wait_peers_up([a, b])
    a.add(blob.ref)
    full_read(a, blob)
    wait_announced(net, [b], a, blob)
    b.add(blob.ref)
    path = b.blob_path(blob.digest)
    b.expect_log(r"peer .*down")

    order = list(range(nchunks))
    random.Random(2402).shuffle(order)
    results, errors = {}, []
    start = threading.Barrier(len(order) + 1)

    def read(idx):
        off = idx * MiB + 12345
        try:
            start.wait(30)
            results[idx] = harness.pread_exact(path, off, 4096) == blob.data[off:off + 4096]
        except Exception as e:  # reported below
            errors.append((idx, e))
    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in order]
    for t in threads:
        t.start()
    b0 = metrics(net, b)
    mark = reg.mark()
    os.kill(a.proc.pid, 19)  # SIGSTOP
    try:
        start.wait(30)
        for t in threads:
            t.join(60)
        alive = sum(t.is_alive() for t in threads)
        b1 = metrics(net, b)
        state = (b.peer(a) or {}).get("state")
    finally:
        os.kill(a.proc.pid, 18)  # SIGCONT
    failures = delta(b1, b0, "peer_transfer_failures_total")
    served = reg.bytes_served(blob.digest, since=mark)
    print("\n[frozen peer] %d reads: failed transfers to A %d (cap %d a peer), peer bytes %d, "
          "registry bytes %d, A is %s for B"
          % (nchunks, failures, MAX_PER_PEER, delta(b1, b0, "peer_fetched_bytes_total"),
             served, state))
    assert alive == 0, "%d reads still running after 60 s" % alive
    assert not errors, errors
    assert len(results) == nchunks and all(results.values()), \
        "wrong bytes at chunks %s" % sorted(i for i, ok in results.items() if not ok)
    assert failures >= 1, "no transfer reached frozen A: nothing was queued behind the cap"
    assert failures <= MAX_PER_PEER, \
        "%d transfers to A failed: queued ones were sent to a peer already down" % failures
    assert served >= nchunks * MiB / 2, "the chunks did not come from the origin"
