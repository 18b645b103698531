"""blk-uring, the io_uring driver in backend.h's asynchronous model: the
verified workload in every notify mode and queue depth, every operation
(FUA, FLUSH among writes, WRITE_ZEROES, DISCARD) through the C API, its
sandbox and its restricted ring, SIGKILL storms, and bench."""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (assert_own_identity, BUILD, MODES, ROOT, assert_storm_was_invisible, driver_children, read_driver_pid,
                      sigkill_storm, stop)

DRIVER = "blk-uring"
DRIVER_PATH = BUILD / "src" / "drivers" / DRIVER
POLICY = ROOT / "policies" / f"{DRIVER}.policy"


@pytest.fixture(scope="module", autouse=True)
def driver_built():
    if not DRIVER_PATH.exists():
        pytest.fail(f"{DRIVER_PATH} is not built: run make")


# ---- the verified workload ----

VARIANTS = {"copy": [], "zero-copy": ["--zero-copy"], "bs64k": ["--bs", "64k"]}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("qd", [1, 32])
@pytest.mark.parametrize("mode", MODES)
def test_verify(isolde, image, mode, qd, variant):
    p, r = isolde.verify(image, "--driver", DRIVER, "--notify", mode, "--qd", qd, "--ops", 3000,
                         *VARIANTS[variant])
    assert p.returncode == 0, p.stderr
    assert r["driver"] == DRIVER and r["notify"] == mode and r["qd"] == qd
    assert r["writes"] == 3000 and r["reads"] > 0
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None
    assert r["restarts"] == 0 and r["protocol_violations"] == 0 and r["denials"] == 0


# ---- every operation, through the C API ----

OPS_PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

#include "isolde/blk.h"

#define IO_MAX (64u << 10)
#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(1); } } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void compare(const unsigned char *got, const unsigned char *want, uint64_t n, const char *what)
{
	for (uint64_t i = 0; i < n; i++)
		CHECK(got[i] == want[i], "%s: byte %llu is %02x, want %02x", what,
		      (unsigned long long)i, got[i], want[i]);
}

/* One round: qd requests in flight together, writes to disjoint regions
 * (every third FUA) with a FLUSH as every eighth request. */
