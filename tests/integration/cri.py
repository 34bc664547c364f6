"""A small CRI client (the API kubelet speaks to containerd), for the end-to-end tests.

crictl is not in Debian 12 and no CRI .proto is on disk, but containerd's own binary carries
the API: its gogo-generated Go code registers each .proto as a gzip'ed FileDescriptorProto
(gogo's `proto.RegisterFile`), so the CRI API of the very containerd under test is in
/usr/bin/containerd. ``descriptor()`` finds it (gzip streams with gogo's zeroed header,
decompressed and parsed until one is the file of package ``runtime.v1``), drops its one import
(gogo.proto: it only adds options, kept as unknown fields), and ``Cri`` builds the message
classes from it with protobuf's descriptor_pool + message_factory and calls
``runtime.v1.RuntimeService`` / ``runtime.v1.ImageService`` over containerd's socket with
grpc's generic unary calls. Needs Debian's python3-grpcio and python3-protobuf.

    c = Cri("/path/containerd.sock")
    c.call("Version", version="v1")                    # RuntimeService
    c.image("PullImage", image={"image": ref})         # ImageService
    c.msg("PodSandboxConfig", metadata={...})          # a message, from a dict

Requests are given as keyword arguments (nested dicts and lists as protobuf's ParseDict takes
them, field names as in the .proto); replies are protobuf messages. A gRPC error raises
``grpc.RpcError`` (``.code()``, ``.details()``).

The helpers below (``host_network_pod``, ``container_config``, ``wait_exited``,
``read_log``) are what the tests need of kubelet: a pod in the node's network namespace (no
CNI), a container in it, its exit and its log file in the CRI log format.
"""

import time
import zlib

CONTAINERD_BIN = "/usr/bin/containerd"
PACKAGE = "runtime.v1"
# gogo's RegisterFile bytes are gzip with no name, mtime 0, default flags.
_GOGO_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
_MAX_DESCRIPTOR = 1 << 20

# NamespaceMode of the CRI API: POD, CONTAINER, NODE, TARGET.
NS_POD, NS_CONTAINER, NS_NODE = 0, 1, 2
# ContainerState.
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3

_cache = {}


