"""Issue 16's test matrix for layer trees: layers built here (layerimg.py: busybox, every tar
entry kind, xattrs, whiteouts, long and utf-8 names) as tar, gzip, zstd and eStargz, registered
with `blobctl layer add` and compared entry by entry with what the tar says, through
<mnt>/layers/sha256/<digest>/ (lstat, readlink, xattrs, sha256 of every file, hard links);
`blobctl layer ls`; hostile layers fail clearly while the daemon keeps serving; two trees stacked
with overlayfs; a second node that gets the index from a peer and reads a small file with
little traffic to the origin.

(The smoke test of the same feature is test_layer_tree.py.)"""

import hashlib
import json
import os
import stat
import subprocess

import pytest

import harness
import layerimg as L

REPO = "p2pblobs/ltests"
MiB = harness.MiB
MATRIX_BIG = 9 * MiB       # a file over two eStargz chunks and many gzip spans
BIG = 256 * MiB            # the second-node layer


@pytest.fixture(scope="session")
def base_entries():
    return L.base_entries(big=MATRIX_BIG)


@pytest.fixture(scope="session")
def layers(base_entries):
    """fmt -> layerimg.Layer of the base entries (built once per session)."""
    return {f: L.Layer(base_entries, f) for f in L.FORMATS}


def layer_add(d, ref, *extra, wait=120):
    r = d.blobctl("layer", "add", ref, "--wait", str(wait), "--json", *extra, timeout=wait + 30)
    out = json.loads(r.stdout) if r.stdout.strip() else None
    return r.returncode, out, r.stderr


def layers_json(d):
    r = d.blobctl("layers", "--json")
    assert r.returncode == 0, r.stderr
    return {l["digest"]: l for l in json.loads(r.stdout)}


def tree_root(d, digest):
    return os.path.join(d.mountpoint, "layers", "sha256", harness.hex_of(digest))


_KIND = {stat.S_IFREG: L.REG, stat.S_IFDIR: L.DIR, stat.S_IFLNK: L.SYM, stat.S_IFCHR: L.CHR,
         stat.S_IFBLK: L.BLK, stat.S_IFIFO: L.FIFO}


