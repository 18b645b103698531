#!/usr/bin/python3
"""A Linux guest's network card: QEMU's own tap netdev beside isolde's
vhost-user-net export (net-tap driver, each notify mode), on the same guest,
the same QEMU, the same namespace layout.

For each path a fresh network namespace holds the host's side: the TAP
(QEMU's, or the one isolde makes for its driver) with 10.77.0.1/24 and
`iperf3 -s`. The guest (tests/guest/net-init, workload "net-bench", eth0
10.77.0.2) pings it (`--pings`, 0.2 s apart), then runs iperf3 TCP for
`--seconds` guest -> host and again host -> guest (-R). Each path is booted
`--runs` times, interleaved so that a slow spell of the machine hits every
path alike; the medians are reported. QEMU runs under TCG (no KVM): the
guest's own emulated CPU bounds every figure, so read the table as "is
isolde in the way", not as what either path can carry.

Every namespace, process and socket this starts is removed with it.

usage: bench/net_guest.py [ISOLDE] [--seconds S] [--runs N] [--pings N] [--quick]
                          [--paths tap,event,spin,hybrid] [--json FILE]"""
import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "system"))

from guest import IsoldeBinary  # noqa: E402 - bench/guest.py, beside this script
from net_guest_helpers import (IperfServer, Namespace, TapSetup, VhostNetServed, boot_net_guest,  # noqa: E402
                               net_guest_files, tap_netdev, vhost_user_netdev)

PATHS = ("tap", "event", "spin", "hybrid")
LABEL = {"tap": "QEMU netdev tap (baseline)", "event": "isolde vhost-user-net, event",
         "spin": "isolde vhost-user-net, spin", "hybrid": "isolde vhost-user-net, hybrid"}
TAP = "isbgtap0"
IPERF_PORT = 5201


def one_run(path, isolde, args, workdir):
    """Boots the net-bench guest once on `path`; its figures."""
    guest_kw = dict(seconds=args.seconds, pings=args.pings, port=IPERF_PORT, mem_mib=512)
    with Namespace("gbench") as ns, IperfServer(ns, IPERF_PORT):
        if path == "tap":
            with boot_net_guest(tap_netdev(TAP), "net-bench", netns=ns, **guest_kw) as g:
                TapSetup(ns, TAP, alive=g.running).wait()
                figures = g.bench_figures()
                g.assert_pass()
            return figures
        sock = os.path.join(workdir, "vn.sock")
        with VhostNetServed(isolde, ns, TAP, sock, f"notify={path}") as srv:
            srv.tap.wait()
            with boot_net_guest(vhost_user_netdev(sock), "net-bench", **guest_kw) as g:
                figures = g.bench_figures()
                g.assert_pass()
            rc = srv.terminate()
            if rc != 0:
                raise AssertionError(f"isolde serve exited {rc}:\n{srv.stderr[-3000:]}")
            figures["serve_summary"] = [line for line in srv.stderr.splitlines() if "restarts" in line][-1:]
        return figures


