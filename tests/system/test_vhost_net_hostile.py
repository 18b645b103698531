"""A hostile vhost-user front end against `isolde serve`'s vhost-user-net
export (src/export/vhost_net.c on src/export/vhost_user.c), played by
vhost_net_client.py: two queues, RX (0) and TX (1), in a memfd.

The server runs `--netdev n0,driver=net-tap,ifname=TAP,netns=NS --export
vhost-user-net:SOCK,netdev=n0`; the TAP has 10.77.0.1/24 in a namespace
of the test's own (IPv6 off, so the kernel sends nothing unasked). A helper
in the namespace holds an AF_PACKET socket on the TAP: it sees every frame
the guest sends and sends frames to the guest.

Attacks, and what is asserted:
- TX chains that are not frames: shorter than a header and an Ethernet
  header (also empty, in pieces, indirect), longer than
  ISOLDE_NETIF_MAX_FRAME (also in pieces), with device-writable segments,
  with buffers outside guest memory (past it, below it, across its end,
  wrapping, 4 GiB long), and headers with offloads the guest did not
  negotiate or that do not fit the frame (csum_start/csum_offset/hdr_len
  past it, GSO without a checksum or a size, unknown flags and GSO types).
  Each head comes back on the used ring with length 0, each gets its own
  log line, no device-writable byte is written, nothing reaches the TAP,
  and the stop summary counts exactly as many "malformed frames refused"
  as were sent (and exactly the good frames as sent).
- RX buffers the device cannot write (device-readable, or partly outside
  guest memory): refused with a log line, the queue stops (no used entry),
  not a byte of guest memory changes; after the front end restarts the
  queue it receives again. A buffer too small for the frame comes back
  empty (used length 0), unwritten, and is counted "too long".
- vhost-user messages about queues 2, 7, 8 and 255 (SET_VRING_NUM, _ADDR,
  _BASE, _KICK, _CALL, _ERR, _ENABLE, GET_VRING_BASE): refused with a log
  line naming the index, the connection closed.
- GET_CONFIG: PROTOCOL_F_CONFIG is not offered, and taking it anyway closes
  the connection; GET_CONFIG anyway is logged and answered with an empty
  reply (the refusal), with or without NEED_REPLY, and the connection goes
  on.
- A flood of 6000 malformed TX chains: stderr grows by a bounded number of
  lines (token bucket: burst 100, 10/s), the shown and suppressed lines add
  up to exactly what was sent, and so does the summary.

After every attack the server is alive and passes real traffic both ways
(a frame sent on TX arrives on the TAP byte for byte; a frame sent on the
TAP lands in a posted RX buffer with a valid header and used length 12 +
its length, nothing else in guest memory changing), stops cleanly on
SIGTERM, and has no sanitizer report (tests marked any_isolde run the ASan
build too). Servers, namespaces, sockets and memfds are removed whether a
test passes or not."""
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import pytest

from conftest import assert_no_sanitizer_report, kill_session
from guest_helpers import private_dir
from net_guest_helpers import GUEST_IP, GUEST_MAC, PEER_IP, Namespace, VhostNetServed
from net_helpers import sh
from vhost_net_client import (BROADCAST, ETH_P_EXPERIMENTAL, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP,
                              HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, MAX_FRAME, NET_F_CSUM, NET_F_HOST_TSO4,
                              NET_F_HOST_TSO6, NET_HDR, RX_QUEUE, VhostUserNet, eth_frame, mac_bytes, net_hdr)
from vhost_user_client import (DESC_F_NEXT, DESC_F_WRITE, FLAG_NEED_REPLY, GET_CONFIG, GET_PROTOCOL_FEATURES,
                               GET_VRING_BASE, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK,
                               SET_PROTOCOL_FEATURES, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_CALL,
                               SET_VRING_ENABLE, SET_VRING_ERR, SET_VRING_KICK, SET_VRING_NUM, U64, VERSION,
                               VRING_ADDR, VRING_NOFD, VRING_STATE, CONFIG_HDR, Closed, Desc, bit)

TAP = "isvnh0"
GUEST = mac_bytes(GUEST_MAC)
HDR = NET_HDR.size                       # 12
FRAME_BUF = HDR + MAX_FRAME              # vhost_net.c: x->frame, the longest chain it copies
LOG_BURST, LOG_PER_SECOND = 100, 10      # vhost_user.c: the log's token bucket
SUMMARY = re.compile(r"network device n0: guest: (\d+) frames sent, (\d+) received, (\d+) malformed frames "
                     r"refused, (\d+) frames dropped \((\d+) too long for the guest's buffer\)")
TX_LINE = "queue 1: frame at descriptor"


@pytest.fixture(scope="module", autouse=True)
def root():
    if os.geteuid() != 0:
        pytest.fail("the vhost-user-net tests make namespaces and TAPs: run as root")


# ---------------------------------------------------------------------------
# the wire: an AF_PACKET socket on the TAP, inside the namespace
# ---------------------------------------------------------------------------

