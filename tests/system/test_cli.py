"""Every subcommand has --help; a bad argument says what is wrong, shows the
usage and exits 2; a bad environment (no image, no driver) is a clear error."""
import pytest

from conftest import FAULT_POLICY


@pytest.mark.parametrize("command", ["verify", "demo", "policy", "bench", "inject", "serve", "status"])
def test_help(isolde, command):
    p = isolde.run(command, "--help")
    assert p.returncode == 0
    assert p.stdout.startswith(f"usage: isolde {command}")


def test_top_level_help_and_errors(isolde):
    p = isolde.run("--help")
    assert p.returncode == 0 and "verify" in p.stdout and "demo" in p.stdout
    p = isolde.run()
    assert p.returncode == 2 and "no command" in p.stderr
    p = isolde.run("frobnicate")
    assert p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr


@pytest.mark.parametrize("args,message", [
    ([], "--image is required"),
    (["--image", "x", "--qd", "0"], "--qd: '0'"),
    (["--image", "x", "--qd", "abc"], "--qd: 'abc'"),
    (["--image", "x", "--qd", "5000"], "--qd: '5000'"),
    (["--image", "x", "--notify", "interrupt"], "--notify: 'interrupt'"),
    (["--image", "x", "--bs", "1000"], "--bs: 1000 is not a multiple of 512"),
    (["--image", "x", "--bs", "12q"], "--bs: '12q'"),
    (["--image", "x", "--ops"], "--ops needs a value"),
    (["--image", "x", "--bogus"], "unknown option '--bogus'"),
    (["--image", "x", "stray"], "unexpected argument 'stray'"),
])
def test_verify_bad_arguments(isolde, args, message):
    p = isolde.run("verify", *args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "usage: isolde verify" in p.stderr


def test_demo_bad_argument(isolde):
    p = isolde.run("demo", "--qd", "-1")
    assert p.returncode == 2 and "--qd" in p.stderr and "usage: isolde demo" in p.stderr


def test_missing_image(isolde, tmp_path):
    p = isolde.run("verify", "--image", tmp_path / "absent.img")
    assert p.returncode == 1
    assert "cannot open image" in p.stderr and "absent.img" in p.stderr


def test_empty_image(isolde, tmp_path):
    path = tmp_path / "empty.img"
    path.touch()
    p = isolde.run("verify", "--image", path)
    assert p.returncode == 1 and "empty" in p.stderr


def test_unknown_driver(isolde, image):
    p = isolde.run("verify", "--image", image, "--driver", "no-such-driver")
    assert p.returncode == 1
    assert "no-such-driver" in p.stderr and "cannot execute" in p.stderr


def test_bad_driver_name(isolde, image):
    p = isolde.run("verify", "--image", image, "--driver", "Bad Name!")
    assert p.returncode == 1 and "not valid" in p.stderr


def test_driver_that_refuses_to_start(isolde, image):
    p = isolde.run("verify", "--image", image, "--driver", isolde.build.fault_driver,
                   "--policy", FAULT_POLICY, "--driver-arg=--fault=nonsense")
    assert p.returncode == 1
    assert "unknown fault 'nonsense'" in p.stderr
    assert "exited with status 2 before it was ready" in p.stderr


def test_block_device_needs_force(isolde):
    p = isolde.run("verify", "--image", "/dev/null")
    # /dev/null is a character device: refused as neither file nor block device.
    assert p.returncode == 1 and "neither a regular file nor a block device" in p.stderr
