"""The NBD export (`isolde serve --export nbd:...`) with real clients -
nbdinfo, nbdcopy, qemu-img, fio - and with a raw client for the protocol
details and the bad input real clients never send. Every server, socket and
temporary file is removed whether a test passes or not."""
import os
import random
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time

import pytest

from conftest import POLICIES, assert_no_sanitizer_report, driver_children
from nbd_helpers import (CLIENT_TOOLS, CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLUSH, CMD_READ, CMD_TRIM,
                         CMD_WRITE, CMD_WRITE_ZEROES, C_FIXED_NEWSTYLE, C_NO_ZEROES, EINVAL, EIO, ENOSPC,
                         EPERM, FLAG_DF, FLAG_FUA, FLAG_NO_HOLE, INFO_BLOCK_SIZE, INFO_DESCRIPTION,
                         INFO_EXPORT, INFO_NAME, MiB, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_LIST,
                         OPT_INFO, OPT_MAGIC, OPT_STARTTLS, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID,
                         REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_SERVER, REQUEST_MAGIC,
                         TF_CAN_MULTI_CONN, TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_DF, TF_SEND_FLUSH,
                         TF_SEND_FUA, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, KillStorm, RawNbd,
                         Served, fio, free_tcp_port, need_tools, nbdinfo_json, random_file, rss_bytes,
                         run, same_files, unix_uri)

IMAGE_SIZE = 32 * MiB


@pytest.fixture(scope="module", autouse=True)
def clients():
    need_tools(*CLIENT_TOOLS)


@pytest.fixture
def scratch():
    """A private directory for data files, removed afterwards."""
    d = tempfile.mkdtemp(prefix="isolde-nbd-data-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(isolde, image):
    """serve(*extra, export=None, tool=None): a running `isolde serve` on the
    32 MiB test image (or `img=`); stopped and cleaned up after the test."""
    started = []

    def start(*extra, export=None, tool=None, img=None):
        s = Served(tool or isolde, img or image, *extra, export=export)
        started.append(s)
        return s.wait_ready()

    yield start
    for s in started:
        s.close()


def assert_still_serving(srv):
    """The server is up and a real client gets correct answers."""
    assert srv.alive(), srv.stderr
    info = nbdinfo_json(srv.uri)
    assert info["export-size"] == IMAGE_SIZE


# ---- real clients ----

def test_nbdinfo_reports_the_export(serve):
    srv = serve()
    info = nbdinfo_json(srv.uri)
    assert info["export-size"] == IMAGE_SIZE
    assert info["export-name"] == ""
    assert info["is_read_only"] is False
    assert info["can_flush"] and info["can_fua"] and info["can_trim"] and info["can_zero"]
    assert info["can_multi_conn"] is True
    assert info["block_size_minimum"] == 1
    assert info["block_size_preferred"] == 4096
    assert info["block_size_maximum"] == 32 * MiB
    assert "isolated driver" in info["description"]
    listing = run(["nbdinfo", "--list", "--json", srv.uri], timeout=60).stdout
    assert '"export-name": ""' in listing


def test_nbdcopy_round_trip(serve, scratch, image):
    srv = serve()
    src = random_file(os.path.join(scratch, "src"), IMAGE_SIZE, seed=1)
    out = os.path.join(scratch, "out")
    run(["nbdcopy", src, srv.uri])
    run(["nbdcopy", srv.uri, out])
    assert same_files(src, out)
    # The writes went through the driver into the image itself.
    assert same_files(src, image)


def test_nbdcopy_multi_conn_round_trip(serve, scratch):
    """nbdcopy spreads its requests over several connections (the export
    advertises CAN_MULTI_CONN) and many requests in flight on each."""
    srv = serve()
    src = random_file(os.path.join(scratch, "src"), IMAGE_SIZE, seed=2)
    out = os.path.join(scratch, "out")
    run(["nbdcopy", "--connections=4", "--requests=32", "--request-size=65536", src, srv.uri])
    run(["nbdcopy", "--connections=4", "--requests=32", srv.uri, out])
    assert same_files(src, out)


def test_qemu_img_compare_agrees(serve, scratch):
    srv = serve()
    ref = random_file(os.path.join(scratch, "ref.img"), IMAGE_SIZE, seed=3)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", ref, srv.uri])
    p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ref, srv.uri])
    assert "identical" in p.stdout
    # One byte changed in the reference: qemu-img must see the difference through the export.
    with open(ref, "r+b") as f:
        f.seek(IMAGE_SIZE - 4096 + 17)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", ref, srv.uri], check=False)
    assert p.returncode == 1, p.stdout + p.stderr


