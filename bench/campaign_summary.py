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
# docs/FAULTS.md, "Failing cleanly, by class": the words each class's report
# begins with or holds. A trial's reason that matches none is counted as
# "not a class of FAULTS.md", so that an unexplained end cannot hide.
CLEAN_CLASSES = [("a write that never happened", lambda e: e.startswith("the integrity shield refused")),
                 ("an error the device confirms", lambda e: "error status a fresh driver confirmed" in e),
                 ("the device gives up", lambda e: e.startswith("the device failed:")),
                 ("frames lost with no failure detected", lambda e: "frames lost with no failure detected" in e)]
UNEXPLAINED = "not a class of FAULTS.md"


def clean_class(error):
    return next((name for name, matches in CLEAN_CLASSES if matches(error)), UNEXPLAINED)


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
    totals, seconds, clean = {}, 0.0, {}
    for d in docs:
        add(totals, d["totals"])
        seconds += d["campaign"]["seconds"]
        for trial in d["notable_trials"]:
            if trial["outcome"] == "io_error":
                name = clean_class(trial["error"])
                clean[name] = clean.get(name, 0) + 1
    return ({"campaign": {"seconds": seconds}, "totals": totals, "clean": clean},
            [d["campaign"]["command"] for d in docs])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    rows, denials, commands, libraries, cleans = [], [], [], [], []
    quiet = not_planted = 0
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
        quiet += t["not_activated"] + t["activated_no_failure"]
        not_planted += t["not_injected"]
        cleans.append([driver, *[doc["clean"].get(name, 0) for name, _ in CLEAN_CLASSES],
                       doc["clean"].get(UNEXPLAINED, 0), clean])
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
    print("Trials that failed cleanly, by class (docs/FAULTS.md, \"Failing cleanly, by class\"; "
          "each trial's reason is in the driver's report):\n")
    head = ["driver", *[n for n, _ in CLEAN_CLASSES], UNEXPLAINED, "failed cleanly"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in cleans:
        print("| " + " | ".join(str(x) for x in r) + " |")
    faults, trials, recovered, clean, bad = total[1], total[2], total[-4], total[-3], total[-2]
    print(f"\nIn all: {faults} faults in {trials} trials over {len(rows)} drivers. {recovered} trials "
          f"recovered transparently ({100.0 * recovered / max(trials, 1):.2f}%) and {clean} failed cleanly, "
          f"{sum(r[-2] for r in cleans)} of them with a reason that is not a class of FAULTS.md; in "
          f"{quiet} there was nothing to recover from (no fault activated, or none that made the "
          f"driver fail) and {not_planted} could not be planted. Corrupt data returned or front-end "
          f"crashes: {bad}.\n")
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