WIRE_SCRIPT = r"""
import json, os, select, socket, sys
ifname = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))   # ETH_P_ALL
s.bind((ifname, 0))
mac = open(f"/sys/class/net/{ifname}/address").read().strip()
print(json.dumps({"event": "ready", "mac": mac}), flush=True)
pending = b""
while True:
    r, _, _ = select.select([s, 0], [], [])
    if s in r:
        data, addr = s.recvfrom(1 << 17)
        if addr[2] != socket.PACKET_OUTGOING:
            print(json.dumps({"event": "frame", "hex": data.hex()}), flush=True)
    if 0 in r:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            n = s.send(bytes.fromhex(line.decode()))
            print(json.dumps({"event": "sent", "bytes": n}), flush=True)
"""


class Wire:
    """The TAP's side: frames() are those the TAP received (the guest's),
    send() puts a frame on the TAP towards the guest."""

    def __init__(self, ns, ifname):
        self.lock = threading.Condition()
        self.events = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", str(ns), sys.executable, "-c", WIRE_SCRIPT, ifname],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self._wait(lambda: [e for e in self.events if e["event"] == "ready"], 20, "ready")
            self.mac = mac_bytes(ready[0]["mac"])
        except BaseException:
            self.close()
            raise

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(e)
                self.lock.notify_all()

    def _wait(self, found, timeout, what):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                v = found()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"the wire: no {what} within {timeout} s (exit {self.proc.poll()}); "
                                         f"{len(self.events)} events, last {self.events[-3:]}")
                self.lock.wait(min(left, 0.2))

    def frames(self):
        with self.lock:
            return [bytes.fromhex(e["hex"]) for e in self.events if e["event"] == "frame"]

    def mark(self):
        return len(self.frames())

    def wait_frame(self, frame, timeout=10):
        return self._wait(lambda: frame in self.frames(), timeout, f"frame {frame[:40].hex()}...")

    def send(self, frame):
        with self.lock:
            sent = sum(e["event"] == "sent" for e in self.events)
        self.proc.stdin.write(frame.hex().encode() + b"\n")
        self.proc.stdin.flush()
        self._wait(lambda: sum(e["event"] == "sent" for e in self.events) > sent, 10, "send")

    def close(self):
        kill_session(self.proc)
        self._reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# the server, its namespace, and the checks with real traffic
# ---------------------------------------------------------------------------

def log_bound(seconds):
    """Lines the token bucket lets through in `seconds`, with room for the
    suppressed-count lines (one per shown line at most) and a few others."""
    return 2 * (LOG_BURST + LOG_PER_SECOND * (seconds + 2)) + 10


class NetExport:
    """A namespace, `isolde serve` with the vhost-user-net export on a
    net-tap driver whose TAP is in it, and the Wire on that TAP. Counts
    what the test made happen, to compare with the stop summary."""

    def __init__(self, isolde):
        self.stack = ExitStack()
        self.sent = self.received = self.malformed = self.dropped = self.too_long = 0
        self.seq = 0
        try:
            self.ns = self.stack.enter_context(Namespace("vnh"))
            # The TAP inherits these: no router solicitations, no MLD, no DAD
            # frames towards the guest.
            sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
            self.dir = self.stack.enter_context(private_dir("isolde-vnh-"))
            self.sock = os.path.join(self.dir, "vn.sock")
            self.srv = self.stack.enter_context(VhostNetServed(isolde, self.ns, TAP, self.sock, "notify=event"))
            self.srv.tap.wait()
            sh("ip", "-n", self.ns, "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", TAP, "nud",
               "permanent")
            self.wire = self.stack.enter_context(Wire(self.ns, TAP))
        except BaseException:
            self.stack.close()
            raise

    def close(self):
        self.stack.close()

    # ---- the server ----
    @property
    def stderr(self):
        return self.srv.stderr

    def mark(self):
        return len(self.stderr)

    def alive(self):
        return self.srv.proc.poll() is None

    def expect_log(self, pattern, since=0, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr[since:]
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"isolde never logged /{pattern}/ (alive: {self.alive()}); its stderr "
                                     f"since:\n{text[-3000:] or '(nothing)'}")
            time.sleep(0.02)

    def assert_alive(self):
        assert self.alive(), f"isolde serve died:\n{self.stderr[-4000:]}"
        assert_no_sanitizer_report(self.stderr)

    def assert_log_bounded(self, since, seconds):
        lines = self.stderr[since:].splitlines()
        assert len(lines) <= log_bound(seconds), \
            f"{len(lines)} lines in {seconds:.1f} s, more than the token bucket lets through"
        return lines

    def client(self, timeout=10, **kw):
        """A new connection (retried while the server is still closing the last one)."""
        deadline = time.monotonic() + 10
        while True:
            c = VhostUserNet(self.sock, timeout=timeout, **kw)
            try:
                c.get_features()
                return c
            except (Closed, OSError):
                c.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        """SIGTERM; the summary's counts, which must be what the test made happen."""
        self.assert_alive()
        rc = self.srv.terminate()
        err = self.stderr
        assert rc == 0, f"isolde serve exited {rc}:\n{err[-3000:]}"
        assert_no_sanitizer_report(err)
        found = SUMMARY.findall(err)
        assert len(found) == 1, f"no (or more than one) guest summary line:\n{err[-3000:]}"
        assert not os.path.exists(self.sock), "isolde serve left its vhost-user socket behind"
        got = dict(zip(("sent", "received", "malformed", "dropped", "too_long"), map(int, found[0])))
        want = {"sent": self.sent, "received": self.received, "malformed": self.malformed,
                "dropped": self.dropped, "too_long": self.too_long}
        assert got == want, f"summary {got}, the test made {want}:\n{err[-3000:]}"
        return got

    # ---- frames ----
    def marker(self, what, n=60):
        self.seq += 1
        return f"isolde-vnh {what} {self.seq} ".encode().ljust(n, b".")

    def guest_frame(self, n=64):
        """A frame from the guest nobody on the TAP answers (broadcast, local ethertype)."""
        return eth_frame(BROADCAST, GUEST, ETH_P_EXPERIMENTAL, self.marker("tx", n - 14))

    def check_tx(self, c, hdr=None, frame=None):
        """A frame sent on TX comes back with used length 0 and arrives on the TAP as it was."""
        frame = self.guest_frame() if frame is None else frame
        chain = c.send_frame(frame, hdr=hdr)
        assert chain.used_len == 0, chain
        self.sent += 1
        self.wire.wait_frame(frame)
        return frame

    def check_rx(self, c, size=2048, segs=1):
        """One buffer posted, one frame sent on the TAP: the frame lands in
        it with a valid header, used length 12 + its length, and nothing else
        in guest memory changes."""
        frame = eth_frame(GUEST, self.wire.mac, ETH_P_EXPERIMENTAL, self.marker("rx"))
        chain = c.post_rx(size, segs=segs)
        snap = c.mem.snapshot()
        self.wire.send(frame)
        allowed = chain.in_bufs + [c.rx.used_ring]
        wait_used(c.rx, chain, lambda: assert_changes_within(c, snap, allowed))
        assert chain.used_len == HDR + len(frame), chain
        self.received += 1
        assert_rx_header(chain.data[:HDR])
        assert chain.data[HDR:HDR + len(frame)] == frame
        assert chain.data[HDR + len(frame):] == b"\x5a" * (size - HDR - len(frame)), "written past the frame"
        assert not c.rx.bogus and not c.tx.bogus
        assert c.mem.canaries_intact() == []
        return frame

    def check_traffic(self, c):
        self.check_tx(c)
        self.check_rx(c)

    def check_fresh_connection(self):
        """A new front end does the handshake and passes traffic both ways."""
        self.assert_alive()
        with self.client() as c:
            c.handshake()
            self.check_traffic(c)
        self.assert_alive()


