#!/usr/bin/env python3
"""Recovery time of a driver domain: failure detected -> first replayed
request completed. Runs a verified workload through blk-file in each notify
mode and SIGKILLs the driver at a steady pace (default every 50 ms, so each
recovery is measured on its own, not stacked on the previous one). Reports
the median and p99 that the front end measured over all restarts.

usage: bench/recovery.py [ISOLDE] [--seconds S] [--interval-ms MS]"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def run(isolde, image, mode, seconds, interval):
    proc = subprocess.Popen([isolde, "verify", "--image", image, "--ops", str(10**9), "--qd", "32",
                             "--notify", mode, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        if " is pid " not in line:
            sys.exit(f"isolde did not start: {line}")
        kills = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(interval)
            for pid in children(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = proc.communicate()
    return kills, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("isolde", nargs="?", default="build/src/tools/isolde")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--interval-ms", type=float, default=50)
    ap.add_argument("--image-dir", default="/dev/shm")
    a = ap.parse_args()
    print("| mode | kills | recoveries measured | p50 us | p99 us | max us |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=a.image_dir) as d:
        image = os.path.join(d, "image")
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        for mode in ("event", "spin", "hybrid"):
            kills, err = run(a.isolde, image, mode, a.seconds, a.interval_ms / 1000)
            rec = [int(l.split("recovered in ")[1].split()[0]) for l in err.splitlines()
                   if "recovered in " in l]
            if not rec:
                sys.exit(f"no recovery measured in {mode} mode:\n{err[-2000:]}")
            rec.sort()
            p50, p99 = rec[(len(rec) - 1) // 2], rec[(len(rec) - 1) * 99 // 100]
            print(f"| {mode} | {kills} | {len(rec)} | {p50} | {p99} | {rec[-1]} |", flush=True)


if __name__ == "__main__":
    main()
