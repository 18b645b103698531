"""make demo's job: a verified workload in each mode, nothing left behind."""
import os


def test_demo_runs_every_mode_and_leaves_nothing(isolde, tmp_path):
    p = isolde.run("demo", "--ops", 2000, "--dir", tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    for mode in ("event", "spin", "hybrid"):
        assert f"\n  {mode} " in p.stdout
    assert "All blocks verified in every mode" in p.stdout
    assert os.listdir(tmp_path) == [], "the demo left files behind"
