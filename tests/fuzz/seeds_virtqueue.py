#!/usr/bin/env python3
"""Write the seed corpus of the virtqueue fuzz target into DIR: guests in the
shapes a Linux virtio-blk driver makes them (header, data, status; indirect
tables; EVENT_IDX or flags), plus broken ones. Each file is the 16-byte
header fuzz_virtqueue.c describes, then an image of the guest's RAM.
usage: seeds_virtqueue.py DIR"""
import os
import struct
import sys

GPA0 = 0x10000
NEXT, WRITE, INDIRECT = 1, 2, 4
EVENT_IDX, INDIRECT_DESC, RAW_IDX, RAW_ADDR, NO_INTERRUPT = 1, 2, 4, 8, 16
PUSH, NOTIFY, REENABLE = 32, 64, 128
ALL = PUSH | NOTIFY | REENABLE


class Guest:
    def __init__(self, qlog, mode, desc=0x0, avail=0x100, used=0x200, base=0, used_event=0):
        self.num = 1 << qlog
        self.qlog, self.mode, self.base, self.used_event = qlog, mode, base, used_event
        self.desc_off, self.avail_off, self.used_off = desc, avail, used
        self.ram = bytearray(0x1000)
        self.heads = []

    def put(self, off, data):
        if len(self.ram) < off + len(data):
            self.ram.extend(bytes(off + len(data) - len(self.ram)))
        self.ram[off:off + len(data)] = data

    def desc(self, i, off, length, flags=0, nxt=0, table=None):
        where = (self.desc_off if table is None else table) + 16 * i
        self.put(where, struct.pack("<QIHH", GPA0 + off, length, flags, nxt))

    def make_available(self, head):
        slot = (self.base + len(self.heads)) % self.num
        self.put(self.avail_off + 4 + 2 * slot, struct.pack("<H", head))
        self.heads.append(head)

    def image(self, avail_idx=None):
        if avail_idx is None:
            avail_idx = len(self.heads)  # the harness adds last_avail
        hdr = struct.pack("<BBHHHHHHH", self.qlog, self.mode, self.desc_off, self.avail_off,
                          self.used_off, self.base, avail_idx, self.used_event, 0)
        return hdr + bytes(self.ram).rstrip(b"\0")


def blk_requests(g, first=0, data=0x400):
    """A read, a write and a flush, as Linux's virtio-blk makes them."""
    d = first
    g.desc(d, data, 16, NEXT, d + 1)                      # read: header
    g.desc(d + 1, data + 0x100, 0x200, NEXT | WRITE, d + 2)  # data
    g.desc(d + 2, data + 0x10, 1, WRITE)                   # status
    g.make_available(d)
    g.desc(d + 3, data + 0x20, 16, NEXT, d + 4)           # write: header
    g.desc(d + 4, data + 0x300, 0x200, NEXT, d + 5)       # data
    g.desc(d + 5, data + 0x30, 1, WRITE)                   # status
    g.make_available(d + 3)
    g.desc(d + 6, data + 0x40, 16, NEXT, d + 7)           # flush
    g.desc(d + 7, data + 0x50, 1, WRITE)
    g.make_available(d + 6)


