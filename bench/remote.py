#!/usr/bin/python3
"""Remote storage through isolde: blk-rbd (librbd) and blk-nbd (an NBD
client), each against the tools people run today, on the same back end in
the same run. Prints a Markdown section.

1. Ceph RBD: one single-node cluster (tests/system/ceph_helpers.py: one
   monitor, one memstore OSD, cephx), one image prefilled by a sequential
   write, and 4 KiB random reads and writes at QD1 and QD32 through
     - fio's rbd engine: librbd in fio's own process, the limit;
     - qemu-storage-daemon with an rbd blockdev and an NBD export, driven by
       fio's nbd engine: librbd in process, as users run it today;
     - isolde serve with blk-rbd behind its NBD export, the same fio nbd
       engine: librbd in a driver domain, per notify mode.
2. NBD: fio's nbd engine straight against nbdkit (file plugin, a tmpfs
   file) against isolde serve with blk-nbd in front of the same nbdkit.
3. Recovery from a librbd crash: isolde verify through blk-rbd while its
   driver is SIGKILLed every 200-500 ms (each time after the previous
   restart has recovered), with the front end's recovery times, its error
   count and the driver's own log lines, timed as they arrive; the same
   storm with the monitor's paxos timing changed (ablations: what the
   blocklist of the dead session costs); and the steps of such a takeover
   timed one by one with python3-rbd.

fio runs are time-based after a ramp, --direct=1; every path is measured in
each repetition, the order rotated from one to the next, and the table gives
medians. rbd_cache is off everywhere (blk-rbd always turns it off; fio and
qemu-storage-daemon get rbd cache = false through their ceph.conf, and
qemu-storage-daemon cache.direct=on as well).

Every process this starts (the Ceph daemons, qemu-storage-daemon, nbdkit,
isolde, fio) dies with it, and its files go, also on failure.

usage: bench/remote.py [ISOLDE] [--quick] [--seconds S] [--reps N] [--parts rbd,nbd,recovery]"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from suite_modules import ROOT, rerun_or_exit
try:
    import ceph_helpers  # needs pytest (for the fixture) and conftest
    from ceph_helpers import CephCluster, CephError, MON_PORTS, port_busy, _die_with_parent
except ImportError as e:
    rerun_or_exit(__file__, e)

WORKLOADS = (("randread", 1), ("randread", 32), ("randwrite", 1), ("randwrite", 32))
QSD_TARGET = 0.9          # isolde blk-rbd IOPS / qemu-storage-daemon's, at QD32
RECOVERY_TARGET_US = 50000
IMAGE = "bench"
RECOVERY_IMAGE = "recovery"


def log(msg):
    print(f"remote.py: {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[(len(xs) - 1) * p // 100] if xs else float("nan")


class Procs:
    """Every process started here: each gets SIGKILL when this script dies
    (a parent-death signal), and stop_all() ends what is left."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen([str(a) for a in args], preexec_fn=_die_with_parent, **kw)
        self.procs.append(p)
        return p

    @staticmethod
    def stop(p, sig=signal.SIGTERM, timeout=30):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p, timeout=10)


PROCS = Procs()