def available():
    """None when grpc, protobuf and containerd's embedded CRI API are usable, else why not."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        return "python3-grpcio / python3-protobuf are not installed (scripts/deps.sh): %s" % e
    try:
        descriptor()
    except (OSError, LookupError) as e:
        return str(e)
    return None


def descriptor(binary=CONTAINERD_BIN):
    """The FileDescriptorProto of the CRI API (package runtime.v1) embedded in BINARY, with its
    gogo.proto import removed. Raises LookupError when there is none."""
    key = ("fd", binary)
    if key in _cache:
        return _cache[key]
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError
    with open(binary, "rb") as f:
        data = f.read()
    at = 0
    while True:
        at = data.find(_GOGO_GZIP, at)
        if at < 0:
            raise LookupError("no %s API descriptor found in %s" % (PACKAGE, binary))
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                data[at:at + _MAX_DESCRIPTOR], _MAX_DESCRIPTOR)
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except (zlib.error, DecodeError):
            fd = None
        at += 1
        if fd is not None and fd.package == PACKAGE and any(
                s.name == "RuntimeService" for s in fd.service):
            del fd.dependency[:]
            _cache[key] = fd
            return fd


def _classes():
    """{message name: class} for every message of the API (built once per process)."""
    if "classes" in _cache:
        return _cache["classes"]
    from google.protobuf import descriptor_pool, message_factory
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor())
    fdesc = pool.FindFileByName(descriptor().name)
    classes = {}

    def cls_of(d):
        if hasattr(message_factory, "GetMessageClass"):
            return message_factory.GetMessageClass(d)
        return message_factory.MessageFactory(pool).GetPrototype(d)

    def walk(d, prefix):
        classes[prefix + d.name] = cls_of(d)
        for nested in d.nested_types:
            walk(nested, prefix + d.name + ".")

    for d in fdesc.message_types_by_name.values():
        walk(d, "")
    _cache["classes"] = (classes, fdesc)
    return _cache["classes"]


class Cri:
    """RuntimeService and ImageService of the CRI endpoint at unix socket ADDRESS."""

    def __init__(self, address, timeout=120):
        import grpc
        self.classes, self.fdesc = _classes()
        self.timeout = timeout
        self.channel = grpc.insecure_channel("unix://" + address)
        self._stubs = {}

    def close(self):
        self.channel.close()

    def msg(self, name, **fields):
        """A NAME message (e.g. "PodSandboxConfig") from FIELDS (ParseDict's form)."""
        from google.protobuf import json_format
        m = self.classes[name]()
        json_format.ParseDict(fields, m)
        return m

    def _stub(self, service, method):
        key = (service, method)
        if key not in self._stubs:
            sd = self.fdesc.services_by_name[service]
            md = sd.methods_by_name[method]
            req = self.classes[md.input_type.name]
            rep = self.classes[md.output_type.name]
            call = self.channel.unary_unary("/%s.%s/%s" % (PACKAGE, service, method),
                                            request_serializer=req.SerializeToString,
                                            response_deserializer=rep.FromString)
            self._stubs[key] = (req, call)
        return self._stubs[key]

    def _invoke(self, service, method, fields, timeout):
        from google.protobuf import json_format
        req_cls, call = self._stub(service, method)
        req = req_cls()
        json_format.ParseDict(fields, req)
        return call(req, timeout=timeout or self.timeout)

    def call(self, method, timeout=None, **fields):
        """RuntimeService.METHOD(FIELDS) -> reply."""
        return self._invoke("RuntimeService", method, fields, timeout)

    def image(self, method, timeout=None, **fields):
        """ImageService.METHOD(FIELDS) -> reply."""
        return self._invoke("ImageService", method, fields, timeout)

    # -- what kubelet would do -------------------------------------------------------

    def pull(self, ref, sandbox=None):
        """PullImage REF; returns the image id (sha256:... of its config)."""
        fields = {"image": {"image": ref}}
        if sandbox is not None:
            fields["sandbox_config"] = sandbox
        return self.image("PullImage", **fields).image_ref

    def run_pod(self, sandbox):
        return self.call("RunPodSandbox", config=sandbox).pod_sandbox_id

    def create(self, pod_id, config, sandbox):
        return self.call("CreateContainer", pod_sandbox_id=pod_id, config=config,
                         sandbox_config=sandbox).container_id

    def start(self, cid):
        self.call("StartContainer", container_id=cid)

    def status(self, cid):
        return self.call("ContainerStatus", container_id=cid).status

    def wait_exited(self, cid, timeout=60):
        """Polls ContainerStatus until CID exited; returns its status (exit_code, log_path...)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if st.state == CONTAINER_EXITED:
                return st
            if time.monotonic() > deadline:
                raise AssertionError("container %s not exited after %ss: %s" % (cid, timeout, st))
            time.sleep(0.1)

    def remove_pod(self, pod_id):
        """StopPodSandbox + RemovePodSandbox (which removes its containers too)."""
        self.call("StopPodSandbox", pod_sandbox_id=pod_id)
        self.call("RemovePodSandbox", pod_sandbox_id=pod_id)

    def pods(self):
        return list(self.call("ListPodSandbox").items)

    def containers(self):
        return list(self.call("ListContainers").containers)


def host_network_pod(name, log_dir, uid="uid-" + "0" * 8):
    """A PodSandboxConfig (as a dict) of a pod in the node's network namespace: no CNI."""
    return {
        "metadata": {"name": name, "uid": uid + name, "namespace": "default", "attempt": 0},
        # No hostname: a host-network pod shares the node's UTS namespace (runc refuses one).
        "log_directory": log_dir,
        "linux": {"security_context": {"namespace_options": {
            "network": NS_NODE, "pid": NS_CONTAINER, "ipc": NS_POD}}},
    }


def container_config(name, image, argv, log_path, run_as_user=None):
    """A ContainerConfig (as a dict): ARGV in IMAGE, its log at LOG_PATH (relative to the
    pod's log_directory), optionally as uid RUN_AS_USER."""
    c = {"metadata": {"name": name, "attempt": 0}, "image": {"image": image},
         "command": list(argv[:1]), "args": list(argv[1:]), "log_path": log_path,
         "linux": {"security_context": {}}}
    if run_as_user is not None:
        c["linux"]["security_context"]["run_as_user"] = {"value": run_as_user}
    return c


def read_log(path):
    """The bytes a container wrote to STREAM, from a CRI log file: each line is
    `<rfc3339nano> <stdout|stderr> <P|F> <content>`, P a partial line (no newline after it).
    Returns {"stdout": str, "stderr": str}."""
    out = {"stdout": [], "stderr": []}
    with open(path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").split("\n"):
            if not line:
                continue
            _ts, stream, tag, content = (line.split(" ", 3) + [""])[:4]
            out[stream].append(content if tag == "P" else content + "\n")
    return {k: "".join(v) for k, v in out.items()}