FIO_VERIFY = ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--verify=crc32c",
              "--verify_fatal=1", "--randrepeat=1"]


def test_fio_verified_random_writes(serve, scratch):
    srv = serve()
    w = fio(srv.uri, scratch, "verify", *FIO_VERIFY, "--do_verify=1")
    job = w["jobs"][0]
    assert job["write"]["io_bytes"] == IMAGE_SIZE and job["read"]["io_bytes"] == IMAGE_SIZE
    # A second, separate pass reads every block back and checks it.
    v = fio(srv.uri, scratch, "verify", *FIO_VERIFY, "--verify_only=1")
    assert v["jobs"][0]["read"]["io_bytes"] == IMAGE_SIZE
    # And that pass does check: one block overwritten behind fio's back fails it.
    with RawNbd(srv.sock) as c:
        c.handshake()
        assert c.write(5 * MiB, b"\xee" * 4096) == 0
    p = run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={srv.uri}", *FIO_VERIFY, "--verify_only=1",
             "--verify_state_save=0"], check=False, cwd=scratch)
    assert p.returncode != 0 and "verify" in (p.stdout + p.stderr).lower()


def test_fio_two_jobs_in_parallel(serve, scratch):
    """Two fio jobs, two connections, each verifying its own half, at the same time."""
    srv = serve()
    r = fio(srv.uri, scratch, "pair", "--rw=randrw", "--rwmixread=30", "--bs=4k", "--iodepth=16",
            "--size=16M", "--numjobs=2", "--offset_increment=16M", "--verify=crc32c",
            "--verify_fatal=1", "--do_verify=1")
    assert len(r["jobs"]) == 2
    for job in r["jobs"]:
        assert job["error"] == 0 and job["write"]["io_bytes"] > 0


def test_readonly_export_refuses_writes_with_eperm(serve, scratch, image):
    with open(image, "r+b") as f:
        f.write(b"\xab" * 4096)
    srv = serve("--readonly")
    info = nbdinfo_json(srv.uri)
    assert info["is_read_only"] is True and not info["can_trim"] and not info["can_zero"]
    src = random_file(os.path.join(scratch, "src"), IMAGE_SIZE, seed=4)
    p = run(["nbdcopy", src, srv.uri], check=False)
    assert p.returncode != 0
    # A client that ignores NBD_FLAG_READ_ONLY: the server itself refuses.
    with RawNbd(srv.sock) as c:
        c.handshake()
        assert c.tflags & TF_READ_ONLY
        assert c.write(0, b"x" * 512) == EPERM
        assert c.call(CMD_TRIM, 0, 4096)[0] == EPERM
        assert c.call(CMD_WRITE_ZEROES, 0, 4096)[0] == EPERM
        assert c.read(0, 4096) == b"\xab" * 4096
        assert c.call(CMD_FLUSH)[0] == 0
    with open(image, "rb") as f:
        assert f.read(4096) == b"\xab" * 4096


# ---- self-repair under a real client ----

def _storm_round_trips(srv, scratch, seconds):
    """nbdcopy data in and out, and compare, until `seconds` have passed."""
    end, rounds, seed = time.monotonic() + seconds, 0, 100
    src, out = os.path.join(scratch, "src"), os.path.join(scratch, "out")
    while rounds == 0 or time.monotonic() < end:
        random_file(src, IMAGE_SIZE, seed=seed + rounds)
        run(["nbdcopy", "--requests=32", src, srv.uri])
        run(["nbdcopy", srv.uri, out])
        assert same_files(src, out), f"round {rounds}: data read back differs"
        rounds += 1
    return rounds


def test_driver_sigkill_storm_under_nbdcopy(serve, scratch):
    srv = serve()
    storm = KillStorm(srv.proc.pid, seconds=2.0, interval=0.02)
    storm.start()
    try:
        rounds = _storm_round_trips(srv, scratch, 2.2)
    finally:
        storm.join()
    assert storm.kills >= 20, f"only {storm.kills} kills landed"
    st = srv.status()
    assert st["state"] == "running" and st["error"] is None
    assert st["restarts"] > 0 and st["restarts_by_reason"]["killed"] > 0
    assert rounds >= 1
    assert_still_serving(srv)


