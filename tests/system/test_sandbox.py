"""Least authority: what a running driver can see and do."""
import json
import os
import re
import stat
import subprocess

import pytest

from conftest import (DRIVER_UID_BASE, FAULT_POLICY, assert_own_identity, proc_status, read_driver_pid,
                      stop)


@pytest.fixture
def running_driver(isolde, image):
    proc = isolde.start("verify", "--image", image, "--ops", 10**9, "--notify", "event", "--qd", 4)
    try:
        yield proc, read_driver_pid(proc)
    finally:
        stop(proc)


def test_seccomp_and_no_new_privs(running_driver):
    _, pid = running_driver
    st = proc_status(pid)
    assert st["Seccomp"] == "2", "seccomp filter mode"
    assert st["NoNewPrivs"] == "1"


def test_runs_as_its_own_uid_in_its_own_namespaces_with_an_empty_root(running_driver):
    proc, pid = running_driver
    assert_own_identity(pid)
    for ns in ("mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.listdir(f"/proc/{pid}/root/") == [], "the driver's root is empty"
    assert int(proc_status(pid)["PPid"]) == proc.pid


def test_two_drivers_never_share_a_uid(isolde, image, tmp_path):
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.truncate(8 << 20)
    a = isolde.start("verify", "--image", image, "--ops", 10**9, "--qd", 2, "--notify", "event")
    b = isolde.start("verify", "--image", other, "--ops", 10**9, "--qd", 2, "--notify", "event")
    try:
        pa, pb = read_driver_pid(a), read_driver_pid(b)
        ua, ub = (int(proc_status(p)["Uid"].split()[0]) for p in (pa, pb))
        assert ua == DRIVER_UID_BASE + pa and ub == DRIVER_UID_BASE + pb and ua != ub
    finally:
        stop(a)
        stop(b)


def test_only_granted_fds_and_limits(running_driver, image):
    _, pid = running_driver
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2, 3, 4, 5, 6], f"driver holds fds {fds}"
    null = os.stat("/dev/null").st_rdev
    assert os.stat(f"/proc/{pid}/fd/0").st_rdev == null and os.stat(f"/proc/{pid}/fd/1").st_rdev == null
    assert stat.S_ISFIFO(os.stat(f"/proc/{pid}/fd/2").st_mode), "its log is a pipe of its own"
    assert "memfd:isolde-domain" in os.readlink(f"/proc/{pid}/fd/3")
    assert "eventfd" in os.readlink(f"/proc/{pid}/fd/4") and "eventfd" in os.readlink(f"/proc/{pid}/fd/5")
    assert os.stat(f"/proc/{pid}/fd/6").st_ino == os.stat(image).st_ino
    with open(f"/proc/{pid}/fdinfo/2") as f:
        flags = int(re.search(r"^flags:\s+(\d+)", f.read(), re.M).group(1), 8)
    assert flags & os.O_NONBLOCK, "a driver whose log is not read loses lines, never stalls"
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    assert re.search(r"Max open files\s+16\s+16", limits)
    assert re.search(r"Max processes\s+1\s+1", limits), "its own uid's tasks: itself"
    assert re.search(r"Max core file size\s+0\s+0", limits)
    assert os.getpgid(pid) == pid, "own process group: a terminal's Ctrl-C reaches the front end only"


def test_the_device_is_an_open_file_description_of_its_own(running_driver, image):
    """Not the application's, and not the last generation's: flags a driver
    sets on it (O_APPEND, locks) end with it."""
    proc, pid = running_driver
    front_fds = [int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")]
    front_image = [fd for fd in front_fds if os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == str(image)]
    assert front_image, "the front end holds the image"
    # Same file, different open file description: the kernel's kcmp says so.
    assert os.stat(f"/proc/{pid}/fd/6").st_ino == os.stat(image).st_ino
    for fd in front_image:
        assert kcmp_file(proc.pid, fd, pid, 6) != 0


def kcmp_file(pid1, fd1, pid2, fd2):
    """kcmp(KCMP_FILE): 0 when both fds are the same open file description."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_kcmp, KCMP_FILE = 312, 0
    r = libc.syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2)
    assert r >= 0, os.strerror(ctypes.get_errno())
    return r


def test_cpu_and_tasks_bounded_by_a_control_group(running_driver):
    _, pid = running_driver
    with open(f"/proc/{pid}/cgroup") as f:
        groups = dict((line.split(":")[1], line.split(":")[2].strip()) for line in f)
    assert groups["cpu"] == groups["pids"] == f"/isolde/blk-file-{pid}", groups
    base = f"/sys/fs/cgroup/cpu/isolde/blk-file-{pid}"
    with open(f"{base}/cpu.cfs_quota_us") as f, open(f"{base}/cpu.cfs_period_us") as g:
        assert int(f.read()) == int(g.read()), "policy cpu 100%: one core"
    with open(f"/sys/fs/cgroup/pids/isolde/blk-file-{pid}/pids.max") as f:
        assert f.read().strip() == "1"


def test_forbidden_calls_are_refused_and_logged(isolde, image):
    """open, socket and execve are not in blk-file's groups: each is refused
    with EPERM, logged with the driver's and the call's name, and counted;
    the driver carries on and the data verifies."""
    p, r = isolde.fault_verify(image, "syscall", 20, "--ops", 200, "--qd", 4)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["restarts"] == 0
    assert r["denials"] >= 3
    # Counted by what each would have reached (the campaign's report does the same).
    by_class = r["denials_by_class"]
    assert by_class["file"] >= 1 and by_class["network"] >= 1 and by_class["process"] >= 1, by_class
    assert sum(by_class.values()) == r["denials"], by_class
    for call in ("openat", "socket", "execve"):
        assert re.search(rf"denied driver fault-driver \(pid \d+\) system call {call} \(\d+\): "
                         r"refused with EPERM", p.stderr), call
    assert re.search(r"isolde driver fault-driver\[\d+\]: open: -1, socket: -1, execve returned: "
                     r"all refused", p.stderr)


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


def test_the_driver_logs_into_a_pipe_not_the_applications_file(isolde, image, tmp_path):
    """The application's stderr is a log file already larger than the image,
    i.e. past the driver's file size limit: the driver's lines still arrive
    (through its own pipe, written into that file by the front end) and no
    driver dies of SIGXFSZ for logging."""
    log = tmp_path / "app.log"
    with open(log, "wb") as f:
        f.truncate(2 * image.stat().st_size)
    with open(log, "a") as err:
        p = subprocess.run([str(isolde.build.isolde), "verify", "--image", str(image), "--json", "--ops", "200",
                            "--qd", "4", "--driver", str(isolde.build.fault_driver), "--policy", str(FAULT_POLICY),
                            "--driver-arg=--fault=syscall", "--driver-arg=--after=20"],
                           stdout=subprocess.PIPE, stderr=err, text=True, timeout=120)
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["restarts"] == 0 and r["errors"] == 0
    with open(log, "rb") as f:
        f.seek(2 * image.stat().st_size)
        tail = f.read().decode()
    assert re.search(r"isolde driver fault-driver\[\d+\]: open: -1, socket: -1, execve returned: all refused",
                     tail), tail
