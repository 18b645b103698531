"""The NBD export against hostile and careless clients: connections that
never speak, clients beyond the connection limit, slow readers that never
read their replies, idle connections, a flood of log-worthy mistakes, and
bad values for the export's options. The limits are described in
docs/ARCHITECTURE.md §15; these tests check each against real processes, with a
raw client for what real clients never do and nbdinfo / qemu-img for what
a user sees. Every server, socket and temporary file is removed whether a
test passes or not."""
import os
import random
import re
import shutil
import struct
import tempfile
import time

import pytest

from conftest import assert_no_sanitizer_report
from nbd_helpers import (CMD_READ, MiB, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
                         OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_POLICY, RawNbd, Served, export_status,
                         limit_message, nbdinfo_json, need_tools, private_rss_bytes, run, wait_until)

IMAGE_SIZE = 32 * MiB
LOG_BURST = 5            # client-caused log lines per second and export (nbd.c)
REFUSE_SECONDS = 2       # how long a refused client may stay (nbd.c REFUSE_TIMEOUT_MS)
MAX_REFUSING = 16        # refused clients served a reason at once (nbd.c)


@pytest.fixture(scope="module", autouse=True)
def clients():
    need_tools("nbdinfo", "qemu-img")


@pytest.fixture
def serve(isolde, image):
    """serve(*extra, options="", export=None, tool=None): a running `isolde
    serve` on the 32 MiB test image, its export spec followed by options;
    stopped and cleaned up after the test."""
    started = []

    def start(*extra, options="", export=None, tool=None):
        s = Served(tool or isolde, image, *extra, export=export, options=options)
        started.append(s)
        return s.wait_ready()

    yield start
    for s in started:
        s.close()


class Clients(list):
    """Raw connections, all closed at the end of the with block."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for c in self:
            c.close()


def debug_env():
    """libnbd prints a server's error message only in its debug output."""
    return dict(os.environ, LIBNBD_DEBUG="1")


def assert_nbdinfo_refused(uri, limit, name=""):
    """nbdinfo fails at once instead of hanging, and (in libnbd's debug output) says why."""
    start = time.monotonic()
    p = run(["nbdinfo", "--json", uri], timeout=10, check=False, env=debug_env())
    assert p.returncode != 0, p.stdout
    assert limit_message(limit, name) in p.stderr, p.stderr
    assert time.monotonic() - start < 5, "nbdinfo took long to be refused"


def assert_refused_in_words(uri, limit, name=""):
    """nbdinfo and qemu-img fail at once, and say why."""
    assert_nbdinfo_refused(uri, limit, name)
    p = run(["qemu-img", "info", uri], timeout=10, check=False)
    assert p.returncode != 0
    assert f"server reported: {limit_message(limit, name)}" in p.stderr, p.stderr


def count(stderr, text):
    return sum(text in line for line in stderr.splitlines())


def suppressed(stderr):
    return sum(int(n) for n in re.findall(r"(\d+) messages suppressed", stderr))


# ---- the connection limit and the handshake timeout ----

def test_silent_connections_are_refused_in_words_then_time_out(serve, any_isolde):
    """130 connections that never speak: 128 are served, the rest refused,
    and a real client meanwhile is refused with the reason instead of
    hanging. After the handshake timeout every silent one is gone, with a
    rate-limited log, and the real client is served."""
    srv = serve(options=",handshake-timeout=2", tool=any_isolde)
    with Clients() as silent:
        for _ in range(130):
            silent.append(RawNbd(srv.sock))
        wait_until(lambda: (lambda e: e["connections"] == 128 and e["refusing"] == 2)(export_status(srv)),
                   5, "128 served and 2 refused connections")
        # Within the 2 s before the silent ones time out.
        assert_nbdinfo_refused(srv.uri, 128)
        # The listener never paused: every one of them was greeted.
        for c in silent:
            c.greeting()
        for c in silent:
            assert c.wait_closed(timeout=8), "a silent connection outlived the handshake timeout"
    assert nbdinfo_json(srv.uri)["export-size"] == IMAGE_SIZE
    ex = wait_until(lambda: (lambda e: e if e["timed_out"] == 128 else None)(export_status(srv)), 5,
                    "128 handshake timeouts")
    assert ex["refused"] == 3 and ex["connections"] == 0 and ex["refusing"] == 0, ex
    wait_until(lambda: "messages suppressed" in srv.stderr, 5, "the suppressed-messages line")
    timeouts = count(srv.stderr, "no handshake within 2 s (handshake-timeout)")
    assert 1 <= timeouts <= 2 * LOG_BURST, srv.stderr
    assert srv.terminate() == 0, srv.stderr
    assert_no_sanitizer_report(srv.stderr)


