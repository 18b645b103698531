"""blk-nbd, the NBD client driver (libnbd) for remote images: the verified
workload over nbd+unix:// and nbd:// (TCP) in every notify mode, every
operation through the C API with the data compared against the file the NBD
server (nbdkit) serves, operations the driver emulates (FUA, WRITE_ZEROES,
splitting at the server's maximum block size), a server that cannot flush,
read-only exports, SIGKILL storms, the server killed and restarted under
load, a server gone for good, and image URIs that are wrong.

Every nbdkit runs in a session of its own with --exit-with-parent and is
killed, with its socket directory, when its test ends, passed or failed."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (BUILD, MODES, ROOT, assert_own_identity, assert_storm_was_invisible, driver_children,
                      kill_session, need_tools, process_age)

DRIVER = "blk-nbd"
DRIVER_PATH = BUILD / "src" / "drivers" / DRIVER
POLICY = ROOT / "policies" / f"{DRIVER}.policy"
TRANSPORTS = ["unix", "tcp"]
MiB = 1 << 20


@pytest.fixture(scope="module", autouse=True)
def driver_built():
    need_tools("nbdkit", packages="nbdkit")
    if not DRIVER_PATH.exists():
        pytest.fail(f"{DRIVER_PATH} is not built: run make")


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- an NBD server that is always cleaned up ----

class Nbdkit:
    """nbdkit serving `plugin_args` (by default the file `image`) over a Unix
    socket in a private directory or on a free TCP port of 127.0.0.1. Ready
    when its pid file exists (nbdkit writes it once it listens). stop() and
    close() kill its whole session; close() also removes the directory."""

    def __init__(self, transport, image=None, *options, plugin_args=None):
        self.transport = transport
        self.dir = tempfile.mkdtemp(prefix="isolde-nbdkit-", dir="/tmp")
        self.sock = os.path.join(self.dir, "nbd.sock")
        self.port = free_tcp_port() if transport == "tcp" else None
        self.options = list(options)
        self.plugin_args = plugin_args or ["file", str(image)]
        self.log_path = os.path.join(self.dir, "nbdkit.log")
        self.proc = None

    def start(self):
        pidfile = os.path.join(self.dir, "nbdkit.pid")
        for path in (pidfile, self.sock):
            if os.path.exists(path):
                os.unlink(path)
        where = ["--unix", self.sock] if self.transport == "unix" else ["-i", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "-P", pidfile, *where,
                                          *self.options, *self.plugin_args],
                                         stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(pidfile):
            if self.proc.poll() is not None:
                raise AssertionError(f"nbdkit exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nbdkit never became ready:\n{self.log()}")
            time.sleep(0.01)
        return self

    def stop(self):
        if self.proc:
            kill_session(self.proc)
            self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def uri(self, export=""):
        if self.transport == "unix":
            return f"nbd+unix:///{export}?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/{export}"


@pytest.fixture
def nbd_servers():
    """Make servers with nbd_servers(transport, image, *nbdkit options);
    every one is closed when the test ends."""
    made = []

    def make(transport, image=None, *options, plugin_args=None, start=True):
        srv = Nbdkit(transport, image, *options, plugin_args=plugin_args)
        made.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in made:
        srv.close()


@pytest.fixture
def image(tmp_path):
    """A 32 MiB file for nbdkit to serve, with some data already in it."""
    path = tmp_path / "remote.img"
    with open(path, "wb") as f:
        f.truncate(32 * MiB)
        f.seek(5 * MiB)
        f.write(os.urandom(1 * MiB))
    yield path
    path.unlink(missing_ok=True)


class Verify:
    """isolde verify in the background, its stderr drained by a thread (a
    SIGKILL storm logs more than a pipe holds); the caller must close() it."""

    def __init__(self, isolde, uri, *args):
        self.proc = isolde.start("verify", "--image", uri, "--driver", DRIVER, "--json", *args)
        self.lines = []
        self.drain = threading.Thread(target=self._read, daemon=True)
        self.drain.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self):
        return "".join(self.lines)

    def driver_pid(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r" is pid (\d+)", self.stderr)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError("isolde never announced its driver pid:\n" + self.stderr[-3000:])

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.stderr:
            time.sleep(0.02)
        return text in self.stderr

    def result(self, timeout=180):
        out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self.drain.join(timeout=10)
        return self.proc.returncode, out, self.stderr

    def close(self):
        kill_session(self.proc)
        try:
            self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass
        self.drain.join(timeout=10)


def verify_ok(p, r):
    assert p.returncode == 0, p.stderr[-3000:]
    assert r["driver"] == DRIVER
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None, p.stderr[-3000:]
    assert r["restarts"] == 0 and r["protocol_violations"] == 0 and r["denials"] == 0, p.stderr[-3000:]


# ---- the verified workload ----

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verify(isolde, nbd_servers, image, transport, mode):
    srv = nbd_servers(transport, image)
    p, r = isolde.verify(srv.uri(), "--driver", DRIVER, "--notify", mode, "--qd", 32, "--ops", 3000)
    verify_ok(p, r)
    assert r["notify"] == mode and r["writes"] == 3000 and r["reads"] > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verify_queue_depth_1_and_large_blocks(isolde, nbd_servers, image, transport):
    srv = nbd_servers(transport, image)
    for args in (["--qd", 1, "--ops", 1000], ["--qd", 8, "--bs", "256k", "--ops", 300, "--flush-every", 16]):
        p, r = isolde.verify(srv.uri(), "--driver", DRIVER, "--notify", "hybrid", *args)
        verify_ok(p, r)


def test_driver_sandbox(isolde, nbd_servers, image):
    """While it serves: one thread, its own uid, no capabilities, seccomp and
    no_new_privs, namespaces of its own, a root of nothing but its libraries
    (read-only), and nothing open but the fds the launcher handed over (the
    socket is fd 6)."""
    srv = nbd_servers("unix", image)
    v = Verify(isolde, srv.uri(), "--ops", 200000, "--qd", 32, "--notify", "event")
    try:
        pid = v.driver_pid()
        time.sleep(0.3)
        status = open(f"/proc/{pid}/status").read()
        assert re.search(r"^Threads:\s+1$", status, re.M), status
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert set(fds) <= set(range(8)), fds
        assert fds[6].startswith("socket:"), fds
        if os.geteuid() == 0:
            assert_own_identity(pid)
        assert re.search(r"^Seccomp:\s+2$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        # Namespaces of its own, the network's included: the socket it was
        # handed is all the network it has.
        for kind in ("mnt", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
        root = sorted(os.listdir(f"/proc/{pid}/root"))
        assert set(root) <= {"lib", "lib64", "usr"} and "usr" in root, root
        binds = [line.split() for line in open(f"/proc/{pid}/mountinfo") if " /usr/" in line]
        assert binds and all("ro" in b[5].split(",") for b in binds), binds
    finally:
        v.close()


# ---- every operation through the C API, checked against the server's file ----

OPS_PROGRAM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "isolde/blk.h"

#define IO_MAX (1u << 20)
#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(1); } } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void compare(const unsigned char *got, const unsigned char *want, uint64_t n, const char *what)
{
	for (uint64_t i = 0; i < n; i++)
		CHECK(got[i] == want[i], "%s: byte %llu is %02x, want %02x", what,
		      (unsigned long long)i, got[i], want[i]);
}

static void read_all(struct isolde_blk *dev, unsigned char *got, uint64_t size)
{
	for (uint64_t off = 0; off < size; off += IO_MAX) {
		uint64_t n = size - off < IO_MAX ? size - off : IO_MAX;
		CHECK(isolde_blk_read(dev, got + off, n, off) == 0, "read at %llu: %s", (unsigned long long)off,
		      isolde_blk_error(dev));
	}
}

/* qd requests in flight together on disjoint regions, of every size up to
 * IO_MAX (every third FUA), with a FLUSH as every eighth. */
static void round_of_writes(struct isolde_blk *dev, unsigned char *model, uint64_t size, int flush_result)
{
	unsigned qd = isolde_blk_queue_depth(dev);
	uint64_t region = size / qd;
	struct isolde_blk_io *ios = calloc(qd, sizeof *ios), *done[1024];
	unsigned inflight = 0;

	for (unsigned i = 0; i < qd; i++) {
		struct isolde_blk_io *io = &ios[i];
		if (i % 8 == 7) {
			io->op = ISOLDE_BLK_OP_FLUSH;
		} else {
			uint32_t max = region < IO_MAX ? (uint32_t)region : IO_MAX;
			uint32_t len = (1 + (uint32_t)(rnd() % (max / 512))) * 512;
			io->op = ISOLDE_BLK_OP_WRITE;
			io->flags = (i % 3 == 0 && flush_result == 0) ? ISOLDE_BLK_F_FUA : 0;
			io->len = len;
			io->offset = i * region + (rnd() % ((region - len) / 512 + 1)) * 512;
			io->buf = malloc(len);
			for (uint32_t k = 0; k < len; k++)
				((unsigned char *)io->buf)[k] = (unsigned char)rnd();
			memcpy(model + io->offset, io->buf, len);
		}
		CHECK(isolde_blk_submit(dev, io) == 0, "submit %u", i);
		inflight++;
	}
	isolde_blk_push(dev);
	while (inflight > 0) {
		int n = isolde_blk_reap(dev, done, 1024, 1, 20000);
		CHECK(n > 0, "reap: %d (%s)", n, isolde_blk_error(dev));
		for (int k = 0; k < n; k++) {
			int want = done[k]->op == ISOLDE_BLK_OP_FLUSH ? flush_result : 0;
			CHECK(done[k]->result == want, "%s at %llu failed: %d, want %d", isolde_blk_op_name(done[k]->op),
			      (unsigned long long)done[k]->offset, done[k]->result, want);
		}
		inflight -= (unsigned)n;
	}
	for (unsigned i = 0; i < qd; i++)
		free(ios[i].buf);
	free(ios);
}

int main(int argc, char **argv)
{
	struct isolde_blk_config c;
	char err[512];

	CHECK(argc == 8, "usage: URI FILE DRIVER POLICY MODE QD rw|ro|noflush");
	const char *what = argv[7];
	bool ro = strcmp(what, "ro") == 0, noflush = strcmp(what, "noflush") == 0;
	isolde_blk_config_default(&c);
	c.image = argv[1];
	c.driver = argv[3];
	c.policy = argv[4];
	CHECK(isolde_notify_mode_parse(argv[5], &c.notify) == 0, "mode %s", argv[5]);
	c.queue_depth = (unsigned)atoi(argv[6]);
	c.max_io = IO_MAX;
	c.data_size = 8u << 20;
	c.readonly = ro;
	struct isolde_blk *dev = isolde_blk_open(&c, err, sizeof err);
	CHECK(dev, "open: %s", err);

	uint64_t size = isolde_blk_size(dev);
	unsigned char *model = malloc(size), *got = malloc(size);
	int fd = open(argv[2], O_RDONLY);
	CHECK(model && got && fd >= 0 && pread(fd, model, size, 0) == (ssize_t)size, "read the server's file");
	read_all(dev, got, size);
	compare(got, model, size, "first read through the driver");

	if (ro) {
		static char buf[4096];
		CHECK(isolde_blk_readonly(dev), "not read-only");
		CHECK(isolde_blk_write(dev, buf, sizeof buf, 0) == -EROFS, "a write to a read-only device");
		CHECK(isolde_blk_flush(dev) == 0, "flush of a read-only device");
	} else if (noflush) {
		/* Writes work; nothing makes them durable, so a flush fails,
		 * and so does a FUA write (after it was written). */
		round_of_writes(dev, model, size, -EIO);
		CHECK(isolde_blk_write_fua(dev, model + 4096, 4096, 4096) == -EIO, "FUA without flush");
		CHECK(isolde_blk_flush(dev) == -EIO, "flush without flush");
	} else {
		for (int r = 0; r < 10; r++)
			round_of_writes(dev, model, size, 0);
		CHECK(isolde_blk_write_fua(dev, model + 4096, 4096, 4096) == 0, "write_fua");
		CHECK(isolde_blk_flush(dev) == 0, "flush");
		/* Zeroes, with and without unmapping, and beyond max_io. */
		struct { uint64_t off, len; bool unmap; } z[] = {
			{ (1u << 20) + 1024, 100352, false },
			{ 3u << 20, 256u << 10, true },
			{ (5u << 20) + 512, (2u << 20) + 1536, false },
			{ size - 1024, 1024, true },
		};
		for (size_t i = 0; i < sizeof z / sizeof z[0]; i++) {
			CHECK(isolde_blk_write_zeroes(dev, z[i].off, z[i].len, z[i].unmap) == 0, "write_zeroes %zu", i);
			memset(model + z[i].off, 0, z[i].len);
		}
		/* Discard: succeeds, its range undefined, everything else kept. */
		CHECK(isolde_blk_discard(dev, (9u << 20) + 4096, 256u << 10) == 0, "discard");
		for (uint64_t off = 9u << 20; off < (10u << 20); off += IO_MAX)
			CHECK(isolde_blk_read(dev, model + off, IO_MAX, off) == 0, "read the discarded range");
		CHECK(isolde_blk_write_zeroes(dev, size - 512, 1024, false) == -EINVAL, "write_zeroes past the end");
		CHECK(isolde_blk_flush(dev) == 0, "last flush");
	}
	read_all(dev, got, size);
	compare(got, model, size, "read through the driver");
	CHECK(pread(fd, got, size, 0) == (ssize_t)size, "pread");
	compare(got, model, size, "the server's file");

	struct isolde_blk_stats st;
	isolde_blk_get_stats(dev, &st);
	CHECK(st.protocol_violations == 0 && !isolde_blk_failed(dev), "violations or failure: %s", isolde_blk_error(dev));
	printf("{\"requests\": %llu, \"errors\": %llu, \"restarts\": %llu, \"size\": %llu}\n",
	       (unsigned long long)st.requests, (unsigned long long)st.errors,
	       (unsigned long long)isolde_blk_supervisor_stats(dev)->restarts, (unsigned long long)size);
	isolde_blk_close(dev);
	return 0;
}
"""


