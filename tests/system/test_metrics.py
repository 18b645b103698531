"""isolde serve's Prometheus metrics (docs/METRICS.md), fetched with curl and
read with prometheus_client's parser of the text format, after a strict
check of every line: the values follow what happened (I/O through an NBD
export with nbdcopy, drivers SIGKILLed), `isolde ctl metrics` gives the
same families, and hostile HTTP clients (idle connections, huge headers,
bodies, slowloris) neither lock the listener up nor harm it.

The hostile-client tests run against `isolde serve` and against
tests/unit/test_metrics --serve, which serves a fake daemon's metrics (its
export spec holds every character a label value must escape, and bytes
that are not UTF-8), both in the normal and the ASan+UBSan build."""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import conftest
from conftest import ASAN_BUILD, BUILD, assert_no_sanitizer_report, sanitizer_env
from nbd_helpers import MiB, Served, random_file, run, same_files, wait_until

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CONNECTIONS = 16      # src/export/metrics.c: METRICS_MAX_CONNECTIONS
TIMEOUT_S = 10            # METRICS_TIMEOUT_S
GENEROUS = 30             # seconds: these tests check answers, not speed

FAMILIES = {
    "isolde_devices": "gauge",
    "isolde_device_up": "gauge",
    "isolde_device_state": "gauge",
    "isolde_device_generation": "gauge",
    "isolde_device_inflight": "gauge",
    "isolde_device_requests_total": "counter",
    "isolde_device_bytes_total": "counter",
    "isolde_device_errors_total": "counter",
    "isolde_device_request_duration_seconds": "histogram",
    "isolde_device_restarts_total": "counter",
    "isolde_device_replayed_total": "counter",
    "isolde_device_recovery_seconds": "histogram",
    "isolde_device_denials_total": "counter",
    "isolde_device_protocol_violations_total": "counter",
    "isolde_device_log_suppressed_total": "counter",
    "isolde_device_snapshot_age_seconds": "gauge",
    "isolde_export_connections": "gauge",
    "isolde_export_inflight": "gauge",
    "isolde_export_info": "gauge",
}
STATES = ["running", "down", "backoff", "starting", "failed"]
REASONS = ["cpu-exception", "mmu-exception", "panic", "policy-kill", "hang", "protocol-violation", "killed",
           "start-failure", "silent-corruption", "error-status", "unreachable"]  # isolde_failure_name

# ---- the text format, checked line by line ----

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
HELP_RE = re.compile(rf"# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)")
TYPE_RE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
SAMPLE_RE = re.compile(rf"({NAME})(?:\{{{LABEL}(?:,{LABEL})*\}})? ([^ ]+)")
SUFFIXES = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}


def check_exposition(text):
    """Every line is a HELP, a TYPE or a sample of the family the TYPE before
    it named, with a value that is a number; each family has one HELP and
    one TYPE. Returns {family: type}."""
    assert text.endswith("\n"), text[-200:]
    types, helps, current = {}, set(), None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        if m := HELP_RE.fullmatch(line):
            assert m[1] not in helps, f"line {n}: a second HELP for {m[1]}"
            helps.add(m[1])
        elif m := TYPE_RE.fullmatch(line):
            assert m[1] not in types, f"line {n}: a second TYPE for {m[1]}"
            assert m[1] in helps, f"line {n}: TYPE before HELP for {m[1]}"
            types[m[1]] = m[2]
            current = m[1]
        elif m := SAMPLE_RE.fullmatch(line):
            assert current, f"line {n}: a sample before any TYPE: {line!r}"
            names = [current + s for s in SUFFIXES[types[current]]]
            assert m[1] in names, f"line {n}: {m[1]} outside its family {current}"
            float(m[2])  # a number, +Inf, -Inf or NaN
        else:
            raise AssertionError(f"line {n} is not of the text format: {line!r}")
    return types


