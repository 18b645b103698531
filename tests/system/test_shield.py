"""The integrity shield: a driver that returns well-formed responses with
wrong data is caught, restarted and replayed; the checksums persist in a side
file that is opened safely and checked against the image."""
import ctypes
import os
import signal
import struct
import time

import pytest

from conftest import kill_session

BLOCK = 4096
MAGIC = 0x444C454948534C49
VERSION = 2
CLEAN, DIRTY = 1, 2
# magic, version, state, block_size, image_size, dev, ino, mtime_ns, nblocks, checksum
HEADER = struct.Struct("<QIIQQQQqQQ")

_xxhash = ctypes.CDLL("libxxhash.so.0")
_xxhash.XXH3_64bits.restype = ctypes.c_uint64
_xxhash.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def xxh3(data):
    return _xxhash.XXH3_64bits(data, len(data))


def side_file(image):
    return image.parent / (image.name + ".isolde-shield")


class Side:
    """A side file taken apart: header fields, known blocks, checksums."""

    def __init__(self, data):
        self.data = data
        (self.magic, self.version, self.state, self.block_size, self.image_size, self.dev, self.ino,
         self.mtime_ns, self.nblocks, self.checksum) = HEADER.unpack_from(data)
        words = (self.nblocks + 63) // 64
        body = data[HEADER.size:]
        if self.state == CLEAN:
            self.bitmap = list(struct.unpack_from(f"<{words}Q", body))
            self.sums = list(struct.unpack_from(f"<{self.nblocks}Q", body, words * 8))
        else:
            self.bitmap, self.sums = [], []

    @classmethod
    def read(cls, image):
        return cls(side_file(image).read_bytes())

    def known(self):
        return {w * 64 + i for w, word in enumerate(self.bitmap) for i in range(64) if word >> i & 1}

    def pack(self):
        """The file again, checksum recomputed: what a careful forger writes."""
        head = [self.magic, self.version, self.state, self.block_size, self.image_size, self.dev,
                self.ino, self.mtime_ns, self.nblocks]
        body = struct.pack(f"<{len(self.bitmap)}Q", *self.bitmap) + struct.pack(f"<{len(self.sums)}Q",
                                                                                 *self.sums)
        self.checksum = xxh3(HEADER.pack(*head, 0) + body)
        return HEADER.pack(*head, self.checksum) + body

    def checksum_holds(self):
        return xxh3(self.data[:HEADER.size - 8] + b"\0" * 8 + self.data[HEADER.size:]) == self.checksum


def plant(image, data, mode=0o600):
    path = side_file(image)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, data)
    os.close(fd)


def image_block(image, b):
    with open(image, "rb") as f:
        f.seek(b * BLOCK)
        return f.read(BLOCK)


def refused(p, *says):
    """verify failed at open with this message, and never ran a request."""
    assert p.returncode == 1, p.stderr
    assert not p.stdout.strip(), "no workload ran"
    for s in says:
        assert s in p.stderr, p.stderr
    assert "restart" not in p.stderr and "silent-corruption" not in p.stderr, p.stderr
    assert "remove it to learn the checksums afresh" in p.stderr, p.stderr


def corrupt_read(isolde, image, *extra):
    return isolde.fault_verify(image, "corrupt-read", 450, "--ops", 400, "--qd", 8, *extra)


def test_without_the_shield_the_lie_reaches_the_application(isolde, image):
    """The control: verify's own check sees the corrupt block."""
    p, r = corrupt_read(isolde, image)
    assert p.returncode == 1
    assert r["mismatches"] >= 1 and r["restarts"] == 0
    assert r["shield"]["on"] is False


def test_the_shield_catches_the_lie_and_recovers(any_isolde, image):
    p, r = corrupt_read(any_isolde, image, "--shield")
    assert p.returncode == 0, p.stderr
    assert r["mismatches"] == 0 and r["errors"] == 0
    assert r["restarts_by_reason"]["silent-corruption"] >= 1
    assert r["shield"]["mismatches"] >= 1 and r["shield"]["verified"] > 0
    assert "different from what was written (integrity shield)" in p.stderr


