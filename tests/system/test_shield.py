"""The integrity shield: a driver that returns well-formed responses with
wrong data is caught, restarted and replayed; the checksums persist."""
import struct


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
    sidecar = image.parent / (image.name + ".isolde-shield")
    head = sidecar.read_bytes()[:16]
    magic, version, state = struct.unpack("<QII", head)
    assert magic == 0x444C454948534C49 and version == 1
    assert state == 1, "clean after close"
    # A second run loads the checksums written by the first.
    p, r = isolde.verify(image, "--shield", "--ops", 300, "--seed", 5)
    assert p.returncode == 0 and r["shield"]["verified"] > 0


def test_lying_error_status_is_not_believed(isolde, image):
    p, r = isolde.fault_verify(image, "lie-ioerr", 100, "--ops", 300, "--qd", 8)
    assert p.returncode == 0, p.stderr
    assert r["errors"] == 0 and r["restarts_by_reason"]["error-status"] >= 1
    assert "asking a fresh driver to confirm" in p.stderr