def walk(root):
    """Every path under ROOT (relative), not following symlinks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.append(n if rel == "." else os.path.join(rel, n))
    return out


def xattrs_of(path):
    return {k: os.getxattr(path, k, follow_symlinks=False)
            for k in os.listxattr(path, follow_symlinks=False)}


def compare_tree(root, expected):
    """A list of mismatches between the tree at ROOT and EXPECTED (layerimg.expected_tree)."""
    bad = []
    got = set(walk(root))
    want = set(expected)
    if got != want:
        bad.append("paths: missing %s, unexpected %s" % (sorted(want - got)[:20],
                                                        sorted(got - want)[:20]))
    for name in sorted(want & got):
        v, p = expected[name], os.path.join(root, name)
        st = os.lstat(p)
        kind = _KIND.get(stat.S_IFMT(st.st_mode))

        def chk(what, g, w):
            if g != w:
                bad.append("%s: %s %r, expected %r" % (name, what, g, w))
        chk("type", kind, v["type"])
        if kind != v["type"]:
            continue
        if v["mode"] is not None:
            chk("mode", oct(stat.S_IMODE(st.st_mode)), oct(v["mode"]))
        chk("uid/gid", (st.st_uid, st.st_gid), (v["uid"], v["gid"]))
        if v["mtime"] is not None:
            chk("mtime", int(st.st_mtime), v["mtime"])
        if kind == L.REG:
            chk("size", st.st_size, v["size"])
            chk("nlink", st.st_nlink, v["nlink"])
            chk("sha256", harness.sha256_file(p)[0], "sha256:" + v["sha256"])
            if "hardlink_of" in v:
                chk("st_ino (hard link of %s)" % v["hardlink_of"], st.st_ino,
                    os.lstat(os.path.join(root, v["hardlink_of"])).st_ino)
        if kind == L.SYM:
            chk("readlink", os.readlink(p), v["link"])
        if kind in (L.CHR, L.BLK):
            chk("rdev", (os.major(st.st_rdev), os.minor(st.st_rdev)), (v["major"], v["minor"]))
        if kind != L.SYM:
            chk("xattrs", xattrs_of(p), v["xattrs"])
    return bad


# ------------------------------------------------------------------------------ the matrix

STATE_OF = {"tar": "built", "gzip": "built", "zstd": "built", "estargz": "toc"}


@pytest.mark.parametrize("hints", ["hints", "nohints"])
@pytest.mark.parametrize("fmt", L.FORMATS)
def test_tree_matches_the_tar(fmt, hints, layers, registry, daemon_factory):
    """Each format, with and without --diff-id/--media-type: the tree is the tar's, entry by
    entry; `blobctl layers` says the format, ready, the file count."""
    lay = layers[fmt]
    dg = L.push_layer(registry, REPO, lay)
    assert dg == lay.digest
    d = daemon_factory(registries=[registry])
    extra = ["--diff-id", lay.diff_id, "--media-type", lay.media_type] if hints == "hints" \
        else []
    if fmt == "estargz" and hints == "hints":
        extra += ["--toc-digest", lay.toc_digest]
    rc, out, err = layer_add(d, registry.ref(REPO, dg), *extra)
    assert rc == 0, (rc, out, err)
    assert out["state"] == STATE_OF[fmt] and out["ready"], out
    info = layers_json(d)[dg]
    assert info["format"] == fmt and info["ready"], info
    assert info["files"] >= sum(1 for e in lay.entries if e.kind == L.REG), info
    assert info["blob_size"] == len(lay.blob), info
    if fmt != "estargz":  # an eStargz TOC does not say the tar's size
        assert info["tar_size"] == len(lay.tar), info
    root = tree_root(d, dg)
    bad = compare_tree(root, lay.expected)
    assert not bad, "\n".join(bad)
    # a read in the middle of the big file, across an eStargz chunk edge
    with open(os.path.join(root, "big/blob.bin"), "rb") as f:
        f.seek(L.ESTARGZ_CHUNK - 1000)
        got = f.read(5000)
    big = [e for e in lay.entries if e.name == "big/blob.bin"][0].data
    assert got == big[L.ESTARGZ_CHUNK - 1000:L.ESTARGZ_CHUNK + 4000]
    # the tree is read-only
    with pytest.raises(OSError):
        open(os.path.join(root, "etc/new"), "w")
    assert d.alive()


@pytest.fixture(scope="session")
def upstream_stargz(base_entries, tmp_path_factory):
    tar = L.build_tar(base_entries)
    try:
        return L.upstream_estargz(tar, str(tmp_path_factory.mktemp("ltests-go")))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail("cannot build the upstream eStargz helper (golang-go and "
                    "golang-github-containerd-stargz-snapshotter-dev are in the deps): %s"
                    % getattr(e, "stdout", e))


def test_upstream_estargz(upstream_stargz, layers, registry, daemon_factory):
    """An eStargz blob written by the upstream library (stargz-snapshotter's estargz.Build,
    1 MiB chunks, its prefetch landmark), not by our writer: indexed from its TOC, with the
    tar's tree (plus the landmark file the converter adds)."""
    blob, toc, diff = upstream_stargz
    dg = registry.push_blob(REPO, blob)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg), "--diff-id", diff, "--toc-digest", toc)
    assert rc == 0, (rc, out, err)
    assert out["state"] == "toc" and out["ready"], out
    expected = dict(layers["tar"].expected)
    root = tree_root(d, dg)
    for extra in (".no.prefetch.landmark", ".prefetch.landmark"):
        if os.path.lexists(os.path.join(root, extra)):
            expected[extra] = dict(expected["x/empty"], mode=None, mtime=None, uid=0, gid=0,
                                   size=os.lstat(os.path.join(root, extra)).st_size,
                                   sha256=hashlib.sha256(harness.read_file(
                                       os.path.join(root, extra))).hexdigest())
    bad = compare_tree(root, expected)
    assert not bad, "\n".join(bad)