def test_refusal_answers_every_option_with_the_reason(serve):
    srv = serve(options=",name=disk0,max-connections=1")
    reason = limit_message(1, "disk0").encode()
    with RawNbd(srv.sock) as held:
        held.handshake(name=b"disk0")
        with RawNbd(srv.sock) as c:
            c.greeting()
            c.client_flags()
            assert c.option(OPT_STRUCTURED_REPLY) == [(REP_ERR_POLICY, reason)]
            assert c.option(OPT_LIST) == [(REP_ERR_POLICY, reason)]
            assert c.option(OPT_INFO, RawNbd.go_data(b"disk0")) == [(REP_ERR_POLICY, reason)]
            assert c.option(OPT_GO, RawNbd.go_data(b"disk0")) == [(REP_ERR_POLICY, reason)]
            assert c.option(0x4444, b"d" * 100000) == [(REP_ERR_POLICY, reason)]  # its data skipped
            assert c.option(OPT_ABORT) == [(REP_ACK, b"")]
            assert c.wait_closed()
        with RawNbd(srv.sock) as c:
            # NBD_OPT_EXPORT_NAME cannot carry an error: the session just ends.
            c.greeting()
            c.client_flags()
            c.send_option(OPT_EXPORT_NAME, b"disk0")
            assert c.wait_closed()
        with RawNbd(srv.sock) as c:
            # One that does not even answer the greeting is let go soon.
            c.greeting()
            start = time.monotonic()
            assert c.wait_closed(timeout=REFUSE_SECONDS + 4)
            assert REFUSE_SECONDS - 0.5 < time.monotonic() - start < REFUSE_SECONDS + 2
        assert_refused_in_words(f"nbd+unix:///disk0?socket={srv.sock}", 1, "disk0")
        assert len(held.read(0, 4096)) == 4096  # the client being served noticed nothing
        assert export_status(srv)["refused"] == 5
    # Once it left, the next client is served.
    wait_until(lambda: export_status(srv)["connections"] == 0, 5, "the held connection to close")
    assert nbdinfo_json(f"nbd+unix:///disk0?socket={srv.sock}")["export-name"] == "disk0"


def test_refusal_over_tcp(serve):
    srv = serve(export="nbd:tcp:127.0.0.1:0", options=",max-connections=1")
    with RawNbd(("127.0.0.1", srv.port)) as held:
        held.handshake()
        assert_refused_in_words(srv.uri, 1)
        assert len(held.read(0, 4096)) == 4096
    wait_until(lambda: export_status(srv)["connections"] == 0, 5, "the held connection to close")
    assert nbdinfo_json(srv.uri)["export-size"] == IMAGE_SIZE


def test_refusing_is_bounded_too(serve):
    """Beyond MAX_REFUSING clients being refused, more are closed at accept."""
    srv = serve(options=",max-connections=1")
    extra = MAX_REFUSING + 4
    with RawNbd(srv.sock) as held, Clients() as rest:
        held.handshake()
        for _ in range(extra):
            rest.append(RawNbd(srv.sock))
        wait_until(lambda: export_status(srv)["refused"] == extra, 5, f"{extra} refusals")
        assert export_status(srv)["refusing"] == MAX_REFUSING
        time.sleep(0.3)
        assert sum(c.closed_now() for c in rest) == extra - MAX_REFUSING
        for c in rest:
            assert c.wait_closed(timeout=REFUSE_SECONDS + 3)
        assert export_status(srv)["refusing"] == 0
        assert len(held.read(0, 4096)) == 4096


# ---- memory: the export-wide buffer budget and slow readers ----

SLOW_READERS = 6
# Not 32 MiB: with requests of the maximal size the per-connection limit
# alone (one request once 32 MiB are held) would keep these readers within
# the bound, and this test could not fail. With 17 MiB, a connection alone
# may hold two (34 MiB); the export's budget is what keeps all six near one.
SLOW_READ = 17 * MiB
MAX_BUFFER = 32 * MiB
PER_CONNECTION_OVERHEAD = 400 << 10   # input buffer, small output, bookkeeping (docs/ARCHITECTURE.md §15)