def link_args():
    """How the build links a program against libisolde: the link line of the
    unit test that does so."""
    text = (BUILD / "build.ninja").read_text()
    m = re.search(r"^build tests/unit/test_front: c_LINKER.*\n LINK_ARGS = (.*)$", text, re.M)
    assert m, "no link line for tests/unit/test_front in build.ninja"
    return m.group(1).split()


@pytest.fixture(scope="module")
def ops_program(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbd-ops")
    src, exe = d / "nbd_ops.c", d / "nbd_ops"
    src.write_text(OPS_PROGRAM)
    p = subprocess.run(["cc", "-std=gnu11", "-O1", "-I", str(ROOT / "include"), "-o", str(exe), str(src),
                        *link_args()], cwd=BUILD, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    yield exe
    shutil.rmtree(d, ignore_errors=True)


def run_ops(ops_program, uri, image, mode="hybrid", qd=16, what="rw"):
    p = subprocess.run([str(ops_program), uri, str(image), str(DRIVER_PATH), str(POLICY), mode, str(qd), what],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["restarts"] == 0, r
    if what != "noflush":
        assert r["errors"] == 0, r
    return r, p.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_operation_lands_in_the_servers_file(ops_program, nbd_servers, image, transport, mode):
    srv = nbd_servers(transport, image)
    r, _ = run_ops(ops_program, srv.uri(), image, mode, 16)
    assert r["size"] == 32 * MiB


def test_operations_the_server_lacks_are_emulated(ops_program, nbd_servers, image):
    """No FUA (written, then flushed), no WRITE_ZEROES (zeroes written), and a
    maximum block size of 64 KiB under requests of up to 1 MiB (each split);
    blocksize-policy fails any request that breaks the limits."""
    need_tools("nbdinfo", packages="libnbd-bin")
    # The fua filter's default mode advertises no FUA.
    srv = nbd_servers("unix", image, "--filter=blocksize-policy", "--filter=nozero", "--filter=fua",
                      plugin_args=["file", str(image), "zeromode=none", "blocksize-minimum=512",
                                   "blocksize-preferred=4096", "blocksize-maximum=65536",
                                   "blocksize-error-policy=error"])
    info = subprocess.run(["nbdinfo", "--json", srv.uri()], capture_output=True, text=True, timeout=30)
    assert info.returncode == 0, info.stderr
    exp = json.loads(info.stdout)["exports"][0]
    assert not exp["can_zero"] and not exp["can_fua"] and exp["block_size_maximum"] == 65536, exp
    run_ops(ops_program, srv.uri(), image, "event", 8)
    assert "error" not in srv.log().lower(), srv.log()


def test_slow_server_is_not_a_hang(isolde, nbd_servers, image):
    """A server that takes longer than the heartbeat to answer (3 s per
    write, 2 s heartbeat) keeps its driver: the driver's loop beats its heart
    while it waits, and only the request-age limit (10 heartbeats) would end
    it. No restart, no error."""
    srv = nbd_servers("unix", image, "--filter=delay", plugin_args=["file", str(image), "delay-write=3"])
    p, r = isolde.verify(srv.uri(), "--driver", DRIVER, "--notify", "event", "--qd", 8, "--ops", 16, timeout=120)
    verify_ok(p, r)
    assert r["seconds"] >= 3, r


def test_server_without_fua(ops_program, nbd_servers, image):
    srv = nbd_servers("tcp", image, "--filter=fua")  # fuamode=none: no FUA advertised, flush kept
    run_ops(ops_program, srv.uri(), image, "hybrid", 8)


def test_server_that_cannot_flush(ops_program, nbd_servers, tmp_path):
    """A server without NBD_FLAG_SEND_FLUSH never says writes are durable:
    writes succeed and land, every FLUSH (and a FUA write, which has no flush
    to emulate it with) fails with EIO, and the driver says why."""
    img = tmp_path / "noflush.img"
    with open(img, "wb") as f:
        f.truncate(2 * MiB)
    plugin = ["eval", "get_size=echo 2097152",
              f"pread=dd if={img} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
              f"pwrite=dd of={img} seek=$4 conv=notrunc oflag=seek_bytes status=none",
              "can_write=exit 0", "can_flush=exit 3", "can_fua=echo none", "can_trim=exit 3"]
    srv = nbd_servers("unix", plugin_args=plugin)
    _, err = run_ops(ops_program, srv.uri(), img, "event", 4, "noflush")
    assert "cannot flush" in err, err


# ---- read-only exports ----

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_only_export(isolde, ops_program, nbd_servers, image, transport):
    srv = nbd_servers(transport, image, "-r")
    p = isolde.run("verify", "--image", srv.uri(), "--driver", DRIVER, "--ops", 100, timeout=60)
    assert p.returncode != 0
    assert "the remote device is read-only; open it read-only" in p.stderr, p.stderr
    run_ops(ops_program, srv.uri(), image, "spin", 8, "ro")


# ---- self-repair ----

def storm_until(proc, drivers, seconds, min_age):
    """SIGKILL proc's drivers every few milliseconds, each once it has run
    min_age seconds, until `drivers` of them were killed (or `seconds`
    passed, or proc ended); returns how many distinct drivers were. Counting
    drivers rather than time keeps the storm meaningful on a loaded machine,
    where a spinning front end restarts fewer per second."""
    killed = set()
    end = time.monotonic() + seconds
    while len(killed) < drivers and time.monotonic() < end and proc.poll() is None:
        for pid in driver_children(proc.pid):
            if pid in killed or process_age(pid) < min_age:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.004)
    return len(killed)


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_storm_is_invisible(isolde, nbd_servers, image, mode):
    """SIGKILL 60 drivers in a row, each once it has run 20 ms (so that most
    die serving, not connecting): every one is restarted, reconnects and
    replays; no error, no mismatch. nbdkit runs one thread per connection:
    nbdkit 1.32 with several can abort (assertion 'sock >= 0' in
    raw_send_socket) when clients vanish mid-reply."""
    srv = nbd_servers("unix", image, "--threads=1")
    v = Verify(isolde, srv.uri(), "--ops", 200000, "--qd", 32, "--notify", mode)
    try:
        v.driver_pid()
        kills = storm_until(v.proc, 60, 60, min_age=0.02)
        rc, out, err = v.result(timeout=600)
    finally:
        v.close()
    assert kills >= 60, f"only {kills} drivers killed"
    assert_storm_was_invisible(rc, out, err, kills)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_killed_and_restarted_under_load(isolde, nbd_servers, image, transport):
    """The server dies under load: the driver logs the connection's end and
    exits, the front end says the device is unreachable while connecting
    fails, and once the server is back I/O resumes: no error, no mismatch."""
    srv = nbd_servers(transport, image, "--threads=1")
    v = Verify(isolde, srv.uri(), "--ops", 400000, "--qd", 32, "--notify", "hybrid")
    try:
        v.driver_pid()
        time.sleep(0.5)
        srv.stop()
        assert v.wait_for("the device is unreachable", 20), v.stderr[-3000:]
        time.sleep(2)
        assert v.proc.poll() is None, v.stderr[-3000:]
        srv.start()
        rc, out, err = v.result()
    finally:
        v.close()
    assert rc == 0, err[-3000:]
    r = json.loads(out)
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None, err[-3000:]
    assert r["restarts_by_reason"]["unreachable"] >= 1 and r["replayed"] >= 1, r
    assert re.search(r"blk-nbd\[\d+\]: the NBD (server closed the connection|connection failed)", err), err[-3000:]
    assert "not reachable" in err and "the device is reachable again after" in err, err[-3000:]


def test_server_gone_for_good(isolde, nbd_servers, image, tmp_path):
    """Past the policy's unreachable limit the device fails, and says why."""
    policy = tmp_path / "blk-nbd.policy"
    policy.write_text(POLICY.read_text() + "unreachable 3s\n")
    srv = nbd_servers("unix", image)
    v = Verify(isolde, srv.uri(), "--ops", 400000, "--qd", 32, "--policy", policy)
    try:
        v.driver_pid()
        time.sleep(0.3)
        srv.stop()
        t0 = time.monotonic()
        rc, out, err = v.result(timeout=60)
        took = time.monotonic() - t0
    finally:
        v.close()
    assert rc != 0
    r = json.loads(out)
    assert "the device stayed unreachable for 3 s" in r["error"] and "not reachable" in r["error"], r["error"]
    assert took < 30, took


# ---- wrong images ----

BAD_URIS = {
    "nbd://": "no host",
    "nbd://127.0.0.1:99999/": "not in 1..65535",
    "nbd+unix:///": "needs ?socket=PATH",
    "nbd+unix:///?socket=": "socket path empty",
    "nbd+unix:///x?socket=/nonexistent/isolde-nbd.sock": "is not reachable: No such file or directory",
    "nbds://127.0.0.1/": "TLS (nbds) is not supported",
    "nbd://no-such-host.invalid/": "cannot resolve host",
    "nbd+unix:///?socket=/tmp/x&tls=on": "unknown query parameter 'tls'",
    "nbd://[::1/": "unclosed '['",
}


@pytest.mark.parametrize("uri", sorted(BAD_URIS))
def test_bad_uri_is_a_clear_error(isolde, uri):
    p = isolde.run("verify", "--image", uri, "--driver", DRIVER, "--ops", 10, timeout=60)
    assert p.returncode != 0
    assert BAD_URIS[uri] in p.stderr, p.stderr
    assert " is pid " not in p.stderr, "no driver may start for a wrong image"


def test_refused_port_is_a_clear_error(isolde):
    port = free_tcp_port()
    p = isolde.run("verify", "--image", f"nbd://127.0.0.1:{port}/", "--driver", DRIVER, "--ops", 10, timeout=60)
    assert p.returncode != 0
    assert f"port {port} is not reachable: Connection refused" in p.stderr, p.stderr


def test_unknown_export_is_a_clear_error(isolde, nbd_servers, image):
    srv = nbd_servers("unix", image, "--filter=exportname",
                      plugin_args=["file", str(image), "exportname=good", "exportname-strict=true"])
    p = isolde.run("verify", "--image", srv.uri("bad"), "--driver", DRIVER, "--ops", 10, timeout=60)
    assert p.returncode != 0
    assert "server has no export named 'bad'" in p.stderr, p.stderr
    p, r = isolde.verify(srv.uri("good"), "--driver", DRIVER, "--ops", 500)
    verify_ok(p, r)


def test_size_not_a_multiple_of_512_is_refused(isolde, nbd_servers, tmp_path):
    odd = tmp_path / "odd.img"
    with open(odd, "wb") as f:
        f.truncate(1000000)
    srv = nbd_servers("unix", odd)
    p = isolde.run("verify", "--image", srv.uri(), "--driver", DRIVER, "--ops", 10, timeout=60)
    assert p.returncode != 0
    assert "size 1000000 is not a positive multiple of 512" in p.stderr, p.stderr
