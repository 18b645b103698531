#!/usr/bin/python3
"""The VM driver domain against the process domain, in one run (docs/EVALUATION.md §9).

1. Notification across the VM boundary: `isolde bench` with blk-file in a
   process domain and in a VM domain (QEMU, TCG), each notify mode, 4 KiB
   random reads and writes at QD1 and QD32, copy mode, on one prefilled
   image; IOPS, latency and CPU per I/O (the VM's "driver" CPU is all of
   QEMU's). The VM policy turns the warm standby off, so that no second VM
   boots beside the one measured.
2. Failover: `isolde verify` in a VM domain while the serving QEMU is
   SIGKILLed, each time once the last recovery is done and the standby has
   had time to boot; with the warm standby on, and off (every restart boots
   a VM). The front end's own recovery times (death seen to the last
   replayed request answered), and the workload's errors and mismatches.
3. Start: time from `isolde verify` starting to its driver being ready,
   process domain and VM domain (cold boot).

Every process this starts dies with it (its own session), and its files go.

usage: bench/vm.py [ISOLDE] [--quick] [--seconds S] [--kills N]"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("event", "spin", "hybrid")


def policy(tmp, standby):
    path = os.path.join(tmp, f"blk-file-vm-standby-{standby}.policy")
    with open(os.path.join(ROOT, "policies", "blk-file.policy")) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text + f"domain     vm\nstandby    {standby}\n")
    return path


def run_bench(isolde, image, seconds, domain_args):
    out = subprocess.run([isolde, "bench", "--image", image, "--modes", ",".join(MODES), "--qd", "1,32",
                          "--bs", "4k", "--rw", "randread,randwrite", "--copy", "copy", "--seconds", str(seconds),
                          "--idle-seconds", "2", "--json", "-", *domain_args],
                         capture_output=True, text=True, timeout=3600, start_new_session=True)
    if out.returncode != 0:
        sys.exit(f"isolde bench {' '.join(domain_args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def key(r):
    return (r["mode"], r["qd"], r["rw"])


class Follow:
    """isolde verify's stderr: the serving pid, and the time each line came."""

    def __init__(self, proc):
        self.proc, self.pid, self.lines = proc, None, []
        self.ready_at = None
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r" is pid (\d+)", line) or re.search(r"generation \d+ \(pid (\d+)\) recovered", line)
            if m:
                if self.ready_at is None:
                    self.ready_at = time.monotonic() - self.t0
                self.pid = int(m.group(1))


def failover(isolde, image, pol, kills, gap):
    proc = subprocess.Popen([isolde, "verify", "--image", image, "--policy", pol, "--notify", "hybrid",
                             "--qd", "16", "--ops", "100000000", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        f = Follow(proc)
        killed = []
        deadline = time.monotonic() + kills * (gap + 60) + 60
        while len(killed) < kills and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if f.pid and f.pid not in killed:
                time.sleep(gap)
                os.kill(f.pid, signal.SIGKILL)
                killed.append(f.pid)
        while f.pid in killed and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=120)
        f.thread.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    r = json.loads(out)
    times = [int(x) / 1000 for x in re.findall(r"recovered in (\d+) us", "".join(f.lines))]
    takeovers = "".join(f.lines).count("the warm standby (QEMU pid")
    return r, times, takeovers


def start_time(isolde, image, domain):
    p = subprocess.Popen([isolde, "verify", "--image", image, "--domain", domain, "--ops", "1", "--qd", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    f = Follow(p)
    p.wait(timeout=300)
    f.thread.join(timeout=10)
    return f.ready_at


def ms(v):
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("isolde", nargs="?", default=os.path.join(ROOT, "build", "src", "tools", "isolde"))
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 s per combination, 2 kills")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.kills = 1, 2
    guest = os.environ.get("ISOLDE_VM_GUEST_DIR", os.path.join(ROOT, "build", "vm-guest"))
    if not os.path.exists(os.path.join(guest, "vmlinux")):
        sys.exit(f"bench/vm.py: no VM guest in {guest}: run make")
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("bench/vm.py: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    tmp = tempfile.mkdtemp(prefix="isolde-bench-vm-")
    try:
        image = os.path.join(tmp, "disk.img")
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        print(f"QEMU {subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.split()[3]}"
              f", TCG (no usable KVM here), microvm, 1 vCPU (maxcpus 2), 256 MiB; blk-file; one run.\n")

        proc_res = run_bench(a.isolde, image, a.seconds, ["--domain", "process"])
        vm_res = run_bench(a.isolde, image, a.seconds, ["--policy", policy(tmp, "off")])
        by_proc = {key(r): r for r in proc_res["results"] if r["mode"] in MODES}
        print("### Notification across the VM boundary (4 KiB, copy mode)\n")
        print("| rw | qd | mode | process IOPS | VM IOPS | VM/process | process p50 µs | VM p50 µs | "
              "VM p99 µs | process CPU µs/IO (front+driver) | VM CPU µs/IO (front+QEMU) | VM kicks/IO | VM calls/IO |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in vm_res["results"]:
            if r["mode"] not in MODES:
                continue
            p = by_proc[key(r)]
            print(f"| {r['rw']} | {r['qd']} | {r['mode']} | {p['iops']:.0f} | {r['iops']:.0f} | "
                  f"{r['iops'] / p['iops']:.3f} | {p['lat_us']['p50']:.1f} | {r['lat_us']['p50']:.1f} | "
                  f"{r['lat_us']['p99']:.1f} | "
                  f"{p['cpu_us_per_io']['front'] + p['cpu_us_per_io']['driver']:.1f} | "
                  f"{r['cpu_us_per_io']['front'] + r['cpu_us_per_io']['driver']:.1f} | "
                  f"{r['kicks_per_io']:.3f} | {r['calls_per_io']:.3f} |")
        print()
        idle = {d["mode"]: d for d in vm_res.get("idle", [])}
        if idle:
            print("Idle, per mode (VM): " + "; ".join(
                f"{m} QEMU {idle[m]['driver_cpu_pct']:.1f}% of a core, front end {idle[m]['front_cpu_pct']:.2f}%"
                for m in MODES if m in idle) + "\n")

        print("### Failover (hybrid, QD16, SIGKILL of the serving QEMU)\n")
        print("| standby | kills | takeovers by the standby | recovery p50 ms | p99 ms | max ms | errors | mismatches |")
        print("|---|---|---|---|---|---|---|---|")
        for standby, gap in (("on", 7.0), ("off", 2.0)):
            r, times, takeovers = failover(a.isolde, image, policy(tmp, standby), a.kills, gap)
            times.sort()
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))] if times else 0
            print(f"| {standby} | {a.kills} | {takeovers} | {ms(statistics.median(times)) if times else '-'} | "
                  f"{ms(p99)} | {ms(max(times)) if times else '-'} | {r['errors']} | {r['mismatches']} |")
        print()

        print("### Start (open to ready)\n")
        starts = {d: sorted(start_time(a.isolde, image, d) or 0 for _ in range(3)) for d in ("process", "vm")}
        print("| domain | median s | runs |")
        print("|---|---|---|")
        for d, v in starts.items():
            print(f"| {d} | {statistics.median(v):.3f} | {', '.join(f'{x:.3f}' for x in v)} |")
        print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
