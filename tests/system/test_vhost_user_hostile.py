"""A hostile vhost-user front end against `isolde serve`: what it can do
with the guest's rings and its memory file, played by vhost_user_client.py.

- It re-publishes one head over and over: isolde must not take a head that
  is still in flight (the queue breaks, once logged), and its memory stays
  flat while the attack goes on.
- It keeps more requests coming than its queue holds, heads cycling with
  or without completions: never more than the queue's size in flight.
- It shrinks its memory file under the mapping: no SIGBUS death, the
  connection closes with one line, nothing read from the lost memory
  reaches the disk. A sealed memfd cannot shrink, and serves as before.
- It fills a queue far past the per-pass budget with one kick: every
  request completes (none is left behind when the kick does not come
  again), in every poll mode. With the driver stopped, the export stops
  taking requests at its memory limit and takes the rest once it can.
- It floods bad requests: isolde's stderr grows by a bounded number of
  lines, and the suppressed ones are counted exactly.

Every server runs an NBD export beside the vhost-user one, which must keep
answering. Servers, sockets and files are removed whether a test passes or
not; both the normal and the ASan build are tested."""
import os
import re
import shutil
import signal
import struct
import tempfile
import threading
import time

import pytest

from conftest import assert_no_sanitizer_report, driver_children
from nbd_helpers import RawNbd, rss_bytes
from test_vhost_user_protocol import VuServer, exercise_io
from vhost_user_client import (BLK_HDR, DESC, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, S_IOERR, S_OK,
                               SECTOR, T_IN, T_OUT, Closed, Desc, VhostUserError)

MiB = 1 << 20
IMAGE_SIZE = 32 * MiB           # conftest's `image`
PASS_BUDGET = 64                # vhost_user.c: requests per queue per pass
LOG_BURST, LOG_PER_SECOND = 100, 10   # vhost_user.c: the log's token bucket
SHRINK_LINE = r"shrank its memory file under a mapped region .*closing the connection"


# ---------------------------------------------------------------------------
# a server with a vhost-user-blk export and an NBD export beside it
# ---------------------------------------------------------------------------

class TwoExports:
    """`isolde serve --export vhost-user-blk:SOCK[,poll=MODE] --export nbd:unix:NBD`."""

    def __init__(self, isolde, image, poll=None):
        self.nbd_dir = tempfile.mkdtemp(prefix="isolde-vh-nbd-", dir="/tmp")
        self.nbd_sock = os.path.join(self.nbd_dir, "nbd.sock")
        self.vu = None
        try:
            self.vu = VuServer(isolde, image, "--export", f"nbd:unix:{self.nbd_sock}", poll=poll)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self):
        return self.vu.srv.proc.pid

    def vhost_status(self):
        return next(e for e in self.vu.srv.status()["exports"] if e["kind"] == "vhost-user-blk")

    def assert_nbd_answers(self, pattern=None):
        """The NBD export reads (and, if given, finds pattern at offset 0)."""
        with RawNbd(self.nbd_sock, timeout=10) as n:
            n.handshake()
            data = n.read(0, 4096)
            if pattern is not None:
                assert data == pattern, "the NBD export reads other data than the image holds"

    def assert_healthy(self):
        self.vu.assert_healthy()
        self.assert_nbd_answers()

    def close(self):
        try:
            if self.vu is not None:
                self.vu.close()
        finally:
            shutil.rmtree(self.nbd_dir, ignore_errors=True)


@pytest.fixture
def two(any_isolde, image):
    """two(poll=None): a running server with both exports; stopped and removed afterwards."""
    started = []

    def start(poll=None):
        s = TwoExports(any_isolde, image, poll=poll)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
    for s in started:
        assert_no_sanitizer_report(s.vu.stderr)


