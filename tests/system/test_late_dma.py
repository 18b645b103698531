"""No late DMA: I/O a killed driver left in flight cannot land in memory the
front end has handed out again. The hostile driver submits O_DIRECT reads
into the whole bounce area on the launcher's io_uring and dies; its device
is slowed down (a loop device with direct I/O over a file on a real disk,
the drivers' reads and writes throttled to 1 MiB/s by a blkio control
group), so those reads land seconds later. Reusing the bounce buffers at
once would let them overwrite the data of the writes replayed and made
afterwards (measured without the drain: 1-2 blocks misdirected in every
run); the launcher waits for them instead (src/domain/domain_uring.h)."""
import json
import os
import re
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BUILD, POLICIES, driver_children, need_tools, stop

HOSTILE = BUILD / "tests" / "drivers" / "hostile-driver"
POLICY = POLICIES / "hostile-uring.policy"
BLKIO = "/sys/fs/cgroup/blkio"
RATE = 1 << 20  # bytes per second, reads and writes


class SlowDisk:
    """A loop device with direct I/O over a file on a real block device, and
    a blkio group that throttles whoever is moved into it. Always undone."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="isolde-late-", dir="/var/tmp")
        self.backing = os.path.join(self.dir, "backing.img")
        with open(self.backing, "wb") as f:
            f.truncate(8 << 20)
        dev = os.stat(self.backing).st_dev
        self.disk = f"{os.major(dev)}:{os.minor(dev)}"
        if not os.path.exists(f"/sys/dev/block/{self.disk}"):
            pytest.fail(f"{self.dir} is not on a block device ({self.disk}) that blkio can throttle")
        self.loop = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", self.backing],
                                   capture_output=True, text=True, check=True).stdout.strip()
        self.group = os.path.join(BLKIO, f"isolde-late-{os.getpid()}")
        os.mkdir(self.group)
        for what in ("read", "write"):
            with open(os.path.join(self.group, f"blkio.throttle.{what}_bps_device"), "w") as f:
                f.write(f"{self.disk} {RATE}")

    def throttle(self, pid):
        try:
            with open(os.path.join(self.group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except (ProcessLookupError, OSError):
            pass

    def close(self):
        subprocess.run(["losetup", "-d", self.loop])
        for _ in range(200):
            try:
                os.rmdir(self.group)
                break
            except OSError:
                time.sleep(0.05)
        os.unlink(self.backing)
        os.rmdir(self.dir)


@pytest.fixture
def slow_disk():
    need_tools("losetup", packages="util-linux")
    if not os.path.isdir(BLKIO):
        pytest.fail(f"no blkio controller at {BLKIO}")
    d = SlowDisk()
    try:
        yield d
    finally:
        d.close()


def test_a_dead_drivers_reads_land_before_its_memory_is_reused(isolde, slow_disk):
    proc = isolde.start("verify", "--image", slow_disk.loop, "--force", "--direct", "--json",
                        "--driver", HOSTILE, "--policy", POLICY, "--driver-arg=--attack=late-dma",
                        "--driver-arg=--after=100", "--qd", 8, "--ops", 1000, "--notify", "event",
                        "--timeout-ms", 30000)
    done = threading.Event()

    def throttle_every_generation():
        while not done.is_set():
            for pid in driver_children(proc.pid):
                slow_disk.throttle(pid)
            time.sleep(0.003)

    mover = threading.Thread(target=throttle_every_generation, daemon=True)
    mover.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        done.set()
        mover.join(timeout=5)
        stop(proc)
    r = json.loads(out)
    assert "attack late-dma: submit reads into the data area: succeeded (8)" in err, err[-2000:]
    waited = re.search(r"waited (\d+) ms for (\d+) requests it left in flight on its io_uring", err)
    assert waited and int(waited.group(2)) >= 1, "the reads were in flight when the driver died:\n" + err[-2000:]
    assert proc.returncode == 0 and r["errors"] == 0 and r["mismatches"] == 0, err[-3000:]
    assert r["restarts_by_reason"]["panic"] == 1 and r["replayed"] > 0
