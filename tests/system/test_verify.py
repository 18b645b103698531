"""Data written through the isolated driver reads back identical, in every
notify mode, at queue depth 1 and 32; and it really lands in the image."""
import os
import struct

import pytest

from conftest import MODES

BLOCK_MAGIC = 0x425645444C4F5349  # "ISOLDEVB", little endian in the block header


@pytest.mark.parametrize("qd", [1, 32])
@pytest.mark.parametrize("mode", MODES)
def test_verify_each_mode(isolde, image, mode, qd):
    p, r = isolde.verify(image, "--notify", mode, "--qd", qd, "--ops", 3000, "--seed", 7)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None
    assert r["writes"] == 3000
    assert r["reads"] > 0 and r["ops"] == r["writes"] + r["reads"]
    assert r["notify"] == mode and r["qd"] == qd
    # The driver ran in a process of its own.
    assert r["driver_pid"] > 0 and r["driver_pid"] != os.getpid()
    if mode == "spin":
        assert r["kicks"] == 0 and r["calls"] == 0, "spin mode must not signal"


@pytest.mark.parametrize("mode", MODES)
def test_zero_copy_and_large_blocks(isolde, image, mode):
    p, r = isolde.verify(image, "--notify", mode, "--qd", 8, "--ops", 500, "--bs", "64k", "--zero-copy")
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["reads"] > 0


def test_blocks_land_in_the_image(isolde, image):
    """Read the image file directly: every block verify wrote carries its own
    block number, so the data went through the driver onto the file."""
    p, r = isolde.verify(image, "--ops", 2000, "--qd", 16, "--seed", 99)
    assert p.returncode == 0, p.stderr
    found = 0
    with open(image, "rb") as f:
        block = 0
        while chunk := f.read(4096):
            magic, number, seq, seed = struct.unpack_from("<QQQQ", chunk)
            if magic == BLOCK_MAGIC:
                assert number == block, f"block {block} holds block {number}"
                assert seed == 99
                found += 1
            else:
                assert chunk == bytes(4096), f"block {block} is neither written nor zero"
            block += 1
    assert found == r["reads"], "every block read back is in the file"


def test_direct_io(isolde, tmp_path):
    """O_DIRECT where the file system supports it (tmpfs does not)."""
    path = tmp_path / "direct.img"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        os.close(fd)
    except OSError:
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    p, r = isolde.verify(path, "--direct", "--ops", 500, "--qd", 4)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["mismatches"] == 0


def test_size_creates_image(isolde, tmp_path):
    path = tmp_path / "new.img"
    p, r = isolde.verify(path, "--size", "4M", "--ops", 100)
    assert p.returncode == 0, p.stderr
    assert path.stat().st_size == 4 << 20