@pytest.mark.parametrize("mode", ["event", "spin", "hybrid"])
def test_driver_sigkill_storm_under_fio(serve, scratch, mode):
    srv = serve("--notify", mode)
    storm = KillStorm(srv.proc.pid, seconds=2.0, interval=0.02)
    result = {"runs": 0}

    def workload():
        # Verified random writes over the whole image (each block written,
        # then read back and checked), again and again until the storm ends.
        try:
            while result["runs"] == 0 or storm.is_alive():
                fio(srv.uri, scratch, "storm", *FIO_VERIFY, "--do_verify=1")
                result["runs"] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    storm.start()
    t = threading.Thread(target=workload)
    t.start()
    storm.join()
    t.join(timeout=600)
    assert "error" not in result, result.get("error")
    assert storm.kills >= 20, f"only {storm.kills} kills landed"
    # A separate pass checks the last layout fio wrote.
    fio(srv.uri, scratch, "storm", *FIO_VERIFY, "--verify_only=1")
    st = srv.status()
    assert st["restarts"] > 0 and st["state"] == "running", st
    assert st["io"]["errors"] == 0, st
    assert_still_serving(srv)


def test_failed_device_answers_eio_and_keeps_serving(serve, any_isolde, builds):
    """Past the driver's restart budget the device fails: every request, in
    flight or new, is answered EIO; the connection and the server stay up."""
    srv = serve("--driver", builds.fault_driver, "--policy", POLICIES / "small-budget.policy",
                "--qd", 2, tool=any_isolde)
    with RawNbd(srv.sock) as c:
        c.handshake()
        errors = set()
        for _ in range(20):
            # Many more requests than the ring holds, so that some wait in the
            # server's backlog when the driver dies for the last time.
            handles = {c.request(CMD_READ, i * MiB, MiB) for i in range(24)}
            for pid in driver_children(srv.proc.pid):
                os.kill(pid, signal.SIGKILL)
            for _ in range(len(handles)):
                h, err, _ = c.reply()
                handles.remove(h)
                errors.add(err)
            if EIO in errors:
                break
        assert errors <= {0, EIO} and EIO in errors
        assert c.call(CMD_WRITE, 0, 4096, payload=b"k" * 4096)[0] == EIO
        assert "Input/output error" in c.last_message
        st = srv.status()
        assert st["state"] == "failed" and "restart budget" in st["error"], st
        handles = {c.request(CMD_READ, i * MiB, MiB) for i in range(24)}
        handles |= {c.request(CMD_WRITE, i * 65536, 65536, payload=b"w" * 65536) for i in range(24)}
        handles.add(c.request(CMD_FLUSH))
        handles.add(c.request(CMD_WRITE_ZEROES, 0, IMAGE_SIZE))
        for _ in range(len(handles)):
            h, err, data = c.reply()
            assert err == EIO and data == b"" and h in handles
            handles.discard(h)
    assert srv.alive()
    assert srv.terminate() == 1, srv.stderr  # serve reports the failed device
    assert_no_sanitizer_report(srv.stderr)


def test_zeroes_and_trims_larger_than_a_ring_request(serve, tmp_path):
    """One WRITE_ZEROES and one TRIM of almost 3 GiB each: the server splits
    them into 1 GiB pieces on the ring; every piece lands (blocks at the
    piece boundaries read back as zeroes) and nothing beyond the range is
    touched."""
    img = tmp_path / "big.img"
    size = 3 << 30
    with open(img, "wb") as f:
        f.truncate(size)
    srv = serve(img=img)
    GiB = 1 << 30
    marks = [0, GiB - 4096, GiB, 2 * GiB - 4096, 2 * GiB, size - 4096]
    with RawNbd(srv.sock).handshake() as c:
        for cmd in (CMD_WRITE_ZEROES, CMD_TRIM):
            for i, off in enumerate(marks):
                assert c.write(off, bytes([0x41 + i]) * 4096) == 0
            err, _ = c.call(cmd, 4096, size - 8192)
            assert err == 0, err
            assert c.read(0, 4096) == b"A" * 4096
            assert c.read(size - 4096, 4096) == bytes([0x41 + len(marks) - 1]) * 4096
            for off in marks[1:-1]:
                assert c.read(off, 4096) == bytes(4096), f"{cmd} missed {off}"
    st = srv.status()
    assert st["restarts"] == 0 and st["error"] is None