def test_every_format_after_a_restart(layers, registry, daemon_factory):
    """The four layers in one daemon, restarted: each comes back from the store (or its TOC)
    with the same tree, and the four trees sit side by side under layers/sha256/."""
    d = daemon_factory(registries=[registry])
    digests = {}
    for fmt, lay in layers.items():
        digests[fmt] = L.push_layer(registry, REPO, lay)
        rc, out, err = layer_add(d, registry.ref(REPO, digests[fmt]))
        assert rc == 0 and out["ready"], (fmt, rc, out, err)
    assert sorted(os.listdir(os.path.join(d.mountpoint, "layers", "sha256"))) == \
        sorted(harness.hex_of(x) for x in digests.values())
    d.restart()
    harness.wait_until(lambda: all(l["ready"] for l in layers_json(d).values()) and
                       len(layers_json(d)) == 4, 60, what="the four layers ready again")
    info = layers_json(d)
    for fmt, dg in digests.items():
        assert info[dg]["format"] == fmt, info[dg]
        assert info[dg]["state"] in ("local", "toc"), info[dg]
        bad = compare_tree(tree_root(d, dg), layers[fmt].expected)
        assert not bad, "%s after restart:\n%s" % (fmt, "\n".join(bad))


def test_layer_ls(layers, registry, daemon_factory):
    lay = layers["gzip"]
    dg = L.push_layer(registry, REPO, lay)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg))
    assert rc == 0 and out["ready"], (rc, out, err)
    r = d.blobctl("layer", "ls", harness.hex_of(dg), "dev", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(e["path"] for e in json.loads(r.stdout)) == \
        ["dev/fifo", "dev/loop9", "dev/null"], r.stdout
    r = d.blobctl("layer", "ls", dg, "--json")
    assert r.returncode == 0, r.stderr
    top = sorted(e["path"] for e in json.loads(r.stdout))
    assert top == sorted(n for n in lay.expected if "/" not in n), top
    r = d.blobctl("layer", "ls", dg, "utf8")
    assert r.returncode == 0 and "caf\u00e9.txt" in r.stdout, (r.stdout, r.stderr)
    r = d.blobctl("layer", "ls", dg, "no/such/dir")
    assert r.returncode != 0, r.stdout
    r = d.blobctl("layer", "ls", "sha256:" + "0" * 64)
    assert r.returncode != 0, r.stdout


# ------------------------------------------------------------------------------ bad input

def _tar_of(*entries):
    return L.build_tar(list(entries))


def _retar_header(tar, index_of_header, **fields):
    """TAR with header block INDEX_OF_HEADER's octal FIELDS (size=...) rewritten and its
    checksum fixed: a header that lies."""
    b = bytearray(tar)
    h = index_of_header * 512
    if "size" in fields:
        b[h + 124:h + 136] = b"%011o\0" % fields["size"]
    b[h + 148:h + 156] = b" " * 8
    b[h + 148:h + 156] = b"%06o\0 " % sum(b[h:h + 512])
    return bytes(b)


def _ustar_first_header_index(tar):
    """Index of the first non-PAX header block of TAR."""
    i = 0
    while tar[i * 512 + 156:i * 512 + 157] in (b"x", b"g"):
        size = int(tar[i * 512 + 124:i * 512 + 135].strip(b"\0 ") or b"0", 8)
        i += 1 + (size + 511) // 512
    return i


def _stargz_bad_footer():
    """An eStargz blob whose footer points the TOC past the blob's end."""
    b = L.Layer([L.Entry("f", L.REG, b"data\n")], "estargz").blob
    return b[:-51] + L._footer(len(b) + 100)


def _bad_cases():
    good = L.build_tar([L.Entry("a", L.REG, b"x" * 5000), L.Entry("b", L.REG, b"y" * 100)])
    gz = L.Layer(L.base_entries(), "gzip").blob
    lies = _retar_header(good, _ustar_first_header_index(good), size=5000 + 200 * 512)
    long_path = "/".join(["p%03d" % i + "q" * 200 for i in range(25)])  # > PATH_MAX (4096)
    return {
        "truncated_gzip": (gz[:len(gz) // 2], None),
        "gzip_bad_crc": (gz[:-8] + bytes(8), None),
        "tar_size_lies": (lies, None),
        "truncated_tar": (good[:512 + 1000], None),
        "dotdot": (_tar_of(L.Entry("etc", L.DIR), L.Entry("etc/../../escape", L.REG, b"e")),
                   None),
        "dotdot_link": (_tar_of(L.Entry("../up", L.SYM, link="x")), None),
        "hardlink_outside": (_tar_of(L.Entry("h", L.LNK, link="../../etc/passwd")), None),
        "path_max": (_tar_of(L.Entry(long_path, L.REG, b"long")), None),
        "name_max": (_tar_of(L.Entry("n" * 300, L.REG, b"long")), None),
        "wrong_diff_id": (gz, ["--diff-id", "sha256:" + "ab" * 32]),
        "wrong_toc_digest": (L.Layer(L.base_entries(), "estargz").blob,
                             ["--toc-digest", "sha256:" + "cd" * 32]),
        "not_a_layer_media_type": (gz, ["--media-type",
                                        "application/vnd.oci.image.config.v1+json"]),
        "estargz_footer_past_end": (_stargz_bad_footer(), None),
        "garbage": (b"\x00\x01not a layer at all" * 100, None),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_layer_fails_clearly(case, registry, daemon_factory):
    """A hostile or broken layer is FAILED with an error in `blobctl layers`, nothing of it is
    in the tree, and the daemon keeps serving other layers."""
    blob, extra = BAD[case]
    dg = registry.push_blob(REPO, blob)
    ok = L.Layer([L.Entry("ok", L.REG, b"still fine\n")], "gzip")
    okd = L.push_layer(registry, REPO, ok)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg), *(extra or []))
    state = (out or {}).get("state")
    assert rc != 0 and state in (None, "failed"), (rc, out, err)
    if out is not None:
        info = layers_json(d).get(dg)
        assert info and info["state"] == "failed" and info["error"], info
        print("\n%s: %s" % (case, info["error"]))
    else:
        assert err.strip(), "a refusal says why"
        print("\n%s: refused: %s" % (case, err.strip()))
    assert not os.path.exists(tree_root(d, dg))
    assert d.alive()
    rc, out, err = layer_add(d, registry.ref(REPO, okd))
    assert rc == 0 and out["ready"], (rc, out, err)
    assert harness.read_file(os.path.join(tree_root(d, okd), "ok")) == b"still fine\n"


def test_later_entries_replace_earlier_ones(registry, daemon_factory):
    """Duplicate names in one tar: the last entry wins (a file replaced by a symlink, a dir's
    mode changed by a second dir entry)."""
    lay = L.Layer([L.Entry("s", L.REG, b"s"), L.Entry("s", L.SYM, link="e"),
                   L.Entry("e", L.DIR, mode=0o700), L.Entry("e", L.DIR, mode=0o750)], "gzip")
    dg = L.push_layer(registry, REPO, lay)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg))
    assert rc == 0 and out["ready"], (rc, out, err)
    bad = compare_tree(tree_root(d, dg), lay.expected)
    assert not bad, "\n".join(bad)


