"""`isolde ctl` and the control socket's JSON protocol (docs/CONTROL.md),
against a real `isolde serve` with several devices: devices and exports
added and removed while another device serves I/O, queries, events, bad
requests naming their field, pipelining, hostile clients and the limits
that bound them, device-del with I/O in flight."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import assert_no_sanitizer_report, kill_session, sanitizer_env, stop
from nbd_helpers import (CMD_WRITE, EIO, MiB, Closed, RawNbd, need_tools, random_file, rss_bytes, run,
                         unix_uri, wait_until)

GENEROUS = 30            # seconds: the tests check answers, not speed
MAX_LINE = 65536         # control.h: CONTROL_MAX_LINE
MAX_CLIENTS = 64         # CONTROL_MAX_CLIENTS
MAX_SUBSCRIBERS = 16     # CONTROL_MAX_SUBSCRIBERS
MAX_PENDING = 16         # CONTROL_MAX_PENDING
MAX_OUTPUT = 1 << 20     # CONTROL_MAX_OUTPUT
HANG_LIMIT = "timeout_ms=600000"  # a stopped driver is not declared hung during a test


class Conn:
    """A raw client of the control socket: JSON lines."""

    def __init__(self, path, timeout=GENEROUS):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, as isolde ctl does: a full listen backlog makes connect
        # wait instead of failing with EAGAIN.
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.buf = b""

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_line(self, data):
        self.s.sendall(data + b"\n")

    def send(self, execute, arguments=None, id=None):
        req = {"execute": execute}
        if arguments is not None:
            req["arguments"] = arguments
        if id is not None:
            req["id"] = id
        self.send_line(json.dumps(req).encode())

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise Closed(f"closed; unterminated: {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def recv(self):
        return json.loads(self.line())

    def reply(self):
        """The next reply, skipping events."""
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg

    def call(self, execute, arguments=None, id=1):
        self.send(execute, arguments, id)
        r = self.reply()
        assert r.get("id") == id, r
        return r

    def ok(self, execute, arguments=None, id=1):
        r = self.call(execute, arguments, id)
        assert "return" in r, r
        return r["return"]

    def closed_by_server(self, timeout=GENEROUS):
        """True once the server closed this connection (what it sent is read and dropped)."""
        self.s.settimeout(timeout)
        try:
            while self.s.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


class Daemon:
    """`isolde serve` with devices and exports and a control socket, in a
    short private directory; stderr drained by a thread. close() kills what
    is left and removes the directory."""

    def __init__(self, isolde, devices, exports, *extra):
        self.isolde = isolde
        self.dir = tempfile.mkdtemp(prefix="isolde-ctl-", dir="/tmp")
        self.control = self.path("c.sock")
        args = ["serve"]
        for d in devices:
            args += ["--device", d]
        for e in exports:
            args += ["--export", e.format(dir=self.dir)]
        self.proc = isolde.start(*args, "--control", self.control, *extra)
        self._lines = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def stderr(self):
        return "".join(self._lines)

    def path(self, name):
        return os.path.join(self.dir, name)

    def sock(self, device):
        return self.path(f"{device}.sock")

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._drain.join(timeout=5)
                raise AssertionError(f"isolde serve exited with {self.proc.returncode}:\n{self.stderr}")
            if "ready" in self.stderr and os.path.exists(self.control):
                return self
            time.sleep(0.02)
        raise AssertionError(f"isolde serve never became ready:\n{self.stderr}")

    def ctl(self, *args, timeout=GENEROUS, check=True):
        p = subprocess.run([str(self.isolde.build.isolde), "ctl", "--control", self.control, *map(str, args)],
                           capture_output=True, text=True, timeout=timeout, env=sanitizer_env())
        assert_no_sanitizer_report(p.stderr)
        if check:
            assert p.returncode == 0, f"isolde ctl {' '.join(map(str, args))}: {p.returncode}\n{p.stderr}"
        return p

    def ctl_json(self, *args, **kw):
        return json.loads(self.ctl(*args, "--json", **kw).stdout)

    def status(self, *args, check=True):
        p = subprocess.run([str(self.isolde.build.isolde), "status", "--control", self.control, *args],
                           capture_output=True, text=True, timeout=GENEROUS, env=sanitizer_env())
        assert_no_sanitizer_report(p.stderr)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    def connect(self):
        return Conn(self.control)

    def devices(self):
        return {d["name"]: d for d in self.ctl_json("query-devices")}

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, timeout=90):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._drain.join(timeout=10)
        return rc

    def finish(self):
        """It survived: it answers, and it stops cleanly."""
        assert self.alive(), self.stderr
        assert self.devices()
        assert self.terminate() == 0, self.stderr
        assert_no_sanitizer_report(self.stderr)

    def close(self):
        kill_session(self.proc)
        self._drain.join(timeout=10)
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        print(f"---- isolde serve stderr ----\n{self.stderr}")


def make_image(tmp_path, name, size=32 * MiB):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def daemon_factory(tool, tmp_path, started):
    """start(n): a daemon with devices d1..dn, each on its own image with an
    NBD export on DIR/dN.sock. d1 is given on the command line, the others
    are added through the control socket, one after the other."""
    def start(n=1, device_opts="", extra=()):
        def spec(i):
            return f"d{i},image={make_image(tmp_path, f'd{i}.img')}{device_opts}"
        d = Daemon(tool, [spec(1)], ["nbd:unix:{dir}/d1.sock,device=d1"], *extra)
        started.append(d)
        d.wait_ready()
        for i in range(2, n + 1):
            d.ctl("device-add", spec(i))
            d.ctl("export-add", f"nbd:unix:{d.sock(f'd{i}')},device=d{i}")
        return d
    return start


@pytest.fixture
def daemon(any_isolde, tmp_path):
    """Daemons of the normal and of the ASan build."""
    started = []
    yield daemon_factory(any_isolde, tmp_path, started)
    for d in started:
        d.close()


@pytest.fixture
def normal_daemon(isolde, tmp_path):
    """The normal build only: for tests that measure memory."""
    started = []
    yield daemon_factory(isolde, tmp_path, started)
    for d in started:
        d.close()


def events_until(conn, predicate, timeout=GENEROUS):
    """Events read from conn up to and including the first for which predicate is true."""
    got = []
    conn.s.settimeout(timeout)
    while True:
        msg = conn.recv()
        assert "event" in msg, msg
        got.append(msg)
        if predicate(msg):
            return got


def subscribe(d):
    c = d.connect()
    assert c.call("events", id="ev") == {"return": {}, "id": "ev"}
    return c


# ---- live changes while another device serves I/O ----

class CopyLoop(threading.Thread):
    """nbdcopy a random file into an NBD export and back, over and over,
    checking each round trip, until stopped."""

    def __init__(self, uri, workdir):
        super().__init__(daemon=True)
        self.uri, self.workdir = uri, workdir
        self.src = random_file(os.path.join(workdir, "src.bin"), 8 * MiB, seed=7)
        self.back = os.path.join(workdir, "back.bin")
        self.rounds, self.failure = 0, None
        self.stopping = threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                run(["nbdcopy", self.src, self.uri], timeout=120)
                run(["nbdcopy", self.uri, self.back], timeout=120)
                with open(self.back, "rb") as f:
                    data = f.read(8 * MiB)
                with open(self.src, "rb") as f:
                    if data != f.read():
                        raise AssertionError("data read back differs")
                self.rounds += 1
        except Exception as e:  # reported by the test
            self.failure = e

    def finish(self):
        self.stopping.set()
        self.join(timeout=300)
        assert self.failure is None, self.failure
        assert self.rounds >= 1


def test_devices_and_exports_come_and_go_while_another_serves_io(daemon, tmp_path):
    need_tools("nbdcopy", "nbdinfo")
    d = daemon(1)
    io = CopyLoop(unix_uri(d.sock("d1")), str(tmp_path))
    io.start()
    try:
        for rnd in range(3):
            img = make_image(tmp_path, f"e{rnd}.img", 16 * MiB)
            out = d.ctl("device-add", f"e{rnd},image={img},qd=8,notify=event").stdout
            assert out.startswith(f"device e{rnd} added: driver pid ")
            sock = d.path(f"e{rnd}.sock")
            out = d.ctl("export-add", f"nbd:unix:{sock},device=e{rnd}").stdout
            xid = int(out.split()[1])
            assert out == f"export {xid} added\n"
            info = json.loads(run(["nbdinfo", "--json", unix_uri(sock)]).stdout)["exports"][0]
            assert info["export-size"] == 16 * MiB
            devs = d.devices()
            assert set(devs) == {"d1", f"e{rnd}"}
            assert devs[f"e{rnd}"]["queue_depth"] == 8 and devs[f"e{rnd}"]["notify"] == "event"
            exports = {x["id"]: x for x in d.ctl_json("query-exports")}
            assert exports[xid]["device"] == f"e{rnd}" and exports[xid]["kind"] == "nbd"
            assert d.ctl("export-del", xid).stdout == f"export {xid} removed\n"
            assert not os.path.exists(sock)
            assert xid not in {x["id"] for x in d.ctl_json("query-exports")}
            assert d.ctl("device-del", f"e{rnd}").stdout == f"device e{rnd} removed\n"
            assert set(d.devices()) == {"d1"}
            # the served device is untouched
            assert nbd_size(d.sock("d1")) == 32 * MiB
    finally:
        io.finish()
    st = d.devices()["d1"]
    assert st["state"] == "running" and st["restarts"] == 0 and st["io"]["errors"] == 0
    d.finish()


def nbd_size(sock):
    return int(run(["nbdinfo", "--size", unix_uri(sock)]).stdout)


def test_query_devices_and_exports(daemon):
    d = daemon(2)
    with d.connect() as c:
        devs = c.ok("query-devices")
        assert sorted(x["name"] for x in devs) == ["d1", "d2"]
        for dev in devs:
            assert dev["state"] == "running" and dev["driver"] == "blk-file"
            assert dev["size"] == 32 * MiB and dev["generation"] == 1 and dev["pid"] > 0
            assert dev["error"] is None and dev["readonly"] is False
            assert set(dev["restarts_by_reason"]) >= {"killed", "hang", "panic"}
            [x] = dev["exports"]
            assert x["kind"] == "nbd" and x["address"] == f"unix:{d.sock(dev['name'])}"
        exports = c.ok("query-exports")
        assert sorted((x["device"], x["kind"]) for x in exports) == [("d1", "nbd"), ("d2", "nbd")]
        for x in exports:
            assert isinstance(x["id"], int) and x["connections"] == 0 and x["inflight"] == 0
            assert x["spec"] == f"nbd:unix:{d.sock(x['device'])}"
            assert x["export"]["address"] == f"unix:{d.sock(x['device'])}"
        # a connection shows up in the export's count
        with RawNbd(d.sock("d2")) as nbd:
            nbd.handshake()
            nbd.read(0, 4096)
            x = {x["device"]: x for x in c.ok("query-exports")}
            assert x["d2"]["connections"] == 1 and x["d1"]["connections"] == 0
        # isolde ctl --json prints the same "return"
        assert sorted(x["name"] for x in d.ctl_json("query-devices")) == ["d1", "d2"]
        human = d.ctl("query-devices").stdout.splitlines()
        assert human[0].split()[:3] == ["NAME", "STATE", "DRIVER"]
        assert sorted(line.split()[0] for line in human[1:]) == ["d1", "d2"]
        assert "nbd" in d.ctl("query-exports").stdout
        metrics = c.ok("metrics")
        assert isinstance(metrics, str) and 'device="d1"' in metrics and 'device="d2"' in metrics
        # the same series through isolde ctl (values move between two calls)
        assert metric_names(d.ctl("metrics").stdout) == metric_names(metrics)
        assert metric_names(d.ctl_json("metrics")) == metric_names(metrics)
    d.finish()


def metric_names(text):
    """The series of a Prometheus text: names with their labels."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_status_picks_a_device(daemon):
    d = daemon(2)
    first = json.loads(d.status("--json").stdout)
    assert first["name"] in ("d1", "d2") and first["state"] == "running"
    d2 = json.loads(d.status("--json", "--device", "d2").stdout)
    assert d2["name"] == "d2" and d2["exports"][0]["address"] == f"unix:{d.sock('d2')}"
    human = d.status("--device", "d2").stdout
    assert "state" in human and "running" in human and "d2" in human
    p = d.status("--device", "nosuch", check=False)
    assert p.returncode == 1 and "no device nosuch" in p.stderr and "d1" in p.stderr
    # the old protocol's plain line: the first device, then close
    with d.connect() as c:
        c.send_line(b"status")
        assert c.recv()["state"] == "running"
        assert c.closed_by_server()
    d.finish()


