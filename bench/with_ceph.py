#!/usr/bin/env python3
"""Run one command against a real, throwaway Ceph cluster: one monitor and
one memstore OSD (tests/system/ceph_helpers.py), an RBD image of SIZE_MB in
pool `isolde`. Every argument `@RBD@` of the command becomes the image's
isolde spec (rbd:POOL/IMAGE:conf=...:id=...:keyring=...). The cluster is
stopped and its directory removed when the command ends; the exit status
is the command's.

usage: bench/with_ceph.py SIZE_MB COMMAND [ARG...]"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "system"))
try:
    from ceph_helpers import CephCluster, CephError
except ImportError as e:
    # `python3` may be a Python without the test suite's modules; Debian's has them.
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(f"bench/with_ceph.py: cannot import tests/system/ceph_helpers.py: {e} (apt-get install python3-pytest)")


def main():
    if len(sys.argv) < 3 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        sys.exit(__doc__.split("\n\n")[-1])
    size_mb, command = int(sys.argv[1]), sys.argv[2:]
    try:
        with CephCluster() as cluster:
            cluster.create_image("campaign", size_mb)
            spec = cluster.image_spec("campaign")
            return subprocess.run([spec if a == "@RBD@" else a for a in command]).returncode
    except CephError as e:
        sys.exit(f"bench/with_ceph.py: the Ceph cluster did not come up: {e}")


if __name__ == "__main__":
    sys.exit(main())
