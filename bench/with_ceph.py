#!/usr/bin/env python3
"""Run commands against a real, throwaway Ceph cluster: one monitor and one
memstore OSD (tests/system/ceph_helpers.py). Each command gets an RBD image
of SIZE_MB of its own in pool `isolde`, and every argument `@RBD@` of it
becomes that image's isolde spec (rbd:POOL/IMAGE:conf=...:id=...:keyring=...).
Commands separated by `--also` run side by side. The cluster is stopped and
its directory removed when they have all ended; the exit status is the
first failing command's, or 0.

--mon KEY=VALUE (repeatable) sets a monitor option first (`ceph tell mon.a
config set`): a setting of the test cluster, not of isolde.

usage: bench/with_ceph.py [--mon KEY=VALUE]... SIZE_MB COMMAND [ARG...] [--also COMMAND [ARG...]]..."""
import subprocess
import sys

from suite_modules import rerun_or_exit
try:
    from ceph_helpers import CephCluster, CephError
except ImportError as e:
    rerun_or_exit(__file__, e)


def parse(args):
    mon = []
    while len(args) >= 2 and args[0] == "--mon":
        if "=" not in args[1]:
            sys.exit(f"bench/with_ceph.py: --mon {args[1]}: give KEY=VALUE")
        mon.append(args[1].split("=", 1))
        args = args[2:]
    if len(args) < 2 or not args[0].isdigit() or int(args[0]) < 1:
        sys.exit("bench/with_ceph.py: " + __doc__.split("\n\n")[-1])
    commands = [[]]
    for a in args[1:]:
        if a == "--also":
            commands.append([])
        else:
            commands[-1].append(a)
    if not all(commands):
        sys.exit("bench/with_ceph.py: an empty command (around --also)")
    return mon, int(args[0]), commands


def main():
    mon, size_mb, commands = parse(sys.argv[1:])
    try:
        with CephCluster() as cluster:
            for key, value in mon:
                cluster.ceph("tell", "mon.a", "config", "set", key, value)
            procs = []
            for i, command in enumerate(commands):
                name = f"campaign-{i + 1}"
                cluster.create_image(name, size_mb)
                spec = cluster.image_spec(name)
                procs.append(subprocess.Popen([spec if a == "@RBD@" else a for a in command]))
            codes = [p.wait() for p in procs]
            return next((c for c in codes if c), 0)
    except CephError as e:
        sys.exit(f"bench/with_ceph.py: the Ceph cluster did not come up: {e}")


if __name__ == "__main__":
    sys.exit(main())
