"""Issue 18's "full" verdict (peer/directory_apply.c is_full_for, peer/announce_hush.c) with more
than one home per blob: every home keeps at most --max-holders holders, and a holder that every
home told "full" stops announcing the blob to each of them, not only to one (test_announce_full.py
has one home per blob).

Seven nodes in network namespaces, --homes 2, --max-holders 2, --location-ttl 6s (holders refresh
every 2 s; a home spaces retries (6 s / 3) / 2 = 1 s apart). Figures are printed: run with -s.
"""

import json
import time

import harness
import rdv
from harness import MiB
from test_peers import (REPO, dir_answer, full_read, recorded_holders, start_nodes,
                        wait_peers_up)

TTL_S = 6
HOMES = 2
MAX_HOLDERS = 2
REFRESH_S = TTL_S / 3
SPACING_S = TTL_S / 3 / MAX_HOLDERS
FLAGS = ["--homes", str(HOMES), "--max-holders", str(MAX_HOLDERS),
         "--location-ttl", "%ds" % TTL_S]


def test_every_home_full_hushes_every_holder(build_dir, net):
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    blob = harness.make_blob(reg, "hush16", harness.gen_bytes(2601, 16 * MiB), repo=REPO)
    hosts = [net.add_host("n%d" % i, s) for i in range(7)]
    nodes = start_nodes(net, build_dir, reg, hosts, extra=FLAGS)
    wait_peers_up(nodes)
    by_id = {d.peer_id: d for d in nodes}
    homes = [by_id[i] for i in rdv.homes(list(by_id), blob.digest, HOMES)]
    others = [d for d in nodes if d not in homes]
    first, later = others[:MAX_HOLDERS], others[MAX_HOLDERS:] + homes

    # Registering the blob everywhere announces it: its homes, and only they, know it.
    for d in nodes:
        d.add(blob.ref)
    harness.wait_until(lambda: all(dir_answer(net, h, blob)[0] == 200 for h in homes), 10,
                       interval=0.2, what="both homes to know the blob")
    assert [d for d in nodes if dir_answer(net, d, blob)[0] == 200] == \
        [d for d in nodes if d in homes], "the daemons' homes are not rdv.py's"

    # MAX_HOLDERS holders, recorded at both homes; then both homes are full.
    for i, d in enumerate(first):
        full_read(d, blob)
        want = {f.peer_id for f in first[:i + 1]}
        harness.wait_until(lambda: all(recorded_holders(net, h, blob) == want for h in homes), 10,
                           interval=0.2, what="both homes to record %d holder(s)" % (i + 1))
    mark = reg.mark()
    for d in later:
        full_read(d, blob)
    assert reg.bytes_served(blob.digest, since=mark) == 0, "later holders read from the origin"

    def m(d):
        return net.metrics(d.host.ip, d.peer_port)
    # Every later holder was told "full" by each home (one verdict obeyed per home at least),
    # and each home told every later holder.
    harness.wait_until(lambda: all(m(d).get("peer_announce_full_total", 0) >= HOMES
                                   for d in later), 10, interval=0.2,
                       what="every later holder to be told \"full\" by both homes")
    harness.wait_until(lambda: all(m(h).get("directory_told_full_total", 0) >= len(later)
                                   for h in homes), 10, interval=0.2,
                       what="each home to tell every later holder \"full\"")
    for h in homes:
        assert recorded_holders(net, h, blob) == {f.peer_id for f in first}, h.host.name

    # Over three refresh periods every home hears the blob from the later holders about once
    # per retry spacing (each "full" it says there is a retry's answer), not at each holder's
    # refresh: hushed at every home, not only one.
    before = {d.host.name: m(d) for d in nodes}
    window = 3 * REFRESH_S
    time.sleep(window)
    after = {d.host.name: m(d) for d in nodes}

    def grew(d, key):
        return after[d.host.name].get(key, 0) - before[d.host.name].get(key, 0)
    told = {h.host.name: grew(h, "directory_told_full_total") for h in homes}
    left_out = {d.host.name: grew(d, "peer_announce_hushed_total") for d in later}
    unhushed = len(later) * window / REFRESH_S
    print("\n[hush, %d homes] homes %s, recorded %s; over %.0f s: \"full\" said per home %s "
          "(unhushed: about %d each), announces left out per later holder %s"
          % (HOMES, [h.host.name for h in homes], [f.host.name for f in first], window, told,
             unhushed, left_out))
    for h in homes:
        assert recorded_holders(net, h, blob) == {f.peer_id for f in first}, h.host.name
    for name, n in told.items():
        assert n <= window / SPACING_S + 3, \
            "home %s said \"full\" %d times in %.0f s: holders kept announcing to it" % (
                name, n, window)
    for name, n in left_out.items():
        assert n >= 1, "%s announced the blob to every home at every refresh" % name

