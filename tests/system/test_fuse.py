"""The FUSE export (`isolde serve --export fuse:FILE`): the device as one
regular file, used through real tools - losetup, mkfs.ext4, mount,
fsck.ext4 - while the driver under it is killed, and directly with
pread/pwrite. Every test undoes what it did, also when it fails: file
systems unmounted, loop devices detached, the server killed, stale FUSE
mounts removed."""
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import assert_no_sanitizer_report, driver_children, stop

MiB = 1 << 20


# ---- environment ----

def fuse_unavailable():
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no fuse module?)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    return None


def loop_unavailable():
    """Why loop devices cannot be used here, or None."""
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        return "no loop devices (/dev/loop-control is missing)"
    p = subprocess.run(["losetup", "--find"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return f"no free loop device: {p.stderr.strip()}"
    return None


def _unescape(field):
    """/proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = "", 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out += chr(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def is_mountpoint(path):
    path = os.path.realpath(os.path.dirname(str(path))) + "/" + os.path.basename(str(path))
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == path for line in f)


def run(*args, timeout=120, check=True):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}{p.stderr}"
    return p


def make_image(path, size, content=None):
    with open(path, "wb") as f:
        if content is not None:
            f.write(content)
        f.truncate(size)


# ---- the server and the loop devices, always cleaned up ----

class Server:
    """A background `isolde serve --export fuse:FILE`, its stderr drained by a thread."""

    def __init__(self, isolde, image, path, *extra, control=None):
        self.isolde = isolde
        self.path = Path(path)
        self.control = control
        args = ["serve", "--image", image, "--export", f"fuse:{path}", *extra]
        if control:
            args += ["--control", control]
        self.proc = isolde.start(*args)
        self.lines = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self):
        return "".join(self.lines)

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, size, timeout=30):
        """Until FILE is the FUSE mount and shows the device's size."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"isolde serve exited {self.proc.returncode}:\n{self.stderr}")
            if is_mountpoint(self.path) and os.stat(self.path).st_size == size:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.path} never became the {size}-byte device:\n{self.stderr}")

    def status(self):
        p = self.isolde.run("status", "--control", self.control, "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def terminate(self, timeout=60):
        """SIGTERM, as a user would stop it; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        return rc

    def cleanup(self):
        stop(self.proc)
        self.reader.join(10)
        if is_mountpoint(self.path):  # a killed server leaves a dead mount
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=60)


class Rig:
    """Servers, loop devices and mounts of one test, undone in reverse order."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.servers = []
        self.loops = []
        self.mounts = []

    def need_loop(self):
        reason = loop_unavailable()
        if reason:
            pytest.skip(reason)

    def serve(self, isolde, image, path, *extra, control=None):
        s = Server(isolde, image, path, *extra, control=control)
        self.servers.append(s)
        return s

    def attach(self, file, *options):
        dev = run("losetup", *options, "--find", "--show", file).stdout.strip()
        assert dev.startswith("/dev/loop"), dev
        self.loops.append(dev)
        return dev

    def detach(self, dev, file):
        run("losetup", "-d", dev)
        self.loops.remove(dev)
        # The kernel may finish the detach after losetup returns.
        deadline = time.monotonic() + 20
        while run("losetup", "-j", file).stdout.strip():
            assert time.monotonic() < deadline, f"{dev} still holds {file}"
            time.sleep(0.05)

    def mount(self, dev, directory, *options):
        run("mount", "-t", "ext4", *options, dev, directory)
        self.mounts.append(directory)

    def umount(self, directory):
        run("umount", directory)
        self.mounts.remove(directory)

    def cleanup(self):
        for m in reversed(self.mounts):
            subprocess.run(["umount", str(m)], capture_output=True, timeout=120)
            if is_mountpoint(m):
                subprocess.run(["umount", "-l", str(m)], capture_output=True, timeout=60)
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)
        for s in reversed(self.servers):
            s.cleanup()


@pytest.fixture
def rig(tmp_path):
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


# ---- the tests ----

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class DriverKiller(threading.Thread):
    """SIGKILLs the server's driver `times` times, 100-300 ms apart, each
    time a driver that is alive and not the one killed before."""

    def __init__(self, server_pid, times=5, seed=7):
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.times = times
        self.rng = random.Random(seed)
        self.kills = 0
        self.cancel = threading.Event()

    def run(self):
        last = None
        while self.kills < self.times and not self.cancel.is_set():
            self.cancel.wait(self.rng.uniform(0.1, 0.3))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not self.cancel.is_set():
                pids = [p for p in driver_children(self.server_pid) if p != last and alive(p)]
                if pids:
                    try:
                        os.kill(pids[0], signal.SIGKILL)
                        self.kills += 1
                        last = pids[0]
                    except ProcessLookupError:
                        continue
                    break
                time.sleep(0.01)


def write_file(path, rng, sums):
    data = rng.randbytes(rng.randint(1, 256 * 1024))
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # so the I/O reaches the device while the driver is being killed
    sums[path] = hashlib.sha256(data).hexdigest()


def test_ext4_on_a_loop_device_survives_driver_kills(isolde, rig, tmp_path):
    """losetup + mkfs.ext4 + mount on the FUSE file; write a tree while the
    driver is SIGKILLed five times; fsck is clean and every file reads back."""
    rig.need_loop()
    size = 128 * MiB
    img, file, ctl, mnt = tmp_path / "disk.img", tmp_path / "dev", tmp_path / "ctl", tmp_path / "mnt"
    make_image(img, size)
    mnt.mkdir()
    srv = rig.serve(isolde, img, file, control=ctl)  # FILE does not exist: the server creates it
    srv.wait_ready(size)

    loop = rig.attach(file)
    run("mkfs.ext4", "-q", loop)
    rig.mount(loop, mnt)

    rng = random.Random(2024)
    dirs = [mnt / d for d in ("a", "b", "c/d", "c/e")]
    for d in dirs:
        d.mkdir(parents=True)
    sums = {}
    killer = DriverKiller(srv.pid)
    killer.start()
    try:
        deadline = time.monotonic() + 120
        # At least 200 files, and keep writing (new content over old files)
        # until every kill has landed, so they all hit I/O in progress.
        while len(sums) < 200 or (killer.is_alive() and time.monotonic() < deadline):
            if len(sums) < 200:
                path = dirs[len(sums) % len(dirs)] / f"f{len(sums):03d}.bin"
            else:
                path = rng.choice(sorted(sums))
            write_file(path, rng, sums)
    finally:
        killer.cancel.set()  # no-op unless the writes failed or ran out of time
        killer.join(30)
    assert killer.kills == 5, f"only {killer.kills} kills landed:\n{srv.stderr}"
    os.sync()
    rig.umount(mnt)

    p = run("fsck.ext4", "-fn", loop, check=False)
    assert p.returncode == 0, f"fsck.ext4 -fn found problems:\n{p.stdout}{p.stderr}"

    rig.mount(loop, mnt)
    for path, digest in sums.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} differs"
    rig.umount(mnt)
    rig.detach(loop, file)

    st = srv.status()
    assert st["state"] == "running" and st["error"] is None
    assert st["restarts"] >= killer.kills, st
    assert st["io"]["errors"] == 0, st
    [fx] = st["exports"]
    assert fx["kind"] == "fuse" and fx["path"] == os.path.join(os.path.realpath(tmp_path), "dev") and fx["requests"] > 0, fx
    assert fx["errors"] == 0 and fx["mounted"] is True, fx

    assert srv.terminate() == 0, srv.stderr
    assert not is_mountpoint(file), "FILE is still mounted after the server stopped"
    assert not file.exists(), "the file the server created was not removed"
    assert "still in use" not in srv.stderr
    assert_no_sanitizer_report(srv.stderr)

    # The image itself, with no server and no cache in between, holds the
    # same file system.
    loop = rig.attach(img, "--read-only")
    p = run("fsck.ext4", "-fn", loop, check=False)
    assert p.returncode == 0, f"fsck.ext4 -fn on the image found problems:\n{p.stdout}{p.stderr}"
    rig.mount(loop, mnt, "-o", "ro")
    for path, digest in sums.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} differs in the image"
    rig.umount(mnt)
    rig.detach(loop, img)


