"""A vhost-user front end in pure Python: it plays QEMU's part against a
vhost-user-blk back end (QEMU's docs/interop/vhost-user.rst, the virtio 1.x
split virtqueue and virtio-blk), so that system tests can drive a back end
without a guest, and send it what QEMU never would.

Guest memory is one memfd mapped here. The back end is told about it as one
region with a guest-physical base (GPA_BASE) and a made-up front-end
userspace address (UADDR_BASE): ring addresses in SET_VRING_ADDR are
userspace addresses, descriptor buffer addresses are guest-physical, as they
are when QEMU is the front end.

Layout of guest memory (offsets from the start of the memfd):
    0                 descriptor table (queue_size * 16)
    avail_off         available ring (flags, idx, ring[n], used_event)
    used_off          used ring (flags, idx, ring[n] {id, len}, avail_event)
    heap_off .. end   request headers, data buffers, status bytes, indirect
                      tables; free heap holds CANARY bytes, so a back end
                      that writes where it must not is seen.
All numbers are little-endian (x86; vhost-user is native order and virtio 1
is little-endian)."""
import fcntl
import mmap
import os
import select
import socket
import struct
import threading
import time

# ---- vhost-user front-end requests (vhost-user.rst, "Front-end message types") ----
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
SET_CONFIG = 25

REQUEST_NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int)}

VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100

HEADER = struct.Struct("<III")          # request, flags, size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")      # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")   # index, flags, desc, used, avail, log (user addresses)
MEM_REGION = struct.Struct("<QQQQ")     # guest_phys_addr, memory_size, userspace_addr, mmap_offset
CONFIG_HDR = struct.Struct("<III")      # offset, size, flags
MAX_REGIONS = 8

# vhost-user feature bit (in GET/SET_FEATURES) and protocol feature bits
F_PROTOCOL_FEATURES = 30
PROTOCOL_F_MQ = 0
PROTOCOL_F_LOG_SHMFD = 1
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_BACKEND_REQ = 5
PROTOCOL_F_CONFIG = 9
PROTOCOL_F_INFLIGHT_SHMFD = 12
PROTOCOL_F_RESET_DEVICE = 13
PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15

# ---- virtio ----
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
RING_F_INDIRECT_DESC = 28
RING_F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34
F_IN_ORDER = 35

BLK_F_SIZE_MAX = 1
BLK_F_SEG_MAX = 2
BLK_F_GEOMETRY = 4
BLK_F_RO = 5
BLK_F_BLK_SIZE = 6
BLK_F_FLUSH = 9
BLK_F_TOPOLOGY = 10
BLK_F_CONFIG_WCE = 11
BLK_F_MQ = 12
BLK_F_DISCARD = 13
BLK_F_WRITE_ZEROES = 14

# Device features this front end understands and takes when offered (a
# driver must not accept a feature it does not know).
BLK_KNOWN = [BLK_F_SIZE_MAX, BLK_F_SEG_MAX, BLK_F_GEOMETRY, BLK_F_RO, BLK_F_BLK_SIZE, BLK_F_FLUSH,
             BLK_F_TOPOLOGY, BLK_F_MQ, BLK_F_DISCARD, BLK_F_WRITE_ZEROES]

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
DESC = struct.Struct("<QIHH")           # addr (guest-physical), len, flags, next
USED_F_NO_NOTIFY = 1
AVAIL_F_NO_INTERRUPT = 1

T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2
BLK_HDR = struct.Struct("<IIQ")         # type, reserved (ioprio), sector
BLK_SEGMENT = struct.Struct("<QII")     # sector, num_sectors, flags (discard / write zeroes)
WRITE_ZEROES_F_UNMAP = 1
ID_BYTES = 20
SECTOR = 512

