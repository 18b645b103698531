"""The control socket of `isolde serve` (docs/CONTROL.md): idle or
misbehaving clients never keep `isolde status` out, and never harm the
server; the old one-line "status" protocol still answers. The JSON
protocol's own tests are in test_ctl.py."""
import json
import socket
import subprocess
import time

import pytest

from conftest import assert_no_sanitizer_report
from nbd_helpers import Served

SLOTS = 64           # control.h: CONTROL_MAX_CLIENTS
IDLE_TIMEOUT = 30.0  # CONTROL_IDLE_MS
MAX_LINE = 65536     # CONTROL_MAX_LINE
GENEROUS = 30        # seconds: the tests check answers, not speed


@pytest.fixture
def serve(any_isolde, image):
    started = []

    def start():
        s = Served(any_isolde, image)
        started.append(s)
        return s.wait_ready()

    yield start
    for s in started:
        s.close()


def connect(path):
    """A blocking connect, as `isolde status` does: it waits while the
    server's listen backlog is full instead of failing with EAGAIN."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(GENEROUS)
    return s


def status(srv, *args):
    p = subprocess.run([str(srv.isolde.build.isolde), "status", "--control", srv.control, *args],
                       capture_output=True, text=True, timeout=GENEROUS)
    assert p.returncode == 0, p.stderr
    return p


def status_json(srv):
    st = json.loads(status(srv, "--json").stdout)
    assert st["state"] == "running"
    return st


def ended(s, timeout):
    """The server closed this connection within timeout (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def closed_now(s):
    """The server has already closed this connection (what it sent is dropped)."""
    timeout = s.gettimeout()
    s.setblocking(False)  # with a timeout set, Python would wait for it
    try:
        while s.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.settimeout(timeout)


def finish(srv):
    """The server survived: still answering, and it stops cleanly."""
    assert srv.alive(), srv.stderr
    status_json(srv)
    assert srv.terminate() == 0, srv.stderr
    assert_no_sanitizer_report(srv.stderr)


def test_idle_clients_do_not_lock_out_status(serve):
    srv = serve()
    idle = [connect(srv.control) for _ in range(SLOTS + 16)]
    try:
        started = time.monotonic()
        st = status_json(srv)
        assert st["exports"][0]["kind"] == "nbd"
        assert "state" in status(srv).stdout  # the human form too
        # The newcomers took the slots of the longest idle: more clients
        # than slots means some were already let go (the second status may
        # have had the slot the first left).
        time.sleep(0.2)
        assert time.monotonic() - started < IDLE_TIMEOUT
        assert sum(closed_now(s) for s in idle) >= len(idle) + 1 - SLOTS
        # A full set of idle clients again, and again status gets through.
        idle2 = [connect(srv.control) for _ in range(SLOTS)]
        try:
            status_json(srv)
        finally:
            for s in idle2:
                s.close()
    finally:
        for s in idle:
            s.close()
    finish(srv)


def test_idle_clients_are_dropped_but_event_streams_are_not(isolde, image):
    """Past the idle timeout a client that sent no request line is dropped -
    sending a byte now and then does not count - and one whose last answer
    went out that long ago too; an event stream is never idle."""
    srv = Served(isolde, image).wait_ready()
    try:
        idle = [connect(srv.control) for _ in range(4)]
        answered = connect(srv.control)
        answered.sendall(b'{"execute": "query-devices", "id": 1}\n')
        assert json.loads(answered.makefile("rb").readline())["id"] == 1
        events = connect(srv.control)
        events.sendall(b'{"execute": "events", "id": "ev"}\n')
        ev = events.makefile("rb")
        assert json.loads(ev.readline()) == {"return": {}, "id": "ev"}
        slow = connect(srv.control)
        start = time.monotonic()
        dropped = False
        while time.monotonic() - start < IDLE_TIMEOUT + 10:
            try:
                slow.sendall(b" ")  # never a newline
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            if ended(slow, 0.5):
                dropped = True
                break
        took = time.monotonic() - start
        assert dropped, f"a client sending a byte now and then is still connected after {took:.1f} s"
        assert IDLE_TIMEOUT - 0.5 <= took <= IDLE_TIMEOUT + 5, took
        for i, s in enumerate(idle + [answered]):
            assert ended(s, 5), f"idle client {i} still connected"
        # The event stream is still there, and still gets events.
        assert not closed_now(events)
        p = subprocess.run([str(isolde.build.isolde), "ctl", "--control", srv.control, "export-add",
                            f"nbd:unix:{srv.dir}/second.sock"], capture_output=True, text=True, timeout=GENEROUS)
        assert p.returncode == 0, p.stderr
        assert json.loads(ev.readline())["event"] == "export-added"
        for s in idle + [answered, events, slow]:
            s.close()
        finish(srv)
    finally:
        srv.close()


def test_a_client_in_the_crowd_is_still_answered(serve):
    srv = serve()
    idle = [connect(srv.control) for _ in range(SLOTS)]
    try:
        c = connect(srv.control)
        c.sendall(b"status\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = c.recv(65536)
            assert chunk, "connection closed before the answer"
            reply += chunk
        assert json.loads(reply)["state"] == "running"
        c.close()
    finally:
        for s in idle:
            s.close()
    finish(srv)


@pytest.mark.parametrize("line", [b"x" * 100000, b"status" + b" " * MAX_LINE + b"\n"],
                         ids=["no-newline", "long-line"])
def test_overlong_line_is_dropped_without_harm(serve, line):
    srv = serve()
    s = connect(srv.control)
    reply = b""
    try:
        try:
            s.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # dropped while we were still sending
        s.settimeout(GENEROUS)
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass  # dropped with our extra bytes unread
    finally:
        s.close()
    if reply:  # the error may be lost when the server closes with our bytes unread
        r = json.loads(reply)
        assert r["error"]["class"] == "ParseError" and "longer than 65536 bytes" in r["error"]["desc"], r
    assert b"state" not in reply
    finish(srv)


def test_unknown_plain_command_is_answered_and_the_connection_stays(serve):
    """The old protocol knew one line, "status"; another plain line is now
    a line that is not JSON: one error, and the connection stays usable."""
    srv = serve()
    s = connect(srv.control)
    try:
        f = s.makefile("rb")
        s.sendall(b"reboot\n")
        err = json.loads(f.readline())["error"]
        assert err["class"] == "ParseError" and "not JSON" in err["desc"]
        s.sendall(b"status\r\n")  # the old line, as a telnet would send it
        assert json.loads(f.readline())["state"] == "running"
        assert ended(s, GENEROUS)  # the old protocol's end: one answer, then close
    finally:
        s.close()
    finish(srv)
