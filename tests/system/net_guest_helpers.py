"""Helpers for the guest network tests and bench/net_guest.py: the guest with
a network card (tests/guest/build-net-guest.sh, /init tests/guest/net-init),
booted under QEMU (TCG) on a netdev the caller names - QEMU's own tap as the
baseline, or vhost-user-net on `isolde serve`'s socket - and the host's side
of its network, all in one network namespace made for the test: the TAP
(QEMU's or the net-tap driver's) with PEER_IP, a peer that checks the guest's
TCP stream and serves one of its own, and iperf3's server.

    guest (eth0 10.77.0.2) == virtio-net == QEMU tap | vhost-user-net + net-tap
        == TAP (10.77.0.1, namespace NS) == Peer / IperfServer (in NS)

Every process started here is killed, and every namespace and temporary
file removed, whether the caller succeeds or not."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT, kill_session
from guest_helpers import QEMU, SCALE, Guest, ServedIsolde, need_tools, wait_for_socket
from net_helpers import sh

NET_GUEST_SCRIPT = ROOT / "tests" / "guest" / "build-net-guest.sh"
NET_GUEST_DIR = Path(os.environ.get("ISOLDE_NET_GUEST_DIR", ROOT / "build" / "net-guest"))

GUEST_IP = "10.77.0.2"
PEER_IP = "10.77.0.1"
PREFIX = 24
GUEST_MAC = "52:54:00:12:34:56"
MiB = 1 << 20
# QEMU 7.2 (Debian 12) under TCG segfaults in vhost_net_start, setting up
# MSI-X vector notifiers, for any vhost-user-net back end (its own bug, with
# or without the control queue); with INTx (no MSI-X vectors) it runs. Both
# paths - QEMU's tap and isolde's vhost-user-net - get the same card, so the
# benchmark compares like with like.
NIC_OPTIONS = "vectors=0"

BOOT_TIMEOUT = 60 * SCALE
RESULT = "ISOLDE-GUEST-RESULT:"
BENCH = "ISOLDE-GUEST-BENCH:"
GUEST_SAYS = "ISOLDE-GUEST:"
# The guest says this once the peer answered its ping: the network is up.
PEER_ANSWERS = "ISOLDE-GUEST: peer answers"

_net_guest_files = None


def net_guest_files():
    """(vmlinuz, initramfs) of the guest with a network card, built once (and
    cached in build/net-guest across runs) by tests/guest/build-net-guest.sh."""
    global _net_guest_files
    if _net_guest_files is None:
        p = subprocess.run(["bash", str(NET_GUEST_SCRIPT), str(NET_GUEST_DIR)], capture_output=True, text=True,
                           timeout=900)
        if p.returncode != 0:
            pytest.fail(f"{NET_GUEST_SCRIPT} {NET_GUEST_DIR} exited {p.returncode} "
                        f"(as root, `make deps` installs what it needs):\n{p.stdout}\n{p.stderr}")
        _net_guest_files = (NET_GUEST_DIR / "vmlinuz", NET_GUEST_DIR / "initramfs.cpio.gz")
    return _net_guest_files


def tap_netdev(ifname):
    """QEMU's own tap back end (run QEMU in the namespace: the TAP lands there)."""
    return ["-netdev", f"tap,id=n0,ifname={ifname},script=no,downscript=no,vhost=off"]


def vhost_user_netdev(sock):
    return ["-chardev", f"socket,id=c0,path={sock}", "-netdev", "vhost-user,id=n0,chardev=c0"]