def test_slow_readers_are_bounded_and_closed(serve, any_isolde, image):
    """Slow readers send many large READs and never read a reply: the
    export's buffers stay within max-buffer + one request per connection
    (docs/ARCHITECTURE.md §15), another client still reads correct data, and the
    stalled connections are closed after send-timeout, freeing it all."""
    data = random.Random(11).randbytes(MiB)
    with open(image, "r+b") as f:
        f.seek(8 * MiB)
        f.write(data)
    srv = serve(options=f",max-buffer={MAX_BUFFER >> 20}M,send-timeout=4", tool=any_isolde)
    bound = MAX_BUFFER - 1 + SLOW_READERS * SLOW_READ
    base = private_rss_bytes(srv.proc.pid)
    with Clients() as readers:
        for _ in range(SLOW_READERS):
            c = RawNbd(srv.sock).handshake()
            for _ in range(8):
                c.request(CMD_READ, 0, SLOW_READ)
            readers.append(c)
        # Each got its first request through (it held nothing), none much more.
        ex = wait_until(lambda: (lambda e: e if e["buffer_bytes"] >= SLOW_READERS * SLOW_READ else None)(
            export_status(srv)), 10, "every slow reader's first READ")
        peak = private_rss_bytes(srv.proc.pid)
        with RawNbd(srv.sock) as honest:
            honest.handshake()
            for k in range(16):
                assert honest.read(8 * MiB + k * 65536, 65536) == data[k * 65536:(k + 1) * 65536]
                peak = max(peak, private_rss_bytes(srv.proc.pid))
            assert honest.read(8 * MiB, MiB) == data
            ex = export_status(srv)
        assert ex["buffer_bytes"] <= bound, ex
        # The honest client was served while the slow ones still held their buffers.
        assert ex["timed_out"] == 0 and ex["connections"] == SLOW_READERS + 1, ex
        if any_isolde.build.name == "normal":  # ASan's shadow and quarantine make RSS meaningless
            grown = peak - base
            assert grown < bound + SLOW_READERS * PER_CONNECTION_OVERHEAD + 8 * MiB, \
                f"the server's private memory grew by {grown >> 20} MiB; the bound is {bound >> 20} MiB"
        ex = wait_until(lambda: (lambda e: e if e["timed_out"] == SLOW_READERS else None)(export_status(srv)),
                        10, "the slow readers to be closed")
        assert ex["buffer_bytes"] == 0 and ex["connections"] == 0, ex
        for c in readers:
            assert c.wait_closed(timeout=5)
    assert count(srv.stderr, "(send-timeout); disconnecting a slow reader") >= 1, srv.stderr
    assert srv.terminate() == 0, srv.stderr
    assert_no_sanitizer_report(srv.stderr)


def test_budget_freed_by_one_client_wakes_another(serve):
    """A connection stopped by the export's budget resumes as soon as
    another connection's buffers go, not only when its own do."""
    srv = serve(options=",max-buffer=16M")

    def completed(n):
        return lambda: export_status(srv)["requests"] == n

    with RawNbd(srv.sock, timeout=30) as x, RawNbd(srv.sock, timeout=30) as y:
        x.handshake()
        y.handshake()
        hx = {x.request(CMD_READ, 0, 12 * MiB), x.request(CMD_READ, 12 * MiB, 12 * MiB)}
        wait_until(completed(2), 10, "x's two READs")          # the export holds 24 MiB of 16
        y1 = y.request(CMD_READ, 0, 12 * MiB)                   # y holds nothing: it always may
        wait_until(completed(3), 10, "y's first READ")
        y2 = y.request(CMD_READ, 4096, 4096)                    # y holds 12 MiB: it waits
        time.sleep(0.5)
        assert export_status(srv)["requests"] == 3
        assert {x.reply()[0] for _ in hx} == hx                 # x's buffers go: 12 MiB held
        wait_until(completed(4), 5, "y's second READ once x freed the budget")
        assert {y.reply()[0] for _ in range(2)} == {y1, y2}     # y read nothing until now


def test_a_write_payload_is_read_whole_even_over_budget(serve):
    """A maximal WRITE whose payload is being read goes on reading, whatever
    the budget: stopping half-way would hold its buffer for ever."""
    srv = serve(options=",max-buffer=16M")
    data = random.Random(12).randbytes(32 * MiB)
    with RawNbd(srv.sock, timeout=30) as x, RawNbd(srv.sock, timeout=30) as y:
        x.handshake()
        y.handshake()
        hx = {x.request(CMD_READ, 0, 12 * MiB), x.request(CMD_READ, 12 * MiB, 12 * MiB)}
        wait_until(lambda: export_status(srv)["requests"] == 2, 10, "x's two READs")
        assert y.write(0, data) == 0
        assert y.read(5 * MiB, 4096) == data[5 * MiB:5 * MiB + 4096]
        assert {x.reply()[0] for _ in hx} == hx


