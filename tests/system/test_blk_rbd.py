"""blk-rbd, the librbd driver, against a real single-node Ceph cluster
(ceph_helpers.py): the verified workload in every notify mode, data that
isolde writes read back with `rbd export` (and the reverse), SIGKILL storms
with the exclusive lock taken over from each dead generation, the lock of a
dead earlier run and of a live client, a read-only snapshot, what the driver
opens and how much it uses while serving, and bad image specs."""
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import (BUILD, MODES, ROOT, assert_own_identity, driver_children, kill_session, read_driver_pid,
                      sigkill_storm, stop)
from ceph_helpers import ceph_cluster  # noqa: F401  (the module's cluster)
from nbd_helpers import (CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, FLAG_FUA, FLAG_NO_HOLE, RawNbd, Served, fio,
                         need_tools, random_file, run, same_files)

DRIVER = "blk-rbd"
DRIVER_PATH = BUILD / "src" / "drivers" / DRIVER
POLICY = ROOT / "policies" / f"{DRIVER}.policy"
MiB = 1 << 20
IMAGE_MB = 16
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def driver_built():
    if not DRIVER_PATH.exists():
        pytest.fail(f"{DRIVER_PATH} is not built: run make")


def new_image(cluster, size_mb=IMAGE_MB):
    name = f"img{next(_names)}"
    cluster.create_image(name, size_mb)
    return name


@pytest.fixture
def rbd_image(ceph_cluster):
    """A fresh image (default features: exclusive-lock among them), removed
    afterwards if it can be: the OSD keeps everything in memory. (One that a
    SIGKILLed client still watches cannot; it goes with the cluster.)"""
    name = new_image(ceph_cluster)
    yield name
    ceph_cluster.remove_image(name)


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / "scratch"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def verify(isolde, spec, *args, timeout=180):
    return isolde.verify(spec, "--driver", DRIVER, *args, timeout=timeout)


def verify_fails(isolde, spec, *args, timeout=120):
    """A verify that must not start; returns its stderr."""
    p = isolde.run("verify", "--image", spec, "--driver", DRIVER, *args, timeout=timeout)
    assert p.returncode != 0, p.stdout
    return p.stderr


def lines_matching(text, pattern):
    return [line for line in text.splitlines() if re.search(pattern, line)]


def denial_lines(err):
    return lines_matching(err, r"denied driver")


def served(isolde, spec, *extra):
    return Served(isolde, spec, "--driver", DRIVER, *extra)


# ---- the verified workload ----

@pytest.mark.parametrize("qd", [1, 32])
@pytest.mark.parametrize("mode", MODES)
def test_verify(isolde, ceph_cluster, rbd_image, mode, qd):
    p, r = verify(isolde, ceph_cluster.image_spec(rbd_image), "--notify", mode, "--qd", qd, "--ops", 3000)
    assert p.returncode == 0, p.stderr
    assert r["driver"] == DRIVER and r["notify"] == mode and r["qd"] == qd
    assert r["writes"] == 3000 and r["reads"] > 0
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None
    assert r["restarts"] == 0 and r["protocol_violations"] == 0
    assert r["denials"] == 0, denial_lines(p.stderr)


@pytest.mark.parametrize("mode", MODES)
def test_closing_gives_the_lock_back(isolde, ceph_cluster, rbd_image, mode):
    """A device that is closed (SIGTERM to the driver, ops->stop) releases
    the image's lock and its watch: the next run finds the image free and
    starts without asking anyone (3 s)."""
    spec = ceph_cluster.image_spec(rbd_image)
    image = f"{ceph_cluster.pool}/{rbd_image}"
    t0 = time.monotonic()
    p, r = verify(isolde, spec, "--notify", mode, "--ops", 300)
    took = time.monotonic() - t0
    assert p.returncode == 0 and r["errors"] == 0, p.stderr
    assert ceph_cluster.rbd("lock", "ls", image).stdout.strip() == ""
    assert "Watchers: none" in ceph_cluster.rbd("status", image).stdout
    assert took < 2, f"closing took {took:.2f} s: the driver was killed, not stopped"
    p, _ = verify(isolde, spec, "--notify", mode, "--ops", 300)
    assert p.returncode == 0 and not lines_matching(p.stderr, r"did not answer"), p.stderr