static void round_of_writes(struct isolde_blk *dev, unsigned char *model, uint64_t size)
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
			uint32_t len = 1 + (uint32_t)(rnd() % (region < IO_MAX ? region : IO_MAX));
			io->op = ISOLDE_BLK_OP_WRITE;
			io->flags = i % 3 == 0 ? ISOLDE_BLK_F_FUA : 0;
			io->len = len;
			io->offset = i * region + rnd() % (region - len + 1);
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
		for (int k = 0; k < n; k++)
			CHECK(done[k]->result == 0, "op %u failed: %d", done[k]->op, done[k]->result);
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

	CHECK(argc == 6, "usage: IMAGE DRIVER POLICY MODE QD");
	isolde_blk_config_default(&c);
	c.image = argv[1];
	c.driver = argv[2];
	c.policy = argv[3];
	CHECK(isolde_notify_mode_parse(argv[4], &c.notify) == 0, "mode %s", argv[4]);
	c.queue_depth = (unsigned)atoi(argv[5]);
	c.max_io = IO_MAX;
	c.data_size = 8u << 20;
	struct isolde_blk *dev = isolde_blk_open(&c, err, sizeof err);
	CHECK(dev, "open: %s", err);

	uint64_t size = isolde_blk_size(dev);
	unsigned char *model = malloc(size), *got = malloc(size);
	int fd = open(argv[1], O_RDONLY);
	CHECK(model && got && fd >= 0 && pread(fd, model, size, 0) == (ssize_t)size, "read the image");

	for (int r = 0; r < 20; r++)
		round_of_writes(dev, model, size);
	CHECK(isolde_blk_write_fua(dev, model + 4096, 4096, 4096) == 0, "write_fua");
	CHECK(isolde_blk_flush(dev) == 0, "flush");

	/* Zeroes, with and without unmapping, and beyond max_io. */
	struct { uint64_t off, len; bool unmap; } z[] = {
		{ (1u << 20) + 1000, 100000, false },
		{ 3u << 20, 256u << 10, true },
		{ (5u << 20) + 3, (2u << 20) + 7, false },
		{ size - 10, 10, true },
	};
	for (size_t i = 0; i < sizeof z / sizeof z[0]; i++) {
		CHECK(isolde_blk_write_zeroes(dev, z[i].off, z[i].len, z[i].unmap) == 0, "write_zeroes %zu", i);
		memset(model + z[i].off, 0, z[i].len);
	}
	/* Discard: succeeds, its range undefined, everything else kept. */
	CHECK(isolde_blk_discard(dev, (9u << 20) + 4096, 256u << 10) == 0, "discard");
	for (uint64_t off = 9u << 20; off < (10u << 20); off += IO_MAX)
		CHECK(isolde_blk_read(dev, model + off, IO_MAX, off) == 0, "read the discarded range");
	/* Out of range. */
	CHECK(isolde_blk_write_zeroes(dev, size - 10, 11, false) == -EINVAL, "write_zeroes past the end");
	CHECK(isolde_blk_discard(dev, size - 4096, 8192) == -EINVAL, "discard past the end");
	CHECK(isolde_blk_flush(dev) == 0, "last flush");

	for (uint64_t off = 0; off < size; off += IO_MAX)
		CHECK(isolde_blk_read(dev, got + off, IO_MAX, off) == 0, "read at %llu", (unsigned long long)off);
	compare(got, model, size, "read through the driver");
	CHECK(pread(fd, got, size, 0) == (ssize_t)size, "pread");
	compare(got, model, size, "the image file");

	struct isolde_blk_stats st;
	isolde_blk_get_stats(dev, &st);
	CHECK(st.protocol_violations == 0 && !isolde_blk_failed(dev), "violations or failure");
	printf("{\"requests\": %llu, \"errors\": %llu, \"restarts\": %llu}\n",
	       (unsigned long long)st.requests, (unsigned long long)st.errors,
	       (unsigned long long)isolde_blk_supervisor_stats(dev)->restarts);
	isolde_blk_close(dev);
	return 0;
}
"""


def link_args():
    """How the build links a program against libisolde: the link line of the
    unit test that does so (its libraries depend on the build)."""
    text = (BUILD / "build.ninja").read_text()
    m = re.search(r"^build tests/unit/test_front: c_LINKER.*\n LINK_ARGS = (.*)$", text, re.M)
    assert m, "no link line for tests/unit/test_front in build.ninja"
    return m.group(1).split()


@pytest.fixture(scope="module")
def ops_program(tmp_path_factory):
    d = tmp_path_factory.mktemp("uring-ops")
    src, exe = d / "uring_ops.c", d / "uring_ops"
    src.write_text(OPS_PROGRAM)
    p = subprocess.run(["cc", "-std=gnu11", "-O1", "-I", str(ROOT / "include"), "-o", str(exe), str(src),
                        *link_args()], cwd=BUILD, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return exe


def run_ops(ops_program, image, mode, qd):
    p = subprocess.run([str(ops_program), str(image), str(DRIVER_PATH), str(POLICY), mode, str(qd)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["errors"] == 0 and r["restarts"] == 0, r
    return r


@pytest.mark.parametrize("qd", [1, 32])
@pytest.mark.parametrize("mode", MODES)
def test_every_operation(ops_program, image, mode, qd):
    """FUA writes and FLUSHes in flight together, write-zeroes (zero range
    and hole punch), discard: the device and the file hold what was written."""
    run_ops(ops_program, image, mode, qd)


def test_every_operation_on_tmpfs(ops_program):
    """tmpfs has no FALLOC_FL_ZERO_RANGE (write-zeroes falls back to writing
    zeroes) and no FMODE_NOWAIT (without io_uring workers, reads are done
    synchronously)."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = Path(f"/dev/shm/isolde-uring-test-{os.getpid()}")
    try:
        with open(path, "wb") as f:
            f.truncate(32 << 20)
        run_ops(ops_program, path, "hybrid", 32)
    finally:
        path.unlink(missing_ok=True)


# ---- least authority ----

def status_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_policy_is_valid_and_grants_uring(isolde):
    p = isolde.run("policy", "check", POLICY)
    assert p.returncode == 0, p.stderr
    p = isolde.run("policy", "show", DRIVER)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^syscalls\s+base io sync uring$", p.stdout, re.M), p.stdout


