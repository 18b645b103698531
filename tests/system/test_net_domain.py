"""Network driver domains: net-tap between two network namespaces, real
stacks on both sides (ping, TCP with checksums), driver kills, hostile
drivers, malformed frames and bad command lines (docs/ARCHITECTURE.md §19)."""
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import MODES, POLICIES, BUILD, assert_no_sanitizer_report, need_tools
from net_helpers import (HOST_IP, WIRE_IP, KillStorm, Namespaces, NetServe, in_ns, ping, sh,
                         tcp_transfer)

NET_FAULT = BUILD / "tests" / "drivers" / "net-fault"
NET_FAULT_POLICY = POLICIES / "net-fault.policy"


@pytest.fixture(autouse=True)
def tools():
    need_tools("ip", "ping", packages="iproute2 iputils-ping")
    if os.geteuid() != 0:
        pytest.fail("network driver domain tests make namespaces and TAPs: run as root")


@pytest.fixture
def ns():
    with Namespaces("net") as n:
        yield n


def summary(err):
    m = re.search(r"network device n0: (\d+) frames sent, (\d+) received, (\d+) restarts, (\d+) frames sent "
                  r"again, (\d+) protocol violations", err)
    assert m, err[-3000:]
    return dict(zip(["sent", "received", "restarts", "replayed", "violations"], map(int, m.groups())))


@pytest.mark.parametrize("mode", MODES)
def test_ping_both_ways_through_the_isolated_driver(isolde, ns, mode):
    with NetServe(isolde, ns, f"notify={mode}") as s:
        tx, rx, dup, out = ping(ns.a, WIRE_IP, 20, interval=0.05)
        assert (tx, rx, dup) == (20, 20, 0), out
        tx, rx, dup, out = ping(ns.b, HOST_IP, 20, interval=0.05)
        assert (tx, rx, dup) == (20, 20, 0), out
        rc = s.stop()
        err = s.stderr()
    assert rc == 0, err
    st = summary(err)
    assert st["sent"] >= 40 and st["received"] >= 40 and st["restarts"] == 0 and st["violations"] == 0
    # The TAPs were the serve's: gone with it.
    for n, ifname in ((ns.a, "ishost0"), (ns.b, "iswire0")):
        assert sh("ip", "-n", n, "link", "show", ifname, check=False).returncode != 0


@pytest.mark.parametrize("mode", MODES)
def test_tcp_transfer_arrives_intact(isolde, ns, mode):
    with NetServe(isolde, ns, f"notify={mode}"):
        (sent, sha_s), (got, sha_r) = tcp_transfer(ns.a, ns.b, WIRE_IP, 32 << 20, seed=7)
        assert sent == got == 32 << 20 and sha_s == sha_r
        # And the other way.
        (sent, sha_s), (got, sha_r) = tcp_transfer(ns.b, ns.a, HOST_IP, 8 << 20, seed=8, port=5002)
        assert sent == got == 8 << 20 and sha_s == sha_r


def test_offload_off_carries_plain_frames(isolde, ns):
    with NetServe(isolde, ns, "offload=off"):
        (sent, sha_s), (got, sha_r) = tcp_transfer(ns.a, ns.b, WIRE_IP, 4 << 20, seed=3)
        assert sent == got and sha_s == sha_r


