"""Integration-test harness for p2pblobs: a real docker-registry and a real p2pblobsd mount.

Everything here is parametrised by addresses and paths (no module globals hold state), so later
tests can run several registries and daemons side by side, e.g. inside network namespaces:
pass ``prefix=["nsenter", "--net=/run/netns/ns1"]`` to run a process inside one, and the
address the process should listen on / talk to. Prefer nsenter --net over ``ip netns exec``:
the latter also enters a private mount namespace, so a daemon's FUSE mount would be invisible
to the test process. (nsenter without --pid execs, so Popen.pid is the daemon itself.)

Standard library only.
"""

import errno
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import stat as stat_mod
import subprocess
import time
import urllib.parse

REGISTRY_BIN = "/usr/bin/docker-registry"
# What a sanitizer report contains ("==N==ERROR: AddressSanitizer: ...", "ERROR: LeakSanitizer",
# UBSan's "file.c:12:3: runtime error: ..." and its "SUMMARY: UndefinedBehaviorSanitizer").
# A report is always a failure: expect_log cannot excuse one.
SANITIZER_MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer",
                     "UndefinedBehaviorSanitizer", "ThreadSanitizer")
# Lines at this syslog severity or worse (error, crit, alert, emerg) fail a test unless it
# declares them with @pytest.mark.expect_log(r"regex", ...) or Daemon(expect_log=[...]).
UNEXPECTED_LEVEL = 3
MiB = 1024 * 1024
KiB = 1024


_SYSLOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "critical": 2, "err": 3, "error": 3,
                  "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7}


def line_level(line):
    """Syslog severity of a daemon log line (util/log.c writes "<3>level=error msg..."): from
    the <N> prefix journald reads, else from a level=NAME field; None for other lines (FUSE's
    own messages, the harness's "==== start" lines)."""
    m = re.match(r"\s*<(\d)>", line)
    if m:
        return int(m.group(1))
    m = re.search(r"\blevel=\"?(\w+)", line)
    if m and m.group(1).lower() in _SYSLOG_LEVELS:
        return _SYSLOG_LEVELS[m.group(1).lower()]
    return None


def log_problems(text, expected=()):
    """What in the daemon log TEXT fails a test: sanitizer report lines (always), and lines at
    error severity or worse that match none of the regexes EXPECTED (re.search). Returns a
    list of strings, empty when the log is clean."""
    rx = [re.compile(p) for p in expected]
    sanitizer, unexpected = [], []
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            sanitizer.append(line)
            continue
        lv = line_level(line)
        if lv is not None and lv <= UNEXPECTED_LEVEL and not any(r.search(line) for r in rx):
            unexpected.append(line)
    out = []
    if sanitizer:
        out.append("sanitizer report in daemon log:\n  " + "\n  ".join(sanitizer[:20]))
    if unexpected:
        out.append("unexpected error line(s) in daemon log (declare expected ones with "
                   "@pytest.mark.expect_log(r\"regex\")):\n  " + "\n  ".join(unexpected[:20])
                   + ("\n  ... %d more" % (len(unexpected) - 20) if len(unexpected) > 20 else ""))
    return out


class HarnessError(AssertionError):
    """A harness-level failure (process died, timeout): reported as a test failure."""


# --------------------------------------------------------------------------- helpers

