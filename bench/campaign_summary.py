#!/usr/bin/python3
"""The MINIX-style summary of a fault-injection campaign over several drivers
(bench/campaign.sh): one row per driver from DIR/DRIVER/campaign.json, the
table of Herder et al. (DSN 2009) - faults injected, trials, faults
activated, failures detected by class, trials recovered transparently,
trials that failed cleanly, corrupt data or crashes - and the system calls
each driver's policy refused, by class.

usage: bench/campaign_summary.py DIR DRIVER...    (Markdown on stdout)"""
import json
import os
import sys
import time
from pathlib import Path

FAILURE_CLASSES = [("CPU", ["cpu-exception"]), ("MMU", ["mmu-exception"]),
                   ("panic", ["panic", "policy-kill", "killed", "start-failure"]), ("hang", ["hang"]),
                   ("protocol", ["protocol-violation"]), ("shield", ["silent-corruption"]),
                   ("error status", ["error-status"])]
DENIAL_CLASSES = ["device", "memory", "process", "network", "file", "other"]


def machine():
    model = "an unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {os.uname().release}"


def add(a, b):
    """b's counts added into a (nested dicts of numbers)."""
    for k, v in b.items():
        if isinstance(v, dict):
            add(a.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            a[k] = a.get(k, 0) + v


def campaign_files(out, driver):
    """DRIVER/campaign.json, or the parts it ran in (DRIVER/part-K/)."""
    whole = out / driver / "campaign.json"
    return [whole] if whole.exists() else sorted((out / driver).glob("part-*/campaign.json"))


def load(out, driver):
    """A driver's campaign: its parts' counts summed, their commands kept."""
    docs = [json.loads(p.read_text()) for p in campaign_files(out, driver)]
    if not docs:
        sys.exit(f"campaign_summary.py: no {out / driver}/campaign.json (nor part-*/campaign.json)")
    totals, seconds = {}, 0.0
    for d in docs:
        add(totals, d["totals"])
        seconds += d["campaign"]["seconds"]
    return {"campaign": {"seconds": seconds}, "totals": totals}, [d["campaign"]["command"] for d in docs]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    rows, denials, commands, libraries = [], [], [], []
    for driver in sys.argv[2:]:
        doc, driver_commands = load(out, driver)
        c, t = doc["campaign"], doc["totals"]
        f = t["failures"]
        detected = sum(f.values())
        clean = t["io_error"]
        rows.append([driver, t["faults"], t["injected"], t["faults_activated"], detected,
                     *[sum(f.get(k, 0) for k in keys) for _, keys in FAILURE_CLASSES],
                     t["recovered"], clean, t["corrupt_returned"] + t["front_end_crash"],
                     f"{c['seconds']:.0f}"])
        denials.append([driver, *[t["denials"][k] for k in DENIAL_CLASSES], sum(t["denials"].values())])
        commands.extend(driver_commands)
        if t.get("faults_activated_in_libraries") or t.get("faults_activated_off_main_thread"):
            libraries.append(f"{driver}: {t['faults_activated_in_libraries']} of its {t['faults_activated']} "
                             f"activated faults were in a library's code, "
                             f"{t['faults_activated_off_main_thread']} were reached by a thread other than "
                             "the driver's first")
    total = ["**total**", *[sum(r[i] for r in rows) for i in range(1, len(rows[0]) - 1)],
             f"{sum(float(r[-1]) for r in rows):.0f}"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max(
        p.stat().st_mtime for d in sys.argv[2:] for p in campaign_files(out, d))))
    print("# Fault injection at MINIX 3's scale\n")
    print("Per driver: 8 fault types, the same number of trials of each, each trial many faults of "
          "its type planted together in the running driver (docs/FAULTS.md). Made by `make campaign` "
          "(bench/campaign.sh), finished " + when + " on " + machine() + "; each driver's own report, "
          "with every trial that failed and why, is DRIVER/campaign.md beside this file (a driver run in parts: DRIVER/part-K/campaign.md, the row their sum). Hang "
          "detection is the commands' `--timeout-ms 300`: a driver whose heartbeat stops for 300 ms "
          "while requests wait, or that leaves one unanswered for 3 s, is a hang.\n")
    head = ["driver", "faults", "trials", "faults activated", "failures detected",
            *[n for n, _ in FAILURE_CLASSES], "recovered transparently", "failed cleanly",
            "corrupt or crash", "seconds"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows + [total]:
        print("| " + " | ".join(str(x) for x in r) + " |")
    wall = os.environ.get("CAMPAIGN_WALL_SECONDS")
    if wall:
        print(f"\nThe campaigns ran side by side (bench/campaign.sh: blk-file, blk-uring, blk-nbd and "
              f"net-tap one after another, and blk-rbd in three parts: four fault types, three, and heap): {wall} s "
              f"from the campaign's start to its end, against {total[-1]} s for them all one after another.")
    if libraries:
        print("\nThe fault space of a driver built on a library holds the library's code too: "
              + "; ".join(libraries) + ".")
    print("\nFailures detected count driver restarts (a trial can fail more than once); recovered "
          "and failed cleanly count trials. A trial that failed cleanly ended with an I/O error "
          "(block) or a failed or dead device (network), its reason in the driver's report.\n")
    print("System calls the drivers' policies refused, by what they would have reached:\n")
    head = ["driver", *DENIAL_CLASSES, "total"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in denials:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print("\nCommands:\n\n```")
    for cmd in commands:
        print(cmd)
    print("```")


if __name__ == "__main__":
    main()
