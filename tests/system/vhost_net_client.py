"""A vhost-user-net front end in pure Python: it plays QEMU's part against a
vhost-user-net back end with two queues (virtio-net without the control
queue or multiqueue), so that system tests can drive `isolde serve`'s
vhost-user-net export without a guest, and send it what QEMU never would.

The message layer, guest memory and descriptor helpers are
vhost_user_client.py's (VhostUserBlk, GuestMemory, Desc); here are the
network device's features and its two split rings:

    queue 0 (RX)  the guest posts device-writable buffers; the device writes
                  a 12-byte virtio_net_hdr_v1 and a frame from the wire in
                  one, and puts it on the used ring with the bytes written
    queue 1 (TX)  the guest posts device-readable chains: a 12-byte
                  virtio_net_hdr_v1 {flags u8, gso_type u8, hdr_len u16,
                  gso_size u16, csum_start u16, csum_offset u16,
                  num_buffers u16} followed by an Ethernet frame

Layout of guest memory (offsets from the start of the memfd): queue 0's
descriptor table, available and used rings, then queue 1's, then the heap
(buffers and indirect tables; its free part holds CANARY bytes)."""
import os
import select
import struct
import time

from vhost_user_client import (DESC, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, F_PROTOCOL_FEATURES, F_VERSION_1,
                               GET_QUEUE_NUM, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK, RING_F_EVENT_IDX,
                               RING_F_INDIRECT_DESC, Desc, VhostUserBlk, VhostUserError, bit)

MiB = 1 << 20

# virtio-net feature bits (virtio 1.x, 5.1.3)
NET_F_CSUM = 0
NET_F_GUEST_CSUM = 1
NET_F_MAC = 5
NET_F_GUEST_TSO4 = 7
NET_F_GUEST_TSO6 = 8
NET_F_HOST_TSO4 = 11
NET_F_HOST_TSO6 = 12
NET_F_MRG_RXBUF = 15
NET_F_CTRL_VQ = 17
NET_F_MQ = 22
NET_OFFLOADS = [NET_F_CSUM, NET_F_GUEST_CSUM, NET_F_GUEST_TSO4, NET_F_GUEST_TSO6, NET_F_HOST_TSO4,
                NET_F_HOST_TSO6]

# struct virtio_net_hdr_v1 (VIRTIO_F_VERSION_1: num_buffers is always there)
NET_HDR = struct.Struct("<BBHHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
HDR_F_NEEDS_CSUM = 1
HDR_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

RX_QUEUE = 0
TX_QUEUE = 1
MAX_FRAME = 65535 + 14 + 4          # include/isolde/netif.h ISOLDE_NETIF_MAX_FRAME
MIN_FRAME = 14                      # ISOLDE_NETIF_MIN_FRAME: an Ethernet header
BROADCAST = b"\xff" * 6
ETH_P_EXPERIMENTAL = 0x88B5         # IEEE 802 local experimental: no stack answers it


def mac_bytes(text):
    return bytes(int(x, 16) for x in text.split(":"))


def net_hdr(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, num_buffers=0):
    return NET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)


