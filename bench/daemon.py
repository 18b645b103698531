#!/usr/bin/env python3
"""isolde serve as a daemon of many devices, each served by a thread of its
own: what that costs and what it buys. Prints a Markdown section.

1. Scaling: fio (nbd engine, 4 KiB random reads, QD16 per device) against
   one device, against 8 devices of one server at once, and against 8
   nbdkit processes (file plugin) on the same images.
2. Isolation: fio against device b (QD16) while device a of the same server,
   under a QD16 load of its own, is healthy, has its driver SIGKILLed every
   50 ms, is stuck in `starting` (every restart of its driver hangs before
   it is ready: the test driver's start-hang fault), or has its driver
   stopped (SIGSTOP) with requests in flight; and, for scale, the same kill
   storm against a device of another isolde serve process.
3. Idle cost: CPU time that isolde serve and its drivers take with nothing
   to do, for 1, 8 and 32 devices, in event and hybrid mode; memory per
   device.

Images are tmpfs files. Each scenario is measured side by side in one run;
ratios matter more than the figures (a shared 2-core VM).

usage: bench/daemon.py ISOLDE [--seconds S] [--reps N]"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QD = 16
P99_TARGET = 1.2


def threads_children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Serve:
    """isolde serve with one NBD export per device; devices are
    (name, device-spec-options-after-the-name)."""

    def __init__(self, isolde, dirname, devices):
        self.dir = dirname
        args = [isolde, "serve", "--control", f"{dirname}/ctl.sock"]
        for name, spec in devices:
            args += ["--device", f"{name},{spec}", "--export", f"nbd:unix:{dirname}/{name}.sock,device={name}"]
        self.log = open(os.path.join(dirname, "serve.log"), "w+")
        self.proc = subprocess.Popen(args, stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            self.log.seek(0)
            text = self.log.read()
            if "; ready" in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"isolde serve did not start:\n{text}")
            time.sleep(0.05)
        self.pids = {}
        for line in text.splitlines():
            if " through driver " in line:
                name = line.split("device ", 1)[1].split(":", 1)[0] if "device " in line else devices[0][0]
                self.pids[name] = int(line.split(" pid ", 1)[1].split(",", 1)[0])

    def uri(self, name):
        return f"nbd+unix:///?socket={self.dir}/{name}.sock"

    def state(self, isolde, name):
        p = subprocess.run([isolde, "status", "--control", f"{self.dir}/ctl.sock", "--device", name, "--json"],
                           capture_output=True, text=True)
        return json.loads(p.stdout)["state"] if p.returncode == 0 else "?"

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def fio(uris, seconds, dirname, tag):
    """One fio run, one job per uri, all at once; -> [(iops, p50_us, p99_us)]."""
    out = os.path.join(dirname, f"fio-{tag}.json")
    args = ["fio", "--output-format=json", f"--output={out}"]
    for i, uri in enumerate(uris):
        args += [f"--name=j{i}", "--rw=randread", "--bs=4k", f"--iodepth={QD}", "--time_based",
                 f"--runtime={seconds}", "--ramp_time=1", "--ioengine=nbd", f"--uri={uri}"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    res = []
    for job in json.load(open(out))["jobs"]:
        r = job["read"]
        pct = r["clat_ns"]["percentile"]
        res.append((r["iops"], pct["50.000000"] / 1e3, pct["99.000000"] / 1e3))
    return res


def background_fio(uri, seconds):
    return subprocess.Popen(["fio", "--name=load", "--rw=randread", "--bs=4k", f"--iodepth={QD}", "--time_based",
                             f"--runtime={seconds}", "--ioengine=nbd", f"--uri={uri}", "--output=/dev/null"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def scaling(isolde, dirname, images, seconds, reps):
    n = len(images)
    srv = Serve(isolde, dirname, [(f"d{i}", f"image={img},readonly") for i, img in enumerate(images)])
    one, eight = [], []
    try:
        for rep in range(reps):
            one.append(fio([srv.uri("d0")], seconds, dirname, f"one{rep}")[0][0])
            eight.append(sum(r[0] for r in fio([srv.uri(f"d{i}") for i in range(n)], seconds, dirname,
                                                 f"eight{rep}")))
    finally:
        srv.close()
    kit = []
    procs = []
    try:
        for i, img in enumerate(images):
            procs.append(subprocess.Popen(["nbdkit", "--foreground", "--readonly", "--unix",
                                           f"{dirname}/kit{i}.sock", "--exit-with-parent", "file", img],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(n):
            for _ in range(200):
                if os.path.exists(f"{dirname}/kit{i}.sock"):
                    break
                time.sleep(0.05)
        for rep in range(reps):
            kit.append(sum(r[0] for r in fio([f"nbd+unix:///?socket={dirname}/kit{i}.sock" for i in range(n)],
                                              seconds, dirname, f"kit{rep}")))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    m1, m8, mk = median(one), median(eight), median(kit)
    print(f"### {n} devices at once\n")
    print(f"fio, nbd engine, 4 KiB random reads at QD{QD} per device, {seconds} s per run after a 1 s ramp, "
          f"median of {reps} runs; one isolde serve with {n} devices (hybrid, blk-file, read-only, a tmpfs "
          f"image each), against {n} nbdkit processes (file plugin) on the same images.\n")
    print("| load | total IOPS | / one isolde device |")
    print("|---|---|---|")
    print(f"| one isolde device | {m1:.0f} | 1.00 |")
    print(f"| {n} isolde devices, one server | {m8:.0f} | {m8 / m1:.2f} |")
    print(f"| {n} nbdkit processes | {mk:.0f} | {mk / m1:.2f} |")
    print()
    return m8 / mk


def isolation(isolde, dirname, images, seconds, reps):
    fault = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(isolde)))),
                         "tests", "drivers", "fault-driver")
    policy = os.path.join(ROOT, "tests", "drivers", "fault-driver.policy")
    rows = {}
    kills = {"same": 0, "other": 0}

    def measure(srv, tag):
        runs = [fio([srv.uri("b")], seconds, dirname, f"{tag}{r}")[0] for r in range(reps)]
        rows[tag] = (median([r[0] for r in runs]), median([r[1] for r in runs]), median([r[2] for r in runs]))

    def storm(pid, spare, counter, stop):
        while not stop.is_set():
            for child in threads_children(pid):
                if child not in spare:
                    try:
                        os.kill(child, signal.SIGKILL)
                        kills[counter] += 1
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)

    def with_storm(pid, spare, counter, fn):
        stop = threading.Event()
        t = threading.Thread(target=storm, args=(pid, spare, counter, stop), daemon=True)
        t.start()
        try:
            fn()
        finally:
            stop.set()
            t.join()

    budget = seconds * reps * 6 + 120
    # a's hang detection is out of the way, so that its stopped driver
    # stays stopped (and is not restarted) while b is measured.
    srv = Serve(isolde, dirname, [("a", f"image={images[0]},notify=event,timeout_ms=600000"),
                                  ("b", f"image={images[1]},notify=event")])
    try:
        busy = background_fio(srv.uri("a"), budget)
        time.sleep(1)
        measure(srv, "healthy")
        with_storm(srv.proc.pid, {srv.pids["b"]}, "same", lambda: measure(srv, "storm"))
        hung = [p for p in threads_children(srv.proc.pid) if p != srv.pids["b"]]
        for p in hung:
            os.kill(p, signal.SIGSTOP)
        try:
            measure(srv, "stopped")
        finally:
            for p in hung:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        busy.kill()
        busy.wait()
    finally:
        srv.close()

    # a's driver restarts hang at start: a stays in `starting` (10 s per try).
    sub = tempfile.mkdtemp(dir=dirname)
    srv = Serve(isolde, sub, [("a", f"image={images[0]},notify=event,driver={fault},policy={policy},"
                              "driver_arg=--fault=start-hang,driver_arg=--after=2"),
                              ("b", f"image={images[1]},notify=event")])
    stuck_states = set()
    try:
        busy = background_fio(srv.uri("a"), budget)
        time.sleep(1)
        os.kill(srv.pids["a"], signal.SIGKILL)
        time.sleep(0.2)
        runs = []
        for r in range(reps):
            stuck_states.add(srv.state(isolde, "a"))
            runs.append(fio([srv.uri("b")], seconds, dirname, f"stuck{r}")[0])
        stuck_states.add(srv.state(isolde, "a"))
        rows["stuck"] = (median([r[0] for r in runs]), median([r[1] for r in runs]), median([r[2] for r in runs]))
        busy.kill()
        busy.wait()
    finally:
        srv.close()

    # The same storm against another server's device: what the restarts
    # cost the machine, with no daemon in common.
    sub_a, sub_b = tempfile.mkdtemp(dir=dirname), tempfile.mkdtemp(dir=dirname)
    other = Serve(isolde, sub_a, [("a", f"image={images[0]},notify=event")])
    srv = Serve(isolde, sub_b, [("b", f"image={images[1]},notify=event")])
    try:
        busy = background_fio(other.uri("a"), budget)
        time.sleep(1)
        measure(srv, "other-healthy")
        with_storm(other.proc.pid, set(), "other", lambda: measure(srv, "other-storm"))
        busy.kill()
        busy.wait()
    finally:
        srv.close()
        other.close()

    h = rows["healthy"]
    print("### One device's driver failing, the other's clients\n")
    print(f"fio against device b (4 KiB random reads, QD{QD}, {seconds} s, median of {reps} runs; event mode), "
          f"while device a of the same server is under a QD{QD} load of its own and is healthy, has its "
          f"driver SIGKILLed every 50 ms ({kills['same']} kills), is stuck in `starting` (every restart hangs "
          f"before it is ready; a's state was {', '.join(sorted(stuck_states))} when sampled), or has its "
          f"driver stopped with requests in flight. The last two rows are the same kill storm against a "
          f"device of another `isolde serve` process ({kills['other']} kills). Target: b's p99 at most "
          f"{P99_TARGET}x the healthy row's.\n")
    print("| device a | IOPS of b | p50 us | p99 us | p99 / healthy | IOPS / healthy |")
    print("|---|---|---|---|---|---|")
    labels = {"healthy": "healthy, under load", "storm": "driver SIGKILLed every 50 ms, under load",
              "stuck": "stuck in starting, requests waiting", "stopped": "driver stopped, requests in flight",
              "other-healthy": "(another server) healthy, under load",
              "other-storm": "(another server) SIGKILLed every 50 ms, under load"}
    for tag in ("healthy", "storm", "stuck", "stopped", "other-healthy", "other-storm"):
        base = rows["other-healthy"] if tag.startswith("other") else h
        r = rows[tag]
        print(f"| {labels[tag]} | {r[0]:.0f} | {r[1]:.1f} | {r[2]:.1f} | {r[2] / base[2]:.2f} | "
              f"{r[0] / base[0]:.2f} |")
    print()
    return rows


def idle(isolde, dirname, image, seconds):
    print("### Idle cost of a thread per device\n")
    print(f"CPU time taken by isolde serve (all its threads) and by its drivers over {seconds} s with nothing "
          "to do, after start-up, as a share of one core; memory per device: isolde serve's private "
          "resident memory and its touched shared memory (the rings and data areas), and the drivers' "
          "resident memory, each divided by the number of devices. Each device is a read-only blk-file "
          "on the same tmpfs image, with one NBD export.\n")
    print("| devices | notify | serve CPU % | drivers CPU % | total CPU % | serve private KiB / device | "
          "shared KiB / device | driver RSS KiB / device |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in ("event", "hybrid"):
        for n in (1, 8, 32):
            sub = tempfile.mkdtemp(dir=dirname)
            srv = Serve(isolde, sub, [(f"d{i}", f"image={image},readonly,notify={mode}") for i in range(n)])
            try:
                time.sleep(1)
                drivers = threads_children(srv.proc.pid)
                s0 = cpu_seconds(srv.proc.pid)
                d0 = sum(cpu_seconds(p) for p in drivers)
                time.sleep(seconds)
                s1 = cpu_seconds(srv.proc.pid)
                d1 = sum(cpu_seconds(p) for p in drivers)
                anon = status_kib(srv.proc.pid, "RssAnon")
                shm = status_kib(srv.proc.pid, "RssShmem")
                drss = sum(status_kib(p, "VmRSS") for p in drivers)
            finally:
                srv.close()
            sc, dc = 100 * (s1 - s0) / seconds, 100 * (d1 - d0) / seconds
            print(f"| {n} | {mode} | {sc:.1f} | {dc:.1f} | {sc + dc:.1f} | {anon / n:.0f} | {shm / n:.0f} | "
                  f"{drss / n:.0f} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("isolde")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for tool in ("fio", "nbdkit"):
        if not shutil.which(tool):
            sys.exit(f"bench/daemon.py: {tool} is missing (make bench-deps)")
    isolde = os.path.abspath(args.isolde)
    dirname = tempfile.mkdtemp(prefix="isolde-daemon-bench-", dir="/tmp")
    imgdir = tempfile.mkdtemp(prefix="isolde-daemon-bench-", dir="/dev/shm")
    try:
        images = []
        for i in range(8):
            path = os.path.join(imgdir, f"d{i}")
            with open(path, "wb") as f:
                f.truncate(256 << 20)
            images.append(path)
        scaling(isolde, dirname, images, args.seconds, args.reps)
        isolation(isolde, dirname, images, args.seconds, args.reps)
        idle(isolde, dirname, images[0], 5)
    finally:
        shutil.rmtree(dirname, ignore_errors=True)
        shutil.rmtree(imgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
