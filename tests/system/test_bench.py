"""isolde bench: the JSON schema, figures that make sense (never a speed
threshold), the Markdown report with its plots, and bad arguments."""
import json

import pytest

MODES = {"direct", "event", "spin", "hybrid"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, isolde):
    d = tmp_path_factory.mktemp("bench")
    image = d / "image"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    p = isolde.run("bench", "--image", image, "--seconds", "0.3", "--qd", "1,4", "--bs", "4k,16k",
                   "--rw", "randread,randrw", "--copy", "zero,copy", "--idle-seconds", "0.5",
                   "--json", d / "out.json", "--report", d / "report", timeout=600)
    assert p.returncode == 0, p.stderr
    return d, json.loads((d / "out.json").read_text()), p


def test_json_schema(bench):
    _, doc, _ = bench
    m = doc["machine"]
    for key in ("cpu", "cpus", "kernel", "memory_bytes", "image_fs", "image_bytes", "date", "command"):
        assert key in m
    assert m["cpus"] >= 1 and m["image_bytes"] == 16 << 20
    rows = doc["results"]
    # direct once per (bs, rw); isolated modes per (qd, copy) too.
    assert len(rows) == 2 * 2 * (1 + 3 * 2 * 2)
    for r in rows:
        assert set(r) >= {"mode", "qd", "bs", "rw", "copy", "iops", "mbps", "lat_us", "cpu_us_per_io",
                          "kicks_per_io", "calls_per_io"}
        assert r["mode"] in MODES and r["rw"] in ("randread", "randrw") and r["bs"] in (4096, 16384)
        assert set(r["lat_us"]) == {"p50", "p99", "p999", "max"}
        assert set(r["cpu_us_per_io"]) == {"front", "driver"}
        if r["mode"] == "direct":
            assert r["copy"] == "none" and r["qd"] == 1
        else:
            assert r["copy"] in ("zero", "copy") and r["qd"] in (1, 4)
    assert {r["mode"] for r in rows} == MODES


def test_figures_are_sane(bench):
    _, doc, _ = bench
    for r in doc["results"]:
        what = f'{r["mode"]} qd{r["qd"]} {r["bs"]} {r["rw"]} {r["copy"]}'
        assert r["errors"] == 0, what
        assert r["ios"] > 0 and r["iops"] > 0 and r["mbps"] > 0, what
        assert abs(r["mbps"] - r["iops"] * r["bs"] / 1e6) <= 0.01 * r["mbps"] + 0.01, what
        lat = r["lat_us"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"], what
        cpu = r["cpu_us_per_io"]
        assert cpu["front"] > 0, what
        if r["mode"] == "direct":
            assert cpu["driver"] == 0 and r["kicks_per_io"] == 0 and r["calls_per_io"] == 0, what
        else:
            assert cpu["driver"] > 0, what
        if r["mode"] == "spin":
            assert r["kicks_per_io"] == 0 and r["calls_per_io"] == 0, "spin never signals"
        if r["mode"] == "event":
            assert r["calls_per_io"] > 0, "event mode must be called"


def test_idle_cpu_is_measured(bench):
    _, doc, _ = bench
    idle = {i["mode"]: i for i in doc["idle"]}
    assert set(idle) == {"event", "spin", "hybrid"}
    for i in idle.values():
        assert i["seconds"] >= 0.5 and 0 <= i["driver_cpu_pct"] <= 101 and 0 <= i["front_cpu_pct"] <= 101
    # A spinning driver polls while idle; an event-driven one sleeps.
    assert idle["spin"]["driver_cpu_pct"] > idle["event"]["driver_cpu_pct"]


def test_report_has_tables_targets_and_plots(bench):
    d, _, p = bench
    md = (d / "report" / "bench.md").read_text()
    assert md.startswith("# Notification modes and the cost of isolation")
    assert "## Targets" in md and "| spin QD1 >= 0.75x direct IOPS |" in md
    assert "### 4 KiB randread" in md and "### 16 KiB randrw" in md
    for plot in ("latency-vs-qd", "iops-vs-qd", "cpu-per-io", "copy-vs-zero"):
        svg = (d / "report" / "plots" / f"{plot}.svg").read_text()
        assert "<svg" in svg and "</svg>" in svg, plot
        assert f"plots/{plot}.svg" in md
    assert "isolde bench: [1/" in p.stderr, "progress on stderr"


@pytest.mark.parametrize("args,message", [
    (["--modes", "direct,warp"], "--modes: unknown value 'warp'"),
    (["--qd", "0"], "--qd: '0'"),
    (["--bs", "4k,1000"], "--bs: 1000 is not a multiple of 512"),
    (["--rw", "randread,randread"], "--rw: 'randread' given twice"),
    (["--seconds", "0"], "--seconds: '0'"),
    (["--copy", ""], "--copy: empty list"),
])
def test_bad_arguments(isolde, image, args, message):
    p = isolde.run("bench", "--image", image, *args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "usage: isolde bench" in p.stderr


def test_image_required(isolde):
    p = isolde.run("bench")
    assert p.returncode == 2 and "--image is required" in p.stderr