def test_tcp_connection_survives_a_kill_every_50ms(isolde, ns):
    with NetServe(isolde, ns) as s:
        with KillStorm(s, interval=0.05) as storm:
            t0 = time.monotonic()
            (sent, sha_s), (got, sha_r) = tcp_transfer(ns.a, ns.b, WIRE_IP, 8 << 20, seed=11)
            elapsed = time.monotonic() - t0
        assert sent == got == 8 << 20 and sha_s == sha_r
        assert storm.kills >= min(20, int(elapsed / 0.05) // 2), (storm.kills, elapsed)
        rc = s.stop()
        err = s.stderr()
    assert rc == 0, err[-3000:]
    st = summary(err)
    assert st["restarts"] >= storm.kills - 1 and st["violations"] == 0
    assert "killed" in err


def test_ping_under_a_kill_every_50ms_keeps_answering(isolde, ns):
    with NetServe(isolde, ns) as s:
        with KillStorm(s, interval=0.05) as storm:
            tx, rx, dup, out = ping(ns.a, WIRE_IP, 100, interval=0.02)
        assert storm.kills >= 20
        # A kill may lose the frames the dead driver held, and a replay may
        # send one twice: most pings still come back.
        assert rx >= tx // 2, out
        tx, rx, dup, out = ping(ns.a, WIRE_IP, 10, interval=0.05)
        assert rx == 10, out


def test_driver_holds_only_the_tap(isolde, ns):
    with NetServe(isolde, ns) as s:
        (pid,) = s.drivers()
        fds = sorted(int(f) for f in os.listdir(f"/proc/{pid}/fd"))
        assert fds == [0, 1, 2, 3, 4, 5, 6], fds
        assert os.readlink(f"/proc/{pid}/fd/6") == "/dev/net/tun"
        status = open(f"/proc/{pid}/status").read()
        assert re.search(r"^Seccomp:\s+2$", status, re.M)
        assert re.search(r"^CapEff:\s+0+$", status, re.M)
        # Its own, empty network namespace: the TAP is reached only by fd.
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


HOSTILE = [
    # mode, what the log must say
    ("crash", "signal 6"),
    ("exit", "exited"),
    ("rx-bad-length", "broke the network protocol"),
    ("rx-bad-id", "broke the network protocol"),
    ("rx-bad-offload", "broke the network protocol"),
    ("rx-overrun", "broke the network protocol"),
    ("tx-bad-id", "broke the network protocol"),
    ("tx-twice", "broke the network protocol"),
    ("tx-bad-status", "broke the network protocol"),
    ("hang", "made no progress"),
    ("stall-tx", "left a frame unanswered"),
    ("stall-rx", "left frames on the wire unread"),
]


@pytest.mark.parametrize("fault,said", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_driver_is_replaced_and_traffic_goes_on(isolde, ns, fault, said):
    with NetServe(isolde, ns, f"driver={NET_FAULT}", f"policy={NET_FAULT_POLICY}", "timeout_ms=300",
                  f"driver_arg=--fault={fault}", "driver_arg=--after=6") as s:
        # The fault fires in the first generation; its successor is sound.
        ping(ns.a, WIRE_IP, 20, interval=0.05)
        deadline = time.monotonic() + 10
        while said not in s.stderr() and time.monotonic() < deadline:
            ping(ns.a, WIRE_IP, 2, interval=0.05)
        tx, rx, dup, out = ping(ns.a, WIRE_IP, 10, interval=0.05)
        assert rx == 10, out + s.stderr()[-3000:]
        rc = s.stop()
        err = s.stderr()
    assert said in err, err[-3000:]
    assert rc == 0, err[-3000:]
    st = summary(err)
    assert st["restarts"] >= 1


def test_malformed_and_oversized_frames_from_the_wire(isolde, ns):
    """Frames no stack would send - runts, garbage, a jumbo frame over the
    host's MTU - reach the driver and the host's side; nothing breaks."""
    with NetServe(isolde, ns, "mtu=9000") as s:
        sh("ip", "-n", ns.a, "link", "set", "ishost0", "mtu", "1500")
        script = r"""
import socket, sys, os
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
dst = b"\xff" * 6; src = b"\x02\x00\x00\x00\x00\x01"
frames = [dst + src + b"\x08\x00",                      # an Ethernet header alone
          dst + src + b"\x08\x00" + b"\x45",             # one byte of IP header
          dst + src + b"\x08\x00" + os.urandom(46),      # garbage IP
          dst + src + b"\x86\xdd" + os.urandom(1500),    # garbage IPv6
          dst + src + b"\x08\x00" + os.urandom(8986)]    # jumbo
for f in frames * 20:
    s.send(f)
print("sent", flush=True)
"""
        out = in_ns(ns.b, "python3", "-c", script, "iswire0").stdout
        assert "sent" in out
        out = in_ns(ns.a, "python3", "-c", script.replace("8986", "1400"), "ishost0").stdout
        assert "sent" in out
        tx, rx, dup, out = ping(ns.a, WIRE_IP, 10, interval=0.05)
        assert rx == 10, out
        rc = s.stop()
        err = s.stderr()
    assert rc == 0, err[-3000:]
    st = summary(err)
    assert st["violations"] == 0 and st["restarts"] == 0
    assert st["received"] >= 100


def test_under_asan_kill_storm_and_hostile_answers(ns):
    from conftest import _asan_build, Isolde
    b = _asan_build()
    if b is None:
        pytest.fail("the ASan build is missing: run make build-asan")
    asan = Isolde(b)
    with NetServe(asan, ns) as s:
        # 16 MiB: enough for the storm's kills to land during the transfer
        # even when the ASan build moves 2 MiB in under 250 ms.
        with KillStorm(s, interval=0.05) as storm:
            (sent, sha_s), (got, sha_r) = tcp_transfer(ns.a, ns.b, WIRE_IP, 16 << 20, seed=5)
        assert sha_s == sha_r and storm.kills >= 5, (storm.kills, sent, got)
        rc = s.stop()
        err = s.stderr()
    assert rc == 0, err[-3000:]
    assert_no_sanitizer_report(err)
    with NetServe(asan, ns, f"driver={NET_FAULT}", f"policy={NET_FAULT_POLICY}", "driver_arg=--fault=rx-bad-length",
                  "driver_arg=--every-generation", "driver_arg=--after=3") as s:
        ping(ns.a, WIRE_IP, 20, interval=0.05)
        rc = s.stop()
        err = s.stderr()
    assert_no_sanitizer_report(err)
    assert "broke the network protocol" in err


BAD_LINES = [
    (["--netdev", "n0,netns=x", "--export", "tap:h0"], "no TAP device given (ifname=IF)"),
    (["--netdev", "n0,ifname=w0,ring=3", "--export", "tap:h0"], "field 'ring': '3' is not a power of two"),
    (["--netdev", "n0,ifname=w0,netns=../etc", "--export", "tap:h0"], "is not a network namespace name"),
    (["--netdev", "n0,ifname=w0,bogus=1", "--export", "tap:h0"], "unknown field 'bogus'"),
    (["--netdev", "n0,ifname=a/b", "--export", "tap:h0"], "is not an interface name"),
    (["--netdev", "n0,ifname=abcdefghijklmnopq", "--export", "tap:h0"], "1 to 15 characters"),
    (["--netdev", "ifname=w0", "--export", "tap:h0"], "starts with its name"),
    (["--netdev", "n0,ifname=w0,mtu=20", "--export", "tap:h0"], "field 'mtu'"),
    (["--netdev", "n0,ifname=w0", "--netdev", "n0,ifname=w1", "--export", "tap:h0"], "network device n0 already"),
]


@pytest.mark.parametrize("args,said", BAD_LINES, ids=[str(i) for i in range(len(BAD_LINES))])
def test_bad_netdev_specs_name_the_field(isolde, args, said):
    p = isolde.run("serve", *args)
    assert p.returncode == 2, p.stderr
    assert said in p.stderr, p.stderr


def test_bad_pairings_and_namespaces_are_refused(isolde, ns):
    cases = [
        (["--netdev", f"n0,ifname=w0,netns={ns.b}"], "at least one --export is required"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--netdev", f"n1,ifname=w1,netns={ns.b}", "--export",
          "tap:h0,netdev=n0"], "network device n1 has no export"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--netdev", f"n1,ifname=w1,netns={ns.b}", "--export",
          "tap:h0"], "there is more than one network device"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "tap:h0,netdev=n9"], "no network device n9"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", f"tap:w0,netns={ns.b}"],
         "is the TAP of network device n0's driver"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "tap:h0", "--export", "tap:h1"],
         "--export tap:h1: network device n0 has an export already (--export tap:h0)"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "tap:h0", "--export", "vhost-user-net:/tmp/x.sock"],
         "--export vhost-user-net:/tmp/x.sock: network device n0 has an export already (--export tap:h0)"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "vhost-user-net:"],
         "vhost-user-net export: no socket path"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "vhost-user-net:/tmp/x.sock,poll=fast"],
         "field 'poll': 'fast' is not event, spin or hybrid"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "vhost-user-net:/tmp/x.sock,color=red"],
         "vhost-user-net export: unknown field 'color'"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "vhost-user-net:/tmp/x.sock,netdev="],
         "field 'netdev' needs a value"),
        (["--netdev", "n0,ifname=w0,netns=isolde-no-such-ns", "--export", "tap:h0"],
         "network namespace isolde-no-such-ns: cannot open /run/netns/isolde-no-such-ns"),
        (["--netdev", f"n0,ifname=w0,netns={ns.b}", "--export", "tap:h0,color=red"], "unknown field 'color'"),
    ]
    for args, said in cases:
        p = isolde.run("serve", *args)
        assert p.returncode != 0 and said in p.stderr, (args, p.stderr)
        # Nothing was left behind in the namespace.
        links = sh("ip", "-n", ns.b, "-o", "link", "show").stdout
        assert "w0" not in links, links
