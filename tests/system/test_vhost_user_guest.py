"""The vhost-user-blk export (`isolde serve --export vhost-user-blk:SOCK`)
with a real QEMU guest (tests/guest/init, workload "fs"): Linux under TCG
makes an ext4 file system on the disk and writes 36 files of random data
(7 bytes to 4 MiB, 26 MiB), while a second writer keeps O_DIRECT overwrites
of 8 more files in flight; then e2fsck must find the file system clean, every
checksum must match after a remount, and the guest kernel must have logged no
I/O error.

The same guest first runs against qemu-storage-daemon, the known-good back
end, to prove the test itself; then against isolde (normal and ASan builds);
then against isolde while the host SIGKILLs its driver domain every 0.5-1 s of
the guest's I/O, in each notify mode, which the guest must not notice. Every
process, socket and image is removed whether a test passes or not.
"""
import os
import subprocess

import pytest

from conftest import MODES, assert_no_sanitizer_report
from guest_helpers import (BOOT_TIMEOUT, MiB, DriverKiller, StorageDaemon, VhostServed, boot_guest, guest_files,
                           need_tools, private_dir, sparse_image)

IMAGE_SIZE = 512 * MiB


@pytest.fixture(scope="module", autouse=True)
def guest():
    """QEMU is there and the guest is built (the first time, a minute)."""
    need_tools("qemu-system-x86_64", "qemu-storage-daemon")
    return guest_files()


@pytest.fixture
def disk(tmp_path):
    path = sparse_image(tmp_path / "disk.img", IMAGE_SIZE)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def sockdir():
    with private_dir() as d:
        yield d


def assert_host_fsck_clean(image):
    """What the guest wrote is in the image itself, and consistent."""
    p = subprocess.run(["e2fsck", "-f", "-n", str(image)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"e2fsck on the host exited {p.returncode}:\n{p.stdout}\n{p.stderr}"


def stop_cleanly(srv):
    """SIGTERM ends isolde serve with 0, removes its socket, and no sanitizer spoke."""
    rc = srv.terminate()
    assert rc == 0, f"isolde serve exited {rc}:\n{srv.stderr}"
    assert not os.path.exists(srv.sock), "isolde serve left its vhost-user socket behind"
    assert_no_sanitizer_report(srv.stderr)


def test_guest_fs_on_qemu_storage_daemon(disk, sockdir):
    """The known-good back end: if this fails, the test or the guest is wrong, not isolde."""
    sock = os.path.join(sockdir, "vu.sock")
    with StorageDaemon(disk, sock), boot_guest(sock, "fs") as g:
        g.assert_pass()
    assert_host_fsck_clean(disk)


def test_guest_fs_on_isolde(any_isolde, disk, sockdir):
    sock, control = os.path.join(sockdir, "vu.sock"), os.path.join(sockdir, "control.sock")
    with VhostServed(any_isolde, disk, sock, control) as srv:
        with boot_guest(sock, "fs") as g:
            g.assert_pass()
        st = srv.status()
        assert st["io"]["errors"] == 0 and st["error"] is None, st
        assert st["io"]["requests"] > 0, st
        assert st["restarts"] == 0, st
        stop_cleanly(srv)
    assert_host_fsck_clean(disk)


@pytest.mark.parametrize("mode", MODES)
def test_guest_fs_on_isolde_while_driver_killed(isolde, mode, disk, sockdir):
    """SIGKILL the driver domain every 0.5-1 s from the first file written to
    the guest's verdict: each restart replays what was in flight, and the
    guest sees no error, no lost or torn write, a clean fsck."""
    sock, control = os.path.join(sockdir, "vu.sock"), os.path.join(sockdir, "control.sock")
    with VhostServed(isolde, disk, sock, control, "--notify", mode) as srv:
        with boot_guest(sock, "fs") as g:
            g.wait_for("ISOLDE-GUEST: writing", 2 * BOOT_TIMEOUT)
            with DriverKiller(srv.pid, interval=(0.5, 1.0), seed=MODES.index(mode)) as killer:
                verdict = g.result()
            assert verdict == "PASS", f"guest: {verdict} after {killer.kills} kills at " \
                                      f"{[round(t, 1) for t in killer.times]} s; console:\n{g.console}"
            g.assert_pass()
        assert killer.kills >= 3, f"only {killer.kills} kills landed during the guest's I/O"
        assert srv.proc.poll() is None, f"isolde serve died:\n{srv.stderr}"
        st = srv.status()
        assert st["restarts"] >= killer.kills, (killer.kills, st)
        assert st["restarts_by_reason"]["killed"] >= killer.kills, (killer.kills, st)
        assert st["state"] == "running" and st["error"] is None, st
        assert st["io"]["errors"] == 0, st
        # The guest's second writer keeps O_DIRECT writes in flight: some
        # kills found requests to replay.
        assert st["replayed"] > 0, st
        stop_cleanly(srv)
    assert_host_fsck_clean(disk)
