"""The snapshotter's answers to bad input (--snapshotter-socket), against a real daemon.

containerd's proxy client turns a gRPC status into its errdefs error (NOT_FOUND ->
ErrNotFound, ...), so the code is the contract with containerd; the message is what an
operator sees, and where it says which check failed ("malformed request", "empty key", the
method) it is asserted too. Every test also checks that the bad request lost nothing: the
snapshots made before it (a committed base, an active child, a view; `baseline`) list the
same after it, and the daemon still prepares, stats, mounts and removes a new snapshot.
The tests share one daemon (so each one's bad input reaches a daemon that has had all the
bad input before it); its health is checked after every test, and what a test made is
removed after it.

The client is grpcio's generic one (no stubs): the request and response classes come from
the daemon's own .proto files (snapshot/proto), compiled into a descriptor set by protoc-c
(a build dependency already) and loaded into a private descriptor pool. Raw bytes go through
`unary_unary(path)` without a serializer, which is how malformed messages are sent. What
grpcio cannot send, a gRPC length prefix that disagrees with the bytes after it, goes
through curl (--http2-prior-knowledge --unix-socket: h2c as containerd speaks it, a body of
our bytes, the status read from the response headers).

Needs Debian's python3-grpcio and python3-protobuf (scripts/deps.sh); skipped without.
"""

import logging
import os
import random
import shutil
import subprocess

import pytest

import harness

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as e:  # the module skips below
    grpc = None
    _IMPORT_ERROR = str(e)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO_ROOT, "snapshot", "proto")
PACKAGE = "containerd.services.snapshots.v1"
SERVICE = "/%s.Snapshots/" % PACKAGE
METHODS = ["Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage",
           "Cleanup"]
KIND_VIEW, KIND_ACTIVE, KIND_COMMITTED = 1, 2, 3

pytestmark = [
    pytest.mark.skipif(grpc is None, reason="python3-grpcio / python3-protobuf are not "
                       "installed (scripts/deps.sh): %s" % (None if grpc else _IMPORT_ERROR)),
    pytest.mark.skipif(shutil.which("protoc-c") is None,
                       reason="protoc-c is not installed (protobuf-c-compiler)"),
]


# --------------------------------------------------------------------------- the client

def _load(files):
    """{message name: class} (nested ones too, by their full name within the package) of the
    FileDescriptorProtos FILES, dependencies first, in a private pool (our
    google/protobuf/*.proto are minimal and must not meet the real ones)."""
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    factory = None if hasattr(message_factory, "GetMessageClass") else \
        message_factory.MessageFactory(pool)
    classes = {}

    def walk(d, prefix):
        classes[prefix + d.name] = (message_factory.GetMessageClass(d) if factory is None
                                    else factory.GetPrototype(d))
        for n in d.nested_types:
            walk(n, prefix + d.name + ".")

    for f in files:
        for d in pool.FindFileByName(f.name).message_types_by_name.values():
            walk(d, "")
    return pool, classes


def _as_bytes(f):
    """A copy of FileDescriptorProto F whose string fields are bytes (and maps, whose keys
    cannot be bytes, repeated entries): it decodes what a proto3 parser refuses."""
    f = descriptor_pb2.FileDescriptorProto.FromString(f.SerializeToString())

    def fix(d):
        d.options.ClearField("map_entry")
        for fld in d.field:
            if fld.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                fld.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        for n in d.nested_type:
            fix(n)

    for d in f.message_type:
        fix(d)
    return f


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """(classes, {method: (request class, response class)}, wire classes) of the Snapshots
    service, from the daemon's .proto files. The classes decode as containerd's Go client
    does (proto3: a string field must be UTF-8); the wire classes see every string as bytes."""
    out = tmp_path_factory.mktemp("proto") / "snapshots.desc"
    subprocess.run(["protoc-c", "--proto_path", PROTO_DIR, "--include_imports",
                    "--descriptor_set_out", str(out), os.path.join(PROTO_DIR, "snapshots.proto")],
                   check=True)
    files = list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)
    pool, classes = _load(files)  # --include_imports writes dependencies first
    _, wire = _load([_as_bytes(f) for f in files])
    svc = pool.FindServiceByName(PACKAGE + ".Snapshots")
    rpc = {m.name: (classes[m.input_type.name], classes[m.output_type.name])
           for m in svc.methods}
    assert sorted(rpc) == sorted(METHODS), rpc
    return classes, rpc, wire