# ---- status and shutdown ----

def test_status_describes_the_export(serve):
    srv = serve()
    st = srv.status()
    [ex] = st["exports"]
    assert ex["kind"] == "nbd" and ex["address"] == f"unix:{srv.sock}" and ex["name"] == ""
    assert ex["connections"] == 0
    clients = [RawNbd(srv.sock).handshake() for _ in range(3)]
    try:
        for c in clients:
            c.read(0, 4096)
        ex = srv.status()["exports"][0]
        assert ex["connections"] == 3 and ex["requests"] >= 3 and ex["inflight"] == 0
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 10
    while srv.status()["exports"][0]["connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.status()["exports"][0]["connections"] == 0
    p = run([srv.isolde.build.isolde, "status", "--control", srv.control])
    assert "exports" in p.stdout and "nbd" in p.stdout


def test_sigterm_exits_cleanly_and_removes_the_socket(serve, any_isolde):
    srv = serve(tool=any_isolde)
    idle = RawNbd(srv.sock).handshake()          # a client doing nothing
    busy = RawNbd(srv.sock).handshake()          # and one with requests in flight
    try:
        for i in range(16):
            busy.request(CMD_READ, i * MiB, MiB)
        rc = srv.terminate()
    finally:
        idle.close()
        busy.close()
    assert rc == 0, srv.stderr
    assert not os.path.exists(srv.sock) and not os.path.exists(srv.control)
    assert "stopped" in srv.stderr
    assert_no_sanitizer_report(srv.stderr)


def test_disc_answers_what_is_in_flight_first(serve):
    srv = serve()
    with RawNbd(srv.sock) as c:
        c.handshake()
        handles = {c.request(CMD_READ, i * MiB, MiB) for i in range(8)}
        c.disconnect()
        got = set()
        for _ in handles:
            h, err, data = c.reply()
            assert err == 0 and len(data) == MiB
            got.add(h)
        assert got == handles
        assert c.wait_closed()


# ---- the protocol, through a raw client ----

@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_every_command(serve, structured):
    srv = serve()
    with RawNbd(srv.sock) as c:
        c.handshake(structured=structured)
        want = (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES |
                TF_CAN_MULTI_CONN | (TF_SEND_DF if structured else 0))
        assert c.size == IMAGE_SIZE and c.tflags == want
        data = random.Random(5).randbytes(65536)
        assert c.write(MiB, data) == 0
        assert c.read(MiB, 65536) == data
        assert c.write(2 * MiB, data, FLAG_FUA) == 0
        assert c.read(2 * MiB + 100, 1000) == data[100:1100]
        assert c.call(CMD_FLUSH)[0] == 0
        assert c.call(CMD_FLUSH, flags=FLAG_FUA)[0] == 0
        assert c.call(CMD_WRITE_ZEROES, MiB, 4096)[0] == 0
        assert c.call(CMD_WRITE_ZEROES, MiB + 4096, 4096, FLAG_NO_HOLE | FLAG_FUA)[0] == 0
        assert c.read(MiB, 8192) == bytes(8192)
        assert c.read(MiB + 8192, 4096) == data[8192:12288]
        assert c.call(CMD_TRIM, 2 * MiB, 65536, FLAG_FUA)[0] == 0
        assert c.call(CMD_CACHE, 0, 4096)[0] == 0
        # Zero-length requests are answered without touching the device.
        assert c.call(CMD_READ, 0, 0) == (0, b"")
        assert c.call(CMD_WRITE, 0, 0)[0] == 0
        if structured:
            assert c.call(CMD_READ, 0, 4096, FLAG_DF)[0] == 0
        else:
            assert c.call(CMD_READ, 0, 4096, FLAG_DF)[0] == EINVAL
        c.disconnect()
        assert c.wait_closed()


def test_large_trim_and_write_zeroes_are_split(serve, scratch):
    """TRIM and WRITE_ZEROES carry no payload, so they may be larger than one
    server request (32 MiB): the export submits them piece by piece."""
    size = 100 * MiB
    img = os.path.join(scratch, "big.img")
    with open(img, "wb") as f:
        f.truncate(size)
    srv = serve(img=img)
    with RawNbd(srv.sock) as c:
        c.handshake()
        for off in (0, 40 * MiB, size - 4096):
            assert c.write(off, b"z" * 4096) == 0
        assert c.call(CMD_WRITE_ZEROES, 0, size, FLAG_FUA | FLAG_NO_HOLE)[0] == 0
        for off in (0, 40 * MiB, size - 4096):
            assert c.read(off, 4096) == bytes(4096)
        assert c.write(size - 4096, b"t" * 4096) == 0
        assert c.call(CMD_WRITE_ZEROES, 4096, size - 4096)[0] == 0
        assert c.read(size - 4096, 4096) == bytes(4096)
        assert c.call(CMD_TRIM, 0, size, FLAG_FUA)[0] == 0
        assert c.call(CMD_TRIM, 0, size + 1)[0] == EINVAL


def test_maximal_write_and_read(serve):
    """A WRITE of the advertised maximum block size alone fills the
    connection's byte limit: its payload must still be read whole."""
    srv = serve()
    data = random.Random(9).randbytes(32 * MiB)
    with RawNbd(srv.sock, timeout=30) as c:
        c.handshake()
        assert c.write(0, data) == 0
        assert c.read(0, 32 * MiB) == data


def test_pipelined_requests_and_out_of_order_replies(serve):
    """128 requests in one send: every reply comes back, matched by handle."""
    srv = serve()
    rnd = random.Random(6)
    with RawNbd(srv.sock) as c:
        c.handshake()
        blocks = {i: rnd.randbytes(4096) for i in range(64)}
        batch = b""
        expect = {}
        for i, block in blocks.items():
            h = 1000 + i
            batch += struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, h, i * 4096, 4096) + block
            expect[h] = ("w", i)
        c.send(batch)
        for _ in range(len(expect)):
            h, err, _ = c.reply()
            assert err == 0 and expect.pop(h)[0] == "w"
        handles = [c.request(CMD_READ, i * 4096, 4096) for i in blocks] + \
                  [c.request(CMD_READ, 8 * MiB + i * MiB, MiB) for i in range(8)]
        got = {}
        for _ in handles:
            h, err, data = c.reply()
            assert err == 0
            got[h] = data
        for n, i in enumerate(blocks):
            assert got[handles[n]] == blocks[i]


