"""The Ceph test cluster itself (ceph_helpers.py): it comes up with cephx and
a memstore OSD, stores and returns data, survives a monitor restart, refuses
clearly when its ports are taken, and leaves no process or file behind,
whether its bring-up succeeded or failed."""
import hashlib
import os
import time

import pytest

import ceph_helpers
from ceph_helpers import CephCluster, CephError, ceph_cluster, processes_mentioning, start_cluster  # noqa: F401

MiB = 1 << 20


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def assert_gone(cluster, pids):
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"ceph daemon {pid} survived stop()"
    assert processes_mentioning(str(cluster.dir)) == []
    assert not cluster.dir.exists()


# These two start clusters of their own, so they run before the module's
# fixture holds the monitor's ports.

def test_bring_up_and_tear_down():
    c = start_cluster()
    try:
        pids = c.daemon_pids()
        assert len(pids) == 2
        print(f"\nCeph bring-up took {c.bringup_seconds:.2f} s")
        st = c.ceph("-s").stdout
        assert "1 osds: 1 up" in st and "1 in" in st, st
        auth = c.ceph("auth", "get", "client.isolde").stdout
        assert "profile rbd pool=isolde" in auth, auth
        conf = c.conf.read_text()
        assert "auth client required = cephx" in conf and "osd objectstore = memstore" in conf
        assert c.bringup_seconds < 30
    finally:
        c.stop()
    assert_gone(c, pids)


def test_failed_bring_up_cleans_up(monkeypatch):
    # An OSD that never comes up (as far as the wait can tell): the error
    # names the step and carries the daemons' logs; nothing survives.
    monkeypatch.setattr(CephCluster, "_osd_up_in", lambda self: False)
    c = CephCluster(timeout=3)
    with pytest.raises(CephError) as e:
        with c:
            pass
    msg = str(e.value)
    assert "osd.0 up and in: not within 3 s" in msg
    assert "--- last lines of" in msg
    assert_gone(c, [])


# ---- on the module's cluster ----

def test_busy_port_is_named(ceph_cluster):
    other = CephCluster(port_wait=2)
    try:
        with pytest.raises(CephError, match="port 3300 on 127.0.0.1 is already in use.*waited 2 s"):
            other.start()
    finally:
        other.stop()
    assert not other.dir.exists()


def test_import_export_round_trip(ceph_cluster, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(12 * MiB + 4096))
    ceph_cluster.rbd("import", src, f"{ceph_cluster.pool}/imported")
    out = tmp_path / "out.bin"
    ceph_cluster.rbd("export", f"{ceph_cluster.pool}/imported", out)
    assert sha256(out) == sha256(src)


def test_bench_then_mon_restart(ceph_cluster, tmp_path):
    spec = ceph_cluster.create_image("bench", 32)
    info = ceph_cluster.rbd("info", spec).stdout
    assert "exclusive-lock" in info, info
    ceph_cluster.rbd("bench", "--io-type", "write", "--io-size", "64K", "--io-total", "16M",
                     "--io-pattern", "rand", spec)
    before = tmp_path / "before.bin"
    ceph_cluster.rbd("export", spec, before)
    with open(before, "rb") as f:
        assert f.read(32 * MiB).count(0) < 32 * MiB, "bench wrote nothing"

    t0 = time.monotonic()
    old_mon = ceph_cluster.mon.pid
    ceph_cluster.restart_mon()
    print(f"\nmonitor restart took {time.monotonic() - t0:.2f} s")
    assert ceph_cluster.mon.pid != old_mon and not os.path.exists(f"/proc/{old_mon}")

    after = tmp_path / "after.bin"
    ceph_cluster.rbd("export", spec, after)
    assert sha256(after) == sha256(before)
    # And still writable: the OSD and the monitor found each other again.
    ceph_cluster.rbd("bench", "--io-type", "write", "--io-size", "4K", "--io-total", "1M", spec)


def test_client_isolde_can_use_its_pool(ceph_cluster, tmp_path):
    spec = ceph_cluster.create_image("asclient", 8)
    data = tmp_path / "d.bin"
    data.write_bytes(os.urandom(MiB))
    as_client = ["--id", ceph_cluster.client_id]
    ceph_cluster.rbd(*as_client, "import", data, f"{ceph_cluster.pool}/byclient")
    out = tmp_path / "o.bin"
    ceph_cluster.rbd(*as_client, "export", f"{ceph_cluster.pool}/byclient", out)
    assert sha256(out) == sha256(data)
    assert ceph_cluster.rbd(*as_client, "info", spec).returncode == 0
    # Its caps are the pool's: no other pool, no monitor writes.
    p = ceph_cluster.ceph("--id", ceph_cluster.client_id, "osd", "pool", "create", "other", "8",
                          check=False)
    assert p.returncode != 0
