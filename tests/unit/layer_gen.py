#!/usr/bin/env python3
"""Writes a test layer tar and its manifest, for tests/unit/test_layer_index.c.

usage: layer_gen.py pax|gnu|estargz OUT MANIFEST [BIG_MIB]

The tar has what image layers carry: directories (some only implied by deeper paths),
regular files (empty, small, a multi-MiB incompressible one, a compressible one), names and
link targets over 100 and over 255 bytes (PAX records or GNU 'L'/'K' entries, by FORMAT),
symlinks, hard links, character and block devices, a FIFO, whiteouts, an opaque directory,
xattrs (PAX only), large uids and fractional mtimes. Python's tarfile is a second, independent
tar writer, so the C parser is not tested only against tars it would write itself.

estargz writes OUT as an eStargz blob instead: every file's data (in chunks of CHUNK bytes,
the last chunk's size left implicit) in gzip members of its own, headers and padding in the
members between, then the TOC member (a gzip'ed tar of stargz.index.json) and the 51-byte
footer, as the eStargz format lays them out.

The manifest has one line per entry of the extracted view, tab-separated:
    type path size sha256 mode uid gid mtime link
type: f d l h c b p w(hiteout); size and sha256 of the data (hard links: the target's);
link "-" when none; path "." for the root. Opaque directories are listed as "o path".
"""
import base64
import hashlib
import io
import json
import time
import zlib
import random
import sys
import tarfile

fmt, out, manifest = sys.argv[1], sys.argv[2], sys.argv[3]
big_mib = int(sys.argv[4]) if len(sys.argv) > 4 else 3
rnd = random.Random(16)
entries = []  # (type, path, data, mode, uid, gid, mtime, link)
opaque = []


members = []  # (TarInfo, data) in archive order


def add(tf, ti, data=b""):
    ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
    members.append((ti, data))


def mk(name, type_=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, mtime=1700000000, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = mtime
    ti.linkname = link
    return ti


long_dir = "deep/" + "/".join("d%02d_" % i + "x" * 40 for i in range(6))  # > 255 bytes
long_comp = "n" * 200  # one component over 100 bytes
text = b"".join(b"line %d of a compressible file\n" % i for i in range(40000))
incompressible = rnd.randbytes(big_mib << 20)

tf = None
files = {}


def reg(path, data, **kw):
    ti = mk(path, **kw)
    add(tf, ti, data)
    files[path] = data
    entries.append(("f", path, data, ti.mode, ti.uid, ti.gid, int(ti.mtime), "-"))


def direc(path, mode=0o755, **kw):
    ti = mk(path, tarfile.DIRTYPE, mode=mode, **kw)
    add(tf, ti)
    entries.append(("d", path, b"", mode, ti.uid, ti.gid, int(ti.mtime), "-"))


direc("etc")
reg("etc/hostname", b"layer\n")
reg("etc/empty", b"")
direc("usr")
direc("usr/bin", mode=0o700)
reg("usr/bin/big", incompressible, mode=0o755)
reg("usr/share/text", text, uid=70000, gid=70001)  # parents implied
reg("usr/share/one-block", b"x" * 512)
reg("usr/share/block-plus-one", b"y" * 513)
direc(long_dir)
reg(long_dir + "/" + long_comp, b"a file with a long name\n")
for i in range(50):
    reg("many/file%03d" % i, bytes([i]) * (i * 37))

# symlinks: short, long target, absolute
for name, target in (("usr/bin/sh", "busybox"), ("lnk/long", "../" + long_dir + "/" + long_comp),
                     ("lnk/abs", "/etc/hostname")):
    ti = mk(name, tarfile.SYMTYPE, mode=0o777, link=target)
    add(tf, ti)
    entries.append(("l", name, b"", 0o777, 0, 0, 1700000000, target))

# hard links (one to a long name)
for name, target in (("usr/bin/big-again", "usr/bin/big"),
                     ("hl/long", long_dir + "/" + long_comp)):
    ti = mk(name, tarfile.LNKTYPE, mode=0o755 if "big" in name else 0o644, link=target)
    add(tf, ti)
    entries.append(("h", name, files[target], ti.mode, 0, 0, 1700000000, target))

# devices and a fifo
for name, t, code in (("dev/null", tarfile.CHRTYPE, "c"), ("dev/loop0", tarfile.BLKTYPE, "b")):
    ti = mk(name, t, mode=0o666)
    ti.devmajor, ti.devminor = (1, 3) if code == "c" else (7, 0)
    add(tf, ti)
    entries.append((code, name, b"", 0o666, 0, 0, 1700000000, "%d:%d" % (ti.devmajor, ti.devminor)))
ti = mk("run/fifo", tarfile.FIFOTYPE, mode=0o600)
add(tf, ti)
entries.append(("p", "run/fifo", b"", 0o600, 0, 0, 1700000000, "-"))

# whiteouts and an opaque directory
add(tf, mk("etc/.wh.removed"))
entries.append(("w", "etc/removed", b"", 0, 0, 0, 0, "-"))
direc("var/cache")
add(tf, mk("var/cache/.wh..wh..opq"))
opaque.append("var/cache")
reg("var/cache/new", b"new\n")

if fmt in ("pax", "estargz"):
    # xattrs and a fractional mtime through PAX records
    ti = mk("etc/caps", mode=0o755)
    ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                      "SCHILY.xattr.user.note": "hello",
                      "mtime": "1700000000.25"}
    add(tf, ti, b"with xattrs\n")
    entries.append(("f", "etc/caps", b"with xattrs\n", 0o755, 0, 0, 1700000000, "-"))