def test_handshake_options(serve):
    srv = serve("--readonly")
    with RawNbd(srv.sock) as c:
        c.greeting()
        c.client_flags()
        [(rtype, payload)] = c.option(OPT_STARTTLS)
        assert rtype == REP_ERR_UNSUP and payload  # with a message
        assert c.option(0x1234, b"ignored data")[0][0] == REP_ERR_UNSUP
        assert c.option(OPT_LIST, b"x")[0][0] == REP_ERR_INVALID
        assert c.option(OPT_STRUCTURED_REPLY, b"y")[0][0] == REP_ERR_INVALID
        (t1, server), (t2, _) = c.option(OPT_LIST)
        assert t1 == REP_SERVER and server == struct.pack(">I", 0) and t2 == REP_ACK
        info = c.info(infos=(INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE))
        assert struct.unpack(">QH", info[INFO_EXPORT]) == (IMAGE_SIZE, c.tflags)
        assert c.tflags & TF_READ_ONLY
        assert struct.unpack(">III", info[INFO_BLOCK_SIZE]) == (1, 4096, 32 * MiB)
        assert info[INFO_NAME] == b"" and b"isolde" in info[INFO_DESCRIPTION]
        assert c.info(b"no-such-export") == REP_ERR_UNKNOWN
        assert c.option(OPT_INFO, b"\0\0\0\x09ab")[0][0] == REP_ERR_INVALID   # name beyond the option
        assert c.option(OPT_INFO, RawNbd.go_data() + b"!")[0][0] == REP_ERR_INVALID
        assert c.option(OPT_STRUCTURED_REPLY) == [(REP_ACK, b"")]
        assert isinstance(c.info(opt=OPT_GO), dict)
        c.structured = True
        assert len(c.read(0, 4096)) == 4096
        assert c.write(0, b"no") == EPERM
        assert "read-only" in c.last_message
    with RawNbd(srv.sock) as c:
        c.greeting()
        c.client_flags()
        assert c.option(OPT_ABORT, b"data is ignored") == [(REP_ACK, b"")]
        assert c.wait_closed()


