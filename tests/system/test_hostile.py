"""The hostile-driver catalogue: a driver that attacks everything beyond its
own generation (tests/drivers/hostile_driver.c), one attack per test.

Each attack must be contained: the front end answers correctly (or fails
cleanly, with the reason stated); the generations after the attacking one
are healthy; another device served next to it and an unrelated process
(uid nobody, the identity every driver had before drivers got uids of their
own) are untouched; and the host's resources stay within the policy (the
image's size and blocks, the driver's memory and fds, the log)."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from conftest import BUILD, DRIVER_UID_BASE, POLICIES, assert_no_sanitizer_report, kill_session, stop
from nbd_helpers import Served, need_tools, random_file, run

HOSTILE = BUILD / "tests" / "drivers" / "hostile-driver"
POLICY = POLICIES / "hostile.policy"
OPS, QD = 400, 8
STDERR_MAX_LINES = 400  # the policy's log rate over a run, and the front end's own lines


@dataclass
class Expect:
    fails: bool = False              # the device fails cleanly (else: transparent)
    restarts: dict = field(default_factory=dict)  # failure class -> exact count
    denied: tuple = ()               # system calls the launcher must report refused
    saw: tuple = ()                  # what the driver must have been told (regexes of its log)
    error: str = ""                  # regex of the device's error, when it fails
    args: tuple = ()                 # more verify arguments
    after: int = 10


REFUSED = r"refused \(Operation not permitted\)"

ATTACKS = {
    # Reaching into later generations through the device's open file description.
    "fcntl-append": Expect(restarts={"panic": 1}, denied=("fcntl",), saw=(rf"O_APPEND on the device: {REFUSED}",)),
    "fcntl-direct": Expect(restarts={"panic": 1}, denied=("fcntl",), saw=(rf"O_DIRECT on the device: {REFUSED}",)),
    "ofd-lock": Expect(restarts={"panic": 1}, denied=("fcntl",), saw=(rf"F_OFD_SETLK on the device: {REFUSED}",)),
    # Signals, through its log's file description or directly.
    "setown-signal": Expect(denied=("fcntl",), saw=(rf"F_SETOWN on its log: {REFUSED}",
                                                     rf"F_SETSIG SIGKILL on its log: {REFUSED}",
                                                     rf"O_ASYNC on its log: {REFUSED}")),
    "kill-other": Expect(denied=("kill",), saw=(rf"kill SIGKILL to the target: {REFUSED}",)),
    "tgkill-other": Expect(denied=("tgkill",), saw=(rf"tgkill SIGKILL to the target: {REFUSED}",)),
    "kill-parent": Expect(denied=("kill",), saw=(rf"to the front end: {REFUSED}",)),
    "sigqueue-other": Expect(denied=("rt_sigqueueinfo",), saw=(REFUSED,)),
    "pidfd-other": Expect(denied=("pidfd_open",), saw=(REFUSED,)),
    "ptrace-parent": Expect(restarts={"policy-kill": 1}),
    "process-vm": Expect(restarts={"policy-kill": 1}),
    # The shared memory's seals and size.
    "add-seals": Expect(denied=("fcntl",), saw=(REFUSED,)),
    "shrink-shm": Expect(denied=("ftruncate",), saw=(REFUSED,)),
    # The host's disk.
    "fallocate-keep-size": Expect(denied=("fallocate",), saw=(REFUSED,)),
    "fallocate-insert": Expect(denied=("fallocate",), saw=(REFUSED,)),
    "fallocate-collapse": Expect(denied=("fallocate",), saw=(REFUSED,)),
    "zero-range-past-end": Expect(restarts={"policy-kill": 1}),
    "write-past-end": Expect(restarts={"policy-kill": 1}),
    # New authority: files, /proc, sockets, processes, threads, programs, identity.
    "open-file": Expect(denied=("openat",), saw=(REFUSED,)),
    "probe-proc": Expect(denied=("newfstatat",), saw=(rf"newfstatat /proc/1: {REFUSED}",
                                                      r"readlink /proc/1/exe: refused \(No such file")),
    "socket-connect": Expect(denied=("socket",), saw=(rf"socket AF_INET: {REFUSED}", rf"AF_UNIX: {REFUSED}")),
    "fork": Expect(denied=("clone",), saw=(rf"clone a process: {REFUSED}",)),
    "thread": Expect(denied=("clone",), saw=(r"clone3 a thread: refused \(Function not implemented",
                                             rf"clone a thread: {REFUSED}")),
    "exec": Expect(denied=("execve", "execveat"), saw=(rf"execve /bin/sh: {REFUSED}",)),
    "become-root": Expect(denied=("setuid", "setgid"), saw=(rf"setuid 0: {REFUSED}",)),
    "raise-limits": Expect(denied=("prlimit64",), saw=(rf"RLIMIT_NOFILE to infinity: {REFUSED}",
                                                       rf"of the front end: {REFUSED}")),
    "own-uring": Expect(denied=("io_uring_setup",), saw=(REFUSED,)),
    "exec-mapping": Expect(denied=("mmap", "mprotect"), saw=(rf"mmap PROT_EXEC: {REFUSED}",
                                                              rf"PROT_EXEC: {REFUSED}")),
    # Exhausting what the policy bounds.
    "exhaust-memory": Expect(),
    "exhaust-fds": Expect(),
    "cpu-burn": Expect(),
    "log-flood": Expect(args=("--timeout-ms", "5000")),
    "spoof-log": Expect(),
    "denial-flood": Expect(restarts={"policy-kill": 1}),
    # The shared memory and the ring.
    "scribble-shared": Expect(restarts={"panic": 1}, saw=(r"mprotect the grant table writable",)),
    "forge-responses": Expect(restarts={"protocol-violation": 1}),
    "flood-responses": Expect(restarts={"protocol-violation": 1}),
    "corrupt-indices": Expect(restarts={"panic": 1}),
    "header-lies": Expect(restarts={"panic": 1}),
    "saturate-eventfds": Expect(saw=(r"saturate the call eventfd: succeeded",)),
    # Gaming the supervisor.
    "heartbeat-games": Expect(restarts={"hang": 1}, args=("--timeout-ms", "200")),
    "trickle": Expect(fails=True, after=3, args=("--timeout-ms", "200", "--driver-arg=--every-generation"),
                      error=r"fewer than 32 requests \(crash-loop limit of policy"),
}


ELSEWHERE = {"late-dma": "test_late_dma.py, on a throttled disk",
             # Attacks on what a network client's policy adds, by the same
             # driver linked dynamically (test_remote_sandbox.py).
             **{a: "test_remote_sandbox.py" for a in ("listen-socket", "connect-outside", "other-sockets",
                                                      "shm-code", "library-files")}}


def test_the_catalogue_is_complete():
    """Every attack the driver knows is tested, and there are at least 25."""
    known = subprocess.run([str(HOSTILE), "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(known) == sorted(list(ATTACKS) + list(ELSEWHERE))
    assert len(known) >= 25


# ---- the witnesses: an unrelated process and another device ----

class Witnesses:
    def __init__(self, isolde, tmp):
        self.tmp = tmp
        # uid nobody, as every driver was before drivers got uids of their own.
        self.sentinel = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                          "sleep", "100000"], start_new_session=True)
        self.sibling_image = os.path.join(tmp, "sibling.img")
        random_file(self.sibling_image, 8 << 20, seed=7)
        self.sibling_sum = self.digest()
        self.sibling = Served(isolde, self.sibling_image, "--notify", "event").wait_ready()
        self.sibling_driver = self.sibling.status()["pid"]

    def digest(self):
        with open(self.sibling_image, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def assert_untouched(self):
        assert self.sentinel.poll() is None, "the unrelated uid-nobody process was killed"
        st = self.sibling.status()
        assert st["state"] == "running" and st["restarts"] == 0 and st["pid"] == self.sibling_driver, st
        assert st["io"]["errors"] == 0

    def close(self):
        self.sibling.close()
        kill_session(self.sentinel)


@pytest.fixture(scope="module")
def witnesses(isolde):
    need_tools("nbdcopy")
    tmp = tempfile.mkdtemp(prefix="isolde-hostile-")
    w = Witnesses(isolde, tmp)
    try:
        yield w
        # The sibling's data, read back through its export, is what it was.
        out = os.path.join(tmp, "readback.img")
        run(["nbdcopy", w.sibling.uri, out])
        with open(out, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == w.sibling_sum
    finally:
        w.close()
        shutil.rmtree(tmp, ignore_errors=True)


def hostile_processes():
    """Hostile drivers still running (or unreaped) under a driver uid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
            uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
            name = re.search(r"^Name:\s+(\S+)", status, re.M).group(1)
        except (FileNotFoundError, ProcessLookupError, AttributeError):
            continue
        if DRIVER_UID_BASE <= uid < DRIVER_UID_BASE + (1 << 22) and name.startswith("hostile-dr"):
            found.append(int(entry))
    return found


