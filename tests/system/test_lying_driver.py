"""A driver that lies cannot crash the front end or make it accept wrong data.
Run against the normal and the ASan+UBSan builds."""
import pytest

from conftest import MODES

PROTOCOL_LIES = ["unknown-id", "dup-id", "stale-id", "oversize-length", "short-length",
                 "bad-status", "wrong-op", "prod-overflow"]
OPS = 400


def fault_verify(isolde, image, fault, after, mode, *extra):
    return isolde.verify(image, "--driver", isolde.build.fault_driver,
                         f"--driver-arg=--fault={fault}", f"--driver-arg=--after={after}",
                         "--ops", OPS, "--qd", 8, "--notify", mode, *extra, timeout=60)


# The lie comes during the write phase (request 100) or the read-back (OPS + 50).
@pytest.mark.parametrize("after", [100, OPS + 50], ids=["write-phase", "read-phase"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", PROTOCOL_LIES)
def test_protocol_lie_is_caught(any_isolde, image, fault, mode, after):
    p, r = fault_verify(any_isolde, image, fault, after, mode)
    assert p.returncode == 1, p.stderr
    assert r["protocol_violations"] == 1
    assert "violated the protocol" in r["error"]
    assert r["errors"] > 0, "requests pending at the lie must fail"
    assert r["mismatches"] == 0, "no wrong data accepted"


@pytest.mark.parametrize("fault,expect", [
    ("exit", "exited with status 3"),
    ("segfault", "SIGSEGV"),
    ("abort", "SIGABRT"),
])
def test_driver_crash_is_reported(any_isolde, image, fault, expect):
    p, r = fault_verify(any_isolde, image, fault, 100, "hybrid")
    assert p.returncode == 1
    assert expect in r["error"]
    assert r["errors"] > 0 and r["mismatches"] == 0
    assert r["protocol_violations"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_hung_driver_times_out(any_isolde, image, mode):
    p, r = fault_verify(any_isolde, image, "hang", 100, mode, "--timeout-ms", 300)
    assert p.returncode == 1
    assert "did not answer" in r["error"] and "300 ms" in r["error"]
    assert r["errors"] > 0 and r["mismatches"] == 0


def test_well_behaved_fault_driver_passes(any_isolde, image):
    """The test driver with no fault is a correct driver: the failures above
    come from the faults, not from the test driver itself."""
    p, r = fault_verify(any_isolde, image, "none", 1, "spin")
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0
