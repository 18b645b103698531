"""Without root: the driver gets a user namespace of its own, and with it the
same namespaces and empty root as under root. Where no user namespace can be
had either, blk-file runs with a warning that says what is missing, and a
driver whose policy grants io_uring refuses to run uncontained unless told
to with --allow-uring-without-namespaces."""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import proc_status, read_driver_pid, sanitizer_env, stop

NOBODY = 65534
NO_USERNS = Path(__file__).resolve().parent / "no_userns.py"


@pytest.fixture
def nobody_image():
    d = tempfile.mkdtemp(prefix="isolde-nobody-")
    image = os.path.join(d, "disk.img")
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    os.chown(d, NOBODY, NOBODY)
    os.chown(image, NOBODY, NOBODY)
    try:
        yield image
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(isolde, *args):
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(isolde.build.isolde),
            *map(str, args)]


def verify_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=sanitizer_env())
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


@pytest.mark.parametrize("driver", ["blk-file", "blk-uring"])
def test_unprivileged_driver_gets_its_own_user_namespace(any_isolde, nobody_image, driver):
    proc = subprocess.Popen(as_nobody(any_isolde, "verify", "--image", nobody_image, "--driver", driver,
                                      "--ops", 10**9, "--qd", 4, "--notify", "event"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=sanitizer_env())
    try:
        pid = read_driver_pid(proc)
        st = proc_status(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
        assert st["CapEff"] == st["CapPrm"] == "0000000000000000"
        assert st["Uid"].split() == [str(NOBODY)] * 4, "outside, the driver is the user who ran isolde"
        for ns in ("user", "mnt", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
        with open(f"/proc/{pid}/uid_map") as f:
            assert f.read().split() == [str(NOBODY), str(NOBODY), "1"], "one uid, mapped to itself"
        assert os.listdir(f"/proc/{pid}/root/") == [], "the driver's root is empty"
    finally:
        stop(proc)


def test_unprivileged_verify_reports_its_sandbox(isolde, nobody_image):
    p, r = verify_json(as_nobody(isolde, "verify", "--image", nobody_image, "--ops", 300, "--json",
                                 "--driver", "blk-uring"))
    assert p.returncode == 0, p.stderr
    assert r["sandbox"] == {"namespaces": True, "user_namespace": True, "own_uid": False, "cgroups": False,
                            "landlock_abi": r["sandbox"]["landlock_abi"], "restricted_uring": True,
                            "vm": False}
    assert "not root: the driver runs as this user" in p.stderr


def no_userns(isolde, *args):
    return [str(NO_USERNS), str(isolde.build.isolde), *map(str, args)]


def test_uring_driver_refuses_to_run_uncontained(any_isolde, nobody_image):
    p, r = verify_json(no_userns(any_isolde, "verify", "--image", nobody_image, "--ops", 300, "--json",
                                 "--driver", "blk-uring"))
    assert p.returncode == 1 and r is None
    assert re.search(r"driver blk-uring needs io_uring \(policy .*blk-uring.policy\), and this host gives it "
                     r"no namespaces .*refusing to run it uncontained.*--allow-uring-without-namespaces",
                     p.stderr), p.stderr


def test_uring_driver_runs_uncontained_when_told(any_isolde, nobody_image):
    p, r = verify_json(no_userns(any_isolde, "verify", "--image", nobody_image, "--ops", 300, "--json",
                                 "--driver", "blk-uring", "--allow-uring-without-namespaces"))
    assert p.returncode == 0 and r["errors"] == 0 and r["mismatches"] == 0, p.stderr
    assert r["sandbox"]["namespaces"] is False and r["sandbox"]["restricted_uring"] is True
    assert r["sandbox"]["landlock_abi"] > 0, "Landlock needs no privilege and no namespace"
    assert re.search(r"warning: driver blk-uring runs with less confinement than its policy asks: .*"
                     r"no namespaces or empty root \(clone3 refused them", p.stderr), p.stderr


def test_blk_file_without_namespaces_runs_with_a_warning(isolde, nobody_image):
    p, r = verify_json(no_userns(isolde, "verify", "--image", nobody_image, "--ops", 300, "--json"))
    assert p.returncode == 0 and r["errors"] == 0, p.stderr
    assert r["sandbox"]["namespaces"] is False
    assert "no namespaces or empty root" in p.stderr


def test_unprivileged_remote_driver_sees_its_libraries(any_isolde, nobody_image):
    """A dynamically linked driver without root: its user namespace can bind
    its libraries read-only into its root just the same (the remount keeps
    what the host's mount has), and it serves an NBD export of nbdkit's
    running as the same user."""
    if not shutil.which("nbdkit"):
        pytest.fail("nbdkit is not installed (apt-get install nbdkit)")
    d = os.path.dirname(nobody_image)
    sock = os.path.join(d, "nbd.sock")
    server = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "nbdkit",
                               "--foreground", "--exit-with-parent", "--unix", sock, "file", nobody_image],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc = None
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            assert server.poll() is None, server.stderr.read()
            subprocess.run(["sleep", "0.01"])
        proc = subprocess.Popen(as_nobody(any_isolde, "verify", "--image", f"nbd+unix:///?socket={sock}",
                                          "--driver", "blk-nbd", "--ops", 10**9, "--qd", 4, "--notify", "event"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=sanitizer_env())
        pid = read_driver_pid(proc)
        st = proc_status(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
        assert st["Uid"].split() == [str(NOBODY)] * 4
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        root = sorted(os.listdir(f"/proc/{pid}/root/"))
        assert "usr" in root and set(root) <= {"lib", "lib64", "usr"}, root
    finally:
        if proc:
            stop(proc)
        stop(server)