def test_direct_reads_and_writes_reach_the_image(isolde, rig, tmp_path):
    """pwrite/pread on the file at odd offsets and across the 1 MiB max_io
    boundary read back at once and are in the image after SIGTERM; the file
    mounted over is untouched."""
    size = 64 * MiB
    rng = random.Random(99)
    model = bytearray(rng.randbytes(size))
    img, file = tmp_path / "disk.img", tmp_path / "dev"
    make_image(img, size, model)
    file.write_bytes(b"the file underneath")
    srv = rig.serve(isolde, img, file)
    srv.wait_ready(size)

    st = os.stat(file)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()
    writes = [(1, 1000), (MiB - 7, 20), (MiB - 1, 1), (2 * MiB - 3, 3), (3 * MiB + 123, 5 * MiB // 2),
              (7 * MiB - 4097, MiB + 8193), (20 * MiB + 511, 4097), (size - 5, 5)]
    fd = os.open(file, os.O_RDWR)
    try:
        for off, n in writes:
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            model[off:off + n] = data
        for off, n in writes + [(0, 4096), (MiB - 100, 200), (5 * MiB + 17, 3 * MiB), (size - 4096, 4096)]:
            assert os.pread(fd, n, off) == model[off:off + n], f"read {n} at {off}"
        # The end of the device is the end of the file.
        assert os.pread(fd, 100, size - 10) == model[size - 10:]
        assert os.pread(fd, 100, size) == b""
        assert os.pwrite(fd, b"abcdef", size - 3) == 3
        model[size - 3:] = b"abc"
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", size)
        assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, size // 2)
        assert e.value.errno == errno.EINVAL
        os.fsync(fd)
        # Everything, read back through the file in 3 MiB pieces.
        h = hashlib.sha256()
        for off in range(0, size, 3 * MiB):
            h.update(os.pread(fd, 3 * MiB, off))
        assert h.hexdigest() == hashlib.sha256(model).hexdigest()
    finally:
        os.close(fd)

    assert srv.terminate() == 0, srv.stderr
    assert not is_mountpoint(file)
    assert img.read_bytes() == model, "the image does not hold what was written"
    assert file.read_bytes() == b"the file underneath"
    assert_no_sanitizer_report(srv.stderr)


def test_readonly_file_refuses_writes(isolde, rig, tmp_path):
    size = 32 * MiB
    content = random.Random(5).randbytes(size)
    img, file = tmp_path / "disk.img", tmp_path / "dev"
    make_image(img, size, content)
    srv = rig.serve(isolde, img, file, "--readonly")
    srv.wait_ready(size)

    assert os.stat(file).st_mode & 0o777 == 0o400
    for flags in (os.O_RDWR, os.O_WRONLY):
        with pytest.raises(OSError) as e:
            os.close(os.open(file, flags))
        assert e.value.errno == errno.EROFS
    fd = os.open(file, os.O_RDONLY)
    try:
        for off, n in [(0, 512), (777, 3 * MiB), (MiB - 1, 2), (size - 9, 9)]:
            assert os.pread(fd, n, off) == content[off:off + n]
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 0)
        assert e.value.errno == errno.EBADF
    finally:
        os.close(fd)

    assert srv.terminate() == 0, srv.stderr
    assert not is_mountpoint(file)
    assert img.read_bytes() == content
    assert_no_sanitizer_report(srv.stderr)


