"""Policy files: every error names the file, line and field."""
import pytest

GOOD = """driver     fault-driver
device     read-write
syscalls   base io sync
memory     64M
files      16
heartbeat  2000ms
restart    100 per 60s
crash-loop 5
"""


def write(tmp_path, text, name="p.policy"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_policy(isolde, tmp_path):
    p = isolde.run("policy", "check", write(tmp_path, GOOD))
    assert p.returncode == 0 and "valid policy for driver fault-driver" in p.stdout


@pytest.mark.parametrize("line,replacement,message", [
    (2, "device     rw", ":2: field 'device': expected read-only or read-write"),
    (3, "syscalls   base ethernet", ":3: field 'syscalls': unknown group 'ethernet'"),
    (3, "syscalls   io sync", ":3: field 'syscalls': group 'base' is required"),
    (4, "memory     lots", ":4: field 'memory': expected a size"),
    (5, "files      3", ":5: field 'files': expected a number between 8 and 65536"),
    (6, "heartbeat  2000", ":6: field 'heartbeat': expected a duration"),
    (7, "restart    100 every 60s", ":7: field 'restart': expected 'N per Ss'"),
    (8, "crash-loop 0", ":8: field 'crash-loop': expected a number of restarts"),
    (8, "colour     blue", ":8: field 'colour': unknown key"),
])
def test_bad_field_is_named(isolde, tmp_path, line, replacement, message):
    lines = GOOD.splitlines()
    lines[line - 1] = replacement
    path = write(tmp_path, "\n".join(lines) + "\n")
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1
    assert f"{path}{message}" in p.stderr


@pytest.mark.parametrize("extra,message", [
    ("libraries  everything", ":9: field 'libraries': expected 'loaded'"),
    ("libraries  loaded usr/lib", ":9: field 'libraries': 'usr/lib' is not an absolute, normalised path"),
    ("libraries  loaded /usr/../etc", ":9: field 'libraries': '/usr/../etc' is not an absolute"),
    ("libraries  loaded /usr/lib/", ":9: field 'libraries': '/usr/lib/' is not an absolute"),
    ("libraries  loaded /", ":9: field 'libraries': '/' is not an absolute"),
    ("libraries  loaded " + " ".join(f"/l{i}" for i in range(9)), ":9: field 'libraries': more than 8 paths"),
    ("connect    0", ":9: field 'connect': '0' is not a port"),
    ("connect    65536", ":9: field 'connect': '65536' is not a port"),
    ("connect    7300-6800", ":9: field 'connect': '7300-6800' is not a port"),
    ("connect    80-", ":9: field 'connect': '80-' is not a port"),
    ("connect    -80", ":9: field 'connect': '-80' is not a port"),
    ("connect    http", ":9: field 'connect': 'http' is not a port"),
    ("connect", ":9: field 'connect': expected TCP ports"),
    ("connect    3300", ": field 'connect': needs the system-call group 'net'"),
    ("unreachable 500ms", ":9: field 'unreachable': expected a duration between 1s and 3600s"),
    ("unreachable 3601s", ":9: field 'unreachable': expected a duration between 1s and 3600s"),
    ("unreachable soon", ":9: field 'unreachable': expected a duration"),
    ("unreachable 60s 60s", ":9: field 'unreachable': expected a duration"),
    ("domain     container", ":9: field 'domain': expected process or vm"),
    ("domain     vm vm", ":9: field 'domain': expected process or vm"),
    ("domain", ":9: field 'domain': expected process or vm"),
    ("domain     vm\nguest-memory 32M", ":10: field 'guest-memory': expected a whole number of MiB between 64M and 16G"),
    ("domain     vm\nguest-memory 17G", ":10: field 'guest-memory': expected a whole number of MiB"),
    ("domain     vm\nguest-memory 100000k", ":10: field 'guest-memory': expected a whole number of MiB"),
    ("domain     vm\nguest-memory lots", ":10: field 'guest-memory': expected a whole number of MiB"),
    ("domain     vm\nstandby    maybe", ":10: field 'standby': expected on or off"),
    ("guest-memory 256M", ": field 'guest-memory': applies to 'domain vm' only"),
    ("standby    off", ": field 'standby': applies to 'domain vm' only"),
    ("domain     process\nstandby    on", ": field 'standby': applies to 'domain vm' only"),
])
def test_bad_library_and_connect_fields_are_named(isolde, tmp_path, extra, message):
    path = write(tmp_path, GOOD + extra + "\n")
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1
    assert f"{path}{message}" in p.stderr


def test_vm_domain_policy_is_shown(isolde, tmp_path, monkeypatch):
    path = write(tmp_path, GOOD + "domain     vm\nguest-memory 128M\nstandby    off\n",
                 name="fault-driver.policy")
    p = isolde.run("policy", "check", path)
    assert p.returncode == 0, p.stderr
    monkeypatch.setenv("ISOLDE_POLICY_DIR", str(tmp_path))
    p = isolde.run("policy", "show", "fault-driver")
    assert p.returncode == 0, p.stderr
    assert "domain     vm\nguest-memory 128M\nstandby    off\n" in p.stdout


def test_net_group_needs_its_ports(isolde, tmp_path):
    path = write(tmp_path, GOOD.replace("base io sync", "base net"))
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1 and f"{path}: field 'syscalls': group 'net' needs 'connect'" in p.stderr
    path = write(tmp_path, GOOD.replace("base io sync", "base net") + "connect 3300 6800-7300\n"
                 "libraries loaded /usr/lib\n", "ok.policy")
    p = isolde.run("policy", "check", path)
    assert p.returncode == 0, p.stderr


def test_shipped_remote_policies_say_what_they_allow(isolde):
    p = isolde.run("policy", "show", "blk-rbd")
    assert p.returncode == 0, p.stderr
    assert "syscalls   base net" in p.stdout and "libraries  loaded" in p.stdout
    assert "connect    3300 6789 6800-7300" in p.stdout
    p = isolde.run("policy", "show", "blk-nbd")
    assert p.returncode == 0, p.stderr
    assert "syscalls   base stream" in p.stdout and "connect" not in p.stdout


def test_missing_and_repeated_keys(isolde, tmp_path):
    path = write(tmp_path, GOOD.replace("files      16\n", ""))
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1 and f"{path}: missing required key 'files'" in p.stderr
    path = write(tmp_path, GOOD + "files 32\n", "twice.policy")
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1 and f"{path}:9: field 'files': given twice" in p.stderr


def test_comments_and_blank_lines_keep_line_numbers(isolde, tmp_path):
    path = write(tmp_path, "# a comment\n\n" + GOOD.replace("files      16", "files      x  # bad"))
    p = isolde.run("policy", "check", path)
    assert p.returncode == 1 and f"{path}:7: field 'files'" in p.stderr


def test_unreadable_policy(isolde, tmp_path):
    p = isolde.run("policy", "check", tmp_path / "absent.policy")
    assert p.returncode == 1 and "cannot read policy" in p.stderr


def test_show_prints_the_shipped_policy(isolde):
    p = isolde.run("policy", "show", "blk-file")
    assert p.returncode == 0
    assert "driver     blk-file" in p.stdout and "syscalls   base io sync" in p.stdout
    assert "policies/blk-file.policy" in p.stdout
    p = isolde.run("policy", "show", "no-such-driver")
    assert p.returncode == 1 and "no policy for driver no-such-driver" in p.stderr


def test_policy_for_another_driver_is_refused(isolde, image, tmp_path):
    p = isolde.run("verify", "--image", image, "--policy", write(tmp_path, GOOD))
    assert p.returncode == 1 and "is for driver fault-driver, not blk-file" in p.stderr


def test_read_only_policy_refuses_a_writable_device(isolde, image, tmp_path):
    text = GOOD.replace("fault-driver", "blk-file").replace("read-write", "read-only")
    p = isolde.run("verify", "--image", image, "--policy", write(tmp_path, text))
    assert p.returncode == 1 and "read-only access" in p.stderr


def test_bad_policy_stops_verify_with_its_error(isolde, image, tmp_path):
    path = write(tmp_path, GOOD.replace("fault-driver", "blk-file").replace("16", "sixteen"))
    p = isolde.run("verify", "--image", image, "--policy", path)
    assert p.returncode == 1 and f"{path}:5: field 'files'" in p.stderr


def test_policy_help_and_usage(isolde):
    assert isolde.run("policy", "--help").returncode == 0
    p = isolde.run("policy", "frob", "x")
    assert p.returncode == 2 and "unknown action 'frob'" in p.stderr