def _text(b):
    return b.decode("utf-8", "surrogateescape")


class Snap:
    """The Snapshots service at unix socket SOCK. call() takes a request's fields and returns
    the reply (a list of them for List); raw() sends bytes as the request and returns bytes.
    A non-OK status raises grpc.RpcError; status() returns (code, details) of one."""

    def __init__(self, sock, pb, timeout=20):
        self.classes, self.rpc, self.wire = pb
        self.timeout = timeout
        self.channel = grpc.insecure_channel("unix://" + sock)

    def close(self):
        self.channel.close()

    def msg(self, type_name, **fields):
        return self.classes[type_name](**fields)

    def raw(self, method, data, path=None, **kw):
        path = path or SERVICE + method
        kw.setdefault("timeout", self.timeout)
        if method == "List":
            return list(self.channel.unary_stream(path)(data, **kw))
        return self.channel.unary_unary(path)(data, **kw)

    def call(self, method, **fields):
        req_cls, rep_cls = self.rpc[method]
        out = self.raw(method, req_cls(**fields).SerializeToString())
        if method == "List":
            return [rep_cls.FromString(b) for b in out]
        return rep_cls.FromString(out)

    def status(self, method, **fields):
        with pytest.raises(grpc.RpcError) as e:
            self.call(method, **fields)
        return e.value.code(), e.value.details()

    def raw_status(self, method, data, **kw):
        with pytest.raises(grpc.RpcError) as e:
            self.raw(method, data, **kw)
        return e.value.code(), e.value.details()

    def listing(self, strict=True):
        """{name: (kind, parent, labels)} of every snapshot. STRICT: decoded as containerd
        does (raises DecodeError on a name that is not UTF-8); else names that are not are
        given with their bad bytes as surrogates (remove() takes them back)."""
        out = {}
        if strict:
            for rep in self.call("List", snapshotter="p2pblobs"):
                for i in rep.info:
                    out[i.name] = (i.kind, i.parent, dict(i.labels))
            return out
        req = self.wire["ListSnapshotsRequest"](snapshotter=b"p2pblobs").SerializeToString()
        for b in self.raw("List", req):
            for i in self.wire["ListSnapshotsResponse"].FromString(b).info:
                out[_text(i.name)] = (i.kind, _text(i.parent),
                                      {_text(e.key): _text(e.value) for e in i.labels})
        return out

    def remove(self, key):
        """Removes KEY (a name from listing(strict=False)); the status as (code, details)."""
        req = self.wire["RemoveSnapshotRequest"](
            snapshotter=b"p2pblobs", key=key.encode("utf-8", "surrogateescape"))
        try:
            self.raw("Remove", req.SerializeToString())
            return grpc.StatusCode.OK, None
        except grpc.RpcError as e:
            return e.code(), e.details()


def request_bytes(snap, method, **fields):
    return snap.rpc[method][0](**fields).SerializeToString()


@pytest.fixture(scope="module")
def daemon(build_dir, tmp_path_factory):
    """One daemon for the module: every test's bad input reaches a daemon that has already
    had the bad input of the tests before it. Its health (no sanitizer report, no error
    line, no death) is checked after each test and at the end."""
    work = tmp_path_factory.mktemp("snapin")
    # A short socket path: sun_path is 108 bytes.
    sock = str(tmp_path_factory.mktemp("s") / "snap.sock")
    d = harness.Daemon(build_dir, work / "d", extra_args=["--snapshotter-socket", sock])
    d.snap_socket = sock
    try:
        d.start()
        harness.wait_until(lambda: os.path.exists(sock), 20, what="snapshotter socket")
        yield d
    finally:
        d.cleanup()
    d.check_health()


@pytest.fixture(scope="module")
def module_snap(daemon, pb):
    s = Snap(daemon.snap_socket, pb)
    s.daemon = daemon
    yield s
    s.close()


