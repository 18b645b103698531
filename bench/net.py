#!/usr/bin/python3
"""Network driver domains against the kernel's own path, in one run
(docs/EVALUATION.md §10).

Two network namespaces, A and B, joined either directly by a veth pair (the
kernel's path: no process in between) or through isolde: `isolde serve
--netdev` with net-tap's TAP in B and the tap export in A, each notify mode.
On each: iperf3 TCP from A to B (`--seconds` per run, `--runs` runs, the
median reported), the whole machine's CPU time per GB moved (from
/proc/stat: user, system, irq and softirq of all cores, since the veth
path's cost is softirq and isolde's is its two processes), and ping's round
trip (200 pings, 10 ms apart; median and p99).

Every namespace and process this starts is removed with it.

usage: bench/net.py [ISOLDE] [--seconds S] [--runs N] [--quick]"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("event", "spin", "hybrid")
A_IP, B_IP = "10.78.0.1", "10.78.0.2"


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check, **kw)


def cpu_busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


class Pair:
    def __init__(self):
        self.a, self.b = f"isolde-bench-a-{os.getpid()}", f"isolde-bench-b-{os.getpid()}"

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)


def address(pair, a_if, b_if):
    sh("ip", "-n", pair.a, "addr", "add", f"{A_IP}/24", "dev", a_if)
    sh("ip", "-n", pair.b, "addr", "add", f"{B_IP}/24", "dev", b_if)
    sh("ip", "-n", pair.a, "link", "set", a_if, "up")
    sh("ip", "-n", pair.b, "link", "set", b_if, "up")


def iperf(pair, seconds):
    server = subprocess.Popen(["ip", "netns", "exec", pair.b, "iperf3", "-s", "-1", "-B", B_IP],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        c0 = cpu_busy_seconds()
        out = sh("ip", "netns", "exec", pair.a, "iperf3", "-c", B_IP, "-t", seconds, "-J", timeout=seconds + 60)
        c1 = cpu_busy_seconds()
    finally:
        server.kill()
        server.wait()
    r = json.loads(out.stdout)
    received = r["end"]["sum_received"]
    gb = received["bytes"] / 1e9
    return {"gbit_s": received["bits_per_second"] / 1e9, "cpu_s_per_gb": (c1 - c0) / gb if gb else float("nan"),
            "retransmits": r["end"]["sum_sent"].get("retransmits", 0)}


def rtt(pair):
    out = sh("ip", "netns", "exec", pair.a, "ping", "-n", "-c", "200", "-i", "0.01", B_IP, check=False).stdout
    times = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", out))
    if not times:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "lost": 200}
    return {"p50_us": 1000 * statistics.median(times), "p99_us": 1000 * times[int(0.99 * (len(times) - 1))],
            "lost": 200 - len(times)}


def measure(pair, seconds, runs):
    tcp = [iperf(pair, seconds) for _ in range(runs)]
    return {"gbit_s": statistics.median(t["gbit_s"] for t in tcp),
            "gbit_s_runs": [t["gbit_s"] for t in tcp],
            "cpu_s_per_gb": statistics.median(t["cpu_s_per_gb"] for t in tcp),
            "retransmits": sum(t["retransmits"] for t in tcp), **rtt(pair)}


def veth(seconds, runs):
    with Pair() as p:
        sh("ip", "link", "add", "isb-va", "netns", p.a, "type", "veth", "peer", "isb-vb", "netns", p.b)
        address(p, "isb-va", "isb-vb")
        return measure(p, seconds, runs)


def through_isolde(isolde, mode, seconds, runs):
    with Pair() as p:
        serve = subprocess.Popen([isolde, "serve", "--netdev", f"n0,ifname=isb-wire,netns={p.b},notify={mode}",
                                  "--export", f"tap:isb-host,netns={p.a}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            for line in serve.stderr:
                if line.rstrip().endswith("ready"):
                    break
            else:
                sys.exit(f"isolde serve ({mode}) did not start")
            address(p, "isb-host", "isb-wire")
            return measure(p, seconds, runs)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("isolde", nargs="?", default=os.path.join(ROOT, "build", "src", "tools", "isolde"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.runs = 3, 1
    rows = {"veth": veth(args.seconds, args.runs)}
    for m in MODES:
        rows[m] = through_isolde(args.isolde, m, args.seconds, args.runs)
    base = rows["veth"]
    print(f"iperf3 TCP A -> B, {args.seconds} s per run, median of {args.runs}; CPU: the whole machine's "
          f"busy time per GB received; ping: 200 round trips 10 ms apart.\n")
    print("| path | Gbit/s | × veth | CPU s/GB | × veth | retransmits | ping p50 µs | p99 µs | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        label = "veth pair (kernel)" if name == "veth" else f"isolde net-tap, {name}"
        print(f"| {label} | {r['gbit_s']:.2f} | {r['gbit_s'] / base['gbit_s']:.2f} | {r['cpu_s_per_gb']:.2f} | "
              f"{r['cpu_s_per_gb'] / base['cpu_s_per_gb']:.2f} | {r['retransmits']} | {r['p50_us']:.0f} | "
              f"{r['p99_us']:.0f} | {r['lost']} |")
    print()
    print("Runs (Gbit/s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in r["gbit_s_runs"])
                                        for k, r in rows.items()))
    print()
    print("```json")
    print(json.dumps(rows, indent=1))
    print("```")


if __name__ == "__main__":
    main()