def eth_frame(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


class Chain:
    """One descriptor chain on a ring: its slots, the heap pieces it holds,
    and (offset, length) of its device-writable buffers."""

    def __init__(self, ring, head, slots, chunks, in_bufs, kind):
        self.ring, self.head, self.slots, self.chunks = ring, head, slots, chunks
        self.in_bufs = list(in_bufs)
        self.kind = kind
        self.done = False
        self.used_len = None
        self.data = None            # what the device-writable buffers held when it came back

    def __repr__(self):
        return f"Chain(queue {self.ring.index}, head={self.head}, kind={self.kind}, done={self.done}, " \
               f"used_len={self.used_len})"


class Ring:
    """One split virtqueue, the driver's side, at `base` in guest memory,
    with its own kick and call eventfds. The guest kicks after every publish
    (a spurious kick is allowed; a missing one would be the test's fault)."""

    def __init__(self, client, index, size, base):
        self.client, self.mem, self.index, self.size = client, client.mem, index, size
        page = lambda n: -(-n // 4096) * 4096  # noqa: E731
        self.desc_off = base
        self.avail_off = base + page(16 * size)
        self.used_off = self.avail_off + page(6 + 2 * size)
        self.end = self.used_off + page(6 + 8 * size)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.reset()

    def reset(self, base_idx=0):
        self.mem.write(self.desc_off, bytes(self.end - self.desc_off))
        self.free_descs = list(range(self.size))
        self.avail_idx = self.last_used = base_idx & 0xFFFF
        self.mem.put_u16(self.avail_off + 2, self.avail_idx)
        self.mem.put_u16(self.used_off + 2, self.last_used)
        self.inflight = {}
        self.bogus = []
        self.calls = 0

    def close(self):
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1

    def addrs(self):
        """(desc, used, avail) as front-end user addresses for SET_VRING_ADDR."""
        m = self.mem
        return m.uaddr_of(self.desc_off), m.uaddr_of(self.used_off), m.uaddr_of(self.avail_off)

    @property
    def used_ring(self):
        """(offset, length) of the used ring: flags, idx, entries, avail_event."""
        return self.used_off, 6 + 8 * self.size

    # ---- chains ----
    def submit(self, descs, chunks=(), in_bufs=(), indirect=False, table_len=None, kind="raw", publish=True):
        """Put a chain of Desc on the ring, in the descriptor table or (indirect)
        in a table in guest memory named by one INDIRECT descriptor."""
        chunks = list(chunks)
        if indirect:
            toff, tchunk = self.client.buffer(length=max(16, 16 * len(descs)), fill=0)
            chunks.append(tchunk)
            for i, d in enumerate(descs):
                self.mem.write(toff + 16 * i, DESC.pack(d.addr & (2**64 - 1), d.len, d.flags,
                                                        self._next(d, i, list(range(len(descs))))))
            outer = [Desc(self.mem.gpa_of(toff), 16 * len(descs) if table_len is None else table_len,
                          DESC_F_INDIRECT)]
        else:
            outer = descs
        if len(outer) > len(self.free_descs):
            raise VhostUserError(f"queue {self.index}: {len(outer)} descriptors wanted, "
                                 f"{len(self.free_descs)} free")
        slots = [self.free_descs.pop(0) for _ in outer]
        for i, d in enumerate(outer):
            self.mem.write(self.desc_off + 16 * slots[i],
                           DESC.pack(d.addr & (2**64 - 1), d.len & 0xFFFFFFFF, d.flags, self._next(d, i, slots)))
        chain = Chain(self, slots[0], slots, chunks, in_bufs, kind)
        self.inflight[chain.head] = chain
        if publish:
            self.publish([chain.head])
        return chain

    _next = staticmethod(VhostUserBlk._resolve_next)

    def publish(self, heads, kick=True):
        for h in heads:
            self.mem.put_u16(self.avail_off + 4 + 2 * (self.avail_idx % self.size), h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.put_u16(self.avail_off + 2, self.avail_idx)   # x86: stores are not reordered
        if kick:
            self.kick()

    def kick(self):
        os.eventfd_write(self.kick_fd, 1)

    def used_idx(self):
        return self.mem.u16(self.used_off + 2)

    def reap(self):
        """Take every new used entry; returns the chains completed."""
        done = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.last_used % self.size
            uid, ulen = struct.unpack_from("<II", self.mem.mm, self.used_off + 4 + 8 * slot)
            self.last_used = (self.last_used + 1) & 0xFFFF
            chain = self.inflight.pop(uid, None)
            if chain is None:
                self.bogus.append((uid, ulen))
                continue
            chain.done, chain.used_len = True, ulen
            chain.data = b"".join(self.mem.read(o, n) for o, n in chain.in_bufs)
            self._release(chain)
            done.append(chain)
        try:
            self.calls += os.eventfd_read(self.call_fd)
        except BlockingIOError:
            pass
        return done

    def _release(self, chain):
        for off, sz in chain.chunks:
            self.mem.release(off, sz)
        for s in chain.slots:
            self.mem.write(self.desc_off + 16 * s, bytes(16))
        self.free_descs.extend(chain.slots)

    def forget(self, chain):
        """A chain the device dropped without answering (its queue broke):
        its descriptors and buffers are ours again."""
        if self.inflight.pop(chain.head, None) is chain:
            self._release(chain)

    def wait(self, chains, timeout=None):
        """Wait until every chain is complete (polling the used ring)."""
        timeout = self.client.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if all(c.done for c in chains):
                return chains
            left = deadline - time.monotonic()
            if left <= 0:
                pending = [c for c in chains if not c.done]
                raise TimeoutError(f"queue {self.index}: {len(pending)} of {len(chains)} chains not answered "
                                   f"within {timeout} s: {pending[:4]} (used idx {self.used_idx()}, last used "
                                   f"{self.last_used}, avail idx {self.avail_idx})")
            select.select([self.call_fd], [], [], min(left, 0.005))


class VhostUserNet(VhostUserBlk):
    """One connection to a vhost-user-net back end and its two queues.

    c = VhostUserNet(path); c.handshake(); c.send_frame(frame); c.post_rx()
    """

    def __init__(self, path, timeout=10, mem_size=16 * MiB, **kw):
        self.rings = []
        super().__init__(path, timeout=timeout, mem_size=mem_size, **kw)

    def close(self):
        for r in self.rings:
            r.close()
        super().close()

    @property
    def rx(self):
        return self.rings[RX_QUEUE]

    @property
    def tx(self):
        return self.rings[TX_QUEUE]

    # ---- the setup, in QEMU's order ----
    def negotiate(self, offloads=(), indirect=True, event_idx=False):
        """SET_OWNER, features (VERSION_1, and the offloads named if offered),
        protocol features (MQ, REPLY_ACK), queue count."""
        self.set_owner()
        offered = self.get_features()
        want = bit(F_VERSION_1) | sum(bit(b) for b in offloads)
        if indirect:
            want |= bit(RING_F_INDIRECT_DESC)
        if event_idx:
            want |= bit(RING_F_EVENT_IDX)
        if offered & bit(F_PROTOCOL_FEATURES):
            want |= bit(F_PROTOCOL_FEATURES)
            prot = self.get_protocol_features()
            self.set_protocol_features(prot & (bit(PROTOCOL_F_MQ) | bit(PROTOCOL_F_REPLY_ACK)))
        if self.protocol_features & bit(PROTOCOL_F_MQ):
            self.num_queues = self.call(GET_QUEUE_NUM, reply=True).u64
        self.negotiated = offered & want
        self.set_features(self.negotiated)
        return self.negotiated

    def layout(self, queue_size=256):
        self.rings = []
        base = 0
        for i in (RX_QUEUE, TX_QUEUE):
            r = Ring(self, i, queue_size, base)
            self.rings.append(r)
            base = r.end
        self.mem.init_heap(base)

    def start_ring(self, r):
        self.set_vring_num(r.index, r.size)
        self.set_vring_base(r.index, r.avail_idx)
        self.set_vring_addr(r.index, *r.addrs())
        self.set_vring_kick(r.index, r.kick_fd)
        self.set_vring_call(r.index, r.call_fd)
        if self.features & bit(F_PROTOCOL_FEATURES):
            self.set_vring_enable(r.index, True)

    def start_queues(self, queue_size=256):
        self.layout(queue_size)
        self.set_mem_table()
        for r in self.rings:
            self.start_ring(r)

    def handshake(self, offloads=(), queue_size=256, indirect=True, event_idx=False):
        self.negotiate(offloads=offloads, indirect=indirect, event_idx=event_idx)
        self.start_queues(queue_size)
        return self

    def restart_queue(self, index):
        """A queue stopped by a broken chain runs again after a new kick fd
        (the ring stays where it is)."""
        self.set_vring_kick(index, self.rings[index].kick_fd)

    # ---- frames ----
    def tx_chain(self, payload, segs=1, writable=0, indirect=False, kind="frame", publish=True):
        """payload (a header and a frame, or anything) in `segs`
        device-readable descriptors, then `writable` bytes in a
        device-writable one (CANARY-filled, recorded in in_bufs)."""
        descs, chunks, in_bufs = [], [], []
        n = len(payload)
        sizes = [n // segs + (1 if i < n % segs else 0) for i in range(segs)] if n else [0]
        pos = 0
        for size in sizes:
            if size:
                off, ch = self.buffer(payload[pos:pos + size])
                chunks.append(ch)
                addr = self.mem.gpa_of(off)
            else:
                addr = self.mem.gpa_of(self.mem.heap_off)
            descs.append(Desc(addr, size, DESC_F_NEXT))
            pos += size
        if writable:
            off, ch = self.buffer(length=writable, fill=0xA5)
            chunks.append(ch)
            in_bufs.append((off, writable))
            descs.append(Desc(self.mem.gpa_of(off), writable, DESC_F_WRITE))
        descs[-1].flags &= ~DESC_F_NEXT
        return self.tx.submit(descs, chunks, in_bufs, indirect=indirect, kind=kind, publish=publish)

    def send_frame(self, frame, hdr=None, wait=True, **kw):
        """A well-formed frame on TX; waits until its head comes back."""
        chain = self.tx_chain((net_hdr() if hdr is None else hdr) + frame, **kw)
        if wait:
            self.tx.wait([chain])
        return chain

    def post_rx(self, size=2048, segs=1, publish=True):
        """An empty receive buffer of `size` bytes in `segs` device-writable descriptors."""
        descs, chunks, in_bufs = [], [], []
        for i in range(segs):
            n = size // segs + (1 if i < size % segs else 0)
            off, ch = self.buffer(length=n, fill=0x5A)
            chunks.append(ch)
            in_bufs.append((off, n))
            descs.append(Desc(self.mem.gpa_of(off), n, DESC_F_WRITE | (DESC_F_NEXT if i + 1 < segs else 0)))
        return self.rx.submit(descs, chunks, in_bufs, kind="rx", publish=publish)