class Metrics:
    """One fetched text: checked, then parsed by prometheus_client."""

    def __init__(self, text):
        self.text = text
        self.types = check_exposition(text)
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [(s.name, s.labels, s.value) for f in self.families.values() for s in f.samples]
        for name, typ in self.types.items():
            if typ == "histogram":
                for labels in {tuple(sorted((k, v) for k, v in l.items() if k != "le"))
                               for n, l, _ in self.samples if n == name + "_bucket"}:
                    self.histogram(name, **dict(labels))

    def get(self, name, **labels):
        hits = [v for n, l, v in self.samples if n == name and l == labels]
        assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
        return hits[0]

    def histogram(self, name, **labels):
        """(buckets [(le, cumulative count)], sum, count), checked consistent:
        bounds ascending, counts not decreasing, +Inf last and equal to count."""
        buckets = [(l["le"], v) for n, l, v in self.samples
                   if n == name + "_bucket" and {k: x for k, x in l.items() if k != "le"} == labels]
        count, total = self.get(name + "_count", **labels), self.get(name + "_sum", **labels)
        assert buckets and buckets[-1][0] == "+Inf", buckets
        bounds = [float(le) for le, _ in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), bounds
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{name}{labels}: buckets decrease: {buckets}"
        assert counts[-1] == count, f"{name}{labels}: +Inf {counts[-1]} != count {count}"
        assert total >= 0 and (count > 0 or total == 0)
        return buckets, total, count


# ---- HTTP ----

class Answer:
    def __init__(self, rc, status, headers, body, stderr):
        self.rc, self.status, self.headers, self.body, self.stderr = rc, status, headers, body, stderr

    @property
    def text(self):
        return self.body.decode("utf-8")  # strictly: the format is UTF-8


def curl(url, *args, timeout=GENEROUS):
    """One request with curl; the status, headers (lower-case names) and body."""
    with tempfile.TemporaryDirectory() as d:
        hdr, body = os.path.join(d, "headers"), os.path.join(d, "body")
        p = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-D", hdr, "-o", body,
                            "-w", "%{http_code}", *args, url],
                           capture_output=True, text=True, timeout=timeout + 10)
        headers = {}
        if os.path.exists(hdr):
            with open(hdr, encoding="latin-1", newline="") as f:
                # The last answer's headers (curl writes every answer's).
                for line in f.read().rstrip("\r\n").split("\r\n\r\n")[-1].split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
        data = b""
        if os.path.exists(body):
            with open(body, "rb") as f:
                data = f.read()
        return Answer(p.returncode, int(p.stdout or 0), headers, data, p.stderr)


def split_address(address):
    """tcp:IP:PORT or tcp:[IP]:PORT -> (ip, port)"""
    m = re.fullmatch(r"tcp:(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d+)", address)
    assert m, address
    return (m[1] or m[2]), int(m[3])


