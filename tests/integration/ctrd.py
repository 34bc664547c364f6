"""A private containerd for integration tests, and a tiny runnable OCI image to pull with it.

- ``Containerd(workdir, prefix=())``: Debian's containerd 1.6 with its own root, state, gRPC
  socket and config (CRI and the snapshotters we do not use disabled), started and stopped by
  the test; ``ctr(...)`` runs ``ctr`` against it; ``pull(ref, hosts_dir)`` is
  ``ctr image pull --hosts-dir DIR`` (which reads hosts.toml files, as CRI does with
  ``config_path``), timed; ``run(ref, *argv)`` is ``ctr run --rm``. With
  ``cri=dict(sandbox_image=REF, hosts_dir=DIR)`` the CRI plugin is on (for cri.py): images
  through the given snapshotter with the layer labels passed to it, registries through DIR,
  host-network pods only, a private runc root.
- ``busybox_layer()``: a gzip'ed tar of a one-binary rootfs (Debian's busybox-static as
  /bin/busybox), deterministic (fixed mtimes, owners, order), so its digest is stable.
- ``push_image(registry, repo, tag, layers)``: pushes config + layers + an OCI manifest (and
  optionally an index around it) with harness.Registry.push_blob/push_manifest; returns the
  digests.

``prefix`` runs the processes elsewhere (e.g. ``["nsenter", "--net=/run/netns/NS"]``).
Standard library only.
"""

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time

import harness

CONTAINERD_BIN = "/usr/bin/containerd"
CTR_BIN = "/usr/bin/ctr"
BUSYBOX = "/bin/busybox"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def available():
    """None when containerd, ctr, runc and busybox are installed, else why not."""
    for p in (CONTAINERD_BIN, CTR_BIN, "/usr/sbin/runc", BUSYBOX):
        if not os.access(p, os.X_OK):
            return "%s is not installed (scripts/deps.sh)" % p
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


