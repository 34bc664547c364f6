"""State-directory faults (issue 13): two daemons on one --state-dir, a read-only state dir, a
corrupt index.db, store files the index does not know. Real daemons, real mounts, a real
registry."""

import errno
import glob
import os
import sqlite3
import subprocess
import time

import pytest

import harness
from harness import MiB, KiB

pytestmark = pytest.mark.root


def wait_exit(d, timeout=20):
    """The daemon must exit by itself (it refused to start); returns its exit status."""
    try:
        return d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("p2pblobsd kept running although it should have refused to start; log:\n"
                    + d.log_text()[-3000:])
    finally:
        d.expected_exit = True


def store_dir(d):
    return os.path.join(d.state_dir, "chunks", "sha256")


def warm(d, blob):
    d.add(blob.ref)
    assert harness.read_file(d.blob_path(blob.digest)) == blob.data
    harness.wait_until(lambda: {b["digest"]: b for b in d.ls()}[blob.digest]["verified"], 30,
                       what="verified")


@pytest.mark.expect_log(r"state directory is in use by another p2pblobsd")
def test_second_daemon_on_one_state_dir_refuses(registry, blobs, daemon_factory, tmp_path):
    b8 = blobs["b8"]
    d1 = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d1, b8)
    d2 = daemon_factory(registries=[registry], state_dir=d1.state_dir, start=False,
                        extra_args=["--cache-budget", "64M"])
    d2.start(wait=False)
    rc = wait_exit(d2)
    assert rc != 0
    lines = d2.log_lines(r"state directory is in use by another p2pblobsd")
    assert lines and ("pid=%d" % d1.proc.pid) in lines[0], d2.log_text()[-2000:]
    assert not harness.is_mounted(d2.mountpoint)
    with open(os.path.join(d1.state_dir, "lock")) as f:
        assert f.read().strip() == str(d1.proc.pid)
    # The first one is untouched and still serves from its cache.
    harness.drop_caches([d1.blob_path(b8.digest)])
    assert harness.read_file(d1.blob_path(b8.digest)) == b8.data
    # Once it is gone — even by kill -9, which leaves no chance to clean up — the lock is free.
    d1.kill9()
    harness.force_unmount(d1.mountpoint)
    d2.start()
    assert harness.read_file(d2.blob_path(b8.digest)) == b8.data
    with open(os.path.join(d2.state_dir, "lock")) as f:
        assert f.read().strip() == str(d2.proc.pid)


def _ro_bind(path):
    subprocess.run(["mount", "--bind", path, path], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)


@pytest.mark.expect_log(r"state directory is not writable")
def test_read_only_state_dir_refuses_to_start(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    d.stop()
    _ro_bind(d.state_dir)
    try:
        d.start(wait=False)
        rc = wait_exit(d)
        assert rc != 0
        assert d.log_lines(r"state directory is not writable.*(read-only|Read-only)"), \
            d.log_text()[-2000:]
        assert not harness.is_mounted(d.mountpoint)
    finally:
        d.cleanup()  # a daemon that did start holds files there: umount would be EBUSY
        subprocess.run(["umount", d.state_dir], check=False)
        if harness.is_mounted(d.state_dir):
            subprocess.run(["umount", "-l", d.state_dir], check=False)
    # Writable again, it starts and serves its warm cache.
    d.start()
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data


@pytest.mark.expect_log(r"index is corrupt", r"index error", r"cannot open index")
@pytest.mark.parametrize("damage", ["not_a_database", "malformed"])
def test_corrupt_index_is_moved_aside(registry, blobs, daemon_factory, damage):
    b8, b3 = blobs["b8"], blobs["b3"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    warm(d, b3)
    d.stop()
    db = os.path.join(d.state_dir, "index.db")
    assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0
    if damage == "not_a_database":
        with open(db, "r+b") as f:
            f.write(os.urandom(4096))
    else:
        # Garbage over a page in the middle of a real database: the header still says SQLite.
        page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
        size = os.path.getsize(db)
        assert size >= 3 * page, "index too small to damage a middle page"
        with open(db, "r+b") as f:
            f.seek((size // page // 2) * page)
            f.write(os.urandom(page))
    before = time.time()
    d.start()   # starts, cold
    aside = glob.glob(db + ".corrupt-*")
    assert [p for p in aside if not p.endswith(("-wal", "-shm"))], os.listdir(d.state_dir)
    t = int([p for p in aside if not p.endswith(("-wal", "-shm"))][0].rsplit("-", 1)[1])
    assert before - 5 <= t <= time.time() + 5
    assert d.log_lines(r"index is corrupt", levels=("error",))
    # The old store files were reclaimed (the new index knows none of them) ...
    assert harness.allocated_bytes(store_dir(d)) <= 64 * KiB
    # ... and the node serves: the blobs are added again and read, from the origin.
    o = d.stat()["fetched"]["origin_bytes"]
    warm(d, b8)
    assert d.stat()["fetched"]["origin_bytes"] >= o + b8.size
    # The new index is a real one: a restart keeps the warm cache.
    d.restart()
    o = d.stat()["fetched"]["origin_bytes"]
    harness.drop_caches([d.blob_path(b8.digest)])
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    assert d.stat()["fetched"]["origin_bytes"] == o


def test_orphan_store_files_are_reclaimed(registry, blobs, daemon_factory):
    b8 = blobs["b8"]
    d = daemon_factory(registries=[registry], extra_args=["--cache-budget", "64M"])
    warm(d, b8)
    d.stop()
    # A blob file the index does not know (as after a lost WAL): 64 MiB of real data.
    orphan = os.path.join(store_dir(d), "ab" * 32)
    with open(orphan, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    # A checksum file whose blob file is gone.
    lone = os.path.join(d.state_dir, "chunks", "crc32c", "cd" * 32)
    with open(lone, "wb") as f:
        f.write(b"\x01" * 4096)
    # A file that is not ours to judge stays.
    other = os.path.join(store_dir(d), "README")
    with open(other, "w") as f:
        f.write("operator's note\n")
    d.start()
    assert not os.path.exists(orphan) and not os.path.exists(lone)
    assert os.path.exists(other)
    assert d.log_lines(r"reclaimed store files.*files=2")
    alloc = d.stat()["cache"]["store_allocated_bytes"]
    assert alloc <= b8.size + 256 * KiB, alloc
    # The known blob stayed warm.
    o = d.stat()["fetched"]["origin_bytes"]
    harness.drop_caches([d.blob_path(b8.digest)])
    assert harness.read_file(d.blob_path(b8.digest)) == b8.data
    assert d.stat()["fetched"]["origin_bytes"] == o