def test_export_name_option_with_and_without_zeroes(serve):
    srv = serve()
    for flags, tail in ((C_FIXED_NEWSTYLE | C_NO_ZEROES, 0), (C_FIXED_NEWSTYLE, 124), (0, 124)):
        with RawNbd(srv.sock) as c:
            c.greeting()
            c.client_flags(flags)
            c.send_option(OPT_EXPORT_NAME)
            size, tflags = struct.unpack(">QH", c.recv_exact(10))
            assert size == IMAGE_SIZE and tflags & TF_HAS_FLAGS
            assert c.recv_exact(tail) == bytes(tail)
            assert c.read(4096, 4096) == bytes(4096)  # simple replies: the zeroes were all there was


def test_named_export(serve):
    d = tempfile.mkdtemp(prefix="isolde-nbd-", dir="/tmp")
    try:
        sock = os.path.join(d, "named.sock")
        srv = serve(export=f"nbd:unix:{sock},name=disk0")
        for uri in (f"nbd+unix:///disk0?socket={sock}", f"nbd+unix:///?socket={sock}"):
            assert nbdinfo_json(uri)["export-size"] == IMAGE_SIZE
        assert nbdinfo_json(f"nbd+unix:///disk0?socket={sock}")["export-name"] == "disk0"
        p = run(["nbdinfo", "--json", f"nbd+unix:///other?socket={sock}"], check=False)
        assert p.returncode != 0
        with RawNbd(sock) as c:
            c.greeting()
            c.client_flags()
            (t, server), _ = c.option(OPT_LIST)
            assert t == REP_SERVER and server == struct.pack(">I", 5) + b"disk0"
            assert c.info(b"disk0", infos=(INFO_NAME,))[INFO_NAME] == b"disk0"
            c.send_option(OPT_EXPORT_NAME, b"wrong")   # cannot answer an error: closes
            assert c.wait_closed()
        assert srv.status()["exports"][0]["name"] == "disk0"
        assert_still_serving_at(srv, unix_uri(sock))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def assert_still_serving_at(srv, uri):
    assert srv.alive(), srv.stderr
    assert nbdinfo_json(uri)["export-size"] == IMAGE_SIZE


def test_backpressure_bounds_memory(serve):
    """A client that sends 512 MiB of reads without reading a reply: the
    server stops reading it instead of buffering it all, then answers all."""
    srv = serve()
    base = rss_bytes(srv.proc.pid)
    with RawNbd(srv.sock, timeout=60) as c:
        c.handshake()
        handles = []

        def sender():
            for i in range(512):
                handles.append(c.request(CMD_READ, (i % 31) * MiB, MiB))

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        time.sleep(1.5)
        grown = rss_bytes(srv.proc.pid) - base
        assert grown < 160 * MiB, f"the server grew by {grown >> 20} MiB"
        got = 0
        while got < 512:
            h, err, data = c.reply()
            assert err == 0 and len(data) == MiB
            got += 1
        t.join(timeout=60)
        assert len(handles) == 512
    assert_still_serving(srv)


# ---- bad input: after each, the server still serves a real client ----

def _opt_header(opt, length):
    return struct.pack(">QII", OPT_MAGIC, opt, length)


def _req(cmd, offset, length, flags=0, handle=1, magic=REQUEST_MAGIC):
    return struct.pack(">IHHQQI", magic, flags, cmd, handle, offset, length)


def bad_garbage_handshake(c):
    c.greeting()
    c.send(bytes(random.Random(7).getrandbits(8) for _ in range(4096)))
    assert c.wait_closed()


def bad_unknown_client_flags(c):
    c.greeting()
    c.client_flags(C_FIXED_NEWSTYLE | 0x40)
    assert c.wait_closed()


def bad_option_magic(c):
    c.greeting()
    c.client_flags()
    c.send(struct.pack(">QII", 0x0102030405060708, OPT_GO, 0))
    assert c.wait_closed()