class DriversStopped:
    """SIGSTOP the server's drivers, so that requests stay in flight; SIGCONT
    on leaving. (Past the policy's heartbeat the supervisor restarts a stopped
    driver and replays: requests still complete, only later.)"""

    def __init__(self, server_pid):
        self.pid = server_pid
        self.stopped = []

    def __enter__(self):
        self.stopped = driver_children(self.pid)
        assert self.stopped, "the server has no driver to stop"
        for p in self.stopped:
            os.kill(p, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        for p in self.stopped:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass


def wait_for(what, predicate, timeout=10, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# one head, re-published
# ---------------------------------------------------------------------------

def big_read_chain(c, segments=1000):
    """One read of segments x 512 bytes through an indirect table of
    segments + 2 entries (the most isolde accepts is 1024): the largest
    element the device keeps per request. Not published."""
    return c.submit_read(0, segments * SECTOR, segs=segments, indirect=True, publish=False)


def republish(c, head, seconds):
    """Make `head` available again and again for `seconds`, as fast as the
    back end takes it (its avail_event says how far it got). Returns how
    many times it was published."""
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        taken = c.mem.u16(c.avail_event_off)
        room = c.queue_size - ((c.avail_idx - taken) & 0xFFFF)
        if room > 0:
            c.publish([head] * room)
            n += room
        else:
            time.sleep(0.001)
    return n


def test_republished_head_breaks_the_queue(two, image):
    s = two(poll="event")
    with open(image, "r+b") as f:
        f.write(b"\x6b" * 4096)
    mark = s.vu.mark()
    with s.vu.client(timeout=20) as c:
        c.handshake(event_idx=True, queue_size=256)
        assert c.read(0, 4096) == b"\x6b" * 4096
        rss_before = rss_bytes(s.pid)
        head = big_read_chain(c).head
        published = republish(c, head, seconds=3.0)
        rss_after = rss_bytes(s.pid)
        log = s.vu.expect_log(rf"queue 0: available entry \d+ names descriptor {head}, which is already in "
                              r"flight.*the queue stops", since=mark)
        st = s.vhost_status()
        assert st["inflight"] <= 1, f"{st['inflight']} requests in flight from one head: {st}"
        assert st["requests"] <= 3, f"the back end took {st['requests']} requests of one head: {st}"
        assert len(re.findall(r"already in flight", log)) == 1, f"logged more than once:\n{log[-2000:]}"
        growth = rss_after - rss_before
        print(f"published head {head} {published} times; VmRSS {rss_before >> 20} -> "
              f"{rss_after >> 20} MiB")
        assert growth < 64 * MiB, f"VmRSS grew by {growth >> 20} MiB during the attack"
        assert s.vu.alive()
    s.assert_healthy()
    s.assert_nbd_answers(b"\x6b" * 4096)


# ---------------------------------------------------------------------------
# more than the queue holds
# ---------------------------------------------------------------------------

def test_heads_cycling_with_completions_never_exceed_queue(two):
    """A front end that re-uses each head as soon as it completed, 16 at a
    time on a 16-entry queue, for 2000 requests: all complete, in flight
    (sampled by a thread) never above 16, no queue broken."""
    s = two()
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(s.vhost_status()["inflight"])

    t = threading.Thread(target=sample, daemon=True)
    mark = s.vu.mark()
    with s.vu.client() as c:
        c.handshake(event_idx=True, queue_size=16)
        t.start()
        try:
            for rnd in range(125):
                reqs = [c.submit_read(8 * i, 4096, indirect=True) for i in range(16)]
                c.wait(reqs)
                assert all(r.status == S_OK for r in reqs), reqs[:3]
        finally:
            stop.set()
            t.join(timeout=30)
        assert not c.bogus
    assert samples and max(samples) <= 16, f"in flight sampled up to {max(samples)} on a 16-entry queue"
    assert "already in flight" not in s.vu.stderr[mark:]
    s.assert_healthy()


def test_heads_cycling_without_completions_break_the_queue(two):
    """With the drivers stopped nothing completes: a front end that goes on
    publishing heads 0..15 of its 16-entry queue a second time names heads
    in flight. The queue breaks; in flight stays 16, not 32."""
    s = two()
    mark = s.vu.mark()
    with s.vu.client(timeout=20) as c:
        c.handshake(event_idx=True, queue_size=16)
        c.write(0, b"\x21" * 4096)
        with DriversStopped(s.pid):
            reqs = [c.submit_read(8 * i, 4096, indirect=True) for i in range(16)]
            wait_for("16 requests in flight", lambda: s.vhost_status()["inflight"] == 16, timeout=1.5)
            c.publish([r.head for r in reqs])
            s.vu.expect_log(r"which is already in flight \(16 of the queue's 16 requests in flight\)",
                            since=mark, timeout=1.5)
            assert s.vhost_status()["inflight"] == 16
        wait_for("in flight drained", lambda: s.vhost_status()["inflight"] == 0, timeout=20)
    s.assert_healthy()


# ---------------------------------------------------------------------------
# the memory file shrinks
# ---------------------------------------------------------------------------

def write_above(c, sector, data, boundary):
    """An unpublished write whose data buffer is at or past `boundary` in
    guest memory, its header and status below it."""
    hoff, hch = c.buffer(BLK_HDR.pack(T_OUT, 0, sector))
    soff, sch = c.buffer(length=1, fill=0xFF)
    filler_len = boundary - c.mem.free[0][0]
    filler = c.mem.alloc(filler_len)
    doff, dch = c.buffer(data)
    assert doff >= boundary and hoff + 64 <= boundary and soff + 64 <= boundary
    descs = [Desc(c.mem.gpa_of(hoff), BLK_HDR.size, DESC_F_NEXT),
             Desc(c.mem.gpa_of(doff), len(data), DESC_F_NEXT),
             Desc(c.mem.gpa_of(soff), 1, DESC_F_WRITE)]
    return c.submit_chain(descs, status_off=soff, chunks=[hch, sch, filler, dch], publish=False)


@pytest.mark.parametrize("poll", ["event", "spin", "hybrid"])
def test_shrunk_data_never_reaches_the_disk(two, image, poll):
    """The file is cut below a write's data buffer after the request was
    built and before it is published: the copy of the data faults in the
    server, which must not die, must not write the zeros it got, and closes
    the connection with one line."""
    s = two(poll=poll)
    mark = s.vu.mark()
    old = b"\x4c" * 8192
    with s.vu.client() as c:
        c.handshake(event_idx=True)
        c.write(100, old)
        req = write_above(c, 100, b"\x99" * 8192, boundary=8 * MiB)
        c.mem.shrink(8 * MiB)       # this process must not touch past 8 MiB either
        c.publish([req.head])
        log = s.vu.expect_log(SHRINK_LINE, since=mark)
        assert c.wait_eof(timeout=5), f"the connection stayed open:\n{log[-2000:]}"
        assert len(re.findall(r"shrank its memory file", s.vu.stderr[mark:])) == 1
        assert s.vu.alive(), s.vu.stderr[-3000:]
    with open(image, "rb") as f:
        f.seek(100 * SECTOR)
        assert f.read(8192) == old, "data read from the shrunk file reached the disk"
    s.assert_healthy()
    with s.vu.client() as c:
        c.handshake()
        assert c.read(100, 8192) == old


@pytest.mark.parametrize("poll", ["event", "spin"])
def test_shrunk_to_nothing_then_kicked(two, poll):
    """The whole file goes after SET_MEM_TABLE, rings and all; the front end
    then kicks (it must not touch its own mapping any more). The server
    finds zeros where the rings were, says why it closes, and lives."""
    s = two(poll=poll)
    mark = s.vu.mark()
    with s.vu.client() as c:
        c.handshake(event_idx=True)
        c.write(0, b"\x17" * 4096)
        c.mem.shrink(0)
        c.kick()
        s.vu.expect_log(SHRINK_LINE, since=mark)
        assert c.wait_eof(timeout=5)
        log = s.vu.stderr[mark:]
        assert "the queue stops" not in log, f"the lost memory was reported as a broken queue:\n{log}"
    s.assert_healthy()
    s.assert_nbd_answers(b"\x17" * 4096)


def test_sealed_memory_cannot_shrink_and_serves(two, image):
    """QEMU's memory-backend-memfd seals its memfd: shrinking it fails, and
    isolde serves such memory exactly as before."""
    s = two()
    with s.vu.client(sealed=True) as c:
        c.handshake(event_idx=True)
        with pytest.raises(PermissionError):
            c.mem.shrink(0)
        exercise_io(c, image, seed=41)
    assert "shrank" not in s.vu.stderr
    s.assert_healthy()


def test_memory_tables_held_by_requests_are_bounded(two):
    """A front end that sends SET_MEM_TABLE again and again while requests
    (drivers stopped) hold each earlier table mapped: past 8 tables the
    export refuses and closes the connection, so that one front end cannot
    fill the process's SIGBUS registry (or its address space) with mappings."""
    s = two()
    mark = s.vu.mark()
    with s.vu.client(timeout=10) as c:
        c.handshake(event_idx=True, queue_size=64)
        with DriversStopped(s.pid):
            with pytest.raises((Closed, VhostUserError, OSError)):
                for i in range(12):
                    c.submit_read(8 * i, 4096, indirect=True)
                    wait_for(f"{i + 1} in flight", lambda: s.vhost_status()["inflight"] == i + 1, timeout=1)
                    c.set_mem_table()
            assert i == 7, f"SET_MEM_TABLE number {i + 1} was the one refused"
            s.vu.expect_log(r"SET_MEM_TABLE: 8 memory tables are still mapped for requests in flight",
                            since=mark)
    wait_for("in flight drained", lambda: s.vhost_status()["inflight"] == 0, timeout=20)
    s.assert_healthy()


# ---------------------------------------------------------------------------
# the per-pass budget and the export's memory limit
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
@pytest.mark.parametrize("poll", ["event", "hybrid", "spin"])
def test_budget_leaves_no_request_behind(two, poll, event_idx):
    """1000 requests (reads, and GET_IDs the device answers at once) made
    available with a single kick: far more than one pass takes. With
    EVENT_IDX the guest will not kick again, so only the server's own later
    passes can take the rest; every request must complete."""
    s = two(poll=poll)
    with s.vu.client(timeout=30) as c:
        c.handshake(event_idx=event_idx, queue_size=1024)
        c.write(0, bytes(range(256)) * 16)
        reqs = []
        for i in range(1000):
            if i % 3 == 2:
                reqs.append(c.blk_request(8, 0, in_len=20, indirect=True, publish=False))
            else:
                reqs.append(c.submit_read(0, 512, indirect=True, publish=False))
        assert len(reqs) > 10 * PASS_BUDGET
        c.publish([r.head for r in reqs])
        c.wait(reqs, timeout=30)
        assert all(r.status == S_OK for r in reqs), [r for r in reqs if r.status != S_OK][:3]
        assert all(r.data == bytes(range(256)) * 2 for r in reqs if r.kind == T_IN)
        assert not c.bogus
    s.assert_healthy()


def shared_indirect_read(c, data_segments):
    """One indirect table every head can name: a 512-byte read gathered in
    data_segments pieces. Returns its (gpa, byte length)."""
    sizes = [512 // data_segments + (1 if i < 512 % data_segments else 0) for i in range(data_segments)]
    hoff, _ = c.buffer(BLK_HDR.pack(T_IN, 0, 0))
    doff, _ = c.buffer(length=512)
    soff, _ = c.buffer(length=1)
    table = [DESC.pack(c.mem.gpa_of(hoff), BLK_HDR.size, DESC_F_NEXT, 1)]
    pos = 0
    for i, n in enumerate(sizes):
        table.append(DESC.pack(c.mem.gpa_of(doff + pos), n, DESC_F_NEXT | DESC_F_WRITE, i + 2))
        pos += n
    table.append(DESC.pack(c.mem.gpa_of(soff), 1, DESC_F_WRITE, 0))
    toff, _ = c.buffer(b"".join(table))
    return c.mem.gpa_of(toff), 16 * len(table)


def stable_inflight(s, gap=0.15):
    """In flight, if it is more than 1000 and the same twice `gap` apart."""
    a = s.vhost_status()["inflight"]
    time.sleep(gap)
    b = s.vhost_status()["inflight"]
    return b if a == b and b > 1000 else 0


def test_export_memory_limit_then_everything_completes(two):
    """32768 requests of 514 segments each, one per head of a 32768-entry
    queue, with the drivers stopped: the export takes them until the
    requests in flight hold its 64 MiB limit, then waits (in flight stays
    where it is, far below the queue). Once the drivers run again, every
    request completes."""
    s = two(poll="event")
    num = 32768
    with s.vu.client(timeout=60, mem_size=16 * MiB) as c:
        c.handshake(event_idx=True, queue_size=num)
        tgpa, tlen = shared_indirect_read(c, 512)
        for h in range(num):
            c.mem.write(c.desc_off + 16 * h, DESC.pack(tgpa, tlen, DESC_F_INDIRECT, 0))
        with DriversStopped(s.pid):
            c.publish(range(num))
            held = wait_for("in flight to stop growing", lambda: stable_inflight(s), timeout=1.5,
                            interval=0)
        print(f"{held} requests in flight at the limit")
        per_request = 514 * 16 + 300    # its segments, and a little for the rest
        assert 1000 < held <= (64 * MiB) // per_request, \
            f"{held} requests in flight, {num} available: the 64 MiB limit did not hold"
        wait_for("every request to complete", lambda: c.used_idx() == num % 65536 and num, timeout=60,
                 interval=0.05)
        st = s.vhost_status()
        assert st["requests"] == num and st["inflight"] == 0, st
    s.assert_healthy()


# ---------------------------------------------------------------------------
# what the guest can make us log
# ---------------------------------------------------------------------------

def test_bad_request_flood_is_rate_limited(two):
    """20000 reads past the end of the disk, each a line without a limit.
    The lines that reach stderr are bounded by the token bucket, and with
    the counts of the suppressed ones they add up to exactly what was sent."""
    s = two()
    mark = s.vu.mark()
    sent = 0
    with s.vu.client(timeout=30) as c:
        c.handshake(event_idx=True, queue_size=256)
        cap = c.capacity
        start = time.monotonic()
        while sent < 20000:
            reqs = [c.submit_read(cap + 8, 512, indirect=True) for _ in range(200)]
            c.wait(reqs)
            assert all(r.status == S_IOERR for r in reqs)
            sent += len(reqs)
        seconds = time.monotonic() - start
        time.sleep(1.0)     # room for one more line, which reports the suppressed count
        c.read(cap + 16, 512, check=False)
        sent += 1
        last = re.compile(rf"\d+ messages suppressed\n[^\n]*request at descriptor[^\n]* at sector {cap + 16}\)")
        wait_for("the last line and the count before it", lambda: last.search(s.vu.stderr[mark:]))
        log = s.vu.stderr[mark:]
    lines = log.splitlines()
    shown = [l for l in lines if "request at descriptor" in l]
    suppressed = sum(int(m) for m in re.findall(r"(\d+) messages suppressed", log))
    bound = 2 * (LOG_BURST + LOG_PER_SECOND * (seconds + 2)) + 10
    print(f"{sent} bad requests in {seconds:.1f} s: {len(lines)} lines, {suppressed} suppressed")
    assert len(lines) <= bound, f"{len(lines)} lines for {sent} bad requests in {seconds:.1f} s"
    assert len(shown) + suppressed == sent, f"{len(shown)} shown + {suppressed} suppressed != {sent} sent"
    s.assert_healthy()
