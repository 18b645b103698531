"""The system tests' modules (tests/system: ceph_helpers and what it needs)
for a bench script: they import pytest, which Debian's python3 has and a
python3 of one's own may not. A script imports this first; if its import of
them fails, it calls rerun_or_exit, which runs it again under Debian's
python3, or exits saying what to install."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "system"))


def rerun_or_exit(script, error):
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(script), *sys.argv[1:]])
    sys.exit(f"bench/{os.path.basename(script)}: cannot import tests/system/ceph_helpers.py: {error} "
             "(apt-get install python3-pytest)")