def listening_on(port):
    """The local addresses listening on a TCP port (/proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                ip, p = fields[1].split(":")
                if int(p, 16) == port and fields[3] == "0A":
                    found.append(ip)
    return found


class Listener:
    """A metrics listener under test: address, url, and its process."""
    address = None
    proc = None

    @property
    def url(self):
        ip, port = split_address(self.address)
        return f"http://{'[' + ip + ']' if ':' in ip else ip}:{port}/metrics"

    @property
    def sockaddr(self):
        return split_address(self.address)

    def fetch(self):
        a = curl(self.url)
        assert a.rc == 0 and a.status == 200, f"curl exited {a.rc}, HTTP {a.status}: {a.stderr}"
        assert a.headers.get("content-type") == CONTENT_TYPE, a.headers
        return Metrics(a.text)

    def alive(self):
        return self.proc.poll() is None


class FakeListener(Listener):
    """tests/unit/test_metrics --serve ADDRESS: metrics.c on a fake daemon."""

    def __init__(self, build_root, address="tcp:127.0.0.1:0"):
        exe = build_root / "tests" / "unit" / "test_metrics"
        if not exe.exists():
            pytest.fail(f"{exe} is not built: run ninja in {build_root}")
        self.proc = subprocess.Popen([str(exe), "--serve", address], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=sanitizer_env(),
                                     start_new_session=True)
        self._err = []
        line = self.proc.stdout.readline()
        threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True).start()
        assert line.startswith("metrics on "), f"{line!r}: {self.stderr}"
        self.address = line.split()[-1]

    @property
    def stderr(self):
        return "".join(self._err)

    def close(self):
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=GENEROUS)
            except subprocess.TimeoutExpired:
                conftest.kill_session(self.proc)
        time.sleep(0.1)
        print(f"---- test_metrics --serve stderr ----\n{self.stderr}")
        assert rc == 0, f"test_metrics --serve exited {rc}:\n{self.stderr}"
        assert_no_sanitizer_report(self.stderr)


class ServeListener(Listener):
    """isolde serve with an NBD export, a control socket and --metrics."""

    def __init__(self, isolde, image, address="tcp:127.0.0.1:0"):
        helped = isolde.run("serve", "--help")
        if "--metrics" not in helped.stdout + helped.stderr:
            pytest.fail("isolde serve has no --metrics option")
        self.served = Served(isolde, image, "--metrics", address).wait_ready()
        self.proc = self.served.proc
        m = re.search(r"metrics on (tcp:\S+)", self.served.stderr)
        assert m, self.served.stderr
        self.address = m[1]

    @property
    def stderr(self):
        return self.served.stderr

    def close(self):
        try:
            if self.served.alive():
                rc = self.served.terminate()
                assert rc == 0, f"isolde serve exited {rc}:\n{self.stderr}"
            assert_no_sanitizer_report(self.stderr)
        finally:
            self.served.close()


def build_of(kind):
    return BUILD if kind == "normal" else ASAN_BUILD


@pytest.fixture
def fake():
    started = []

    def start(kind="normal", **kw):
        lst = FakeListener(build_of(kind), **kw)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        lst.close()


@pytest.fixture
def serve(image):
    started = []

    def start(isolde, **kw):
        lst = ServeListener(isolde, image, **kw)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        lst.close()


@pytest.fixture(params=["fake-normal", "fake-asan", "serve-normal", "serve-asan"])
def listener(request, fake, serve):
    """Each listener the hostile-client tests run against."""
    kind, build = request.param.split("-")
    if kind == "fake":
        return fake(build)
    b = conftest.Build(build_of(build), build)
    if not b.available():
        pytest.fail(f"isolde is not built in {b.root}")
    return serve(conftest.Isolde(b))


def need_tools(*tools):
    conftest.need_tools(*tools, packages="curl, libnbd-bin, python3-prometheus-client")


# ---- what the metrics say ----

def test_fake_daemon_metrics_parse_and_escape(fake):
    """The fake daemon's known snapshots, read back through a real HTTP
    client and a real parser: every family, every label escaped."""
    need_tools("curl")
    m = fake().fetch()
    assert m.types == FAMILIES
    assert m.get("isolde_devices") == 2
    assert m.get("isolde_device_up", device="disk0") == 1
    assert m.get("isolde_device_up", device="disk-1.b") == 0
    for s in STATES:
        assert m.get("isolde_device_state", device="disk-1.b", state=s) == (s == "backoff")
    for r in REASONS:
        assert m.get("isolde_device_restarts_total", device="disk0", reason=r) == (2 if r == "killed" else 0)
    assert m.get("isolde_device_requests_total", device="disk0", op="read") == 10
    assert m.get("isolde_device_bytes_total", device="disk0", direction="write") == 20480
    buckets, total, count = m.histogram("isolde_device_request_duration_seconds", device="disk0")
    assert count == 4 and abs(total - 7.000069) < 1e-9 and buckets[0] == ("0.00001", 1)
    buckets, total, count = m.histogram("isolde_device_recovery_seconds", device="disk0")
    assert count == 2 and abs(total - 0.1208) < 1e-9
    assert m.get("isolde_export_connections", device="disk0", export="1", kind="nbd") == 1
    # Quote, backslash and newline come back as they were; bytes that are
    # not UTF-8 (a stray 0xff, a UTF-16 surrogate) as U+FFFD.
    assert m.get("isolde_export_info", device="disk0", export="2", kind="fuse",
                 spec='fuse:/tmp/a"b\\c\nd\ufffd\u00e9\ufffd\ufffd\ufffdz') == 1


def kill_driver_and_wait(lst, kills):
    """SIGKILL the running driver; wait until the metrics show its restart
    and recovery. Returns the kills that landed so far."""
    pids = wait_until(lambda: conftest.driver_children(lst.proc.pid), GENEROUS, "a driver")
    os.kill(pids[0], signal.SIGKILL)
    kills += 1

    def recovered():
        m = lst.fetch()
        return (m.get("isolde_device_restarts_total", device="disk", reason="killed") == kills and
                m.get("isolde_device_recovery_seconds_count", device="disk") == kills and
                m.get("isolde_device_up", device="disk") == 1)
    wait_until(recovered, GENEROUS, f"restart {kills} in the metrics")
    return kills


@pytest.mark.parametrize("build", ["normal", "asan"])
def test_metrics_follow_io_and_restarts(serve, build, tmp_path):
    """nbdcopy in and out through the NBD export, the driver SIGKILLed
    between and during the copies: the metrics count it all."""
    need_tools("curl", "nbdcopy")
    b = conftest.Build(build_of(build), build)
    if not b.available():
        pytest.fail(f"isolde is not built in {b.root}")
    lst = serve(conftest.Isolde(b))
    srv = lst.served
    size = 32 * MiB
    src = random_file(tmp_path / "src", size, seed=7)
    out = tmp_path / "out"

    before = lst.fetch()
    assert before.get("isolde_devices") == 1
    assert before.get("isolde_device_up", device="disk") == 1
    assert before.get("isolde_device_generation", device="disk") == 1

    kills = 0
    run(["nbdcopy", src, srv.uri])
    kills = kill_driver_and_wait(lst, kills)
    # One kill while a copy is (most likely) under way: its requests are
    # replayed, and it sees no error.
    copy = subprocess.Popen(["nbdcopy", srv.uri, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: copy.poll() is not None or
               lst.fetch().get("isolde_device_bytes_total", device="disk", direction="read") > 0,
               GENEROUS, "nbdcopy to start reading")
    kills = kill_driver_and_wait(lst, kills)
    assert copy.wait(timeout=120) == 0, copy.stderr.read()
    kills = kill_driver_and_wait(lst, kills)
    assert same_files(src, out)

    m = wait_until(lambda: (lambda m: m if m.get("isolde_export_connections", device="disk", export="1",
                                                  kind="nbd") == 0 else None)(lst.fetch()),
                   GENEROUS, "the NBD clients to leave")
    assert m.types == FAMILIES
    assert m.get("isolde_devices") == 1
    assert m.get("isolde_device_up", device="disk") == 1
    for s in STATES:
        assert m.get("isolde_device_state", device="disk", state=s) == (s == "running")
    assert m.get("isolde_device_generation", device="disk") == kills + 1
    assert m.get("isolde_device_inflight", device="disk") == 0
    assert m.get("isolde_export_inflight", device="disk", export="1", kind="nbd") == 0
    assert m.get("isolde_export_info", device="disk", export="1", kind="nbd",
                 spec=f"nbd:unix:{srv.sock}") == 1

    # At least what nbdcopy moved (it also reads a little on its own).
    assert m.get("isolde_device_bytes_total", device="disk", direction="write") >= size
    assert m.get("isolde_device_bytes_total", device="disk", direction="read") >= size
    assert m.get("isolde_device_requests_total", device="disk", op="write") > 0
    assert m.get("isolde_device_requests_total", device="disk", op="read") > 0
    assert m.get("isolde_device_errors_total", device="disk") == 0

    # Every kill was a restart for reason "killed", and nothing else failed.
    for r in REASONS:
        assert m.get("isolde_device_restarts_total", device="disk", reason=r) == (kills if r == "killed" else 0)
    _, rec_sum, rec_count = m.histogram("isolde_device_recovery_seconds", device="disk")
    assert rec_count == kills and rec_sum > 0
    _, lat_sum, lat_count = m.histogram("isolde_device_request_duration_seconds", device="disk")
    ops = sum(m.get("isolde_device_requests_total", device="disk", op=o)
              for o in ("read", "write", "flush", "other"))
    assert lat_count == ops and lat_sum > 0
    assert m.get("isolde_device_snapshot_age_seconds", device="disk") < 5
    # The status the control socket gives agrees.
    st = srv.status()
    assert st["restarts_by_reason"]["killed"] == kills and st["generation"] == kills + 1


def test_ctl_metrics_gives_the_same_families(serve, isolde):
    need_tools("curl")
    if isolde.run("ctl", "--help").returncode != 0:
        pytest.skip("isolde ctl is not there yet")
    lst = serve(isolde)
    p = isolde.run("ctl", "--control", lst.served.control, "metrics")
    assert p.returncode == 0, p.stderr
    ctl = Metrics(p.stdout)
    http = lst.fetch()
    assert ctl.types == http.types == FAMILIES
    assert ({(n, tuple(sorted(l.items()))) for n, l, _ in ctl.samples} ==
            {(n, tuple(sorted(l.items()))) for n, l, _ in http.samples})


def test_serve_escapes_export_specs(isolde, image):
    """An export spec is whatever was given: a socket path with a quote, a
    backslash, a newline and a byte that is not UTF-8 comes back through
    HTTP and `isolde ctl metrics` (whose JSON must be UTF-8) escaped."""
    need_tools("curl")
    d = tempfile.mkdtemp(prefix="isolde-met-", dir="/tmp")
    sock = os.path.join(d, 'a"b\\c\nd\udcffe.sock')  # \udcff: the byte 0xff in a file name
    control = os.path.join(d, "control.sock")
    # Not Served: its stderr reader wants UTF-8, and serve echoes the path.
    proc = subprocess.Popen([str(isolde.build.isolde), "serve", "--image", str(image), "--export",
                             f"nbd:unix:{sock}", "--control", control, "--metrics", "tcp:127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            errors="surrogateescape", env=sanitizer_env(), start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "; ready" in line:
                break
        err = "".join(lines)
        assert "; ready" in err, err
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        lst = Listener()
        lst.address, lst.proc = re.search(r"metrics on (tcp:\S+)", err)[1], proc
        want = "nbd:unix:" + sock.replace("\udcff", "\ufffd")
        assert lst.fetch().get("isolde_export_info", device="disk", export="1", kind="nbd", spec=want) == 1
        if isolde.run("ctl", "--help").returncode == 0:
            p = isolde.run("ctl", "--control", control, "metrics")
            assert p.returncode == 0, p.stderr
            assert Metrics(p.stdout).get("isolde_export_info", device="disk", export="1", kind="nbd",
                                         spec=want) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GENEROUS) == 0, "".join(lines)
        assert_no_sanitizer_report("".join(lines))
    finally:
        conftest.kill_session(proc)
        shutil.rmtree(d, ignore_errors=True)
        print("".join(lines))


def test_serve_listens_on_loopback_by_default(serve, isolde):
    lst = serve(isolde, address="tcp::0")
    ip, port = split_address(lst.address)
    assert ip == "127.0.0.1"
    assert listening_on(port) == ["0100007F"]  # 127.0.0.1, and nothing else
    lst.fetch()


def test_serve_reports_a_bad_address(isolde, image, tmp_path):
    for address, why in [("tcp:127.0.0.1", "expected tcp:HOST:PORT"), ("tcp:127.0.0.1:99999", "port"),
                         ("udp::9100", "expected tcp:HOST:PORT"), ("tcp:192.0.2.1:0", "Cannot assign")]:
        p = isolde.run("serve", "--image", image, "--export", f"nbd:unix:{tmp_path}/nbd.sock",
                       "--metrics", address, timeout=GENEROUS)
        assert p.returncode != 0
        assert f"--metrics {address}: " in p.stderr and why in p.stderr, p.stderr


def test_fake_listens_on_loopback_by_default(fake):
    lst = fake(address="tcp::0")
    ip, port = split_address(lst.address)
    assert ip == "127.0.0.1" and listening_on(port) == ["0100007F"]


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_fake_listens_on_ipv6(fake):
    need_tools("curl")
    if not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    lst = fake(address="tcp:[::1]:0")
    ip, port = split_address(lst.address)
    assert ip == "::1" and listening_on(port) == ["00000000000000000000000001000000"]
    assert lst.fetch().get("isolde_devices") == 2


# ---- HTTP, and hostile clients ----

def raw(lst, timeout=GENEROUS):
    s = socket.create_connection(lst.sockaddr, timeout=timeout)
    return s


def read_all(s, timeout=GENEROUS):
    """Everything until the server closes (a reset counts as closed)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def closed_within(s, timeout):
    """The server closed this connection within timeout (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_http_answers(listener):
    need_tools("curl")
    lst = listener
    a = curl(lst.url)
    assert a.status == 200 and a.headers["content-type"] == CONTENT_TYPE
    Metrics(a.text)
    assert curl(lst.url + "?x=1").status == 200
    s = raw(lst)
    s.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
    head = read_all(s)
    s.close()
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head  # no body
    assert f"Content-Type: {CONTENT_TYPE}\r\n".encode() in head
    base = lst.url[:-len("/metrics")]
    for path in ("/", "/metrics/", "/metricsx", "/x/metrics"):
        assert curl(base + path).status == 404, path
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        a = curl(lst.url, "-X", method)
        assert a.status == 405 and a.headers["allow"] == "GET, HEAD", (method, a.headers)
    # Two requests on one connection (keep-alive), and HTTP/1.0.
    p = subprocess.run(["curl", "-sS", "-v", "--max-time", str(GENEROUS), "-o", "/dev/null", "-o", "/dev/null",
                        "-w", "%{http_code} ", lst.url, lst.url], capture_output=True, text=True,
                       timeout=GENEROUS + 10)
    assert p.returncode == 0 and p.stdout.split() == ["200", "200"], p.stderr
    assert "Re-using existing connection" in p.stderr, p.stderr
    assert curl(lst.url, "--http1.0").status == 200


def test_idle_connections_are_bounded(listener):
    """Idle connections take at most MAX_CONNECTIONS slots: past them a
    client is refused at once (never left hanging), and once they time
    out a fetch works again."""
    need_tools("curl")
    lst = listener
    idle = [raw(lst) for _ in range(MAX_CONNECTIONS)]
    idle[0].sendall(b"GET /metr")  # one with half a request line
    time.sleep(0.5)
    t0 = time.monotonic()
    extra = raw(lst)
    assert closed_within(extra, 5), "a client beyond the limit was not refused"
    a = curl(lst.url, timeout=5)
    assert a.rc != 0 and time.monotonic() - t0 < 8, f"a fetch beyond the limit: {a.rc} {a.status}"
    # They time out (TIMEOUT_S idle), and the listener serves again.
    for s in idle:
        assert closed_within(s, TIMEOUT_S + 10), "an idle connection was never closed"
    lst.fetch()
    for s in idle + [extra]:
        s.close()
    assert lst.alive()


def test_many_connections_and_refusals_do_not_harm(listener):
    """A burst of connections (most refused) leaves the listener working."""
    need_tools("curl")
    lst = listener
    socks = []
    for _ in range(200):
        try:
            socks.append(raw(lst, timeout=5))
        except OSError:
            pass
    for s in socks:
        s.close()
    wait_until(lambda: curl(lst.url, timeout=5).status == 200, GENEROUS, "a fetch after the burst")
    assert lst.alive()


def test_huge_header_is_refused(listener):
    need_tools("curl")
    lst = listener
    a = curl(lst.url, "-H", "X-Big: " + "a" * (64 << 10))
    assert a.status == 431, (a.rc, a.status, a.stderr)
    # Many headers, each small, add up the same.
    s = raw(lst)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" +
                  b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(1000)) + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 431 ") or reply == b"", reply[:200]
    s.close()
    lst.fetch()


def test_request_bodies_are_not_read(listener, tmp_path):
    """A request with a body is answered before it: the server reads none
    of it, and closes the connection."""
    need_tools("curl")
    lst = listener
    big = tmp_path / "body"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    a = curl(lst.url, "--data-binary", f"@{big}")
    assert a.status == 405
    # A GET that announces 1 GB and sends none: answered at once, closed.
    s = raw(lst)
    t0 = time.monotonic()
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    reply = read_all(s, timeout=TIMEOUT_S + 10)
    assert reply.startswith(b"HTTP/1.1 200 ") and time.monotonic() - t0 < 5, reply[:200]
    s.close()
    # Chunked, never finished: the same.
    s = raw(lst)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc")
    reply = read_all(s, timeout=TIMEOUT_S + 10)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    s.close()
    lst.fetch()


def test_slowloris_is_timed_out(listener):
    """A client that trickles its header a line a second, never idle long
    enough for an idle timeout, is cut TIMEOUT_S after it connected."""
    lst = listener
    s = raw(lst)
    t0 = time.monotonic()
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    cut = None
    i = 0
    while time.monotonic() - t0 < TIMEOUT_S + 10:
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            try:
                if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                    cut = time.monotonic() - t0
                    break
            except (ConnectionResetError, BlockingIOError):
                cut = time.monotonic() - t0
                break
        try:
            s.sendall(b"X-Slow-%d: %s\r\n" % (i, b"z" * 8))
        except (BrokenPipeError, ConnectionResetError):
            cut = time.monotonic() - t0
            break
        i += 1
    s.close()
    assert cut is not None, f"still connected after {TIMEOUT_S + 10} s"
    assert TIMEOUT_S - 1 <= cut <= TIMEOUT_S + 5, f"cut after {cut:.1f} s"
    lst.fetch()