class Namespace:
    """One network namespace named after this process and `tag`, made and
    removed with whatever still runs in it (as net_helpers.Namespaces)."""

    def __init__(self, tag):
        self.name = f"isolde-{tag}-{os.getpid()}"

    def __enter__(self):
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for pid in sh("ip", "netns", "pids", self.name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", self.name, check=False)

    def __str__(self):
        return self.name


class TapSetup(threading.Thread):
    """Waits (in a thread) for the TAP `ifname` to appear in namespace ns -
    made by QEMU, or by isolde for its driver - then gives it PEER_IP/24 and
    brings it up. wait() raises what went wrong."""

    def __init__(self, ns, ifname, address=f"{PEER_IP}/{PREFIX}", timeout=60 * SCALE, alive=None):
        super().__init__(daemon=True)
        self.ns, self.ifname, self.address, self.timeout = str(ns), ifname, address, timeout
        self.alive = alive or (lambda: True)
        self.error = None
        self.done = threading.Event()
        self.start()

    def run(self):
        try:
            deadline = time.monotonic() + self.timeout
            while sh("ip", "-n", self.ns, "link", "show", self.ifname, check=False).returncode != 0:
                if not self.alive():
                    raise AssertionError(f"the TAP's owner exited before {self.ifname} appeared in {self.ns}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.ifname} never appeared in namespace {self.ns}")
                time.sleep(0.05)
            sh("ip", "-n", self.ns, "addr", "add", self.address, "dev", self.ifname)
            sh("ip", "-n", self.ns, "link", "set", self.ifname, "up")
        except BaseException as e:  # noqa: B036 - reported by wait()
            self.error = e
        finally:
            self.done.set()

    def wait(self, timeout=None):
        if not self.done.wait(self.timeout + 10 if timeout is None else timeout):
            raise AssertionError(f"{self.ifname} in {self.ns} is still not set up")
        if self.error:
            raise AssertionError(f"setting up {self.ifname} in {self.ns}: {self.error}")


class NetGuest(Guest):
    """QEMU (TCG) booting the guest with a network card (virtio-net-pci on
    netdev n0, which `netdev_args` define) - inside namespace `netns` if
    given, as QEMU's tap back end needs - running `workload` (net-check,
    net-bench) and powering off. The console is read as guest_helpers.Guest
    reads it (wait_for, result, assert_pass, console, close)."""

    def __init__(self, netdev_args, workload, ip=f"{GUEST_IP}/{PREFIX}", peer=PEER_IP, bytes=4 * MiB,
                 port=5201, seconds=5, pings=None, netns=None, mem_mib=512, smp=1, log_path=None, append=""):
        need_tools(QEMU)
        kernel, initrd = net_guest_files()
        self.workload, self.seconds = workload, seconds
        self.pings = pings or (20 if workload == "net-check" else 50)
        self.bytes = bytes
        self.log_path = log_path
        self.lines = []
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        params = [f"isolde.workload={workload}", f"isolde.ip={ip}", f"isolde.peer={peer}", f"isolde.bytes={bytes}",
                  f"isolde.port={port}", f"isolde.seconds={seconds}", f"isolde.pings={self.pings}"]
        self.cmd = (["ip", "netns", "exec", str(netns)] if netns else []) + [
            QEMU, "-machine", "q35,accel=tcg,memory-backend=mem", "-cpu", "max", "-smp", str(smp),
            "-m", f"{mem_mib}M",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
            *netdev_args,
            "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC},{NIC_OPTIONS}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", " ".join(["console=ttyS0 panic=-1 loglevel=4", *params, append]).strip(),
            "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        ]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def workload_timeout(self):
        # Under TCG the guest moves a few MiB/s to some tens; boot is 5-15 s.
        if self.workload == "net-bench":
            return BOOT_TIMEOUT + (0.2 * self.pings + 2 * (self.seconds + 30) + 60) * SCALE
        return BOOT_TIMEOUT + (0.2 * self.pings + 60 + 2 * self.bytes / MiB * 4) * SCALE

    def result(self, timeout=None):
        return super().result(self.workload_timeout() if timeout is None else timeout)

    def lines_with(self, marker):
        with self.cond:
            return [line.split(marker, 1)[1].strip() for _, line in self.lines if marker in line]

    def said(self, what):
        """The words after 'ISOLDE-GUEST: WHAT' on the first line that has them."""
        for rest in self.lines_with(GUEST_SAYS):
            if rest.startswith(what + " "):
                return rest[len(what) + 1:].split()
        raise AssertionError(f"the guest never said {what!r}; console:\n{self.console}")

    def transfers(self):
        """What the guest says it sent and received (net-check):
        {"tx": (bytes, sha256), "rx": (bytes, sha256)}."""
        out = {}
        for d in ("tx", "rx"):
            words = self.said(f"{d}-sha256")  # HEX bytes N
            out[d] = (int(words[2]), words[0])
        return out

    def ping_counts(self):
        """(sent, received) of the guest's counted pings (net-check)."""
        w = self.said("ping")  # sent N received M rtt ...
        return int(w[1]), int(w[3])

    def bench_figures(self, timeout=None):
        """Waits for the guest's PASS; its ISOLDE-GUEST-BENCH lines as
        {"ping": {...}, "guest-to-peer": {...}, "peer-to-guest": {...}}."""
        verdict = self.result(timeout)
        assert verdict == "PASS", f"guest: {verdict}; console:\n{self.console}"
        figures = {}
        for text in self.lines_with(BENCH):
            try:
                f = json.loads(text)
            except ValueError:
                raise AssertionError(f"the guest's figures are not JSON: {text!r}; console:\n{self.console}")
            figures[f.get("direction", f["test"])] = f
        return figures


@contextmanager
def boot_net_guest(netdev_args, workload, **kw):
    """with boot_net_guest(args, "net-check", netns=ns) as g: g.assert_pass() -- QEMU is always killed."""
    g = NetGuest(netdev_args, workload, **kw)
    try:
        yield g
    finally:
        g.close()


# The host's side of net-check: takes each connection on PORT to its end,
# answers "BYTES SHA256\n" and reports what it got; sends NBYTES pseudo-random
# bytes (seeded: the same on every connection) on PORT+1 to each connection
# and reports them. One JSON line a connection on stdout.
PEER_SCRIPT = r"""
import hashlib, json, random, socket, sys, threading
port, nbytes, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()

def say(**kw):
    with lock:
        print(json.dumps(kw), flush=True)

def listener(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p))
    s.listen(8)
    return s

def take(c, addr):
    h, n, err = hashlib.sha256(), 0, None
    try:
        c.settimeout(600)
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        c.sendall(f"{n} {h.hexdigest()}\n".encode())
        c.shutdown(socket.SHUT_WR)
        while c.recv(4096):
            pass
    except OSError as e:
        err = repr(e)
    c.close()
    say(event="received", port=port, bytes=n, sha256=h.hexdigest(), client=addr[0], error=err)

def give(c, addr):
    rng, h, n, err = random.Random(seed), hashlib.sha256(), 0, None
    try:
        c.settimeout(600)
        while n < nbytes:
            b = rng.randbytes(min(1 << 16, nbytes - n))
            c.sendall(b)
            h.update(b)
            n += len(b)
        c.shutdown(socket.SHUT_WR)
        while c.recv(4096):
            pass
    except OSError as e:
        err = repr(e)
    c.close()
    say(event="sent", port=port + 1, bytes=n, sha256=h.hexdigest(), client=addr[0], error=err)

def serve(s, fn):
    while True:
        c, addr = s.accept()
        threading.Thread(target=fn, args=(c, addr), daemon=True).start()

a, b = listener(port), listener(port + 1)
say(event="listening", port=port)
threading.Thread(target=serve, args=(b, give), daemon=True).start()
serve(a, take)
"""


class Peer:
    """The guest's peer for net-check, in namespace ns (python3 via `ip netns
    exec`, listening on all addresses, so it can start before the TAP has
    its address): received() and sent() are the connections it finished."""

    def __init__(self, ns, port, nbytes, seed=1):
        self.port, self.nbytes = port, nbytes
        self.events = []
        self.cond = threading.Condition()
        self.err = b""
        self.proc = subprocess.Popen(["ip", "netns", "exec", str(ns), sys.executable, "-c", PEER_SCRIPT,
                                      str(port), str(nbytes), str(seed)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait(lambda: any(e["event"] == "listening" for e in self.events), 30)
        except BaseException:
            self.close()
            raise

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(e)
                self.cond.notify_all()

    def _wait(self, ok, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ok():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"the peer: timed out or exited ({self.proc.poll()}); "
                                         f"events {self.events}; stderr:\n{self.stderr()}")
                self.cond.wait(min(left, 0.5))

    def stderr(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read() if not self.proc.stderr.closed else ""

    def finished(self, event):
        with self.cond:
            return [e for e in self.events if e["event"] == event]

    def received(self):
        return self.finished("received")

    def sent(self):
        return self.finished("sent")

    def wait_done(self, timeout=30):
        """Both directions have at least one connection finished (the
        guest's verdict comes after them, but the peer's report may lag)."""
        self._wait(lambda: any(e["event"] == "received" for e in self.events) and
                   any(e["event"] == "sent" for e in self.events), timeout)

    def close(self):
        kill_session(self.proc)
        self._reader.join(timeout=5)
        print(f"---- peer (port {self.port}) ----\n" + "\n".join(json.dumps(e) for e in self.events))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def assert_transfers_match(guest, peer):
    """Both directions of a net-check arrived whole: what the guest sent is
    what the peer took in full, what the peer sent is what the guest got."""
    peer.wait_done()
    t = guest.transfers()
    full_rx = [e for e in peer.received() if e["bytes"] == guest.bytes and e["error"] is None]
    assert full_rx, f"the peer never took the guest's {guest.bytes} bytes whole: {peer.received()}"
    assert t["tx"] == (guest.bytes, full_rx[-1]["sha256"]), (t["tx"], full_rx)
    full_tx = [e for e in peer.sent() if e["bytes"] == guest.bytes and e["error"] is None]
    assert full_tx, f"the peer never sent its {guest.bytes} bytes whole: {peer.sent()}"
    assert t["rx"] == (guest.bytes, full_tx[-1]["sha256"]), (t["rx"], full_tx)
    return t


class IperfServer:
    """iperf3 -s on `port` in namespace ns, serving one test after another."""

    def __init__(self, ns, port=5201):
        need_tools("iperf3")
        self.port = port
        self.lines = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(["ip", "netns", "exec", str(ns), "iperf3", "-s", "-p", str(port),
                                      "--forceflush"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(30) or self.proc.poll() is not None:
            self.close()
            raise AssertionError("iperf3 -s never listened:\n" + "".join(self.lines))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Server listening" in line:
                self.ready.set()
        self.ready.set()

    def close(self):
        kill_session(self.proc)
        self._reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VhostNetServed(ServedIsolde):
    """`isolde serve --netdev n0,driver=net-tap,ifname=IF,netns=NS[,OPT...]
    --export vhost-user-net:SOCK,netdev=n0`; ready once SOCK exists. The TAP
    the driver gets is set up by a TapSetup (tap) as soon as isolde made it."""

    def __init__(self, isolde, ns, ifname, sock, *netdev_opts, extra=()):
        self.ns, self.ifname, self.sock = str(ns), ifname, sock
        spec = ",".join([f"n0,driver=net-tap,ifname={ifname},netns={self.ns}", *netdev_opts])
        super().__init__(isolde, "serve", "--netdev", spec, "--export", f"vhost-user-net:{sock},netdev=n0",
                         *extra)
        try:
            wait_for_socket(sock, self.proc, self._log)
            self.tap = TapSetup(ns, ifname, alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.close()
            raise

