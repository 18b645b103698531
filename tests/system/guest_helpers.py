"""Helpers for the vhost-user-blk guest tests: the guest's kernel and
initramfs (tests/guest/build-guest.sh), a Linux guest booted under QEMU (TCG)
against a vhost-user-blk socket whose serial console the caller can wait on,
qemu-storage-daemon as the known-good back end, and `isolde serve` with a
vhost-user-blk export. Every process started here is killed, and every
temporary file removed, whether the caller succeeds or not."""
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import conftest
from conftest import ROOT, driver_children, kill_session, stop

GUEST_SCRIPT = ROOT / "tests" / "guest" / "build-guest.sh"
GUEST_DIR = Path(os.environ.get("ISOLDE_GUEST_DIR", ROOT / "build" / "guest"))
QEMU = "qemu-system-x86_64"
QSD = "qemu-storage-daemon"
MiB = 1 << 20

# Under TCG on a 2-core machine QEMU reaches the guest's /init in 5-8 s (up to
# 14 s when the machine is busy) and the "fs" workload ends 30-45 s after QEMU
# started; the limits are several times that.
# ISOLDE_GUEST_TIMEOUT_SCALE stretches them on a slower machine.
SCALE = float(os.environ.get("ISOLDE_GUEST_TIMEOUT_SCALE", "1"))
BOOT_TIMEOUT = 60 * SCALE
WORKLOAD_TIMEOUT = {"fs": 180 * SCALE, "bench": 300 * SCALE}

RESULT = "ISOLDE-GUEST-RESULT:"
BENCH = "ISOLDE-GUEST-BENCH:"

_guest_files = None


def need_tools(*tools):
    return conftest.need_tools(*tools, packages="qemu-system-x86, qemu-system-common")


def guest_files():
    """(vmlinuz, initramfs) of the test guest, built once (and cached in
    build/guest across runs) by tests/guest/build-guest.sh."""
    global _guest_files
    if _guest_files is None:
        p = subprocess.run(["bash", str(GUEST_SCRIPT), str(GUEST_DIR)], capture_output=True, text=True,
                           timeout=900)
        if p.returncode != 0:
            pytest.fail(f"{GUEST_SCRIPT} {GUEST_DIR} exited {p.returncode} "
                        f"(as root, `make deps` installs what it needs):\n{p.stdout}\n{p.stderr}")
        _guest_files = (GUEST_DIR / "vmlinuz", GUEST_DIR / "initramfs.cpio.gz")
    return _guest_files


