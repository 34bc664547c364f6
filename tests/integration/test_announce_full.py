"""Issue 18: a home that keeps --max-holders holders of a blob, and whose holders hold all of
it, answers a further holder's announce with "full" (peer/wire_reply.h); that holder stops
announcing the blob to that home until the retry time the home gave, and readers still read
the right bytes. When the recorded holder goes away, a hushed holder is recorded again within
about one retry spacing after the record's expiry.

Five nodes in network namespaces, one home per blob (--homes 1), --max-holders 1 and a short
--location-ttl (6 s: holders refresh every 2 s, and the home spaces retries 6 s / 3 / 1 = 2 s
apart). Figures are printed: run with -s to see them.

test_covered_holder_heard_when_it_claims: the "covered" verdict (the home's holders hold all a
newcomer has but not the whole blob) and the un-hush when a claimed chunk lands.
"""

import time

import harness
from harness import MiB
from test_peers import (REPO, dir_answer, full_read, recorded_holders, start_nodes,
                        wait_peers_up)

TTL_S = 6
SPACING_S = TTL_S / 3 / 1  # (ttl / 3) / max_holders
FLAGS = ["--homes", "1", "--max-holders", "1", "--location-ttl", "%ds" % TTL_S]


def test_full_home_hushes_holders(build_dir, net):
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "full16", harness.gen_bytes(1801, 16 * MiB), repo=REPO)
    hosts = [net.add_host("n%d" % i, s) for i in range(5)]
    nodes = start_nodes(net, build_dir, reg, hosts, extra=FLAGS)
    wait_peers_up(nodes)

    # Registering the blob everywhere announces it (empty present sets): its one home is
    # the node whose directory knows it.
    for d in nodes:
        d.add(blob.ref)
    homes = []
    harness.wait_until(lambda: homes.extend(d for d in nodes if dir_answer(net, d, blob)[0] == 200)
                       or homes, 10, interval=0.2, what="the blob's home to know it")
    assert len(homes) == 1, [d.host.name for d in homes]
    home = homes[0]
    others = [d for d in nodes if d is not home]
    first, hushed, last = others[0], others[1:3] + [home], others[3]

    # The first holder is recorded; then the home has max-holders (1) holders of the whole blob.
    full_read(first, blob)
    harness.wait_until(lambda: recorded_holders(net, home, blob) == {first.peer_id}, 10,
                       interval=0.2, what="the home to record the first holder")
    mark = reg.mark()
    for d in hushed:
        full_read(d, blob)
    assert reg.bytes_served(blob.digest, since=mark) == 0, "hushed holders read from the origin"

    def told_full(d):
        return net.metrics(d.host.ip, d.peer_port).get("peer_announce_full_total", 0)
    harness.wait_until(lambda: all(told_full(d) >= 1 for d in hushed), 10, interval=0.2,
                       what="every later holder to be told \"full\"")
    assert recorded_holders(net, home, blob) == {first.peer_id}
    assert net.metrics(home.host.ip, home.peer_port)["directory_told_full_total"] >= len(hushed)

    # Over three refresh periods each hushed holder leaves the blob out of some of its
    # announces to the home (it would otherwise send one per refresh), and the home hears
    # about one retry per spacing, not one refresh per holder.
    before = {d.host.name: net.metrics(d.host.ip, d.peer_port) for d in nodes}
    window = 3 * TTL_S / 3
    time.sleep(window)
    after = {d.host.name: net.metrics(d.host.ip, d.peer_port) for d in nodes}

    def grew(d, key):
        return after[d.host.name].get(key, 0) - before[d.host.name].get(key, 0)
    left_out = {d.host.name: grew(d, "peer_announce_hushed_total") for d in hushed}
    retries = {d.host.name: grew(d, "peer_announce_full_retries_total") for d in hushed}
    home_rx = grew(home, "directory_announces_total")
    print("\n[full] home %s, recorded %s; over %.0f s: announces left out per hushed holder %s, "
          "retries %s; announces received by the home %d (without hushing: about %d)"
          % (home.host.name, first.host.name, window, left_out, retries, home_rx,
             len(nodes) * window / (TTL_S / 3)))
    for name, n in left_out.items():
        assert n >= 1, "%s announced the blob to a home that said full at every refresh" % name
    assert sum(retries.values()) <= window / SPACING_S + 2, retries

    # Readers still read the right bytes, from the holders.
    mark = reg.mark()
    full_read(last, blob)
    assert reg.bytes_served(blob.digest, since=mark) == 0

    # Soft state: the recorded holder goes; its record expires TTL after its last announce, and
    # a hushed holder takes the slot within about one spacing (plus a round and a refresh of
    # slack).
    t_stop = time.monotonic()
    first.stop()
    want = {d.peer_id for d in hushed + [last]}
    harness.wait_until(lambda: recorded_holders(net, home, blob) & want, TTL_S + 4 * SPACING_S + 4,
                       interval=0.2, what="a hushed holder to be recorded again")
    back = time.monotonic() - t_stop
    print("[full] after the recorded holder stopped: another recorded after %.1f s (ttl %d s, "
          "spacing %.1f s)" % (back, TTL_S, SPACING_S))
    assert back >= TTL_S - TTL_S / 3 - 0.5, "recorded before the old record could expire"
    assert back <= TTL_S + SPACING_S + 3, "the freed slot stayed empty %.1f s" % back