@pytest.fixture(scope="module")
def module_baseline(module_snap):
    """A committed `base` (label a=1), an active `child` of it, a view `look` of it; returns
    the listing they make."""
    snap = module_snap
    snap.call("Prepare", snapshotter="p2pblobs", key="base-work")
    snap.call("Commit", snapshotter="p2pblobs", name="base", key="base-work", labels={"a": "1"})
    snap.call("Prepare", snapshotter="p2pblobs", key="child", parent="base")
    snap.call("View", snapshotter="p2pblobs", key="look", parent="base")
    before = snap.listing()
    assert before == {"base": (KIND_COMMITTED, "", {"a": "1"}),
                      "child": (KIND_ACTIVE, "base", {}),
                      "look": (KIND_VIEW, "base", {})}, before
    return before


@pytest.fixture
def snap(module_snap):
    yield module_snap
    module_snap.daemon.check_health()


@pytest.fixture
def baseline(snap, module_baseline):
    """The baseline's listing; at the end of the test the daemon holds just the baseline
    again (what a test made is removed: every test starts from the same snapshots)."""
    yield dict(module_baseline)
    for _ in range(8):  # children before parents
        extra = [k for k in snap.listing(strict=False) if k not in module_baseline]
        if not extra:
            break
        for k in extra:
            snap.remove(k)
    assert snap.listing() == module_baseline


def assert_intact(snap, before, extra_ok=False):
    """Nothing of BEFORE was lost or changed, the daemon is alive, and it still serves: a new
    snapshot is prepared on `base`, stated, mounted and removed. EXTRA_OK: snapshots made
    since are allowed, and their names need not be UTF-8 (the listing is not decoded as
    containerd would; test_strings_that_are_not_utf8_are_refused)."""
    assert snap.daemon.proc.poll() is None, "the daemon died: %s" % snap.daemon.log_text()[-3000:]
    now = snap.listing(strict=not extra_ok)
    if extra_ok:
        now = {k: v for k, v in now.items() if k in before}
    assert now == before
    rep = snap.call("Prepare", snapshotter="p2pblobs", key="after", parent="base")
    assert len(rep.mounts) == 1
    st = snap.call("Stat", snapshotter="p2pblobs", key="after")
    assert (st.info.name, st.info.kind, st.info.parent) == ("after", KIND_ACTIVE, "base")
    assert len(snap.call("Mounts", snapshotter="p2pblobs", key="after").mounts) == 1
    snap.call("Remove", snapshotter="p2pblobs", key="after")
    assert "after" not in snap.listing(strict=not extra_ok)


def snapshot_dirs(snap):
    return sorted(os.listdir(os.path.join(snap.daemon.state_dir, "snapshots")))


INVALID = grpc.StatusCode.INVALID_ARGUMENT if grpc else None


# --------------------------------------------------------------------------- the checks

# Bytes that are no request message: a string field whose length runs past the end, a varint
# that never ends, wire type 7 (there is none), a field number 0.
UNPARSEABLE = {
    "truncated string": b"\x12\x10base",
    "unterminated varint": b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    "wire type 7": b"\x0f",
    "field number 0": b"\x02\x01x",
}


@pytest.mark.root
def test_unparseable_requests_are_invalid_argument(snap, baseline):
    """serve()'s unpack: bytes that are not the method's request message are answered
    INVALID_ARGUMENT "malformed request", for every method, before the method runs."""
    seen = {}
    for method in METHODS:
        # A real request of the method cut short by one byte: its last field's length runs
        # past the end.
        cut = request_bytes(snap, method, snapshotter="p2pblobs")[:-1]
        for what, data in list(UNPARSEABLE.items()) + [("valid request cut short", cut)]:
            seen[(method, what)] = snap.raw_status(method, data)
    wrong = {k: v for k, v in seen.items() if v != (INVALID, "malformed request")}
    assert not wrong, wrong
    assert_intact(snap, baseline)


@pytest.mark.root
def test_update_without_info_is_invalid_argument(snap, baseline):
    """An Update with no Info names no snapshot: INVALID_ARGUMENT, nothing changes."""
    fm = snap.msg("FieldMask", paths=["labels.a"])
    assert snap.status("Update", snapshotter="p2pblobs", update_mask=fm) == (
        INVALID, "malformed request")
    assert snap.status("Update", snapshotter="p2pblobs") == (INVALID, "malformed request")
    assert_intact(snap, baseline)
    # The same Update with an Info does what it says: the check is on the Info, not the mask.
    snap.call("Prepare", snapshotter="p2pblobs", key="upd", parent="base", labels={"a": "1"})
    info = snap.msg("Info", name="upd", labels={"a": "2"})
    rep = snap.call("Update", snapshotter="p2pblobs", info=info, update_mask=fm)
    assert (rep.info.name, dict(rep.info.labels)) == ("upd", {"a": "2"})


