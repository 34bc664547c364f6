"""The containerd proxy snapshotter (--snapshotter-socket), proven by containerd's own
snapshotter conformance suite (github.com/containerd/containerd/snapshots/testsuite) run
against a real p2pblobsd through containerd's proxy client.

The Go driver is tests/snapshotter/snapshotter_test.go; it builds offline from Debian's
golang-go and golang-github-containerd-containerd-dev (GO111MODULE=off, GOPATH over
/usr/share/gocode). The suite mounts (bind and overlay), so it needs root.
"""

import os
import re
import shutil
import subprocess

import pytest

import harness

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER_DIR = os.path.join(REPO_ROOT, "tests", "snapshotter")
GOCODE = "/usr/share/gocode"
SUITE_PKG = os.path.join(GOCODE, "src/github.com/containerd/containerd/snapshots/testsuite")

# Every test of containerd 1.6's SnapshotterSuite. "Rename" skips itself unconditionally in
# the suite ("rename test still fails on some kernels with overlay"); every other one must pass.
SUITE_TESTS = [
    "Basic", "StatActive", "StatComitted", "TransitivityTest", "PreareViewFailingtest",
    "Update", "Remove", "Walk", "LayerFileupdate", "RemoveDirectoryInLowerLayer", "Chown",
    "DirectoryPermissionOnCommit", "RemoveIntermediateSnapshot", "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer", "ViewReadonly", "StatInWalk", "CloseTwice", "RootPermission",
    "128LayersMount",
]
SUITE_SKIPS = ["Rename"]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the conformance suite mounts: needs root"),
    pytest.mark.skipif(shutil.which("go") is None or not os.path.isdir(SUITE_PKG),
                       reason="needs golang-go and golang-github-containerd-containerd-dev"),
]