def test_verify_64k_blocks_with_flushes(isolde, ceph_cluster, rbd_image):
    p, r = verify(isolde, ceph_cluster.image_spec(rbd_image), "--bs", "64k", "--flush-every", 7,
                  "--ops", 1500, "--zero-copy")
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["denials"] == 0


# ---- data, both ways ----

def test_what_isolde_writes_rbd_exports(isolde, ceph_cluster, rbd_image, scratch):
    need_tools("nbdcopy")
    src = scratch / "src.img"
    random_file(src, IMAGE_MB * MiB, seed=7)
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        run(["nbdcopy", src, srv.uri])
        back = scratch / "back.img"
        run(["nbdcopy", srv.uri, back])
        assert same_files(src, back)
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()
    exported = scratch / "exported.img"
    ceph_cluster.rbd("export", f"{ceph_cluster.pool}/{rbd_image}", exported)
    assert same_files(src, exported)


def test_what_rbd_imports_isolde_reads(isolde, ceph_cluster, scratch):
    need_tools("nbdcopy")
    src = scratch / "src.img"
    random_file(src, 12 * MiB + 4096, seed=11)
    name = f"imported{next(_names)}"
    ceph_cluster.rbd("import", src, f"{ceph_cluster.pool}/{name}")
    srv = served(isolde, ceph_cluster.image_spec(name))
    try:
        srv.wait_ready()
        back = scratch / "back.img"
        run(["nbdcopy", srv.uri, back])
        assert same_files(src, back)
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()
        ceph_cluster.remove_image(name)