# struct virtio_blk_config (linux/virtio_blk.h), up to write_zeroes_may_unmap + unused1[3]
BLK_CONFIG_SIZE = 60
_CONFIG_FIELDS = [  # name, offset, struct format
    ("capacity", 0, "<Q"), ("size_max", 8, "<I"), ("seg_max", 12, "<I"),
    ("cylinders", 16, "<H"), ("heads", 18, "<B"), ("sectors", 19, "<B"), ("blk_size", 20, "<I"),
    ("physical_block_exp", 24, "<B"), ("alignment_offset", 25, "<B"), ("min_io_size", 26, "<H"),
    ("opt_io_size", 28, "<I"), ("writeback", 32, "<B"), ("num_queues", 34, "<H"),
    ("max_discard_sectors", 36, "<I"), ("max_discard_seg", 40, "<I"),
    ("discard_sector_alignment", 44, "<I"), ("max_write_zeroes_sectors", 48, "<I"),
    ("max_write_zeroes_seg", 52, "<I"), ("write_zeroes_may_unmap", 56, "<B"),
]

MiB = 1 << 20
GPA_BASE = 0x100000
UADDR_BASE = 0x7F0000000000
CANARY = 0xA5
CHUNK = 64          # heap allocation granule and alignment


class VhostUserError(Exception):
    pass


class Closed(VhostUserError):
    """The back end closed the connection."""


class Msg:
    def __init__(self, request, flags, payload, fds=()):
        self.request, self.flags, self.payload, self.fds = request, flags, payload, list(fds)

    @property
    def u64(self):
        if len(self.payload) != 8:
            raise VhostUserError(f"reply to {name(self.request)}: payload of {len(self.payload)} bytes, "
                                 "expected a u64")
        return U64.unpack(self.payload)[0]

    def __repr__(self):
        return f"Msg({name(self.request)}, flags={self.flags:#x}, {len(self.payload)} bytes, fds={self.fds})"


def name(request):
    return REQUEST_NAMES.get(request, str(request))


def bit(n):
    return 1 << n


def parse_blk_config(raw):
    cfg = {}
    for field, off, fmt in _CONFIG_FIELDS:
        if off + struct.calcsize(fmt) <= len(raw):
            cfg[field] = struct.unpack_from(fmt, raw, off)[0]
    return cfg