# ---- idle connections ----

def test_idle_timeout_closes_an_idle_connection_not_a_busy_one(serve, any_isolde):
    srv = serve(options=",idle-timeout=2", tool=any_isolde)
    plain = serve(tool=any_isolde)   # no idle-timeout: idle clients stay
    with RawNbd(srv.sock) as idle, RawNbd(srv.sock) as busy, RawNbd(plain.sock) as idle_elsewhere:
        idle.handshake()
        busy.handshake()
        idle_elsewhere.handshake()
        end = time.monotonic() + 4.5
        while time.monotonic() < end:
            assert len(busy.read(0, 4096)) == 4096
            time.sleep(0.25)
        assert idle.closed_now() or idle.wait_closed(timeout=1), "the idle connection is still open"
        assert len(busy.read(0, 4096)) == 4096
        assert len(idle_elsewhere.read(0, 4096)) == 4096
    assert count(srv.stderr, "idle for 2 s (idle-timeout); disconnecting") == 1, srv.stderr
    assert export_status(srv)["timed_out"] == 1
    assert srv.terminate() == 0, srv.stderr
    assert_no_sanitizer_report(srv.stderr)


# ---- logging ----

def test_client_caused_log_lines_are_rate_limited(serve):
    srv = serve()
    clients = 40
    start = time.monotonic()
    for _ in range(clients):
        with RawNbd(srv.sock) as c:
            c.greeting()
            c.client_flags()
            c.send(struct.pack(">QII", 0x0102030405060708, OPT_GO, 0))
            assert c.wait_closed()
    elapsed = time.monotonic() - start
    wait_until(lambda: suppressed(srv.stderr) + count(srv.stderr, "bad option magic") == clients, 5,
               "every mistake printed or counted as suppressed")
    printed = count(srv.stderr, "bad option magic")
    assert printed <= LOG_BURST * (int(elapsed) + 2), srv.stderr
    assert nbdinfo_json(srv.uri)["export-size"] == IMAGE_SIZE


# ---- the options ----

@pytest.mark.parametrize("options,message", [
    (",max-connections=0", "max-connections=0: expected a number from 1 to 4096"),
    (",max-connections=4097", "max-connections=4097: expected a number from 1 to 4096"),
    (",max-connections=ten", "max-connections=ten: expected a number"),
    (",handshake-timeout=0", "handshake-timeout=0: expected seconds from 1 to 3600"),
    (",idle-timeout=-1", "idle-timeout=-1: expected seconds from 0 to 604800"),
    (",send-timeout=", "send-timeout=: expected seconds from 1 to 3600"),
    (",max-buffer=4k", "max-buffer=4k: expected a size from 1M to 64G"),
    (",max-buffer=lots", "max-buffer=lots: expected a size"),
    (",name=a,name=b", "name: given twice"),
    (",max-connections=2,idle-timeout=1,max-connections=3", "max-connections: given twice"),
    (",colour=blue", "unknown option 'colour'"),
    (",max-connections", "'max-connections': expected KEY=VALUE"),
    (",", "'': expected KEY=VALUE"),
    (",name=" + "n" * 257, "name: at most 256 bytes"),
])
def test_bad_export_options(isolde, image, options, message):
    d = tempfile.mkdtemp(prefix="isolde-nbd-", dir="/tmp")
    try:
        sock = os.path.join(d, "nbd.sock")
        p = isolde.run("serve", "--image", image, "--export", f"nbd:unix:{sock}{options}", timeout=30)
        assert p.returncode == 1 and message in p.stderr, p.stderr
        assert not os.path.exists(sock)   # refused before anything was created
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_export_options_are_applied(serve):
    srv = serve(options=",name=disk0,max-connections=3,handshake-timeout=5,idle-timeout=0,send-timeout=7,"
                        "max-buffer=64M")
    ex = export_status(srv)
    assert ex["name"] == "disk0" and ex["max_connections"] == 3 and ex["max_buffer"] == 64 * MiB, ex
    assert "at most 3 connections, 64 MiB of buffers" in srv.stderr
    assert nbdinfo_json(f"nbd+unix:///disk0?socket={srv.sock}")["export-name"] == "disk0"