def allocated_objects(cluster, name, object_size=4 * MiB):
    """The indexes of the image's objects that `rbd diff` says hold data."""
    out = cluster.rbd("diff", "--format", "json", f"{cluster.pool}/{name}").stdout
    return {e["offset"] // object_size for e in json.loads(out) if e["exists"] == "true"}


def test_every_operation(isolde, ceph_cluster, rbd_image, scratch):
    """WRITE (and FUA), FLUSH, WRITE_ZEROES with and without leave to unmap,
    DISCARD, through isolde's NBD export, checked by reading back through
    isolde and with `rbd export` and `rbd diff`: MAY_UNMAP deallocates
    (librbd discards), without it the zeroes stay allocated (thick)."""
    size = IMAGE_MB * MiB
    model = bytearray(random.Random(9).randbytes(size))
    obj = 4 * MiB
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        with RawNbd(srv.address()) as c:
            c.handshake()
            for off in range(0, size, 256 * 1024):
                assert c.write(off, bytes(model[off:off + 256 * 1024]),
                               flags=FLAG_FUA if off % MiB == 0 else 0) == 0
            assert c.call(CMD_FLUSH)[0] == 0
            # Object 1 zeroed, may be unmapped; object 2 zeroed, kept; a
            # range across objects 2 and 3 that is not object-aligned.
            assert c.call(CMD_WRITE_ZEROES, 1 * obj, obj)[0] == 0
            model[obj:2 * obj] = bytes(obj)
            assert c.call(CMD_WRITE_ZEROES, 2 * obj, obj, flags=FLAG_NO_HOLE)[0] == 0
            model[2 * obj:3 * obj] = bytes(obj)
            assert c.call(CMD_WRITE_ZEROES, 3 * obj - 4096, 12288, flags=FLAG_FUA)[0] == 0
            model[3 * obj - 4096:3 * obj + 8192] = bytes(12288)
            # DISCARD: advisory, the range's contents become undefined.
            assert c.call(CMD_TRIM, 3 * obj + MiB, MiB)[0] == 0
            assert c.call(CMD_FLUSH)[0] == 0
            back = bytearray()
            for off in range(0, size, MiB):
                back += c.read(off, MiB)
            c.disconnect()
        trimmed = slice(3 * obj + MiB, 3 * obj + 2 * MiB)
        back[trimmed] = model[trimmed] = bytes(MiB)
        assert back == model
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()
    exported = scratch / "exported.img"
    ceph_cluster.rbd("export", f"{ceph_cluster.pool}/{rbd_image}", exported)
    got = bytearray(exported.read_bytes())
    got[trimmed] = bytes(MiB)
    assert got == model
    objects = allocated_objects(ceph_cluster, rbd_image)
    assert 1 not in objects, f"WRITE_ZEROES with MAY_UNMAP left object 1 allocated: {sorted(objects)}"
    assert {0, 2, 3} <= objects, sorted(objects)


# ---- the exclusive lock ----

def random_age_storm(proc, seconds, max_age, seed=1):
    """SIGKILL proc's drivers for `seconds`, each at a random age in
    [0, max_age): some while they connect, take the lock over or open the
    image, most while they serve. Returns how many kills landed."""
    rng = random.Random(seed)
    return sigkill_storm(proc, seconds, age_of=lambda: rng.uniform(0, max_age))


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_storm_takes_the_lock_over_promptly(isolde, ceph_cluster, rbd_image, mode):
    """Kill the driver again and again during a verified workload: every
    successor breaks its dead predecessor's lock at once (never waiting for
    the dead client's watch to time out, 30 s), the workload sees no error
    and no mismatch."""
    proc = isolde.start("verify", "--image", ceph_cluster.image_spec(rbd_image), "--driver", DRIVER,
                        "--ops", 60000, "--qd", 32, "--notify", mode, "--json")
    try:
        read_driver_pid(proc, timeout=30)
        kills = random_age_storm(proc, 15, max_age=0.3)
        out, err = proc.communicate(timeout=600)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    r = json.loads(out)
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None, r
    assert kills >= 50 and r["restarts"] >= 50, (kills, r["restarts"])
    assert r["restarts_by_reason"]["start-failure"] == 0, err[-3000:]
    assert r["replayed"] > 0
    taken = lines_matching(err, r"took the image's lock over from the previous driver")
    pinged = lines_matching(err, r"did not answer|is alive")
    recovered = [int(m) for m in re.findall(r"recovered in (\d+) us", err)]
    recovered.sort()
    print(f"\n{mode}: {kills} kills, {r['restarts']} restarts, {len(taken)} lock take-overs, "
          f"{r['replayed']} replayed; recovery median {recovered[len(recovered) // 2] / 1000:.0f} ms, "
          f"max {recovered[-1] / 1000:.0f} ms")
    assert len(taken) >= 20
    # Each generation breaks exactly its predecessor's lock: nobody is ever
    # left holding it whom the driver would have to ask (3 s) or wait for.
    assert pinged == [], pinged
    assert recovered and recovered[-1] < 2_000_000, recovered[-5:]
    assert r["denials"] == 0, denial_lines(err)[:5]


def test_lock_of_a_dead_earlier_run_is_broken(isolde, ceph_cluster, rbd_image):
    """A run that dies as a whole (SIGKILL: its driver gets no SIGTERM and
    keeps the lock) leaves the image locked by a dead client whose watch
    lasts 30 s. The next run's first generation asks the holder, which does
    not answer, breaks its lock after 3 s and serves."""
    spec = ceph_cluster.image_spec(rbd_image)
    first = isolde.start("verify", "--image", spec, "--driver", DRIVER, "--ops", 400000, "--json")
    try:
        read_driver_pid(first, timeout=30)
        time.sleep(1)
        lockers = ceph_cluster.rbd("lock", "ls", f"{ceph_cluster.pool}/{rbd_image}").stdout
        assert "auto" in lockers, lockers
    finally:
        kill_session(first)   # the driver dies with it (parent-death signal)
        stop(first)
    assert "auto" in ceph_cluster.rbd("lock", "ls", f"{ceph_cluster.pool}/{rbd_image}").stdout
    t0 = time.monotonic()
    p, r = verify(isolde, spec, "--ops", 300)
    took = time.monotonic() - t0
    print(f"\nsecond run with a dead holder: {took:.2f} s")
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0
    assert lines_matching(p.stderr, r"took the image's lock over from a client that did not answer"), \
        p.stderr
    assert 3 <= took < 9


def test_live_client_keeps_its_lock(isolde, ceph_cluster, rbd_image):
    """Another live client holds the lock (rbd bench, writing): the driver
    asks it, it answers, and the driver refuses to start; the client is not
    disturbed."""
    image = f"{ceph_cluster.pool}/{rbd_image}"
    bench = subprocess.Popen(["rbd", "-c", ceph_cluster.conf, "bench", "--io-type", "write",
                              "--io-size", "4K", "--io-threads", "1", "--io-total", "100G", image],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while "auto" not in ceph_cluster.rbd("lock", "ls", image).stdout:
            assert bench.poll() is None, bench.stderr.read()
            assert time.monotonic() < deadline, "rbd bench never took the lock"
            time.sleep(0.1)
        err = verify_fails(isolde, ceph_cluster.image_spec(rbd_image), "--ops", 100)
        assert lines_matching(err, r"held by client\.\d+ at .*, which is alive: another client "
                                   r"uses the image"), err
        assert bench.poll() is None, "the live client was disturbed"
    finally:
        kill_session(bench)
        bench.communicate(timeout=10)


def test_no_other_client_writes_while_isolde_serves(isolde, ceph_cluster, rbd_image, scratch):
    need_tools("nbdcopy")
    src = scratch / "src.img"
    random_file(src, IMAGE_MB * MiB, seed=3)
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        run(["nbdcopy", src, srv.uri])
        p = ceph_cluster.rbd("bench", "--io-type", "write", "--io-total", "1M",
                             f"{ceph_cluster.pool}/{rbd_image}", check=False)
        assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stderr
        back = scratch / "back.img"
        run(["nbdcopy", srv.uri, back])
        assert same_files(src, back)
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()


# ---- a snapshot, read-only ----

def test_snapshot_is_served_read_only(isolde, ceph_cluster, scratch):
    need_tools("nbdcopy")
    name = f"snapped{next(_names)}"
    image = f"{ceph_cluster.pool}/{name}"
    at_snap = scratch / "at-snap.img"
    random_file(at_snap, 8 * MiB, seed=5)
    ceph_cluster.rbd("import", at_snap, image)
    ceph_cluster.rbd("snap", "create", f"{image}@s1")
    # The image moves on; the snapshot does not.
    ceph_cluster.rbd("bench", "--io-type", "write", "--io-total", "2M", "--io-pattern", "rand", image)

    spec = ceph_cluster.image_spec(name, snap="s1")
    assert "the remote device is read-only; open it read-only" in verify_fails(isolde, spec, "--ops", 10)

    srv = served(isolde, spec, "--readonly")
    try:
        srv.wait_ready()
        back = scratch / "back.img"
        run(["nbdcopy", srv.uri, back])
        assert same_files(at_snap, back)
        w = run(["nbdcopy", at_snap, srv.uri], check=False)
        assert w.returncode != 0
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()
    # A snapshot's reader takes no lock.
    assert ceph_cluster.rbd("lock", "ls", image).stdout.strip() == ""
    ceph_cluster.remove_image(name)


# ---- what the driver opens and uses ----

def test_resources_while_serving(isolde, ceph_cluster, rbd_image, scratch):
    """Peak RSS, VmPeak, fds and threads of the driver under a random
    read-write load at queue depth 32 (fio), from /proc, within what its
    policy grants."""
    need_tools("fio")
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        pid = driver_children(srv.proc.pid)[0]
        result = {}
        load = threading.Thread(target=lambda: result.setdefault("fio", fio(
            srv.uri, scratch, "load", "--rw=randrw", "--bs=4k", "--iodepth=32", "--time_based",
            "--runtime=6", f"--size={IMAGE_MB}M")), daemon=True)
        load.start()
        samples = []
        while load.is_alive():
            with open(f"/proc/{pid}/status") as f:
                st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            samples.append((int(st["VmHWM"].split()[0]), int(st["VmPeak"].split()[0]),
                            int(st["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))))
            time.sleep(0.05)
        load.join()
        job = result["fio"]["jobs"][0]
        hwm, peak, threads, fds = (max(s[i] for s in samples) for i in range(4))
        print(f"\nblk-rbd while serving ({job['read']['iops']:.0f} read + {job['write']['iops']:.0f} "
              f"write IOPS): peak RSS {hwm / 1024:.1f} MiB, VmPeak {peak / 1024:.1f} MiB, "
              f"{threads} threads, {fds} fds")
        assert job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0
        assert driver_children(srv.proc.pid) == [pid], "the driver restarted under load"
        policy = dict(line.split(None, 1) for line in POLICY.read_text().splitlines()
                      if line.strip() and not line.startswith("#"))
        assert threads <= 1 + int(policy["threads"].split()[0])
        assert fds <= int(policy["files"].split()[0])
        assert srv.terminate() == 0, srv.stderr
    finally:
        srv.close()


# ---- under fire: kills, a monitor restart ----

def copy_round_trips(srv, scratch, src, until):
    """nbdcopy src into the export and back, again and again until `until()`
    says stop (at least once); every copy must come back the same."""
    rounds = 0
    while rounds == 0 or not until():
        back = scratch / f"back{rounds}.img"
        run(["nbdcopy", src, srv.uri], timeout=300)
        run(["nbdcopy", srv.uri, back], timeout=300)
        assert same_files(src, back), f"round {rounds}: what came back differs"
        back.unlink()
        rounds += 1
    return rounds


def test_nbd_export_under_a_kill_storm(isolde, ceph_cluster, rbd_image, scratch):
    """The NBD export over blk-rbd, driven by nbdcopy and by fio (verified
    writes), while every driver is SIGKILLed once it has run 150 ms - about
    50 ms after it took the lock over and became ready (a start is some
    100 ms): no client sees an error, every copy comes back the same."""
    need_tools("nbdcopy", "fio")
    src = scratch / "src.img"
    random_file(src, IMAGE_MB * MiB, seed=11)
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        done = threading.Event()
        out = {}

        def workload():
            try:
                out["rounds"] = copy_round_trips(srv, scratch, src, done.is_set)
                out["fio"] = fio(srv.uri, scratch, "storm", "--rw=randwrite", "--bs=4k", "--iodepth=16",
                                 f"--size={IMAGE_MB}M", "--verify=crc32c", "--do_verify=1")
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = e

        load = threading.Thread(target=workload, daemon=True)
        load.start()
        kills = sigkill_storm(srv.proc, 6, min_age=0.15)
        done.set()
        load.join(timeout=600)
        assert "error" not in out, f"{out.get('error')}\n{srv.stderr[-3000:]}"
        assert out["rounds"] >= 1 and kills >= 10, (out, kills)
        st = srv.status()
        assert st["state"] == "running" and st["error"] is None, st
        assert st["restarts_by_reason"]["killed"] >= 10, st
        assert not denial_lines(srv.stderr), denial_lines(srv.stderr)
        assert srv.terminate() == 0, srv.stderr[-3000:]
    finally:
        srv.close()


def test_monitor_restart_under_load(isolde, ceph_cluster, rbd_image, scratch):
    """The monitor is killed and started again, twice, while fio writes and
    verifies through the export: librados hunts for it, the OSDs keep
    serving, and the client sees no error."""
    need_tools("fio")
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        out = {}

        def workload():
            try:
                out["fio"] = fio(srv.uri, scratch, "mon", "--rw=randrw", "--bs=4k", "--iodepth=16",
                                 "--time_based", "--runtime=8", f"--size={IMAGE_MB}M",
                                 "--verify=crc32c", "--verify_backlog=64")
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = e

        load = threading.Thread(target=workload, daemon=True)
        load.start()
        for _ in range(2):
            time.sleep(2)
            ceph_cluster.restart_mon()
        load.join(timeout=120)
        assert "error" not in out, f"{out.get('error')}\n{srv.stderr[-3000:]}"
        job = out["fio"]["jobs"][0]
        assert job["write"]["io_bytes"] > 0 and job["read"]["io_bytes"] > 0
        st = srv.status()
        assert st["state"] == "running" and st["error"] is None, st
        assert srv.terminate() == 0, srv.stderr[-3000:]
    finally:
        srv.close()


# ---- the sandbox, from /proc ----

def test_driver_sandbox_from_proc(isolde, ceph_cluster, rbd_image):
    """While it serves: seccomp filter mode with one filter, no_new_privs, a
    uid of its own, no capabilities; mount, IPC and UTS namespaces of its
    own, the host's network namespace (its policy's 'connect'); a root that
    holds nothing but the way to its libraries, bound read-only; its threads
    within the policy."""
    srv = served(isolde, ceph_cluster.image_spec(rbd_image))
    try:
        srv.wait_ready()
        pid = driver_children(srv.proc.pid)[0]
        with open(f"/proc/{pid}/status") as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert st["Seccomp"].strip() == "2" and st["Seccomp_filters"].strip() == "1", st
        assert st["NoNewPrivs"].strip() == "1", st
        if os.geteuid() == 0:
            assert_own_identity(pid)
        ns = lambda p, kind: os.readlink(f"/proc/{p}/ns/{kind}")  # noqa: E731
        for kind in ("mnt", "ipc", "uts"):
            assert ns(pid, kind) != ns("self", kind), f"{kind} namespace is the host's"
        assert ns(pid, "net") == ns("self", "net"), "blk-rbd must reach its monitors and OSDs"
        root = sorted(os.listdir(f"/proc/{pid}/root"))
        assert set(root) <= {"lib", "lib64", "usr"} and "usr" in root, root
        assert not os.path.exists(f"/proc/{pid}/root/etc"), "the driver's root shows /etc"
        assert not os.path.exists(f"/proc/{pid}/root/proc"), "the driver's root shows /proc"
        binds = [line.split() for line in open(f"/proc/{pid}/mountinfo") if " /usr/" in line]
        assert binds and all("ro" in b[5].split(",") for b in binds), binds
        policy_threads = int(re.search(r"^threads\s+(\d+)", POLICY.read_text(), re.M).group(1))
        assert int(st["Threads"]) <= 1 + policy_threads
        assert srv.terminate() == 0, srv.stderr[-3000:]
    finally:
        srv.close()


# ---- bad specs ----

def keyring_with_wrong_key(path):
    # A well-formed cephx key that the cluster never issued.
    path.write_text("[client.isolde]\n\tkey = AQBzbg9rAAAAABAAcXVpdGUgd3JvbmcgYSBrZXkhIQ==\n")
    return path


def test_bad_specs_are_named(isolde, ceph_cluster, rbd_image, scratch):
    c = ceph_cluster
    conf, kr = c.conf, c.client_keyring
    not_a_keyring = scratch / "dir"
    not_a_keyring.mkdir()
    cases = [
        (f"rbd:{rbd_image}:conf={conf}:id=isolde:keyring={kr}", "expected rbd:POOL/IMAGE"),
        (f"rbd:/{rbd_image}:conf={conf}:id=isolde:keyring={kr}", "empty pool"),
        (f"rbd:isolde/{rbd_image}:conf={conf}:id=isolde:keyring={kr}:colour=blue", "unknown option 'colour'"),
        (f"rbd:isolde/{rbd_image}:conf={conf}:id=isolde:keyring={scratch / 'missing'}",
         "cannot read the Ceph keyring"),
        (f"rbd:isolde/{rbd_image}:conf={conf}:id=isolde:keyring={not_a_keyring}",
         "cannot read the Ceph keyring"),
        (f"rbd:isolde/{rbd_image}:conf={scratch / 'missing.conf'}:id=isolde:keyring={kr}",
         "cannot read the Ceph configuration"),
        (f"rbd:isolde/{rbd_image}:conf={conf}:id=someone:keyring={kr}", "has no key for client.someone"),
        # What only the driver can find out.
        (f"rbd:isolde/nosuchimage:conf={conf}:id=isolde:keyring={kr}",
         "opening image 'nosuchimage' in pool 'isolde': No such file or directory"),
        (f"rbd:nosuchpool/{rbd_image}:conf={conf}:id=isolde:keyring={kr}",
         "opening pool 'nosuchpool': No such file or directory"),
        (f"rbd:isolde/{rbd_image}@nosnap:conf={conf}:id=isolde:keyring={kr}",
         f"opening image '{rbd_image}@nosnap' in pool 'isolde' read-only"),
        (f"rbd:isolde/{rbd_image}:conf={conf}:id=isolde:keyring={keyring_with_wrong_key(scratch / 'k')}",
         "connecting to the cluster at v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0 as client.isolde: "
         "Permission denied"),
    ]
    for spec, message in cases:
        err = verify_fails(isolde, spec, "--ops", 10)
        assert message in err, f"{spec}:\n{err}"


# ---- the driver's own parsing of fd 6 ----

@pytest.fixture
def spec_driver(tmp_path):
    """blk-rbd under another name, which the front end does not know as a
    remote driver: it opens a regular file as fd 6, so the driver's own
    parser can be given anything."""
    d = tmp_path / "spec-driver"
    d.mkdir()
    binary = d / "rbdspec"
    shutil.copy(DRIVER_PATH, binary)
    policy = d / "rbdspec.policy"
    policy.write_text(re.sub(r"(?m)^driver\s+blk-rbd$", "driver     rbdspec", POLICY.read_text()))
    return binary, policy


GOOD = {"id": "isolde", "pool": "isolde", "image": "x", "mon_host": "[v2:127.0.0.1:3300/0]",
        "key": "AQBzbg9rAAAAABAAcXVpdGUgd3JvbmcgYSBrZXkhIQ=="}


def spec_text(**over):
    d = dict(GOOD, **over)
    return "".join(f"{k}={v}\n" for k, v in d.items() if v is not None)


SPEC_CASES = {
    "unknown-key": (spec_text() + "colour=blue\n", "unknown key 'colour'"),
    "no-mon_host": (spec_text(mon_host=None), "the required key 'mon_host' is missing"),
    "no-key": (spec_text(key=None), "the required key 'key' is missing"),
    "twice": (spec_text() + "pool=other\n", "key 'pool' is given twice"),
    "overlong": (spec_text(image="x" * 3000), "a line is longer than 2047 bytes"),
    "host-name": (spec_text(mon_host="ceph-mon.example:6789"),
                  "the value of 'mon_host' holds a character that is not part of an IP address list"),
    "bad-key": (spec_text(key="not base64!"), "the value of 'key' holds a character it may not"),
    "empty": (spec_text(snap=""), "key 'snap' has an empty value"),
    "no-newline": (spec_text().rstrip("\n"), "the last line does not end with a newline"),
    "not-key-value": ("just words\n", "a line is not key=value"),
}


@pytest.mark.parametrize("case", SPEC_CASES)
def test_driver_parses_its_spec_strictly(isolde, spec_driver, tmp_path, case):
    text, message = SPEC_CASES[case]
    binary, policy = spec_driver
    spec = tmp_path / "spec"
    spec.write_text(text)
    p = isolde.run("verify", "--image", spec, "--driver", binary, "--policy", policy, "--ops", 1, timeout=60)
    assert p.returncode != 0
    assert f"image spec on fd 6: {message}" in p.stderr, p.stderr
