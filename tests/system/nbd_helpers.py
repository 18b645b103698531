"""Helpers for the NBD export's system tests: a served image that is always
cleaned up, a raw NBD client for what real clients never send, the real
clients' command lines, and a driver SIGKILL storm."""
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

import conftest
from conftest import driver_children, kill_session, stop

# ---- wire constants (the NBD protocol document, doc/proto.md) ----
NBD_MAGIC = 0x4E42444D41474943
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
C_FIXED_NEWSTYLE, C_NO_ZEROES = 1, 2
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF, TF_CAN_MULTI_CONN = 32, 64, 128, 256

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 1, 2, 3, 5, 6, 7, 8
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = (2**31 + 1, 2**31 + 3, 2**31 + 6,
                                                                    2**31 + 9)
REP_ERR_POLICY = 2**31 + 2
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 5, 6
CMD_BLOCK_STATUS = 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF = 1, 2, 4
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_ERROR = 0, 1, 2**15 + 1

EPERM, EIO, ENOMEM, EINVAL, ENOSPC = 1, 5, 12, 22, 28

MiB = 1 << 20

CLIENT_TOOLS = ("nbdinfo", "nbdcopy", "qemu-img", "fio")


def need_tools(*tools):
    return conftest.need_tools(*tools, packages="libnbd-bin, qemu-utils, fio")


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unix_uri(path):
    return f"nbd+unix:///?socket={path}"