@pytest.mark.root
def test_unknown_keys_are_not_found(snap, baseline):
    """A key (or a parent) that names no snapshot: NOT_FOUND naming it, from every method
    that takes one; a Prepare or View on a missing parent leaves no snapshot behind."""
    nf = grpc.StatusCode.NOT_FOUND
    dirs = snapshot_dirs(snap)
    calls = {
        "Stat": dict(key="nope"),
        "Mounts": dict(key="nope"),
        "Remove": dict(key="nope"),
        "Usage": dict(key="nope"),
        "Commit": dict(name="new-name", key="nope"),
        "Update": dict(info=snap.msg("Info", name="nope", labels={"x": "y"}),
                       update_mask=snap.msg("FieldMask", paths=["labels.x"])),
        "Prepare": dict(key="orphan", parent="nope"),
        "View": dict(key="orphan-view", parent="nope"),
    }
    for method, fields in calls.items():
        code, details = snap.status(method, snapshotter="p2pblobs", **fields)
        assert code == nf, (method, code, details)
        assert "snapshot nope: not found" in details, (method, details)
    # The parent was the missing one: the keys were not created, nor left half made.
    assert snap.status("Stat", snapshotter="p2pblobs", key="orphan")[0] == nf
    assert snap.status("Stat", snapshotter="p2pblobs", key="orphan-view")[0] == nf
    assert snapshot_dirs(snap) == dirs
    assert_intact(snap, baseline)


@pytest.mark.root
def test_empty_prepare_or_view_key_is_invalid_argument(snap, baseline):
    """An empty key is refused before the metadata sees it, with or without a parent: no row,
    no directory."""
    dirs = snapshot_dirs(snap)
    for parent in ("", "base"):
        assert snap.status("Prepare", snapshotter="p2pblobs", key="", parent=parent) == (
            INVALID, "prepare: empty key")
        assert snap.status("View", snapshotter="p2pblobs", key="", parent=parent) == (
            INVALID, "view: empty key")
    assert snapshot_dirs(snap) == dirs
    assert_intact(snap, baseline)


@pytest.mark.root
def test_empty_commit_name_is_invalid_argument(snap, baseline):
    """A Commit with an empty name is refused and the active snapshot stays active, with its
    files; a Commit with a name then commits it."""
    rep = snap.call("Prepare", snapshotter="p2pblobs", key="work")
    (mount,) = rep.mounts
    assert mount.type == "bind", mount  # no parent: its fs dir, bound
    with open(os.path.join(mount.source, "f"), "w") as f:
        f.write("kept")
    code, details = snap.status("Commit", snapshotter="p2pblobs", name="", key="work")
    assert code == INVALID, details
    assert details == "commit snapshot work: invalid argument"
    st = snap.call("Stat", snapshotter="p2pblobs", key="work")
    assert (st.info.kind, st.info.parent) == (KIND_ACTIVE, "")
    assert snap.status("Stat", snapshotter="p2pblobs", key="")[0] == grpc.StatusCode.NOT_FOUND
    with open(os.path.join(mount.source, "f")) as f:
        assert f.read() == "kept"
    assert_intact(snap, dict(baseline, work=(KIND_ACTIVE, "", {})))
    snap.call("Commit", snapshotter="p2pblobs", name="done", key="work")
    st = snap.call("Stat", snapshotter="p2pblobs", key="done")
    assert st.info.kind == KIND_COMMITTED
    assert snap.call("Usage", snapshotter="p2pblobs", key="done").inodes >= 1


# A bad filter, and the reason the answer gives (snapshot/filter.c).
BAD_FILTERS = {
    "==base": "expected a field name",
    'name=="base': "unterminated quoted string",
    "name<base": "expected an operator (==, !=, ~=)",
    "name~=(": "invalid regular expression",
    "name~=a{2}": "regular expression too complex",
    "name==base kind==committed": "expected ',' between selectors",
    "a.b.c.d.e": "field path too long",
    ",".join(["name"] * 33): "too many selectors",
}


