#!/usr/bin/env python3
"""Writes a test layer tar and its manifest, for tests/unit/test_layer_index.c.

usage: layer_gen.py pax|gnu OUT.tar MANIFEST [BIG_MIB]

The tar has what image layers carry: directories (some only implied by deeper paths),
regular files (empty, small, a multi-MiB incompressible one, a compressible one), names and
link targets over 100 and over 255 bytes (PAX records or GNU 'L'/'K' entries, by FORMAT),
symlinks, hard links, character and block devices, a FIFO, whiteouts, an opaque directory,
xattrs (PAX only), large uids and fractional mtimes. Python's tarfile is a second, independent
tar writer, so the C parser is not tested only against tars it would write itself.

The manifest has one line per entry of the extracted view, tab-separated:
    type path size sha256 mode uid gid mtime link
type: f d l h c b p w(hiteout); size and sha256 of the data (hard links: the target's);
link "-" when none; path "." for the root. Opaque directories are listed as "o path".
"""
import hashlib
import io
import random
import sys
import tarfile

fmt, out, manifest = sys.argv[1], sys.argv[2], sys.argv[3]
big_mib = int(sys.argv[4]) if len(sys.argv) > 4 else 3
rnd = random.Random(16)
entries = []  # (type, path, data, mode, uid, gid, mtime, link)
opaque = []


def add(tf, ti, data=b""):
    if ti.type == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


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

tf = tarfile.open(out, "w", format=tarfile.PAX_FORMAT if fmt == "pax" else tarfile.GNU_FORMAT)
files = {}


def reg(path, data, **kw):
    ti = mk(path, **kw)
    if fmt == "pax" and "xattrs" in kw.get("extra", {}):
        pass
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

if fmt == "pax":
    # xattrs and a fractional mtime through PAX records
    ti = mk("etc/caps", mode=0o755)
    ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                      "SCHILY.xattr.user.note": "hello",
                      "mtime": "1700000000.25"}
    add(tf, ti, b"with xattrs\n")
    entries.append(("f", "etc/caps", b"with xattrs\n", 0o755, 0, 0, 1700000000, "-"))

# a later entry replaces an earlier one of the same path
reg("etc/hostname", b"replaced\n")
tf.close()

with open(manifest, "w") as m:
    seen = {}
    for e in entries:
        seen[e[1]] = e
    for t, path, data, mode, uid, gid, mtime, link in seen.values():
        m.write("%s\t%s\t%d\t%s\t%o\t%d\t%d\t%d\t%s\n" % (
            t, path, len(data), hashlib.sha256(data).hexdigest(), mode, uid, gid, mtime, link))
    for path in opaque:
        m.write("o\t%s\t0\t-\t0\t0\t0\t0\t-\n" % path)