def bad_huge_option_length(c):
    c.greeting()
    c.client_flags()
    # An unknown option claiming 4 GiB, then a GO too long to read: the
    # server skips, never stores, what follows; then answers.
    c.send(_opt_header(0x7777, 64 * 1024) + b"u" * (64 * 1024))
    assert c.option_reply()[1] == REP_ERR_UNSUP
    c.send(_opt_header(OPT_GO, 1 << 20) + b"g" * (1 << 20))
    assert c.option_reply()[1] == REP_ERR_TOO_BIG
    c.send(_opt_header(OPT_GO, 0xFFFFFFFF) + b"h" * (4 * MiB))   # and leave half-way


def bad_huge_export_name(c):
    c.greeting()
    c.client_flags()
    c.send(_opt_header(OPT_EXPORT_NAME, 0xFFFFFFFF) + b"n" * 8192)
    assert c.wait_closed()


def bad_request_magic(c):
    c.handshake()
    c.send(_req(CMD_READ, 0, 4096, magic=0x12345678))
    assert c.wait_closed()


def bad_unknown_command(c):
    c.handshake()
    assert c.call(0x55, 0, 4096)[0] == EINVAL
    assert c.call(CMD_BLOCK_STATUS, 0, 4096)[0] == EINVAL
    assert c.call(CMD_READ, 0, 4096, flags=0x100)[0] == EINVAL    # unknown flag
    assert c.call(CMD_WRITE, 0, 0, flags=FLAG_NO_HOLE)[0] == EINVAL  # flag of another command
    assert len(c.read(0, 4096)) == 4096                       # and the connection goes on


def bad_offset_beyond_the_end(c):
    c.handshake()
    assert c.call(CMD_READ, IMAGE_SIZE, 1)[0] == EINVAL
    assert c.call(CMD_READ, IMAGE_SIZE - 4095, 4096)[0] == EINVAL
    assert c.call(CMD_TRIM, IMAGE_SIZE + 4096, 4096)[0] == EINVAL
    assert c.call(CMD_WRITE, IMAGE_SIZE - 1, 2, payload=b"ab")[0] == ENOSPC
    assert c.call(CMD_WRITE_ZEROES, 1 << 50, 4096)[0] == ENOSPC
    assert c.call(CMD_READ, IMAGE_SIZE, 0)[0] == 0            # an empty range at the end is fine
    assert c.read(IMAGE_SIZE - 4096, 4096) is not None


def bad_length_overflow(c):
    c.handshake()
    wrap = 2**64 - 2048  # offset + 4096 wraps around to 2048
    assert c.call(CMD_READ, wrap, 4096)[0] == EINVAL
    assert c.call(CMD_WRITE, wrap, 4096, payload=b"w" * 4096)[0] == ENOSPC
    assert c.call(CMD_WRITE_ZEROES, wrap, 0xFFFFFFFF)[0] == ENOSPC
    assert c.call(CMD_TRIM, 2**64 - 1, 0xFFFFFFFF)[0] == EINVAL
    assert len(c.read(0, 4096)) == 4096


def bad_oversized_requests(c):
    c.handshake()
    assert c.call(CMD_READ, 0, 32 * MiB + 1)[0] == EINVAL
    # A write beyond the maximum block size: its payload is read and dropped,
    # the client gets EINVAL, and the connection stays in step.
    big = b"\x5a" * (33 * MiB)
    assert c.call(CMD_WRITE, 0, len(big), payload=big)[0] == EINVAL
    assert c.read(0, 4096) != b"\x5a" * 4096
    assert c.write(0, b"ok" * 2048) == 0


def bad_truncated_request(c):
    c.handshake()
    c.send(_req(CMD_READ, 0, 4096)[:17])


def bad_disconnect_mid_write(c):
    c.handshake()
    for i in range(16):                                       # requests in flight as it leaves
        c.request(CMD_READ, i * MiB, MiB)
    c.send(_req(CMD_WRITE, 0, 8 * MiB) + b"m" * (3 * MiB))


def bad_reset_with_requests_in_flight(c):
    c.handshake()
    c.send(b"".join(_req(CMD_WRITE, i * 65536, 65536, handle=i) + b"r" * 65536 for i in range(64)))
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close