def seeds():
    out = {}

    g = Guest(3, EVENT_IDX | INDIRECT_DESC | ALL, used_event=1)
    blk_requests(g)
    out["blk-event-idx"] = g.image()

    g = Guest(4, ALL)
    blk_requests(g, first=5)
    out["blk-flags"] = g.image()

    g = Guest(4, NO_INTERRUPT | PUSH | NOTIFY)
    blk_requests(g)
    out["blk-no-interrupt"] = g.image()

    g = Guest(3, EVENT_IDX | INDIRECT_DESC | ALL)
    t = 0x800
    g.desc(0, 0x400, 16, NEXT, 2, table=t)
    g.desc(2, 0x500, 0x1000, NEXT | WRITE, 1, table=t)
    g.desc(1, 0x410, 1, WRITE, table=t)
    g.desc(3, t, 48, INDIRECT)
    g.make_available(3)
    g.desc(4, 0x420, 16, NEXT, 5)
    g.desc(5, 0x430, 1, WRITE)
    g.make_available(4)
    out["indirect"] = g.image()

    g = Guest(3, INDIRECT_DESC | ALL)
    g.desc(0, t, 16, INDIRECT | NEXT, 1)
    g.make_available(0)
    out["indirect-next"] = g.image()

    g = Guest(3, INDIRECT_DESC | ALL)
    g.desc(0, 0x400, 16, NEXT, 1, table=t)
    g.desc(1, t, 32, INDIRECT, table=t)
    g.desc(0, t, 32, INDIRECT)
    g.make_available(0)
    out["indirect-nested"] = g.image()

    g = Guest(3, PUSH)
    g.desc(0, 0x400, 16, NEXT, 1)
    g.desc(1, 0x10000 - 0x10, 0x20, NEXT | WRITE, 2)  # over the regions' border
    g.desc(2, 0x410, 1, WRITE)
    g.make_available(0)
    g.desc(3, 0x14000, 16)                            # past the end of RAM
    g.make_available(3)
    g.desc(4, 0x420, 0, NEXT, 5)                      # empty
    g.desc(5, 0xffff0, 0, NEXT, 6)                    # empty, outside
    g.desc(6, 0x10000, 0x4000, WRITE)                 # all of region 1
    g.make_available(4)
    out["bad-buffers"] = g.image()

    g = Guest(2, PUSH)
    g.desc(0, 0x400, 16, NEXT, 1)
    g.desc(1, 0x400, 16, NEXT, 2)
    g.desc(2, 0x400, 16, NEXT, 0)
    g.make_available(0)
    out["loop"] = g.image()

    g = Guest(2, PUSH)
    g.desc(0, 0x400, 16, NEXT | WRITE, 1)
    g.desc(1, 0x400, 16, 0)
    g.make_available(0)
    out["readable-after-writable"] = g.image()

    g = Guest(3, ALL, base=0xfffe)
    blk_requests(g)
    out["wrap"] = g.image()

    g = Guest(3, RAW_IDX | PUSH)
    blk_requests(g)
    out["index-jump"] = g.image(avail_idx=9)

    g = Guest(9, EVENT_IDX | ALL, desc=0x800, avail=0x0, used=0x2800)
    g.desc(500, 0x8000, 16, NEXT, 3)
    g.desc(3, 0x8100, 512, NEXT | WRITE, 511)
    g.desc(511, 0x8010, 1, WRITE)
    g.make_available(500)
    out["big-queue"] = g.image()

    g = Guest(0, ALL, desc=0x0, avail=0x10, used=0x20)
    g.desc(0, 0x400, 16)
    g.make_available(0)
    out["one-entry"] = g.image()

    g = Guest(4, ALL, desc=0x0, avail=0x100, used=0x100)  # used over avail
    blk_requests(g)
    out["rings-overlap"] = g.image()

    # One head made available over and over: while it is in flight that
    # breaks the queue; answered (PUSH) or dropped in between, it may.
    for name, mode in (("head-again-in-flight", NOTIFY), ("head-again-pushed", PUSH | NOTIFY)):
        g = Guest(3, mode)
        g.desc(0, 0x400, 16, NEXT, 1)
        g.desc(1, 0x410, 1, WRITE)
        for _ in range(6):
            g.make_available(0)
        out[name] = g.image()

    # Every head in flight, then one more (heads cycle through the ring).
    g = Guest(2, NOTIFY, base=0xfffc)
    for i in range(4):
        g.desc(i, 0x400 + 0x10 * i, 16)
        g.make_available(i)
    out["all-heads-in-flight"] = g.image(avail_idx=4)
    return out


def main():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