def test_sidecar_is_written_clean(isolde, image):
    p, r = isolde.verify(image, "--shield", "--ops", 300)
    assert p.returncode == 0, p.stderr
    first = Side.read(image)
    st = os.stat(image)
    assert first.magic == MAGIC and first.version == VERSION
    assert first.state == CLEAN, "clean after close"
    assert first.checksum_holds()
    assert (first.image_size, first.nblocks, first.ino) == (st.st_size, st.st_size // BLOCK, st.st_ino)
    assert first.mtime_ns == st.st_mtime_ns
    # It knows exactly the blocks verify wrote (and read back), with their sums.
    known1 = first.known()
    assert len(known1) == r["shield"]["verified"] > 0
    for b in known1:
        assert first.sums[b] == xxh3(image_block(image, b)), b
    assert os.stat(side_file(image)).st_mode & 0o777 == 0o600
    assert sorted(x.name for x in image.parent.iterdir()) == [image.name, side_file(image).name]

    # A second run loads the checksums written by the first: the side file
    # it leaves still knows the first run's blocks it did not write again,
    # with the first run's sums. A run that had not loaded them would know
    # only its own.
    p, r = isolde.verify(image, "--shield", "--ops", 300, "--seed", 5)
    assert p.returncode == 0 and r["shield"]["mismatches"] == 0, p.stderr
    assert "warning" not in p.stderr, p.stderr
    second = Side.read(image)
    assert second.state == CLEAN and second.checksum_holds()
    known2 = second.known()
    assert known1 <= known2 and len(known2) > r["shield"]["verified"]
    for b in known2:
        assert second.sums[b] == xxh3(image_block(image, b)), b
    carried = [b for b in known1 if second.sums[b] == first.sums[b]]
    assert len(carried) > len(known1) // 2, "most of the first run's blocks were not written again"


def test_side_file_is_dirty_while_open_and_a_crash_only_warns(isolde, image):
    proc = isolde.start("verify", "--image", image, "--shield", "--ops", 10 ** 7, "--qd", 8)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if side_file(image).exists() and Side.read(image).state == DIRTY:
                break
            time.sleep(0.02)
        dirty = Side.read(image)
        assert dirty.state == DIRTY and len(dirty.data) == HEADER.size and dirty.checksum_holds()
        proc.send_signal(signal.SIGKILL)
    finally:
        kill_session(proc)
        proc.communicate(timeout=10)
    assert Side.read(image).state == DIRTY, "a crash leaves no clean file"
    p, r = isolde.verify(image, "--shield", "--ops", 100)
    assert p.returncode == 0, p.stderr
    assert "did not close image" in p.stderr and "learned afresh" in p.stderr
    assert Side.read(image).state == CLEAN


def test_symlink_beside_the_image_is_refused_and_left_alone(any_isolde, image, tmp_path):
    """A link planted where the side file goes: the open fails with a clear
    error, the file it points to is untouched, the link stays."""
    victim = tmp_path / "unrelated"
    victim.write_bytes(b"an unrelated file\n" * 100)
    before = os.stat(victim)
    side_file(image).symlink_to(victim)
    p = any_isolde.run("verify", "--image", image, "--shield", "--ops", 100, "--json")
    refused(p, f"side file {side_file(image)} is a symbolic link, which isolde does not follow")
    assert victim.read_bytes() == b"an unrelated file\n" * 100
    after = os.stat(victim)
    assert (after.st_mtime_ns, after.st_size, after.st_uid, after.st_mode) == (
        before.st_mtime_ns, before.st_size, before.st_uid, before.st_mode)
    assert side_file(image).is_symlink()


def test_planted_side_file_with_wrong_sums_is_an_error_at_open(any_isolde, image):
    """Valid header, the image's identity copied, checksum recomputed, sums
    wrong: one clear error at open instead of restarts and EIO."""
    p, r = any_isolde.verify(image, "--shield", "--ops", 300)
    assert p.returncode == 0, p.stderr
    side = Side.read(image)
    side.sums = [s ^ 0x5A5A for s in side.sums]
    plant(image, side.pack())
    image_before = image.read_bytes()
    p = any_isolde.run("verify", "--image", image, "--shield", "--ops", 300, "--json")
    first = min(side.known())
    refused(p, f"side file {side_file(image)} does not match image {image} at block {first}")
    assert image.read_bytes() == image_before
    assert Side.read(image).sums == side.sums, "the planted file is left for the user to see"
    # Removed as told, the shield learns afresh.
    side_file(image).unlink()
    p, r = any_isolde.verify(image, "--shield", "--ops", 300)
    assert p.returncode == 0 and r["restarts"] == 0, p.stderr


def test_side_file_owned_by_another_uid_is_an_error(isolde, image):
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another uid")
    p, r = isolde.verify(image, "--shield", "--ops", 100)
    assert p.returncode == 0, p.stderr
    os.chown(side_file(image), 65534, 65534)
    p = isolde.run("verify", "--image", image, "--shield", "--ops", 100, "--json")
    refused(p, f"side file {side_file(image)} is owned by uid 65534, not by uid 0 that runs isolde")


def test_side_file_writable_by_others_is_an_error(isolde, image):
    p, r = isolde.verify(image, "--shield", "--ops", 100)
    assert p.returncode == 0, p.stderr
    os.chmod(side_file(image), 0o666)
    p = isolde.run("verify", "--image", image, "--shield", "--ops", 100, "--json")
    refused(p, "is writable by users other than its owner (mode 0666)")


def test_corrupt_side_file_is_an_error(isolde, image):
    p, r = isolde.verify(image, "--shield", "--ops", 100)
    assert p.returncode == 0, p.stderr
    data = bytearray(side_file(image).read_bytes())
    data[-1] ^= 1
    plant(image, bytes(data))
    p = isolde.run("verify", "--image", image, "--shield", "--ops", 100, "--json")
    refused(p, "is corrupt: its checksum does not match its contents")


def test_image_changed_outside_isolde_is_an_error(isolde, image):
    p, r = isolde.verify(image, "--shield", "--ops", 100)
    assert p.returncode == 0, p.stderr
    with open(image, "r+b") as f:
        f.write(b"changed by someone else")
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    p = isolde.run("verify", "--image", image, "--shield", "--ops", 100, "--json")
    refused(p, f"was written for image {image} as it was before (its modification time changed since)",
            "the image was changed outside isolde")


def test_lying_error_status_is_not_believed(isolde, image):
    p, r = isolde.fault_verify(image, "lie-ioerr", 100, "--ops", 300, "--qd", 8)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["restarts_by_reason"]["error-status"] >= 1
    assert "asking a fresh driver to confirm" in p.stderr


def corrupt_write(isolde, image, *extra):
    """fault-driver flips one byte of the 20th WRITE of its first generation
    before writing it, and says it wrote it."""
    return isolde.fault_verify(image, "corrupt-write", 20, "--ops", 400, "--qd", 4, "--shield", *extra)


@pytest.mark.parametrize("copy", ["copy", "zero-copy"])
def test_a_write_the_driver_falsified_never_reads_back(any_isolde, image, copy):
    """The shield knows what the caller wrote - for a zero-copy buffer, which
    the driver can change while the write is in flight, from the moment it
    was submitted - so the falsified block is refused when read (EIO after
    two restarts), never returned."""
    p, r = corrupt_write(any_isolde, image, *(["--zero-copy"] if copy == "zero-copy" else []))
    assert "injecting fault corrupt-write" in p.stderr
    assert r["mismatches"] == 0, "the falsified data reached the application"
    assert r["errors"] == 1 and r["shield"]["mismatches"] >= 1
    assert r["restarts_by_reason"]["silent-corruption"] == 2
    assert "still differs from what was written after 2 driver restarts" in p.stderr


def test_a_read_the_shield_refuses_leaves_no_data_behind(any_isolde, image):
    """A read that fails because its data contradicts the shield leaves the
    caller's buffer cleared: verify fills each read buffer before it submits
    it and checks that a failed read left that or zeroes."""
    p, r = corrupt_write(any_isolde, image)
    assert r["errors"] == 1
    assert r["error_reads_with_data"] == 0, "the refused data stayed in the caller's buffer"
