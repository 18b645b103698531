#!/usr/bin/python3
"""A Linux guest's disk throughput through vhost-user-blk: isolde's export
(per notify mode) beside qemu-storage-daemon, on the same kind of image (a
1 GiB file in /dev/shm), the same guest, the same QEMU.

The guest (tests/guest/init, workload "bench") times with dd, O_DIRECT, one
request at a time: 1 GiB of sequential 1 MiB writes (random data, fsync),
the same GiB read back, and 32 MiB of 4 KiB reads. QEMU runs under TCG, so
the guest's own CPU cost dominates every figure: read the table as "is isolde
in the way", not as what the back ends can do. Prints a Markdown table of the
medians of RUNS boots per back end.

usage: bench/guest.py ISOLDE [RUNS] [MODE ...]    (modes default: event hybrid spin)
"""
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "system"))

from guest_helpers import StorageDaemon, VhostServed, boot_guest, guest_files, sparse_image  # noqa: E402

MiB = 1 << 20
IMAGE_SIZE = 1024 * MiB


class IsoldeBinary:
    """What VhostServed needs of the tests' Isolde: start() and build.isolde."""

    def __init__(self, path):
        self.build = SimpleNamespace(isolde=Path(path).resolve())

    def start(self, *args):
        return subprocess.Popen([str(self.build.isolde), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


def one_run(backend, isolde, workdir):
    """Boots the bench guest once against a fresh image; its figures."""
    image = sparse_image(os.path.join(workdir, "image"), IMAGE_SIZE)
    sock = os.path.join(workdir, "vu.sock")
    if backend == "qemu-storage-daemon":
        server = StorageDaemon(image, sock)
    else:
        mode = backend.split()[-1]
        server = VhostServed(isolde, image, sock, os.path.join(workdir, "control.sock"), "--notify", mode)
    try:
        with boot_guest(sock, "bench") as g:
            figures = g.bench_figures()
            g.assert_pass()
    finally:
        server.close()
        os.unlink(image)
    return figures


def mbs(mib, ms):
    return mib * MiB / 1e6 / (ms / 1000) if ms > 0 else float("nan")


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    isolde = IsoldeBinary(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    modes = sys.argv[3:] or ["event", "hybrid", "spin"]
    guest_files()
    backends = ["qemu-storage-daemon"] + [f"isolde {m}" for m in modes]
    results = {b: [] for b in backends}
    workdir = tempfile.mkdtemp(prefix="isolde-guest-bench.", dir="/dev/shm")
    try:
        # Interleaved, so that a slow spell of the machine hits every back end alike.
        for r in range(runs):
            for b in backends:
                log = io.StringIO()  # the helpers' logs: shown only if the run fails
                try:
                    with contextlib.redirect_stdout(log):
                        f = one_run(b, isolde, workdir)
                except BaseException:
                    sys.stderr.write(log.getvalue())
                    raise
                print(f"guest bench: run {r + 1}/{runs} {b}: {f}", file=sys.stderr)
                results[b].append(f)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    f0 = results[backends[0]][0]
    print("| back end | seq write 1 MiB, MB/s | seq read 1 MiB, MB/s | read 4 KiB, IOPS |")
    print("|---|---:|---:|---:|")
    for b in backends:
        rs = results[b]
        w = statistics.median(mbs(f["mib"], f["write_ms"]) for f in rs)
        rd = statistics.median(mbs(f["mib"], f["read_ms"]) for f in rs)
        iops = statistics.median(f["mib4k"] * 256 / (f["read4k_ms"] / 1000) for f in rs)
        print(f"| {b} | {w:.0f} | {rd:.0f} | {iops:.0f} |")
    print()
    print(f"Medians of {runs} boots each, interleaved; {f0['mib']} MiB written and read "
          f"sequentially in 1 MiB O_DIRECT requests at queue depth 1, then {f0['mib4k']} MiB "
          "in 4 KiB reads. The guest runs under TCG (no KVM), whose emulation of the guest's "
          "own work dominates: the figures compare the back ends under one guest, they are not "
          "what either back end can do.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
