"""The vhost-user-blk export (`isolde serve --export vhost-user-blk:SOCK`)
driven by a Python front end (vhost_user_client.py) that plays QEMU's part.

- The front end is first proved against a known-good back end,
  qemu-storage-daemon, so that a failure against isolde is isolde's.
- Then isolde: I/O through every descriptor layout, DISCARD, WRITE_ZEROES,
  GET_ID, requests past the end, many in flight, queue stop/resume, index
  wrap, reconnects, and a driver SIGKILL storm under a stream of I/O.
- Then what no QEMU sends: malformed vhost-user messages and malformed
  descriptor chains (the guest is untrusted). After each, isolde logs what
  was wrong, survives (also under ASan), wrote nothing outside the
  request's own buffers, and serves a new connection.

Every server, socket and temporary file is removed whether a test passes or not."""
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import assert_no_sanitizer_report
from nbd_helpers import KillStorm, Served
from vhost_user_client import (BLK_F_DISCARD, DESC, BLK_F_FLUSH, BLK_F_WRITE_ZEROES, BLK_HDR, DESC_F_INDIRECT,
                               DESC_F_NEXT, DESC_F_WRITE, F_PROTOCOL_FEATURES, F_VERSION_1, FLAG_NEED_REPLY,
                               FLAG_REPLY, GET_FEATURES, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ,
                               RING_F_EVENT_IDX, RING_F_INDIRECT_DESC, S_IOERR, S_OK, SECTOR,
                               SET_FEATURES, SET_MEM_TABLE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_NUM,
                               T_IN, T_OUT, U64, VERSION, VERSION_MASK, VRING_ADDR, VRING_STATE,
                               Desc, Rel, VhostUserBlk, bit)

MiB = 1 << 20
IMAGE_SIZE = 32 * MiB           # conftest's `image`
QSD = "/usr/bin/qemu-storage-daemon"


# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------

