"""The driver runs in its own process with only the fds it was given, and
killing it makes the front end fail pending I/O promptly - never hang or
crash."""
import json
import os
import signal
import time

import pytest

from conftest import MODES, read_driver_pid, stop, assert_no_sanitizer_report


def test_driver_is_a_separate_process_with_only_its_fds(isolde, image):
    proc = isolde.start("verify", "--image", image, "--ops", 10**9, "--notify", "event", "--qd", 4)
    try:
        pid = read_driver_pid(proc)
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert int(status["PPid"]) == proc.pid, "the driver is a child of the front end"
        assert os.readlink(f"/proc/{pid}/exe").endswith("/blk-file")
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, 3, 4, 5, 6], f"driver holds fds {fds}"
        targets = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        assert targets[0] == targets[1] == "/dev/null"
        assert "memfd:isolde-domain" in targets[3]
        assert "eventfd" in targets[4] and "eventfd" in targets[5]
        assert targets[6] == str(image)
        # Its own process group: a terminal's Ctrl-C reaches the front end only.
        assert os.getpgid(pid) == pid
    finally:
        stop(proc)


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_fails_pending_io_within_a_second(isolde, image, mode):
    proc = isolde.start("verify", "--image", image, "--ops", 10**9, "--notify", mode, "--qd", 32,
                        "--json")
    try:
        pid = read_driver_pid(proc)
        time.sleep(0.3)  # let I/O get going
        assert proc.poll() is None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=30)
        # The front end noticed, failed everything in flight and finished.
        elapsed = time.monotonic() - killed
    finally:
        stop(proc)
    assert elapsed < 1.0, f"front end took {elapsed:.2f} s to fail pending I/O"
    assert proc.returncode == 1, err
    assert_no_sanitizer_report(err)
    r = json.loads(out)
    assert r["errors"] > 0
    assert r["mismatches"] == 0
    assert "SIGKILL" in r["error"] and str(pid) in r["error"]
    assert "SIGKILL" in err


def test_front_end_death_takes_the_driver_with_it(isolde, image):
    """A driver never outlives its front end (PR_SET_PDEATHSIG)."""
    proc = isolde.start("verify", "--image", image, "--ops", 10**9, "--notify", "spin", "--qd", 4)
    try:
        pid = read_driver_pid(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/status") as f:
                    if "State:\tZ" in f.read():
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"driver {pid} still runs after its front end died")
    finally:
        stop(proc)