@pytest.mark.root
def test_bad_list_filter_is_invalid_argument(snap, baseline):
    """A List with a filter that does not parse is refused whole (INVALID_ARGUMENT, no
    snapshot streamed), also when another of its filters is good; good filters still work."""
    for text, reason in BAD_FILTERS.items():
        for filters in ([text], ["kind==committed", text]):
            req = request_bytes(snap, "List", snapshotter="p2pblobs", filters=filters)
            streamed = []
            with pytest.raises(grpc.RpcError) as e:
                for m in snap.channel.unary_stream(SERVICE + "List")(req, timeout=snap.timeout):
                    streamed.append(m)
            assert streamed == [], filters
            assert e.value.code() == INVALID, (filters, e.value.details())
            assert e.value.details().startswith("filter %s: %s" % (text, reason)), \
                (filters, e.value.details())
            assert e.value.details().endswith(": invalid argument"), e.value.details()
    got = snap.call("List", snapshotter="p2pblobs", filters=["kind==committed"])
    assert [i.name for r in got for i in r.info] == ["base"]
    assert_intact(snap, baseline)


@pytest.mark.root
def test_mounts_of_a_committed_snapshot_is_failed_precondition(snap, baseline):
    """Only active snapshots and views mount (containerd's rule): Mounts of a committed one
    is FAILED_PRECONDITION; those of the active child and the view answer."""
    assert snap.status("Mounts", snapshotter="p2pblobs", key="base") == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "cannot mount snapshot base: committed: failed precondition")
    for key in ("child", "look"):
        assert len(snap.call("Mounts", snapshotter="p2pblobs", key=key).mounts) == 1
    assert_intact(snap, baseline)


@pytest.mark.root
def test_unknown_method_is_unimplemented(snap, baseline):
    """A path outside the table (a method containerd may add later, a wrong case, another
    service) is UNIMPLEMENTED, naming the path."""
    data = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="base")
    for path in (SERVICE + "Walk", SERVICE + "prepare", SERVICE,
                 "/containerd.services.content.v1.Content/Info", "/x"):
        assert snap.raw_status("Stat", data, path=path) == (
            grpc.StatusCode.UNIMPLEMENTED, "unknown method %s" % path), path
    # A path longer than grpc.c keeps (255 bytes) is no method either, even one that starts
    # with a method's path; the message cannot name it.
    for path in (SERVICE + "Stat" + "x" * 300, SERVICE + "Stat/" + "x" * 300):
        code, details = snap.raw_status("Stat", data, path=path)
        assert (code, details.startswith("unknown method")) == (
            grpc.StatusCode.UNIMPLEMENTED, True), (path, details)
    assert_intact(snap, baseline)


@pytest.mark.root
def test_grpc_framing_is_checked(snap, baseline):
    """grpc.c's checks before a method runs, each INVALID_ARGUMENT: a compressed message, a
    call with no message, two messages on a unary method, a request over GRPC_MAX_REQUEST
    (4 MiB)."""
    stat = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="base")
    # grpc sends a message uncompressed when gzip would not make it smaller: a long key does.
    long_stat = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="k" * 4096)
    assert snap.raw_status("Stat", long_stat, compression=grpc.Compression.Gzip) == (
        INVALID, "compressed messages are not supported")
    stream = snap.channel.stream_unary(SERVICE + "Stat")
    for msgs, details in (([], "no request message"),
                          ([stat, stat], "one request message expected")):
        with pytest.raises(grpc.RpcError) as e:
            stream(iter(msgs), timeout=snap.timeout)
        assert (e.value.code(), e.value.details()) == (INVALID, details)
    big = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="k" * (4 << 20))
    assert snap.raw_status("Stat", big) == (INVALID, "request larger than 4194304 bytes")
    assert_intact(snap, baseline)