BAD_INPUTS = [bad_garbage_handshake, bad_unknown_client_flags, bad_option_magic, bad_huge_option_length,
              bad_huge_export_name, bad_request_magic, bad_unknown_command, bad_offset_beyond_the_end,
              bad_length_overflow, bad_oversized_requests, bad_truncated_request, bad_disconnect_mid_write,
              bad_reset_with_requests_in_flight]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[f.__name__[4:] for f in BAD_INPUTS])
def test_bad_input_leaves_the_server_serving(serve, any_isolde, case):
    srv = serve(tool=any_isolde)
    with RawNbd(srv.sock) as c:
        case(c)
    assert_still_serving(srv)
    # Once every connection is gone (their requests completed), none is left behind.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ex = srv.status()["exports"][0]
        if ex["connections"] == 0 and ex["inflight"] == 0:
            break
        time.sleep(0.05)
    assert ex["connections"] == 0 and ex["inflight"] == 0, ex
    assert srv.terminate() == 0, srv.stderr
    assert_no_sanitizer_report(srv.stderr)


def test_bad_input_all_at_once(serve):
    """Every bad client at the same time as a real workload."""
    srv = serve()
    errors = []

    def one(case):
        try:
            with RawNbd(srv.sock, timeout=60) as c:
                case(c)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append(f"{case.__name__}: {e!r}")

    threads = [threading.Thread(target=one, args=(case,)) for case in BAD_INPUTS]
    for t in threads:
        t.start()
    out = tempfile.mkdtemp(prefix="isolde-nbd-data-", dir="/tmp")
    try:
        fio(srv.uri, out, "verify", *FIO_VERIFY, "--do_verify=1")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert_still_serving(srv)


# ---- TCP ----

def test_tcp_export(serve, scratch):
    port = free_tcp_port()
    srv = serve(export=f"nbd:tcp:127.0.0.1:{port}")
    assert srv.status()["exports"][0]["address"] == f"tcp:127.0.0.1:{port}"
    uri = f"nbd://127.0.0.1:{port}"
    assert nbdinfo_json(uri)["export-size"] == IMAGE_SIZE
    src = random_file(os.path.join(scratch, "src"), IMAGE_SIZE, seed=8)
    out = os.path.join(scratch, "out")
    run(["nbdcopy", "--connections=2", src, uri])
    run(["nbdcopy", uri, out])
    assert same_files(src, out)
    fio(uri, scratch, "tcp", *FIO_VERIFY, "--do_verify=1")
    with RawNbd(("127.0.0.1", port)) as c:
        c.handshake()
        assert c.call(CMD_READ, IMAGE_SIZE, 1)[0] == EINVAL
        c.send(_req(CMD_READ, 0, 1, magic=0))
        assert c.wait_closed()
    assert nbdinfo_json(uri)["export-size"] == IMAGE_SIZE


def test_tcp_empty_host_binds_loopback_and_port_zero_picks_one(serve):
    srv = serve(export="nbd:tcp::0")
    address = srv.status()["exports"][0]["address"]
    assert address.startswith("tcp:127.0.0.1:") and not address.endswith(":0")
    assert nbdinfo_json(srv.uri)["export-size"] == IMAGE_SIZE


@pytest.mark.parametrize("spec,message", [
    ("nbd:carrier-pigeon:x", "expected nbd:unix:PATH or nbd:tcp:HOST:PORT"),
    ("nbd:tcp:127.0.0.1", "expected HOST:PORT"),
    ("nbd:tcp:no.such.host.invalid:10809", "nbd:tcp:no.such.host.invalid:10809"),
    ("nbd:unix:/tmp/" + "x" * 120, "shorter than"),
    ("nbd:unix:/nonexistent-dir/s.sock", "/nonexistent-dir/s.sock"),
])
def test_bad_export_specs(isolde, image, spec, message):
    p = isolde.run("serve", "--image", image, "--export", spec, timeout=30)
    assert p.returncode == 1 and message in p.stderr, p.stderr


def test_socket_in_use_is_refused(serve, isolde, image):
    srv = serve()
    p = isolde.run("serve", "--image", image, "--export", f"nbd:unix:{srv.sock}", timeout=30)
    assert p.returncode == 1 and "in use" in p.stderr
    assert_still_serving(srv)
