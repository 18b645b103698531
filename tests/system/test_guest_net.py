"""A Linux guest's network card on isolde: the vhost-user-net export
(`isolde serve --netdev n0,driver=net-tap,... --export vhost-user-net:SOCK`)
with a real QEMU guest (tests/guest/net-init, workload "net-check"): the
guest pings the host's side 20 times, sends it 4 MiB of random data over TCP
and takes 4 MiB back; the peer in the namespace checks with SHA-256 what it
got, and the test compares both directions with what the guest says.

The same guest first runs on QEMU's own tap netdev, the known-good path, to
prove the test itself; then on isolde (normal and ASan builds, each notify
mode); then on isolde while the host SIGKILLs the net-tap driver every
~200 ms from the guest's first counted ping to its verdict, which TCP must
carry across. Every process, namespace and socket is removed whether a test
passes or not.
"""
import os
import re

import pytest

from conftest import assert_no_sanitizer_report
from guest_helpers import DriverKiller, private_dir
from net_guest_helpers import (MiB, PEER_ANSWERS, Namespace, Peer, TapSetup, VhostNetServed, assert_transfers_match,
                               boot_net_guest, need_tools, net_guest_files, tap_netdev,
                               vhost_user_netdev)

TAP = "isgtap0"
PORT = 5301
NBYTES = 4 * MiB


@pytest.fixture(scope="module", autouse=True)
def guest():
    """QEMU is there, we are root, and the guest is built (the first time, a minute)."""
    need_tools("qemu-system-x86_64", "ip")
    if os.geteuid() != 0:
        pytest.fail("the guest network tests make namespaces and TAPs: run as root")
    return net_guest_files()


@pytest.fixture
def ns():
    with Namespace("gnet") as n:
        yield n


@pytest.fixture
def sockdir():
    with private_dir("isolde-gnet-") as d:
        yield d


def summary(err):
    """The counts of isolde serve's last words on network device n0."""
    lines = [line for line in err.splitlines() if "restarts" in line]
    assert lines, f"isolde serve printed no summary with 'restarts':\n{err[-3000:]}"
    m = re.search(r"(\d+) restarts", lines[-1])
    assert m, lines[-1]
    return lines[-1], int(m.group(1))


def assert_guest_pinged(g):
    sent, received = g.ping_counts()
    assert sent == g.pings and received > 0, (sent, received)
    return sent, received


def test_guest_net_check_on_qemu_tap(ns):
    """The known-good path, QEMU's own tap: if this fails, the test or the
    guest is wrong, not isolde."""
    with Peer(ns, PORT, NBYTES, seed=1) as peer:
        with boot_net_guest(tap_netdev(TAP), "net-check", netns=ns, bytes=NBYTES, port=PORT) as g:
            TapSetup(ns, TAP, alive=g.running).wait()
            g.assert_pass()
        assert_transfers_match(g, peer)
        sent, received = assert_guest_pinged(g)
        assert received == sent, f"{sent - received} of {sent} pings lost on QEMU's tap"


def net_check_on_isolde(isolde, ns, sockdir, mode):
    sock = os.path.join(sockdir, "vn.sock")
    with Peer(ns, PORT, NBYTES, seed=2) as peer, \
            VhostNetServed(isolde, ns, TAP, sock, f"notify={mode}") as srv:
        srv.tap.wait()
        with boot_net_guest(vhost_user_netdev(sock), "net-check", bytes=NBYTES, port=PORT) as g:
            g.assert_pass()
        assert_transfers_match(g, peer)
        sent, received = assert_guest_pinged(g)
        assert received == sent, f"{sent - received} of {sent} pings lost with no driver restart"
        assert srv.proc.poll() is None, f"isolde serve died:\n{srv.stderr}"
        rc = srv.terminate()
        err = srv.stderr
    assert rc == 0, f"isolde serve exited {rc}:\n{err[-3000:]}"
    assert_no_sanitizer_report(err)
    line, restarts = summary(err)
    assert restarts == 0, line
    assert not os.path.exists(sock), "isolde serve left its vhost-user socket behind"


def test_guest_net_check_on_isolde(any_isolde, ns, sockdir):
    """net-check on vhost-user-net, notify=event, normal and ASan builds; at
    stop isolde serve's summary counts no restart."""
    net_check_on_isolde(any_isolde, ns, sockdir, "event")


@pytest.mark.parametrize("mode", ["spin", "hybrid"])
def test_guest_net_check_on_isolde_polling(isolde, ns, sockdir, mode):
    net_check_on_isolde(isolde, ns, sockdir, mode)


def test_guest_net_check_while_driver_killed(isolde, ns, sockdir):
    """SIGKILL the net-tap driver every 150-250 ms from the guest's first
    counted ping to its verdict: every restart keeps the guest's rings and
    the TAP, so TCP carries both 8 MiB streams across, intact."""
    nbytes = 8 * MiB
    sock = os.path.join(sockdir, "vn.sock")
    with Peer(ns, PORT, nbytes, seed=3) as peer, VhostNetServed(isolde, ns, TAP, sock, "notify=event") as srv:
        srv.tap.wait()
        with boot_net_guest(vhost_user_netdev(sock), "net-check", bytes=nbytes, port=PORT) as g:
            g.wait_for(PEER_ANSWERS, g.workload_timeout())
            with DriverKiller(srv.pid, interval=(0.15, 0.25), seed=3) as killer:
                verdict = g.result()
            assert verdict == "PASS", f"guest: {verdict} after {killer.kills} kills at " \
                                      f"{[round(t, 1) for t in killer.times]} s; console:\n{g.console}"
            g.assert_pass()
        assert killer.kills >= 5, f"only {killer.kills} kills landed during the guest's traffic"
        assert_transfers_match(g, peer)
        assert_guest_pinged(g)
        assert srv.proc.poll() is None, f"isolde serve died:\n{srv.stderr}"
        rc = srv.terminate()
        err = srv.stderr
    assert rc == 0, f"isolde serve exited {rc}:\n{err[-3000:]}"
    line, restarts = summary(err)
    assert restarts >= killer.kills - 1, (killer.kills, line)
    assert "killed" in err, err[-3000:]