def need_event(event, new, old):
    """vring_need_event(): has the 16-bit index moved past `event` going from old to new?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


# ---- guest memory ----

class GuestMemory:
    """A memfd mapped here: the guest's RAM as the back end sees it. The part
    from heap_off on is handed out in CHUNK-sized pieces; free pieces hold
    CANARY. sealed: grown, then sealed against growing and shrinking, as
    QEMU's memory-backend-memfd does by default; otherwise (as a plain
    memory-backend-file) the file can be shrunk under the back end."""

    def __init__(self, size=16 * MiB, gpa=GPA_BASE, uaddr=UADDR_BASE, sealed=False):
        self.size, self.gpa, self.uaddr = size, gpa, uaddr
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealed else 0)
        self.fd = os.memfd_create("isolde-vu-guest", flags)
        os.ftruncate(self.fd, size)
        if sealed:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # Ring indices are shared with a back end polling them: each must be
        # one 16-bit load or store. struct.pack_into zero-fills its target
        # before writing (the back end can see a transient 0) and unpack_from
        # reads byte by byte (a torn index); a memoryview of 'H' does a
        # single aligned 2-byte access.
        self.u16s = memoryview(self.mm).cast("H")
        self.heap_off = None
        self.free = []

    def init_heap(self, heap_off):
        heap_off = -(-heap_off // CHUNK) * CHUNK
        self.heap_off = heap_off
        self.free = [(heap_off, self.size - heap_off)]
        self.mm[heap_off:self.size] = bytes([CANARY]) * (self.size - heap_off)

    def shrink(self, size):
        """Cut the memory file to `size` bytes (what a hostile front end
        can do to an unsealed one). From now on nothing in this process may
        touch the mapping at or past `size`: that would be SIGBUS here."""
        os.ftruncate(self.fd, size)

    def close(self):
        self.u16s.release()
        try:
            self.mm.close()
        except BufferError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # address translation
    def gpa_of(self, off):
        return self.gpa + off

    def uaddr_of(self, off):
        return self.uaddr + off

    def off_of_gpa(self, gpa):
        off = gpa - self.gpa
        return off if 0 <= off < self.size else None

    def region(self, mmap_offset=0):
        """The one region of SET_MEM_TABLE for this memory."""
        return (self.gpa, self.size, self.uaddr, mmap_offset)

    # access
    def read(self, off, n):
        return bytes(self.mm[off:off + n])

    def write(self, off, data):
        self.mm[off:off + len(data)] = data

    def u16(self, off):
        """One atomic 16-bit load (off must be even)."""
        return self.u16s[off >> 1]

    def put_u16(self, off, v):
        """One atomic 16-bit store (off must be even)."""
        self.u16s[off >> 1] = v & 0xFFFF

    def snapshot(self):
        return bytes(self.mm)

    def changes_since(self, snap, granule=1):
        """[(offset, length)] of every run of bytes that differ from snap."""
        now = bytes(self.mm)
        runs, i, n = [], 0, len(now)
        step = 4096
        while i < n:
            if now[i:i + step] == snap[i:i + step]:
                i += step
                continue
            end = min(i + step, n)
            j = i
            while j < end:
                if now[j] != snap[j]:
                    k = j
                    while k < n and now[k] != snap[k]:
                        k += 1
                    runs.append((j, k - j))
                    j = k
                else:
                    j += 1
            i = max(end, j)
        return runs

    # heap
    def alloc(self, n):
        n = max(CHUNK, -(-n // CHUNK) * CHUNK)
        for i, (off, sz) in enumerate(self.free):
            if sz >= n:
                if sz == n:
                    del self.free[i]
                else:
                    self.free[i] = (off + n, sz - n)
                return off, n
        raise VhostUserError(f"guest memory heap exhausted ({n} bytes wanted)")

    def release(self, off, n):
        self.mm[off:off + n] = bytes([CANARY]) * n
        self.free.append((off, n))
        self.free.sort()
        merged = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged

    def canaries_intact(self):
        """[(offset, length)] of free heap that is no longer CANARY."""
        bad = []
        for off, sz in self.free:
            chunk = self.mm[off:off + sz]
            if chunk.count(CANARY) != sz:
                first = next(i for i, b in enumerate(chunk) if b != CANARY)
                bad.append((off + first, sz - first))
        return bad


# ---- descriptor chains ----

class Rel:
    """A `next` that names the k-th descriptor of the same chain (for loops)."""

    def __init__(self, k):
        self.k = k


class Desc:
    """One descriptor of a chain being built. next=None: the following one
    if flags has NEXT; an int is written as is; Rel(k) is the k-th of this chain."""

    def __init__(self, addr, length, flags=0, next=None):
        self.addr, self.len, self.flags, self.next = addr, length, flags, next

    def __repr__(self):
        return f"Desc({self.addr:#x}, {self.len}, flags={self.flags}, next={self.next})"


class Request:
    def __init__(self, client, head, ring_descs, chunks, status_off=None, in_bufs=(), kind=None):
        self.client = client
        self.head = head
        self.ring_descs = ring_descs     # descriptor table slots this chain holds
        self.chunks = chunks             # heap pieces to release on completion
        self.status_off = status_off     # where the status byte is, if there is one
        self.in_bufs = list(in_bufs)     # (offset, length) of device-writable data buffers
        self.kind = kind
        self.done = False
        self.used_len = None
        self.status = None
        self.data = None
        self.writable = list(self.in_bufs) + ([(status_off, 1)] if status_off is not None else [])

    def wait(self, timeout=None, **kw):
        self.client.wait([self], timeout=timeout, **kw)
        return self

    def __repr__(self):
        return (f"Request(head={self.head}, kind={self.kind}, done={self.done}, status={self.status}, "
                f"used_len={self.used_len})")


def _split(total, parts):
    """total bytes in `parts` non-empty pieces (as equal as possible)."""
    parts = max(1, min(parts, total)) if total else 1
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class VhostUserBlk:
    """One connection to a vhost-user-blk back end, and queue 0 of it.

    c = VhostUserBlk(path); c.handshake(); c.write(0, data); c.read(0, 4096)
    """

    def __init__(self, path, timeout=10, mem_size=16 * MiB, gpa=GPA_BASE, uaddr=UADDR_BASE,
                 connect_timeout=10, sealed=False):
        self.path = str(path)
        self.timeout = timeout
        self.sock = self._connect(self.path, connect_timeout)
        self.mem = GuestMemory(mem_size, gpa, uaddr, sealed=sealed)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.features = self.offered = None
        self.protocol_features = self.offered_protocol = 0
        self.config = None
        self.queue_size = None
        self.inflight = {}             # head -> Request
        self.bogus = []                # used entries that named no request in flight
        self.calls = 0                 # call eventfd signals seen
        self.kicks = 0
        self._fence_lock = threading.Lock()
        self.queue_ready = False

    # ---- connection ----
    @staticmethod
    def _connect(path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in (self.kick_fd, self.call_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = -1
        self.mem.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- framing ----
    def send(self, request, payload=b"", fds=(), flags=VERSION, size=None):
        """Send one message as is: header (size defaults to len(payload)) + payload, fds by SCM_RIGHTS."""
        hdr = HEADER.pack(request, flags, len(payload) if size is None else size)
        data = hdr + payload
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def _recv_exact(self, n, deadline, fds):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete reply within the timeout ({len(buf)} of {n} bytes)")
            self.sock.settimeout(left)
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(n - len(buf), socket.CMSG_SPACE(4 * 16))
            except socket.timeout:
                raise TimeoutError(f"no complete reply within the timeout ({len(buf)} of {n} bytes)")
            except ConnectionResetError:
                raise Closed("connection reset by the back end")
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    cnt = len(cdata) // 4
                    fds.extend(struct.unpack(f"{cnt}i", cdata[:cnt * 4]))
            if not data:
                raise Closed(f"the back end closed the connection ({len(buf)} of {n} bytes read)")
            buf += data
        return bytes(buf)

    def recv_reply(self, timeout=None):
        """The next message from the back end (a reply must carry REPLY and version 1)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fds = []
        request, flags, size = HEADER.unpack(self._recv_exact(HEADER.size, deadline, fds))
        if size > 4096:
            raise VhostUserError(f"reply to {name(request)} claims a payload of {size} bytes")
        payload = self._recv_exact(size, deadline, fds) if size else b""
        for fd in fds:   # a back end sends us no fds in anything we ask for
            os.close(fd)
        return Msg(request, flags, payload, fds)

    def wait_eof(self, timeout=5):
        """True once the back end has closed the connection (unexpected
        messages before that are kept in self.unexpected)."""
        self.unexpected = getattr(self, "unexpected", [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.unexpected.append(data)
        return False

    def call(self, request, payload=b"", fds=(), reply=False, ack=None):
        """Send a request; return the reply if it has one (reply=True), or
        check the REPLY_ACK answer if ack (default: when REPLY_ACK is negotiated)."""
        if ack is None:
            ack = not reply and bool(self.protocol_features & bit(PROTOCOL_F_REPLY_ACK))
        flags = VERSION | (FLAG_NEED_REPLY if ack else 0)
        self.send(request, payload, fds, flags)
        if reply or ack:
            r = self.recv_reply()
            if r.request != request:
                raise VhostUserError(f"asked {name(request)}, got a reply to {name(r.request)}")
            if r.flags & VERSION_MASK != VERSION or not r.flags & FLAG_REPLY:
                raise VhostUserError(f"reply to {name(request)} has flags {r.flags:#x}")
            if ack and not reply:
                if r.u64 != 0:
                    raise VhostUserError(f"{name(request)} was refused (REPLY_ACK {r.u64:#x})")
            return r
        return None

    # ---- messages ----
    def get_features(self):
        self.offered = self.call(GET_FEATURES, reply=True).u64
        return self.offered

    def set_features(self, features):
        self.call(SET_FEATURES, U64.pack(features))
        self.features = features

    def set_owner(self):
        self.call(SET_OWNER)

    def get_protocol_features(self):
        self.offered_protocol = self.call(GET_PROTOCOL_FEATURES, reply=True).u64
        return self.offered_protocol

    def set_protocol_features(self, features):
        # REPLY_ACK is not in force yet for this very message.
        self.call(SET_PROTOCOL_FEATURES, U64.pack(features), ack=False)
        self.protocol_features = features

    def get_queue_num(self):
        return self.call(GET_QUEUE_NUM, reply=True).u64

    def get_config(self, size=BLK_CONFIG_SIZE, offset=0, flags=0):
        r = self.call(GET_CONFIG, CONFIG_HDR.pack(offset, size, flags) + bytes(size), reply=True)
        if len(r.payload) < CONFIG_HDR.size:
            raise VhostUserError(f"GET_CONFIG reply of {len(r.payload)} bytes")
        off, sz, _fl = CONFIG_HDR.unpack_from(r.payload)
        raw = r.payload[CONFIG_HDR.size:]
        if sz != size or len(raw) != size:
            raise VhostUserError(f"GET_CONFIG: asked {size} bytes, got size {sz} and {len(raw)} bytes")
        return raw

    @staticmethod
    def mem_table_payload(regions, nregions=None):
        body = b"".join(MEM_REGION.pack(*r) for r in regions)
        return struct.pack("<II", len(regions) if nregions is None else nregions, 0) + body

    def set_mem_table(self, regions=None, fds=None):
        if regions is None:
            regions, fds = [self.mem.region()], [self.mem.fd]
        self.call(SET_MEM_TABLE, self.mem_table_payload(regions), fds=fds)

    def set_vring_num(self, index, num):
        self.call(SET_VRING_NUM, VRING_STATE.pack(index, num))

    def set_vring_base(self, index, num):
        self.call(SET_VRING_BASE, VRING_STATE.pack(index, num))

    def set_vring_addr(self, index, desc, used, avail, flags=0, log=0):
        self.call(SET_VRING_ADDR, VRING_ADDR.pack(index, flags, desc, used, avail, log))

    def set_vring_kick(self, index, fd=None):
        self.call(SET_VRING_KICK, U64.pack(index | (VRING_NOFD if fd is None else 0)),
                  fds=() if fd is None else (fd,))

    def set_vring_call(self, index, fd=None):
        self.call(SET_VRING_CALL, U64.pack(index | (VRING_NOFD if fd is None else 0)),
                  fds=() if fd is None else (fd,))

    def set_vring_enable(self, index, enable=True):
        self.call(SET_VRING_ENABLE, VRING_STATE.pack(index, 1 if enable else 0))

    def get_vring_base(self, index=0):
        r = self.call(GET_VRING_BASE, VRING_STATE.pack(index, 0), reply=True)
        i, num = VRING_STATE.unpack(r.payload)
        if i != index:
            raise VhostUserError(f"GET_VRING_BASE for queue {index} answered for queue {i}")
        if index == 0:
            self.queue_ready = False   # the ring is stopped now
        return num

    # ---- the whole setup, in QEMU's order ----
    def negotiate(self, event_idx=False, indirect=True, extra_features=0):
        """SET_OWNER, features, protocol features, queue count, config."""
        self.set_owner()
        offered = self.get_features()
        want = bit(F_VERSION_1) | sum(bit(b) for b in BLK_KNOWN) | extra_features
        if indirect:
            want |= bit(RING_F_INDIRECT_DESC)
        if event_idx:
            want |= bit(RING_F_EVENT_IDX)
        if offered & bit(F_PROTOCOL_FEATURES):
            want |= bit(F_PROTOCOL_FEATURES)
            prot = self.get_protocol_features()
            self.set_protocol_features(prot & (bit(PROTOCOL_F_MQ) | bit(PROTOCOL_F_REPLY_ACK)
                                               | bit(PROTOCOL_F_CONFIG)))
        self.wanted_features = want
        self.negotiated = offered & want
        if self.protocol_features & bit(PROTOCOL_F_MQ):
            self.num_queues = self.get_queue_num()
        if self.protocol_features & bit(PROTOCOL_F_CONFIG):
            self.config_raw = self.get_config()
            self.config = parse_blk_config(self.config_raw)
        self.set_features(self.negotiated)
        return self.negotiated

    def has(self, feature_bit):
        return bool(self.features is not None and self.features & bit(feature_bit))

    @property
    def event_idx(self):
        return self.has(RING_F_EVENT_IDX)

    @property
    def capacity(self):
        return self.config["capacity"]

    def layout_queue(self, queue_size=128, base=0):
        """Place queue 0's rings in guest memory and reset the front end's view of it."""
        q = queue_size
        self.queue_size = q
        self.desc_off = 0
        self.avail_off = -(-(16 * q) // 4096) * 4096
        self.used_off = self.avail_off + (-(-(6 + 2 * q) // 4096) * 4096)
        heap = self.used_off + (-(-(6 + 8 * q) // 4096) * 4096)
        self.mem.write(0, bytes(heap))
        self.mem.init_heap(heap)
        self.free_descs = list(range(q))
        self.avail_idx = base & 0xFFFF      # shadow of avail->idx
        self.kicked_idx = self.avail_idx     # avail idx at the last notification decision
        self.last_used = base & 0xFFFF
        self.mem.put_u16(self.avail_off, 0)                        # flags: we want interrupts
        self.mem.put_u16(self.avail_off + 2, self.avail_idx)       # idx
        self.mem.put_u16(self.used_off + 2, self.last_used)        # used idx starts at base too
        self.mem.put_u16(self.used_event_off, self.last_used)
        # avail_event is the device's, but nothing has written it yet: start
        # it where a device that resumes at `base` would ask to be kicked
        self.mem.put_u16(self.avail_event_off, self.avail_idx)
        self.inflight.clear()

    @property
    def used_event_off(self):
        return self.avail_off + 4 + 2 * self.queue_size

    @property
    def avail_event_off(self):
        return self.used_off + 4 + 8 * self.queue_size

    def ring_addrs(self):
        """(desc, used, avail) as front-end user addresses for SET_VRING_ADDR."""
        return (self.mem.uaddr_of(self.desc_off), self.mem.uaddr_of(self.used_off),
                self.mem.uaddr_of(self.avail_off))

    def start_queue(self, queue_size=128, base=0, enable=True):
        self.layout_queue(queue_size, base)
        self.set_mem_table()
        self.set_vring_num(0, queue_size)
        self.set_vring_base(0, base)
        self.set_vring_addr(0, *self.ring_addrs())
        self.set_vring_kick(0, self.kick_fd)
        self.set_vring_call(0, self.call_fd)
        if enable and self.features & bit(F_PROTOCOL_FEATURES):
            self.set_vring_enable(0, True)
        self.queue_ready = True

    def resume_queue(self, base=None):
        """Start queue 0 again after GET_VRING_BASE stopped it, on the same
        rings, from `base` (default: where the front end is), as QEMU does
        when a stopped VM continues."""
        base = self.avail_idx if base is None else base
        self.set_vring_num(0, self.queue_size)
        self.set_vring_base(0, base)
        self.set_vring_addr(0, *self.ring_addrs())
        self.set_vring_kick(0, self.kick_fd)
        self.set_vring_call(0, self.call_fd)
        if self.features & bit(F_PROTOCOL_FEATURES):
            self.set_vring_enable(0, True)
        self.queue_ready = True

    def handshake(self, event_idx=False, indirect=True, queue_size=128, base=0):
        self.negotiate(event_idx=event_idx, indirect=indirect)
        self.start_queue(queue_size, base)
        return self

    # ---- the virtqueue, driver side ----
    def fence(self):
        """A full memory barrier (a locked instruction inside the mutex): the
        store of avail->idx / used_event must be visible before we read the
        device's avail_event / used flags, as virtio_mb() does in a driver."""
        with self._fence_lock:
            pass

    def buffer(self, data=None, length=None, fill=0x5A):
        """A heap chunk holding data (or `length` bytes of `fill`); returns (offset, chunk)."""
        n = len(data) if data is not None else length
        off, sz = self.mem.alloc(n)
        self.mem.write(off, data if data is not None else bytes([fill]) * n)
        return off, (off, sz)

    def submit_chain(self, descs, indirect=False, kick=True, table_len=None, status_off=None,
                     in_bufs=(), chunks=(), kind="raw", head=None, ring_flags=0, publish=True):
        """Put a chain of Desc on the ring: in the descriptor table, or (indirect)
        in a table in guest memory named by one INDIRECT descriptor (table_len
        overrides that descriptor's length). head overrides what goes into the
        avail ring. publish=False leaves it off the avail ring (c.publish([req.head])
        later). Returns the Request."""
        chunks = list(chunks)
        if indirect:
            toff, tchunk = self.buffer(length=max(16, 16 * len(descs)), fill=0)
            chunks.append(tchunk)
            for i, d in enumerate(descs):
                nxt = self._resolve_next(d, i, list(range(len(descs))))
                self.mem.write(toff + 16 * i, DESC.pack(d.addr & (2**64 - 1), d.len, d.flags, nxt))
            outer = [Desc(self.mem.gpa_of(toff), 16 * len(descs) if table_len is None else table_len,
                          DESC_F_INDIRECT | ring_flags)]
        else:
            outer = descs
        if len(outer) > len(self.free_descs):
            raise VhostUserError(f"{len(outer)} descriptors wanted, {len(self.free_descs)} free")
        slots = [self.free_descs.pop(0) for _ in outer]
        for i, d in enumerate(outer):
            nxt = self._resolve_next(d, i, slots)
            self.mem.write(self.desc_off + 16 * slots[i], DESC.pack(d.addr & (2**64 - 1), d.len, d.flags, nxt))
        req = Request(self, slots[0] if head is None else head, slots, chunks, status_off, in_bufs, kind)
        self.inflight[req.head] = req
        if publish:
            self.publish([req.head], kick=kick)
        return req

    @staticmethod
    def _resolve_next(d, i, slots):
        if isinstance(d.next, Rel):
            return slots[d.next.k]
        if d.next is not None:
            return d.next & 0xFFFF
        if d.flags & DESC_F_NEXT and i + 1 < len(slots):
            return slots[i + 1]
        return 0

    def publish(self, heads, kick=True):
        for h in heads:
            self.mem.put_u16(self.avail_off + 4 + 2 * (self.avail_idx % self.queue_size), h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.put_u16(self.avail_off + 2, self.avail_idx)   # x86: stores are not reordered
        if kick:
            self.notify()

    def notify(self):
        """Kick if the device asked for it (avail_event with EVENT_IDX, else the used ring's NO_NOTIFY)."""
        self.fence()
        new = self.avail_idx
        if self.event_idx:
            needed = need_event(self.mem.u16(self.avail_event_off), new, self.kicked_idx)
        else:
            needed = not self.mem.u16(self.used_off) & USED_F_NO_NOTIFY
        self.kicked_idx = new
        if needed:
            self.kick()

    def kick(self):
        os.eventfd_write(self.kick_fd, 1)
        self.kicks += 1

    def used_idx(self):
        return self.mem.u16(self.used_off + 2)

    def reap(self):
        """Take every new used entry; returns how many."""
        n = 0
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.last_used % self.queue_size
            uid, ulen = struct.unpack_from("<II", self.mem.mm, self.used_off + 4 + 8 * slot)
            self.last_used = (self.last_used + 1) & 0xFFFF
            n += 1
            req = self.inflight.pop(uid, None)
            if req is None:
                self.bogus.append((uid, ulen))
                continue
            self._complete(req, ulen)
        if self.event_idx:
            self.mem.put_u16(self.used_event_off, self.last_used)
        return n

    def _complete(self, req, ulen):
        req.done = True
        req.used_len = ulen
        if req.status_off is not None:
            req.status = self.mem.read(req.status_off, 1)[0]
        req.data = b"".join(self.mem.read(o, n) for o, n in req.in_bufs)
        for off, sz in req.chunks:
            self.mem.release(off, sz)
        for s in req.ring_descs:
            self.mem.write(self.desc_off + 16 * s, bytes(16))
        self.free_descs.extend(req.ring_descs)

    def _drain_call(self):
        """Consume the call eventfd; True if the back end had signalled (self.calls counts signals)."""
        try:
            self.calls += os.eventfd_read(self.call_fd)
            return True
        except BlockingIOError:
            return False

    def wait(self, reqs, timeout=None, interrupts_only=False):
        """Wait until every request in reqs is complete. By default the used
        ring is polled (and the call eventfd drained). interrupts_only: look
        at the used ring only after the call eventfd fired, as an interrupt
        driven guest does, which proves that the back end signals; with
        EVENT_IDX the used ring is also re-checked after used_event is
        published (virtqueue_enable_cb's race), as a guest must."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if not interrupts_only or self._drain_call():
                self.reap()
            if all(r.done for r in reqs):
                return reqs
            if interrupts_only and self.event_idx:
                self.fence()
                if self.used_idx() != self.last_used:
                    self.reap()
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                pending = [r for r in reqs if not r.done]
                raise TimeoutError(f"{len(pending)} of {len(reqs)} requests not completed within "
                                   f"{timeout} s: {pending[:4]} (used idx {self.used_idx()}, "
                                   f"last used {self.last_used}, avail idx {self.avail_idx}, "
                                   f"calls {self.calls}, kicks {self.kicks})")
            select.select([self.call_fd], [], [], left if interrupts_only else min(left, 0.005))
            if not interrupts_only:
                self._drain_call()

    def wait_used_moves(self, timeout):
        """Wait until the used idx moves past what we reaped, without reaping
        (so guest memory can be compared before the front end touches it)."""
        deadline = time.monotonic() + timeout
        while self.used_idx() == self.last_used:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def completions_within(self, seconds):
        """How many used entries appear within `seconds` (for a queue that must be stopped)."""
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += self.reap()
            time.sleep(0.005)
        return n + self.reap()

    # ---- virtio-blk requests ----
    def blk_request(self, rtype, sector=0, out=b"", in_len=0, segs=1, indirect=False, kick=True,
                    status_fill=0xFF, publish=True):
        """A well-formed virtio-blk request: header, out data in `segs`
        device-readable descriptors, in_len bytes in `segs` device-writable
        ones, then the 1-byte status."""
        chunks, descs, in_bufs = [], [], []
        hoff, c = self.buffer(BLK_HDR.pack(rtype, 0, sector))
        chunks.append(c)
        descs.append(Desc(self.mem.gpa_of(hoff), BLK_HDR.size, DESC_F_NEXT))
        pos = 0
        for n in (_split(len(out), segs) if out else []):
            off, c = self.buffer(out[pos:pos + n])
            pos += n
            chunks.append(c)
            descs.append(Desc(self.mem.gpa_of(off), n, DESC_F_NEXT))
        for n in (_split(in_len, segs) if in_len else []):
            off, c = self.buffer(length=n)
            chunks.append(c)
            in_bufs.append((off, n))
            descs.append(Desc(self.mem.gpa_of(off), n, DESC_F_NEXT | DESC_F_WRITE))
        soff, c = self.buffer(length=1, fill=status_fill)
        chunks.append(c)
        descs.append(Desc(self.mem.gpa_of(soff), 1, DESC_F_WRITE))
        return self.submit_chain(descs, indirect=indirect, kick=kick, status_off=soff, in_bufs=in_bufs,
                                 chunks=chunks, kind=rtype, publish=publish)

    def submit_read(self, sector, length, **kw):
        return self.blk_request(T_IN, sector, in_len=length, **kw)

    def submit_write(self, sector, data, **kw):
        return self.blk_request(T_OUT, sector, out=data, **kw)

    def _done(self, submit, kw):
        """Submit (submit(**kw) without the wait options) and wait for the request."""
        timeout = kw.pop("timeout", None)
        interrupts_only = kw.pop("interrupts_only", False)
        req = submit(**kw)
        self.wait([req], timeout=timeout, interrupts_only=interrupts_only)
        return req

    def read(self, sector, length, check=True, **kw):
        """Read; returns the data (check: raise unless status OK), or the Request if not check."""
        req = self._done(lambda **k: self.submit_read(sector, length, **k), kw)
        if not check:
            return req
        if req.status != S_OK:
            raise VhostUserError(f"read of {length} bytes at sector {sector}: status {req.status}")
        return req.data

    def write(self, sector, data, check=True, **kw):
        req = self._done(lambda **k: self.submit_write(sector, data, **k), kw)
        if check and req.status != S_OK:
            raise VhostUserError(f"write of {len(data)} bytes at sector {sector}: status {req.status}")
        return req

    def flush(self, **kw):
        return self._done(lambda **k: self.blk_request(T_FLUSH, 0, **k), kw)

    def get_id(self, **kw):
        return self._done(lambda **k: self.blk_request(T_GET_ID, 0, in_len=ID_BYTES, **k), kw)

    def discard(self, segments, **kw):
        """segments: [(sector, num_sectors)]"""
        payload = b"".join(BLK_SEGMENT.pack(s, n, 0) for s, n in segments)
        return self._done(lambda **k: self.blk_request(T_DISCARD, 0, out=payload, **k), kw)

    def write_zeroes(self, segments, unmap=False, **kw):
        payload = b"".join(BLK_SEGMENT.pack(s, n, WRITE_ZEROES_F_UNMAP if unmap else 0)
                           for s, n in segments)
        return self._done(lambda **k: self.blk_request(T_WRITE_ZEROES, 0, out=payload, **k), kw)