# a later entry replaces an earlier one of the same path
reg("etc/hostname", b"replaced\n")

CHUNK = 100000


def rfc3339(t):
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t)))
    frac = t - int(t)
    return s + (".%02d" % round(frac * 100) if frac else "") + "Z"


def write_estargz(path):
    blob = bytearray()
    state = {"z": None}
    toc = []

    def write(b):
        if state["z"] is None:
            state["z"] = zlib.compressobj(6, zlib.DEFLATED, 31)
        blob.extend(state["z"].compress(b))

    def close():
        if state["z"] is not None:
            blob.extend(state["z"].flush())
            state["z"] = None

    types = {tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
             tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
             tarfile.FIFOTYPE: "fifo"}
    for ti, data in members:
        write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        name = ti.name + ("/" if ti.type == tarfile.DIRTYPE else "")
        mtime = float(ti.pax_headers.get("mtime", ti.mtime))
        e = {"name": name, "type": types[ti.type], "mode": ti.mode, "uid": ti.uid,
             "gid": ti.gid, "modtime": rfc3339(mtime)}
        if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            e["linkName"] = ti.linkname
        if ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            e["devMajor"], e["devMinor"] = ti.devmajor, ti.devminor
        xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
                  for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        if xattrs:
            e["xattrs"] = xattrs
        if ti.type == tarfile.REGTYPE:
            e["size"] = len(data)
        toc.append(e)
        for coff in range(0, len(data), CHUNK):
            close()
            ent = e if coff == 0 else {"name": name, "type": "chunk"}
            ent["offset"] = len(blob)
            ent["chunkOffset"] = coff
            if coff + CHUNK < len(data):
                ent["chunkSize"] = CHUNK
            if coff:
                toc.append(ent)
            write(data[coff:coff + CHUNK])
            close()
        if ti.type == tarfile.REGTYPE and len(data) % 512:
            write(b"\0" * (512 - len(data) % 512))
    close()
    toc_off = len(blob)
    j = json.dumps({"version": 1, "entries": toc}).encode()
    ti = tarfile.TarInfo("stargz.index.json")
    ti.size = len(j)
    t = ti.tobuf(tarfile.PAX_FORMAT) + j + b"\0" * ((512 - len(j) % 512) % 512) + b"\0" * 1024
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob.extend(z.compress(t) + z.flush())
    payload = b"%016xSTARGZ" % toc_off
    footer = (b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + bytes([26, 0]) + b"SG" + bytes([22, 0]) +
              payload + b"\x01\x00\x00\xff\xff" + b"\0" * 8)
    assert len(footer) == 51
    blob.extend(footer)
    open(path, "wb").write(blob)


if fmt == "estargz":
    write_estargz(out)
else:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT if fmt == "pax" else tarfile.GNU_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)

with open(manifest, "w") as m:
    seen = {}
    for e in entries:
        seen[e[1]] = e
    for t, path, data, mode, uid, gid, mtime, link in seen.values():
        m.write("%s\t%s\t%d\t%s\t%o\t%d\t%d\t%d\t%s\n" % (
            t, path, len(data), hashlib.sha256(data).hexdigest(), mode, uid, gid, mtime, link))
    for path in opaque:
        m.write("o\t%s\t0\t-\t0\t0\t0\t0\t-\n" % path)
