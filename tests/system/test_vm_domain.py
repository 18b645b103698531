"""VM driver domains (src/domain/vm.h): the unmodified static driver on its own
Linux kernel in a sandboxed QEMU (TCG), serving the ring through ivshmem and
virtio-serial doorbells. The verified workload in every notify mode, QEMU
killed under load (the warm standby takes over), the guest kernel panicked
and hung under load, hostile guests, the QEMU sandbox seen from /proc, an
export served from a VM domain to a real client, and bad input.

Workloads are sized for TCG: a VM boots in 3-5 s here, so each test starts
few of them."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import (BUILD, DRIVER_UID_BASE, FAULT_POLICY, MODES, ROOT, assert_no_sanitizer_report,
                      need_tools, proc_status, sanitizer_env, stop)

GUEST_DIR = BUILD / "vm-guest"
SCALE = float(os.environ.get("ISOLDE_GUEST_TIMEOUT_SCALE", "1"))
RUN_TIMEOUT = 240 * SCALE


@pytest.fixture(scope="module", autouse=True)
def vm_guest():
    need_tools("qemu-system-x86_64", packages="qemu-system-x86")
    if not (GUEST_DIR / "vmlinux").exists():
        pytest.fail(f"{GUEST_DIR} has no guest: `make build` runs scripts/build-vm-guest.sh")
    # The ASan build's isolde looks for its own build tree's guest: both use this one.
    os.environ["ISOLDE_VM_GUEST_DIR"] = str(GUEST_DIR)
    yield
    os.environ.pop("ISOLDE_VM_GUEST_DIR", None)


@pytest.fixture
def vm_image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    return path


def vm_verify(isolde, image, *args, timeout=RUN_TIMEOUT):
    return isolde.verify(image, "--domain", "vm", *args, timeout=timeout)


def assert_clean(p, r):
    assert p.returncode == 0, p.stderr[-4000:]
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None, p.stderr[-4000:]
    assert r["sandbox"]["vm"] is True


# ---- the verified workload ----

@pytest.mark.parametrize("mode", MODES)
def test_verify_in_every_notify_mode(isolde, vm_image, mode):
    p, r = vm_verify(isolde, vm_image, "--notify", mode, "--qd", 16, "--ops", 3000)
    assert_clean(p, r)
    assert r["writes"] == 3000 and r["reads"] > 0 and r["notify"] == mode
    assert r["restarts"] == 0 and r["protocol_violations"] == 0
    # The driver's own log came through the guest's console.
    assert "isolde-vm-agent: starting driver" in p.stderr


def test_zero_copy_and_large_blocks(isolde, vm_image):
    p, r = vm_verify(isolde, vm_image, "--notify", "hybrid", "--qd", 8, "--ops", 600, "--bs", "256k",
                     "--zero-copy")
    assert_clean(p, r)
    assert r["restarts"] == 0


def test_front_end_under_asan(any_isolde, vm_image):
    p, r = vm_verify(any_isolde, vm_image, "--notify", "event", "--qd", 8, "--ops", 1500)
    assert_clean(p, r)
    assert_no_sanitizer_report(p.stderr)


def test_image_written_through_the_vm_is_the_host_file(isolde, tmp_path):
    """What the guest driver wrote is in the host's file, byte for byte:
    written through isolde in a VM domain, read back in a process domain and
    directly."""
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    p, r = vm_verify(isolde, img, "--ops", 1000, "--qd", 4, "--seed", 7)
    assert_clean(p, r)
    data = img.read_bytes()
    assert data.count(b"\0") < len(data), "nothing reached the host's file"
    p2 = isolde.run("verify", "--image", img, "--json", "--ops", 1000, "--qd", 4, "--seed", 7, timeout=120)
    assert p2.returncode == 0, p2.stderr


# ---- supervision: QEMU killed, the guest kernel panicked or hung ----

class ActiveDriver:
    """Follows isolde verify's stderr: which QEMU serves now."""

    def __init__(self, proc):
        self.proc = proc
        self.pid = None
        self.lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r" is pid (\d+)", line) or re.search(r"generation \d+ \(pid (\d+)\) recovered", line)
            if m:
                self.pid = int(m.group(1))

    def text(self):
        return "".join(self.lines)