# ---- events ----

def test_events_report_a_driver_kill_for_that_device_only(daemon, tmp_path):
    d = daemon(2)
    ev = subscribe(d)
    pid = d.devices()["d1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    got = events_until(ev, lambda e: e["event"] == "driver-recovered")
    assert [e["event"] for e in got] == ["driver-failed", "driver-recovered"], got
    failed, recovered = got
    assert failed["device"] == recovered["device"] == "d1"
    assert failed["reason"] == "killed" and failed["generation"] == 1
    assert recovered["generation"] == 2 and recovered["recovery_us"] > 0
    assert isinstance(failed["time"], float)
    # Nothing about d2 came before a marker event that follows everything above.
    img = make_image(tmp_path, "m.img")
    d.ctl("device-add", f"marker,image={img}")
    got = events_until(ev, lambda e: e["event"] == "device-added")
    assert [(e["event"], e["device"]) for e in got] == [("device-added", "marker")], got
    assert got[0]["image"] == str(img) and got[0]["size"] == 32 * MiB
    devs = d.devices()
    assert devs["d1"]["restarts"] == 1 and devs["d1"]["restarts_by_reason"]["killed"] == 1
    assert devs["d2"]["restarts"] == 0 and devs["d2"]["generation"] == 1
    ev.close()
    d.finish()


def test_events_for_devices_and_exports(daemon, tmp_path):
    d = daemon(1)
    ev = subscribe(d)
    ev2 = subscribe(d)
    img = make_image(tmp_path, "e.img")
    d.ctl("device-add", f"e1,image={img}")
    sock = d.path("e1.sock")
    xid = d.ctl_json("export-add", f"nbd:unix:{sock},device=e1")["id"]
    d.ctl("export-del", xid)
    d.ctl("device-del", "e1")
    for conn in (ev, ev2):
        got = events_until(conn, lambda e: e["event"] == "device-removed")
        assert [(e["event"], e["device"]) for e in got] == [
            ("device-added", "e1"), ("export-added", "e1"), ("export-removed", "e1"), ("device-removed", "e1")]
        assert got[1]["id"] == got[2]["id"] == xid and got[1]["spec"] == f"nbd:unix:{sock}"
        assert got[3]["failed"] is False
    # commands on an event stream are refused, the stream stays
    r = ev.call("query-devices", id=5)
    assert r["error"]["class"] == "InvalidState" and r["id"] == 5
    ev.close()
    ev2.close()
    d.finish()


class Lines(threading.Thread):
    """Collects the lines a process prints."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def find(self, what):
        return [line for line in self.lines if what in line]


def test_ctl_events_prints_events_until_interrupted(daemon, tmp_path):
    d = daemon(1)
    cmd = [str(d.isolde.build.isolde), "ctl", "--control", d.control, "events"]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=sanitizer_env()) for extra in ([], ["--json"])]
    try:
        human, raw = [Lines(p) for p in procs]
        # Once both print the events of an export coming and going, both are subscribed.
        sock = d.path("x.sock")

        def both_listen():
            xid = d.ctl_json("export-add", f"nbd:unix:{sock}")["id"]
            d.ctl("export-del", xid)
            time.sleep(0.1)
            return human.find("export-removed") and raw.find("export-removed")
        wait_until(both_listen, GENEROUS, "both ctl events to print events")
        img = make_image(tmp_path, "e.img")
        d.ctl("device-add", f"e1,image={img}")
        wait_until(lambda: human.find(" device-added e1 ") and raw.find('"device-added"'), GENEROUS,
                   "the device-added event")
        [line] = human.find(" device-added e1 ")
        assert f"image={img}" in line and "size=33554432" in line, line
        [ev] = [json.loads(x) for x in raw.find('"device-added"')]
        assert ev["event"] == "device-added" and ev["device"] == "e1" and ev["image"] == str(img)
        procs[0].send_signal(signal.SIGINT)
        assert procs[0].wait(timeout=GENEROUS) == 0, procs[0].stderr.read()
        # The server stopping ends the stream too: exit 0.
        assert d.terminate() == 0
        assert procs[1].wait(timeout=GENEROUS) == 0, procs[1].stderr.read()
        for p in procs:
            assert_no_sanitizer_report(p.stderr.read())
    finally:
        for p in procs:
            kill_session(p)


# ---- bad requests: one error each, naming the field; the connection stays ----

def bad_requests(img):
    r = []

    def add(args, field, cls="InvalidArgument"):
        r.append(({"execute": "device-add", "arguments": args}, cls, field))

    add({"image": str(img)}, "name")
    add({"name": "x1"}, "image")
    add({"name": "bad name!", "image": str(img)}, "name")
    add({"name": "x" * 33, "image": str(img)}, "name")
    add({"name": 7, "image": str(img)}, "name")
    add({"name": "x1", "image": ""}, "image")
    add({"name": "x1", "image": "/a,b"}, "image")
    add({"name": "x1", "image": str(img), "qd": "8"}, "qd")
    add({"name": "x1", "image": str(img), "qd": 0}, "qd")
    add({"name": "x1", "image": str(img), "qd": 5000}, "qd")
    add({"name": "x1", "image": str(img), "qd": 8.0}, "qd")
    add({"name": "x1", "image": str(img), "notify": "fast"}, "notify")
    add({"name": "x1", "image": str(img), "domain": "container"}, "domain")
    add({"name": "x1", "image": str(img), "domain": 1}, "domain")
    add({"name": "x1", "image": str(img), "readonly": "yes"}, "readonly")
    add({"name": "x1", "image": str(img), "direct": 1}, "direct")
    add({"name": "x1", "image": str(img), "shield": None}, "shield")
    add({"name": "x1", "image": str(img), "policy": 3}, "policy")
    add({"name": "x1", "image": str(img), "driver": ""}, "driver")
    add({"name": "x1", "image": str(img), "colour": "red"}, "colour")
    add({"spec": f"x1,image={img}", "qd": 8}, "qd")
    add({"spec": 5}, "spec")
    add({"spec": f"x1,image={img},qd=0"}, "qd")          # the daemon's parser names it
    add({"spec": f"x1,image={img},notify=fast"}, "notify")
    add({"spec": f"x1,image={img},domain=jail"}, "domain")
    add({"spec": "x1"}, "image")
    add({"spec": f",image={img}"}, "name")
    add({"spec": f"d1,image={img}"}, "name")             # there is a d1 already
    add({"name": "x1", "image": "/nonexistent/dir/x.img"}, None, "CommandFailed")

    def cmd(execute, args, field, cls="InvalidArgument"):
        r.append(({"execute": execute, "arguments": args}, cls, field))

    cmd("device-del", {}, "name")
    cmd("device-del", {"name": 3}, "name")
    cmd("device-del", {"name": "nosuch"}, "name")
    cmd("device-del", {"name": "d1", "timeout-ms": -1}, "timeout-ms")
    cmd("device-del", {"name": "d1", "timeout-ms": "5"}, "timeout-ms")
    cmd("device-del", {"name": "d1", "timeout-ms": 3600001}, "timeout-ms")
    cmd("device-del", {"name": "d1", "timeout": 5}, "timeout")
    cmd("export-add", {}, "spec")
    cmd("export-add", {"spec": ""}, "spec")
    cmd("export-add", {"spec": ["nbd"]}, "spec")
    cmd("export-add", {"spec": "bogus:x", "device": "d1"}, "spec")
    cmd("export-add", {"spec": "nbd:unix:/tmp/x.sock", "device": "nosuch"}, "device")
    cmd("export-add", {"spec": "nbd:unix:/tmp/x.sock,device=d1", "device": "d1"}, "device")
    cmd("export-add", {"spec": "nbd:unix:/tmp/x.sock", "device": "no good"}, "device")
    cmd("export-del", {}, "id")
    cmd("export-del", {"id": "1"}, "id")
    cmd("export-del", {"id": -1}, "id")
    cmd("export-del", {"id": 2 ** 32}, "id")
    cmd("export-del", {"id": 999}, "id")
    for name in ("query-devices", "query-exports", "metrics", "events"):
        cmd(name, {"verbose": True}, "verbose")
    r.append(({"execute": "reboot"}, "CommandNotFound", "execute"))
    r.append(({"arguments": {}}, "InvalidRequest", "execute"))
    r.append(({"execute": 5}, "InvalidRequest", "execute"))
    r.append(({"execute": None}, "InvalidRequest", "execute"))
    r.append(({"execute": "query-devices", "arguments": []}, "InvalidRequest", "arguments"))
    r.append(({"execute": "query-devices", "arguments": "x"}, "InvalidRequest", "arguments"))
    r.append(({"execute": "query-devices", "exec-oob": 1}, "InvalidRequest", "exec-oob"))
    return r


def test_bad_requests_each_get_one_error_naming_the_field(daemon, tmp_path):
    d = daemon(1)
    img = make_image(tmp_path, "x.img")
    with d.connect() as c:
        for n, (req, cls, field) in enumerate(bad_requests(img)):
            req["id"] = n
            c.send_line(json.dumps(req).encode())
            r = c.reply()
            assert r.get("id") == n, (req, r)
            assert "error" in r, (req, r)
            assert r["error"]["class"] == cls, (req, r)
            assert r["error"].get("field") == field, (req, r)
            assert r["error"]["desc"], r
        # Lines that are not requests at all: no id to echo.
        for line, cls in [(b"not json", "ParseError"), (b"{", "ParseError"), (b"[1, 2]", "InvalidRequest"),
                          (b'"query-devices"', "InvalidRequest"), (b"42", "InvalidRequest"),
                          (b'{"execute": "query-devices", "execute": "metrics"}', "ParseError"),
                          (b'{"execute": "export-del", "arguments": {"id": 99999999999999999999}}', "ParseError"),
                          (b'{"execute": "query-devices", "id": "\xff\xfe"}', "ParseError"),
                          (b'{"execute": "query-devices", "id": "a\\u0000b"}', "ParseError"),
                          (b'{"execute": "query-devices"} trailing', "ParseError"),
                          (b"\x00\x01\x02\x03", "ParseError")]:
            c.send_line(line)
            r = c.reply()
            assert r["error"]["class"] == cls and "id" not in r, (line, r)
        # Blank lines are no requests and get no answer; CRLF is fine.
        c.send_line(b"")
        c.send_line(b"   ")
        c.s.sendall(b'{"execute": "query-devices", "id": "crlf"}\r\n')
        r = c.reply()
        assert r["id"] == "crlf" and r["return"][0]["name"] == "d1"
        # Any JSON value is an id, echoed as it came.
        for rid in [None, 0, -5, 1.5, "x" * 1000, [1, {"a": [True]}], {"k": "v"}]:
            c.send_line(json.dumps({"execute": "query-exports", "id": rid}).encode())
            r = c.reply()
            assert "id" in r and r["id"] == rid and "return" in r, r
        # No id, no id in the answer.
        c.send_line(b'{"execute": "query-exports"}')
        r = c.reply()
        assert "return" in r and "id" not in r, r
        # No device or export was made by any of it.
        assert [x["name"] for x in c.ok("query-devices")] == ["d1"]
        assert len(c.ok("query-exports")) == 1
    d.finish()


def test_ctl_reports_errors_with_their_field(daemon, tmp_path):
    d = daemon(1)
    p = d.ctl("device-add", f"x1,image={make_image(tmp_path, 'x.img')},qd=9999", check=False)
    assert p.returncode == 1 and p.stdout == ""
    assert "field qd" in p.stderr and "InvalidArgument" in p.stderr and "queue depth" in p.stderr
    p = d.ctl("device-del", "nosuch", check=False)
    assert p.returncode == 1 and "no device nosuch" in p.stderr and "field name" in p.stderr
    p = d.ctl("export-del", "77", check=False)
    assert p.returncode == 1 and "field id" in p.stderr
    p = d.ctl("export-add", "nbd:unix:/tmp/x.sock,device=nosuch", check=False)
    assert p.returncode == 1 and "field device" in p.stderr
    d.finish()


def test_ctl_usage_errors(isolde, tmp_path):
    exe = str(isolde.build.isolde)
    sock = str(tmp_path / "none.sock")

    def ctl(*args):
        return subprocess.run([exe, "ctl", *args], capture_output=True, text=True, timeout=GENEROUS)

    for args in [[], ["query-devices"], ["--control", sock], ["--control", sock, "reboot"],
                 ["--control", sock, "device-add"], ["--control", sock, "device-del"],
                 ["--control", sock, "export-add"], ["--control", sock, "export-del"],
                 ["--control", sock, "export-del", "x1"], ["--control", sock, "export-del", "-1"],
                 ["--control", sock, "query-devices", "extra"], ["--control", sock, "device-del", "a", "b"],
                 ["--control", sock, "query-devices", "--timeout-ms", "5"],
                 ["--control", sock, "device-del", "a", "--timeout-ms", "soon"],
                 ["--control", sock, "device-del", "a", "--timeout-ms", "0"],
                 ["--control", sock, "query-devices", "--bogus"], ["--control"]]:
        p = ctl(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("isolde ctl: ") and "usage: isolde ctl" in p.stderr, (args, p.stderr)
        assert p.stdout == ""
    p = ctl("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: isolde ctl") and "device-add SPEC" in p.stdout
    p = ctl("--control", sock, "query-devices")
    assert p.returncode == 1 and "cannot reach a server" in p.stderr
    p = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert "  ctl " in p.stdout


# ---- pipelining ----

def test_pipelined_requests_are_answered_by_id(daemon):
    d = daemon(2)
    reqs = []
    for i in range(60):
        kind = i % 5
        if kind == 0:
            reqs.append(({"execute": "query-devices", "id": f"q{i}"}, "devices"))
        elif kind == 1:
            reqs.append(({"execute": "query-exports", "id": i}, "exports"))
        elif kind == 2:
            reqs.append(({"execute": "metrics", "id": [i]}, "metrics"))
        elif kind == 3:
            reqs.append(({"execute": "device-del", "arguments": {"name": "nosuch"}, "id": {"n": i}}, "name"))
        else:
            reqs.append(({"execute": "export-del", "arguments": {"id": "x"}, "id": i * 1000}, "id"))
    with d.connect() as c:
        # all at once, more than a client may have pending: the rest wait their turn
        c.s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r, _ in reqs))
        answers = [c.reply() for _ in reqs]
        by_id = {json.dumps(a["id"], sort_keys=True): a for a in answers}
        assert len(by_id) == len(reqs)
        for req, what in reqs:
            a = by_id[json.dumps(req["id"], sort_keys=True)]
            if what == "devices":
                assert sorted(x["name"] for x in a["return"]) == ["d1", "d2"]
            elif what == "exports":
                assert len(a["return"]) == 2
            elif what == "metrics":
                assert isinstance(a["return"], str)
            else:
                assert a["error"]["field"] == what, a
        # and in order when each waits for the last
        for i in range(5):
            assert c.call("query-devices", id=i)["id"] == i
    d.finish()


def test_half_closed_client_gets_its_answers(daemon):
    """What `printf '...' | socat - UNIX-CONNECT:SOCK` does: send, shut the
    write side, read to the end."""
    d = daemon(1)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(GENEROUS)
    s.connect(d.control)
    s.sendall(b'{"execute": "query-devices", "id": 1}\n{"execute": "query-exports", "id": 2}\n'
              b'{"execute": "metrics", "id": 3}')  # the last without a newline
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    ids = sorted(json.loads(line)["id"] for line in data.splitlines())
    assert ids == [1, 2, 3]
    d.finish()


def test_answers_to_clients_that_left_are_dropped(daemon, tmp_path):
    """A command read is carried out even if its client leaves before the
    answer; the answer, arriving for a client that is gone, is dropped."""
    d = daemon(1)
    for i in range(4):
        img = make_image(tmp_path, f"gone{i}.img")
        with d.connect() as c:
            # A driver takes milliseconds to start: the answer comes after the close.
            c.send("device-add", {"name": f"gone{i}", "image": str(img)}, id=1)
            c.s.sendall(b"".join(b'{"execute": "query-devices", "id": %d}\n' % n for n in range(MAX_PENDING + 4)))
        wait_until(lambda: f"gone{i}" in d.devices(), GENEROUS, f"device gone{i}")
    for i in range(4):
        with d.connect() as c:
            c.send("device-del", {"name": f"gone{i}"}, id=1)
        wait_until(lambda: f"gone{i}" not in d.devices(), GENEROUS, f"device gone{i} removed")
    # and while a client is evicted with answers pending
    idle = [d.connect() for _ in range(MAX_CLIENTS - 1)]
    try:
        busy = d.connect()
        busy.s.sendall(b"".join(b'{"execute": "query-exports", "id": %d}\n' % n for n in range(MAX_PENDING)))
        crowd = [d.connect() for _ in range(MAX_CLIENTS)]
        for c in crowd:
            c.close()
        busy.close()
    finally:
        for c in idle:
            c.close()
    d.finish()


# ---- hostile clients ----

def test_garbage_and_overlong_lines(daemon):
    d = daemon(1)
    rnd = random.Random(3)
    with d.connect() as c:
        for _ in range(200):
            junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))).replace(b"\n", b"")
            if not junk.strip(b" \t\r"):
                continue
            c.send_line(junk)
            r = c.reply()
            assert r["error"]["class"] in ("ParseError", "InvalidRequest"), (junk, r)
        assert c.call("query-devices", id=1)["return"][0]["name"] == "d1"
    # A line just within the limit is read (and answered: not JSON).
    with d.connect() as c:
        c.send_line(b'{"execute": "query-devices", "id": 1}' + b" " * (MAX_LINE - 39))
        assert c.reply()["id"] == 1
        c.send_line(b"x" * MAX_LINE)
        assert c.reply()["error"]["class"] == "ParseError"
        assert c.call("query-devices", id=2)["id"] == 2
    # One byte more: an error, then the connection closes.
    for line in (b"y" * (MAX_LINE + 1) + b"\n", b"z" * (4 * MAX_LINE)):
        with d.connect() as c:
            try:
                c.s.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = b""
            try:
                while chunk := c.s.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
            if reply:
                r = json.loads(reply.splitlines()[0])
                assert r["error"]["class"] == "ParseError" and str(MAX_LINE) in r["error"]["desc"]
    assert "longer than 65536 bytes" in d.stderr
    d.finish()


def test_many_idle_clients_still_let_ctl_and_status_in(daemon):
    d = daemon(1)
    subscribers = [subscribe(d) for _ in range(MAX_SUBSCRIBERS)]
    idle = [d.connect() for _ in range(2 * MAX_CLIENTS)]
    try:
        for _ in range(3):
            assert [x["name"] for x in d.ctl_json("query-devices")] == ["d1"]
            assert json.loads(d.status("--json").stdout)["state"] == "running"
            assert "running" in d.status().stdout
        # One more event stream is refused, in words; the others stay.
        with d.connect() as c:
            r = c.call("events", id=1)
            assert r["error"]["class"] == "Busy", r
        d.ctl("device-del", "d1", "--timeout-ms", "5000")
        for s in subscribers:
            got = events_until(s, lambda e: e["event"] == "device-removed")
            assert got[-1]["device"] == "d1"
        # Most idle clients were let go to make room.
        closed = sum(c.closed_by_server(timeout=0.05) for c in idle)
        assert closed >= len(idle) - (MAX_CLIENTS - MAX_SUBSCRIBERS), closed
    finally:
        for c in idle + subscribers:
            c.close()
    assert d.alive()
    assert d.terminate() == 0, d.stderr
    assert_no_sanitizer_report(d.stderr)


def test_a_subscriber_that_never_reads_is_dropped_not_buffered(normal_daemon):
    """Events for a client that does not read pile up to CONTROL_MAX_OUTPUT,
    then it is dropped: the server's memory does not follow the events."""
    d = normal_daemon(1)
    stalled = subscribe(d)          # never reads again
    reader = subscribe(d)
    counted = [0]

    def count():
        try:
            while chunk := reader.s.recv(1 << 20):
                counted[0] += len(chunk)
        except OSError:
            pass
    t = threading.Thread(target=count, daemon=True)
    t.start()
    rss_before = rss_bytes(d.proc.pid)
    # Long specs make big events: about 450 bytes per export added and removed.
    spec = "nbd:unix:" + d.path('x{}.sock') + ",name=" + "n" * 250
    target = 12 * MAX_OUTPUT
    with d.connect() as c:
        n = 0
        while counted[0] < target:
            batch = []
            for i in range(8):
                batch.append(json.dumps({"execute": "export-add", "arguments": {"spec": spec.format(i)}, "id": n}))
                n += 1
            c.s.sendall("\n".join(batch).encode() + b"\n")
            ids = [c.reply()["return"]["id"] for _ in batch]
            assert len(ids) == 8
            for xid in ids:
                c.send("export-del", {"id": xid}, id=n)
                n += 1
            for _ in ids:
                assert "return" in c.reply()
    rss_after = rss_bytes(d.proc.pid)
    growth = rss_after - rss_before
    assert growth < 6 * MAX_OUTPUT, f"the server grew by {growth >> 10} KiB for {counted[0] >> 10} KiB of events"
    # The stalled subscriber was dropped: what it can still read is what the
    # server held for it (its output bound) plus the kernel's socket buffer.
    stalled.s.settimeout(GENEROUS)
    held = 0
    try:
        while chunk := stalled.s.recv(1 << 20):
            held += len(chunk)
    except ConnectionResetError:
        pass
    assert held < MAX_OUTPUT + (1 << 20), held
    assert counted[0] >= target
    assert "output unread; disconnecting" in d.stderr
    reader.close()
    stalled.close()
    d.finish()


# ---- device-del with I/O in flight ----

def stopped_driver_with_writes(d, name, nwrites=8):
    """Stop the device's driver (SIGSTOP: it answers nothing, and with a
    10-minute hang limit nobody restarts it), then put writes in flight."""
    pid = d.devices()[name]["pid"]
    os.kill(pid, signal.SIGSTOP)
    nbd = RawNbd(d.sock(name), timeout=GENEROUS).handshake()
    handles = {nbd.request(CMD_WRITE, i * 65536, 65536, payload=bytes([i + 1]) * 65536) for i in range(nwrites)}
    wait_until(lambda: d.devices()[name]["inflight"] > 0, GENEROUS, "writes in flight")
    return pid, nbd, handles


def replies(nbd, handles):
    """The errors of the replies to handles, until they are all in or the connection closed."""
    got = {}
    try:
        while len(got) < len(handles):
            h, err, _ = nbd.reply()
            assert h in handles
            got[h] = err
    except (Closed, ConnectionResetError):
        pass
    return got


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_device_del_drains_io_in_flight(daemon, tmp_path):
    d = daemon(2, device_opts="," + HANG_LIMIT)
    ev = subscribe(d)
    pid, nbd, handles = stopped_driver_with_writes(d, "d2")
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("p", d.ctl("device-del", "d2", "--timeout-ms", "20000",
                                                                  check=False)))
    t.start()
    time.sleep(1.0)
    assert t.is_alive(), "device-del returned while the driver held requests"
    assert nbd_size(d.sock("d1")) == 32 * MiB       # the other device is not held up
    os.kill(pid, signal.SIGCONT)
    got = replies(nbd, handles)
    t.join(timeout=GENEROUS)
    assert done["p"].returncode == 0 and done["p"].stdout == "device d2 removed\n", done["p"].stderr
    assert got == {h: 0 for h in handles}, got      # drained: every write succeeded
    nbd.close()
    removed = events_until(ev, lambda e: e["event"] == "device-removed")[-1]
    assert removed["device"] == "d2" and removed["failed"] is False
    with open(tmp_path / "d2.img", "rb") as f:
        assert f.read(65536) == b"\x01" * 65536
    assert set(d.devices()) == {"d1"}
    wait_until(lambda: gone(pid), GENEROUS, "the driver to end with its device")
    d.finish()


def test_device_del_fails_io_that_does_not_drain_after_its_timeout(daemon):
    d = daemon(2, device_opts="," + HANG_LIMIT)
    ev = subscribe(d)
    pid, nbd, handles = stopped_driver_with_writes(d, "d2")
    try:
        start = time.monotonic()
        p = d.ctl("device-del", "d2", "--timeout-ms", "1500", check=False)
        took = time.monotonic() - start
        assert p.returncode == 0 and p.stdout == "device d2 removed\n", p.stderr
        assert 1.4 <= took < 15, took
        got = replies(nbd, handles)
        assert all(err == EIO for err in got.values()), got  # failed, never left hanging
        removed = events_until(ev, lambda e: e["event"] == "device-removed")[-1]
        assert removed["device"] == "d2" and isinstance(removed["failed"], bool)
        assert set(d.devices()) == {"d1"}
        wait_until(lambda: gone(pid), GENEROUS, "the stopped driver to end with its device")
        assert nbd_size(d.sock("d1")) == 32 * MiB
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        nbd.close()
    assert d.alive()
    # serve's exit status says a device had failed: this one, given up on
    assert d.terminate() == (1 if removed["failed"] else 0), d.stderr
    assert_no_sanitizer_report(d.stderr)
