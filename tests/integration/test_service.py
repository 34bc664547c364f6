"""Running p2pblobsd as a service (issue 5): make install, the systemd units, sd_notify, stale
mount recovery, graceful SIGTERM with a reader in flight, SIGHUP reload, capabilities, and
the Kubernetes manifests."""

import errno
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from harness import MiB

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_DIR = os.path.join(REPO_ROOT, "deploy", "kubernetes")
UNIT = os.path.join(REPO_ROOT, "systemd", "p2pblobs.service")
DEFAULT_CONF = os.path.join(REPO_ROOT, "deploy", "p2pblobs.conf")
SHUTDOWN_DRAIN_S = 10  # SHUTDOWN_DRAIN_MS in fs/main.c


# --------------------------------------------------------------------------- helpers

class NotifyListener:
    """A NOTIFY_SOCKET of our own (sd_notify speaks to any unix datagram socket). Records every
    message with the time it arrived; on READY=1 it looks at the mount right away, from the
    receiving thread, so what it saw is what was true when READY came."""

    def __init__(self, path, mountpoint):
        self.path = str(path)
        self.mountpoint = str(mountpoint)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic, {key: value})
        self.ready_checks = []  # (mount ids, listdir of blobs/ worked) at each READY=1
        self._lock = threading.Lock()
        self._stop = False
        self._syncs = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            if fields.get("READY") == "1":
                ids = harness.mount_ids(self.mountpoint)
                try:
                    os.listdir(os.path.join(self.mountpoint, "blobs"))
                    answered = True
                except OSError:
                    answered = False
                with self._lock:
                    self.ready_checks.append((ids, answered))
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def env(self):
        return dict(os.environ, NOTIFY_SOCKET=self.path)

    def all(self, key=None):
        with self._lock:
            return [m for _t, m in self.messages if key is None or key in m]

    def wait_for(self, key, value=None, count=1, timeout=20):
        def have():
            got = [m for m in self.all(key) if value is None or m[key] == value]
            return got if len(got) >= count else None
        return harness.wait_until(have, timeout, what="%s=%s from the daemon" % (key, value))

    def sync(self, timeout=10):
        """Return once every datagram sent to us before this call has been recorded: a marker
        of our own, sent now, queues behind them (a unix datagram socket keeps order)."""
        self._syncs += 1
        token = str(self._syncs)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(("X_TEST_SYNC=%s\n" % token).encode(), self.path)
        self.wait_for("X_TEST_SYNC", token, timeout=timeout)

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    made = []

    def make(mountpoint):
        n = NotifyListener(tmp_path / ("notify%d.sock" % len(made)), mountpoint)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def _make_notified_daemon(daemon_factory, notify, tmp_path, name, **kw):
    mnt = tmp_path / name / "mnt"
    os.makedirs(mnt, exist_ok=True)
    n = notify(mnt)
    d = daemon_factory(mountpoint=str(mnt), env=n.env(), **kw)
    return d, n