def wait_used(ring, chain, before_reap=None, timeout=10):
    """Wait for the used index to move; call before_reap() (to compare
    guest memory before the front end releases the buffers); then reap, and
    return chain, which must be what came back."""
    deadline = time.monotonic() + timeout
    while ring.used_idx() == ring.last_used:
        if time.monotonic() > deadline:
            raise AssertionError(f"queue {ring.index}: nothing came back within {timeout} s: {chain}")
        time.sleep(0.001)
    if before_reap:
        before_reap()
    ring.reap()
    assert chain.done, f"queue {ring.index}: another head came back: {ring.bogus}"
    return chain


def assert_changes_within(c, snap, allowed):
    changes = c.mem.changes_since(snap)
    outside = [(o, n) for o, n in changes
               if not any(a <= o and o + n <= a + length for a, length in allowed)]
    assert not outside, f"guest memory changed outside what the device may write: {outside[:8]} " \
                        f"(allowed {allowed})"


def assert_rx_header(raw):
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers = NET_HDR.unpack(raw)
    assert flags & ~HDR_F_DATA_VALID == 0 and gso_type == GSO_NONE and gso_size == 0 and num_buffers == 1, \
        NET_HDR.unpack(raw)


@pytest.fixture
def export(isolde):
    with ExitStack() as stack:
        e = NetExport(isolde)
        stack.callback(e.close)
        yield e


@pytest.fixture
def export_any(any_isolde):
    """The same on the normal and the ASan build."""
    with ExitStack() as stack:
        e = NetExport(any_isolde)
        stack.callback(e.close)
        yield e
        assert_no_sanitizer_report(e.stderr)


# ---------------------------------------------------------------------------
# the test's own footing: real traffic through the kernel's IP stack
# ---------------------------------------------------------------------------

def ip_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(dst_mac, dst_ip, payload, sport=40000, dport=9):
    """An IPv4/UDP frame from the guest, its UDP checksum left to the device
    (the pseudo-header sum in place, as NEEDS_CSUM wants it)."""
    src, dst = socket.inet_aton(GUEST_IP), socket.inet_aton(dst_ip)
    ulen = 8 + len(payload)
    pseudo = ~ip_checksum(src + dst + struct.pack("!BBH", 0, 17, ulen)) & 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, pseudo) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0x4000, 64, 17, 0, src, dst))
    ip[10:12] = struct.pack("!H", ip_checksum(bytes(ip)))
    return eth_frame(dst_mac, GUEST, 0x0800, bytes(ip) + udp)