def wait_socket(path, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not create {path} (exit status {proc.poll()})")
        time.sleep(0.05)


def descendants(pid):
    """Pids of every process below pid (through all its threads)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            out += kids
            todo += kids
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def fio(engine, rw, qd, seconds, ramp, out, env=None):
    """One fio job; -> (iops, clat p50 us, clat p99 us, lat p50 us, lat p99 us)."""
    args = ["fio", "--output-format=json", f"--output={out}", "--name=j", f"--rw={rw}", "--bs=4k",
            "--clat_percentiles=1", "--lat_percentiles=1",
            f"--iodepth={qd}", "--direct=1", "--time_based", f"--runtime={seconds}", f"--ramp_time={ramp}",
            *engine]
    p = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                       preexec_fn=_die_with_parent, timeout=seconds + ramp + 120)
    if p.returncode != 0:
        raise RuntimeError(f"fio {' '.join(engine)} {rw} QD{qd} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    with open(out) as f:
        job = json.load(f)["jobs"][0]
    r = job["read" if rw.endswith("read") else "write"]
    if job.get("error") or not r["io_bytes"]:
        raise RuntimeError(f"fio {' '.join(engine)} {rw} QD{qd}: error {job.get('error')}, "
                           f"{r['io_bytes']} bytes")
    c, t = r["clat_ns"]["percentile"], r["lat_ns"]["percentile"]
    return r["iops"], c["50.000000"] / 1e3, c["99.000000"] / 1e3, t["50.000000"] / 1e3, t["99.000000"] / 1e3


LOADS = []  # the 1-minute load average before each fio run


def measure(results, path, engine, a, dirname, env=None):
    for rw, qd in WORKLOADS:
        LOADS.append(os.getloadavg()[0])
        res = fio(engine, rw, qd, a.seconds, a.ramp, os.path.join(dirname, "fio.json"), env)
        results.setdefault(path, {}).setdefault(f"{rw} QD{qd}", []).append(res)
        log(f"  {path:<28} {rw:<9} QD{qd:<2} {res[0]:8.0f} IOPS  clat p50 {res[1]:7.1f} p99 {res[2]:8.1f} us, "
            f"lat p50 {res[3]:7.1f} p99 {res[4]:8.1f} us")


class Serve:
    """isolde serve with one device behind an NBD export on a Unix socket."""

    def __init__(self, isolde, dirname, spec):
        self.sock = os.path.join(dirname, "isolde.sock")
        self.log = open(os.path.join(dirname, "serve.log"), "w+")
        self.proc = PROCS.start([isolde, "serve", "--device", f"d,{spec}", "--export", f"nbd:unix:{self.sock},device=d"],
                                stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 120
        while True:
            self.log.seek(0)
            text = self.log.read()
            if "; ready" in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"isolde serve did not start:\n{text[-3000:]}")
            time.sleep(0.05)
        self.started = text
        self.uri = f"nbd+unix:///?socket={self.sock}"

    def close(self):
        PROCS.stop(self.proc, timeout=60)
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def clear_locks(cluster, image):
    """isolde serve ends its driver with SIGKILL, so the image keeps the dead
    driver's exclusive lock: librbd in the next client would wait some 30 s
    for that owner's watch to time out. Break it (and blocklist the dead
    session) as client.admin, as an operator would."""
    spec = f"{cluster.pool}/{image}"
    locks = json.loads(cluster.rbd("lock", "ls", "--format", "json", spec).stdout or "[]")
    for lk in locks:
        cluster.rbd("lock", "rm", spec, lk["id"], lk["locker"])
    return len(locks)


# ---- 1. rbd ----

def rbd_part(isolde, a, cluster, dirname):
    conf = os.path.join(dirname, "ceph-nocache.conf")
    with open(cluster.conf) as src, open(conf, "w") as dst:
        dst.write(src.read() + "\n[client]\nrbd cache = false\n")
    env = dict(os.environ, CEPH_CONF=conf, CEPH_ARGS="--rbd_cache=false")
    fio_rbd = ["--ioengine=rbd", f"--clientname={cluster.client_id}", f"--pool={cluster.pool}", f"--rbdname={IMAGE}"]
    t0 = time.monotonic()
    subprocess.run(["fio", "--name=prefill", "--rw=write", "--bs=4M", "--iodepth=8", "--output=/dev/null",
                    *fio_rbd], check=True, env=env, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    log(f"prefilled {cluster.pool}/{IMAGE} ({a.size_mb} MiB) in {time.monotonic() - t0:.1f} s")
    spec = cluster.image_spec(IMAGE)

    def via_fio_rbd(results):
        measure(results, "fio rbd engine", fio_rbd, a, dirname, env)

    def via_qsd(results):
        sock = os.path.join(dirname, "qsd.sock")
        p = PROCS.start(["qemu-storage-daemon",
                         "--blockdev", f"driver=rbd,node-name=r,pool={cluster.pool},image={IMAGE},conf={conf},"
                         f"user={cluster.client_id},cache.direct=on",
                         "--nbd-server", f"addr.type=unix,addr.path={sock}",
                         "--export", "type=nbd,id=e,node-name=r,name=x,writable=on"],
                        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(dirname, "qsd.log"), "w"))
        try:
            wait_socket(sock, p, "qemu-storage-daemon")
            measure(results, "qemu-storage-daemon", ["--ioengine=nbd", f"--uri=nbd+unix:///x?socket={sock}"],
                    a, dirname)
        finally:
            PROCS.stop(p)
            if p.returncode not in (0, -signal.SIGTERM):
                log(f"qemu-storage-daemon exited with {p.returncode}")

    def via_isolde(mode):
        def run(results):
            srv = Serve(isolde, dirname, f"driver=blk-rbd,image={spec},notify={mode}")
            try:
                measure(results, f"isolde blk-rbd, {mode}", ["--ioengine=nbd", f"--uri={srv.uri}"], a, dirname)
            finally:
                srv.close()
                clear_locks(cluster, IMAGE)
        return run

    paths = [via_fio_rbd, via_qsd] + [via_isolde(m) for m in a.modes]
    results = {}
    for rep in range(a.reps):
        log(f"rbd, repetition {rep + 1} of {a.reps}")
        for i in range(len(paths)):
            paths[(i + rep) % len(paths)](results)
    return results


# ---- 2. nbd ----

def nbd_part(isolde, a, dirname, shmdir):
    image = os.path.join(shmdir, "nbd-image")
    chunk = os.urandom(1 << 20)
    with open(image, "wb") as f:
        for _ in range(a.size_mb):
            f.write(chunk)
    ksock = os.path.join(dirname, "nbdkit.sock")
    kit = PROCS.start(["nbdkit", "--foreground", "--exit-with-parent", "--unix", ksock, "file", image],
                      stdout=subprocess.DEVNULL, stderr=open(os.path.join(dirname, "nbdkit.log"), "w"))
    results = {}
    try:
        wait_socket(ksock, kit, "nbdkit")
        kit_uri = f"nbd+unix:///?socket={ksock}"

        def direct(results):
            measure(results, "nbdkit, fio straight", ["--ioengine=nbd", f"--uri={kit_uri}"], a, dirname)

        def via_isolde(mode):
            def run(results):
                srv = Serve(isolde, dirname, f"driver=blk-nbd,image={kit_uri},notify={mode}")
                try:
                    measure(results, f"isolde blk-nbd, {mode}", ["--ioengine=nbd", f"--uri={srv.uri}"], a, dirname)
                finally:
                    srv.close()
            return run

        paths = [direct] + [via_isolde(m) for m in a.modes]
        for rep in range(a.reps):
            log(f"nbd, repetition {rep + 1} of {a.reps}")
            for i in range(len(paths)):
                paths[(i + rep) % len(paths)](results)
    finally:
        PROCS.stop(kit)
        os.unlink(image)
    return results


# ---- 3. recovery ----

def recovery_run(isolde, cluster, mode, seconds, ops, dirname):
    """isolde verify through blk-rbd; SIGKILL its driver 200-500 ms after each
    recovery, for `seconds`. -> (its JSON, its exit status, [kill times],
    [(arrival time, line)] of its stderr)."""
    spec = cluster.image_spec(RECOVERY_IMAGE)
    proc = PROCS.start([isolde, "verify", "--driver", "blk-rbd", "--image", spec, "--ops", ops, "--qd", 32,
                        "--notify", mode, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, recovered = [], threading.Event()
    out = []

    def read_err():
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))
            if " recovered in " in line:
                recovered.set()

    def read_out():
        out.append(proc.stdout.read())

    readers = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
    for t in readers:
        t.start()
    kills = []
    try:
        deadline = time.monotonic() + 120
        while not any(" is pid " in l for _, l in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("isolde verify did not start:\n" + "\n".join(l for _, l in lines[-30:]))
            time.sleep(0.02)
        end = time.monotonic() + seconds
        rng = random.Random(1)
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(rng.uniform(0.2, 0.5))
            drivers = [p for p in descendants(proc.pid) if "blk-rbd --shm-fd" in cmdline(p)]
            if not drivers:
                continue
            recovered.clear()
            for p in drivers:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kills.append(time.monotonic())
            if not recovered.wait(30) and proc.poll() is None:
                raise RuntimeError("no recovery within 30 s of a kill:\n" + "\n".join(l for _, l in lines[-30:]))
        proc.wait(timeout=600)
    finally:
        PROCS.stop(proc, sig=signal.SIGKILL)
        for t in readers:
            t.join(timeout=10)
    text = "".join(out).strip()
    if not text:
        raise RuntimeError(f"isolde verify printed no JSON (exit {proc.returncode}):\n"
                           + "\n".join(l for _, l in lines[-30:]))
    return json.loads(text), proc.returncode, kills, lines


def phases(kills, lines):
    """Per kill, from the arrival times of isolde's stderr lines: the kill to
    the front end's failure line, that to the driver's line saying it took
    the lock over (it comes after connecting, opening the image, breaking the
    dead session's lock and blocklisting it), that to the recovered line.
    The front end's own figure runs from its detection of the failure."""
    out = {"detect": [], "lock": [], "rest": [], "recovered": []}
    for i, k in enumerate(kills):
        nxt = kills[i + 1] if i + 1 < len(kills) else float("inf")
        seg = [(t, l) for t, l in lines if k <= t < nxt]
        fail = next((t for t, l in seg if " failed (" in l), None)
        lock = next((t for t, l in seg if "took the image's lock over" in l), None)
        rec = next(((t, l) for t, l in seg if " recovered in " in l), None)
        if fail is None or lock is None or rec is None:
            continue
        out["detect"].append((fail - k) * 1e6)
        out["lock"].append((lock - fail) * 1e6)
        out["rest"].append((rec[0] - lock) * 1e6)
        out["recovered"].append(int(rec[1].split(" recovered in ")[1].split()[0]))
    return out


HOLDER = r"""
import sys, rados, rbd
conf, name, pool, image = sys.argv[1:]
r = rados.Rados(conffile=conf, name=name, conf={"admin_socket": "", "rbd_cache": "false"})
r.connect()
img = rbd.Image(r.open_ioctx(pool), image)
img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
img.write(b"x" * 4096, 0)
print("locked", flush=True)
sys.stdin.read()
"""


def load_cost(driver, n):
    """exec of the blk-rbd binary up to its first argument check: the loader,
    librbd, librados and their dependencies, and their constructors. -> [us]"""
    out = []
    for _ in range(n):
        t = time.monotonic()
        subprocess.run([driver], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append((time.monotonic() - t) * 1e6)
    return out


def takeover_steps(cluster, image, n):
    """What a new blk-rbd generation does before it serves, step by step,
    with python-rbd in this process (the same librbd): connect, open the
    pool and the image, list the lock's owner, break the dead holder's lock
    (librbd blocklists it and waits for the OSD map that says so), take the
    lock, one 4 KiB write. The holder is a process that took the lock and
    was SIGKILLed, as a driver is. -> {step: [us]}"""
    import rados
    import rbd
    steps = {k: [] for k in ("connect", "open pool", "open image", "list owners", "break lock + blocklist",
                             "take lock", "first write", "total")}
    for _ in range(n):
        h = PROCS.start([sys.executable, "-c", HOLDER, cluster.conf, f"client.{cluster.client_id}", cluster.pool,
                         image], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if h.stdout.readline().strip() != "locked":
            raise RuntimeError("the lock holder did not take the lock")
        h.kill()
        h.wait()
        # As in the kill storm, the monitor's last commit (the previous
        # blocklist) is more than paxos_propose_interval ago: the blocklist
        # then waits paxos_min_wait, not the rest of an interval.
        time.sleep(0.3)
        t = [time.monotonic()]
        r = rados.Rados(conffile=str(cluster.conf), name=f"client.{cluster.client_id}",
                        conf={"admin_socket": "", "rbd_cache": "false"})
        r.connect()
        t.append(time.monotonic())
        io = r.open_ioctx(cluster.pool)
        t.append(time.monotonic())
        img = rbd.Image(io, image)
        t.append(time.monotonic())
        owners = list(img.lock_get_owners())
        t.append(time.monotonic())
        for o in owners:
            img.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, o["owner"])
        t.append(time.monotonic())
        img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        t.append(time.monotonic())
        img.write(b"y" * 4096, 4096)
        t.append(time.monotonic())
        img.lock_release()
        img.close()
        io.close()
        r.shutdown()
        for k, (x, y) in zip(steps, zip(t, t[1:])):
            steps[k].append((y - x) * 1e6)
        steps["total"].append((t[-1] - t[0]) * 1e6)
    return steps


# Monitor settings of the ablations: the blocklist that breaking the dead
# driver's lock needs is an OSD map change, which the monitor commits no
# sooner than paxos_min_wait after it is asked for, and no sooner than
# paxos_propose_interval after the previous commit.
FIXTURE_PAXOS = {"paxos_min_wait": "0.05", "paxos_propose_interval": "0.1"}  # Ceph's min wait, the fixture's interval
ABLATIONS = (("monitor paxos_min_wait 1 ms", {"paxos_min_wait": "0.001"}),
             ("monitor paxos_propose_interval 1 s (Ceph's default)", {"paxos_propose_interval": "1"}))


def set_mon(cluster, settings):
    for k, v in settings.items():
        cluster.ceph("tell", "mon.a", "config", "set", k, v)


def recovery_part(isolde, a, cluster, dirname, rate):
    cluster.create_image(RECOVERY_IMAGE, 256)
    # verify writes --ops blocks, then reads them all back: about `seconds`
    # of work at the rate measured without kills.
    ops = max(2000, int(rate * a.recovery_seconds / 2))
    runs = {}
    plan = [(m, m, {}) for m in a.modes]
    if a.ablations:
        plan += [(f"{a.modes[-1]}, {name}", a.modes[-1], settings) for name, settings in ABLATIONS]
    for label, mode, settings in plan:
        log(f"recovery, {label}: {ops} verified writes, driver SIGKILLed every 200-500 ms")
        set_mon(cluster, settings)
        try:
            t0 = time.monotonic()
            res, rc, kills, lines = recovery_run(isolde, cluster, mode, a.recovery_seconds * 3, ops, dirname)
            wall = time.monotonic() - t0
        finally:
            set_mon(cluster, {k: FIXTURE_PAXOS[k] for k in settings})
        rec = [int(l.split(" recovered in ")[1].split()[0]) for _, l in lines if " recovered in " in l]
        runs[label] = {"json": res, "rc": rc, "kills": len(kills), "samples": rec, "phases": phases(kills, lines),
                       "wall": wall, "lines": lines, "denied": sum(" denied " in l for _, l in lines)}
        clear_locks(cluster, RECOVERY_IMAGE)
        log(f"  {len(kills)} kills, {res['restarts']} restarts, recovery {res['recovery_us']}, "
            f"errors {res['errors']}, mismatches {res['mismatches']}, exit {rc}")
    log(f"recovery, the steps of a takeover one by one ({a.steps} times)")
    steps = takeover_steps(cluster, RECOVERY_IMAGE, a.steps)
    clear_locks(cluster, RECOVERY_IMAGE)
    driver = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(isolde))), "src", "drivers", "blk-rbd")
    if os.access(driver, os.X_OK):
        steps = {"exec blk-rbd to its argument check (loader, librbd, librados)": load_cost(driver, a.steps), **steps}
    return runs, steps