def test_runs_sandboxed_with_one_restricted_ring(isolde, image):
    """Seccomp filter mode, no_new_privs, a uid of its own, own namespaces,
    empty root; the one fd it adds is the launcher's io_uring, whose only
    file is the image."""
    proc = isolde.start("verify", "--image", image, "--driver", DRIVER, "--ops", 10**9,
                        "--notify", "event", "--qd", 4)
    try:
        pid = read_driver_pid(proc)
        st = status_of(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
        assert_own_identity(pid)
        for ns in ("mnt", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        assert os.listdir(f"/proc/{pid}/root/") == []
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, 3, 4, 5, 6, 7], f"driver holds fds {fds}"
        assert os.readlink(f"/proc/{pid}/fd/7") == "anon_inode:[io_uring]"
        with open(f"/proc/{pid}/fdinfo/7") as f:
            info = f.read()
        assert re.search(r"^UserFiles:\s+1$", info, re.M), info
        assert re.search(rf"^\s+0: .*{re.escape(image.name)}$", info, re.M), info
        with open(f"/proc/{pid}/limits") as f:
            assert re.search(r"Max open files\s+16\s+16", f.read())
    finally:
        stop(proc)


def test_reads_go_through_the_ring(isolde, tmp_path):
    """On a file system whose reads need no worker thread (ext4, not tmpfs),
    READs are io_uring requests: the ring's completion count grows."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", tmp_path], capture_output=True, text=True).stdout.strip()
    if fs == "tmpfs":
        pytest.skip("the temporary directory is on tmpfs, whose reads need a worker thread")
    image = tmp_path / "reads.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    proc = isolde.start("bench", "--image", image, "--driver", DRIVER, "--modes", "hybrid", "--qd", 32,
                        "--bs", "4k", "--rw", "randread", "--copy", "zero", "--seconds", 2,
                        "--idle-seconds", 0)
    completions = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and completions < 10000:
            for pid in driver_children(proc.pid):
                try:
                    with open(f"/proc/{pid}/fdinfo/7") as f:
                        m = re.search(r"^CqTail:\s+(\d+)$", f.read(), re.M)
                    completions = max(completions, int(m.group(1)) if m else 0)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            time.sleep(0.05)
    finally:
        stop(proc)
    assert completions >= 10000, f"only {completions} io_uring completions"


# ---- self-repair ----

@pytest.mark.parametrize("mode", MODES)
def test_sigkill_storm_is_invisible(isolde, image, mode):
    """As for blk-file (test_self_repair.py): SIGKILL the driver every few
    milliseconds for three seconds during a verified workload; no error, no
    mismatch."""
    proc = isolde.start("verify", "--image", image, "--driver", DRIVER, "--ops", 150000, "--qd", 32,
                        "--notify", mode, "--json")
    try:
        read_driver_pid(proc)
        kills = sigkill_storm(proc, 3)
        out, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert_storm_was_invisible(proc.returncode, out, err, kills)


def test_sigkill_storm_with_reads_on_the_ring(isolde, tmp_path):
    """Where io_uring workers are not available (the sandbox's RLIMIT_NPROC
    of 0) only READs are on the ring: kill the driver while a random-read
    load keeps 32 of them in flight, in every mode and both copy modes.
    bench opens the device once per combination, and a driver that dies
    while isolde_blk_open starts it fails the open (PROTOCOL.md 6.5): so
    each driver is spared for its first 50 ms."""
    image = tmp_path / "reads.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    out = tmp_path / "storm.json"
    proc = isolde.start("bench", "--image", image, "--driver", DRIVER, "--modes", "event,spin,hybrid",
                        "--qd", 32, "--bs", "4k", "--rw", "randread", "--copy", "zero,copy",
                        "--seconds", 1, "--idle-seconds", 0, "--json", out)
    try:
        time.sleep(0.5)  # the image is filled first
        kills = sigkill_storm(proc, 8, min_age=0.05)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 6
    for r in rows:
        assert r["errors"] == 0 and r["ios"] > 0, r
    assert kills >= 50 and sum(r["driver_restarts"] for r in rows) >= 50, kills


# ---- bench ----

def test_bench_json(isolde, tmp_path):
    image = tmp_path / "bench.img"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    out = tmp_path / "bench.json"
    p = isolde.run("bench", "--image", image, "--driver", DRIVER, "--seconds", "0.2", "--qd", "1,32",
                   "--bs", "4k", "--rw", "randread,randrw", "--copy", "zero", "--idle-seconds", "0.3",
                   "--json", out, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert "--driver blk-uring" in doc["machine"]["command"]
    rows = doc["results"]
    assert {r["mode"] for r in rows} == {"direct", "event", "spin", "hybrid"}
    assert len(rows) == 2 * (1 + 3 * 2)
    for r in rows:
        what = f'{r["mode"]} qd{r["qd"]} {r["rw"]}'
        assert r["errors"] == 0 and r["driver_restarts"] == 0, what
        assert r["ios"] > 0 and r["iops"] > 0, what
        if r["mode"] != "direct":
            assert r["cpu_us_per_io"]["driver"] > 0, what
        if r["mode"] == "spin":
            assert r["kicks_per_io"] == 0 and r["calls_per_io"] == 0, "spin never signals"