def test_covered_holder_heard_when_it_claims(build_dir, net):
    """Issue 18, the deltas of a wave's front: a home whose holders hold all a newcomer has,
    but not the whole blob, answers "covered" (with their chunks); the newcomer leaves the blob
    out of its announces to that home while it reads only those chunks, and when it is granted
    the claim on a chunk nobody has and fetches it from the origin, the landed chunk un-hushes
    the blob: the home records it, and the next reader of that chunk reads it from the
    newcomer, not from the origin. --readahead 0, so each read fetches only its chunks."""
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    data = harness.gen_bytes(1807, 16 * MiB)
    blob = harness.make_blob(reg, "covered16", data, repo=REPO)
    hosts = [net.add_host("c%d" % i, s) for i in range(4)]
    nodes = start_nodes(net, build_dir, reg, hosts, extra=FLAGS + ["--readahead", "0"])
    wait_peers_up(nodes)
    for d in nodes:
        d.add(blob.ref)
    homes = []
    harness.wait_until(lambda: homes.extend(d for d in nodes if dir_answer(net, d, blob)[0] == 200)
                       or homes, 10, interval=0.2, what="the blob's home to know it")
    assert len(homes) == 1, [d.host.name for d in homes]
    home = homes[0]
    first, x, y = [d for d in nodes if d is not home]

    def read(d, first_chunk, n):
        got = harness.pread_exact(d.blob_path(blob.digest), first_chunk * MiB, n * MiB)
        assert got == data[first_chunk * MiB:(first_chunk + n) * MiB], \
            "%s read chunks %d.. wrong" % (d.host.name, first_chunk)

    def metric(d, key):
        return net.metrics(d.host.ip, d.peer_port).get(key, 0)

    # FIRST holds chunks 0-7 and is the home's one recorded holder (--max-holders 1).
    read(first, 0, 8)
    harness.wait_until(lambda: recorded_holders(net, home, blob) == {first.peer_id}, 10,
                       interval=0.2, what="the home to record the first holder")
    # X reads chunks 0-3 from it: covered, not recorded.
    mark = reg.mark()
    read(x, 0, 4)
    harness.wait_until(lambda: metric(home, "directory_told_covered_total") >= 1
                       and metric(x, "peer_announce_full_total") >= 1, 10, interval=0.2,
                       what="X to be told \"covered\"")
    assert recorded_holders(net, home, blob) == {first.peer_id}
    # Chunks 4-7 are within what FIRST holds: X keeps them from the home.
    left_out = metric(x, "peer_announce_hushed_total")
    read(x, 4, 4)
    harness.wait_until(lambda: metric(x, "peer_announce_hushed_total") > left_out, 10,
                       interval=0.2, what="X to leave its covered chunks out of an announce")
    assert reg.bytes_served(blob.digest, since=mark) == 0, "X read chunks 0-7 from the origin"
    assert recorded_holders(net, home, blob) == {first.peer_id}

    # Chunk 12 is nobody's: X is granted its claim and fetches it from the origin; when it
    # lands the blob is announced to the home again, which records X (9 chunks to FIRST's 8).
    mark = reg.mark()
    read(x, 12, 1)
    served = reg.bytes_served(blob.digest, since=mark)
    assert served == MiB, "chunk 12 from the origin: %d bytes" % served
    harness.wait_until(lambda: x.peer_id in recorded_holders(net, home, blob), 10,
                       interval=0.2, what="the home to record X after its claimed chunk")
    assert metric(x, "peer_announce_unhushed_total") >= 1
    # The next reader of chunk 12 reads it from X.
    mark = reg.mark()
    read(y, 12, 1)
    assert reg.bytes_served(blob.digest, since=mark) == 0, "chunk 12 fetched twice from the origin"
    print("\n[covered] home %s told covered %d; X left out %d announces, un-hushed %d"
          % (home.host.name, metric(home, "directory_told_covered_total"),
             metric(x, "peer_announce_hushed_total"), metric(x, "peer_announce_unhushed_total")))