def test_qemu_killed_under_load_is_invisible(isolde, vm_image):
    """SIGKILL the serving QEMU three times under verified I/O: every write
    answered before the kill is on the host's disk (the guest opens its disk
    O_DIRECT), the replay covers the rest, and the warm standby takes over."""
    proc = isolde.start("verify", "--image", vm_image, "--domain", "vm", "--notify", "hybrid", "--qd", 16,
                        "--ops", 10_000_000, "--json")
    try:
        active = ActiveDriver(proc)
        killed = []
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(killed) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            pid = active.pid
            if pid and pid not in killed:
                # Long enough for the standby to boot, under TCG.
                time.sleep(6 * SCALE)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        assert len(killed) == 3, active.text()[-4000:]
        # Let the last replay finish, then stop the workload cleanly.
        while active.pid in killed and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait(timeout=60)
        active.thread.join(timeout=10)
    finally:
        stop(proc)
    err = active.text()
    r = json.loads(out)
    assert r["errors"] == 0 and r["mismatches"] == 0, err[-4000:]
    assert r["restarts_by_reason"]["killed"] == 3 and r["restarts"] == 3, err[-4000:]
    assert r["replayed"] > 0
    assert err.count("the warm standby (QEMU pid") >= 1, err[-4000:]


def fault_vm_verify(isolde, image, fault, after, *extra):
    return isolde.verify(image, "--domain", "vm", "--driver", isolde.build.fault_driver, "--policy",
                         FAULT_POLICY, f"--driver-arg=--fault={fault}", f"--driver-arg=--after={after}",
                         *extra, timeout=RUN_TIMEOUT)


def test_guest_kernel_panic_under_load_is_contained(isolde, vm_image):
    """The driver crashes the guest's kernel (sysrq c) under verified I/O:
    pvpanic ends QEMU, QMP says GUEST_PANICKED, the class is kernel-panic,
    the standby or a new VM replays, and the workload sees nothing."""
    p, r = fault_vm_verify(isolde, vm_image, "kernel-panic", 2500, "--qd", 16, "--ops", 4000)
    assert_clean(p, r)
    assert r["restarts_by_reason"]["kernel-panic"] >= 1, p.stderr[-4000:]
    assert "the guest kernel panicked" in p.stderr
    assert r["replayed"] > 0


def test_guest_kernel_hang_is_detected_and_contained(isolde, vm_image):
    """The driver hangs the guest's kernel (an unthrottled SCHED_FIFO spin on
    its one CPU): the heartbeat in the shared header stops, the front end
    kills QEMU and replays."""
    p, r = fault_vm_verify(isolde, vm_image, "kernel-hang", 2500, "--qd", 8, "--ops", 4000,
                           "--timeout-ms", 1500)
    assert_clean(p, r)
    assert r["restarts_by_reason"]["hang"] >= 1, p.stderr[-4000:]


@pytest.mark.parametrize("fault,reason", [
    ("segfault", "mmu-exception"),      # the agent reports the driver's signal through QEMU's exit
    ("wild-write", None),               # scribbles over the header, ring and data: rejected or hung
    ("unknown-id", "protocol-violation"),
    ("hang", "hang"),                   # stops its heartbeat
])
def test_hostile_guest_driver_is_contained(isolde, vm_image, fault, reason):
    p, r = fault_vm_verify(isolde, vm_image, fault, 1500, "--qd", 8, "--ops", 2500, "--timeout-ms", 1500)
    assert_clean(p, r)
    assert r["restarts"] >= 1, p.stderr[-4000:]
    if reason:
        assert r["restarts_by_reason"][reason] >= 1, r["restarts_by_reason"]
    else:
        assert r["restarts_by_reason"]["protocol-violation"] + r["restarts_by_reason"]["hang"] >= 1


def test_doorbell_flood_is_absorbed(isolde, vm_image):
    """A guest driver that rings the front end 512 times per response: the
    front end drains a bounded amount per pass and the workload completes
    without a restart."""
    p, r = fault_vm_verify(isolde, vm_image, "flood-calls", 200, "--notify", "event", "--qd", 8,
                           "--ops", 1500)
    assert_clean(p, r)
    assert r["restarts"] == 0


# ---- the QEMU sandbox, from /proc ----