class Containerd:
    def __init__(self, workdir, prefix=(), snapshotter="overlayfs", cri=None):
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, exist_ok=True)
        self.root = os.path.join(self.workdir, "root")
        self.state = os.path.join(self.workdir, "state")
        self.address = os.path.join(self.workdir, "containerd.sock")
        self.config_path = os.path.join(self.workdir, "config.toml")
        self.log_path = os.path.join(self.workdir, "containerd.log")
        self.prefix = list(prefix)
        self.snapshotter = snapshotter
        self.proc = None
        self._logf = None
        self.cri = dict(cri) if cri is not None else None
        disabled = [] if cri is not None else ['"io.containerd.grpc.v1.cri"']
        disabled += ['"io.containerd.snapshotter.v1.%s"' % s
                     for s in ("btrfs", "zfs", "devmapper", "aufs")]
        with open(self.config_path, "w") as f:
            f.write('version = 2\n'
                    'root = "%s"\n'
                    'state = "%s"\n'
                    'disabled_plugins = [%s]\n'
                    '[grpc]\n  address = "%s"\n'
                    '[ttrpc]\n  address = "%s.ttrpc"\n'
                    '[debug]\n  level = "info"\n'
                    % (self.root, self.state, ", ".join(disabled), self.address, self.address))
            if cri is not None:
                f.write(self._cri_config(**cri))

    def _cri_config(self, sandbox_image, hosts_dir):
        """The CRI plugin as a test node wants it: SNAPSHOTTER for images, the layer labels
        passed to it (disable_snapshot_annotations = false), registries through HOSTS_DIR
        (hosts.toml, config_path), pods only in the host network namespace (empty CNI dirs),
        no negative oom_score_adj (restrict_oom_score_adj: containerd runs unprivileged in
        that respect here), runc with a root of its own, and SANDBOX_IMAGE as the pause image."""
        self.runc_root = os.path.join(self.workdir, "runc")
        cni = os.path.join(self.workdir, "cni")
        for d in (self.runc_root, os.path.join(cni, "bin"), os.path.join(cni, "conf")):
            os.makedirs(d, exist_ok=True)
        p = '[plugins."io.containerd.grpc.v1.cri"'
        return (p + ']\n'
                '  sandbox_image = "%s"\n'
                '  restrict_oom_score_adj = true\n'
                + p + '.containerd]\n'
                '  snapshotter = "%s"\n'
                '  disable_snapshot_annotations = false\n'
                '  default_runtime_name = "runc"\n'
                + p + '.containerd.runtimes.runc]\n'
                '  runtime_type = "io.containerd.runc.v2"\n'
                + p + '.containerd.runtimes.runc.options]\n'
                '  Root = "%s"\n'
                + p + '.cni]\n'
                '  bin_dir = "%s/bin"\n'
                '  conf_dir = "%s/conf"\n'
                + p + '.registry]\n'
                '  config_path = "%s"\n') % (sandbox_image, self.snapshotter, self.runc_root,
                                               cni, cni, hosts_dir)

    def start(self, timeout=20):
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.prefix + [CONTAINERD_BIN, "--config", self.config_path],
                                     stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise harness.HarnessError("containerd exited %s:\n%s"
                                           % (self.proc.returncode, self.log_text()[-3000:]))
            if os.path.exists(self.address) and self.ctr("version", timeout=5).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise harness.HarnessError("containerd not ready after %ss:\n%s"
                                           % (timeout, self.log_text()[-3000:]))
            time.sleep(0.1)

    def stop(self):
        if self.proc is None:
            return
        # Containers are run with --rm; anything left (a failed run) goes with its shim.
        # CRI's pods and containers live in the k8s.io namespace.
        for ns in ["default"] + (["k8s.io"] if self.cri is not None else []):
            for cid in self.ctr("-n", ns, "containers", "ls", "-q", timeout=10).stdout.split():
                self.ctr("-n", ns, "tasks", "kill", "-s", "SIGKILL", cid, timeout=10)
                self.ctr("-n", ns, "tasks", "delete", "-f", cid, timeout=10)
                self.ctr("-n", ns, "containers", "delete", cid, timeout=10)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None
        # Snapshots are mounts under root: leave nothing mounted behind.
        subprocess.run(["sh", "-c", "grep -o ' %s[^ ]*' /proc/self/mountinfo | sort -r | "
                        "xargs -r -n1 umount -l" % self.root],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def ctr(self, *args, timeout=120):
        return subprocess.run(self.prefix + [CTR_BIN, "--address", self.address] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)

    def pull(self, ref, hosts_dir, *extra, timeout=120):
        """ctr image pull through HOSTS_DIR; returns (CompletedProcess, seconds)."""
        t0 = time.monotonic()
        r = self.ctr("image", "pull", "--hosts-dir", hosts_dir, "--snapshotter",
                     self.snapshotter, *extra, ref, timeout=timeout)
        return r, time.monotonic() - t0

    def run(self, ref, cid, *argv, timeout=60):
        return self.ctr("run", "--rm", "--snapshotter", self.snapshotter, ref, cid, *argv,
                        timeout=timeout)

    def remove_image(self, ref):
        """Forget REF and its content, so the next pull fetches everything again."""
        self.ctr("image", "rm", "--sync", ref, timeout=30)
        for line in self.ctr("content", "ls", "-q", timeout=30).stdout.split():
            self.ctr("content", "rm", line, timeout=30)


# --------------------------------------------------------------------------- images

def _gzip_deterministic(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def tar_layer(files):
    """A gzip'ed tar layer of FILES: [(path, bytes, mode)] (directories made as needed).
    Returns (compressed, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = set()
        for path, _data, _mode in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = 0
            tf.addfile(ti)
        for path, data, mode in files:
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            ti.mode = mode
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    return _gzip_deterministic(tar), "sha256:" + hashlib.sha256(tar).hexdigest()


def busybox_layer():
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    return tar_layer([("bin/busybox", bb, 0o755)])


def push_image(registry, repo, tag, layers, extra_index_entries=(), index=False):
    """Pushes an image of LAYERS ([(compressed, diff_id)]) to REPO:TAG. With INDEX (or extra
    index entries: descriptors added next to the image's manifest), TAG names an OCI index.
    Returns dict(manifest=digest, index=digest or None, config=digest, layers=[digests],
    ref_digest=what TAG resolves to, sizes=...)."""
    layer_descs = []
    for blob, _diff in layers:
        d = registry.push_blob(repo, blob)
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(blob)})
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "echo", "hello"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff for _b, diff in layers]},
    }, sort_keys=True).encode()
    config_digest = registry.push_blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
    }, sort_keys=True).encode()
    out = {"config": config_digest, "layers": [l["digest"] for l in layer_descs],
           "layer_bytes": sum(l["size"] for l in layer_descs), "index": None}
    if not index and not extra_index_entries:
        out["manifest"] = registry.push_manifest(repo, tag, manifest, OCI_MANIFEST)
        out["ref_digest"] = out["manifest"]
        return out
    out["manifest"] = registry.push_manifest(repo, harness.sha256_digest(manifest), manifest,
                                             OCI_MANIFEST)
    idx = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": out["manifest"],
                       "size": len(manifest),
                       "platform": {"architecture": "amd64", "os": "linux"}}]
        + list(extra_index_entries),
    }, sort_keys=True).encode()
    out["index"] = registry.push_manifest(repo, tag, idx, OCI_INDEX)
    out["ref_digest"] = out["index"]
    return out


def write_hosts(blobctl, hosts_dir, registry_hostport, mirror):
    """hosts.toml for REGISTRY (plain HTTP) through MIRROR, written by blobctl itself."""
    r = subprocess.run([blobctl, "containerd-config", "--registry", "http://" + registry_hostport,
                        "--mirror", mirror, "--write", hosts_dir],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
    if r.returncode != 0:
        raise harness.HarnessError("blobctl containerd-config: %s %s" % (r.stdout, r.stderr))
    return hosts_dir


def cpu_ticks(pid):
    """utime + stime of PID in clock ticks (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
