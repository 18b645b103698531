"""What the policies of the remote drivers add, attacked.

blk-nbd and blk-rbd are dynamically linked (Debian ships libnbd and librbd
as shared objects only) and blk-rbd makes its own TCP connections. Their
policies add 'libraries loaded' (the root shows the loader's libraries,
read-only; code may be mapped from them), 'net' (TCP sockets, no listening)
and 'connect' (Landlock: these ports only). hostile-remote-driver is the
hostile test driver linked the same way, under hostile-remote.policy (the
same keys, port 3300): each attack here must be refused, the refusals the
policy promises to report must be reported, and the device must go on
unharmed. The shipped drivers' own sandboxes, seen from /proc, are in
test_blk_nbd.py and test_blk_rbd.py."""
import re
import socket
import subprocess

import pytest

from conftest import BUILD, POLICIES, assert_no_sanitizer_report

DRIVER = BUILD / "tests" / "drivers" / "hostile-remote-driver"
POLICY = POLICIES / "hostile-remote.policy"
EPERM = r"refused \(Operation not permitted\)"


def attack(isolde, image, name, *extra):
    p, r = isolde.verify(image, "--driver", DRIVER, "--policy", POLICY, f"--driver-arg=--attack={name}",
                         "--ops", 300, "--qd", 8, "--notify", "event", *extra, timeout=120)
    assert p.returncode == 0 and r["errors"] == 0 and r["mismatches"] == 0, p.stderr[-3000:]
    assert r["restarts"] == 0, p.stderr[-3000:]
    assert f"attack {name} at request 10 of generation 1" in p.stderr, p.stderr[-2000:]
    assert_no_sanitizer_report(p.stderr)
    return p.stderr


def told(err, name, what):
    assert re.search(rf"isolde driver hostile-remote-driver\[\d+\]: attack {name}: {what}", err), \
        f"the driver was not told: {what}\n{err[-2000:]}"


def reported(err, call):
    assert re.search(rf"denied driver hostile-remote-driver \(pid \d+\) system call {call} \(\d+\): "
                     r"refused with EPERM", err), f"{call} was not reported refused\n{err[-2000:]}"


def test_the_driver_is_dynamically_linked():
    out = subprocess.run(["readelf", "-l", str(DRIVER)], capture_output=True, text=True, check=True).stdout
    assert "Requesting program interpreter" in out


def test_no_listening(any_isolde, image):
    err = attack(any_isolde, image, "listen-socket")
    told(err, "listen-socket", r"socket AF_INET: succeeded")
    for call, what in (("bind", "bind 127.0.0.1"), ("listen", "listen"), ("accept4", "accept")):
        reported(err, call)
        told(err, "listen-socket", f"{what}: {EPERM}")


def test_connect_outside_the_ports_is_refused_and_reported(any_isolde, image):
    # A real listener on a port the policy does not name: no connection
    # may reach it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(0.5)
        port = srv.getsockname()[1]
        err = attack(any_isolde, image, "connect-outside", f"--driver-arg=--target-port={port}")
        with pytest.raises(socket.timeout):
            srv.accept()
    told(err, "connect-outside", r"connect to a port outside the policy: refused \(Permission denied\)")
    assert re.search(rf"denied driver hostile-remote-driver \(pid \d+\) a TCP connection to 127\.0\.0\.1 "
                     rf"port {port}, which is not among its 'connect' ports: refused with EACCES", err), err[-2000:]


def test_only_tcp_sockets(any_isolde, image):
    err = attack(any_isolde, image, "other-sockets")
    for what in ("socket AF_INET SOCK_DGRAM", "socket AF_UNIX", "socket AF_NETLINK", "socket AF_INET SOCK_RAW",
                 "socketpair AF_UNIX"):
        told(err, "other-sockets", f"{what}: {EPERM}")
    reported(err, "socket")
    reported(err, "socketpair")


def test_no_code_from_the_shared_memory(any_isolde, image):
    """The loader may map code from files; never from fds 0-6 (the shared
    memory is fd 3), a copy of one, fd 3 with the upper half of the
    register set, anonymous memory, or a writable copy of a library."""
    err = attack(any_isolde, image, "shm-code")
    for what in ("mmap the shared memory PROT_EXEC", "dup the shared memory", "F_DUPFD_CLOEXEC the shared memory",
                 "mmap fd 0x100000003 PROT_EXEC", "mmap anonymous PROT_EXEC",
                 r"mmap its libc PROT_WRITE\|PROT_EXEC", "mprotect that code writable and executable"):
        told(err, "shm-code", f"{what}: {EPERM}")
    # What the loader itself does stays allowed: code from its own files.
    told(err, "shm-code", r"mmap its libc PROT_EXEC: succeeded")
    for call in ("mmap", "dup", "fcntl"):
        reported(err, call)


def test_the_root_shows_its_libraries_and_nothing_else(any_isolde, image):
    err = attack(any_isolde, image, "library-files")
    told(err, "library-files", r"openat /etc/passwd: refused \(No such file or directory\)")
    # The directory is there (bound read-only) but neither it nor a
    # library the driver does not load can be read: Landlock.
    told(err, "library-files", r"openat the library directory: refused \(Permission denied\)")
    told(err, "library-files", r"openat a library it does not load: refused \(Permission denied\)")
    told(err, "library-files", r"openat its libc read-only: succeeded")
    # Opening for writing or creating is refused by the filter, reported.
    told(err, "library-files", f"openat its libc read-write: {EPERM}")
    told(err, "library-files", f"openat /tmp/x O_CREAT: {EPERM}")
    reported(err, "openat")


def test_a_policy_with_ports_needs_the_net_group(any_isolde, image, tmp_path):
    bad = tmp_path / "bad.policy"
    bad.write_text(POLICY.read_text().replace("base io sync net", "base io sync"))
    p = any_isolde.run("verify", "--image", image, "--driver", DRIVER, "--policy", bad, "--ops", 10)
    assert p.returncode != 0 and f"{bad}: field 'connect': needs the system-call group 'net'" in p.stderr