def go_test(tmp_path, sock, run, extra_env=None, timeout=1200):
    env = dict(os.environ)
    env.update({
        "GOPATH": "%s:%s" % (tmp_path / "gopath", GOCODE),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "P2PBLOBS_SNAPSHOTTER_SOCKET": sock,
        # The suite's scratch dirs (its snapshot keys are paths under them).
        "TMPDIR": str(tmp_path),
    })
    env.setdefault("GOCACHE", os.path.join(os.environ.get("HOME") or "/root", ".cache",
                                           "go-build"))
    env.update(extra_env or {})
    cmd = ["go", "test", "-count=1", "-v", "-parallel", "1", "-run", run, "."]
    r = subprocess.run(cmd, cwd=DRIVER_DIR, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return r


def start_daemon(daemon_factory, tmp_path):
    # A short socket path: sun_path is 108 bytes and pytest's tmp paths are long.
    sock_dir = tmp_path / "s"
    sock_dir.mkdir()
    sock = str(sock_dir / "snap.sock")
    d = daemon_factory(extra_args=["--snapshotter-socket", sock])
    harness.wait_until(lambda: os.path.exists(sock), 20, what="snapshotter socket")
    return d, sock


def results(output):
    """{subtest: PASS|FAIL|SKIP} of the conformance suite from go test -v output."""
    return {m.group(2): m.group(1) for m in re.finditer(
        r"^\s*--- (PASS|FAIL|SKIP): TestSnapshotterConformance/(\S+)", output, re.M)}


def test_conformance_suite(daemon_factory, tmp_path):
    d, sock = start_daemon(daemon_factory, tmp_path)
    r = go_test(tmp_path, sock, "^TestSnapshotterConformance$")
    res = results(r.stdout)
    summary = "go test exit %d; results %s\n%s" % (r.returncode, res, r.stdout[-8000:])
    assert r.returncode == 0, summary
    assert sorted(t for t, v in res.items() if v == "PASS") == sorted(SUITE_TESTS), summary
    assert sorted(t for t, v in res.items() if v == "SKIP") == sorted(SUITE_SKIPS), summary
    assert re.search(r"^--- PASS: TestSnapshotterConformance ", r.stdout, re.M), summary
    # The driver removed every snapshot and the daemon's Cleanup every directory.
    assert os.listdir(os.path.join(d.state_dir, "snapshots")) == []


def test_metadata_survives_restart(daemon_factory, tmp_path):
    d, sock = start_daemon(daemon_factory, tmp_path)
    r = go_test(tmp_path, sock, "^TestSnapshotterPersist$", {"P2PBLOBS_SNAPSHOTTER_PERSIST": "write"})
    assert r.returncode == 0 and "--- PASS: TestSnapshotterPersist" in r.stdout, r.stdout[-4000:]
    snaps = os.path.join(d.state_dir, "snapshots")
    assert len(os.listdir(snaps)) == 2, os.listdir(snaps)  # the committed base and the child
    d.restart()  # SIGTERM (exit 0 checked), start on the same state dir
    harness.wait_until(lambda: os.path.exists(sock), 20, what="snapshotter socket")
    r = go_test(tmp_path, sock, "^TestSnapshotterPersist$", {"P2PBLOBS_SNAPSHOTTER_PERSIST": "check"})
    assert r.returncode == 0 and "--- PASS: TestSnapshotterPersist" in r.stdout, r.stdout[-4000:]
    assert os.listdir(snaps) == []


@pytest.mark.expect_log(r"cannot serve the containerd snapshotter")
def test_bad_socket_path_stops_the_daemon(daemon_factory, tmp_path):
    d = daemon_factory(extra_args=["--snapshotter-socket", str(tmp_path / "no" / "such" / "s")],
                       start=False)
    d.start(wait=False)
    d.expected_exit = True  # exiting is what this test wants
    harness.wait_until(lambda: d.proc.poll() is not None, 20, what="daemon exit")
    assert d.proc.returncode != 0
    assert "cannot serve the containerd snapshotter" in d.log_text()


def test_ctr_run_with_the_p2pblobs_snapshotter(daemon_factory, private_registry, tmp_path):
    """A private containerd 1.6 with [proxy_plugins.p2pblobs] pulls a small image into our
    snapshotter (ctr pull passes no layer labels: every layer is unpacked into our snapshots)
    and runs it."""
    import ctrd
    why = ctrd.available()
    if why:
        pytest.skip(why)
    d, sock = start_daemon(daemon_factory, tmp_path)
    c = ctrd.Containerd(tmp_path / "containerd", snapshotter="p2pblobs")
    with open(c.config_path, "a") as f:
        f.write('[proxy_plugins.p2pblobs]\n  type = "snapshot"\n  address = "%s"\n' % sock)
    c.start()
    try:
        img = ctrd.push_image(private_registry, "p2pblobs/snap", "v1", [ctrd.busybox_layer()])
        ref = "%s/p2pblobs/snap:v1" % private_registry.hostport
        hosts = tmp_path / "hosts"
        hosts.mkdir()
        r, _ = c.pull(ref, str(hosts), "--plain-http")
        assert r.returncode == 0, r.stdout + r.stderr + c.log_text()[-3000:]
        run = c.run(ref, "snap1", "/bin/busybox", "echo", "hello from p2pblobs")
        assert run.returncode == 0, run.stdout + run.stderr + c.log_text()[-3000:]
        assert run.stdout.strip() == "hello from p2pblobs"
        # The layer was unpacked into one of our snapshots: containerd names it by chain id.
        snaps = c.ctr("snapshots", "--snapshotter", "p2pblobs", "ls")
        assert snaps.returncode == 0 and "Committed" in snaps.stdout, snaps.stdout + snaps.stderr
        assert os.path.exists(os.path.join(d.state_dir, "snapshots"))
        assert any(os.path.exists(os.path.join(d.state_dir, "snapshots", n, "fs", "bin", "busybox"))
                   for n in os.listdir(os.path.join(d.state_dir, "snapshots")))
        assert img["layers"]
    finally:
        c.stop()
