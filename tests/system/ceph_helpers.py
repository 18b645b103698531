"""A real single-node Ceph cluster for the system tests: one monitor and one
memstore OSD, cephx on, everything in a temporary directory.

Nothing outside that directory is read or written: every tool gets `-c` with
the directory's ceph.conf, whose paths (data, keyrings, logs, admin sockets,
run dir) all point inside it. The daemons run in the foreground (`-f`) as
children of this process, each in a session of its own and with a parent-death
signal, so stop() - or the death of the test run - ends them.

    with CephCluster() as c:            # or the `ceph_cluster` fixture
        c.create_image("img", 64)
        c.rbd("info", "isolde/img")

The monitor listens on the standard ports (msgr2 3300, v1 6789) on 127.0.0.1
and the OSD within 6800-7300: the ports blk-rbd's sandbox may connect to.
"""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import conftest

MON_PORTS = (3300, 6789)
OSD_PORT_RANGE = (6800, 7300)
POOL = "isolde"
CLIENT_ID = "isolde"
MON_ID = "a"
MEMSTORE_BYTES = 2 << 30  # the OSD's whole store, in RAM (objects' logical bytes)
START_TIMEOUT = 60        # seconds for any one step of the bring-up
TOOLS = ("ceph", "ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool", "rbd")
PACKAGES = "ceph-mon, ceph-osd, ceph-common"

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn: the daemon gets SIGKILL when the test run dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def need_ceph():
    conftest.need_tools(*TOOLS, packages=PACKAGES)


# How long a cluster waits for another to give the standard ports back.
PORT_WAIT = 600


def port_busy(port):
    """True if something on this host already listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})\n"


def processes_mentioning(text):
    """Pids of live processes whose command line contains text (a cluster's
    directory: every daemon and tool of it gets its ceph.conf with -c)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry))
    return pids


class CephError(Exception):
    pass


class CephCluster:
    """One monitor, one memstore OSD, pool `isolde` (rbd), client.isolde."""

    def __init__(self, base_dir=None, timeout=START_TIMEOUT, port_wait=PORT_WAIT):
        self.port_wait = port_wait
        self.timeout = timeout  # seconds for any one step of the bring-up
        self.dir = Path(tempfile.mkdtemp(prefix="isolde-ceph-", dir=base_dir))
        self.fsid = str(uuid.uuid4())
        self.conf = self.dir / "ceph.conf"
        self.admin_keyring = self.dir / "ceph.client.admin.keyring"
        self.mon_keyring = self.dir / "ceph.mon.keyring"
        self.client_id = CLIENT_ID
        self.client_keyring = self.dir / f"ceph.client.{CLIENT_ID}.keyring"
        self.pool = POOL
        self.mon_host = f"[v2:127.0.0.1:{MON_PORTS[0]}/0,v1:127.0.0.1:{MON_PORTS[1]}/0]"
        self.mon_data = self.dir / "mon" / f"ceph-{MON_ID}"
        self.osd_data = self.dir / "osd" / "ceph-0"
        self.log_dir = self.dir / "log"
        self.mon = None
        self.osd = None
        self.started = []  # every daemon Popen ever started, for stop()
        self.bringup_seconds = None

    # ---- running tools ----

    def _run(self, argv, timeout=START_TIMEOUT, check=True, input=None, text=True):
        try:
            p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, text=text,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CephError(f"`{' '.join(map(str, argv))}` did not finish within {timeout} s"
                            + self._log_tails())
        if check and p.returncode != 0:
            err = p.stderr if text else p.stderr.decode(errors="replace")
            raise CephError(f"`{' '.join(map(str, argv))}` failed ({p.returncode}):\n{err[-3000:]}")
        return p

    def ceph(self, *args, timeout=START_TIMEOUT, check=True):
        """The ceph CLI as client.admin; returns the CompletedProcess."""
        return self._run(["ceph", "-c", self.conf, "--connect-timeout", str(timeout), *map(str, args)],
                         timeout=timeout + 5, check=check)

    def rbd(self, *args, timeout=START_TIMEOUT, check=True, input=None, text=True):
        """The rbd CLI as client.admin."""
        return self._run(["rbd", "-c", self.conf, *map(str, args)], timeout=timeout, check=check,
                         input=input, text=text)

    def create_image(self, name, size_mb, *args):
        """An image with the default features (exclusive-lock among them)."""
        self.rbd("create", "--size", f"{int(size_mb)}M", *args, f"{self.pool}/{name}")
        return f"{self.pool}/{name}"

    def remove_image(self, name):
        """Remove an image unless someone still watches it (a SIGKILLed
        client's watch lasts 30 s, which `rbd rm` would wait out); True if
        it is gone."""
        spec = f"{self.pool}/{name}"
        st = self.rbd("status", "--format", "json", spec, check=False)
        if st.returncode != 0 or json.loads(st.stdout).get("watchers"):
            return False
        self.rbd("snap", "purge", "--no-progress", spec, check=False)
        return self.rbd("rm", "--no-progress", spec, check=False).returncode == 0

    def image_spec(self, name, snap=None):
        """isolde's image syntax for this cluster's image (as client.isolde)."""
        at = f"@{snap}" if snap else ""
        return (f"rbd:{self.pool}/{name}{at}:conf={self.conf}:id={self.client_id}"
                f":keyring={self.client_keyring}")

    # ---- bring-up ----

    def _write_conf(self):
        osd_min, osd_max = OSD_PORT_RANGE
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon initial members = {MON_ID}
mon host = {self.mon_host}
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
pid file = {d}/run/$cluster-$name.pid
log file = {self.log_dir}/$cluster-$name.log
log to stderr = false
err to stderr = true
crash dir = {d}/crash
exporter sock dir = {d}/run
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
ms bind port min = {osd_min}
ms bind port max = {osd_max}
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon osd min down reporters = 1
osd max object name len = 256
osd max object namespace len = 64
client mount timeout = 30
auth allow insecure global id reclaim = false
# Bring-up speed: the monitor commits maps every 1 s by default.
paxos propose interval = 0.1
rados mon op timeout = 30