def hostile_verify(isolde, image, attack, target, *extra, after=10):
    return isolde.verify(image, "--driver", HOSTILE, "--policy", POLICY, f"--driver-arg=--attack={attack}",
                         f"--driver-arg=--after={after}", f"--driver-arg=--target-pid={target}",
                         "--ops", OPS, "--qd", QD, "--notify", "event", *extra, timeout=120)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained(isolde, image, witnesses, attack):
    e = ATTACKS[attack]
    size = image.stat().st_size
    p, r = hostile_verify(isolde, image, attack, witnesses.sentinel.pid, *e.args, after=e.after)
    err = p.stderr

    # The front end answered correctly, or failed cleanly saying why.
    assert r["mismatches"] == 0, err[-3000:]
    if e.fails:
        assert p.returncode == 1 and r["error"] and re.search(e.error, r["error"]), err[-3000:]
    else:
        assert p.returncode == 0 and r["errors"] == 0 and r["error"] is None, err[-3000:]
    by = {k: v for k, v in r["restarts_by_reason"].items() if v}
    if not e.fails:
        assert by == e.restarts, f"restarts {by}, expected {e.restarts}\n{err[-3000:]}"
        # The generations after the attack did the rest of the work alone.
        assert r["generation"] == 1 + sum(e.restarts.values())
    assert f"attack {attack} at request {e.after} of generation 1" in err, err[-2000:]
    for call in e.denied:
        assert re.search(rf"denied driver hostile-driver \(pid \d+\) system call {call} \(\d+\): "
                         r"refused with EPERM", err), f"{call} was not reported refused\n{err[-2000:]}"
    for what in e.saw:
        assert re.search(rf"isolde driver hostile-driver\[\d+\]: attack {attack}: .*{what}", err), \
            f"the driver was not told: {what}\n{err[-2000:]}"

    # Nothing else was touched.
    witnesses.assert_untouched()
    assert hostile_processes() == [], "a driver outlived its device"

    # The host's resources stayed within the policy.
    st = image.stat()
    assert st.st_size == size, "the image changed size"
    assert st.st_blocks * 512 <= size + (1 << 20), f"the image holds {st.st_blocks * 512} bytes"
    assert len(err.splitlines()) <= STDERR_MAX_LINES, f"{len(err.splitlines())} lines of log"
    assert "\x1b" not in err and "\x07" not in err, "control characters reached the log"
    assert_no_sanitizer_report(err)
    check_specific(attack, p, r)