def median(runs, key, field):
    vals = [r[key][field] for r in runs if r.get(key, {}).get(field) is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize(runs):
    return {
        "gbit_per_s_guest_to_peer": median(runs, "guest-to-peer", "gbit_per_s"),
        "gbit_per_s_peer_to_guest": median(runs, "peer-to-guest", "gbit_per_s"),
        "retransmits_guest_to_peer": sum(r["guest-to-peer"].get("retransmits") or 0 for r in runs),
        "retransmits_peer_to_guest": sum(r["peer-to-guest"].get("retransmits") or 0 for r in runs),
        "guest_cpu_pct_guest_to_peer": median(runs, "guest-to-peer", "guest_cpu_pct"),
        "guest_cpu_pct_peer_to_guest": median(runs, "peer-to-guest", "guest_cpu_pct"),
        "ping_p50_ms": median(runs, "ping", "p50_ms"),
        "ping_avg_ms": median(runs, "ping", "avg_ms"),
        "ping_max_ms": max((r["ping"]["max_ms"] for r in runs if r["ping"].get("max_ms") is not None),
                           default=float("nan")),
        "ping_lost": sum(r["ping"]["sent"] - r["ping"]["received"] for r in runs),
        "runs": runs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("isolde", nargs="?", default=str(ROOT / "build" / "src" / "tools" / "isolde"))
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 run length, each direction")
    ap.add_argument("--runs", type=int, default=3, help="boots per path (the median is reported)")
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="--seconds 3 --runs 1 --pings 20")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"a subset of {','.join(PATHS)}")
    ap.add_argument("--json", help="also write the JSON summary to this file")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.runs, args.pings = 3, 1, 20
    paths = [p for p in args.paths.split(",") if p]
    bad = [p for p in paths if p not in PATHS]
    if bad:
        ap.error(f"unknown path {', '.join(bad)} (known: {', '.join(PATHS)})")
    if os.geteuid() != 0:
        sys.exit("bench/net_guest.py makes network namespaces and TAPs: run it as root")
    isolde = IsoldeBinary(args.isolde)
    if any(p != "tap" for p in paths) and not isolde.build.isolde.exists():
        sys.exit(f"{isolde.build.isolde} is not built: run make (or --paths tap)")
    net_guest_files()

    results = {p: [] for p in paths}
    failed = {}
    workdir = tempfile.mkdtemp(prefix="isolde-gbench-", dir="/tmp")
    try:
        for r in range(args.runs):
            for p in paths:
                if p in failed:
                    continue
                log = io.StringIO()  # the helpers' logs: shown only if the run fails
                try:
                    with contextlib.redirect_stdout(log):
                        f = one_run(p, isolde, args, workdir)
                except Exception as e:  # noqa: BLE001 - one path failing must not hide the others
                    sys.stderr.write(log.getvalue())
                    traceback.print_exc()
                    said = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                    failed[p] = said[0] if len(said) == 1 else f"{said[0]} ... {said[-1]}"
                    print(f"net guest bench: run {r + 1}/{args.runs} {p}: FAILED: {failed[p]}", file=sys.stderr)
                    continue
                g2p, p2g, ping = f["guest-to-peer"], f["peer-to-guest"], f["ping"]
                print(f"net guest bench: run {r + 1}/{args.runs} {p}: guest->peer {g2p['gbit_per_s']:.3f} "
                      f"Gbit/s, peer->guest {p2g['gbit_per_s']:.3f} Gbit/s, ping p50 {ping['p50_ms']} ms",
                      file=sys.stderr)
                results[p].append(f)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = {p: summarize(rs) for p, rs in results.items() if rs}
    base = rows.get("tap")
    print(f"iperf3 TCP in a Linux guest under QEMU TCG, {args.seconds} s each direction, median of {args.runs} "
          f"boots; ping: {args.pings} round trips 0.2 s apart, from the guest (p50/avg: medians of the boots; "
          f"max: of all).\n")
    print("| path | guest→host Gbit/s | × tap | host→guest Gbit/s | × tap | retransmits → / ← | "
          "ping p50 ms | avg ms | max ms | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        if p not in rows:
            print(f"| {LABEL[p]} | failed: {failed.get(p, '?')} | | | | | | | | |")
            continue
        r = rows[p]
        x1 = r["gbit_per_s_guest_to_peer"] / base["gbit_per_s_guest_to_peer"] if base else float("nan")
        x2 = r["gbit_per_s_peer_to_guest"] / base["gbit_per_s_peer_to_guest"] if base else float("nan")
        print(f"| {LABEL[p]} | {r['gbit_per_s_guest_to_peer']:.3f} | {x1:.2f} | {r['gbit_per_s_peer_to_guest']:.3f} | "
              f"{x2:.2f} | {r['retransmits_guest_to_peer']} / {r['retransmits_peer_to_guest']} | "
              f"{r['ping_p50_ms']:.3f} | {r['ping_avg_ms']:.3f} | {r['ping_max_ms']:.3f} | {r['ping_lost']} |")
    print()
    print("Runs (Gbit/s guest→host / host→guest): " + "; ".join(
        f"{p} " + ", ".join(f"{f['guest-to-peer']['gbit_per_s']:.3f}/{f['peer-to-guest']['gbit_per_s']:.3f}"
                            for f in rs) for p, rs in results.items() if rs))
    summary = {"seconds": args.seconds, "runs": args.runs, "pings": args.pings,
               "paths": {p: {k: v for k, v in r.items() if k != "runs"} for p, r in rows.items()},
               "failed": failed, "raw": {p: r["runs"] for p, r in rows.items()}}
    print()
    print("```json")
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=1))
    print("```")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
