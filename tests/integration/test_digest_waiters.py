"""--digest-waiters (fs/config.c): how many digest questions a home holds at once. The option
reaches the directory (fs/peers.c sets dir_config.max_digest_waiters from it): a home started
with --digest-waiters N holds exactly N of N + 5 questions and answers the other 5 at once
without the digest, then answers the N held ones with it once an announce brings it; and a
home started without the flag holds the default, 64 (what test_digest_wait.py's first test
checks too, before this option existed).

Real nodes in network namespaces (netns.py), a real registry, a real FUSE mount; counters from
/metrics. Run with -s to see the figures.
"""

import hashlib
import json
import threading

import pytest

import harness
from harness import MiB
from liar import chain_values
from test_digest_wait import delta, metrics
from test_peers import PEER_PORT, REPO, full_read, start_nodes

PER_CLIENT = 32  # peer/httpd.h HTTPD_MAX_PER_CLIENT: questions one address may have open
DEFAULT = 64     # fs/config.c digest-waiters, = peer/directory.h DIR_DEFAULT_DIGEST_WAITERS


@pytest.mark.parametrize("cap,flag", [(8, True), (DEFAULT, False)],
                         ids=["digest-waiters-8", "default-64"])
def test_home_holds_as_many_questions_as_configured(build_dir, net, cap, flag):
    """One node H with --digest-waiters CAP (or no flag: the default), the home of a blob it
    registered (no chunk digest known yet). Clients send CAP + 5 questions about chunk 0 with
    X-P2PBlobs-Wait: 10 s (HTTPD_MAX_WAIT_MS, the most a home holds one), at most PER_CLIENT from one address. H holds CAP, refuses 5
    (answered at once, no digest of chunk 0); H then reads the blob and every held question is
    answered with chunk 0's digest or chain value."""
    n = cap + 5
    s = net.add_subnet()
    reg = net.registry(net.add_host("reg", s))
    hh = net.add_host("h", s)
    clients = [net.add_host("c%d" % i, s) for i in range((n + PER_CLIENT - 1) // PER_CLIENT)]
    blob = harness.make_blob(reg, "waiters%d" % cap, harness.gen_bytes(2801 + cap, 2 * MiB),
                             repo=REPO)
    (h,) = start_nodes(net, build_dir, reg, [hh],
                       extra=["--digest-waiters", str(cap)] if flag else [])
    h.add(blob.ref)
    path = "/p2p/v1/locate/%s?chunk=0" % blob.digest
    harness.wait_until(lambda: net.http(hh.ip, PEER_PORT, "GET", path)[0] == 200, 15,
                       interval=0.2, what="H's directory to know the blob")

    assert n <= len(clients) * PER_CLIENT
    answers = [None] * n

    def ask(i):
        st, _hdr, body = clients[i % len(clients)].http(
            hh.ip, PEER_PORT, "GET", path, headers={"X-P2PBlobs-Wait": "10000"}, timeout=20)
        answers[i] = (st, json.loads(body) if st == 200 else body)
    m0 = metrics(net, h)
    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()

    def taken():
        m = metrics(net, h)
        return (delta(m, m0, "directory_digest_waits_total") +
                delta(m, m0, "directory_digest_waits_refused_total") >= n)
    harness.wait_until(taken, 15, interval=0.1, what="H to take all %d questions" % n)
    # The refused ones are answered at once, but may still be on their way to the clients.
    harness.wait_until(lambda: sum(a is not None for a in answers) >= n - cap, 15,
                       interval=0.1, what="the %d refused questions' answers" % (n - cap))
    m1 = metrics(net, h)
    early = [a for a in answers if a is not None]
    print("\n[digest-waiters %d] %d questions: held %d (peak %d), refused %d, answered early %d"
          % (cap, n, delta(m1, m0, "directory_digest_waits_total"),
             m1.get("directory_digest_waiters_peak", 0),
             delta(m1, m0, "directory_digest_waits_refused_total"), len(early)))
    assert delta(m1, m0, "directory_digest_waits_total") == cap
    assert delta(m1, m0, "directory_digest_waits_refused_total") == n - cap
    assert m1.get("directory_digest_waiters_peak", 0) == cap
    assert len(early) == n - cap, "%d answered while %d should be held" % (len(early), cap)
    for st, body in early:
        assert st == 200
        assert all(d[0] != 0 for d in body.get("digests", []) + body.get("chain", []))

    full_read(h, blob)
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads), "held questions were never answered"
    # H reads in order, so chunk 0 gets a chain value (chunk 0 starts from SHA-256's initial
    # state), or a plain digest if it landed out of order: either must be the right one.
    want = {"digests": hashlib.sha256(blob.data[:MiB]).hexdigest(),
            "chain": chain_values(blob.data, MiB)[0]}
    m2 = metrics(net, h)
    with_digest = 0
    for st, body in answers:
        assert st == 200
        got = {k: {d[0]: d[1].removeprefix("sha256:") for d in body.get(k, [])}
               for k in ("digests", "chain")}
        for k in ("digests", "chain"):
            if 0 in got[k]:
                assert got[k][0] == want[k], "%s of chunk 0 wrong" % k
        with_digest += 0 in got["digests"] or 0 in got["chain"]
    print("[digest-waiters %d] after H's read: %d answers carry chunk 0's digest, found %d"
          % (cap, with_digest, delta(m2, m0, "directory_digest_waits_found_total")))
    assert with_digest == cap
    assert delta(m2, m0, "directory_digest_waits_found_total") == cap
    assert m2.get("directory_digest_waiters_peak", 0) == cap