def test_stop_while_the_file_is_in_use_detaches_it(isolde, rig, tmp_path):
    """SIGTERM while a process holds the file open: the server says so,
    detaches the mount lazily and exits 0; the holder gets errors, not a hang."""
    size = 32 * MiB
    img, file = tmp_path / "disk.img", tmp_path / "dev"
    make_image(img, size)
    srv = rig.serve(isolde, img, file)
    srv.wait_ready(size)
    fd = os.open(file, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == bytes(4096)
        assert srv.terminate() == 0, srv.stderr
        assert "still in use" in srv.stderr and "detaching it lazily" in srv.stderr, srv.stderr
        assert not is_mountpoint(file)
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno in (errno.ENOTCONN, errno.EIO)
    finally:
        try:
            os.close(fd)
        except OSError as e:  # the connection is gone: the close may say so
            assert e.errno in (errno.ENOTCONN, errno.EIO)
    assert not file.exists()


def test_directory_is_refused(isolde, rig, tmp_path):
    img = tmp_path / "disk.img"
    make_image(img, 32 * MiB)
    d = tmp_path / "dir"
    d.mkdir()
    p = isolde.run("serve", "--image", img, "--export", f"fuse:{d}", timeout=60)
    assert p.returncode == 1
    assert "is a directory" in p.stderr and f"{d}/disk" in p.stderr, p.stderr
    assert not is_mountpoint(d)
