"""isolde inject: a SWIFI campaign of 200 faults against the real blk-file
driver. Zero front-end crashes, zero corrupt data returned, every detected
failure recovered or failed cleanly with an explained error."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from ceph_helpers import ceph_cluster  # noqa: F401  (the module's cluster, for blk-rbd)

TYPES = {"source-register", "destination-register", "pointer", "interface", "branch", "bit-flip", "nop",
         "heap"}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, isolde):
    d = tmp_path_factory.mktemp("inject")
    image = d / "image"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    p = isolde.run("inject", "--image", image, "--faults", 200, "--seed", 7, "--json", d / "c.json",
                   "--report", d / "report", timeout=1200)
    return p, json.loads((d / "c.json").read_text()), (d / "report" / "campaign.md").read_text()


def test_no_crash_no_corrupt_data(campaign):
    p, doc, _ = campaign
    assert p.returncode == 0, p.stderr[-3000:]
    t = doc["totals"]
    assert t["front_end_crash"] == 0
    assert t["corrupt_returned"] == 0
    assert t["injected"] + t["not_injected"] == 200


def test_faults_were_planted_and_some_struck(campaign):
    _, doc, _ = campaign
    t = doc["totals"]
    assert t["not_injected"] <= 10, "faults must really be planted"
    assert t["activated"] > 0 and t["recovered"] > 0
    assert set(doc["types"]) == TYPES
    for name, k in doc["types"].items():
        assert k["injected"] >= 20, name


OUTCOMES = ("not_activated", "activated_no_failure", "recovered", "io_error", "corrupt_returned",
            "front_end_crash", "not_injected")
EXPLANATIONS = ("the device failed: ", "the integrity shield refused ",
                " request(s) failed with an error status a fresh driver confirmed")


def test_every_failure_recovered_or_explained(campaign):
    """Every trial in which a failure was detected either recovered or
    returned an I/O error that the JSON and the report both explain; no
    trial ended any other way."""
    _, doc, md = campaign
    t, types = doc["totals"], doc["types"].values()
    # Each trial has exactly one outcome, and the types add up to the totals.
    assert sum(t[o] for o in OUTCOMES) == doc["campaign"]["faults"]
    for k in types:
        assert sum(k[o] for o in OUTCOMES) == k["injected"] + k["not_injected"]
    for o in OUTCOMES:
        assert sum(k[o] for k in types) == t[o], o
    for f in t["failures"]:
        assert sum(k["failures"][f] for k in types) == t["failures"][f], f
    # The only other ends a detected failure could have.
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    # A recovered or failed trial had at least one detected failure, and a
    # type with detected failures has trials that recovered or failed.
    for name, k in doc["types"].items():
        detected = sum(k["failures"].values())
        assert detected >= k["recovered"] + k["io_error"], name
        assert (detected > 0) == (k["recovered"] + k["io_error"] > 0), name
    # Every I/O error is listed and explained, in the JSON and in the report.
    errors = [x for x in doc["notable_trials"] if x["outcome"] == "io_error"]
    assert len(errors) == t["io_error"], "an I/O error trial is missing from notable_trials"
    for x in errors:
        assert x["target"] and any(e in x["error"] for e in EXPLANATIONS), x
    failed = t["recovered"] + t["io_error"]
    assert f"Trials with a detected failure: {failed}, of which {t['recovered']} " in md
    assert f"and {t['io_error']} returned an I/O error (explained below)" in md
    parts = md.split("\n## Trials that ended in an I/O error\n")
    assert len(parts) == (2 if errors else 1)
    listed = [line for line in parts[-1].splitlines() if line.startswith("- ")] if errors else []
    assert len(listed) == len(errors)
    for line, x in zip(listed, errors):
        assert line == f"- {x['type']} at `{x['target']}`: {x['error']}"


def test_report(campaign):
    _, doc, md = campaign
    assert md.startswith("# Fault-injection campaign")
    assert "**Corrupt data returned to the application: 0. Front-end crashes: 0.**" in md
    for name in TYPES:
        assert f"| {name} |" in md


def test_bad_arguments(isolde, image):
    p = isolde.run("inject", "--image", image, "--faults", 5, "--types", "cosmic-ray")
    assert p.returncode == 2 and "unknown fault type 'cosmic-ray'" in p.stderr
    p = isolde.run("inject", "--image", image)
    assert p.returncode == 2 and "--faults (or --trials-per-type) is required" in p.stderr


# ---------------------------------------------------------------------------
# the network driver: net-tap, its frames checked end to end (net_verify.c)
# ---------------------------------------------------------------------------

NET_FAULTS = 120
NET_EXPLANATIONS = ("the device failed: ", "frames lost with no failure detected")


@pytest.fixture(scope="module")
def net_campaign(tmp_path_factory, isolde):
    d = tmp_path_factory.mktemp("inject-net")
    p = isolde.run("inject", "--driver", "net-tap", "--faults", NET_FAULTS, "--seed", 7, "--json", d / "c.json",
                   "--report", d / "report", timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, json.loads((d / "c.json").read_text()), (d / "report" / "campaign.md").read_text()


def test_net_no_crash_no_corrupt_frame(net_campaign):
    """A frame that passes the end-to-end hash is exactly a frame that was
    sent; the front end never crashes; faults are really planted and some
    strike and are recovered."""
    _, doc, _ = net_campaign
    t = doc["totals"]
    assert t["front_end_crash"] == 0 and t["corrupt_returned"] == 0
    assert t["injected"] + t["not_injected"] == NET_FAULTS
    assert t["not_injected"] <= 5, "faults must really be planted"
    assert t["activated"] > 0 and t["recovered"] > 0
    assert set(doc["types"]) == TYPES
    # Traffic went both ways in every trial: 100 frames each way at least.
    assert t["frames"]["sent"] >= 200 * t["injected"]
    assert t["frames"]["lost"] < t["frames"]["sent"]


def test_net_every_failure_recovered_or_explained(net_campaign):
    _, doc, md = net_campaign
    t, types = doc["totals"], doc["types"].values()
    assert sum(t[o] for o in OUTCOMES) == NET_FAULTS
    for o in OUTCOMES:
        assert sum(k[o] for k in types) == t[o], o
    for name, k in doc["types"].items():
        assert sum(k["failures"].values()) >= k["recovered"], name
    errors = [x for x in doc["notable_trials"] if x["outcome"] == "io_error"]
    assert len(errors) == t["io_error"]
    for x in errors:
        assert x["target"] and any(e in x["error"] for e in NET_EXPLANATIONS), x
    assert "frames each way through the driver and its TAP" in md
    assert f"and {t['io_error']} left the device failed or dead (explained below)" in md
    f = t["frames"]
    assert (f"Frames: {f['sent']} sent (both ways), {f['lost']} lost, {f['duplicated']} duplicated, "
            f"{f['caught_by_hash']} damaged by the driver") in md
    if errors:
        listed = md.split("\n## Trials that ended in a failed or dead device\n")[1]
        assert len([line for line in listed.splitlines() if line.startswith("- ")]) == len(errors)


def test_net_bad_arguments(isolde, image):
    p = isolde.run("inject", "--driver", "net-tap", "--image", image, "--faults", 5)
    assert p.returncode == 2 and "--image: a network driver (net-tap) has no image" in p.stderr
    p = isolde.run("inject", "--driver", "net-nonesuch", "--faults", 5)
    assert p.returncode == 1 and "net-nonesuch" in p.stderr


# ---------------------------------------------------------------------------
# MINIX's shape: many faults of one type planted together (make campaign)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("driver", ["blk-file", "net-tap"])
def test_many_faults_per_trial(tmp_path, isolde, driver):
    """--trials-per-type 3 --faults-per-trial 20: every trial plants 20
    faults of its type at distinct instructions; heap faults are observable
    (activated when their instruction reads the driver's own data); every
    detected failure is recovered or explained; no corrupt data, no crash."""
    image = []
    if driver.startswith("blk-"):
        (tmp_path / "image").write_bytes(b"")
        os.truncate(tmp_path / "image", 8 << 20)
        image = ["--image", tmp_path / "image"]
    p = isolde.run("inject", "--driver", driver, *image, "--trials-per-type", 3, "--faults-per-trial", 20,
                   "--seed", 11, "--json", tmp_path / "c.json", "--report", tmp_path / "r", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "c.json").read_text())
    t = doc["totals"]
    assert doc["campaign"]["faults"] == 24 and doc["campaign"]["faults_per_trial"] == 20
    assert t["injected"] == 24 and t["faults"] == 24 * 20
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    for name, k in doc["types"].items():
        assert k["faults"] == 3 * 20, name
        assert k["faults_activated"] <= k["faults"] and (k["activated"] > 0) == (k["faults_activated"] > 0)
    # With 20 faults a trial, every type strikes, heap included.
    assert doc["types"]["heap"]["faults_activated"] > 0, doc["types"]["heap"]
    assert sum(1 for k in doc["types"].values() if k["activated"]) == len(TYPES)
    assert set(t["denials"]) == {"device", "memory", "process", "network", "file", "other"}
    md = (tmp_path / "r" / "campaign.md").read_text()
    assert md.startswith(f"# Fault-injection campaign\n\n{24 * 20} faults in 24 trials (20 per trial, of one type)")
    assert "| fault type | device | memory | process | network | file | other | total |" in md
    errors = [x for x in doc["notable_trials"] if x["outcome"] == "io_error"]
    assert len(errors) == t["io_error"]
    for x in errors:
        assert any(e in x["error"] for e in EXPLANATIONS + NET_EXPLANATIONS), x


def test_campaign_summary(tmp_path, isolde):
    """make campaign's summary (bench/campaign_summary.py) over a real
    campaign and a driver run in parts: the parts are summed into one row,
    every trial that failed cleanly is counted under its FAULTS.md class,
    and one whose reason is no class of FAULTS.md is counted as such, not
    hidden among the explained."""
    (tmp_path / "image").write_bytes(b"")
    os.truncate(tmp_path / "image", 8 << 20)
    (tmp_path / "blk-file").mkdir()
    p = isolde.run("inject", "--driver", "blk-file", "--image", tmp_path / "image", "--trials-per-type", 1,
                   "--faults-per-trial", 10, "--seed", 5, "--json", tmp_path / "blk-file" / "campaign.json",
                   timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    real = json.loads((tmp_path / "blk-file" / "campaign.json").read_text())
    # The same campaign as two parts of a driver, one with a trial whose
    # end no class of FAULTS.md explains and one with each explained block class.
    odd = json.loads(json.dumps(real))
    odd["totals"]["recovered"] -= 1
    odd["totals"]["io_error"] += 1
    odd["notable_trials"] = [{"type": "nop", "outcome": "io_error", "target": "t",
                              "error": "something no class explains"}]
    explained = json.loads(json.dumps(real))
    explained["totals"]["recovered"] -= 3
    explained["totals"]["io_error"] += 3
    explained["notable_trials"] = [{"type": "nop", "outcome": "io_error", "target": "t", "error": e} for e in (
        "the integrity shield refused 2 block(s) that still differed from what was written after restarts",
        "1 request(s) failed with an error status a fresh driver confirmed",
        "the device failed: driver blk-x failed (hang) after 10 restarts in a row")]
    for k, doc in enumerate((odd, explained), 1):
        (tmp_path / "blk-x" / f"part-{k}").mkdir(parents=True)
        (tmp_path / "blk-x" / f"part-{k}" / "campaign.json").write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, ROOT / "bench" / "campaign_summary.py", tmp_path, "blk-file", "blk-x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    t = real["totals"]
    clean_head = next(line for line in out.stdout.splitlines() if "not a class of FAULTS.md |" in line)
    assert clean_head.strip("| ").split(" | ")[1:] == [
        "a write that never happened", "an error the device confirms", "the device gives up",
        "frames lost with no failure detected", "not a class of FAULTS.md", "failed cleanly"]
    lines = out.stdout.splitlines()
    main_row = next(line for line in lines if line.startswith("| blk-x | ") and line.count("|") > 12)
    cells = main_row.strip("| ").split(" | ")
    assert cells[1:4] == [str(2 * t["faults"]), str(2 * t["injected"]), str(2 * t["faults_activated"])]
    assert cells[-4:-1] == [str(2 * t["recovered"] - 4), str(2 * t["io_error"] + 4), "0"]
    clean_rows = [line.strip("| ").split(" | ") for line in lines[lines.index(clean_head) + 2:]
                  if line.startswith("| blk-")][:2]
    assert clean_rows[1] == ["blk-x", "1", "1", "1", "0", "1", "4"]
    assert int(clean_rows[0][5]) == 0
    assert ", 1 of them with a reason that is not a class of FAULTS.md" in out.stdout


def test_remote_driver_blk_nbd(tmp_path, isolde):
    """blk-nbd (a PIE linked with libnbd: its own code, relocated to where it
    is loaded) against nbdkit's memory plugin: faults strike, no corrupt
    data - the shield guards a remote image for the session - no crash.
    nbdkit runs one thread per connection: Debian 12's nbdkit 1.32, serving
    a client that drops the connection in the middle of a reply on several
    threads, can abort (connections.c raw_send_socket: `sock >= 0`)."""
    from test_blk_nbd import Nbdkit
    srv = Nbdkit("unix", None, "--threads", "1", plugin_args=["memory", "16M"]).start()
    try:
        p = isolde.run("inject", "--driver", "blk-nbd", "--image", srv.uri(), "--trials-per-type", 4,
                       "--faults-per-trial", 10, "--seed", 5, "--json", tmp_path / "c.json", timeout=900)
        log = srv.log()
    finally:
        srv.close()
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "c.json").read_text())
    t = doc["totals"]
    assert t["injected"] == 32 and t["not_injected"] == 0, (doc["notable_trials"][:3], log)
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    assert t["faults_activated"] > 0 and t["recovered"] > 0
    for x in (x for x in doc["notable_trials"] if x["outcome"] == "io_error"):
        assert any(e in x["error"] for e in EXPLANATIONS), x


def rbd_campaign(isolde, cluster, name, tmp_path, *args):
    cluster.create_image(name, 8)
    p = isolde.run("inject", "--driver", "blk-rbd", "--image", cluster.image_spec(name), *args,
                   "--json", tmp_path / "c.json", "--report", tmp_path / "r", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((tmp_path / "c.json").read_text()), (tmp_path / "r" / "campaign.md").read_text()


def test_remote_driver_blk_rbd(tmp_path, isolde, ceph_cluster):
    """blk-rbd against a real Ceph cluster, with librbd's own code in the
    fault space: its exported C API, decoded from the stripped library's
    dynamic symbols and relocated to where the driver has it loaded. Faults
    strike in both, every failure is recovered or explained, no corrupt
    data, no crash."""
    doc, md = rbd_campaign(isolde, ceph_cluster, "inject-space", tmp_path, "--trials-per-type", 3,
                           "--faults-per-trial", 40, "--seed", 5)
    t = doc["totals"]
    assert t["injected"] == 24 and t["not_injected"] == 0, doc["notable_trials"][:3]
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    assert t["faults_activated"] > 0 and t["recovered"] > 0
    assert 0 < t["faults_activated_in_libraries"] <= t["faults_activated"], t
    assert re.search(r"\d+ instructions of its own code and \d+ of librbd's C API \(/\S+/librbd\.so\.1[.\d]*, "
                     r"rbd_\*\)", md), md[:600]
    for x in (x for x in doc["notable_trials"] if x["outcome"] == "io_error"):
        assert any(e in x["error"] for e in EXPLANATIONS), x


def test_faults_reached_by_librbd_threads(tmp_path, isolde, ceph_cluster):
    """librbd completes a request on a thread of its own, which runs
    blk-rbd's on_complete: faults planted there are reached by that thread,
    so the tracer must follow every thread of the driver. A thread it did
    not trace would die of the breakpoint's SIGTRAP (a CPU exception, which
    no NOP can cause) instead of running the fault."""
    doc, md = rbd_campaign(isolde, ceph_cluster, "inject-threads", tmp_path, "--function", "on_complete",
                           "--types", "nop,heap", "--trials-per-type", 2, "--faults-per-trial", 4, "--seed", 3)
    t = doc["totals"]
    assert t["injected"] == 4 and t["faults_activated"] > 0, t
    assert t["faults_activated_off_main_thread"] == t["faults_activated"], t
    assert doc["types"]["nop"]["failures"]["cpu-exception"] == 0, doc["types"]["nop"]
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    assert "faults only in on_complete" in md
    assert "were reached by a thread other than the driver's first" in md


def test_heap_faults_in_a_threaded_driver(tmp_path, isolde, ceph_cluster):
    """A heap fault whose read was not the driver's data is stepped over on
    the thread that reached it. When that is the driver's first thread and
    the driver dies meanwhile, its other threads' exits must be reaped
    while the tracer waits, or the driver's own exit is never reported: the
    tracer waited for it alone, the front end for its exit, and the first
    full blk-rbd campaign stood still at its first heap trial."""
    doc, _ = rbd_campaign(isolde, ceph_cluster, "inject-heap", tmp_path, "--types", "heap",
                          "--trials-per-type", 6, "--faults-per-trial", 100, "--seed", 1)
    t = doc["totals"]
    assert t["injected"] == 6 and t["faults_activated"] > 0, t
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0


def test_function_argument(isolde, image):
    p = isolde.run("inject", "--image", image, "--faults", 8, "--function", "no_such_function")
    assert p.returncode == 2, p.stderr
    assert "--function: no_such_function is not a function of blk-file's fault space" in p.stderr


def test_trial_count_arguments(isolde, image):
    p = isolde.run("inject", "--image", image, "--faults", 8, "--trials-per-type", 2)
    assert p.returncode == 2 and "--faults and --trials-per-type both give the number of trials" in p.stderr
    p = isolde.run("inject", "--image", image, "--faults", 8, "--faults-per-trial", 129)
    assert p.returncode == 2 and "--faults-per-trial" in p.stderr
    p = isolde.run("inject", "--image", image, "--faults", 8, "--rounds", 0)
    assert p.returncode == 2 and "--rounds" in p.stderr


def test_rounds_run_while_faults_wait(tmp_path, isolde, image):
    """--rounds 4: a trial whose fault never ran is given up to 4 rounds of
    the workload (4 x --ops writes), one whose fault ran and killed the
    driver just one; the campaign records the bound."""
    p = isolde.run("inject", "--image", image, "--types", "nop", "--faults", 6, "--ops", 50, "--rounds", 4,
                   "--seed", 3, "--json", tmp_path / "c.json", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["campaign"]["rounds"] == 4
    t = doc["totals"]
    assert t["corrupt_returned"] == 0 and t["front_end_crash"] == 0
    # Each trial ran 1 to 4 rounds, and those whose fault never ran all 4.
    assert 4 * t["not_activated"] <= t["rounds"] <= 4 * t["injected"]
    assert t["rounds"] >= t["injected"]
    if t["recovered"]:
        assert t["rounds"] < 4 * t["injected"], "a trial whose driver died still ran every round"
