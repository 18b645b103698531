"""Durability: a failed flush is reported, never retried into success, and
stays reported (PROTOCOL.md §4.4), on a real failing disk: a loop device
over a file on a 1 MiB tmpfs, which takes 16 MiB of writes into its page
cache and fails them when they are written back."""
import os
import re
import subprocess
import tempfile
import time

import pytest

from conftest import FAULT_POLICY, MODES, need_tools
from nbd_helpers import Served, unix_uri

WRITES = 1536  # of 4 KiB: 6 MiB, six times what the disk can hold
FLUSH_EVERY = 384  # 1.5 MiB: already the first flush finds lost data


class FailingDisk:
    """A loop device whose write-back fails after its first MiB. Always
    detached and unmounted again, also when the test fails."""

    def __init__(self, tmpfs_size="1M", device_size=16 << 20):
        self.mnt = tempfile.mkdtemp(prefix="isolde-failing-")
        self.loop = None
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", self.mnt], check=True)
        backing = os.path.join(self.mnt, "backing")
        with open(backing, "wb") as f:
            f.truncate(device_size)
        self.loop = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True,
                                   check=True).stdout.strip()

    def close(self):
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop])
        # Detaching finishes asynchronously: until it has, the mount is busy.
        for _ in range(100):
            if subprocess.run(["umount", self.mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            subprocess.run(["umount", "--lazy", self.mnt])
        os.rmdir(self.mnt)


@pytest.fixture
def failing_disk():
    need_tools("losetup", packages="util-linux")
    d = FailingDisk()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def healthy_disk():
    """The same, with room for everything: the control that shows the
    failing disk is what fails the flush."""
    d = FailingDisk(tmpfs_size="32M")
    try:
        yield d
    finally:
        d.close()


def flush_verify(isolde, disk, *extra):
    return isolde.verify(disk.loop, "--force", "--ops", WRITES, "--qd", 8, "--flush-every", FLUSH_EVERY, *extra)


@pytest.mark.parametrize("driver", ["blk-file", "blk-uring"])
@pytest.mark.parametrize("mode", MODES)
def test_failed_flush_is_reported_and_sticks(any_isolde, failing_disk, driver, mode):
    p, r = flush_verify(any_isolde, failing_disk, "--driver", driver, "--notify", mode)
    assert p.returncode == 1
    assert r["flushes"] == 4 and r["flush_failures"] == 4, "every flush after the first failure fails too"
    # The data the failed write-back lost reads back as whatever the disk
    # holds: mismatches are the truth here, not a fault of isolde's.
    assert r["flush_error"] == -5
    assert r["restarts"] == 0, "a flush error is final: no driver was asked to doubt it"
    assert "a flush failed (Input/output error)" in p.stderr
    assert "every later flush reports this error" in p.stderr


def test_the_same_workload_flushes_on_a_healthy_disk(isolde, healthy_disk):
    p, r = flush_verify(isolde, healthy_disk)
    assert p.returncode == 0, p.stderr
    assert r["flushes"] == 4 and r["flush_failures"] == 0 and r["flush_error"] == 0
    assert r["errors"] == 0 and r["mismatches"] == 0


def test_a_flush_replayed_after_the_driver_saw_the_error_still_fails(any_isolde, failing_disk):
    """The first driver syncs, takes the write-back error and dies unanswered.
    Its successor's file description never saw the error, so its fdatasync
    succeeds; the front end confirms on its own description and fails the
    flush."""
    p, r = any_isolde.verify(failing_disk.loop, "--force", "--ops", WRITES, "--qd", 8,
                             "--driver", any_isolde.build.fault_driver, "--policy", FAULT_POLICY,
                             "--driver-arg=--fault=flush-and-die")
    assert re.search(r"flush-and-die: fdatasync said Input/output error", p.stderr), p.stderr
    assert r["restarts_by_reason"]["panic"] == 1 and r["replayed"] >= 1
    assert p.returncode == 1 and r["flush_failures"] == 1 and r["flush_error"] == -5, p.stderr
    assert "flush 1 failed: Input/output error" in p.stderr


@pytest.fixture
def served_failing(isolde, failing_disk):
    srv = Served(isolde, failing_disk.loop, "--notify", "event").wait_ready()
    try:
        yield srv
    finally:
        srv.close()


def qemu_io(uri, *commands):
    """qemu-io, writing back (its default, writethrough, puts FUA on every
    write); it exits 1 when a command failed."""
    args = ["qemu-io", "-f", "raw", "-t", "writeback"]
    for c in commands:
        args += ["-c", c]
    return subprocess.run(args + [uri], capture_output=True, text=True, timeout=120)


def test_nbd_flush_from_a_real_client_reports_the_error_every_time(served_failing):
    """qemu-io over the NBD export: the write is accepted into the page cache,
    the flush reports the write-back error, and so does every flush after it
    (on a new connection too)."""
    need_tools("qemu-io", packages="qemu-utils")
    uri = unix_uri(served_failing.sock)
    p = qemu_io(uri, "write -P 0xab 0 4M")
    assert p.returncode == 0 and "wrote 4194304/4194304 bytes" in p.stdout, p.stdout + p.stderr
    p = qemu_io(uri, "flush")
    assert p.returncode == 1, "the flush must fail:\n" + p.stdout + p.stderr
    p = qemu_io(uri, "flush")
    assert p.returncode == 1, "a later flush must report the error too:\n" + p.stdout + p.stderr
    assert served_failing.status()["restarts"] == 0
    assert "a flush failed (Input/output error)" in served_failing.stderr


def test_nbd_flush_on_a_healthy_disk_succeeds(isolde, healthy_disk):
    need_tools("qemu-io", packages="qemu-utils")
    srv = Served(isolde, healthy_disk.loop, "--notify", "event").wait_ready()
    try:
        p = qemu_io(unix_uri(srv.sock), "write -P 0xab 0 4M", "flush")
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        srv.close()


def test_nbd_fua_write_failure_is_reported(served_failing):
    need_tools("qemu-io", packages="qemu-utils")
    uri = unix_uri(served_failing.sock)
    p = qemu_io(uri, "write -f -P 0xcd 0 4M")
    assert p.returncode == 1 and "write failed: Input/output error" in p.stdout, p.stdout + p.stderr
    p = qemu_io(uri, "flush")
    assert p.returncode == 1, "the FUA write's error sticks to later flushes:\n" + p.stdout + p.stderr
