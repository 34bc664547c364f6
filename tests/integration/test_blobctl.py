"""blobctl exit codes: 0 ok, 1 the daemon said no, 2 bad arguments, 3 daemon not running."""

import hashlib
import time

import harness


def test_blobctl_add_errors(registry, blobs, daemon_factory, tmp_path):
    b = blobs["small200k"]
    d = daemon_factory(registries=[registry])
    hp = registry.hostport

    malformed = [
        "nonsense",
        "reg/repo@sha256:XYZ",
        "%s/%s@sha256:%s" % (hp, b.repo, b.hex.upper()),
        "%s/%s@sha256:%s" % (hp, b.repo, b.hex[:63]),
        "%s/%s" % (hp, b.repo),
    ]
    for ref in malformed:
        r = d.blobctl("add", ref)
        assert r.returncode == 2, "add %r: exit %d (stderr %r)" % (ref, r.returncode, r.stderr)
        assert r.stderr.strip(), "add %r: no message on stderr" % ref

    absent = hashlib.sha256(b"not in the registry").hexdigest()
    r = d.blobctl("add", "%s/%s@sha256:%s" % (hp, b.repo, absent))
    assert r.returncode == 4, "absent digest: exit %d (stderr %r)" % (r.returncode, r.stderr)
    assert r.stderr.strip()

    assert d.alive()
    assert d.stat()["blobs"] == 0
    assert d.add(b.ref) == (b.digest, b.size)
    assert d.stat()["blobs"] == 1

    # No daemon on the socket.
    r = d.blobctl("add", b.ref, socket_path=str(tmp_path / "nobody.sock"))
    assert r.returncode == 3, "no socket: exit %d (stderr %r)" % (r.returncode, r.stderr)
    assert r.stderr.strip()
    assert d.stop() == 0
    r = d.blobctl("add", b.ref)
    assert r.returncode == 3, "stopped daemon: exit %d (stderr %r)" % (r.returncode, r.stderr)


def test_blobctl_add_unreachable_origin(registry, blobs, daemon_factory):
    """An origin nobody listens on: the daemon says no (exit 1) in bounded time, and stays
    responsive to other control requests meanwhile and afterwards."""
    b = blobs["small200k"]
    dead = "127.0.0.1:%d" % harness.free_port()
    d = daemon_factory(registries=[registry, dead], extra_args=["--fetch-timeout", "5s"])

    t0 = time.monotonic()
    r = d.blobctl("add", "%s/%s@sha256:%s" % (dead, b.repo, b.hex), timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1, "unreachable origin: exit %d (stderr %r)" % (
        r.returncode, r.stderr)
    assert r.stderr.strip()
    assert took <= 5 + 30, "add took %.1fs" % took
    assert d.alive()
    # The control socket still answers right after the failure.
    s = d.stat()
    assert s["blobs"] == 0
    assert d.add(b.ref) == (b.digest, b.size)