class Qsd:
    """qemu-storage-daemon exporting IMG as vhost-user-blk on a Unix socket."""

    def __init__(self, image):
        self.dir = tempfile.mkdtemp(prefix="isolde-vu-qsd-", dir="/tmp")
        self.sock = os.path.join(self.dir, "vu.sock")
        self.image = image
        self.proc = subprocess.Popen(
            [QSD, "--blockdev", f"driver=file,node-name=file0,filename={image},discard=unmap",
             "--blockdev", "driver=raw,node-name=disk,file=file0,discard=unmap",
             "--export", f"type=vhost-user-blk,id=exp0,node-name=disk,addr.type=unix,"
                         f"addr.path={self.sock},writable=on"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.close()
                raise AssertionError(f"qemu-storage-daemon did not start:\n{out}")
            time.sleep(0.02)

    def client(self, **kw):
        return VhostUserBlk(self.sock, **kw)

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = ""
        shutil.rmtree(self.dir, ignore_errors=True)
        return out


class VuServer:
    """`isolde serve --export vhost-user-blk:SOCK[,poll=MODE]`, its stderr drained
    by nbd_helpers.Served's thread."""

    def __init__(self, isolde, image, *extra, poll=None):
        self.dir = tempfile.mkdtemp(prefix="isolde-vu-", dir="/tmp")
        self.sock = os.path.join(self.dir, "vu.sock")
        self.image = image
        spec = f"vhost-user-blk:{self.sock}" + (f",poll={poll}" if poll else "")
        self.srv = None
        try:
            self.srv = Served(isolde, image, *extra, export=spec)
            self.srv.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def stderr(self):
        return self.srv.stderr

    def alive(self):
        return self.srv.alive()

    def mark(self):
        return len(self.stderr)

    def expect_log(self, pattern, since=0, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr[since:]
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"isolde never logged /{pattern}/; its stderr since the case began:\n"
                                     f"{text[-3000:] or '(nothing)'}")
            time.sleep(0.02)

    def client(self, **kw):
        return VhostUserBlk(self.sock, **kw)

    def assert_healthy(self):
        """Alive, no sanitizer report, and a new connection does a handshake and one read."""
        assert self.alive(), f"isolde serve died:\n{self.stderr[-4000:]}"
        assert_no_sanitizer_report(self.stderr)
        with self.client() as c:
            c.handshake()
            r = c.read(0, 4096, check=False)
            assert r.status == S_OK, f"a fresh connection's read: {r}\n{self.stderr[-3000:]}"
        assert self.alive(), self.stderr[-4000:]

    def close(self):
        try:
            if self.srv is not None:
                self.srv.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def qsd(tmp_path):
    if not os.path.exists(QSD):
        pytest.fail(f"{QSD} is missing: run `make deps` as root (qemu-system-common)")
    img = tmp_path / "qsd.img"
    with open(img, "wb") as f:
        f.truncate(IMAGE_SIZE)
    q = Qsd(img)
    yield q
    q.close()


@pytest.fixture
def vu(any_isolde, image):
    """vu(*extra, poll=None): a running vhost-user-blk export of the 32 MiB
    test image, normal and ASan builds; stopped and removed afterwards."""
    started = []

    def start(*extra, poll=None):
        s = VuServer(any_isolde, image, *extra, poll=poll)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
    for s in started:
        assert_no_sanitizer_report(s.stderr)


class SharedServer:
    """One server per build for the many malformed-input cases (each on its
    own connection); a case that killed it gets it restarted for the next."""

    def __init__(self, isolde, image):
        self.isolde, self.image, self.cur = isolde, image, None

    def get(self):
        if self.cur is not None and not self.cur.alive():
            self.cur.close()
            self.cur = None
        if self.cur is None:
            self.cur = VuServer(self.isolde, self.image)
        return self.cur

    def close(self):
        if self.cur is not None:
            self.cur.close()


@pytest.fixture(scope="module")
def shared(any_isolde, tmp_path_factory):
    img = tmp_path_factory.mktemp("vu-shared") / "disk.img"
    with open(img, "wb") as f:
        f.truncate(IMAGE_SIZE)
    s = SharedServer(any_isolde, img)
    yield s
    s.close()


# ---------------------------------------------------------------------------
# I/O both back ends must get right
# ---------------------------------------------------------------------------

def io_cases(capacity):
    """(sector, bytes, segments, indirect)"""
    return [
        (0, 4096, 1, False),
        (8, 512, 1, False),
        (1000, 64 * 1024, 4, False),
        (4096, 12288, 3, True),
        (20000, 1536, 3, False),                 # 512-byte segments
        (50000, 4096, 3, True),                  # segments of 1366/1365/1365 bytes
        (30000, 256 * 1024, 8, True),
        (capacity - 128, 64 * 1024, 16, True),   # the last 64 KiB
    ]


def exercise_io(c, image_path, seed=1, interrupts_only=False):
    """Writes at several offsets in several layouts, FLUSH, read back in other
    layouts, and the image file on the host holds the data."""
    rng = random.Random(seed)
    cases = io_cases(c.capacity)
    data = {}
    for sector, size, segs, ind in cases:
        data[sector] = rng.randbytes(size)
        r = c.write(sector, data[sector], segs=segs, indirect=ind, check=False,
                    interrupts_only=interrupts_only)
        assert r.status == S_OK, f"write {size} bytes at sector {sector} ({segs} segs, indirect={ind}): {r}"
    r = c.flush(interrupts_only=interrupts_only)
    assert r.status == S_OK, r
    for sector, size, segs, ind in cases:
        got = c.read(sector, size, segs=segs % 3 + 1, indirect=not ind, interrupts_only=interrupts_only)
        assert got == data[sector], f"read back {size} bytes at sector {sector} differs"
    with open(image_path, "rb") as f:
        for sector, size, _segs, _ind in cases:
            f.seek(sector * SECTOR)
            assert f.read(size) == data[sector], f"the image on the host lacks the data at sector {sector}"
    assert not c.bogus, f"used entries naming no request: {c.bogus}"
    assert c.mem.canaries_intact() == [], "the back end wrote into free guest memory"


# ---- (a) the client against qemu-storage-daemon ----

@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
def test_qsd_round_trip(qsd, event_idx):
    with qsd.client() as c:
        c.handshake(event_idx=event_idx)
        assert c.has(F_VERSION_1) and c.has(RING_F_INDIRECT_DESC)
        assert c.event_idx == event_idx
        assert c.capacity == IMAGE_SIZE // SECTOR
        exercise_io(c, qsd.image, seed=3 + event_idx)
        # interrupt-driven completion: one call per request when each waits for the last
        before = c.calls
        for i in range(8):
            c.write(i * 8, bytes([i]) * 4096, interrupts_only=True)
        assert c.calls - before >= 8


def test_qsd_zeroes_id_past_end_and_resume(qsd):
    """The client's encodings of WRITE_ZEROES, GET_ID, a request past the
    end, GET_VRING_BASE and a stopped/resumed queue, as a real back end sees them."""
    with qsd.client() as c:
        c.handshake()
        c.write(64, os.urandom(8192))
        assert c.write_zeroes([(64, 16)]).status == S_OK
        assert c.read(64, 8192) == bytes(8192)
        r = c.get_id()
        assert r.status == S_OK and len(r.data) == 20
        assert c.read(c.capacity - 1, 4096, check=False).status == S_IOERR
        n = c.get_vring_base(0)
        assert n == 5
        c.resume_queue()
        assert c.read(64, 512) == bytes(512)
    with qsd.client() as c:     # the 16-bit ring indices wrap
        c.handshake(base=65530, event_idx=True)
        for i in range(12):
            c.write(i, bytes([i + 1]) * 512)
        assert c.get_vring_base(0) == (65530 + 12) & 0xFFFF


# ---------------------------------------------------------------------------
# (b) isolde's export
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
def test_round_trip(vu, image, event_idx):
    s = vu()
    with s.client() as c:
        c.handshake(event_idx=event_idx)
        assert c.event_idx == event_idx, f"offered {c.offered:#x}"
        assert c.has(RING_F_INDIRECT_DESC), f"offered {c.offered:#x}"
        exercise_io(c, image, seed=10 + event_idx)


def test_features_and_config(vu):
    s = vu()
    with s.client() as c:
        c.negotiate(event_idx=True)
        off = c.offered
        for b, what in [(F_VERSION_1, "VERSION_1"), (F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
                        (RING_F_INDIRECT_DESC, "INDIRECT_DESC"), (RING_F_EVENT_IDX, "EVENT_IDX"),
                        (BLK_F_FLUSH, "FLUSH"), (BLK_F_DISCARD, "DISCARD"),
                        (BLK_F_WRITE_ZEROES, "WRITE_ZEROES")]:
            assert off & bit(b), f"{what} not offered ({off:#x})"
        for b in (5, 34, 33):   # RO on a writable export; packed rings and IOMMU are not implemented
            assert not off & bit(b), f"feature bit {b} offered ({off:#x})"
        prot = c.offered_protocol
        assert prot & bit(PROTOCOL_F_CONFIG) and prot & bit(PROTOCOL_F_MQ), f"protocol features {prot:#x}"
        assert c.num_queues >= 1
        cfg = c.config
        assert cfg["capacity"] == IMAGE_SIZE // SECTOR, cfg
        if off & bit(6):
            assert cfg["blk_size"] >= 512 and cfg["blk_size"] & (cfg["blk_size"] - 1) == 0, cfg
        if off & bit(2):
            assert cfg["seg_max"] >= 1, cfg
        if off & bit(BLK_F_DISCARD):
            assert cfg["max_discard_sectors"] > 0 and cfg["max_discard_seg"] >= 1, cfg
        if off & bit(BLK_F_WRITE_ZEROES):
            assert cfg["max_write_zeroes_sectors"] > 0 and cfg["max_write_zeroes_seg"] >= 1, cfg
        c.start_queue()
        assert c.read(0, 512) == bytes(512)


@pytest.mark.parametrize("poll", ["event", "spin", "hybrid"])
def test_poll_modes_and_interrupts(vu, image, poll):
    """Each poll mode serves I/O, and signals the call eventfd: the client
    looks at the used ring only after a call, as an interrupt-driven guest does."""
    s = vu(poll=poll)
    for event_idx in (False, True):
        with s.client() as c:
            c.handshake(event_idx=event_idx)
            before = c.calls
            for i in range(16):
                c.write(i * 8, bytes([i + 1]) * 4096, interrupts_only=True, timeout=5)
                assert c.read(i * 8, 4096, interrupts_only=True, timeout=5) == bytes([i + 1]) * 4096
            assert c.calls - before >= 32, f"{c.calls - before} calls for 32 sequential requests"
    with s.client() as c:
        c.handshake()
        exercise_io(c, image, seed=20)


def test_discard_write_zeroes_get_id(vu, image):
    s = vu()
    with s.client() as c:
        c.handshake()
        assert c.has(BLK_F_DISCARD) and c.has(BLK_F_WRITE_ZEROES)
        for rtype, run in (("discard", lambda segs: c.discard(segs)),
                           ("write-zeroes", lambda segs: c.write_zeroes(segs)),
                           ("write-zeroes-unmap", lambda segs: c.write_zeroes(segs, unmap=True))):
            c.write(128, os.urandom(64 * 1024))
            c.write(1024, os.urandom(8192))
            r = run([(136, 32)])            # 16 KiB from 4 KiB into the 64 KiB
            assert r.status == S_OK, f"{rtype}: {r}"
            got = c.read(128, 64 * 1024)
            assert got[4096:4096 + 16384] == bytes(16384), f"{rtype}: not zeroes"
            assert got[:4096] != bytes(4096) and got[20480:] != bytes(len(got) - 20480), \
                f"{rtype} reached outside its range"
            assert c.read(1024, 8192) != bytes(8192)
            assert c.flush().status == S_OK
            with open(image, "rb") as f:
                f.seek(136 * SECTOR)
                assert f.read(16384) == bytes(16384), f"{rtype}: the image still holds data"
        r = c.get_id()
        assert r.status == S_OK, r
        assert len(r.data) == 20 and r.data != b"\x5a" * 20, f"GET_ID wrote nothing: {r.data!r}"


def test_requests_past_the_end_fail(vu):
    s = vu()
    with s.client() as c:
        c.handshake()
        cap = c.capacity
        bad = [
            ("read straddling the end", lambda: c.read(cap - 1, 4096, check=False)),
            ("read at capacity", lambda: c.read(cap, 512, check=False)),
            ("write at capacity", lambda: c.write(cap, bytes(512), check=False)),
            ("write straddling the end", lambda: c.write(cap - 4, bytes(4096), check=False)),
            ("read whose byte offset wraps 2^64", lambda: c.read(1 << 55, 512, check=False)),
            ("read at sector 2^64-1", lambda: c.read(2**64 - 1, 512, check=False)),
            ("discard past the end", lambda: c.discard([(cap - 8, 16)])),
            ("write-zeroes past the end", lambda: c.write_zeroes([(cap, 8)])),
            ("read not a multiple of 512", lambda: c.read(0, 100, check=False)),
        ]
        for what, run in bad:
            r = run()
            assert r.status == S_IOERR, f"{what}: {r}"
        # the last sector itself is fine
        c.write(cap - 1, b"\x77" * 512)
        assert c.read(cap - 1, 512) == b"\x77" * 512
    s.assert_healthy()


def test_used_len_is_bytes_written(vu):
    """The used ring's len is what the device wrote: data + status byte for
    a read, 1 for a write or a flush."""
    s = vu()
    with s.client() as c:
        c.handshake()
        w = c.write(0, os.urandom(8192))
        assert w.used_len == 1, w
        r = c.read(0, 8192, check=False)
        assert r.used_len == 8193, r
        f = c.flush()
        assert f.used_len == 1, f


def test_many_requests_in_flight(vu):
    s = vu()
    rng = random.Random(7)
    with s.client() as c:
        c.handshake(event_idx=True)
        blocks = rng.sample(range(IMAGE_SIZE // 16384), 48)
        data = {b: rng.randbytes(16384) for b in blocks}
        reqs = [c.submit_write(b * 32, data[b], segs=1 + i % 4, indirect=bool(i % 2))
                for i, b in enumerate(blocks)]
        assert len(c.inflight) == 48
        c.wait(reqs)
        assert all(r.status == S_OK for r in reqs), [r for r in reqs if r.status != S_OK][:3]
        reqs = [c.submit_read(b * 32, 16384, segs=1 + i % 3, indirect=not i % 2) for i, b in enumerate(blocks)]
        c.wait(reqs)
        for b, r in zip(blocks, reqs):
            assert r.status == S_OK and r.data == data[b], f"block {b}: {r}"
        assert not c.bogus


def test_call_fd_that_is_never_drained(vu):
    """A front end may pass as its call fd a pipe it never reads. The export
    notifies on every completion here (no EVENT_IDX, no NO_INTERRUPT), so
    the pipe fills after 8192 completions; a blocking write would then stop
    the server loop. Requests must go on completing."""
    s = vu()
    rfd, wfd = os.pipe()
    try:
        with s.client() as c:
            c.handshake()
            c.set_vring_call(0, wfd)
            for _ in range(320):  # 10240 completions, more than a 64 KiB pipe holds
                reqs = [c.submit_read(8 * i, 512) for i in range(32)]
                c.wait(reqs, timeout=10)
                assert all(r.status == S_OK for r in reqs), reqs[:3]
            assert len(os.read(rfd, 1 << 20)) >= 65536 - 8  # the pipe did fill
    finally:
        os.close(rfd)
        os.close(wfd)
    s.assert_healthy()


def test_stop_resume_and_vring_base(vu):
    """GET_VRING_BASE stops the queue and answers the number of avail
    entries processed; the queue resumes from there, also across the
    16-bit wrap of the ring indices."""
    s = vu()
    with s.client() as c:
        c.handshake()
        for i in range(10):
            c.write(i * 8, bytes([i]) * 4096)
        assert c.get_vring_base(0) == 10
        c.resume_queue()
        for i in range(5):
            assert c.read(i * 8, 4096) == bytes([i]) * 4096
        assert c.get_vring_base(0) == 15
    for event_idx in (False, True):
        with s.client() as c:
            c.handshake(base=65530, event_idx=event_idx)
            reqs = [c.submit_write(i * 8, bytes([i + 1]) * 4096) for i in range(8)]
            c.wait(reqs)
            assert all(r.status == S_OK for r in reqs)
            for i in range(12):
                assert c.read(i % 8 * 8, 4096) == bytes([i % 8 + 1]) * 4096
            assert c.get_vring_base(0) == (65530 + 8 + 12) & 0xFFFF
    s.assert_healthy()


def test_reconnect_keeps_data(vu):
    s = vu()
    data = os.urandom(64 * 1024)
    with s.client() as c:
        c.handshake()
        c.write(2048, data, segs=4)
    with s.client() as c:     # a new connection after the first closed
        c.handshake(event_idx=True)
        assert c.read(2048, len(data)) == data
        # close with requests in flight
        for i in range(16):
            c.submit_write(4096 + i * 128, os.urandom(64 * 1024), segs=2)
    for _ in range(3):
        with s.client() as c:
            c.handshake()
            assert c.read(2048, len(data)) == data
    s.assert_healthy()


def test_driver_sigkill_storm_under_io(vu, any_isolde):
    """Drivers SIGKILLed every 20 ms while a stream of writes and reads (8
    in flight) runs: every request completes OK with the right data."""
    s = vu()
    rng = random.Random(99)
    nblocks = 2048                       # 4 KiB blocks over the first 8 MiB
    model = {}

    def evidence():
        try:
            st = s.srv.status()
        except AssertionError as e:
            st = f"(no status: {e})"
        lines = [l for l in s.stderr.splitlines() if "recovered in" not in l and "failed (killed" not in l]
        return f"\nstatus: {st}\nisolde's stderr without the restart lines:\n" + "\n".join(lines[-30:])

    with s.client(timeout=30) as c:
        c.handshake(event_idx=True)
        storm = KillStorm(s.srv.proc.pid, seconds=2.0, interval=0.02)
        storm.start()
        batches = 0
        try:
            while storm.is_alive() or batches < 3:
                picks = rng.sample(range(nblocks), 8)
                reqs = []
                for b in picks:
                    if b in model and rng.random() < 0.5:
                        reqs.append(("r", b, c.submit_read(b * 8, 4096, segs=2)))
                    else:
                        d = rng.randbytes(4096)
                        reqs.append(("w", b, d, c.submit_write(b * 8, d, indirect=True)))
                try:
                    c.wait([x[-1] for x in reqs], timeout=30)
                except TimeoutError as e:
                    raise AssertionError(f"batch {batches}: {e}{evidence()}") from None
                for x in reqs:
                    r = x[-1]
                    assert r.status == S_OK, f"batch {batches}: {x[0]} of block {x[1]}: {r}{evidence()}"
                    if x[0] == "r":
                        assert r.data == model[x[1]], f"batch {batches}: block {x[1]} read back wrong"
                    else:
                        model[x[1]] = x[2]
                batches += 1
        finally:
            storm.join()
        for b, d in model.items():
            assert c.read(b * 8, 4096) == d, f"block {b} differs after the storm"
    assert storm.kills >= 20, f"only {storm.kills} kills landed"
    st = s.srv.status()
    assert st["restarts"] > 0 and st["state"] == "running", f"{st}{evidence()}"
    s.assert_healthy()


# ---------------------------------------------------------------------------
# (c) malformed vhost-user messages
# ---------------------------------------------------------------------------

def _full_queue_setup_until_kick(c):
    c.negotiate()
    c.layout_queue()
    c.set_mem_table()
    c.set_vring_num(0, c.queue_size)
    c.set_vring_base(0, 0)
    c.set_vring_addr(0, *c.ring_addrs())


def _regions_2_fds_1(c):
    c.negotiate()
    m = c.mem
    half = m.size // 2
    regions = [(m.gpa, half, m.uaddr, 0), (m.gpa + half, half, m.uaddr + half, half)]
    c.send(SET_MEM_TABLE, c.mem_table_payload(regions), fds=[m.fd])


def _regions_0(c):
    c.negotiate()
    c.send(SET_MEM_TABLE, c.mem_table_payload([]))


def _regions_overlap(c):
    c.negotiate()
    m = c.mem
    regions = [(0x100000, 1 * MiB, 0x7f0000000000, 0), (0x180000, 1 * MiB, 0x7f1000000000, 1 * MiB)]
    c.send(SET_MEM_TABLE, c.mem_table_payload(regions), fds=[m.fd, m.fd])


def _region_wraps(c):
    c.negotiate()
    c.send(SET_MEM_TABLE, c.mem_table_payload([(2**64 - 4096, 8192, 0x7f0000000000, 0)]), fds=[c.mem.fd])


def _region_beyond_file(c):
    c.negotiate()
    m = c.mem
    c.send(SET_MEM_TABLE, c.mem_table_payload([(m.gpa, m.size, m.uaddr, 4096)]), fds=[m.fd])


def _vring_num_100(c):
    c.negotiate()
    c.layout_queue()
    c.set_mem_table()
    c.send(SET_VRING_NUM, VRING_STATE.pack(0, 100))


def _vring_addr_outside(c):
    c.negotiate()
    c.layout_queue()
    c.set_mem_table()
    c.set_vring_num(0, c.queue_size)
    c.set_vring_base(0, 0)
    _desc, used, avail = c.ring_addrs()
    c.send(SET_VRING_ADDR, VRING_ADDR.pack(0, 0, c.mem.uaddr + c.mem.size + 0x10000, used, avail, 0))


def _queue_index_200(c):
    c.negotiate()
    c.send(SET_VRING_NUM, VRING_STATE.pack(200, 128))


def _features_not_offered(c):
    c.set_owner()
    offered = c.get_features()
    assert not offered & bit(50)
    c.send(SET_FEATURES, U64.pack(offered | bit(50)))


def _kick_without_fd(c):
    _full_queue_setup_until_kick(c)
    c.send(SET_VRING_KICK, U64.pack(0))


MALFORMED = {
    # name: (what to send, the log line isolde commits to)
    "payload-too-large": (lambda c: c.send(SET_FEATURES, b"", size=1 * MiB), r"size \d+ exceeds"),
    "set-features-short": (lambda c: (c.get_features(), c.send(SET_FEATURES, b"\0\0\0\0")),
                           r"SET_FEATURES: payload of 4 bytes, expected 8"),
    "mem-table-2-regions-1-fd": (_regions_2_fds_1, r"SET_MEM_TABLE: 2 regions but 1 fds"),
    "mem-table-0-regions": (_regions_0, r"SET_MEM_TABLE: 0 regions"),
    "mem-table-overlap": (_regions_overlap, r"SET_MEM_TABLE: regions 0 and 1 overlap"),
    "mem-table-wraps": (_region_wraps, r"SET_MEM_TABLE: region 0 wraps"),
    "mem-table-beyond-file": (_region_beyond_file, r"SET_MEM_TABLE: region 0 .*beyond the end of its file"),
    "vring-num-not-power-of-2": (_vring_num_100, r"SET_VRING_NUM: .*power of two"),
    "vring-addr-outside": (_vring_addr_outside, r"SET_VRING_ADDR: .*not in guest memory"),
    "queue-index-200": (_queue_index_200, r"queue index 200 out of range"),
    "features-not-offered": (_features_not_offered, r"SET_FEATURES: .*not offered"),
    "kick-without-fd": (_kick_without_fd, r"SET_VRING_KICK: .*no fd"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_message_closes_connection(shared, case):
    s = shared.get()
    send, pattern = MALFORMED[case]
    mark = s.mark()
    with s.client() as c:
        send(c)
        closed = c.wait_eof(timeout=5)
        log = s.expect_log(pattern, since=mark)
        assert closed, f"isolde kept the connection open after {case}; it logged:\n{log[-2000:]}"
    s.assert_healthy()


def test_unknown_request_is_nacked_and_connection_stays(shared):
    s = shared.get()
    mark = s.mark()
    with s.client() as c:
        c.negotiate()
        c.send(999, b"", flags=VERSION | FLAG_NEED_REPLY)
        r = c.recv_reply(timeout=5)
        assert r.request == 999 and r.flags & FLAG_REPLY and r.flags & VERSION_MASK == VERSION, r
        assert r.u64 != 0, "unknown request acknowledged as a success"
        s.expect_log(r"unknown request 999", since=mark)
        # the same connection goes on
        c.start_queue()
        c.write(0, b"\x42" * 4096)
        assert c.read(0, 4096) == b"\x42" * 4096
    s.assert_healthy()


def test_unknown_request_without_need_reply_gets_no_reply(shared):
    s = shared.get()
    with s.client() as c:
        c.negotiate()
        c.send(999, b"12345678")
        # the next reply is GET_FEATURES's, not one for 999
        r = c.call(GET_FEATURES, reply=True)
        assert r.request == GET_FEATURES
    s.assert_healthy()


# ---------------------------------------------------------------------------
# (d) malformed descriptor chains (the guest is untrusted)
# ---------------------------------------------------------------------------

def _hdr(c, rtype, sector=0, length=BLK_HDR.size, flags=DESC_F_NEXT, nxt=None):
    off, ch = c.buffer(BLK_HDR.pack(rtype, 0, sector))
    return Desc(c.mem.gpa_of(off), length, flags, nxt), ch


def _buf(c, n, flags, data=None, nxt=None):
    off, ch = c.buffer(data) if data is not None else c.buffer(length=n)
    return Desc(c.mem.gpa_of(off), n, flags, nxt), ch, off


def _chain(c, parts, status_flags=DESC_F_WRITE, status_addr=None, indirect=False, **kw):
    """parts: [(Desc, chunk, off-or-None if device-writable-ok)] then a status
    descriptor; submitted unpublished."""
    descs, chunks, in_bufs = [], [], []
    for d, ch, woff in parts:
        descs.append(d)
        if ch is not None:
            chunks.append(ch)
        if woff is not None:
            in_bufs.append(woff)
    soff, sch = c.buffer(length=1, fill=0xFF)
    chunks.append(sch)
    descs.append(Desc(c.mem.gpa_of(soff) if status_addr is None else status_addr, 1, status_flags))
    return c.submit_chain(descs, indirect=indirect, status_off=soff if status_addr is None else None,
                          in_bufs=in_bufs, chunks=chunks, publish=False, **kw)


def _read_with_data_desc(addr, length):
    def build(c):
        h, hc = _hdr(c, T_IN)
        return _chain(c, [(h, hc, None), (Desc(addr(c), length, DESC_F_NEXT | DESC_F_WRITE), None, None)])
    return build


def bad_outside_above(c):
    return _read_with_data_desc(lambda c: c.mem.gpa + c.mem.size + MiB, 4096)(c)


def bad_below_base(c):
    return _read_with_data_desc(lambda c: 0x1000, 4096)(c)


def bad_addr_wraps(c):
    return _read_with_data_desc(lambda c: 2**64 - 2048, 4096)(c)


def bad_straddles_end(c):
    # the buffer's first 2 KiB are guest memory (ours: allowed to change), the rest is not
    h, hc = _hdr(c, T_IN)
    req = _chain(c, [(h, hc, None), (Desc(c.mem.gpa + c.mem.size - 2048, 4096, DESC_F_NEXT | DESC_F_WRITE),
                                     None, None)])
    req.writable.append((c.mem.size - 2048, 2048))
    return req


def bad_straddles_end_write(c):
    h, hc = _hdr(c, T_OUT)
    return _chain(c, [(h, hc, None), (Desc(c.mem.gpa + c.mem.size - 2048, 4096, DESC_F_NEXT), None, None)])


def bad_next_out_of_range(c):
    h, hc = _hdr(c, T_IN, nxt=c.queue_size + 5)
    soff, sch = c.buffer(length=1, fill=0xFF)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    return c.submit_chain([h, d, Desc(c.mem.gpa_of(soff), 1, DESC_F_WRITE)], status_off=soff,
                          in_bufs=[(doff, 4096)], chunks=[hc, dc, sch], publish=False)


def bad_loop(c):
    # device-readable only, so that nothing but the loop is wrong: 0 -> 1 -> 0
    h, hc = _hdr(c, T_OUT)
    d, dc, _ = _buf(c, 4096, DESC_F_NEXT, nxt=Rel(0))
    return c.submit_chain([h, d], chunks=[hc, dc], publish=False)


def bad_indirect_loop(c):
    h, hc = _hdr(c, T_OUT)
    d, dc, _ = _buf(c, 4096, DESC_F_NEXT, nxt=Rel(0))
    return c.submit_chain([h, d], indirect=True, chunks=[hc, dc], publish=False)


def bad_indirect_longer_than_queue(c):
    """An indirect table of queue size + 1 entries: longer than any chain the
    driver may make (virtio 1.2 2.7.5.3.1), and than the seg_max advertised.
    The spec sets no device requirement; like QEMU's own devices, isolde
    serves indirect tables of up to 1024 entries, so it is read correctly."""
    h, hc = _hdr(c, T_IN)
    parts = [(h, hc, None)]
    for _ in range(c.queue_size - 1):
        d, dc, doff = _buf(c, 512, DESC_F_NEXT | DESC_F_WRITE)
        parts.append((d, dc, (doff, 512)))
    return _chain(c, parts, indirect=True)


def bad_indirect_huge(c):
    """An indirect table of 4097 entries (64 KiB), every data entry the same 512-byte buffer."""
    h, hc = _hdr(c, T_IN)
    d0, dc, doff = _buf(c, 512, DESC_F_NEXT | DESC_F_WRITE)
    parts = [(h, hc, None), (d0, dc, (doff, 512))]
    parts += [(Desc(d0.addr, 512, DESC_F_NEXT | DESC_F_WRITE), None, None) for _ in range(4095)]
    return _chain(c, parts, indirect=True)


def bad_indirect_len(c):
    h, hc = _hdr(c, T_IN)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    return _chain(c, [(h, hc, None), (d, dc, (doff, 4096))], indirect=True, table_len=16 * 3 - 8)


def bad_nested_indirect(c):
    # inside the indirect table, a descriptor that is itself INDIRECT
    inner_off, inner_ch = c.buffer(length=32, fill=0)
    h, hc = _hdr(c, T_IN)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    c.mem.write(inner_off, DESC.pack(d.addr, d.len, DESC_F_WRITE, 0) + bytes(16))
    nested = Desc(c.mem.gpa_of(inner_off), 16, DESC_F_NEXT | DESC_F_INDIRECT)
    return _chain(c, [(h, hc, None), (nested, inner_ch, None), (d, dc, (doff, 4096))], indirect=True)


def bad_short_header(c):
    # 8 bytes of header, then a device-writable descriptor: however the
    # device gathers the 16 header bytes, they cannot come from a buffer
    # it may only write
    h, hc = _hdr(c, T_IN, length=8)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    return _chain(c, [(h, hc, None), (d, dc, (doff, 4096))])


def bad_status_readonly(c):
    h, hc = _hdr(c, T_IN)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    req = _chain(c, [(h, hc, None), (d, dc, (doff, 4096))], status_flags=0)
    return req


def bad_flush_status_not_writable(c):
    h, hc = _hdr(c, 4)
    return _chain(c, [(h, hc, None)], status_flags=0)


def bad_status_outside(c):
    h, hc = _hdr(c, T_IN)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE)
    return _chain(c, [(h, hc, None), (d, dc, (doff, 4096))], status_addr=c.mem.gpa + c.mem.size + 4096)


def bad_writable_data_in_write(c):
    h, hc = _hdr(c, T_OUT, sector=512)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT | DESC_F_WRITE, data=b"\xEE" * 4096)
    return _chain(c, [(h, hc, None), (d, dc, (doff, 4096))])


def bad_readonly_data_in_read(c):
    h, hc = _hdr(c, T_IN, sector=512)
    d, dc, doff = _buf(c, 4096, DESC_F_NEXT, data=b"\xEE" * 4096)
    return _chain(c, [(h, hc, None), (d, dc, None)])


def bad_avail_head(c):
    soff, sch = c.buffer(length=1, fill=0xFF)
    return c.submit_chain([Desc(c.mem.gpa_of(soff), 1, DESC_F_WRITE)], chunks=[sch], publish=False,
                          head=c.queue_size + 3)


# name: (builder, expected) - "ioerr": completes with IOERR; "broken": the
# queue stops and isolde logs it; "ok": served (not malformed for the device);
# "either": whichever, each checked fully.
BAD_CHAINS = {
    "buffer-above-guest-memory": (bad_outside_above, "ioerr"),
    "buffer-below-guest-memory": (bad_below_base, "ioerr"),
    "buffer-address-wraps": (bad_addr_wraps, "ioerr"),
    "buffer-straddles-region-end": (bad_straddles_end, "ioerr"),
    "write-buffer-straddles-region-end": (bad_straddles_end_write, "ioerr"),
    "next-out-of-range": (bad_next_out_of_range, "broken"),
    "loop": (bad_loop, "broken"),
    "indirect-loop": (bad_indirect_loop, "broken"),
    "indirect-longer-than-queue": (bad_indirect_longer_than_queue, "ok"),
    "indirect-table-of-4097": (bad_indirect_huge, "either"),
    "indirect-len-not-16n": (bad_indirect_len, "either"),
    "nested-indirect": (bad_nested_indirect, "either"),
    "short-header": (bad_short_header, "ioerr"),
    "status-not-writable": (bad_status_readonly, "broken"),
    "flush-status-not-writable": (bad_flush_status_not_writable, "broken"),
    "status-outside-guest-memory": (bad_status_outside, "broken"),
    "writable-data-in-write": (bad_writable_data_in_write, "ioerr"),
    "read-only-data-in-read": (bad_readonly_data_in_read, "ioerr"),
    "avail-head-out-of-range": (bad_avail_head, "broken"),
}


def _outside_allowed(c, req, runs):
    """The parts of changed runs [(off, len)] that are neither the used ring
    nor one of the request's device-writable buffers."""
    allowed = sorted([(c.used_off, 6 + 8 * c.queue_size)] + list(req.writable))
    bad = []
    for off, n in runs:
        pos, end = off, off + n
        for a, l in allowed:
            if a + l <= pos or a >= end:
                continue
            if a > pos:
                bad.append((pos, a - pos))
            pos = max(pos, a + l)
        if pos < end:
            bad.append((pos, end - pos))
    return bad


@pytest.mark.parametrize("case", list(BAD_CHAINS))
def test_malformed_chain(shared, case):
    build, expected = BAD_CHAINS[case]
    s = shared.get()
    mark = s.mark()
    with s.client() as c:
        c.handshake()
        c.write(512, b"\x33" * 4096)           # the queue works, and sector 512 holds a pattern
        req = build(c)
        snap = bytearray(c.mem.snapshot())
        c.publish([req.head])
        a0, a1 = c.avail_off, c.avail_off + 6 + 2 * c.queue_size
        snap[a0:a1] = c.mem.read(a0, a1 - a0)   # our own publication
        snap = bytes(snap)
        c.wait_used_moves(0.5 if expected == "broken" else 1)
        time.sleep(0.05)
        # nothing written outside the request's own buffers (and the used ring);
        # compared before the client reaps and recycles anything
        bad = _outside_allowed(c, req, c.mem.changes_since(snap))
        c.reap()
        outcome = ("ok" if req.status == S_OK else "ioerr") if req.done else "broken"
        log = s.stderr[mark:]
        assert s.alive(), f"isolde died on {case}:\n{log[-4000:]}"
        assert_no_sanitizer_report(s.stderr)
        if expected != "either":
            assert outcome == expected, (f"{case}: expected {expected}, got {outcome} ({req}); isolde "
                                         f"logged:\n{log[-2000:]}")
        assert not bad, f"{case}: guest memory changed outside the request's buffers at {bad[:8]}"
        assert not c.bogus, f"{case}: used entries naming no request: {c.bogus}"
        if outcome == "ok":
            assert c.read(512, 4096) == b"\x33" * 4096, f"{case}: the queue no longer works"
        elif outcome == "ioerr":
            assert req.status == S_IOERR, f"{case}: {req}"
            assert c.read(512, 4096) == b"\x33" * 4096, f"{case}: the queue no longer works (or the write landed)"
        else:
            s.expect_log(r"queue \d+", since=mark)
            late = c.submit_read(0, 512)
            assert c.completions_within(0.3) == 0 and not late.done, \
                f"{case}: the queue went on after it broke"
    s.assert_healthy()
    # the device never wrote the bad request's data to the image
    with s.client() as c:
        c.handshake()
        assert c.read(512, 4096) == b"\x33" * 4096
