"""The control socket of `isolde serve`: idle or misbehaving clients never
keep `isolde status` out, and never harm the server."""
import json
import socket
import subprocess
import time

import pytest

from conftest import assert_no_sanitizer_report
from nbd_helpers import Served

SLOTS = 64
COMMAND_TIMEOUT = 2.0
GENEROUS = 30  # seconds: the tests check answers, not speed


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
    """The server has already closed this connection."""
    try:
        return s.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


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
        # than slots means some were already let go.
        time.sleep(0.2)
        if time.monotonic() - started < COMMAND_TIMEOUT:
            assert sum(closed_now(s) for s in idle) >= len(idle) + 2 - SLOTS
        # Past the command timeout every idle client is dropped.
        for i, s in enumerate(idle):
            assert ended(s, GENEROUS), f"idle client {i} still connected"
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


def test_slow_client_is_dropped_after_the_command_timeout(serve):
    """Sending a byte now and then does not keep a client its slot."""
    srv = serve()
    s = connect(srv.control)
    start = time.monotonic()
    sent, dropped = 0, False
    try:
        # 60 bytes take 18 s: long past the timeout, and still short of the
        # 63 that would end the client for its length instead.
        while sent < 60 and not dropped:
            try:
                s.sendall(b"s")
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            dropped = ended(s, 0.3)
    finally:
        s.close()
    assert dropped, f"still connected after {sent} bytes in {time.monotonic() - start:.1f} s"
    assert time.monotonic() - start >= COMMAND_TIMEOUT - 0.1
    finish(srv)


@pytest.mark.parametrize("line", [b"x" * 100000, b"status" + b" " * 200 + b"\n"],
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
    assert reply in (b"", b'{"error": "command line too long"}\n'), reply
    assert b"state" not in reply
    finish(srv)


def test_unknown_command_is_answered_and_dropped(serve):
    srv = serve()
    s = connect(srv.control)
    try:
        s.sendall(b"reboot\n")
        reply = s.makefile("rb").readline()
        assert json.loads(reply)["error"].startswith("unknown command")
        assert ended(s, GENEROUS)
    finally:
        s.close()
    finish(srv)