def arp_request(sender_ip, target_ip):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST, socket.inet_aton(sender_ip), bytes(6),
                       socket.inet_aton(target_ip))
    return eth_frame(BROADCAST, GUEST, 0x0806, body)


def echo_reply_to(request):
    """The guest's answer to the ICMP echo request frame `request`."""
    ip = request[14:]
    ihl = (ip[0] & 0xF) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    icmp = bytearray(ip[ihl:total])
    icmp[0] = 0                      # echo reply
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", ip_checksum(bytes(icmp)))
    hdr = bytearray(ip[:ihl])
    hdr[8] = 64
    hdr[10:12] = b"\0\0"
    hdr[12:16], hdr[16:20] = ip[16:20], ip[12:16]
    hdr[10:12] = struct.pack("!H", ip_checksum(bytes(hdr)))
    return eth_frame(request[6:12], GUEST, 0x0800, bytes(hdr) + bytes(icmp))


def test_real_traffic_through_the_ip_stack(export):
    """The harness itself, with the namespace's IP stack at the other end:
    the guest's ARP request is answered into an RX buffer, and the
    namespace's ping of the guest gets the guest's echo reply (sent on TX)."""
    e = export
    with e.client() as c:
        c.handshake()
        rx = c.post_rx()
        arp = arp_request(GUEST_IP, PEER_IP)
        c.send_frame(arp)
        e.sent += 1
        e.wire.wait_frame(arp)
        rx = wait_used(c.rx, rx)
        e.received += 1
        frame = rx.data[HDR:rx.used_len]
        assert_rx_header(rx.data[:HDR])
        assert rx.used_len == HDR + 42, rx
        assert frame[:6] == GUEST and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02", frame.hex()
        assert frame[28:32] == socket.inet_aton(PEER_IP) and frame[38:42] == socket.inet_aton(GUEST_IP)

        rx = c.post_rx()
        ping = subprocess.Popen(["ip", "netns", "exec", str(e.ns), "ping", "-n", "-c1", "-W5", GUEST_IP],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            rx = wait_used(c.rx, rx)
            e.received += 1
            req = rx.data[HDR:rx.used_len]
            assert req[:6] == GUEST and req[12:14] == b"\x08\x00" and req[23] == 1 and req[34] == 8, req.hex()
            assert rx.used_len == HDR + 14 + struct.unpack("!H", req[16:18])[0], rx
            c.send_frame(echo_reply_to(req))
            e.sent += 1
            out, _ = ping.communicate(timeout=10)
            assert ping.returncode == 0, f"ping of the guest: {out}"
        finally:
            kill_session(ping)
        e.check_traffic(c)
    e.stop()


# ---------------------------------------------------------------------------
# TX: chains that are not frames
# ---------------------------------------------------------------------------

def outside(c):
    """A guest-physical address past the end of guest memory."""
    return c.mem.gpa_of(c.mem.size) + 0x10000


def raw_tx(c, descs, **kw):
    return c.tx.submit(descs, **kw)


def frame_of(n, fill=b"m"):
    return eth_frame(BROADCAST, GUEST, ETH_P_EXPERIMENTAL, fill * (n - 14))


def good(c):
    """A heap buffer holding a header and a 64-byte frame."""
    off, ch = c.buffer(net_hdr() + frame_of(64))
    return off, ch


def _all_writable(c):
    off, ch = good(c)
    chain = raw_tx(c, [Desc(c.mem.gpa_of(off), HDR + 64, DESC_F_WRITE)], chunks=[ch], in_bufs=[(off, HDR + 64)],
                   publish=False)
    chain.held = c.mem.read(off, HDR + 64)
    c.tx.publish([chain.head])
    return chain


def _second_outside(c):
    off, ch = c.buffer(net_hdr())
    return raw_tx(c, [Desc(c.mem.gpa_of(off), HDR, DESC_F_NEXT), Desc(outside(c), 64, 0)], chunks=[ch])


def _at(addr, length):
    return lambda c: raw_tx(c, [Desc(addr(c) if callable(addr) else addr, length, 0)])


def _with_hdr(n=64, **fields):
    return lambda c: c.tx_chain(net_hdr(**fields) + frame_of(n))


CSUM = HDR_F_NEEDS_CSUM
NOT_NEGOTIATED = r"an offload the guest did not negotiate"
NOT_CARRIED = r"an offload the device does not carry"      # what isolde_netif_offload_check refuses
TSO = dict(flags=CSUM, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)

# name: (make the chain on c's TX ring, what the log line says about it)
TX_NOT_A_FRAME = {
    "header-only": (lambda c: c.tx_chain(net_hdr()), r"12 bytes, shorter than a header"),
    "header-cut": (lambda c: c.tx_chain(net_hdr()[:8]), r"8 bytes, shorter than a header"),
    "frame-of-13-bytes": (lambda c: c.tx_chain(net_hdr() + frame_of(64)[:13]), r"25 bytes, shorter"),
    "13-bytes-in-3-pieces": (lambda c: c.tx_chain(net_hdr() + frame_of(64)[:13], segs=3), r"25 bytes, shorter"),
    "empty-descriptor": (lambda c: c.tx_chain(b""), r"0 bytes, shorter"),
    "indirect-short": (lambda c: c.tx_chain(net_hdr() + frame_of(64)[:10], segs=2, indirect=True),
                       r"22 bytes, shorter"),
    "past-max-frame": (lambda c: c.tx_chain(net_hdr() + frame_of(MAX_FRAME + 1)),
                       rf"is longer than {FRAME_BUF} bytes"),
    "past-max-frame-in-4-pieces": (lambda c: c.tx_chain(net_hdr() + frame_of(MAX_FRAME + 1), segs=4),
                                   rf"is longer than {FRAME_BUF} bytes"),
    "100000-bytes": (lambda c: c.tx_chain(net_hdr() + frame_of(100000)), rf"is longer than {FRAME_BUF} bytes"),
    "writable-trailer": (lambda c: c.tx_chain(net_hdr() + frame_of(64), writable=64),
                         r"has 1 device-writable segments"),
    "indirect-writable-trailer": (lambda c: c.tx_chain(net_hdr() + frame_of(64), segs=2, writable=64,
                                                       indirect=True), r"has 1 device-writable segments"),
    "all-writable": (_all_writable, r"has 1 device-writable segments"),
    "past-guest-memory": (_at(outside, HDR + 64), r"is not in guest memory"),
    "below-guest-memory": (_at(0x1000, HDR + 64), r"is not in guest memory"),
    "across-end-of-memory": (_at(lambda c: c.mem.gpa_of(c.mem.size) - 32, HDR + 64), r"is not in guest memory"),
    "address-wraps": (_at(2**64 - 16, HDR + 64), r"is not in guest memory"),
    "4-GiB-long": (_at(lambda c: c.mem.gpa_of(c.mem.heap_off), 0xFFFFFFFF), r"is not in guest memory"),
    "second-piece-outside": (_second_outside, r"is not in guest memory"),
    # offloads this guest did not negotiate (it took none), and ones no device has
    "needs-csum-not-negotiated": (_with_hdr(flags=CSUM, csum_start=14, csum_offset=4), NOT_NEGOTIATED),
    "tso4-not-negotiated": (_with_hdr(2000, gso_type=GSO_TCPV4, **TSO), NOT_NEGOTIATED),
    "tso6-not-negotiated": (_with_hdr(2000, gso_type=GSO_TCPV6, **TSO), NOT_NEGOTIATED),
    "gso-ecn-alone": (_with_hdr(gso_type=GSO_ECN), NOT_NEGOTIATED),
    "unknown-flag": (_with_hdr(flags=0x4), NOT_CARRIED),
    "gso-udp": (_with_hdr(2000, gso_type=GSO_UDP, hdr_len=42, gso_size=1448), NOT_CARRIED),
    "gso-size-without-gso": (_with_hdr(gso_size=1000), NOT_CARRIED),
    "hdr-len-past-frame": (_with_hdr(hdr_len=65), NOT_CARRIED),
}

# With checksum and TSO negotiated: offloads that do not fit the frame.
TX_BAD_OFFLOAD = {
    "csum-start-past-frame": (_with_hdr(flags=CSUM, csum_start=64, csum_offset=0), NOT_CARRIED),
    "csum-offset-past-frame": (_with_hdr(flags=CSUM, csum_start=14, csum_offset=49), NOT_CARRIED),
    "csum-start-at-65535": (_with_hdr(flags=CSUM, csum_start=0xFFFF, csum_offset=0xFFFF), NOT_CARRIED),
    "hdr-len-past-frame": (_with_hdr(flags=CSUM, csum_start=14, csum_offset=4, hdr_len=65), NOT_CARRIED),
    "tso4-without-csum": (_with_hdr(2000, gso_type=GSO_TCPV4, hdr_len=54, gso_size=1448), NOT_CARRIED),
    "tso4-gso-size-0": (_with_hdr(2000, gso_type=GSO_TCPV4, **dict(TSO, gso_size=0)), NOT_CARRIED),
    "tso6-hdr-len-past-frame": (_with_hdr(2000, gso_type=GSO_TCPV6, **dict(TSO, hdr_len=2001)), NOT_CARRIED),
    "gso-udp": (_with_hdr(2000, gso_type=GSO_UDP, **TSO), NOT_CARRIED),
    "unknown-flag": (_with_hdr(flags=CSUM | 0x80, csum_start=14, csum_offset=4), NOT_CARRIED),
    "tso4-with-ecn": (_with_hdr(2000, gso_type=GSO_TCPV4 | GSO_ECN, **TSO), NOT_NEGOTIATED),   # HOST_ECN: never offered
}


def send_not_frames(e, c, cases):
    """Each case's chain, one at a time: its head comes back with used
    length 0, its device-writable bytes untouched, one log line naming its
    head and what is wrong, nothing on the TAP."""
    wire_mark = e.wire.mark()
    for name, (make, says) in cases.items():
        mark = e.mark()
        chain = make(c)
        c.tx.wait([chain])
        e.malformed += 1
        assert chain.used_len == 0, (name, chain)
        held = getattr(chain, "held", b"\xa5" * sum(n for _, n in chain.in_bufs))
        assert chain.data == held, f"{name}: a TX buffer was written"
        e.expect_log(rf"{TX_LINE} {chain.head}\b[^\n]*{says}", since=mark)
        assert len(re.findall(TX_LINE, e.stderr[mark:])) == 1, f"{name}:\n{e.stderr[mark:]}"
        assert not c.tx.bogus, c.tx.bogus
    assert c.mem.canaries_intact() == []
    # a good frame after them, in ring order: the only one on the TAP
    frame = e.check_tx(c)
    assert e.wire.frames()[wire_mark:] == [frame], "a refused chain reached the TAP"


def test_tx_chains_that_are_not_frames(export_any):
    e = export_any
    start, mark = time.monotonic(), e.mark()
    with e.client() as c:
        c.handshake()                       # no offloads
        e.check_traffic(c)
        send_not_frames(e, c, TX_NOT_A_FRAME)
        e.check_traffic(c)
    with e.client() as c:
        c.handshake(offloads=[NET_F_CSUM, NET_F_HOST_TSO4, NET_F_HOST_TSO6])
        # a checksum offload that fits goes out (the refusals are about fit):
        # UDP to an address nobody has (the namespace does not forward, nor answer)
        e.check_tx(c, hdr=net_hdr(flags=CSUM, csum_start=34, csum_offset=6),
                   frame=udp_frame(e.wire.mac, "10.77.0.99", e.marker("csum", 40)))
        send_not_frames(e, c, TX_BAD_OFFLOAD)
        e.check_traffic(c)
    lines = e.assert_log_bounded(mark, time.monotonic() - start)
    assert "suppressed" not in e.stderr[mark:], "fewer lines than the burst were suppressed"
    assert sum(TX_LINE in line for line in lines) == len(TX_NOT_A_FRAME) + len(TX_BAD_OFFLOAD)
    e.check_fresh_connection()
    got = e.stop()
    assert got["malformed"] == len(TX_NOT_A_FRAME) + len(TX_BAD_OFFLOAD)


def test_malformed_tx_flood_is_rate_limited(export_any):
    """6000 malformed chains as fast as the export answers them: stderr
    grows by what the token bucket allows; shown and suppressed lines add up
    to exactly what was sent, and the summary counts every one."""
    e = export_any
    kinds = [lambda c: c.tx_chain(net_hdr()),
             lambda c: c.tx_chain(net_hdr() + frame_of(64), writable=16),
             lambda c: raw_tx(c, [Desc(outside(c), HDR + 64, 0)]),
             lambda c: c.tx_chain(net_hdr(gso_type=GSO_UDP) + frame_of(64))]
    mark, sent = e.mark(), 0
    with e.client(timeout=30) as c:
        c.handshake(queue_size=1024)
        e.check_traffic(c)
        start = time.monotonic()
        while sent < 6000:
            chains = [kinds[(sent + i) % len(kinds)](c) for i in range(500)]
            c.tx.wait(chains)
            assert all(ch.used_len == 0 for ch in chains)
            sent += len(chains)
        seconds = time.monotonic() - start
        time.sleep(1.0)            # credit for one more line, which reports the suppressed count
        last = c.tx_chain(net_hdr() + b"x")
        c.tx.wait([last])
        sent += 1
        e.malformed += sent
        pat = re.compile(rf"\d+ messages suppressed\n[^\n]*{TX_LINE} {last.head}: 13 bytes, shorter")
        e.expect_log(pat.pattern, since=mark)
        log = e.stderr[mark:]
        assert not c.tx.bogus
        e.check_traffic(c)
        e.assert_alive()
    lines = log.splitlines()
    shown = [line for line in lines if TX_LINE in line]
    suppressed = sum(int(m) for m in re.findall(r"(\d+) messages suppressed", log))
    print(f"{sent} malformed chains in {seconds:.1f} s: {len(lines)} lines, {suppressed} suppressed")
    assert len(lines) <= log_bound(seconds + 1), f"{len(lines)} lines for {sent} chains in {seconds:.1f} s"
    assert len(shown) + suppressed == sent, f"{len(shown)} shown + {suppressed} suppressed != {sent} sent"
    e.check_fresh_connection()
    e.stop()


# ---------------------------------------------------------------------------
# RX: buffers the device cannot write, and buffers too small
# ---------------------------------------------------------------------------

def _rx_readable(c):
    off, ch = c.buffer(length=2048, fill=0x5A)
    return c.rx.submit([Desc(c.mem.gpa_of(off), 2048, 0)], chunks=[ch]), "has device-readable segments"


def _rx_readable_then_writable(c):
    a, cha = c.buffer(length=HDR, fill=0x5A)
    b, chb = c.buffer(length=2048, fill=0x5A)
    return c.rx.submit([Desc(c.mem.gpa_of(a), HDR, DESC_F_NEXT), Desc(c.mem.gpa_of(b), 2048, DESC_F_WRITE)],
                       chunks=[cha, chb], in_bufs=[(b, 2048)]), "has device-readable segments"


def _rx_indirect_readable(c):
    off, ch = c.buffer(length=2048, fill=0x5A)
    return c.rx.submit([Desc(c.mem.gpa_of(off), 2048, 0)], chunks=[ch], indirect=True), \
        "has device-readable segments"


def _rx_outside(c):
    return c.rx.submit([Desc(outside(c), 2048, DESC_F_WRITE)]), "is not in guest memory"


def _rx_writable_then_outside(c):
    """Room for the header in guest memory, the frame's part outside: not a byte may be written."""
    off, ch = c.buffer(length=64, fill=0x5A)
    return c.rx.submit([Desc(c.mem.gpa_of(off), 64, DESC_F_WRITE | DESC_F_NEXT), Desc(outside(c), 2048,
                                                                                        DESC_F_WRITE)],
                       chunks=[ch], in_bufs=[(off, 64)]), "is not in guest memory"


RX_UNWRITABLE = {
    "readable": _rx_readable,
    "readable-then-writable": _rx_readable_then_writable,
    "indirect-readable": _rx_indirect_readable,
    "outside-memory": _rx_outside,
    "writable-then-outside": _rx_writable_then_outside,
}


def test_rx_buffers_the_device_cannot_write(export_any):
    """Each on a fresh connection, as the only RX buffer when a frame
    arrives: refused and logged, the queue stops (no used entry), guest
    memory unchanged; the frame is dropped. After SET_VRING_KICK restarts
    the queue, a good buffer receives the next frame."""
    e = export_any
    start, mark0 = time.monotonic(), e.mark()
    for name, make in RX_UNWRITABLE.items():
        with e.client() as c:
            c.handshake()
            e.check_tx(c)
            mark = e.mark()
            bad, says = make(c)
            snap = c.mem.snapshot()
            used = c.rx.used_idx()
            e.wire.send(eth_frame(GUEST, e.wire.mac, ETH_P_EXPERIMENTAL, e.marker("rx-refused")))
            e.dropped += 1
            e.expect_log(rf"queue 0: buffer at descriptor {bad.head}: [^\n]*{says}", since=mark)
            e.expect_log(r"queue 0: request at descriptor \d+: [^\n]*; the queue stops until the front end "
                         r"resets it", since=mark)
            time.sleep(0.05)
            assert c.rx.used_idx() == used, f"{name}: the refused buffer came back on the used ring"
            # the used ring's flags are the device's to write; nothing else
            assert_changes_within(c, snap, [(c.rx.used_off, 2), (c.tx.used_off, 2)])
            assert c.mem.canaries_intact() == []
            c.rx.forget(bad)
            # the queue is stopped: a good buffer gets nothing ...
            parked = c.post_rx()
            e.wire.send(eth_frame(GUEST, e.wire.mac, ETH_P_EXPERIMENTAL, e.marker("rx-parked")))
            time.sleep(0.1)
            assert c.rx.used_idx() == used and not parked.done, f"{name}: the stopped queue received"
            # ... until the front end restarts it: then the frame that waited lands
            c.restart_queue(RX_QUEUE)
            wait_used(c.rx, parked)
            e.received += 1
            assert parked.used_len > HDR and b"rx-parked" in parked.data[:parked.used_len], parked
            e.check_traffic(c)
            assert not c.rx.bogus
    e.assert_log_bounded(mark0, time.monotonic() - start)
    e.check_fresh_connection()
    e.stop()


def test_rx_buffer_too_small_comes_back_empty(export_any):
    """A buffer one byte short of header + frame is answered with used
    length 0 and not written (the frame is dropped, counted too long); one
    of exactly header + frame, and one whose header is spread over three
    segments, receive the frame whole."""
    e = export_any
    with e.client() as c:
        c.handshake()
        frame = eth_frame(GUEST, e.wire.mac, ETH_P_EXPERIMENTAL, e.marker("rx-small"))
        for size in (HDR - 1, HDR, HDR + len(frame) - 1):
            small = c.post_rx(size)
            snap = c.mem.snapshot()
            e.wire.send(frame)
            wait_used(c.rx, small, lambda: assert_changes_within(c, snap, [c.rx.used_ring]))
            assert small.used_len == 0, small
            assert small.data == b"\x5a" * size, f"a {size}-byte buffer was written"
            e.dropped += 1
            e.too_long += 1
        e.check_rx(c, size=HDR + 60 + 14)       # exactly header + frame
        e.check_rx(c, size=HDR + 200, segs=1)
        # header spread over segments of 5, 7 and the rest
        frame = eth_frame(GUEST, e.wire.mac, ETH_P_EXPERIMENTAL, e.marker("rx-split"))
        descs, chunks, bufs = [], [], []
        for n in (5, 7, 500):
            off, ch = c.buffer(length=n, fill=0x5A)
            descs.append(Desc(c.mem.gpa_of(off), n, DESC_F_WRITE | DESC_F_NEXT))
            chunks.append(ch)
            bufs.append((off, n))
        descs[-1].flags = DESC_F_WRITE
        split = c.rx.submit(descs, chunks=chunks, in_bufs=bufs)
        snap = c.mem.snapshot()
        e.wire.send(frame)
        wait_used(c.rx, split, lambda: assert_changes_within(c, snap, bufs + [c.rx.used_ring]))
        e.received += 1
        assert split.used_len == HDR + len(frame)
        assert_rx_header(split.data[:HDR])
        assert split.data[HDR:HDR + len(frame)] == frame
        e.check_traffic(c)
    e.check_fresh_connection()
    e.stop()


# ---------------------------------------------------------------------------
# queue indexes the device does not have
# ---------------------------------------------------------------------------

NEED = VERSION | FLAG_NEED_REPLY

# (request, send it about queue q on connection c); REPLY_ACK is negotiated,
# so a refusal could also be a "no": what comes instead is checked.
QUEUE_MESSAGES = [
    ("SET_VRING_NUM", lambda c, q: c.send(SET_VRING_NUM, VRING_STATE.pack(q, 256), flags=NEED)),
    ("SET_VRING_ADDR", lambda c, q: c.send(SET_VRING_ADDR, VRING_ADDR.pack(q, 0, *c.tx.addrs(), 0), flags=NEED)),
    ("SET_VRING_BASE", lambda c, q: c.send(SET_VRING_BASE, VRING_STATE.pack(q, 0), flags=NEED)),
    ("GET_VRING_BASE", lambda c, q: c.send(GET_VRING_BASE, VRING_STATE.pack(q, 0))),
    ("SET_VRING_KICK", lambda c, q: c.send(SET_VRING_KICK, U64.pack(q), fds=[c.tx.kick_fd], flags=NEED)),
    ("SET_VRING_KICK", lambda c, q: c.send(SET_VRING_KICK, U64.pack(q | VRING_NOFD), flags=NEED)),
    ("SET_VRING_CALL", lambda c, q: c.send(SET_VRING_CALL, U64.pack(q), fds=[c.tx.call_fd], flags=NEED)),
    ("SET_VRING_ERR", lambda c, q: c.send(SET_VRING_ERR, U64.pack(q | VRING_NOFD), flags=NEED)),
    ("SET_VRING_ENABLE", lambda c, q: c.send(SET_VRING_ENABLE, VRING_STATE.pack(q, 1), flags=NEED)),
]


@pytest.mark.parametrize("queue", [2, 7, 8, 255])
def test_queue_index_out_of_range(export_any, queue):
    """Every vring message about queue 2 (the first past the two the device
    has), 7 and 8 (the end of the server's 8 slots) and 255 (the most the
    fd messages can name), each on a connection whose queues run: refused
    with a log line naming the index, the connection closed; a new one
    passes traffic."""
    e = export_any
    start, mark0 = time.monotonic(), e.mark()
    for what, send in QUEUE_MESSAGES:
        with e.client() as c:
            c.handshake()
            assert c.num_queues == 2
            e.check_tx(c)
            mark = e.mark()
            send(c, queue)
            closed = c.wait_eof(timeout=5)
            e.expect_log(rf"{what}: queue index {queue} out of range \(2 queues\); closing the connection",
                         since=mark)
            assert closed, f"{what} for queue {queue}: the connection stayed open"
            assert not getattr(c, "unexpected", []), f"{what}: a reply came: {c.unexpected}"
        e.assert_alive()
    e.assert_log_bounded(mark0, time.monotonic() - start)
    e.check_fresh_connection()
    e.stop()


# ---------------------------------------------------------------------------
# the config space it does not have
# ---------------------------------------------------------------------------

def test_get_config_is_refused(export_any):
    e = export_any
    with e.client() as c:
        c.set_owner()
        prot = c.get_protocol_features()
        assert not prot & bit(PROTOCOL_F_CONFIG), f"PROTOCOL_F_CONFIG offered: {prot:#x}"
        assert prot & bit(PROTOCOL_F_MQ) and prot & bit(PROTOCOL_F_REPLY_ACK), f"{prot:#x}"
        # taking it anyway is a protocol error: the connection ends
        mark = e.mark()
        c.send(SET_PROTOCOL_FEATURES, U64.pack(prot | bit(PROTOCOL_F_CONFIG)))
        assert c.wait_eof(timeout=5), "SET_PROTOCOL_FEATURES with CONFIG kept the connection"
        e.expect_log(r"SET_PROTOCOL_FEATURES: protocol features 0x200 were not offered", since=mark)
    e.assert_alive()
    with e.client() as c:
        c.handshake()
        e.check_traffic(c)
        for flags in (VERSION | FLAG_NEED_REPLY, VERSION):
            for size in (12, 256):
                mark = e.mark()
                c.send(GET_CONFIG, CONFIG_HDR.pack(0, size - CONFIG_HDR.size, 0) + bytes(size - CONFIG_HDR.size),
                       flags=flags)
                r = c.recv_reply(timeout=5)     # a reply, even without NEED_REPLY
                assert r.request == GET_CONFIG, r
                # the refusal is a reply with no config at all (as libvhost-user's)
                assert r.payload == b"", r
                e.expect_log(r"GET_CONFIG: refused: the device has no config space", since=mark)
        # the connection goes on
        assert c.call(GET_PROTOCOL_FEATURES, reply=True).u64 == prot
        e.check_traffic(c)
    e.check_fresh_connection()
    e.stop()