def _install(build_dir, prefix, sysconfdir):
    """make install into a real path (no DESTDIR), so the unit's ExecStart names a binary that
    exists and systemd-analyze can check it. `-o build`: install what the tests run, never
    rebuild here."""
    r = subprocess.run(["make", "-s", "-C", REPO_ROOT, "-o", "build", "install",
                        "PREFIX=%s" % prefix, "SYSCONFDIR=%s" % sysconfdir,
                        "BUILD=%s" % build_dir],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert r.returncode == 0, "make install failed:\n" + r.stdout
    return r.stdout


def _daemon_options(build_dir):
    """Long option names from p2pblobsd --help (the option table)."""
    out = subprocess.run([os.path.join(build_dir, "p2pblobsd"), "--help"],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    names = re.findall(r"^\s+--([a-z][a-z-]+)", out, re.M)
    assert len(names) > 10, out
    return names


def _config_accepted(build_dir, path):
    """p2pblobsd reads the file before acting on --help, so rc 0 means every key parsed."""
    r = subprocess.run([os.path.join(build_dir, "p2pblobsd"), "--config", path, "--help"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return r.returncode == 0, r.stderr


def _write_conf(path, **keys):
    with open(path, "w") as f:
        for k, v in keys.items():
            f.write("%s = %s\n" % (k.replace("_", "-"), v))


# --------------------------------------------------------------------------- install, units

def test_make_install_layout_and_systemd_verify(build_dir, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed (make deps)")
    root = tmp_path / "root"
    prefix, etc = str(root / "usr"), str(root / "etc")
    _install(build_dir, prefix, etc)
    unitdir = os.path.join(prefix, "lib", "systemd", "system")
    for rel in ("sbin/p2pblobsd", "sbin/blobctl"):
        assert os.access(os.path.join(prefix, rel), os.X_OK), rel
    for rel in ("share/man/man8/p2pblobsd.8", "share/man/man8/blobctl.8",
                "lib/tmpfiles.d/p2pblobs.conf", "lib/systemd/system/p2pblobs.service",
                "lib/systemd/system/containerd.service.d/p2pblobs.conf"):
        assert os.path.isfile(os.path.join(prefix, rel)), rel
    for rel in ("p2pblobs/p2pblobs.conf", "p2pblobs/certs.d/_default/hosts.toml",
                "containerd/conf.d/p2pblobs.toml", "containerd/conf.d/p2pblobs-snapshotter.toml"):
        assert os.path.isfile(os.path.join(etc, rel)), rel

    # PREFIX reaches ExecStart: the unit starts the binary that was installed.
    unit = open(os.path.join(unitdir, "p2pblobs.service")).read()
    assert re.search(r"^ExecStart=%s/sbin/p2pblobsd " % re.escape(prefix), unit, re.M), unit

    # systemd-analyze verify: the service, and containerd with our drop-in applied (a stand-in
    # containerd.service next to it; verify loads drop-ins from the unit's directory).
    with open(os.path.join(unitdir, "containerd.service"), "w") as f:
        f.write("[Unit]\nDescription=stand-in containerd\n[Service]\nExecStart=/bin/true\n")
    env = dict(os.environ, MANPATH=os.path.join(prefix, "share", "man") + ":")
    units = [os.path.join(unitdir, "p2pblobs.service"), os.path.join(unitdir, "containerd.service")]
    r = subprocess.run([analyze, "verify"] + units, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=env)
    assert r.returncode == 0, r.stdout
    # At the default level verify prints only problems; none may concern our files.
    ours = [l for l in r.stdout.splitlines() if "p2pblobs" in l or "containerd" in l]
    assert not ours, "systemd-analyze complained:\n" + r.stdout
    r = subprocess.run([analyze, "verify"] + units, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True,
                       env=dict(env, SYSTEMD_LOG_LEVEL="debug"))
    assert "containerd.service.d/p2pblobs.conf" in r.stdout, "drop-in not loaded"

    # The installed config parses, and the parser really checks (a bogus key is refused).
    conf = os.path.join(etc, "p2pblobs", "p2pblobs.conf")
    ok, err = _config_accepted(build_dir, conf)
    assert ok, err
    with open(conf, "a") as f:
        f.write("no-such-key = 1\n")
    assert not _config_accepted(build_dir, conf)[0]

    # An upgrade (install again) keeps the operator's edited config.
    out = _install(build_dir, prefix, etc)
    assert "no-such-key" in open(conf).read()
    assert "KEEP" in out


def test_unit_settings():
    unit = open(UNIT).read()
    settings = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    assert settings["Type"] == ["notify"]
    assert "containerd.service" in " ".join(settings["Before"])
    for key in ("MemoryHigh", "MemoryMax", "LimitNOFILE", "CacheDirectory", "RuntimeDirectory",
                "WatchdogSec", "ExecReload", "CapabilityBoundingSet", "DeviceAllow",
                "NoNewPrivileges"):
        assert key in settings, key
    assert settings["CapabilityBoundingSet"] == ["CAP_SYS_ADMIN"]
    # Options that give the service its own mount namespace would hide the FUSE mount from
    # containerd; the mountpoint must not be a StateDirectory (stale mount => start fails).
    for key in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "ReadWritePaths", "ReadOnlyPaths", "TemporaryFileSystem", "StateDirectory",
                "MountFlags"):
        assert key not in settings, "%s creates a mount namespace or manages the mountpoint" % key


def test_docs_cover_every_option(build_dir):
    names = _daemon_options(build_dir)
    man = open(os.path.join(REPO_ROOT, "man", "p2pblobsd.8")).read().replace("\\-", "-")
    conf = open(DEFAULT_CONF).read()
    for name in names:
        assert "--" + name in man, "p2pblobsd(8) does not document --%s" % name
        if name not in ("config", "foreground", "help", "version"):
            assert re.search(r"^#?%s = " % re.escape(name), conf, re.M), \
                "deploy/p2pblobs.conf does not list %s" % name
    blobctl_man = open(os.path.join(REPO_ROOT, "man", "blobctl.8")).read()
    for word in ("add", "ls", "stat", "--socket", "EXIT STATUS"):
        assert word in blobctl_man.replace("\\-", "-"), word
    if shutil.which("groff"):
        for page in ("p2pblobsd.8", "blobctl.8"):
            r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(REPO_ROOT, "man", page)],
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, LC_ALL="C"))
            assert r.returncode == 0 and not r.stderr.strip(), r.stderr


# --------------------------------------------------------------------------- sd_notify

def test_ready_only_once_mount_answers(registry, blobs, daemon_factory, notify, tmp_path):
    d, n = _make_notified_daemon(daemon_factory, notify, tmp_path, "n", registries=[registry])
    ready = n.wait_for("READY", "1")
    assert len(ready) == 1
    # What the listener saw at the moment READY arrived: our mount in place, and answering.
    ids, answered = n.ready_checks[0]
    assert len(ids) == 1, "READY=1 before the mount existed (mount ids %r)" % ids
    assert answered, "READY=1 before a lookup through the mount was answered"
    assert re.search(r"cache .* of 10\.0 GiB", ready[0]["STATUS"]), ready[0]
    assert "hit ratio" in ready[0]["STATUS"] and "peers" in ready[0]["STATUS"]

    # The STATUS figures follow the cache.
    b = blobs["b8"]
    d.add(b.ref)
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest
    assert d.stop() == 0
    stopping = n.wait_for("STOPPING", "1")
    assert stopping[0]["STATUS"].startswith("stopping")
    assert not n.all("WATCHDOG"), "watchdog pings without WATCHDOG_USEC"


def test_status_lines_and_watchdog(registry, blobs, daemon_factory, notify, tmp_path):
    mnt = tmp_path / "w" / "mnt"
    os.makedirs(mnt)
    n = notify(mnt)
    env = n.env()
    # The watchdog is meant for us when WATCHDOG_PID is ours: the harness starts the daemon
    # itself (no prefix), so Popen's pid is unknown in advance; leave WATCHDOG_PID unset, which
    # sd_watchdog_enabled() accepts.
    env["WATCHDOG_USEC"] = "1000000"  # 1 s: pings every 0.5 s, with a STATUS line each
    d = daemon_factory(mountpoint=str(mnt), env=env, registries=[registry])
    n.wait_for("READY", "1")
    b = blobs["one_mib"]
    d.add(b.ref)
    harness.read_file(d.blob_path(b.digest))
    n.wait_for("WATCHDOG", "1", count=3, timeout=10)
    got = harness.wait_until(
        lambda: [m for m in n.all("STATUS") if re.search(r"1 blobs, origin 1\.0 MiB", m["STATUS"])],
        10, what="a STATUS line with the blob and the origin bytes")
    assert "cache 1.0 MiB of 10.0 GiB" in got[-1]["STATUS"], got[-1]


@pytest.mark.expect_log(r"level=error cannot (prepare mountpoint|mount) path=\S+/a-file/mnt "
                        r"err=\"?Not a directory")
def test_no_ready_when_mount_fails(daemon_factory, notify, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    n = notify(tmp_path / "unused")
    d = daemon_factory(env=n.env(), start=False,
                       extra_args=["--mountpoint", str(blocker / "mnt")])
    d.start(wait=False)
    d.expected_exit = True  # this daemon is meant to fail
    rc = d.proc.wait(20)
    n.sync()  # whatever the daemon sent before it exited has been read
    assert rc != 0
    assert not n.all("READY"), n.all()
    assert d.log_lines(r"cannot (mount|prepare mountpoint)")
    # One line for one failure, and its hint about the mountpoint, not /dev/fuse.
    errors = d.log_lines(r"level=error")
    assert len(errors) == 1 and "must be a directory" in errors[0], errors


# --------------------------------------------------------------------------- stale mount

def test_stale_mount_from_kill9_recovered(registry, blobs, daemon_factory, notify, tmp_path):
    d, n = _make_notified_daemon(daemon_factory, notify, tmp_path, "k", registries=[registry])
    b = blobs["b3"]
    d.add(b.ref)
    assert harness.read_file(d.blob_path(b.digest)) == b.data
    d.kill9()
    with pytest.raises(OSError) as e:
        os.listdir(d.blobs_dir)
    assert e.value.errno == errno.ENOTCONN, "kill -9 did not leave a stale mount: %r" % e.value
    assert len(harness.mount_ids(d.mountpoint)) == 1

    d.start()
    n.wait_for("READY", "1", count=2)
    assert len(harness.mount_ids(d.mountpoint)) == 1, "stale mount left stacked under the new"
    assert n.ready_checks[-1][1], "READY=1 after restart before the mount answered"
    assert d.log_lines(r"stale mount")
    assert harness.read_file(d.blob_path(b.digest)) == b.data
    assert d.stop() == 0
    assert harness.mount_count(d.mountpoint) == 0


# --------------------------------------------------------------------------- SIGTERM

def _reader(path, offset, length, out, hold=None):
    """pread in a thread; OUT gets ("data", bytes) or ("error", OSError). With HOLD (an Event),
    the file stays open until it is set."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            out.append(("data", os.pread(fd, length, offset)))
        except OSError as e:
            out.append(("error", e))
        if hold is not None:
            hold.wait(60)
    finally:
        os.close(fd)


def _start_stalled_read(private_registry, daemon_factory, notify, tmp_path, name, hold=None):
    reg = private_registry
    blob = harness.make_blob(reg, name, harness.gen_bytes(sum(name.encode()), 4 * MiB))
    d, n = _make_notified_daemon(daemon_factory, notify, tmp_path, name, registries=[reg])
    n.wait_for("READY", "1")
    d.add(blob.ref)
    reg.pause()  # the origin accepts connections and never answers
    out = []
    t = threading.Thread(target=_reader, args=(d.blob_path(blob.digest), 0, MiB, out, hold),
                         daemon=True)
    t.start()
    harness.wait_until(lambda: d.stat()["fetched"]["inflight_chunks"] >= 1, 10,
                       what="the read to be waiting on the origin")
    assert not out, "the read finished while the origin was paused: %r" % out[:1]
    return reg, blob, d, n, t, out


def test_sigterm_lets_inflight_read_finish(private_registry, daemon_factory, notify, tmp_path):
    reg, blob, d, n, t, out = _start_stalled_read(private_registry, daemon_factory, notify,
                                                  tmp_path, "finish")
    d.expected_exit = True  # we signal it ourselves; stop() below still checks exit 0
    d.proc.send_signal(signal.SIGTERM)
    n.wait_for("STOPPING", "1", timeout=5)
    # Stopped accepting work: the mount is detached while the read is still waiting.
    harness.wait_until(lambda: harness.mount_count(d.mountpoint) == 0, 5,
                       what="the mount to be detached")
    assert d.alive() and not out
    reg.resume()
    t.join(15)
    assert out and out[0][0] == "data", "the in-flight read did not finish: %r" % out
    assert out[0][1] == blob.data[:MiB]
    rc = d.stop(timeout=20, unmount=False)
    assert rc == 0
    assert harness.mount_count(d.mountpoint) == 0
    assert d.log_lines(r"\bstopped\b")
    assert not d.log_lines(r"failed to unmount")


def test_sigterm_fails_stalled_read_within_deadline(private_registry, daemon_factory, notify,
                                                    tmp_path):
    hold = threading.Event()
    reg, blob, d, n, t, out = _start_stalled_read(private_registry, daemon_factory, notify,
                                                  tmp_path, "stall", hold=hold)
    t0 = time.monotonic()
    d.expected_exit = True  # we signal it ourselves and check the exit status below
    d.proc.send_signal(signal.SIGTERM)
    try:
        rc = d.proc.wait(SHUTDOWN_DRAIN_S + 15)
    finally:
        hold.set()  # the reader held its file open across the whole shutdown
    elapsed = time.monotonic() - t0
    assert rc == 0, "exit %s on SIGTERM\n%s" % (rc, d.log_text()[-3000:])
    assert elapsed < SHUTDOWN_DRAIN_S + 15
    t.join(10)
    assert out and out[0][0] == "error", "the stalled read got %r" % (out,)
    assert out[0][1].errno in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED), out[0][1]
    d.stop(unmount=False)  # reap and record: exit 0 and no mount left
    assert harness.mount_count(d.mountpoint) == 0
    assert not d.log_lines(r"failed to unmount")

    # The index was flushed: after a restart the blob is still known, and readable.
    reg.resume()
    d.start()
    assert [x["digest"] for x in d.ls()] == [blob.digest]
    assert harness.read_file(d.blob_path(blob.digest)) == blob.data


# --------------------------------------------------------------------------- SIGHUP

def test_sighup_reloads_budget(registry, blobs, daemon_factory, notify, tmp_path):
    conf = tmp_path / "p2pblobs.conf"
    _write_conf(conf, cache_budget="64M")
    d, n = _make_notified_daemon(daemon_factory, notify, tmp_path, "hup", registries=[registry],
                                 config=str(conf))
    n.wait_for("READY", "1")
    b = blobs["b32"]
    d.add(b.ref)
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest
    s = d.stat()
    assert s["cache"]["budget_bytes"] == 64 * MiB
    assert s["cache"]["used_bytes"] >= 24 * MiB, s["cache"]

    _write_conf(conf, cache_budget="8M")
    d.proc.send_signal(signal.SIGHUP)
    n.wait_for("RELOADING", "1")
    n.wait_for("READY", "1", count=2)

    def shrunk():
        c = d.stat()["cache"]
        return c if c["budget_bytes"] == 8 * MiB and c["used_bytes"] <= 8 * MiB else None
    harness.wait_until(shrunk, 10, what="the store to shrink to the new budget")
    harness.wait_until(lambda: harness.allocated_bytes(d.chunks_dir) <= 9 * MiB, 10,
                       what="chunk files to shrink on disk (%d bytes)"
                       % harness.allocated_bytes(d.chunks_dir))
    assert d.log_lines(r"cache budget changed")
    # Still serving, from the smaller cache.
    assert harness.sha256_file(d.blob_path(b.digest))[0] == b.digest

    # A broken file is refused and the running configuration kept.
    with open(conf, "w") as f:
        f.write("cache-budget = lots\n")
    d.proc.send_signal(signal.SIGHUP)
    n.wait_for("READY", "1", count=3)
    assert d.alive()
    assert d.stat()["cache"]["budget_bytes"] == 8 * MiB
    assert d.log_lines(r"reload failed", levels=("warning",))
    assert d.stop() == 0


# --------------------------------------------------------------------------- capabilities

def test_serves_with_only_cap_sys_admin(registry, blobs, daemon_factory):
    """What the unit (CapabilityBoundingSet=CAP_SYS_ADMIN, NoNewPrivileges=) and the
    DaemonSet (capabilities: add SYS_ADMIN) grant is enough: mount, serve, detach, exit 0."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed")
    d = daemon_factory(registries=[registry],
                       prefix=[setpriv, "--bounding-set=-all,+sys_admin", "--no-new-privs"])
    with open("/proc/%d/status" % d.proc.pid) as f:
        caps = dict(l.split(":\t", 1) for l in f.read().splitlines() if l.startswith("Cap"))
    assert int(caps["CapBnd"], 16) == 1 << 21, caps  # CAP_SYS_ADMIN only
    b = blobs["small200k"]
    d.add(b.ref)
    assert harness.read_file(d.blob_path(b.digest)) == b.data
    assert d.stop(unmount=False) == 0
    assert harness.mount_count(d.mountpoint) == 0


# --------------------------------------------------------------------------- Kubernetes

def _load_manifests():
    yaml = pytest.importorskip("yaml")
    docs = []
    for path in sorted(glob.glob(os.path.join(K8S_DIR, "*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests(build_dir, tmp_path):
    m = _load_manifests()
    for kind in ("DaemonSet", "Service", "ConfigMap"):
        assert kind in m, "deploy/kubernetes has no %s" % kind
    ds, svc, cm = m["DaemonSet"], m["Service"], m["ConfigMap"]

    # Headless Service selecting the DaemonSet's pods on the peer port.
    assert svc["spec"]["clusterIP"] == "None"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert ds["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [5001]

    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (c,) = pod["containers"]
    res = c["resources"]
    assert res["requests"]["memory"] and res["limits"]["memory"]
    assert "cpu" not in res.get("limits", {}), "a CPU limit throttles the FUSE server"
    for probe in ("startupProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/readyz"
        assert get["port"] in (5001, "peer")
    assert "livenessProbe" not in c
    sc = c["securityContext"]
    assert sc["capabilities"]["add"] == ["SYS_ADMIN"] and sc["capabilities"]["drop"] == ["ALL"]
    # The API server allows Bidirectional propagation only for privileged containers.
    assert sc["privileged"] is True

    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {vm["mountPath"]: vm for vm in c["volumeMounts"]}
    conf_text = cm["data"]["p2pblobs.conf"]
    conf = dict(re.findall(r"^([a-z-]+)\s*=\s*(\S+)", conf_text, re.M))

    tree = mounts[conf["mountpoint"]]
    assert tree["mountPropagation"] == "Bidirectional"
    assert vols[tree["name"]]["hostPath"]["path"] == conf["mountpoint"]
    state = mounts[conf["state-dir"]]
    assert "hostPath" in vols[state["name"]], "the cache must survive pod restarts"
    fuse = mounts["/dev/fuse"]
    assert vols[fuse["name"]]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    cfg = [vm for vm in c["volumeMounts"] if "configMap" in vols[vm["name"]]]
    assert cfg and cfg[0]["mountPath"] == "/etc/p2pblobs"
    assert vols[cfg[0]["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert "/etc/p2pblobs/p2pblobs.conf" in c["command"]
    assert os.path.dirname(conf["control-socket"]) in mounts

    # The ConfigMap's file is one the daemon accepts.
    path = tmp_path / "cm.conf"
    path.write_text(conf_text)
    ok, err = _config_accepted(build_dir, str(path))
    assert ok, err


@pytest.mark.root  # mounts without daemon_factory: the daemon must detach on its own
def test_without_foreground_detaches_once_serving(build_dir, registry, tmp_path):
    """Without --foreground the command returns once the mount serves (exit 0), leaving the
    daemon running in its own session; a start that fails returns non-zero."""
    port = harness.free_port()

    def argv(name):
        return [os.path.join(build_dir, "p2pblobsd"), "--config", "/dev/null",
                "--mountpoint", str(tmp_path / ("mnt" + name)),
                "--state-dir", str(tmp_path / ("st" + name)),
                "--control-socket", str(tmp_path / ("c%s.sock" % name)),
                "--listen", "127.0.0.1:%d" % port]

    mnt, sock = tmp_path / "mnt", tmp_path / "c.sock"
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        try:
            r = subprocess.run(argv(""), stdout=log, stderr=log, timeout=30)
            assert r.returncode == 0
            # Serving the moment the command returns.
            assert os.listdir(str(mnt / "blobs" / "sha256")) == []
            out = subprocess.run([os.path.join(build_dir, "blobctl"), "--socket", str(sock),
                                  "stat", "--json"], capture_output=True, text=True, timeout=10)
            assert out.returncode == 0, out
            # A second daemon on the same HTTP port fails, and its exit status says so.
            r2 = subprocess.run(argv("2"), stdout=log, stderr=log, timeout=30)
            assert r2.returncode == 1
            assert not harness.is_mounted(str(tmp_path / "mnt2"))
        finally:
            subprocess.run(["pkill", "-TERM", "-f", "--", "--control-socket %s " % sock])
            harness.wait_until(lambda: not harness.is_mounted(str(mnt)), 20,
                               what="the detached daemon to unmount")
    # "stopped" is the last line, logged after the index is flushed, some time after unmount.
    harness.wait_until(lambda: "level=notice stopped" in log_path.read_text(), 20,
                       what="the detached daemon to exit")
    # The second daemon's bind failure is the one error this test provokes.
    problems = harness.log_problems(log_path.read_text(), expected=[
        r"level=error cannot serve HTTP listen=127\.0\.0\.1:%d err=\"?Address already in use" % port])
    assert not problems, "\n".join(problems)
