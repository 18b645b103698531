"""Fixtures for system tests: the real isolde binaries, temporary images,
and helpers that run them and always clean up the processes they start."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("ISOLDE_BUILD", ROOT / "build"))
ASAN_BUILD = Path(os.environ.get("ISOLDE_ASAN_BUILD", ROOT / "build-asan"))

MODES = ["event", "spin", "hybrid"]
POLICIES = ROOT / "tests" / "drivers"
FAULT_POLICY = POLICIES / "fault-driver.policy"
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


class Build:
    def __init__(self, root: Path, name: str):
        self.root = root
        self.name = name
        self.isolde = root / "src" / "tools" / "isolde"
        # Faulty drivers always come from the normal build: a sanitizer in
        # the driver would catch its deliberate crash before the front end
        # sees it. The front end under test is this build's.
        self.fault_driver = BUILD / "tests" / "drivers" / "fault-driver"

    def available(self):
        return self.isolde.exists() and self.fault_driver.exists()


def sanitizer_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=86"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87"
    return env


class Isolde:
    """Runs one build's isolde binary."""

    def __init__(self, build: Build):
        self.build = build

    def run(self, *args, timeout=120, check_sanitizers=True):
        p = subprocess.run([str(self.build.isolde), *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, env=sanitizer_env())
        if check_sanitizers:
            assert_no_sanitizer_report(p.stderr)
        return p

    def verify(self, image, *args, timeout=120):
        p = self.run("verify", "--image", image, "--json", *args, timeout=timeout)
        assert p.stdout.strip(), f"no JSON on stdout; stderr:\n{p.stderr}"
        return p, json.loads(p.stdout)

    def fault_verify(self, image, fault, after, *extra, policy=FAULT_POLICY, timeout=120):
        """verify through fault-driver, which misbehaves at request `after`
        of every driver generation."""
        return self.verify(image, "--driver", self.build.fault_driver, "--policy", policy,
                           f"--driver-arg=--fault={fault}", f"--driver-arg=--after={after}",
                           *extra, timeout=timeout)

    def start(self, *args):
        """Start isolde in the background; the caller must stop() it."""
        return subprocess.Popen([str(self.build.isolde), *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=sanitizer_env(),
                                start_new_session=True)


def assert_no_sanitizer_report(stderr):
    for marker in SANITIZER_MARKERS:
        assert marker not in stderr, f"sanitizer report:\n{stderr}"


def need_tools(*tools, packages):
    """Tools are packages `make deps` installs: missing is a failure, never a skip."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make deps` as root ({packages})")


def kill_session(proc, timeout=10):
    """SIGKILL everything in proc's session and wait for proc, leaving its
    pipes to whoever reads them (a drain thread, communicate)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def stop(proc):
    """Kill a background isolde and everything in its session, and reap it."""
    kill_session(proc)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def driver_children(pid):
    """The current driver processes of an isolde process: children of any of
    its threads (isolde serve starts each device's drivers from that device's
    thread)."""
    children = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return children


def process_age(pid):
    """Seconds since pid started (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def sigkill_storm(proc, seconds, min_age=0.0, age_of=None):
    """SIGKILL proc's drivers every few milliseconds for `seconds`, each once
    it has run min_age seconds - or, with age_of (a function of nothing), an
    age of its own drawn from age_of when it is first seen; returns how
    many kills landed."""
    kills = 0
    ages = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        for pid in driver_children(proc.pid):
            age = ages.setdefault(pid, age_of()) if age_of else min_age
            if age and process_age(pid) < age:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(0.004)
    return kills


def assert_storm_was_invisible(returncode, out, err, kills):
    """What a verify run under sigkill_storm must show: every kill recovered,
    no error, no mismatch."""
    assert returncode == 0, err[-3000:]
    r = json.loads(out)
    assert kills >= 50, f"only {kills} kills landed"
    assert r["errors"] == 0 and r["mismatches"] == 0 and r["error"] is None
    assert r["restarts"] >= 50
    assert r["restarts_by_reason"]["killed"] == r["restarts"] - r["restarts_by_reason"]["start-failure"]
    assert r["replayed"] > 0
    assert_no_sanitizer_report(err)


DRIVER_UID_BASE = 0x70000000  # src/domain/sandbox.h: a driver's uid is this + its pid


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_own_identity(pid):
    """As root, a driver runs as a uid and gid of its own (the base + its pid),
    with no groups and no capabilities."""
    st = proc_status(pid)
    own = str(DRIVER_UID_BASE + pid)
    assert st["Uid"].split() == [own] * 4 and st["Gid"].split() == [own] * 4, st["Uid"]
    assert st["Groups"].strip() == ""
    assert st["CapEff"] == st["CapPrm"] == "0000000000000000"


def read_driver_pid(proc, timeout=20):
    """isolde verify announces 'driver X is pid N' on stderr once it runs."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if " is pid " in line:
            return int(line.split(" is pid ")[1].split()[0])
    raise AssertionError("isolde never announced its driver pid:\n" + "".join(lines))


@pytest.fixture(scope="session")
def builds():
    normal = Build(BUILD, "normal")
    if not normal.available():
        pytest.fail(f"isolde is not built in {BUILD}: run make")
    return normal


@pytest.fixture(scope="session")
def isolde(builds):
    return Isolde(builds)


def _asan_build():
    b = Build(ASAN_BUILD, "asan")
    return b if b.available() else None


@pytest.fixture(scope="session", params=["normal", "asan"])
def any_isolde(request, builds):
    """The normal build and the ASan+UBSan build."""
    if request.param == "normal":
        return Isolde(builds)
    b = _asan_build()
    if b is None:
        pytest.fail(f"the ASan build is missing in {ASAN_BUILD}: run make build-asan")
    return Isolde(b)


@pytest.fixture
def image(tmp_path):
    """A 32 MiB sparse image, removed with tmp_path."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    yield path
    path.unlink(missing_ok=True)