def test_a_file_replacing_a_directory_drops_its_children(registry, daemon_factory):
    lay = L.Layer([L.Entry("d/x", L.REG, b"x"), L.Entry("d", L.REG, b"now a file\n")], "gzip")
    dg = L.push_layer(registry, REPO, lay)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg))
    assert rc == 0 and out["ready"], (rc, out, err)
    root = tree_root(d, dg)
    assert sorted(walk(root)) == ["d"]
    assert harness.read_file(os.path.join(root, "d")) == b"now a file\n"


def test_media_type_is_a_hint_the_bytes_decide(layers, registry, daemon_factory):
    """A zstd layer announced as gzip (a wrong but layer media type) is still read as zstd:
    the format comes from the bytes."""
    lay = layers["zstd"]
    dg = L.push_layer(registry, REPO, lay)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg), "--media-type", L.MEDIA["gzip"])
    assert rc == 0 and out["ready"], (rc, out, err)
    assert layers_json(d)[dg]["format"] == "zstd"
    assert harness.read_file(os.path.join(tree_root(d, dg), "etc/passwd")) == \
        b"root:x:0:0:root:/root:/bin/sh\n"


def test_absolute_names_are_made_relative(registry, daemon_factory):
    """"/etc/abs" and "./x" are normalised as container runtimes extract them (inside the
    root), never outside the layer's directory."""
    lay = L.Layer([L.Entry("/etc/abs", L.REG, b"abs\n"), L.Entry("./rel", L.REG, b"rel\n")],
                  "tar")
    dg = L.push_layer(registry, REPO, lay)
    d = daemon_factory(registries=[registry])
    rc, out, err = layer_add(d, registry.ref(REPO, dg))
    assert rc == 0 and out["ready"], (rc, out, err)
    root = tree_root(d, dg)
    assert sorted(walk(root)) == ["etc", "etc/abs", "rel"]
    assert harness.read_file(os.path.join(root, "etc/abs")) == b"abs\n"