def free_port(host="127.0.0.1"):
    """A TCP port that is free on HOST right now (bind to 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return s.getsockname()[1]


def gen_bytes(seed, size):
    """SIZE deterministic pseudo-random bytes for SEED (same on every run)."""
    return random.Random(seed).randbytes(size)


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest):
    assert digest.startswith("sha256:"), digest
    return digest[len("sha256:"):]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll PRED until truthy; return its value or raise HarnessError after TIMEOUT seconds.

    The one way a test waits for something to happen: the machine is shared and loaded, so a
    fixed sleep before an assertion either wastes time or asserts too early. Wait for the
    condition itself (or, before asserting that something did NOT happen, for a positive sign
    that the daemon got the chance: a refresh counted, a later event logged)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


wait_for = wait_until  # the same helper, under the name some tests use


def is_mounted(path):
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def mount_count(path):
    """How many mounts are stacked on PATH, from /proc/self/mountinfo (counts stale FUSE mounts
    too, where stat() gives ENOTCONN)."""
    real = os.path.realpath(path)
    n = 0
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == real:
                    n += 1
    except OSError:
        pass
    return n


def mount_ids(path):
    """Mount IDs stacked on PATH, bottom first (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    ids = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == real:
                    ids.append(int(fields[0]))
    except OSError:
        pass
    return ids


def _mountinfo_has(path):
    return mount_count(path) > 0


def force_unmount(path):
    """Unmount PATH whatever state it is in (live, stale ENOTCONN, busy). Idempotent."""
    for _ in range(5):
        if not _mountinfo_has(path):
            return
        subprocess.run(["fusermount3", "-u", "-z", path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not _mountinfo_has(path):
            return
        subprocess.run(["umount", "-l", path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.1)


def drop_caches(paths=()):
    """Drop the kernel page cache so re-reads reach the daemon: the global drop_caches when we
    may (root), and in any case POSIX_FADV_DONTNEED on each of PATHS (works on FUSE files)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def allocated_bytes(root):
    """Real allocated bytes of all files under ROOT (sum of st_blocks * 512). Files vanishing
    while we walk (eviction, deletion) are skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat_mod.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def read_file(path, block=MiB):
    """Read PATH sequentially in BLOCK-sized reads; returns the bytes."""
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(block)
            if not b:
                break
            out += b
    return bytes(out)


def sha256_file(path, block=MiB):
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
            n += len(b)
    return "sha256:" + h.hexdigest(), n


def pread_exact(path, offset, length):
    """pread LENGTH bytes at OFFSET (looping over short reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while len(out) < length:
            b = os.pread(fd, length - len(out), offset + len(out))
            if not b:
                break
            out += b
        return bytes(out)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- registry log

# logrus text format: key=value or key="quoted \" value"
_KV_RE = re.compile(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logrus_line(line):
    """Parse one logrus text line (time="..." level=info msg="..." a.b=c ...) into a dict."""
    out = {}
    for k, v in _KV_RE.findall(line):
        if v.startswith('"') and v.endswith('"') and len(v) >= 2:
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[k] = v
    return out


class RegistryRequest:
    __slots__ = ("method", "uri", "path", "status", "written", "raw")

    def __init__(self, fields):
        self.raw = fields
        self.method = fields.get("http.request.method", "")
        self.uri = fields.get("http.request.uri", "")
        self.path = urllib.parse.urlsplit(self.uri).path
        try:
            self.status = int(fields.get("http.response.status", "0"))
        except ValueError:
            self.status = 0
        try:
            self.written = int(fields.get("http.response.written", "0"))
        except ValueError:
            self.written = 0

    def __repr__(self):
        return "<%s %s -> %d (%d bytes)>" % (self.method, self.uri, self.status, self.written)


# --------------------------------------------------------------------------- Registry

class Registry:
    """A real `docker-registry serve` on HOST:PORT with filesystem storage under WORKDIR.

    The registry's own log (logrus text, level info) records one "response completed" line per
    request with http.request.method, http.request.uri, http.response.status and
    http.response.written (body bytes actually written), which lets tests count what the origin
    served independently of the daemon's own statistics.
    """

    def __init__(self, workdir, host="127.0.0.1", port=None, binary=REGISTRY_BIN, prefix=(),
                 env=None):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary
        self.prefix = list(prefix)
        self.env = env
        self.rootdir = os.path.join(self.workdir, "storage")
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.proc = None
        self._logf = None
        self._write_config()

    # -- lifecycle
    @property
    def hostport(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "http://%s" % self.hostport

    def ref(self, repo, digest):
        """The blobctl reference REGISTRY/REPO@sha256:<hex>."""
        return "%s/%s@%s" % (self.hostport, repo, digest)

    def _write_config(self):
        os.makedirs(self.rootdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n"
                "  level: info\n"
                "  formatter: text\n"
                "storage:\n"
                "  filesystem:\n"
                "    rootdirectory: %s\n"
                "  delete:\n"
                "    enabled: true\n"
                "  maintenance:\n"
                "    uploadpurging:\n"
                "      enabled: false\n"
                "http:\n"
                "  addr: %s\n"
                "  secret: p2pblobs-test-secret\n" % (self.rootdir, self.hostport))

    def start(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            return
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.prefix + [self.binary, "serve", self.config_path],
                                     stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError("docker-registry exited with %s:\n%s"
                                   % (self.proc.returncode, self.log_text()[-4000:]))
            try:
                st, _h, _b = self.request("GET", "/v2/", timeout=1)
                if st == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HarnessError("docker-registry not ready on %s after %ss"
                                   % (self.hostport, timeout))
            time.sleep(0.05)

    def stop(self, timeout=10):
        """Stop the registry (SIGTERM, then SIGKILL); the port is free again afterwards."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None

    def pause(self):
        """SIGSTOP the registry: connections are accepted by the kernel but never answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP API
    def request(self, method, path, body=None, headers=None, timeout=30):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, r.headers, data
        finally:
            c.close()

    def push_blob(self, repo, data):
        """Monolithic upload of DATA into REPO; returns "sha256:<hex>"."""
        digest = sha256_digest(data)
        st, h, body = self.request("POST", "/v2/%s/blobs/uploads/" % repo,
                                   headers={"Content-Length": "0"})
        if st != 202:
            raise HarnessError("upload start: %d %r" % (st, body[:300]))
        loc = urllib.parse.urlsplit(h["Location"])
        sep = "&" if loc.query else ""
        path = "%s?%s%sdigest=%s" % (loc.path, loc.query, sep, urllib.parse.quote(digest))
        st, h, body = self.request("PUT", path, body=data,
                                   headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(len(data))})
        if st != 201:
            raise HarnessError("upload put: %d %r" % (st, body[:300]))
        return digest

    def push_manifest(self, repo, reference, manifest_bytes,
                      media_type="application/vnd.oci.image.manifest.v1+json"):
        """PUT a manifest under REFERENCE (tag or digest); returns its digest."""
        st, h, body = self.request("PUT", "/v2/%s/manifests/%s" % (repo, reference),
                                   body=manifest_bytes, headers={"Content-Type": media_type})
        if st != 201:
            raise HarnessError("manifest put: %d %r" % (st, body[:500]))
        return h.get("Docker-Content-Digest") or sha256_digest(manifest_bytes)

    def blob_path_on_disk(self, digest):
        h = hex_of(digest)
        return os.path.join(self.rootdir, "docker", "registry", "v2", "blobs", "sha256",
                            h[:2], h, "data")

    # -- counting what the registry served (from its own log)
    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def settle(self, quiet=0.4, timeout=5):
        """Wait until the log has stopped growing for QUIET seconds (responses are logged when
        they complete, a moment after the client saw the bytes)."""
        deadline = time.monotonic() + timeout
        last = -1
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.log_path)
            except OSError:
                size = 0
            now = time.monotonic()
            if size != last:
                last, last_change = size, now
            elif now - last_change >= quiet:
                return
            time.sleep(0.05)

    def requests(self, settle=True):
        """All requests recorded in the log so far, oldest first."""
        if settle:
            self.settle()
        out = []
        for line in self.log_text().splitlines():
            if "http.request.method=" not in line or "msg=\"response completed" not in line:
                continue
            out.append(RegistryRequest(parse_logrus_line(line)))
        return out

    def mark(self):
        """A position in the request log; pass as SINCE to count only later requests."""
        return len(self.requests())

    def blob_requests(self, digest, method=None, since=0):
        suffix = "/blobs/" + digest
        return [r for r in self.requests()[since:]
                if r.path.endswith(suffix) and (method is None or r.method == method)]

    def blob_get_count(self, digest, since=0):
        return len(self.blob_requests(digest, "GET", since))

    def bytes_served(self, digest, since=0):
        """Body bytes the registry wrote for GETs of DIGEST."""
        return sum(r.written for r in self.blob_requests(digest, "GET", since))

    def total_bytes_served(self, since=0):
        return sum(r.written for r in self.requests()[since:] if r.method == "GET")


class Blob:
    """A blob pushed to a Registry: its bytes, digest and the blobctl reference."""

    def __init__(self, name, repo, data, digest, registry):
        self.name = name
        self.repo = repo
        self.data = data
        self.digest = digest
        self.size = len(data)
        self.hex = hex_of(digest)
        self.ref = registry.ref(repo, digest)

    def __repr__(self):
        return "<Blob %s %s %d>" % (self.name, self.digest[:19], self.size)


def make_blob(registry, name, data, repo="p2pblobs/test"):
    """Push DATA to REGISTRY under REPO and return its Blob."""
    return Blob(name, repo, data, registry.push_blob(repo, data), registry)


# --------------------------------------------------------------------------- Daemon

class Daemon:
    """One p2pblobsd with its own mountpoint, state dir and control socket.

    The log (stdout+stderr) goes to WORKDIR/daemon.log (appended across restarts).
    """

    def __init__(self, build_dir, workdir, registries=(), mountpoint=None, state_dir=None,
                 socket_path=None, extra_args=(), config="/dev/null", prefix=(), env=None,
                 log_level="debug", mount_timeout=20, listen=None, expect_log=()):
        self.build_dir = os.path.abspath(build_dir)
        self.bin = os.path.join(self.build_dir, "p2pblobsd")
        self.blobctl_bin = os.path.join(self.build_dir, "blobctl")
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.mountpoint = mountpoint or os.path.join(self.workdir, "mnt")
        self.state_dir = state_dir or os.path.join(self.workdir, "state")
        self.socket_path = socket_path or os.path.join(self.workdir, "ctl.sock")
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.registries = [r.hostport if isinstance(r, Registry) else r for r in registries]
        self.extra_args = list(extra_args)
        self.config = config
        self.prefix = list(prefix)
        self.log_level = log_level
        self.mount_timeout = mount_timeout
        # The node's HTTP server (/healthz, /readyz, /metrics): a loopback port of its own, so
        # daemons of one test run never compete for the default 0.0.0.0:5001.
        self.listen = listen or "127.0.0.1:%d" % free_port()
        self.env = dict(os.environ if env is None else env)
        # Sanitizer reports go to stderr (our log); make them complete and fatal.
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:"
                                            "detect_stack_use_after_return=1")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        # Regexes of error/crit lines this daemon may log (the test's expect_log markers,
        # added by the fixtures, plus any given here or through expect_log()).
        self.expected_log = list(expect_log)
        self.proc = None
        self._logf = None
        self.expected_exit = False
        self.unexpected_exits = []   # exit statuses of deaths we did not cause
        self.bad_stops = []          # SIGTERM/SIGINT that did not give exit 0 + unmount
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)

    # -- paths
    @property
    def blobs_dir(self):
        return os.path.join(self.mountpoint, "blobs", "sha256")

    def blob_path(self, digest):
        return os.path.join(self.blobs_dir, hex_of(digest))

    @property
    def chunks_dir(self):
        return os.path.join(self.state_dir, "chunks")

    def argv(self):
        a = [self.bin, "--foreground", "--mountpoint", self.mountpoint,
             "--state-dir", self.state_dir, "--control-socket", self.socket_path,
             "--config", self.config, "--log-level", self.log_level, "--listen", self.listen]
        for r in self.registries:
            a += ["--insecure-registry", r]
        if "--mirror-listen" not in self.extra_args:
            # The containerd mirror's default port is one per machine; tests that want the
            # mirror ask for it, the rest keep out of each other's way.
            a += ["--mirror-listen", "off"]
        return self.prefix + a + self.extra_args

    # -- lifecycle
    def start(self, wait=True, extra_args=None):
        if extra_args is not None:
            self.extra_args = list(extra_args)
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("daemon already running")
        self.expected_exit = False
        self._logf = open(self.log_path, "ab")
        self._logf.write(("==== start %s\n" % " ".join(self.argv())).encode())
        self._logf.flush()
        self.proc = subprocess.Popen(self.argv(), stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        if wait:
            self.wait_mounted()
        return self

    def mounted(self):
        """True when a live FUSE mount serves blobs/sha256 at the mountpoint. A stale mount
        (left by kill -9) still answers stat() from its attribute cache, so liveness is checked
        with opendir, which always reaches the daemon."""
        if not mount_ids(self.mountpoint):
            return False
        try:
            os.listdir(self.mountpoint)
            os.listdir(self.blobs_dir)
        except OSError:
            return False
        return True

    def wait_mounted(self, timeout=None):
        timeout = timeout or self.mount_timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HarnessError("p2pblobsd exited with %s before mounting; log:\n%s"
                                   % (self.proc.returncode, self.log_text()[-6000:]))
            try:
                if self.mounted():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HarnessError("p2pblobsd did not mount %s within %ss; log:\n%s"
                                   % (self.mountpoint, timeout, self.log_text()[-6000:]))
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _note_exit(self):
        if self.proc is not None and self.proc.poll() is not None and not self.expected_exit:
            self.unexpected_exits.append(self.proc.returncode)

    def stop(self, sig=signal.SIGTERM, timeout=20, unmount=True):
        """Signal the daemon and wait for it; returns its exit code (None if not running)."""
        if self.proc is None:
            return None
        self._note_exit()
        rc = self.proc.poll()
        signaled = False
        if rc is None:
            self.expected_exit = True
            signaled = True
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_log()
                raise HarnessError("p2pblobsd did not exit within %ss of signal %s"
                                   % (timeout, sig))
        self.expected_exit = True
        self._close_log()
        if signaled and sig in (signal.SIGTERM, signal.SIGINT):
            if rc != 0:
                self.bad_stops.append("exit status %s after %s (expected 0)"
                                      % (rc, signal.Signals(sig).name))
            elif _mountinfo_has(self.mountpoint):
                self.bad_stops.append("still mounted after %s and exit 0"
                                      % signal.Signals(sig).name)
        if unmount:
            force_unmount(self.mountpoint)
        return rc

    def kill9(self):
        """SIGKILL the daemon; the mount is left behind, stale (ENOTCONN)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.expected_exit = True
        self.proc.kill()
        self.proc.wait()
        self._close_log()

    def restart(self, extra_args=None, wait=True):
        """SIGTERM (checking a clean exit 0) and start again on the same state dir."""
        rc = self.stop()
        if rc not in (0, None):
            raise HarnessError("p2pblobsd exited %s on SIGTERM" % rc)
        return self.start(wait=wait, extra_args=extra_args)

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def cleanup(self):
        """Stop whatever is left and unmount; never raises for a dead daemon."""
        try:
            if self.alive():
                self.stop()
        finally:
            self._close_log()
            force_unmount(self.mountpoint)

    # -- log checks
    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern=None, levels=None):
        """Log lines matching regex PATTERN (case-insensitive) and, if LEVELS is given
        (e.g. ("warning", "error")), at least as severe as the least severe of LEVELS
        (judged by the level= field, or the <N> syslog prefix)."""
        out = []
        rx = re.compile(pattern, re.I) if pattern else None
        worst = max(_SYSLOG_LEVELS[l] for l in levels) if levels else None
        for line in self.log_text().splitlines():
            if rx and not rx.search(line):
                continue
            if worst is not None:
                lv = line_level(line)
                if lv is None or lv > worst:
                    continue
            out.append(line)
        return out

    def expect_log(self, *patterns):
        """Declare error/crit lines this daemon may log (regexes, re.search)."""
        self.expected_log += patterns
        return self

    def log_problems(self):
        """Sanitizer reports and undeclared error/crit lines in the log (see log_problems)."""
        return log_problems(self.log_text(), self.expected_log)

    def check_health(self):
        """Raise if the daemon died unexpectedly, did not stop cleanly, or its log shows a
        sanitizer report or an error/crit line nobody declared with expect_log."""
        self._note_exit()
        problems = list(self.log_problems())
        if self.unexpected_exits:
            problems.append("p2pblobsd died unexpectedly (exit status %s)"
                            % self.unexpected_exits)
        for b in self.bad_stops:
            problems.append("p2pblobsd stop: %s" % b)
        if problems:
            raise HarnessError("; ".join(problems) + "\n--- daemon log (tail) ---\n"
                               + self.log_text()[-8000:])

    # -- blobctl
    def blobctl(self, *args, timeout=30, socket_path=None):
        cmd = self.prefix + [self.blobctl_bin, "--socket", socket_path or self.socket_path]
        cmd += [str(a) for a in args]
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=self.env)

    def add(self, ref):
        """blobctl add REF; returns (digest, size); raises on a non-zero exit."""
        r = self.blobctl("add", ref)
        if r.returncode != 0:
            raise HarnessError("blobctl add %s: exit %d\nstdout: %s\nstderr: %s"
                               % (ref, r.returncode, r.stdout, r.stderr))
        fields = r.stdout.split()
        if len(fields) < 2:
            raise HarnessError("blobctl add: unexpected output %r" % r.stdout)
        return fields[0], int(fields[1])

    def stat(self):
        r = self.blobctl("stat", "--json")
        if r.returncode != 0:
            raise HarnessError("blobctl stat: exit %d: %s" % (r.returncode, r.stderr))
        return json.loads(r.stdout)

    def ls(self):
        r = self.blobctl("ls", "--json")
        if r.returncode != 0:
            raise HarnessError("blobctl ls: exit %d: %s" % (r.returncode, r.stderr))
        return json.loads(r.stdout)


def errno_of(exc):
    return getattr(exc, "errno", None)


def is_eio(exc):
    return isinstance(exc, OSError) and exc.errno == errno.EIO