def sparse_image(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def wait_for_socket(path, proc, log, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the back end exited with {proc.returncode} before {path} "
                                 f"appeared:\n{log()}")
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared:\n{log()}")


class Guest:
    """QEMU (TCG) booting the test guest against the vhost-user-blk socket
    `sock`; the guest runs `workload` and powers off. Its serial console (and
    QEMU's own messages) are read by a thread, each line kept with the time it
    arrived; close() kills QEMU if it still runs."""

    def __init__(self, sock, workload, log_path=None, num_queues=1, mem_mib=512, smp=1, append=""):
        need_tools(QEMU)
        kernel, initrd = guest_files()
        self.workload = workload
        self.log_path = log_path
        self.lines = []          # (seconds since start, line)
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        device = f"vhost-user-blk-pci,chardev=vu,num-queues={num_queues}"
        self.cmd = [
            QEMU, "-machine", "q35,accel=tcg,memory-backend=mem", "-cpu", "max", "-smp", str(smp),
            "-m", f"{mem_mib}M",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
            "-chardev", f"socket,id=vu,path={sock}",
            "-device", device,
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 loglevel=4 isolde.workload={workload} {append}".strip(),
            "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        ]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            with self.cond:
                self.lines.append((time.monotonic() - self.t0, line))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    eof = False

    @property
    def console(self):
        with self.cond:
            return "\n".join(f"[{t:7.2f}] {line}" for t, line in self.lines)

    def _find(self, marker, start):
        for i in range(start, len(self.lines)):
            if marker in self.lines[i][1]:
                return i
        return None

    def wait_for(self, marker, timeout):
        """The first console line containing marker (its time, its text);
        AssertionError with the console if QEMU stops or time runs out first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                i = self._find(marker, 0)
                if i is not None:
                    return self.lines[i]
                if self.eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 1.0))
        why = "QEMU exited" if self.eof else f"{timeout:.0f} s passed"
        raise AssertionError(f"{why} before the guest printed {marker!r}; console:\n{self.console}")

    def result(self, timeout=None):
        """Waits for the guest's verdict: returns the text after
        ISOLDE-GUEST-RESULT: ('PASS' or 'FAIL reason')."""
        if timeout is None:
            timeout = WORKLOAD_TIMEOUT.get(self.workload, 300 * SCALE)
        _, line = self.wait_for(RESULT, timeout)
        return line.split(RESULT, 1)[1].strip()

    def assert_pass(self, timeout=None):
        verdict = self.result(timeout)
        assert verdict == "PASS", f"guest: {verdict}; console:\n{self.console}"
        # It powers off by itself: QEMU must end.
        try:
            self.proc.wait(timeout=30 * SCALE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"QEMU did not exit after the guest powered off:\n{self.console}")
        return verdict

    def bench_figures(self, timeout=None):
        """The ISOLDE-GUEST-BENCH line as a dict of ints."""
        if timeout is None:
            timeout = WORKLOAD_TIMEOUT["bench"]
        _, line = self.wait_for(BENCH, timeout)
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split(BENCH, 1)[1].split())}

    def running(self):
        return self.proc.poll() is None

    def close(self):
        kill_session(self.proc)
        self._reader.join(timeout=10)
        if self.log_path:
            with open(self.log_path, "w") as f:
                f.write(" ".join(self.cmd) + "\n" + self.console + "\n")
        # Captured by pytest, shown when the test failed.
        print(f"---- guest console ({self.workload}) ----\n{self.console}")


@contextmanager
def boot_guest(sock, workload, **kw):
    """with boot_guest(sock, "fs") as g: g.assert_pass() -- QEMU is always killed."""
    g = Guest(sock, workload, **kw)
    try:
        yield g
    finally:
        g.close()


class StorageDaemon:
    """qemu-storage-daemon exporting a raw image as vhost-user-blk on `sock`."""

    def __init__(self, image, sock, num_queues=1):
        need_tools(QSD)
        self.sock = sock
        self.cmd = [QSD,
                    "--blockdev", f"driver=file,node-name=file0,filename={image}",
                    "--blockdev", "driver=raw,node-name=disk,file=file0",
                    "--export", "type=vhost-user-blk,id=exp0,node-name=disk,addr.type=unix,"
                    f"addr.path={sock},writable=on,num-queues={num_queues}"]
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_socket(sock, self.proc, self.log)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def log(self):
        self.out.seek(0)
        return self.out.read().decode(errors="replace")

    def close(self):
        if self.out.closed:
            return
        kill_session(self.proc)
        print(f"---- qemu-storage-daemon ----\n{self.log()}")
        self.out.close()
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass


class ServedIsolde:
    """`isolde ARGS...` (a serve), its stderr drained by a thread from the
    start; close() kills it and everything it started, and prints what it
    said. Subclasses wait for what makes it ready."""

    def __init__(self, isolde, *args):
        self.isolde = isolde
        self.args = [str(a) for a in args]
        self._lines = []
        self._closed = False
        self.proc = isolde.start(*args)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def stderr(self):
        return "".join(self._lines)

    def _log(self):
        if self.proc.poll() is not None:
            self._drain.join(timeout=5)  # all it said before it exited
        return self.stderr

    @property
    def pid(self):
        return self.proc.pid

    def drivers(self):
        return driver_children(self.proc.pid)

    def terminate(self, timeout=60):
        """SIGTERM, as a user stops it; the exit code once isolde (and its
        stderr) ended."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._drain.join(timeout=10)
        return rc

    def close(self):
        if self._closed:
            return
        self._closed = True
        kill_session(self.proc)
        self._drain.join(timeout=10)
        stop(self.proc)
        print(f"---- isolde {' '.join(self.args)} stderr ----\n{self.stderr}")


class VhostServed(ServedIsolde):
    """`isolde serve --export vhost-user-blk:SOCK --control CTRL` on an image."""

    def __init__(self, isolde, image, sock, control, *extra):
        self.sock, self.control = sock, control
        super().__init__(isolde, "serve", "--image", image, "--export", f"vhost-user-blk:{sock}",
                         "--control", control, *extra)
        try:
            wait_for_socket(sock, self.proc, self._log)
            wait_for_socket(control, self.proc, self._log)
        except BaseException:
            self.close()
            raise

    def status(self):
        p = subprocess.run([str(self.isolde.build.isolde), "status", "--control", self.control, "--json"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)


class DriverKiller(threading.Thread):
    """SIGKILLs the current driver of an isolde every `interval` seconds until
    stopped; counts each driver process it killed once (a driver already
    killed but not yet reaped is not counted again)."""

    def __init__(self, isolde_pid, interval=(0.5, 1.0), seed=1):
        super().__init__(daemon=True)
        self.isolde_pid, self.interval = isolde_pid, interval
        self.rnd = random.Random(seed)
        self.killed = []
        self.times = []
        self._halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self._halt.wait(self.rnd.uniform(*self.interval)):
            for pid in driver_children(self.isolde_pid):
                if pid in self.killed:
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed.append(pid)
                self.times.append(time.monotonic() - t0)

    @property
    def kills(self):
        return len(self.killed)

    def stop(self):
        """Idempotent, and harmless before start()."""
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=10)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


@contextmanager
def private_dir(prefix="isolde-guest-"):
    """A short directory in /tmp (Unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
