"""isolde inject: a SWIFI campaign of 200 faults against the real blk-file
driver. Zero front-end crashes, zero corrupt data returned, every detected
failure recovered or failed cleanly with an explained error."""
import json

import pytest

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


def test_every_failure_recovered_or_explained(campaign):
    _, doc, _ = campaign
    t = doc["totals"]
    # A trial with a detected failure either recovered or returned an error.
    restarts = sum(t["failures"].values())
    assert restarts == 0 or t["recovered"] + t["io_error"] > 0
    for trial in doc["notable_trials"]:
        if trial["outcome"] == "io_error":
            assert trial["error"], "every I/O error is explained"


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
    assert p.returncode == 2 and "--faults is required" in p.stderr
