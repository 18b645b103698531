"""The real blk-file driver killed again and again, crash loops, and the
restart budget."""
import json
import os
import signal
import time

import pytest

from conftest import MODES, POLICIES, assert_storm_was_invisible, read_driver_pid, sigkill_storm, stop


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_storm_is_invisible(isolde, image, mode):
    """SIGKILL the blk-file driver every few milliseconds for three seconds
    during a verified workload: no error, no mismatch, restarts counted."""
    proc = isolde.start("verify", "--image", image, "--ops", 150000, "--qd", 32, "--notify", mode,
                        "--json")
    try:
        read_driver_pid(proc)
        kills = sigkill_storm(proc, 3)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert_storm_was_invisible(proc.returncode, out, err, kills)


@pytest.mark.parametrize("mode", MODES)
def test_single_sigkill_mid_run(isolde, image, mode):
    proc = isolde.start("verify", "--image", image, "--ops", 60000, "--qd", 32, "--notify", mode,
                        "--json")
    try:
        pid = read_driver_pid(proc)
        time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err
    r = json.loads(out)
    assert r["restarts"] == 1 and r["restarts_by_reason"]["killed"] == 1
    assert r["driver_pid"] == pid, "driver_pid is the first driver's"
    assert r["errors"] == 0 and r["mismatches"] == 0
    assert f"(pid {pid}) was killed by signal 9 (SIGKILL)" in err


@pytest.mark.parametrize("mode", MODES)
def test_crash_loop_fails_io_cleanly_and_quickly(isolde, image, mode):
    """A driver that dies on its first request every time: after the policy's
    crash-loop limit (5) the device fails every request with a clear error,
    within a bounded time (backoff 0+1+2+4+8 ms plus five starts)."""
    start = time.monotonic()
    p, r = isolde.fault_verify(image, "exit", 1, "--ops", 100, "--qd", 4, "--notify", mode,
                               policy=POLICIES / "crash-loop.policy", timeout=60)
    elapsed = time.monotonic() - start
    assert p.returncode == 1
    assert r["errors"] > 0 and r["mismatches"] == 0
    assert "completed fewer than" in r["error"] and "crash-loop" in r["error"]
    assert r["restarts"] == 5
    assert elapsed < 20, f"giving up took {elapsed:.1f} s"


def test_restart_budget_is_enforced(isolde, image):
    """A driver that keeps failing after doing some work: the sixth failure
    within the window exceeds 'restart 5 per 60s' and I/O fails with EIO."""
    p, r = isolde.fault_verify(image, "segfault", 50, "--ops", 2000, "--qd", 4,
                               policy=POLICIES / "small-budget.policy")
    assert p.returncode == 1
    assert r["restarts"] == 5
    assert "restart budget of 5 per 60 s" in r["error"]
    assert r["errors"] > 0 and r["mismatches"] == 0


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