[mon]
mon cluster log file = {self.log_dir}/$cluster.log
admin socket = {d}/run/$cluster-$name.asok

[osd]
admin socket = {d}/run/$cluster-$name.asok

# The tools (ceph, rbd) run side by side: no admin socket, which they would
# all want to bind at the same path.
[client]
admin socket =

[client.admin]
keyring = {self.admin_keyring}

[client.{self.client_id}]
keyring = {self.client_keyring}
""")

    def _check_ports(self, wait=PORT_WAIT):
        """The monitor needs the standard ports (the drivers' policy allows
        no others). One cluster a host at a time: a port held by another
        (a benchmark's, another run's) is waited for, then named."""
        deadline = time.monotonic() + wait
        for port in MON_PORTS:
            while port_busy(port):
                if time.monotonic() > deadline:
                    raise CephError(f"port {port} on 127.0.0.1 is already in use: the monitor needs the "
                                    f"standard ports {MON_PORTS[0]} and {MON_PORTS[1]} (is another Ceph "
                                    f"cluster running? waited {wait} s)")
                time.sleep(1)

    def _spawn(self, name, argv):
        out = open(self.log_dir / f"{name}.stdout", "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()
        self.started.append(p)
        return p

    def _log_tails(self):
        text = ""
        for name in ("mon", "osd"):
            for f in (self.log_dir / f"{name}.stdout",
                      self.log_dir / f"ceph-{name}.{MON_ID if name == 'mon' else 0}.log"):
                if f.exists():
                    text += f"\n--- last lines of {f} ---\n{tail(f)}"
        return text

    def _wait(self, what, cond, procs=()):
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    raise CephError(f"{what}: {p.args[0]} exited with {p.returncode}" + self._log_tails())
            if cond():
                return
            time.sleep(0.1)
        raise CephError(f"{what}: not within {timeout} s" + self._log_tails())

    def _mon_answers(self):
        return self.ceph("mon", "stat", timeout=5, check=False).returncode == 0

    def _start_mon(self):
        self.mon = self._spawn("mon", ["ceph-mon", "-f", "-c", str(self.conf), "-i", MON_ID])
        self._wait("the monitor answering", self._mon_answers, procs=[self.mon])

    def _osd_up_in(self):
        p = self.ceph("osd", "stat", "-f", "json", timeout=5, check=False)
        if p.returncode != 0:
            return False
        s = json.loads(p.stdout)
        s = s.get("osdmap", s)  # older releases nest it
        return s.get("num_up_osds") == 1 and s.get("num_in_osds") == 1

    def start(self):
        need_ceph()
        t0 = time.monotonic()
        self._check_ports(self.port_wait)
        for sub in ("run", "log", "crash", "mon", "osd"):
            (self.dir / sub).mkdir()
        self.log_dir = self.dir / "log"
        self._write_conf()
        conf = str(self.conf)
        # Keyrings: the monitor's (mon. and client.admin), the admin's.
        self._run(["ceph-authtool", "--create-keyring", self.mon_keyring, "--gen-key", "-n", "mon.",
                   "--cap", "mon", "allow *"])
        self._run(["ceph-authtool", "--create-keyring", self.admin_keyring, "--gen-key", "-n",
                   "client.admin", "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                   "--cap", "mds", "allow *", "--cap", "mgr", "allow *"])
        self._run(["ceph-authtool", self.mon_keyring, "--import-keyring", self.admin_keyring])
        monmap = self.dir / "monmap"
        self._run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", MON_ID,
                   self.mon_host, monmap])
        self._run(["ceph-mon", "-c", conf, "--mkfs", "-i", MON_ID, "--monmap", monmap,
                   "--keyring", self.mon_keyring])
        self._start_mon()
        # The OSD: an id, a store and a key, the key registered.
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "create", osd_uuid).stdout.strip()
        if osd_id != "0":
            raise CephError(f"`ceph osd create` gave id {osd_id!r}, not 0")
        self.osd_data.mkdir(parents=True, exist_ok=True)
        self._run(["ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--mkkey", "--osd-uuid", osd_uuid,
                   "--no-mon-config"])
        self.ceph("auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd",
                  "mgr", "allow profile osd", "-i", self.osd_data / "keyring")
        self.osd = self._spawn("osd", ["ceph-osd", "-f", "-c", conf, "-i", "0"])
        self._wait("osd.0 up and in", self._osd_up_in, procs=[self.mon, self.osd])
        # The pool, for rbd, and the client the driver uses.
        self.ceph("osd", "pool", "create", self.pool, "8")
        self.rbd("pool", "init", self.pool)
        key = self.ceph("auth", "get-or-create", f"client.{self.client_id}", "mon", "profile rbd",
                        "osd", f"profile rbd pool={self.pool}").stdout
        self.client_keyring.write_text(key)
        self.bringup_seconds = time.monotonic() - t0
        return self

    def client_key(self):
        """client.isolde's secret (base64), as the driver gets it."""
        for line in self.client_keyring.read_text().splitlines():
            k, _, v = line.partition("=")
            if k.strip() == "key":
                return v.strip()
        raise CephError(f"no key in {self.client_keyring}")

    def restart_mon(self):
        """Kill the monitor and start it again; returns once it answers."""
        self._kill(self.mon)
        self._start_mon()

    def daemon_pids(self):
        return [p.pid for p in self.started if p.poll() is None]

    # ---- teardown ----

    @staticmethod
    def _kill(p):
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        """Kill every daemon this cluster started and remove its directory."""
        for p in self.started:
            self._kill(p)
        survivors = [p.pid for p in self.started if p.poll() is None]
        survivors += [pid for pid in processes_mentioning(str(self.dir)) if pid not in survivors]
        shutil.rmtree(self.dir, ignore_errors=True)
        if survivors:
            raise CephError(f"processes {survivors} of the Ceph cluster in {self.dir} survived")

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def start_cluster():
    """A started cluster, or pytest.fail with what went wrong (the cluster
    is already stopped then)."""
    c = CephCluster()
    try:
        c.start()
    except CephError as e:
        c.stop()
        pytest.fail(f"the Ceph test cluster did not come up: {e}", pytrace=False)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def ceph_cluster():
    """A running single-node cluster for one test module; always torn down."""
    c = start_cluster()
    try:
        yield c
    finally:
        c.stop()
