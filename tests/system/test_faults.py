"""Self-repair: for every fault point of the test driver, a verified workload
at queue depth 1 and 32 in every notify mode completes with zero errors and
zero mismatches, and the failure is classified correctly."""
import pytest

from conftest import MODES

OPS = 600
AFTER = 150  # the fault strikes at this request of every driver generation

# fault -> (failure class, extra verify arguments)
FAULTS = {
    "exit": ("panic", []),
    "abort": ("panic", []),
    "segfault": ("mmu-exception", []),
    "grant-write": ("mmu-exception", []),
    "sigill": ("cpu-exception", []),
    "sigfpe": ("cpu-exception", []),
    "syscall-kill": ("policy-kill", []),
    "grow-image": ("policy-kill", []),
    "hang": ("hang", ["--timeout-ms", "150"]),
    "spin-hang": ("hang", ["--timeout-ms", "150"]),
    "slow": ("hang", ["--timeout-ms", "100", "--driver-arg=--delay-ms=400"]),
    "wild-write": ("protocol-violation", []),
    "leak": ("panic", []),
    "unknown-id": ("protocol-violation", []),
    "dup-id": ("protocol-violation", []),
    "stale-id": ("protocol-violation", []),
    "oversize-length": ("protocol-violation", []),
    "short-length": ("protocol-violation", []),
    "bad-status": ("protocol-violation", []),
    "wrong-op": ("protocol-violation", []),
    "prod-overflow": ("protocol-violation", []),
    "lie-invalid": ("protocol-violation", []),
    "lie-ioerr": ("error-status", []),
}


@pytest.mark.parametrize("qd", [1, 32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_recovered_transparently(isolde, image, fault, mode, qd):
    expected, extra = FAULTS[fault]
    ops = 2 * OPS if fault == "leak" else OPS  # the leak needs ~64 requests per generation to bite
    p, r = isolde.fault_verify(image, fault, AFTER, "--ops", ops, "--qd", qd, "--notify", mode, *extra)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0, p.stderr
    assert r["mismatches"] == 0
    assert r["error"] is None
    assert r["restarts"] >= 1, "the fault must have struck"
    by = {k: v for k, v in r["restarts_by_reason"].items() if v}
    assert by == {expected: r["restarts"]}, f"classified as {by}, expected {expected}"
    assert r["generation"] == r["restarts"] + 1
    assert f"failed ({expected}:" in p.stderr, "every restart is logged with its reason"


@pytest.mark.parametrize("mode", MODES)
def test_replay_counts_requests_in_flight(isolde, image, mode):
    """At queue depth 32, a crash leaves requests in flight; all are replayed."""
    p, r = isolde.fault_verify(image, "segfault", 200, "--ops", 1000, "--qd", 32, "--notify", mode)
    assert p.returncode == 0, p.stderr
    assert r["replayed"] >= r["restarts"], "every restart replayed the request that crashed it"
    assert r["recovery_us"]["count"] >= 1 and r["recovery_us"]["p50"] > 0


def test_slow_but_not_hung_driver_is_left_alone(isolde, image):
    """A slow answer within the heartbeat is not a failure."""
    p, r = isolde.fault_verify(image, "slow", 100, "--ops", 300, "--driver-arg=--delay-ms=50")
    assert p.returncode == 0, p.stderr
    assert r["restarts"] == 0 and r["errors"] == 0 and r["mismatches"] == 0


@pytest.mark.parametrize("fault", ["unknown-id", "dup-id", "prod-overflow", "segfault", "hang"])
def test_lying_or_dying_driver_under_asan(any_isolde, image, fault):
    """The front end built with ASan+UBSan stays clean while the driver lies,
    crashes or hangs (conftest fails the test on any sanitizer report)."""
    p, r = any_isolde.fault_verify(image, fault, 100, "--ops", 400, "--qd", 8, "--timeout-ms", "150")
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["restarts"] >= 1
