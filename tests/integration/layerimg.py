"""Deterministic test layers and images, built here with Python's tarfile (no network).

API (for test_layers.py, and for the snapshotter tests that want real images):

- Entry(name, kind, data=b"", mode=0o644, uid=0, gid=0, link="", major=0, minor=0,
        xattrs={}, mtime=MTIME)      one tar member; kind is one of REG DIR SYM LNK CHR BLK FIFO.
- base_entries(big=0)                the "base" layer: busybox (/bin/busybox) and applet
                                     symlinks, dirs with modes, relative and absolute symlinks,
                                     hard links, char/block devices, a FIFO, user.* and
                                     security.capability xattrs (PAX SCHILY.xattr.*), a long
                                     name (> 100 bytes, PAX path), utf-8 names, an empty file,
                                     and with BIG > 0 a file of BIG deterministic incompressible
                                     bytes (big/blob.bin).
- upper_entries()                    a layer for on top of base: whiteouts (.wh.NAME), an opaque
                                     dir (.wh..wh..opq), a replaced file, a new file.
- build_tar(entries) -> bytes        the plain tar (PAX format, deterministic).
- Layer(entries, fmt)                fmt in FORMATS = ("tar", "gzip", "zstd", "estargz"):
     .blob        the bytes to push       .diff_id  "sha256:" of the uncompressed tar
     .media_type  the OCI media type      .tar      the uncompressed tar
     .expected    expected_tree(entries): {path: dict(type, mode, uid, gid, size, mtime, link,
                   major, minor, xattrs, sha256, nlink)}, the tree a node must show; paths
                   relative, no leading "/"
     .toc_digest  eStargz only: "sha256:" of the TOC JSON
- expected_tree(entries)             {path: view} as the FUSE layer tree shows it: ".wh.X" ->
                                     X as char 0/0, ".wh..wh..opq" -> the dir gets
                                     trusted.overlay.opaque=y, implicit parent dirs added.
- push_layer(registry, repo, layer) -> digest
- push_image(registry, repo, tag, layers) -> dict(manifest=digest, config=digest,
                                     layers=[digest...], diff_ids=[...]): blobs, an OCI config
                                     whose rootfs.diff_ids list the layers' diff_ids, and an OCI
                                     manifest under TAG.
- OCI_MANIFEST, MEDIA[fmt]           media types.
- big_bytes(size, seed="big")        SIZE pseudo-random bytes (shake_256: fast, incompressible).

Every build is deterministic: the same entries give the same bytes, so digests are stable
across runs (gzip mtime 0, tar mtimes and owners fixed, no uname/gname, zstd -3 of the zstd
CLI). The eStargz writer is ours (build_estargz: one gzip member per file chunk of
ESTARGZ_CHUNK bytes, the TOC member, the 51-byte footer), written from the format's
description; it was not compared with ctr-remote's output.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

MTIME = 1_700_000_000
REG, DIR, SYM, LNK, CHR, BLK, FIFO = "reg", "dir", "symlink", "hardlink", "char", "block", "fifo"
FORMATS = ("tar", "gzip", "zstd", "estargz")
MEDIA = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "estargz": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_TARTYPE = {REG: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYM: tarfile.SYMTYPE,
            LNK: tarfile.LNKTYPE, CHR: tarfile.CHRTYPE, BLK: tarfile.BLKTYPE,
            FIFO: tarfile.FIFOTYPE}
BUSYBOX = "/bin/busybox"
# A security.capability value (VFS_CAP_REVISION_2, cap_net_bind_service permitted+effective).
CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")


class Entry:
    def __init__(self, name, kind=REG, data=b"", mode=None, uid=0, gid=0, link="", major=0,
                 minor=0, xattrs=None, mtime=MTIME):
        self.name, self.kind, self.data = name, kind, data
        self.mode = mode if mode is not None else (0o755 if kind == DIR else
                                                   0o777 if kind == SYM else 0o644)
        self.uid, self.gid, self.link = uid, gid, link
        self.major, self.minor = major, minor
        self.xattrs = dict(xattrs or {})
        self.mtime = mtime


def big_bytes(size, seed="big"):
    return hashlib.shake_256(seed.encode()).digest(size)


def _busybox():
    with open(BUSYBOX, "rb") as f:
        return f.read()


LONG_NAME = "deep/" + "/".join(["d%02d_%s" % (i, "x" * 20) for i in range(6)]) + "/leaf.txt"
UTF8_NAMES = ["utf8/caf\u00e9.txt", "utf8/\u65e5\u672c\u8a9e", "utf8/\U0001F600 smile"]


def base_entries(big=0):
    e = [
        Entry("bin", DIR, mode=0o755),
        Entry("bin/busybox", REG, _busybox(), mode=0o755),
        Entry("bin/sh", SYM, link="busybox"),
        Entry("bin/ls", SYM, link="/bin/busybox"),           # absolute target
        Entry("bin/cat", LNK, link="bin/busybox"),           # hard link to busybox
        Entry("etc", DIR, mode=0o755),
        Entry("etc/passwd", REG, b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/shadow", REG, b"root:*:19000:0:99999:7:::\n", mode=0o640, uid=0, gid=42),
        Entry("etc/motd", REG, b"base layer\n"),
        Entry("etc/alias", LNK, link="etc/motd"),
        Entry("etc/alias2", LNK, link="etc/motd"),           # nlink 3
        Entry("tmp", DIR, mode=0o1777),
        Entry("root", DIR, mode=0o700),
        Entry("home/user", DIR, mode=0o2750, uid=1000, gid=1000),
        Entry("home/user/.profile", REG, b"export PS1='$ '\n", mode=0o600, uid=1000, gid=1000),
        Entry("usr/local/bin/suid", REG, b"#!/bin/sh\nid\n", mode=0o4755),
        Entry("usr/lib/rel", SYM, link="../../etc/passwd"),
        Entry("usr/lib/dangling", SYM, link="no/such/target"),
        Entry("dev", DIR, mode=0o755),
        Entry("dev/null", CHR, mode=0o666, major=1, minor=3),
        Entry("dev/loop9", BLK, mode=0o660, gid=6, major=7, minor=9),
        Entry("dev/fifo", FIFO, mode=0o600),
        Entry("x/attr", REG, b"has xattrs\n", xattrs={"user.test": b"hello",
                                                       "user.empty": b"",
                                                       "user.bin": bytes(range(1, 40))}),
        Entry("x/cap", REG, b"#!/bin/true\n", mode=0o755,
              xattrs={"security.capability": CAP_NET_BIND}),
        Entry("x/empty", REG, b""),
        Entry(LONG_NAME, REG, b"a long name\n"),
        Entry("long/" + "L" * 200, SYM, link="t" * 150),     # long name and long link target
        Entry("gone.txt", REG, b"will be whited out\n"),
        Entry("gone_dir/inner", REG, b"inner\n"),
        Entry("opaq", DIR, mode=0o755),
        Entry("opaq/a", REG, b"a\n"),
        Entry("opaq/sub/b", REG, b"b\n"),
        Entry("mtime/old", REG, b"old\n", mtime=86400),
        Entry("mtime/odd", REG, b"odd\n", mtime=1_234_567_891),
    ]
    for n in UTF8_NAMES:
        e.append(Entry(n, REG, n.encode() + b"\n"))
    for i in range(30):
        e.append(Entry("many/f%03d" % i, REG, ("file %d\n" % i).encode() * (i * 37 + 1)))
    e.append(Entry("mid/one_mib_plus", REG, big_bytes(1024 * 1024 + 4097, "mid")))
    if big:
        e.append(Entry("big/blob.bin", REG, big_bytes(big)))
        e.append(Entry("big/small4k", REG, big_bytes(4096, "small4k")))
    return e


def upper_entries():
    return [
        Entry(".wh.gone.txt", REG),
        Entry(".wh.gone_dir", REG),
        Entry("opaq", DIR, mode=0o755),
        Entry("opaq/.wh..wh..opq", REG),
        Entry("opaq/c", REG, b"c\n"),
        Entry("etc", DIR, mode=0o755),
        Entry("etc/motd", REG, b"upper layer\n"),
        Entry("etc/new", REG, b"new in upper\n"),
        Entry("bin", DIR, mode=0o755),
        Entry("bin/.wh.ls", REG),
    ]


def _tarinfo(e):
    ti = tarfile.TarInfo(e.name)
    ti.type = _TARTYPE[e.kind]
    ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
    ti.uname = ti.gname = ""
    ti.linkname = e.link
    ti.devmajor, ti.devminor = e.major, e.minor
    if e.xattrs:
        # tarfile writes PAX values as utf-8 strings; binary values go through surrogateescape
        # (tarfile encodes them back with the same handler), so any byte string survives.
        ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                          for k, v in e.xattrs.items()}
    ti.size = len(e.data) if e.kind == REG else 0
    return ti


def _members(entries):
    """(TarInfo, data) pairs in order, and the tar bytes without the end-of-archive blocks."""
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape")
    spans = []  # (header offset, data offset, data size) per entry
    for e in entries:
        ti = _tarinfo(e)
        start = buf.tell()
        tf.addfile(ti, io.BytesIO(e.data) if e.kind == REG else None)
        # tarfile pads the data to 512; the data starts at end - padded size
        padded = (ti.size + 511) // 512 * 512
        spans.append((start, buf.tell() - padded, ti.size))
    body = buf.getvalue()
    # Closing writes the two zero blocks (and pads to the record size): keep both forms.
    tf.close()
    return body, buf.getvalue(), spans


def build_tar(entries):
    return _members(entries)[1]


def _gzip(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def _zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-3", "--no-progress"], input=data, check=True,
                          stdout=subprocess.PIPE).stdout


# -------------------------------------------------------------------------------- eStargz

ESTARGZ_CHUNK = 4 * 1024 * 1024


def _rfc3339(t):
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _footer(toc_off):
    payload = b"%016xSTARGZ" % toc_off
    extra = b"SG" + bytes([len(payload), 0]) + payload
    hdr = b"\x1f\x8b\x08\x04" + b"\x00" * 4 + b"\x00\xff" + bytes([len(extra), 0]) + extra
    return hdr + b"\x01\x00\x00\xff\xff" + b"\x00" * 8


def build_estargz(entries, chunk=ESTARGZ_CHUNK):
    """Our own eStargz writer (the layout of the spec): the tar stream is cut so that every
    regular file's data chunk starts a gzip member; then one member with the TOC entry
    stargz.index.json and the tar end blocks; then the 51-byte footer. Returns (blob, tar,
    toc_json_bytes)."""
    body, _, spans = _members(entries)
    cuts = []  # (uncompressed offset, entry index or None, chunk offset, chunk size)
    for i, (e, (_h, doff, size)) in enumerate(zip(entries, spans)):
        if e.kind == REG and size > 0:
            for coff in range(0, size, chunk):
                cuts.append((doff + coff, i, coff, min(chunk, size - coff)))
    out = bytearray()
    member_at = {}  # uncompressed cut offset -> compressed offset of its member
    pos = 0
    for off, *_ in cuts:
        if off > pos:
            out += _gzip(body[pos:off])
        member_at[off] = len(out)
        pos = off
        # the member runs to the next cut (written at the next iteration)
    tail_start = pos
    # the last member: from the last cut to the end of the entries
    if len(body) > tail_start or not cuts:
        out += _gzip(body[tail_start:])
    # ^ when cuts exist the loop above wrote members only up to the last cut
    toc_entries = []
    by_entry = {}
    for off, i, coff, csize in cuts:
        by_entry.setdefault(i, []).append((member_at[off], coff, csize))
    for i, e in enumerate(entries):
        t = {"name": e.name, "type": e.kind, "mode": e.mode, "uid": e.uid, "gid": e.gid,
             "modtime": _rfc3339(e.mtime)}
        if e.kind in (SYM, LNK):
            t["linkName"] = e.link
        if e.kind in (CHR, BLK):
            t["devMajor"], t["devMinor"] = e.major, e.minor
        if e.xattrs:
            t["xattrs"] = {k: base64.b64encode(v).decode() for k, v in e.xattrs.items()}
        if e.kind == REG:
            t["size"] = len(e.data)
            t["digest"] = "sha256:" + hashlib.sha256(e.data).hexdigest()
        chunks = by_entry.get(i, [])
        if chunks:
            m, coff, csize = chunks[0]
            t["offset"] = m
            if len(chunks) > 1:
                t["chunkSize"] = csize
        toc_entries.append(t)
        for m, coff, csize in chunks[1:]:
            c = {"name": e.name, "type": "chunk", "offset": m, "chunkOffset": coff}
            if coff + csize < len(e.data):
                c["chunkSize"] = csize
            toc_entries.append(c)
    toc = json.dumps({"version": 1, "entries": toc_entries}, indent="\t").encode()
    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("stargz.index.json")
        ti.size, ti.mode, ti.mtime = len(toc), 0o644, 0
        ti.uname = ti.gname = ""
        tf.addfile(ti, io.BytesIO(toc))
    toc_tar = tb.getvalue()
    toc_off = len(out)
    out += _gzip(toc_tar)
    out += _footer(toc_off)
    return bytes(out), body + toc_tar, toc


_UPSTREAM = {}


def upstream_estargz(tar, workdir):
    """TAR converted by the upstream eStargz library (stargz-snapshotter's estargz.Build, 1 MiB
    chunks) through estargzbuild/main.go, built offline once (Debian's Go sources). Returns
    (blob, toc_digest, diff_id); raises OSError/CalledProcessError when Go cannot build it."""
    tool = _UPSTREAM.get("tool")
    if tool is None:
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "estargzbuild")
        gopath = os.path.join(workdir, "gopath")
        os.makedirs(os.path.join(gopath, "src"), exist_ok=True)
        link = os.path.join(gopath, "src", "estargzbuild")
        if not os.path.exists(link):
            os.symlink(src, link)
        tool = os.path.join(workdir, "estargzbuild")
        env = dict(os.environ, GOPATH=gopath + ":/usr/share/gocode", GO111MODULE="off",
                   GOCACHE=os.path.join(workdir, "gocache"), GOFLAGS="")
        subprocess.run(["go", "build", "-o", tool, "."], cwd=link, env=env, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _UPSTREAM["tool"] = tool
    tin, tout = os.path.join(workdir, "in.tar"), os.path.join(workdir, "out.stargz")
    with open(tin, "wb") as f:
        f.write(tar)
    r = subprocess.run([tool, tin, tout], check=True, stdout=subprocess.PIPE)
    toc, diff = r.stdout.decode().split()
    with open(tout, "rb") as f:
        return f.read(), toc, diff


# -------------------------------------------------------------------------------- layers

def _sha(b):
    return hashlib.sha256(b).hexdigest()


def expected_raw(entries):
    """{name: view} of the tar entries as written (later entries replace earlier ones)."""
    out = {}
    for e in entries:
        out[e.name.rstrip("/")] = {
            "type": e.kind, "mode": e.mode, "uid": e.uid, "gid": e.gid,
            "size": len(e.data) if e.kind == REG else 0, "mtime": e.mtime, "link": e.link,
            "major": e.major, "minor": e.minor, "xattrs": dict(e.xattrs),
            "sha256": _sha(e.data) if e.kind == REG else None}
    return out


def expected_tree(entries):
    """The FUSE view of a layer: whiteouts as char 0/0 named without ".wh.", an opaque marker
    as trusted.overlay.opaque=y on its dir, implicit parents as dirs (mode 0755, root, mtime
    unknown -> None), hard links resolved to their target's view (and counted in "nlink")."""
    out = {}
    for e in entries:
        name = e.name.rstrip("/")
        parent, base = os.path.split(name)
        if base == ".wh..wh..opq":
            out.setdefault(parent, _implicit())["xattrs"]["trusted.overlay.opaque"] = b"y"
            continue
        if base.startswith(".wh."):
            name = os.path.join(parent, base[4:])
            v = {"type": CHR, "mode": None, "uid": e.uid, "gid": e.gid, "size": 0,
                 "mtime": e.mtime, "link": "", "major": 0, "minor": 0, "xattrs": {},
                 "sha256": None, "whiteout": True}
        elif e.kind == LNK:
            v = dict(out[e.link])
            v["hardlink_of"] = e.link
        else:
            v = expected_raw([e])[name]
            if e.kind == DIR and name in out:
                v["xattrs"].update({k: x for k, x in out[name]["xattrs"].items()
                                    if k == "trusted.overlay.opaque"})
        out[name] = v
        while parent and parent not in out:
            out[parent] = _implicit()
            parent = os.path.dirname(parent)
    nl = {}
    for n, v in out.items():
        if v["type"] == REG:
            key = v.get("hardlink_of", n)
            nl[key] = nl.get(key, 0) + 1
    for n, v in out.items():
        if v["type"] == REG:
            v["nlink"] = nl[v.get("hardlink_of", n)]
    return out


def _implicit():
    return {"type": DIR, "mode": None, "uid": 0, "gid": 0, "size": 0, "mtime": None,
            "link": "", "major": 0, "minor": 0, "xattrs": {}, "sha256": None, "implicit": True}


class Layer:
    def __init__(self, entries, fmt):
        assert fmt in FORMATS, fmt
        self.entries, self.fmt = entries, fmt
        self.media_type = MEDIA[fmt]
        self.toc_digest = None
        if fmt == "estargz":
            self.blob, self.tar, toc = build_estargz(entries)
            self.toc_digest = "sha256:" + _sha(toc)
        else:
            self.tar = build_tar(entries)
            self.blob = {"tar": lambda b: b, "gzip": _gzip, "zstd": _zstd}[fmt](self.tar)
        self.diff_id = "sha256:" + _sha(self.tar)
        self.digest = "sha256:" + _sha(self.blob)
        self.expected = expected_tree(entries)


def push_layer(registry, repo, layer):
    return registry.push_blob(repo, layer.blob)


def push_image(registry, repo, tag, layers):
    digests = [push_layer(registry, repo, l) for l in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
        "history": [{"created_by": "layerimg.py %s" % l.fmt} for l in layers],
    }, sort_keys=True).encode()
    cfg = registry.push_blob(repo, config)
    layer_descs = []
    for l, d in zip(layers, digests):
        desc = {"mediaType": l.media_type, "digest": d, "size": len(l.blob)}
        if l.toc_digest:
            desc["annotations"] = {"containerd.io/snapshot/stargz/toc.digest": l.toc_digest,
                                   "containerd.io/snapshot/stargz/uncompressed_size":
                                   str(len(l.tar))}
        layer_descs.append(desc)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg,
                   "size": len(config)},
        "layers": layer_descs}, sort_keys=True).encode()
    man = registry.push_manifest(repo, tag, manifest)
    return {"manifest": man, "config": cfg, "layers": digests,
            "diff_ids": [l.diff_id for l in layers], "manifest_bytes": manifest}
