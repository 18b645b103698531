#!/usr/bin/env python3
"""isolde serve as a daemon of many devices, each served by a thread of its
own: what that costs and what it buys. Prints a Markdown section.

1. Scaling: fio (nbd engine, 4 KiB random reads, QD32) against one device,
   then against two devices of the same server at once.
2. Isolation: the same fio against device b alone, then while device a's
   driver is SIGKILLed every 50 ms, then while it is stopped (SIGSTOP) with
   requests of a in flight.
3. Idle cost: CPU time that isolde serve and its drivers take, with nothing
   to do, for 1, 8 and 32 devices, in event and hybrid mode.

Images are tmpfs files. Each scenario is measured side by side in one run;
ratios matter more than the figures (a shared 2-core VM).

usage: bench/daemon.py ISOLDE [--seconds S]"""
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


class Serve:
    def __init__(self, isolde, dirname, devices, notify):
        self.dir = dirname
        args = [isolde, "serve"]
        for name, image in devices:
            args += ["--device", f"{name},image={image},notify={notify},readonly",
                     "--export", f"nbd:unix:{dirname}/{name}.sock,device={name}"]
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

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def fio(uris, seconds, dirname, tag):
    """One fio run with one job per uri, at once; -> [(iops, p50_us, p99_us)]."""
    out = os.path.join(dirname, f"fio-{tag}.json")
    args = ["fio", "--output-format=json", f"--output={out}", "--group_reporting=0"]
    for i, uri in enumerate(uris):
        args += [f"--name=j{i}", "--rw=randread", "--bs=4k", "--iodepth=32", "--time_based",
                 f"--runtime={seconds}", "--ramp_time=1", "--ioengine=nbd", f"--uri={uri}"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    res = []
    for job in json.load(open(out))["jobs"]:
        r = job["read"]
        pct = r["clat_ns"]["percentile"]
        res.append((r["iops"], pct["50.000000"] / 1e3, pct["99.000000"] / 1e3))
    return res


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def scaling(isolde, dirname, images, seconds, reps):
    srv = Serve(isolde, dirname, [("a", images[0]), ("b", images[1])], "hybrid")
    try:
        one, both_a, both_b = [], [], []
        for rep in range(reps):
            one.append(fio([srv.uri("a")], seconds, dirname, f"one{rep}")[0][0])
            ra, rb = fio([srv.uri("a"), srv.uri("b")], seconds, dirname, f"two{rep}")
            both_a.append(ra[0])
            both_b.append(rb[0])
    finally:
        srv.close()
    m1, ma, mb = median(one), median(both_a), median(both_b)
    print("### Two devices at once\n")
    print(f"fio, nbd engine, 4 KiB random reads at QD32, {seconds} s per run after a 1 s ramp, "
          f"median of {reps} runs; one server with devices a and b (hybrid, blk-file, "
          "tmpfs images).\n")
    print("| load | IOPS of a | IOPS of b | total | total / one device |")
    print("|---|---|---|---|---|")
    print(f"| device a alone | {m1:.0f} | - | {m1:.0f} | 1.00 |")
    print(f"| devices a and b at once | {ma:.0f} | {mb:.0f} | {ma + mb:.0f} | {(ma + mb) / m1:.2f} |")
    print()


def isolation(isolde, dirname, images, seconds, reps):
    srv = Serve(isolde, dirname, [("a", images[0]), ("b", images[1])], "event")
    rows = {}
    kills = 0
    try:
        def measure(tag):
            runs = [fio([srv.uri("b")], seconds, dirname, f"{tag}{r}")[0] for r in range(reps)]
            rows[tag] = (median([r[0] for r in runs]), median([r[1] for r in runs]),
                         median([r[2] for r in runs]))

        measure("quiet")
        stop = threading.Event()
        b_pid = srv.pids["b"]

        def storm():
            nonlocal kills
            while not stop.is_set():
                for pid in threads_children(srv.proc.pid):
                    if pid != b_pid:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass
                time.sleep(0.05)

        # a is busy too, so that its restarts replay requests; "busy"
        # alone is what sharing the machine's two cores with it costs b.
        busy = subprocess.Popen(["fio", "--name=a", "--rw=randread", "--bs=4k", "--iodepth=32",
                                 "--time_based", f"--runtime={seconds * reps * 4 + 60}", "--ioengine=nbd",
                                 f"--uri={srv.uri('a')}", "--output=/dev/null"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        measure("busy")
        t = threading.Thread(target=storm, daemon=True)
        t.start()
        try:
            measure("storm")
        finally:
            stop.set()
            t.join()
        # a's driver stopped, a's fio waiting on it (a's hang detection
        # restarts it after its timeout; b must not notice either way).
        hung = [p for p in threads_children(srv.proc.pid) if p != b_pid]
        for p in hung:
            os.kill(p, signal.SIGSTOP)
        try:
            measure("hung")
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
    q = rows["quiet"]
    print("### One device's driver failing, the other's clients\n")
    print(f"fio against device b (4 KiB random reads, QD32, {seconds} s, median of {reps} runs; "
          "event mode), while device a of the same server is left alone, is under a QD32 load of "
          f"its own, has its driver SIGKILLed every 50 ms under that load ({kills} kills), or has "
          "its driver stopped (SIGSTOP) with requests in flight.\n")
    print("| device a | IOPS of b | p50 us | p99 us | IOPS / idle | IOPS / busy |")
    print("|---|---|---|---|---|---|")
    labels = {"quiet": "idle", "busy": "under its own QD32 load", "storm": "under load, driver SIGKILLed every 50 ms",
              "hung": "driver stopped, requests in flight"}
    for tag in ("quiet", "busy", "storm", "hung"):
        r = rows[tag]
        print(f"| {labels[tag]} | {r[0]:.0f} | {r[1]:.1f} | {r[2]:.1f} | {r[0] / q[0]:.2f} | "
              f"{r[0] / rows['busy'][0]:.2f} |")
    print()


def idle(isolde, dirname, image, seconds):
    print("### Idle cost of a thread per device\n")
    print(f"CPU time taken by isolde serve (all its threads) and by its drivers over {seconds} s "
          "with nothing to do, after start-up; RSS of isolde serve. Each device is a read-only "
          "blk-file on the same tmpfs image, with one NBD export.\n")
    print("| devices | notify | serve CPU % | drivers CPU % | serve threads | serve RSS MiB |")
    print("|---|---|---|---|---|---|")
    for mode in ("event", "hybrid"):
        for n in (1, 8, 32):
            sub = tempfile.mkdtemp(dir=dirname)
            srv = Serve(isolde, sub, [(f"d{i}", image) for i in range(n)], mode)
            try:
                time.sleep(1)
                drivers = threads_children(srv.proc.pid)
                s0 = cpu_seconds(srv.proc.pid)
                d0 = sum(cpu_seconds(p) for p in drivers)
                time.sleep(seconds)
                s1 = cpu_seconds(srv.proc.pid)
                d1 = sum(cpu_seconds(p) for p in drivers)
                threads = len(os.listdir(f"/proc/{srv.proc.pid}/task"))
                with open(f"/proc/{srv.proc.pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
            finally:
                srv.close()
            print(f"| {n} | {mode} | {100 * (s1 - s0) / seconds:.1f} | {100 * (d1 - d0) / seconds:.1f} | "
                  f"{threads} | {rss:.1f} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("isolde")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("fio"):
        sys.exit("bench/daemon.py: fio is missing (make bench-deps)")
    dirname = tempfile.mkdtemp(prefix="isolde-daemon-bench-", dir="/tmp")
    imgdir = tempfile.mkdtemp(prefix="isolde-daemon-bench-", dir="/dev/shm")
    try:
        images = []
        for name in ("a", "b"):
            path = os.path.join(imgdir, name)
            with open(path, "wb") as f:
                f.truncate(256 << 20)
            images.append(path)
        scaling(args.isolde, dirname, images, args.seconds, args.reps)
        isolation(args.isolde, dirname, images, args.seconds, args.reps)
        idle(args.isolde, dirname, images[0], 5)
    finally:
        shutil.rmtree(dirname, ignore_errors=True)
        shutil.rmtree(imgdir, ignore_errors=True)


if __name__ == "__main__":
    main()