def test_qemu_runs_in_its_sandbox(isolde, vm_image):
    proc = isolde.start("verify", "--image", vm_image, "--domain", "vm", "--notify", "event", "--qd", 4,
                        "--ops", 10_000_000, "--json")
    try:
        active = ActiveDriver(proc)
        deadline = time.monotonic() + RUN_TIMEOUT
        while active.pid is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        pid = active.pid
        assert pid, active.text()[-3000:]
        with open(f"/proc/{pid}/comm") as f:
            assert f.read().startswith("qemu-system")
        st = proc_status(pid)
        own = str(DRIVER_UID_BASE + pid)
        assert st["Uid"].split() == [own] * 4 and st["Gid"].split() == [own] * 4
        assert st["Groups"].strip() == ""
        assert st["CapEff"] == st["CapPrm"] == "0000000000000000"
        assert st["NoNewPrivs"].strip() == "1"
        assert st["Seccomp"].strip() == "2", "QEMU's -sandbox is not on"
        for ns in ("net", "mnt", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        # No network but loopback, which is down.
        with open(f"/proc/{pid}/net/dev") as f:
            ifaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        assert ifaces == ["lo"]
        # Every mount it sees is read-only.
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                opts = line.split()[5].split(",")
                assert "ro" in opts, line
        # It holds the generation's fds and nothing of the front end's.
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        # (QEMU moves -add-fd's fd to one of its own.)
        assert any(str(vm_image) in t for t in fds.values()), fds
        assert "isolde-domain" in fds[3]
        front_fds = {os.readlink(f"/proc/{proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{proc.pid}/fd")}
        pipes = {t for t in front_fds if t.startswith("pipe:")}
        assert not pipes & set(fds.values()), "QEMU holds a pipe of the front end's"
        limits = open(f"/proc/{pid}/limits").read()
        assert re.search(r"Max core file size\s+0\s+0", limits)
    finally:
        stop(proc)


def test_unprivileged_vm_domain(isolde):
    """Without root, QEMU runs in a user namespace of its own (65534 inside,
    the user outside), and the workload is as clean."""
    nobody = 65534
    d = Path(tempfile.mkdtemp(prefix="isolde-vm-nobody-"))
    try:
        _unprivileged_vm_run(isolde, d, nobody)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _unprivileged_vm_run(isolde, d, nobody):
    img = d / "disk.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    os.chown(d, nobody, nobody)
    os.chown(img, nobody, nobody)
    p = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                        str(isolde.build.isolde), "verify", "--image", str(img), "--domain", "vm",
                        "--ops", "500", "--qd", "4", "--json"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, env=sanitizer_env())
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["errors"] == 0 and r["mismatches"] == 0
    assert r["sandbox"]["vm"] is True and r["sandbox"]["user_namespace"] is True
    assert r["sandbox"]["own_uid"] is False


# ---- an export from a VM domain, read by a client nobody here wrote ----

def test_nbd_export_from_a_vm_domain(isolde, tmp_path):
    need_tools("nbdcopy", "nbdinfo", packages="libnbd-bin")
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 << 20) + bytes(12 << 20))
    sock = tmp_path / "nbd.sock"
    proc = isolde.start("serve", "--device", f"d,image={img},domain=vm", "--export", f"nbd:unix:{sock},name=d")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert sock.exists(), proc.stderr.read() if proc.poll() is not None else "no socket"
        uri = f"nbd+unix:///d?socket={sock}"
        subprocess.run(["nbdcopy", str(src), uri], check=True, timeout=RUN_TIMEOUT)
        back = tmp_path / "back.bin"
        subprocess.run(["nbdcopy", uri, str(back)], check=True, timeout=RUN_TIMEOUT)
        assert back.read_bytes() == src.read_bytes()
    finally:
        stop(proc)
    assert img.read_bytes() == src.read_bytes()


# ---- bad input ----

def test_image_not_a_multiple_of_512_is_refused(isolde, tmp_path):
    img = tmp_path / "odd.img"
    img.write_bytes(bytes(1000 * 1000 + 3))
    p = isolde.run("verify", "--image", img, "--domain", "vm", "--ops", 10)
    assert p.returncode != 0
    assert "not a multiple of 512" in p.stderr and str(img) in p.stderr


def test_dynamically_linked_driver_is_refused(isolde, vm_image, tmp_path):
    policy = tmp_path / "nbd.policy"
    policy.write_text((ROOT / "policies" / "blk-nbd.policy").read_text())
    p = isolde.run("verify", "--image", "nbd+unix:///x?socket=/nonexistent", "--driver", "blk-nbd",
                   "--domain", "vm", "--ops", 10)
    assert p.returncode != 0
    assert "VM domain" in p.stderr


def test_missing_guest_is_named(isolde, vm_image, tmp_path, monkeypatch):
    monkeypatch.setenv("ISOLDE_VM_GUEST_DIR", str(tmp_path / "no-guest"))
    p = isolde.run("verify", "--image", vm_image, "--domain", "vm", "--ops", 10)
    assert p.returncode != 0
    assert str(tmp_path / "no-guest" / "vmlinux") in p.stderr and "build-vm-guest.sh" in p.stderr


@pytest.mark.parametrize("value", ["container", "", "VM"])
def test_bad_domain_on_the_command_line(isolde, vm_image, value):
    p = isolde.run("verify", "--image", vm_image, "--domain", value, "--ops", 10)
    assert p.returncode == 2
    assert "--domain" in p.stderr and "process or vm" in p.stderr
