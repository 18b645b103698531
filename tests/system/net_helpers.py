"""Network namespaces, an `isolde serve` with a network device between them,
and real traffic (ping, TCP with checksums, iperf3) - for the network
driver domain tests and benchmarks. Everything made here is removed again,
also on failure: namespaces, the serve process and with it its TAPs."""
import hashlib
import os
import re
import signal
import subprocess
import threading
import time

from conftest import driver_children, kill_session

HOST_IP = "10.77.0.1"   # the host's side: the tap export, in namespace A
WIRE_IP = "10.77.0.2"   # the wire's side: the driver's TAP, in namespace B


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check,
                          timeout=timeout, **kw)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


class Namespaces:
    """Two network namespaces named after this process, made and removed."""

    def __init__(self, tag):
        self.a = f"isolde-{tag}-a-{os.getpid()}"
        self.b = f"isolde-{tag}-b-{os.getpid()}"

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):
            # Processes a test left in the namespace go first.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)


class NetServe:
    """isolde serve with network device n0: its driver's TAP `wire0` in
    namespace B, the tap export `host0` in namespace A; addresses set once
    it is ready."""

    def __init__(self, isolde, ns, *netdev_opts, export_opts=(), host_if="ishost0", wire_if="iswire0"):
        self.isolde = isolde
        self.ns = ns
        self.host_if, self.wire_if = host_if, wire_if
        spec = ",".join([f"n0,ifname={wire_if},netns={ns.b}", *netdev_opts])
        export = ",".join([f"tap:{host_if},netns={ns.a}", *export_opts])
        self.args = ["serve", "--netdev", spec, "--export", export]
        self.err_lines = []
        self.proc = None

    def __enter__(self):
        self.proc = self.isolde.start(*self.args)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.err_lines.append(line)
            if line.rstrip().endswith("ready"):
                break
        else:
            line = ""
        if not self.err_lines or not self.err_lines[-1].rstrip().endswith("ready"):
            self.close()
            raise AssertionError("isolde serve did not get ready:\n" + self.stderr())
        # The rest of stderr is read as it comes, so the pipe never fills.
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        sh("ip", "-n", self.ns.a, "addr", "add", f"{HOST_IP}/24", "dev", self.host_if)
        sh("ip", "-n", self.ns.b, "addr", "add", f"{WIRE_IP}/24", "dev", self.wire_if)
        return self

    def _drain(self):
        for line in self.proc.stderr:
            self.err_lines.append(line)

    def stderr(self):
        return "".join(self.err_lines)

    def drivers(self):
        return driver_children(self.proc.pid)

    def stop(self, timeout=20):
        """SIGTERM, as a user stops it; returns its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        self.close()
        return rc

    def close(self):
        if self.proc:
            kill_session(self.proc)
            if getattr(self, "reader", None):
                self.reader.join(timeout=5)

    def __exit__(self, *exc):
        self.close()


def ping(ns, address, count, interval=0.2, timeout=60):
    """Run ping in ns; returns (transmitted, received, duplicates, output)."""
    p = in_ns(ns, "ping", "-n", "-q", "-c", count, "-i", interval, "-W", "1", address, check=False,
              timeout=timeout)
    m = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), p.stdout


# A receiver that takes one TCP connection and reports what it got; a
# sender that sends pseudo-random bytes (seeded) and reports what it sent.
RECEIVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

SENDER = r"""
import hashlib, random, socket, sys
rng = random.Random(int(sys.argv[4])); total = int(sys.argv[3]); h = hashlib.sha256(); n = 0
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120)
while n < total:
    b = rng.randbytes(min(1 << 16, total - n)); c.sendall(b); h.update(b); n += len(b)
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(n, h.hexdigest(), flush=True)
"""


def tcp_transfer(ns_from, ns_to, to_ip, nbytes, seed=1, port=5001, timeout=240):
    """Send nbytes over one TCP connection from ns_from to to_ip in ns_to;
    returns ((sent, sha), (received, sha)). The receiver's end is closed only
    after the sender shut down its side: a connection that broke shows as an
    exception in the sender or a short count."""
    recv = subprocess.Popen(["ip", "netns", "exec", ns_to, "python3", "-c", RECEIVER, to_ip, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv.stdout.readline().strip() == "listening", recv.stderr.read()
        send = in_ns(ns_from, "python3", "-c", SENDER, to_ip, port, nbytes, seed, check=False,
                     timeout=timeout)
        assert send.returncode == 0, f"the sender failed (connection lost?):\n{send.stderr}"
        out, err = recv.communicate(timeout=60)
        assert recv.returncode == 0, err
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    s = send.stdout.split()
    r = out.split()
    return (int(s[0]), s[1]), (int(r[0]), r[1])


class KillStorm:
    """SIGKILL the serve's network driver every `interval` seconds, in a
    thread, while the body runs; .kills says how many landed."""

    def __init__(self, serve, interval=0.05):
        self.serve = serve
        self.interval = interval
        self.kills = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.wait(self.interval):
            for pid in self.serve.drivers():
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()