# ---- report ----

def table(results, base, title_base):
    print(f"| path | workload | IOPS | IOPS range | clat p50 us | clat p99 us | lat p50 us | lat p99 us | "
          f"IOPS / {title_base} | clat p99 / {title_base} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rw, qd in WORKLOADS:
        w = f"{rw} QD{qd}"
        b = results[base][w]
        biops, bp99 = median([r[0] for r in b]), median([r[2] for r in b])
        for path, by in results.items():
            runs = by[w]
            iops = median([r[0] for r in runs])
            m = [median([r[i] for r in runs]) for i in range(1, 5)]
            print(f"| {path} | {w} | {iops:.0f} | {min(r[0] for r in runs):.0f}-{max(r[0] for r in runs):.0f} | "
                  f"{m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.1f} | {iops / biops:.2f} | {m[1] / bp99:.2f} |")
    print()


def med_iops(results, path, w):
    return median([r[0] for r in results[path][w]])


def report(a, rbd, nbd, rec, cluster_info):
    reps = f"{a.reps} repetition{'s' if a.reps > 1 else ''}"
    shape = (f"fio 3.33, one job, 4 KiB, --direct=1, {a.seconds} s time-based after a {a.ramp} s ramp, "
             f"medians of {reps} (each repetition runs every path, in an order rotated per repetition); "
             f"clat is fio's completion latency (from the engine's queue call's return), lat the total "
             f"(submission included)")
    if LOADS:
        print(f"The machine was shared during this run: the 1-minute load average before each fio run was "
              f"{min(LOADS):.1f} to {max(LOADS):.1f} (median {median(LOADS):.1f}) on {os.cpu_count()} CPUs.\n")
    if rbd:
        print("### blk-rbd: librbd in a driver domain\n")
        print(f"{cluster_info}; one {a.size_mb} MiB image (default features, exclusive-lock among them), "
              f"prefilled by a sequential write. {shape}. rbd_cache off on every path. fio's rbd engine runs "
              "librbd in fio; qemu-storage-daemon 7.2 (rbd blockdev, cache.direct=on, NBD export on a Unix "
              "socket) and isolde serve (blk-rbd, NBD export on a Unix socket) are driven by fio's nbd "
              "engine.\n")
        table(rbd, "qemu-storage-daemon", "qsd")
        isolated = [p for p in rbd if p.startswith("isolde")]
        print("isolde blk-rbd's IOPS at QD32 against the in-process paths: the ratio of the medians above, and "
              "the median (lowest-highest) of the ratios within each repetition, whose paths ran within minutes of each other:\n")
        print("| at QD32 | " + " | ".join(isolated) + " |")
        print("|---|" + "---|" * len(isolated))
        for rw in ("randread", "randwrite"):
            w = f"{rw} QD32"
            for base, short in (("qemu-storage-daemon", "qsd"), ("fio rbd engine", "fio rbd")):
                cells = []
                for p in isolated:
                    paired = [x[0] / y[0] for x, y in zip(rbd[p][w], rbd[base][w])]
                    cells.append(f"{med_iops(rbd, p, w) / med_iops(rbd, base, w):.2f}x; per repetition "
                                 f"{median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})")
                print(f"| {rw}, / {short} | " + " | ".join(cells) + " |")
        print(f"\nTarget: isolde blk-rbd at least {QSD_TARGET}x qemu-storage-daemon's IOPS at QD32.\n")
    if nbd:
        print("### blk-nbd: an NBD client in a driver domain\n")
        print(f"nbdkit 1.32 (file plugin, default 16 threads) on a {a.size_mb} MiB file of random data in "
              f"/dev/shm, on a Unix socket; fio's nbd engine against it straight, and against isolde serve "
              f"with blk-nbd in front of the same nbdkit (NBD export on a Unix socket). {shape}.\n")
        table(nbd, "nbdkit, fio straight", "nbdkit")
    if rec:
        runs, steps = rec
        print("### Recovery from a librbd crash\n")
        print(f"`isolde verify --driver blk-rbd --qd 32 --json` (4 KiB verified random writes, then a read-back "
              f"of every block) on a 256 MiB image of the same cluster, its driver (the `blk-rbd --shm-fd` "
              f"process below it) SIGKILLed 200-500 ms after each recovery, for up to {a.recovery_seconds * 3} s "
              f"or until verify ends. Recovery is the front end's figure (`recovery_us` in the JSON; failure "
              f"detected to first replayed request completed). Target: recovery p99 under "
              f"{RECOVERY_TARGET_US // 1000} ms. The rows after the first {len(a.modes)} are ablations on the "
              f"monitor (`ceph tell mon.a config set ...` for that run only), not settings isolde can make.\n")
        print("| run | kills | restarts | recoveries | p50 ms | p99 ms | max ms | errors | mismatches | ops | "
              "replayed | policy denials logged | exit |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in runs.items():
            j = r["json"]
            ru = j["recovery_us"]
            print(f"| {label} | {r['kills']} | {j['restarts']} | {ru['count']} | {ru['p50'] / 1e3:.1f} | "
                  f"{ru['p99'] / 1e3:.1f} | {ru['max'] / 1e3:.1f} | {j['errors']} | {j['mismatches']} | "
                  f"{j['ops']} | {j['replayed']} | {r['denied']} | {r['rc']} |")
        print()
        print("Where the time goes, per kill, from the arrival times of isolde's stderr lines (the kill; the front "
              "end's \"failed\" line; the new driver's \"took the image's lock over\" line, logged once it has "
              "connected, opened the image and broken the dead session's lock, which blocklists it; the "
              "\"recovered in\" line):\n")
        print("| run | kill -> failure seen p50/p99 ms | failure -> lock taken over p50/p99 ms | "
              "lock -> first replay done p50/p99 ms | kills timed |")
        print("|---|---|---|---|---|")
        for label, r in runs.items():
            ph = r["phases"]
            if ph["lock"]:
                cells = [f"{pct(ph[k], 50) / 1e3:.1f} / {pct(ph[k], 99) / 1e3:.1f}" for k in ("detect", "lock", "rest")]
                print(f"| {label} | " + " | ".join(cells) + f" | {len(ph['lock'])} |")
        print()
        print(f"The same takeover step by step, {len(steps['total'])} times, with python3-rbd (the same librbd) in "
              "the benchmark's process against a holder process that took the lock and was SIGKILLed 0.3 s "
              "before, on the fixture's monitor settings (total: connect to first write); and, on its own, what "
              "starting the "
              "blk-rbd binary costs before it does anything:\n")
        print("| step | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|")
        for k, xs in steps.items():
            print(f"| {k} | {pct(xs, 50) / 1e3:.1f} | {pct(xs, 99) / 1e3:.1f} | {max(xs) / 1e3:.1f} |")
        print()
        print("Recovery samples (ms, sorted):\n")
        for label, r in runs.items():
            print(f"- {label}: " + ", ".join(f"{x / 1e3:.0f}" for x in sorted(r["samples"])))
        print()
        r = next(iter(runs.values()))
        print(f"One kill and its recovery as isolde logs it ({next(iter(runs))}, first kill):\n")
        print("```")
        first = next((i for i, (_, l) in enumerate(r["lines"]) if " failed (" in l), 0)
        t0 = r["lines"][first][0] if r["lines"] else 0
        for t, l in r["lines"][first:first + 12]:
            print(f"+{(t - t0) * 1e3:6.1f} ms  {l.replace(ROOT + '/', '')}")
            if " recovered in " in l:
                break
        print("```\n")


def wait_for_ports(minutes):
    deadline = time.monotonic() + minutes * 60
    while any(port_busy(p) for p in MON_PORTS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the monitor ports {MON_PORTS} stayed in use for {minutes} minutes "
                               "(another Ceph cluster is running)")
        log(f"ports {MON_PORTS} in use (another Ceph cluster?); waiting 120 s")
        time.sleep(120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("isolde", nargs="?", default=os.path.join(ROOT, "build", "src", "tools", "isolde"))
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 repetition, a shorter kill storm")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--ramp", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--modes", default="event,hybrid", help="isolde notify modes, comma-separated")
    ap.add_argument("--recovery-seconds", type=int, default=20)
    ap.add_argument("--parts", default="rbd,nbd,recovery")
    ap.add_argument("--no-ablations", dest="ablations", action="store_false",
                    help="skip the kill storms with the monitor's paxos timing changed")
    ap.add_argument("--steps", type=int, default=20, help="takeovers timed step by step")
    ap.add_argument("--wait-minutes", type=int, default=60, help="how long to wait for another cluster's ports")
    ap.add_argument("--json", help="write every sample to this file")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.ramp, a.reps, a.recovery_seconds, a.steps = 3, 1, 1, 5, 5
    a.modes = a.modes.split(",")
    parts = set(a.parts.split(","))
    for tool in ("fio", "nbdkit", "qemu-storage-daemon", "ceph-mon", "ceph-osd", "rbd"):
        if not shutil.which(tool):
            sys.exit(f"bench/remote.py: {tool} is missing")
    isolde = os.path.abspath(a.isolde)
    if not os.access(isolde, os.X_OK):
        sys.exit(f"bench/remote.py: no isolde at {isolde} (meson setup build-bench && ninja -C build-bench)")
    # SIGTERM and SIGINT unwind through the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    dirname = tempfile.mkdtemp(prefix="isolde-remote-bench-", dir="/tmp")
    shmdir = tempfile.mkdtemp(prefix="isolde-remote-bench-", dir="/dev/shm")
    cluster = None
    rbd = nbd = rec = None
    cluster_info = ""
    try:
        if "nbd" in parts:
            nbd = nbd_part(isolde, a, dirname, shmdir)
        if parts & {"rbd", "recovery"}:
            wait_for_ports(a.wait_minutes)
            # The fixture's memstore is 1 GiB, the whole OSD: room for the
            # prefilled image and the recovery image.
            ceph_helpers.MEMSTORE_BYTES = (a.size_mb + 256) * 3 << 20
            cluster = CephCluster(base_dir=dirname)
            cluster.start()
            ver = subprocess.run(["ceph", "--version"], capture_output=True, text=True).stdout.split()
            cluster_info = (f"Ceph {ver[2] if len(ver) > 2 else '?'} single-node cluster "
                            f"(tests/system/ceph_helpers.py: one monitor, one memstore OSD of "
                            f"{ceph_helpers.MEMSTORE_BYTES >> 20} MiB, replication 1, cephx, all on 127.0.0.1; "
                            f"up in {cluster.bringup_seconds:.0f} s)")
            log(f"cluster up in {cluster.bringup_seconds:.1f} s")
            cluster.create_image(IMAGE, a.size_mb)
            if "rbd" in parts:
                rbd = rbd_part(isolde, a, cluster, dirname)
            if "recovery" in parts:
                rate = 3000
                if rbd:
                    rate = max(med_iops(rbd, p, "randwrite QD32") for p in rbd if p.startswith("isolde"))
                rec = recovery_part(isolde, a, cluster, dirname, rate)
        report(a, rbd, nbd, rec, cluster_info)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"rbd": rbd, "nbd": nbd,
                           "recovery": {m: {k: v for k, v in r.items() if k != "lines"} for m, r in rec[0].items()}
                           if rec else None, "takeover_steps": rec[1] if rec else None},
                          f, indent=1)
    finally:
        PROCS.stop_all()
        if cluster is not None:
            try:
                cluster.stop()
            except CephError as e:
                log(str(e))
        shutil.rmtree(dirname, ignore_errors=True)
        shutil.rmtree(shmdir, ignore_errors=True)


if __name__ == "__main__":
    main()