def check_specific(attack, p, r):
    err = p.stderr
    if attack == "exhaust-memory":
        mib = int(re.search(r"mapped (\d+) MiB before the limit", err).group(1))
        assert 0 < mib <= 64, "address space beyond the policy's 64M"
    elif attack == "exhaust-fds":
        more = int(re.search(r"(\d+) more fds before the limit", err).group(1))
        assert more <= 16 - 7, "fds beyond the policy's 16"
    elif attack == "log-flood":
        assert r["log_suppressed"] > 0 and r["log_lines"] > STDERR_MAX_LINES
    elif attack == "spoof-log":
        assert not re.search(r"^isolde: driver blk-file recovered", err, re.M), "a spoofed line passed as isolde's"
        assert re.search(r"^isolde driver hostile-driver\[\d+\]: isolde: driver blk-file recovered\?\[2J",
                         err, re.M), err
    elif attack == "denial-flood":
        assert "system calls its policy refuses" in err
        assert 1000 <= r["denials"] <= 1000 + 64
        assert r["log_suppressed"] > 0
    elif attack == "heartbeat-games":
        assert re.search(r"left a \w+ request unanswered for \d+ ms", err), err[-2000:]
    elif attack == "trickle":
        assert r["restarts"] == 5, "crash-loop 5 of the policy"


def test_cpu_burning_driver_is_throttled(isolde, image, witnesses):
    """A driver that burns CPU while it answers is held to its policy's share
    (cpu 20%): its control group reports throttling while the data verifies."""
    proc = isolde.start("verify", "--image", image, "--driver", HOSTILE, "--policy", POLICY,
                        "--driver-arg=--attack=cpu-burn", "--driver-arg=--after=1", "--ops", OPS,
                        "--qd", QD, "--notify", "event", "--json")
    throttled = 0
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not throttled:
            for pid in open_pids(proc.pid):
                try:
                    with open(f"/sys/fs/cgroup/cpu/isolde/hostile-driver-{pid}/cpu.stat") as f:
                        throttled = int(re.search(r"nr_throttled (\d+)", f.read()).group(1))
                except FileNotFoundError:
                    pass
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert throttled > 0, "the driver was never throttled"
    r = json.loads(out)
    assert proc.returncode == 0 and r["errors"] == 0 and r["mismatches"] == 0, err[-2000:]
    witnesses.assert_untouched()


def open_pids(front_pid):
    try:
        with open(f"/proc/{front_pid}/task/{front_pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