class Served:
    """`isolde serve` on an image, with a control socket, in a short private
    temporary directory (Unix socket paths are limited to 107 bytes). Its
    stderr is drained by a thread so that the server never blocks on a full
    pipe. close() kills whatever is left and removes the directory."""

    def __init__(self, isolde, image, *extra, export=None, options=""):
        self.dir = tempfile.mkdtemp(prefix="isolde-nbd-", dir="/tmp")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.control = os.path.join(self.dir, "control.sock")
        self.isolde = isolde
        # options: ",KEY=VALUE..." appended to the export spec
        self.export = (export or f"nbd:unix:{self.sock}") + options
        self.tcp = self.export.startswith("nbd:tcp:")
        self._lines = []
        self.proc = isolde.start("serve", "--image", image, "--export", self.export,
                                 "--control", self.control, *extra)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def stderr(self):
        return "".join(self._lines)

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._drain.join(timeout=5)
                raise AssertionError(f"isolde serve exited with {self.proc.returncode}:\n{self.stderr}")
            if "; ready" in self.stderr and os.path.exists(self.control):
                return self
            time.sleep(0.02)
        raise AssertionError(f"isolde serve never became ready:\n{self.stderr}")

    @property
    def uri(self):
        if self.tcp:
            return f"nbd://127.0.0.1:{self.port}"
        return unix_uri(self.sock)

    @property
    def port(self):
        return int(self.status()["exports"][0]["address"].rsplit(":", 1)[1])

    def address(self):
        """What a raw client connects to: a socket path or (host, port)."""
        return ("127.0.0.1", self.port) if self.tcp else self.sock

    def status(self):
        p = subprocess.run([str(self.isolde.build.isolde), "status", "--control", self.control, "--json"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, timeout=60):
        """SIGTERM; returns the exit code once the server (and its stderr) ended."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._drain.join(timeout=10)
        return rc

    def close(self):
        kill_session(self.proc)
        self._drain.join(timeout=10)
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        # Captured by pytest, shown when the test failed.
        print(f"---- isolde serve {self.export} stderr ----\n{self.stderr}")


def run(cmd, timeout=300, check=True, cwd=None, env=None):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                       env=env)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def nbdinfo_json(uri):
    return json.loads(run(["nbdinfo", "--json", uri], timeout=60).stdout)["exports"][0]


def fio(uri, out_dir, name, *args, timeout=600):
    """fio's nbd engine; returns its JSON report, after checking every job ended without error.
    It runs in out_dir, where fio may leave files of its own."""
    out = os.path.join(out_dir, f"fio-{name}.json")
    run(["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
         f"--output={out}", "--verify_state_save=0", *args], timeout=timeout, cwd=out_dir)
    with open(out) as f:
        report = json.load(f)
    os.unlink(out)
    for job in report["jobs"]:
        assert job["error"] == 0, f"fio job {job['jobname']}: error {job['error']}"
    return report


def random_file(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rnd.randbytes(MiB))
    return path


def same_files(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


class KillStorm(threading.Thread):
    """SIGKILL every driver of a server every `interval` seconds for `seconds`."""

    def __init__(self, pid, seconds=2.0, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.seconds, self.interval = pid, seconds, interval
        self.kills = 0

    def run(self):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            for child in driver_children(self.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(self.interval)


def wait_until(predicate, timeout, what):
    """Poll predicate until it returns something true; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def export_status(srv):
    """The first export's entry of `isolde status --json`."""
    return srv.status()["exports"][0]


def limit_message(limit, name=""):
    """What a client beyond max-connections is told."""
    return f"export '{name}' has reached its limit of {limit} connection{'' if limit == 1 else 's'}; " \
           "try again later"


def rss_bytes(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def private_rss_bytes(pid):
    """Resident private memory: what the process allocated, without the
    shared ring's data area (RssShmem, a per-device constant)."""
    return rss_bytes(pid, "RssAnon")


# ---- a raw NBD client, for what real clients never send ----

class Closed(Exception):
    """The server closed the connection."""


class RawNbd:
    def __init__(self, address, timeout=10):
        if isinstance(address, tuple):
            self.s = socket.create_connection(address, timeout=timeout)
        else:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # A Unix socket's connect fails at once (EAGAIN) on a full listen
            # backlog unless it blocks: block, but only for timeout.
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(timeout), 0))
            self.s.connect(str(address))
            self.s.settimeout(timeout)
        self.structured = False
        self.reads = {}   # handle -> length of a READ in flight (simple replies need it)
        self.next_handle = 1
        self.size = self.tflags = None

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.s.sendall(data)

    def recv_exact(self, n):
        chunks, got = [], 0
        while got < n:
            b = self.s.recv(min(n - got, 1 << 20))
            if not b:
                raise Closed(f"closed after {got} of {n} bytes")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def closed_now(self):
        """True if the server has closed the connection (what it sent is discarded), without waiting."""
        timeout = self.s.gettimeout()
        self.s.setblocking(False)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionResetError:
            return True
        finally:
            self.s.settimeout(timeout)

    def wait_closed(self, timeout=10):
        """True once the server closed the connection (EOF or reset), discarding what it sent."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # -- handshake --
    def greeting(self):
        magic, opt_magic, hflags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBD_MAGIC and opt_magic == OPT_MAGIC
        assert hflags == FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        return hflags

    def client_flags(self, flags=C_FIXED_NEWSTYLE | C_NO_ZEROES):
        self.send(struct.pack(">I", flags))

    def send_option(self, opt, data=b""):
        self.send(struct.pack(">QII", OPT_MAGIC, opt, len(data)) + data)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == REP_MAGIC, hex(magic)
        return opt, rtype, self.recv_exact(length) if length else b""

    def option(self, opt, data=b""):
        """Send an option; return its replies up to the final ACK or error."""
        self.send_option(opt, data)
        replies = []
        while True:
            o, rtype, payload = self.option_reply()
            assert o == opt
            replies.append((rtype, payload))
            if rtype == REP_ACK or rtype & 0x80000000:
                return replies

    @staticmethod
    def go_data(name=b"", infos=(INFO_BLOCK_SIZE,)):
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
                b"".join(struct.pack(">H", i) for i in infos))

    def info(self, name=b"", infos=(INFO_BLOCK_SIZE,), opt=OPT_INFO):
        """INFO or GO: a dict of the info replies, or the error reply type."""
        replies = self.option(opt, self.go_data(name, infos))
        rtype, _ = replies[-1]
        if rtype != REP_ACK:
            return rtype
        got = {}
        for rt, payload in replies[:-1]:
            assert rt == REP_INFO
            itype = struct.unpack(">H", payload[:2])[0]
            got[itype] = payload[2:]
            if itype == INFO_EXPORT:
                self.size, self.tflags = struct.unpack(">QH", payload[2:])
        return got

    def handshake(self, structured=True, name=b""):
        self.greeting()
        self.client_flags()
        if structured:
            assert self.option(OPT_STRUCTURED_REPLY) == [(REP_ACK, b"")]
            self.structured = True
        got = self.info(name, opt=OPT_GO)
        assert isinstance(got, dict), f"GO refused: {got:#x}"
        return self

    # -- transmission --
    def request(self, cmd, offset=0, length=0, flags=0, payload=b"", handle=None):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        if cmd == CMD_READ:
            self.reads[handle] = length
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload)
        return handle

    def reply(self):
        """(handle, error, data) of the next reply: data is a READ's bytes."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            err, handle = struct.unpack(">IQ", self.recv_exact(12))
            length = self.reads.pop(handle, None)
            data = self.recv_exact(length) if length and err == 0 else b""
            return handle, err, data
        assert magic == STRUCTURED_REPLY_MAGIC, hex(magic)
        assert self.structured, "a structured reply without negotiation"
        err, data = 0, bytearray()
        while True:
            flags, rtype, handle, length = struct.unpack(">HHQI", self.recv_exact(16))
            payload = self.recv_exact(length)
            if rtype == REPLY_TYPE_OFFSET_DATA:
                assert handle in self.reads
                offset = struct.unpack(">Q", payload[:8])[0]
                data += payload[8:]
                assert len(payload) > 8
                self.last_offset = offset
            elif rtype == REPLY_TYPE_ERROR:
                err, mlen = struct.unpack(">IH", payload[:6])
                assert err != 0 and mlen == len(payload) - 6
                self.last_message = payload[6:].decode()
            else:
                assert rtype == REPLY_TYPE_NONE and length == 0 and flags & REPLY_FLAG_DONE
            if flags & REPLY_FLAG_DONE:
                if handle in self.reads:
                    want = self.reads.pop(handle)
                    assert err or len(data) == want
                return handle, err, bytes(data)
            # chunks of one reply come back to back here; nothing interleaves them

    def call(self, cmd, offset=0, length=0, flags=0, payload=b""):
        h = self.request(cmd, offset, length, flags, payload)
        handle, err, data = self.reply()
        assert handle == h
        return err, data

    def read(self, offset, length):
        err, data = self.call(CMD_READ, offset, length)
        assert err == 0, err
        return data

    def write(self, offset, data, flags=0):
        return self.call(CMD_WRITE, offset, len(data), flags, data)[0]

    def disconnect(self):
        self.request(CMD_DISC)