@pytest.mark.root
def test_strings_that_are_not_utf8_are_refused(snap, baseline):
    """A proto3 string field holds UTF-8: a request with one that does not is no request
    message (INVALID_ARGUMENT, as for bytes that do not parse), and creates nothing that
    would make the replies after it undecodable."""
    w = snap.wire
    bad = b"bad\xff\xfe"
    snap.call("Prepare", snapshotter="p2pblobs", key="work8", parent="base")
    label = w["PrepareSnapshotRequest.LabelsEntry"](key=b"l", value=bad)
    requests = {
        "Prepare key": ("Prepare", w["PrepareSnapshotRequest"](snapshotter=b"p2pblobs", key=bad)),
        "Prepare label": ("Prepare", w["PrepareSnapshotRequest"](
            snapshotter=b"p2pblobs", key=b"utf8-key", labels=[label])),
        "Commit name": ("Commit", w["CommitSnapshotRequest"](
            snapshotter=b"p2pblobs", name=b"done" + bad, key=b"work8")),
    }
    answers = {}
    for what, (method, req) in requests.items():
        try:
            snap.raw(method, req.SerializeToString())
            answers[what] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            answers[what] = e.code()
    assert answers == {k: INVALID for k in requests}
    assert_intact(snap, dict(baseline, work8=(KIND_ACTIVE, "base", {})))
    # serve() checks every string field, nested ones too, before any method runs; the
    # message names the field and shows its bytes escaped, never raw.
    entry = w["Info.LabelsEntry"](key=b"a", value=bad)
    nul = b"nul\x00key"  # UTF-8, but a C string would keep "nul": refused too
    cases = [
        ("Prepare", w["PrepareSnapshotRequest"](snapshotter=b"p2pblobs", key=bad),
         r'field key is not UTF-8: "bad\xff\xfe"'),
        ("Prepare", w["PrepareSnapshotRequest"](snapshotter=b"p2pblobs", key=nul),
         r'field key holds a NUL byte: "nul\x00key"'),
        ("View", w["ViewSnapshotRequest"](snapshotter=b"p2pblobs", key=b"v", parent=bad),
         r'field parent is not UTF-8: "bad\xff\xfe"'),
        ("Prepare", w["PrepareSnapshotRequest"](snapshotter=b"p2pblobs", key=b"k8",
                                                labels=[label]),
         r'field labels.value is not UTF-8: "bad\xff\xfe"'),
        ("Update", w["UpdateSnapshotRequest"](snapshotter=b"p2pblobs",
                                              info=w["Info"](name=b"base", labels=[entry])),
         r'field info.labels.value is not UTF-8: "bad\xff\xfe"'),
        ("Update", w["UpdateSnapshotRequest"](
            snapshotter=b"p2pblobs", info=w["Info"](name=b"base"),
            update_mask=w["FieldMask"](paths=[b"labels.a" + bad])),
         r'field update_mask.paths is not UTF-8: "labels.abad\xff\xfe"'),
        ("List", w["ListSnapshotsRequest"](snapshotter=b"p2pblobs", filters=[b"name==" + bad]),
         r'field filters is not UTF-8: "name==bad\xff\xfe"'),
        ("Remove", w["RemoveSnapshotRequest"](snapshotter=bad, key=b"base"),
         r'field snapshotter is not UTF-8: "bad\xff\xfe"'),
    ]
    got, want = [], []
    for method, req, why in cases:
        try:
            snap.raw(method, req.SerializeToString())
            got.append((method, why, "OK", None))
        except grpc.RpcError as e:
            got.append((method, why, e.code(), e.details()))
        want.append((method, why, INVALID, "malformed request: " + why))
    assert got == want
    assert_intact(snap, dict(baseline, work8=(KIND_ACTIVE, "base", {})))


def curl_grpc(sock, method, body):
    """POSTs BODY (the gRPC framing too: BODY is sent as it is) to METHOD over h2c on the
    unix socket SOCK with curl; returns (grpc-status, grpc-message) of the answer."""
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--unix-socket", sock,
                        "-H", "content-type: application/grpc", "-H", "te: trailers",
                        "--data-binary", "@-", "-D", "-", "-o", "/dev/null",
                        "http://localhost" + SERVICE + method],
                       input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 0, r.stderr
    hdrs = dict(line.split(": ", 1) for line in r.stdout.decode().split("\r\n") if ": " in line)
    return int(hdrs["grpc-status"]), hdrs.get("grpc-message")


def curl_has_http2():
    try:
        out = subprocess.run(["curl", "--version"], stdout=subprocess.PIPE, text=True).stdout
    except OSError:
        return False
    return " HTTP2" in out


