"""Least authority: what a running driver can see and do."""
import os
import re

import pytest

from conftest import read_driver_pid, stop


@pytest.fixture
def running_driver(isolde, image):
    proc = isolde.start("verify", "--image", image, "--ops", 10**9, "--notify", "event", "--qd", 4)
    try:
        yield proc, read_driver_pid(proc)
    finally:
        stop(proc)


def status_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_seccomp_and_no_new_privs(running_driver):
    _, pid = running_driver
    st = status_of(pid)
    assert st["Seccomp"] == "2", "seccomp filter mode"
    assert st["NoNewPrivs"] == "1"


def test_runs_as_nobody_in_its_own_namespaces_with_an_empty_root(running_driver):
    proc, pid = running_driver
    st = status_of(pid)
    assert st["Uid"].split() == ["65534"] * 4 and st["Gid"].split() == ["65534"] * 4
    assert st["Groups"].strip() == ""
    assert st["CapEff"] == "0000000000000000"
    for ns in ("mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.listdir(f"/proc/{pid}/root/") == [], "the driver's root is empty"
    assert int(st["PPid"]) == proc.pid


def test_only_granted_fds_and_limits(running_driver, image):
    _, pid = running_driver
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2, 3, 4, 5, 6], f"driver holds fds {fds}"
    null = os.stat("/dev/null").st_rdev
    assert os.stat(f"/proc/{pid}/fd/0").st_rdev == null and os.stat(f"/proc/{pid}/fd/1").st_rdev == null
    assert "memfd:isolde-domain" in os.readlink(f"/proc/{pid}/fd/3")
    assert "eventfd" in os.readlink(f"/proc/{pid}/fd/4") and "eventfd" in os.readlink(f"/proc/{pid}/fd/5")
    assert os.stat(f"/proc/{pid}/fd/6").st_ino == os.stat(image).st_ino
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    assert re.search(r"Max open files\s+16\s+16", limits)
    assert re.search(r"Max processes\s+0\s+0", limits)
    assert re.search(r"Max core file size\s+0\s+0", limits)
    assert os.getpgid(pid) == pid, "own process group: a terminal's Ctrl-C reaches the front end only"


def test_forbidden_calls_are_refused_and_logged(isolde, image):
    """open, socket and execve are not in blk-file's groups: each is refused
    with EPERM, logged with the driver's and the call's name, and counted;
    the driver carries on and the data verifies."""
    p, r = isolde.fault_verify(image, "syscall", 20, "--ops", 200, "--qd", 4)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["restarts"] == 0
    assert r["denials"] >= 3
    for call in ("openat", "socket", "execve"):
        assert re.search(rf"denied driver fault-driver \(pid \d+\) system call {call} \(\d+\): "
                         r"refused with EPERM", p.stderr), call
    assert "open: -1, socket: -1, execve returned: all refused" in p.stderr


def test_kill_listed_call_kills_the_driver(isolde, image):
    p, r = isolde.fault_verify(image, "syscall-kill", 20, "--ops", 200, "--qd", 4)
    assert p.returncode == 0, p.stderr
    assert r["restarts_by_reason"]["policy-kill"] == r["restarts"] >= 1
    assert "SIGSYS" in p.stderr


def test_driver_cannot_grow_the_image(isolde, image):
    """Writing past the image's end hits the file size limit the launcher set
    (SIGXFSZ: a policy kill); the image keeps its size and the data verifies."""
    size = image.stat().st_size
    p, r = isolde.fault_verify(image, "grow-image", 50, "--ops", 200, "--qd", 4)
    assert p.returncode == 0, p.stderr
    assert r["restarts_by_reason"]["policy-kill"] >= 1 and r["errors"] == 0 and r["mismatches"] == 0
    assert image.stat().st_size == size
    assert "SIGXFSZ" in p.stderr
