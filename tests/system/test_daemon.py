"""isolde serve as a daemon of many devices: each device serves its own
image through its own driver, in its own thread, so that one whose driver
hangs or keeps crashing never delays or disturbs another; devices and
exports come from the command line or a configuration file, and every bad
line or spec is refused with the place it came from."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import FAULT_POLICY, assert_no_sanitizer_report, driver_children, stop
from nbd_helpers import MiB, need_tools, unix_uri

READY = re.compile(r"device (\S+): .* through driver \S+ pid (\d+), notify")


def pattern_image(path, size, seed):
    """An image whose every 4 KiB block says which image and block it is."""
    with open(path, "wb") as f:
        for block in range(size // 4096):
            f.write((f"{seed}:{block:08d}:".encode() * 400)[:4096])


class Daemon:
    """`isolde serve` with the given arguments in a private directory; its
    stderr drained by a thread; close() kills whatever is left."""

    def __init__(self, isolde, *args, cwd=None):
        self.dir = tempfile.mkdtemp(prefix="isolde-d-", dir="/tmp")
        self.control = os.path.join(self.dir, "ctl.sock")
        self.isolde = isolde
        self._lines = []
        self.proc = isolde.start("serve", *[a.replace("@", self.dir) for a in map(str, args)])
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self):
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def stderr(self):
        return "".join(self._lines)

    def sock(self, name):
        return os.path.join(self.dir, name)

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._drain.join(timeout=5)
                raise AssertionError(f"isolde serve exited with {self.proc.returncode}:\n{self.stderr}")
            if "; ready" in self.stderr:
                return self
            time.sleep(0.02)
        raise AssertionError(f"isolde serve never became ready:\n{self.stderr}")

    def wait_exit(self, timeout=30):
        rc = self.proc.wait(timeout=timeout)
        self._drain.join(timeout=5)
        return rc

    def driver_pids(self):
        """Device name -> its first driver's pid, from the ready lines."""
        return {m.group(1): int(m.group(2)) for m in READY.finditer(self.stderr)}

    def status(self, device):
        import json
        p = self.isolde.run("status", "--control", self.control, "--json", "--device", device, timeout=20)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def close(self):
        stop(self.proc)
        self._drain.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def images(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    pattern_image(a, 8 * MiB, "a")
    pattern_image(b, 4 * MiB, "b")
    return a, b


def nbdcopy_out(sock, dest):
    return subprocess.run(["nbdcopy", unix_uri(sock), str(dest)], capture_output=True, text=True, timeout=120)


def test_each_device_serves_its_own_image(any_isolde, images, tmp_path):
    isolde = any_isolde
    need_tools("nbdcopy", "nbdinfo")
    a, b = images
    d = Daemon(isolde, "--device", f"a,image={a}", "--device", f"b,image={b},notify=event,qd=8",
               "--export", "nbd:unix:@/a.sock,device=a", "--export", "nbd:unix:@/b.sock,device=b",
               "--control", "@/ctl.sock")
    try:
        d.wait_ready()
        pids = d.driver_pids()
        assert set(pids) == {"a", "b"} and pids["a"] != pids["b"], d.stderr
        for name, img in (("a", a), ("b", b)):
            out = tmp_path / f"{name}.out"
            p = nbdcopy_out(d.sock(f"{name}.sock"), out)
            assert p.returncode == 0, p.stderr
            assert out.read_bytes() == img.read_bytes(), f"device {name} served another image"
        assert d.status("b")["queue_depth"] == 8 and d.status("b")["notify"] == "event"
        assert d.status("a")["size"] == 8 * MiB and d.status("b")["size"] == 4 * MiB
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait_exit() == 0, d.stderr
        assert_no_sanitizer_report(d.stderr)
    finally:
        d.close()


def test_a_hung_driver_does_not_delay_another_device(any_isolde, images, tmp_path):
    """Device a's driver is stopped (SIGSTOP) with a read of it in flight and
    hang detection out of the way: device b still serves all of its image
    meanwhile, and a's read completes, correct, once its driver runs again."""
    isolde = any_isolde
    need_tools("nbdcopy")
    a, b = images
    d = Daemon(isolde, "--device", f"a,image={a},notify=event,timeout_ms=600000",
               "--device", f"b,image={b},notify=event",
               "--export", "nbd:unix:@/a.sock,device=a", "--export", "nbd:unix:@/b.sock,device=b",
               "--control", "@/ctl.sock")
    hung = None
    try:
        d.wait_ready()
        hung = d.driver_pids()["a"]
        os.kill(hung, signal.SIGSTOP)
        a_out = tmp_path / "a.out"
        a_copy = subprocess.Popen(["nbdcopy", unix_uri(d.sock("a.sock")), str(a_out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while d.status("a")["inflight"] == 0:
                assert time.monotonic() < deadline, "a's read never reached its ring"
                assert a_copy.poll() is None, a_copy.communicate()
                time.sleep(0.05)
            b_out = tmp_path / "b.out"
            for _ in range(3):
                p = nbdcopy_out(d.sock("b.sock"), b_out)
                assert p.returncode == 0, p.stderr
                assert b_out.read_bytes() == b.read_bytes()
            assert a_copy.poll() is None, "a's read completed while its driver was stopped"
            assert d.status("a")["inflight"] > 0
            os.kill(hung, signal.SIGCONT)
            hung = None
            _, err = a_copy.communicate(timeout=60)
            assert a_copy.returncode == 0, err
        finally:
            if a_copy.poll() is None:
                a_copy.kill()
                a_copy.wait()
        assert a_out.read_bytes() == a.read_bytes()
        assert d.status("a")["restarts"] == 0 and d.status("b")["restarts"] == 0
    finally:
        if hung:
            os.kill(hung, signal.SIGCONT)
        d.close()


def test_a_driver_stuck_in_its_start_does_not_delay_another_device(any_isolde, images, tmp_path):
    """Device a's driver is killed and every restart of it hangs before it
    becomes ready (fault-driver start-hang from generation 2): while a is
    stuck in `starting`, with a read of it waiting, device b serves its
    whole image, three times, and a's read has still not been answered."""
    isolde = any_isolde
    need_tools("nbdcopy")
    a, b = images
    fault = isolde.build.fault_driver
    d = Daemon(isolde, "--device", f"a,image={a},driver={fault},policy={FAULT_POLICY},notify=event,"
               "driver_arg=--fault=start-hang,driver_arg=--after=2",
               "--device", f"b,image={b},notify=event",
               "--export", "nbd:unix:@/a.sock,device=a", "--export", "nbd:unix:@/b.sock,device=b",
               "--control", "@/ctl.sock")
    a_copy = None
    try:
        d.wait_ready()
        pids = d.driver_pids()
        os.kill(pids["a"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while d.status("a")["state"] != "starting":
            assert time.monotonic() < deadline, d.status("a")
            time.sleep(0.02)
        a_copy = subprocess.Popen(["nbdcopy", unix_uri(d.sock("a.sock")), str(tmp_path / "a.out")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        b_out = tmp_path / "b.out"
        for _ in range(3):
            p = nbdcopy_out(d.sock("b.sock"), b_out)
            assert p.returncode == 0, p.stderr
            assert b_out.read_bytes() == b.read_bytes()
        sa = d.status("a")
        assert sa["state"] == "starting", sa
        assert a_copy.poll() is None, "a answered while its driver had not started"
        assert d.status("b")["restarts"] == 0
        assert "injecting fault start-hang in generation 2" in d.stderr
    finally:
        if a_copy and a_copy.poll() is None:
            a_copy.kill()
            a_copy.wait()
        d.close()


def test_a_crashing_driver_leaves_the_other_device_alone(any_isolde, images, tmp_path):
    """Device a's drivers are SIGKILLed over and over while both devices are
    copied out: both copies are exact, a restarted, b never did."""
    isolde = any_isolde
    need_tools("nbdcopy")
    a, b = images
    d = Daemon(isolde, "--device", f"a,image={a}", "--device", f"b,image={b}",
               "--export", "nbd:unix:@/a.sock,device=a", "--export", "nbd:unix:@/b.sock,device=b",
               "--control", "@/ctl.sock")
    try:
        d.wait_ready()
        b_pid = d.driver_pids()["b"]
        stop_storm = threading.Event()
        kills = []

        def storm():
            while not stop_storm.is_set():
                for pid in driver_children(d.proc.pid):
                    if pid != b_pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            kills.append(pid)
                        except ProcessLookupError:
                            pass
                time.sleep(0.05)

        t = threading.Thread(target=storm, daemon=True)
        t.start()
        try:
            for round_ in range(3):
                for name, img in (("a", a), ("b", b)):
                    out = tmp_path / f"{name}{round_}.out"
                    p = nbdcopy_out(d.sock(f"{name}.sock"), out)
                    assert p.returncode == 0, p.stderr
                    assert out.read_bytes() == img.read_bytes(), f"device {name}, round {round_}"
        finally:
            stop_storm.set()
            t.join()
        assert kills, "no driver of a was killed"
        sa, sb = d.status("a"), d.status("b")
        assert sa["restarts"] >= 1, sa
        assert sb["restarts"] == 0 and sb["pid"] == b_pid, sb
        assert b_pid in driver_children(d.proc.pid)
    finally:
        d.close()


def test_a_configuration_file(isolde, images, tmp_path):
    need_tools("nbdcopy")
    a, b = images
    d = None
    conf = tmp_path / "serve.conf"
    dirname = tempfile.mkdtemp(prefix="isolde-c-", dir="/tmp")
    try:
        conf.write_text(f"""# two devices, one export each
device a,image={a}
   device   b,image={b},readonly     # trailing comment

export nbd:unix:{dirname}/a.sock,device=a
export nbd:unix:{dirname}/b.sock,device=b
control {dirname}/ctl.sock
""")
        d = Daemon(isolde, "--config", conf)
        d.control = os.path.join(dirname, "ctl.sock")
        d.wait_ready()
        assert d.status("b")["readonly"] is True and d.status("a")["readonly"] is False
        out = tmp_path / "b.out"
        p = nbdcopy_out(os.path.join(dirname, "b.sock"), out)
        assert p.returncode == 0, p.stderr
        assert out.read_bytes() == b.read_bytes()
    finally:
        if d:
            d.close()
        shutil.rmtree(dirname, ignore_errors=True)


BAD_CONFIGS = [
    ("frobnicate yes\n", 1, "unknown keyword 'frobnicate'"),
    ("device a,image=IMG\ndevice\n", 2, "'device' needs a value"),
    ("# ok\ndevice a,image=IMG,qd=0\n", 2, "device a: field 'qd': '0' is not a queue depth"),
    ("device a,image=IMG\ndevice a,image=IMG\n", 2, "there is a device a already"),
    ("device a/b,image=IMG\n", 1, "'a/b' is not a device name"),
    ("device " + "x" * 40 + ",image=IMG\n", 1, "a device spec starts with its name"),
    ("device a,image=IMG,colour=blue\n", 1, "unknown field 'colour'"),
    ("device a,image=IMG\ncontrol /tmp/x\ncontrol /tmp/y\n", 3, "control given twice (first at"),
    ("device a,image=IMG\nexport " + "x" * 1100 + "\n", 2, "line longer than 1024 characters"),
    ("device a,image=/nonexistent/isolde.img\nexport nbd:unix:/tmp/never.sock\n", 1,
     "/nonexistent/isolde.img"),
    ("device a,image=IMG\nexport nbd:unix:/tmp/never.sock,device=z\n", 2, "there is no device z"),
    ("device a,image=IMG\ndevice b,image=IMG\nexport nbd:unix:/tmp/never.sock\n", 3,
     "say which device (,device=NAME)"),
    ("device a,image=IMG\nexport floppy:/dev/fd0\n", 2, "floppy"),
]


@pytest.mark.parametrize("text,line,message", BAD_CONFIGS,
                         ids=[c[2][:30] for c in BAD_CONFIGS])
def test_a_bad_configuration_names_its_line(isolde, image, tmp_path, text, line, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(text.replace("IMG", str(image)))
    p = isolde.run("serve", "--config", conf, timeout=60)
    assert p.returncode in (1, 2), p.stderr
    assert f"{conf}:{line}:" in p.stderr, p.stderr
    assert message in p.stderr, p.stderr
    assert "; ready" not in p.stderr
    assert not os.path.exists("/tmp/never.sock")


def test_a_configuration_file_with_a_nul_byte(isolde, image, tmp_path):
    conf = tmp_path / "nul.conf"
    conf.write_bytes(f"device a,image={image}\nexport nbd:unix:/tmp/x\0.sock\n".encode())
    p = isolde.run("serve", "--config", conf)
    assert p.returncode == 2 and f"{conf}:2: a NUL byte" in p.stderr, p.stderr


def test_an_unreadable_configuration_file(isolde, tmp_path):
    p = isolde.run("serve", "--config", tmp_path / "missing.conf")
    assert p.returncode == 2 and "missing.conf: No such file or directory" in p.stderr, p.stderr


BAD_COMMAND_LINES = [
    (["--driver", "blk-uring", "--device", "a,image=IMG", "--export", "nbd:unix:/tmp/never.sock"], 2,
     "--driver applies to --image"),
    (["--export", "nbd:unix:/tmp/never.sock"], 2, "no device"),
    (["--device", "a,image=IMG"], 2, "at least one --export is required"),
    (["--image", "IMG", "--image", "IMG", "--export", "nbd:unix:/tmp/never.sock"], 2, "--image given twice"),
    (["--image", "IMG", "--device", "disk,image=IMG", "--export", "nbd:unix:/tmp/never.sock,device=disk"], 1,
     "there is a device disk already"),
    (["--device", "a,image=IMG", "--export", "nbd:unix:/tmp/never.sock,device=a,device=a"], 1,
     "device= given twice"),
    (["--device", "a,image=IMG", "--device", "b,image=IMG", "--export", "nbd:unix:/tmp/never.sock"], 1,
     "say which device"),
    (["--device", "a", "--export", "nbd:unix:/tmp/never.sock"], 2, "--device: device a: no image"),
    (["--device", ",image=IMG", "--export", "nbd:unix:/tmp/never.sock"], 2, "starts with its name"),
    (["--device", "a,image=IMG,notify=sometimes", "--export", "nbd:unix:/tmp/never.sock"], 2,
     "field 'notify'"),
    (["--device", "a,image=IMG", "--metrics", "tcp:127.0.0.1:1", "--metrics", "tcp::0",
      "--export", "nbd:unix:/tmp/never.sock"], 2, "metrics given twice"),
]


@pytest.mark.parametrize("args,rc,message", BAD_COMMAND_LINES, ids=[c[2][:30] for c in BAD_COMMAND_LINES])
def test_a_bad_command_line_is_refused_clearly(isolde, image, args, rc, message):
    p = isolde.run("serve", *[a.replace("IMG", str(image)) for a in args], timeout=60)
    assert p.returncode == rc, p.stderr
    assert message in p.stderr, p.stderr
    assert "; ready" not in p.stderr
    assert not os.path.exists("/tmp/never.sock")


def test_sixty_four_devices_start_at_once_and_a_sixty_fifth_is_refused(isolde, image, tmp_path):
    """Every device's driver starts from its own thread, all at the same
    time (the launcher's child must not wait for the other threads); one
    device more than the limit is refused by name."""
    devices = []
    for i in range(64):
        devices += ["--device", f"d{i},image={image},readonly,notify=event"]
    d = Daemon(isolde, *devices, "--control", "@/ctl.sock")
    try:
        d.wait_ready(timeout=120)
        pids = d.driver_pids()
        assert len(pids) == 64 and len(set(pids.values())) == 64, d.stderr
        assert sorted(driver_children(d.proc.pid)) == sorted(pids.values())
        assert d.status("d63")["state"] == "running"
    finally:
        d.close()
    p = isolde.run("serve", *devices, "--device", f"one-more,image={image}", "--control",
                   tmp_path / "c.sock", timeout=120)
    assert p.returncode == 1, p.stderr
    assert "device one-more: there are 64 devices, the most one server runs" in p.stderr, p.stderr
