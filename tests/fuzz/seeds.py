#!/usr/bin/env python3
"""Write the seed corpus of the NBD fuzz target into DIR: hand-made client
streams in the shapes real clients (nbdinfo, nbdcopy, qemu-img, fio's nbd
engine, the kernel's nbd-client) send them, plus the broken ones the system
tests send. Each file is one mode byte (see fuzz_nbd.c) and the client's
bytes.  usage: seeds.py DIR"""
import os
import struct
import sys

OPT_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513
C_FIXED, C_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED = 1, 2, 3, 5, 6, 7, 8
INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 1, 2, 3
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF = 1, 2, 4


def flags(f=C_FIXED | C_NO_ZEROES):
    return struct.pack(">I", f)


def opt(num, data=b""):
    return struct.pack(">QII", OPT_MAGIC, num, len(data)) + data


def go(name=b"", infos=(INFO_BLOCK_SIZE,), num=OPT_GO):
    return opt(num, struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def req(cmd, offset=0, length=0, fl=0, handle=1, payload=b""):
    return struct.pack(">IHHQQI", REQ_MAGIC, fl, cmd, handle, offset, length) + payload


def handshake(structured=True):
    return flags() + (opt(OPT_STRUCTURED) if structured else b"") + go()


SEEDS = {
    "nbdinfo": flags() + opt(OPT_STRUCTURED) + go(infos=(INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE))
    + req(READ, 0, 512) + req(DISC),
    "nbdinfo-list": flags() + opt(OPT_LIST) + go(num=OPT_INFO) + opt(OPT_ABORT),
    "nbdcopy": handshake() + req(WRITE, 0, 4096, payload=bytes(range(256)) * 16, handle=7)
    + req(WRITE, 4096, 512, FUA, payload=b"x" * 512, handle=8) + req(READ, 0, 8192, DF, handle=9)
    + req(WRITE_ZEROES, 65536, 65536, NO_HOLE) + req(WRITE_ZEROES, 0, 1 << 20, FUA)
    + req(TRIM, 8192, 4096, FUA) + req(FLUSH) + req(CACHE, 0, 4096) + req(DISC),
    "simple-replies": handshake(structured=False) + req(READ, 1000, 3000) + req(WRITE, 1 << 19, 100,
                                                                               payload=b"y" * 100)
    + req(FLUSH, fl=FUA) + req(DISC),
    "export-name": flags(C_FIXED) + opt(OPT_EXPORT_NAME) + req(READ, 0, 4096) + req(DISC),
    "export-name-named": flags(C_FIXED | C_NO_ZEROES) + opt(OPT_EXPORT_NAME, b"disk") + req(READ, 0, 1),
    "old-newstyle": flags(0) + opt(OPT_EXPORT_NAME) + req(READ, 0, 512),
    "go-named": flags() + go(b"disk", infos=(INFO_NAME,)) + req(READ, 0, 512),
    "go-unknown-name": flags() + go(b"nope") + go(),
    "starttls": flags() + opt(OPT_STARTTLS) + opt(99, b"junk") + opt(OPT_LIST, b"x")
    + opt(OPT_STRUCTURED, b"y") + go(),
    "bad-option-magic": flags() + struct.pack(">QII", 0x1122334455667788, OPT_GO, 0),
    "huge-option": flags() + struct.pack(">QII", OPT_MAGIC, OPT_GO, 0xFFFFFFF0) + b"z" * 64,
    "bad-client-flags": flags(0x80000001),
    "bad-request-magic": handshake() + struct.pack(">IHHQQI", 0xDEADBEEF, 0, READ, 1, 0, 512),
    "unknown-command": handshake() + req(42, 0, 512) + req(BLOCK_STATUS, 0, 512) + req(READ, 0, 512, 0x80),
    "out-of-range": handshake() + req(READ, 1 << 20, 1) + req(WRITE, (1 << 20) - 1, 2, payload=b"ab")
    + req(TRIM, 1 << 40, 1),
    "wrapping-range": handshake() + req(READ, 0xFFFFFFFFFFFFF000, 0x2000) + req(WRITE_ZEROES, 2 ** 64 - 1, 1),
    "oversized-write": handshake() + req(WRITE, 0, 64 << 20, payload=b"p" * 1000),
    "truncated-request": handshake() + req(READ, 0, 512)[:20],
    "truncated-payload": handshake() + req(WRITE, 0, 4096, payload=b"q" * 100),
    "zero-length": handshake() + req(READ, 0, 0) + req(WRITE, 0, 0) + req(TRIM, 0, 0) + req(WRITE_ZEROES, 0, 0),
}

MODES = (0x00, 0x08, 0x13, 0x2E, 0x06, 0xFF)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, stream in SEEDS.items():
        for mode in MODES:
            with open(os.path.join(out, f"{name}-{mode:02x}"), "wb") as f:
                f.write(bytes([mode]) + stream)


if __name__ == "__main__":
    main()