@pytest.mark.root
@pytest.mark.skipif(not curl_has_http2(), reason="needs curl with HTTP/2 (nghttp2)")
def test_grpc_length_prefix_is_checked(snap, baseline):
    """A request body is exactly one length-prefixed message: a prefix that claims more bytes
    than follow, or fewer, or a body shorter than a prefix, is INVALID_ARGUMENT (grpc.c),
    and the method does not run."""
    stat_nope = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="nope")
    stat_base = request_bytes(snap, "Stat", snapshotter="p2pblobs", key="base")

    def framed(msg, n=None):
        return b"\x00" + (len(msg) if n is None else n).to_bytes(4, "big") + msg

    sock = snap.daemon.snap_socket
    # The control: curl's framing as grpc's reaches the method.
    assert curl_grpc(sock, "Stat", framed(stat_nope)) == (5, "stat snapshot nope: not found")
    one = "one request message expected"
    cases = {
        "prefix claims more": (framed(stat_base, len(stat_base) + 1), one),
        "prefix claims 4 GiB": (framed(stat_base, 0xffffffff), one),
        "prefix claims fewer": (framed(stat_base, len(stat_base) - 1), one),
        "bytes after the message": (framed(stat_base) + b"\x00", one),
        "shorter than a prefix": (b"\x00\x00\x00", "no request message"),
    }
    got = {what: curl_grpc(sock, "Stat", body) for what, (body, _) in cases.items()}
    assert got == {what: (3, msg) for what, (_, msg) in cases.items()}
    assert_intact(snap, baseline)


# The codes of snapshot/grpc.h's enum grpc_code but INTERNAL (the daemon's "out of memory"; a
# client sees INTERNAL and UNAVAILABLE for a reset stream or a dead server too).
DAEMON_CODES = {"OK", "UNKNOWN", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
                "FAILED_PRECONDITION", "UNIMPLEMENTED"}


@pytest.mark.root
def test_random_bytes_get_a_status_and_lose_nothing(snap, baseline):
    """200 byte strings per method (100 random, 100 a valid request with 1-3 bytes changed;
    the keys they name are not the baseline's): the daemon answers each with a status it
    sends, with a message (not a transport error: the first such ends the run, with the
    bytes that caused it), stays up, and the baseline is untouched. The seed is printed
    and given in every failure; SNAP_FUZZ_SEED=N runs that one again."""
    seed = int(os.environ.get("SNAP_FUZZ_SEED") or int.from_bytes(os.urandom(4), "big"))
    rnd = random.Random(seed)
    valid = {
        "Prepare": dict(key="fz-p", parent="fz-q", labels={"fz-l": "v"}),
        "View": dict(key="fz-v", parent="fz-q", labels={"fz-l": "v"}),
        "Mounts": dict(key="fz-m"),
        "Commit": dict(name="fz-n", key="fz-k", labels={"fz-l": "v"}),
        "Remove": dict(key="fz-r"),
        "Stat": dict(key="fz-s"),
        "Update": dict(info=snap.msg("Info", name="fz-u", labels={"fz-l": "v"}),
                       update_mask=snap.msg("FieldMask", paths=["labels.fz-l"])),
        "List": dict(filters=["labels.fz-l==v", "name~=^fz"]),
        "Usage": dict(key="fz-g"),
        "Cleanup": dict(),
    }
    # A reply that grpcio cannot decode (there should be none: strings that are not UTF-8
    # are refused) is logged by it as an error each time: noise here, the listing below
    # decodes strictly.
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    level = grpc_log.level
    grpc_log.setLevel(logging.CRITICAL)
    try:
        codes = {}
        for method in METHODS:
            good = request_bytes(snap, method, snapshotter="p2pblobs", **valid[method])
            for i in range(200):
                if i < 100:
                    data = rnd.randbytes(rnd.randrange(0, 80))
                else:
                    b = bytearray(good)
                    for _ in range(rnd.randrange(1, 4)):
                        b[rnd.randrange(len(b))] = rnd.randrange(256)
                    data = bytes(b)
                try:
                    snap.raw(method, data)
                    code, details = "OK", "-"
                except grpc.RpcError as e:
                    code, details = e.code().name, e.details()
                codes[code] = codes.get(code, 0) + 1
                assert code in DAEMON_CODES and details, (
                    "seed %d: %s(%r) -> %s %r; daemon alive: %s" % (
                        seed, method, data, code, details, snap.daemon.proc.poll() is None))
    finally:
        grpc_log.setLevel(level)
    print("seed %d, answers %s" % (seed, codes))
    snap.listing(strict=True)  # decodes as containerd does: no name that is not UTF-8
    assert_intact(snap, baseline, extra_ok=True)