# ------------------------------------------------------------------------------ overlay

def test_overlay_of_base_and_upper(layers, registry, daemon_factory, tmp_path):
    """base (gzip) under upper (tar, whiteouts and an opaque dir) with overlayfs: whited-out
    names are gone, the opaque dir shows only the upper's entries, replaced files are the
    upper's, and busybox runs from the merged tree."""
    base = layers["gzip"]
    upper = L.Layer(L.upper_entries(), "tar")
    db, du = L.push_layer(registry, REPO, base), L.push_layer(registry, REPO, upper)
    d = daemon_factory(registries=[registry])
    for dg in (db, du):
        rc, out, err = layer_add(d, registry.ref(REPO, dg))
        assert rc == 0 and out["ready"], (rc, out, err)
    up = tree_root(d, du)
    assert not compare_tree(up, upper.expected), compare_tree(up, upper.expected)
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "overlay", "none", "-o",
                    "lowerdir=%s:%s" % (up, tree_root(d, db)), str(merged)], check=True)
    try:
        assert not os.path.lexists(merged / "gone.txt")
        assert not os.path.lexists(merged / "gone_dir")
        assert not os.path.lexists(merged / "bin/ls")
        assert sorted(os.listdir(merged / "opaq")) == ["c"]
        assert (merged / "etc/motd").read_bytes() == b"upper layer\n"
        assert (merged / "etc/new").read_bytes() == b"new in upper\n"
        assert (merged / "etc/passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
        assert os.readlink(merged / "bin/sh") == "busybox"
        r = subprocess.run([str(merged / "bin/busybox"), "echo", "hello from a layer"],
                           stdout=subprocess.PIPE, check=True)
        assert r.stdout == b"hello from a layer\n"
        assert os.getxattr(merged / "x/attr", "user.test") == b"hello"
    finally:
        subprocess.run(["umount", str(merged)], check=True)


# ------------------------------------------------------------------------------ images

def test_push_image_is_a_consistent_oci_image(registry):
    """layerimg.push_image (the fixture the snapshotter tests use): the manifest names the
    config and the layers with their sizes and media types, and the config's diff_ids are the
    sha256 of each layer's uncompressed tar."""
    lays = [L.Layer(L.base_entries(), "gzip"), L.Layer(L.upper_entries(), "zstd")]
    img = L.push_image(registry, REPO, "matrix", lays)
    st, _h, body = registry.request("GET", "/v2/%s/manifests/matrix" % REPO,
                                    headers={"Accept": L.OCI_MANIFEST})
    assert st == 200 and harness.sha256_digest(body) == img["manifest"]
    m = json.loads(body)
    st, _h, cfg = registry.request("GET", "/v2/%s/blobs/%s" % (REPO, m["config"]["digest"]))
    assert st == 200 and len(cfg) == m["config"]["size"]
    diff_ids = json.loads(cfg)["rootfs"]["diff_ids"]
    for desc, lay, diff in zip(m["layers"], lays, diff_ids):
        st, _h, blob = registry.request("GET", "/v2/%s/blobs/%s" % (REPO, desc["digest"]))
        assert st == 200 and blob == lay.blob and desc["size"] == len(blob)
        assert desc["mediaType"] == lay.media_type
        tar = subprocess.run(["zstd", "-d", "-c"] if lay.fmt == "zstd" else ["gzip", "-dc"],
                             input=blob, stdout=subprocess.PIPE, check=True).stdout
        assert diff == harness.sha256_digest(tar)
    assert len(diff_ids) == 2


# ------------------------------------------------------------------------------ second node

@pytest.fixture(scope="session")
def big_gzip(tmp_path_factory):
    """The 256 MiB layer as gzip, built once per session and cached on disk."""
    p = tmp_path_factory.mktemp("ltests-big") / "big.tar.gz"
    ents = [L.Entry("big", L.DIR), L.Entry("big/blob.bin", L.REG, L.big_bytes(BIG)),
            L.Entry("big/small4k", L.REG, L.big_bytes(4096, "small4k"))]
    lay = L.Layer(ents, "gzip")
    p.write_bytes(lay.blob)
    return lay


def test_second_node_gets_the_index_from_a_peer(big_gzip, net, build_dir):
    """Node A builds the index of a 256 MiB gzip layer; node B gets it from A ("peer", no pass)
    and reads one 4 KiB file: B fetches at most two spans of compressed bytes (its own count)
    and the origin serves B no more than that (the registry's own log)."""
    from test_peers import node_flags, wait_peers_up
    s = net.add_subnet()
    reg = net.registry(net.add_host("ltreg", s))
    dg = reg.push_blob(REPO, big_gzip.blob)
    hosts = [net.add_host("ltA", s), net.add_host("ltB", s)]
    a, b = [net.daemon(build_dir, h, registries=[reg], extra_args=node_flags(h, peers=hosts))
            for h in hosts]
    wait_peers_up([a, b])
    rc, out, err = layer_add(a, reg.ref(REPO, dg), wait=300)
    assert rc == 0 and out["state"] == "built", (rc, out, err)
    mark = reg.mark()
    rc, out, err = layer_add(b, reg.ref(REPO, dg), wait=120)
    assert rc == 0 and out["state"] == "peer", (rc, out, err)
    root = os.path.join(b.view_mountpoint, "layers", "sha256", harness.hex_of(dg))
    got = harness.read_file(os.path.join(root, "big/small4k"))
    assert got == L.big_bytes(4096, "small4k")
    served = reg.bytes_served(dg, since=mark)
    fetched = layers_json(b)[dg]["bytes_fetched"]
    print("\nnode B: %d bytes of the layer from the origin, %d fetched in all" % (served, fetched))
    # two checkpoint spans (2 MiB of compressed bytes each) plus a 1 MiB chunk of rounding at
    # each end: what one 4 KiB read may cost, from the origin or from peers
    bound = 2 * 2 * MiB + 2 * MiB
    assert served <= bound, "node B took %d bytes of the layer from the origin" % served
    assert fetched <= bound, "node B fetched %d bytes of the layer for one 4 KiB read" % fetched
