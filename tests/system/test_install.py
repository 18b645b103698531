"""Installing isolde: `meson install` and `make install` put exactly what a
user and a library user need under the prefix, and it works from there.

Everything is built and installed in a temporary directory of this test's
own (a build dir configured for PREFIX, installed with DESTDIR), never in
build/ or build-asan/, and nothing touches the real system; the directory
is removed however the tests end. The installed library is checked the way
a user would use it: a C program built with `pkg-config --static` against
the installed isolde.pc, run against a temporary image through the
installed drivers and policies."""
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, need_tools

# A prefix nothing else uses: the installed files are compiled to look
# there, and a check below relies on its not existing on this machine.
PREFIX = "/opt/isolde-install-test"
PUBLIC_HEADERS = {"blk.h", "blkif.h", "net.h", "netif.h", "notify.h", "ring.h", "grant.h", "shm.h", "failure.h", "driver.h"}
INTERNAL_HEADERS = {"domain.h", "policy.h", "supervisor.h", "units.h"}
MAN_PAGES = ["man1/isolde.1", "man5/isolde-policy.5", "man3/libisolde.3"]
UNIT_DIR = "lib/systemd/system"  # for any prefix but systemd's own (systemd/meson.build)
LOCAL_DRIVERS = ["blk-file", "blk-uring"]      # static: their root is empty
REMOTE_DRIVERS = ["blk-nbd", "blk-rbd"]        # dynamic: 'libraries loaded' shows theirs
NET_DRIVERS = ["net-tap"]                      # static: its one device is a TAP fd
DRIVERS = LOCAL_DRIVERS + REMOTE_DRIVERS + NET_DRIVERS
VM_GUEST_FILES = ["vmlinux", "initramfs.cpio.gz"]  # scripts/build-vm-guest.sh, for 'domain vm'


def run(cmd, timeout=120, check=True, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, f"{shlex.join(map(str, cmd))}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


class Install:
    """One installation in DESTDIR `dest` for prefix `prefix`, with the
    install directories (relative to the prefix) its build was configured
    with."""

    def __init__(self, dest, prefix, build):
        self.dest = Path(dest)
        self.prefix = prefix
        self.root = self.dest / prefix.lstrip("/")
        opts = run(["meson", "introspect", build, "--buildoptions"]).stdout
        dirs = {o["name"]: o["value"] for o in json.loads(opts)}
        for name in ("bindir", "libdir", "libexecdir", "datadir", "includedir", "mandir"):
            assert not dirs[name].startswith("/"), f"{name} is {dirs[name]}: expected one under the prefix"
            setattr(self, name, dirs[name])
        self.version = json.loads(run(["meson", "introspect", build, "--projectinfo"]).stdout)["version"]

    def path(self, rel):
        return self.root / rel

    @property
    def driver_dir(self):
        return self.path(f"{self.libexecdir}/isolde")

    @property
    def policy_dir(self):
        return self.path(f"{self.datadir}/isolde/policies")

    def expected_files(self):
        return {
            f"{self.bindir}/isolde",
            *(f"{self.libexecdir}/isolde/{d}" for d in DRIVERS),
            f"{self.libexecdir}/isolde/isolde-vm-agent",
            *(f"{self.datadir}/isolde/vm-guest/{f}" for f in VM_GUEST_FILES),
            *(f"{self.datadir}/isolde/policies/{d}.policy" for d in DRIVERS),
            *(f"{self.includedir}/isolde/{h}" for h in PUBLIC_HEADERS),
            f"{self.libdir}/libisolde.a",
            f"{self.libdir}/pkgconfig/isolde.pc",
            *(f"{self.mandir}/{m}" for m in MAN_PAGES),
            f"{UNIT_DIR}/isolde@.service",
        }

    def installed_files(self):
        """Every file and symlink in DESTDIR, relative to the prefix; all of
        them must be under it."""
        found = set()
        for dirpath, _dirs, files in os.walk(self.dest):
            for f in files:
                p = Path(dirpath) / f
                assert self.root in p.parents, f"{p} is outside the prefix {self.prefix}"
                found.add(str(p.relative_to(self.root)))
        return found

    def env(self, **extra):
        """The environment that points the library at the installed drivers
        and policies (the installed paths exist only under DESTDIR)."""
        env = dict(os.environ)
        env.pop("ISOLDE_DRIVER_DIR", None)
        env.pop("ISOLDE_POLICY_DIR", None)
        env.update(ISOLDE_DRIVER_DIR=str(self.driver_dir), ISOLDE_POLICY_DIR=str(self.policy_dir))
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}


def build_and_install(work, name, prefix):
    build, dest = work / f"build-{name}", work / f"dest-{name}"
    run(["meson", "setup", build, ROOT, "--prefix", prefix])
    run(["ninja", "-C", build], timeout=900)
    run(["meson", "install", "-C", build, "--no-rebuild", "--destdir", dest])
    return Install(dest, prefix, build)


@pytest.fixture(scope="module")
def work():
    need_tools("meson", "ninja", "cc", "pkg-config", "make", packages="meson ninja-build gcc pkg-config make")
    d = Path(tempfile.mkdtemp(prefix="isolde-install-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def inst(work):
    return build_and_install(work, "meson", PREFIX)


def elf_interpreter(path):
    """True if the ELF file at path asks for a dynamic loader (PT_INTERP)."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path}: not a 64-bit ELF file"
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))


# ---- what is installed ----

def test_installed_files_are_exactly_the_public_set(inst):
    files = inst.installed_files()
    expected = inst.expected_files()
    assert files == expected, f"missing: {sorted(expected - files)}; unexpected: {sorted(files - expected)}"
    headers = {p.name for p in inst.path(f"{inst.includedir}/isolde").iterdir()}
    assert headers == PUBLIC_HEADERS
    assert not headers & INTERNAL_HEADERS


def test_installed_binaries(inst):
    for rel in [f"{inst.bindir}/isolde", *(f"{inst.libexecdir}/isolde/{d}" for d in DRIVERS)]:
        assert os.access(inst.path(rel), os.X_OK), rel
    # Local drivers run in an empty root: no loader, no libraries to find
    # there. The remote ones link client libraries Debian ships only as
    # shared objects; their policies say so, and their roots show them.
    for d in LOCAL_DRIVERS + NET_DRIVERS + ["isolde-vm-agent"]:
        assert not elf_interpreter(inst.driver_dir / d), f"{d} is not linked statically"
    for d in REMOTE_DRIVERS:
        assert elf_interpreter(inst.driver_dir / d), f"{d} is expected to be dynamically linked"
        assert "\nlibraries  loaded" in (ROOT / "policies" / f"{d}.policy").read_text()
    for d in DRIVERS:
        shipped = (ROOT / "policies" / f"{d}.policy").read_text()
        assert (inst.policy_dir / f"{d}.policy").read_text() == shipped


def test_installed_command_finds_installed_drivers_and_policies(inst, work):
    isolde = inst.path(f"{inst.bindir}/isolde")
    p = run([isolde, "--version"])
    assert inst.version in p.stdout + p.stderr
    p = run([isolde, "policy", "show", "blk-file"], env=inst.env())
    assert f"# from {inst.policy_dir}/blk-file.policy" in p.stdout
    image = work / "cmd.img"
    try:
        for d in LOCAL_DRIVERS:
            p = run([isolde, "verify", "--image", image, "--size", "16M", "--ops", "500", "--driver", d,
                     "--allow-uring-without-namespaces", "--json"], env=inst.env())
            assert f'"driver": "{d}"' in p.stdout and '"mismatches": 0' in p.stdout, p.stdout
        # Without the variables it looks where it was installed: the prefix,
        # which does not exist here (it was installed into DESTDIR).
        if not Path(PREFIX).exists():
            p = run([isolde, "verify", "--image", image, "--ops", "10"], check=False,
                    env=inst.env(ISOLDE_DRIVER_DIR=None, ISOLDE_POLICY_DIR=None))
            assert p.returncode != 0 and f"{PREFIX}/{inst.libexecdir}/isolde/blk-file" in p.stderr, p.stderr
            p = run([isolde, "policy", "show", "blk-file"], check=False, env=inst.env(ISOLDE_POLICY_DIR=None))
            assert p.returncode == 1 and f"{PREFIX}/{inst.datadir}/isolde/policies/blk-file.policy" in p.stderr
    finally:
        image.unlink(missing_ok=True)


# ---- building against the installed library ----

PROGRAM = r"""
/* Built against the installed isolde.pc: writes through the installed
 * driver, synchronously, asynchronously and from a zero-copy buffer, then
 * reads everything back. Prints "ok DRIVER" or why not. */
#include <isolde/blk.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BS 4096u

static void fill(unsigned char *p, unsigned tag)
{
	for (unsigned i = 0; i < BS; i++)
		p[i] = (unsigned char)(tag * 31u + i * 7u);
}

static int check(struct isolde_blk *dev, uint64_t off, unsigned tag)
{
	static unsigned char want[BS], got[BS];
	fill(want, tag);
	int r = isolde_blk_read(dev, got, BS, off);
	if (r || memcmp(want, got, BS)) {
		fprintf(stderr, "read at %llu: %d, %s\n", (unsigned long long)off, r,
			r ? "failed" : "wrong data");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct isolde_blk_config cfg;
	char err[512], spec[1024];
	static unsigned char buf[8][BS];

	if (argc != 3)
		return 2;
	isolde_blk_config_default(&cfg);
	snprintf(spec, sizeof spec, "image=%s,driver=%s,qd=8,uring_without_namespaces", argv[1], argv[2]);
	if (isolde_blk_config_parse(&cfg, spec, err, sizeof err)) {
		fprintf(stderr, "config: %s\n", err);
		return 1;
	}
	struct isolde_blk *dev = isolde_blk_open(&cfg, err, sizeof err);
	if (!dev) {
		fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	uint64_t last = isolde_blk_size(dev) - BS;

	/* Synchronous: block 0, tag 1; the last block, tag 2. */
	fill(buf[0], 1);
	fill(buf[1], 2);
	if (isolde_blk_write(dev, buf[0], BS, 0) || isolde_blk_write_fua(dev, buf[1], BS, last)) {
		fprintf(stderr, "write: %s\n", isolde_blk_error(dev));
		return 1;
	}
	/* Asynchronous: blocks 16..23, tags 10..17. */
	struct isolde_blk_io io[8], *done[8];
	for (unsigned i = 0; i < 8; i++) {
		fill(buf[i], 10 + i);
		io[i] = (struct isolde_blk_io){ .op = ISOLDE_BLK_OP_WRITE, .buf = buf[i], .len = BS,
						 .offset = (16 + i) * (uint64_t)BS };
		if (isolde_blk_submit(dev, &io[i])) {
			fprintf(stderr, "submit %u failed\n", i);
			return 1;
		}
	}
	for (unsigned n = 0; n < 8;) {
		int r = isolde_blk_reap(dev, done, 8, 1, 10000);
		if (r <= 0) {
			fprintf(stderr, "reap: %d\n", r);
			return 1;
		}
		for (int i = 0; i < r; i++)
			if (done[i]->result) {
				fprintf(stderr, "async write: %d\n", done[i]->result);
				return 1;
			}
		n += (unsigned)r;
	}
	/* Zero copy: block 32, tag 3. */
	unsigned char *zc = isolde_blk_buf_alloc(dev, BS);
	if (!zc) {
		fprintf(stderr, "buf_alloc failed\n");
		return 1;
	}
	fill(zc, 3);
	if (isolde_blk_write(dev, zc, BS, 32 * BS) || isolde_blk_flush(dev) || isolde_blk_flush_error(dev)) {
		fprintf(stderr, "zero-copy write or flush: %s\n", isolde_blk_error(dev));
		return 1;
	}
	isolde_blk_buf_free(dev, zc);

	int bad = check(dev, 0, 1) || check(dev, last, 2) || check(dev, 32 * BS, 3);
	for (unsigned i = 0; i < 8 && !bad; i++)
		bad = check(dev, (16 + i) * (uint64_t)BS, 10 + i);
	struct isolde_blk_stats st;
	isolde_blk_get_stats(dev, &st);
	printf("%s %s requests=%llu errors=%llu\n", bad ? "bad" : "ok", isolde_blk_driver_name(dev),
	       (unsigned long long)st.requests, (unsigned long long)st.errors);
	isolde_blk_close(dev);
	isolde_blk_config_free(&cfg);
	return bad;
}
"""


def expected_block(tag):
    return bytes((tag * 31 + i * 7) & 0xFF for i in range(4096))


@pytest.fixture(scope="module")
def program(inst, work):
    """The program, compiled and linked with the installed isolde.pc."""
    env = dict(os.environ, PKG_CONFIG_PATH=str(inst.path(f"{inst.libdir}/pkgconfig")),
               PKG_CONFIG_SYSROOT_DIR=str(inst.dest))
    assert run(["pkg-config", "--modversion", "isolde"], env=env).stdout.strip() == inst.version
    assert run(["pkg-config", "--variable=driverdir", "isolde"], env=env).stdout.strip() == str(inst.driver_dir)
    assert run(["pkg-config", "--variable=policydir", "isolde"], env=env).stdout.strip() == str(inst.policy_dir)
    flags = run(["pkg-config", "--cflags", "--libs", "--static", "isolde"], env=env).stdout
    # liburing must be the static archive (Debian's liburing.so lacks
    # io_uring_register_restrictions, which libisolde calls).
    assert "-l:liburing.a" in flags.split() and "-luring" not in flags.split(), flags
    src = work / "app.c"
    exe = work / "app"
    src.write_text(PROGRAM)
    run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", exe, src, *shlex.split(flags)], env=env)
    needed = run(["readelf", "-d", exe]).stdout
    assert "liburing" not in needed, needed
    return exe


@pytest.mark.parametrize("driver", LOCAL_DRIVERS)
def test_program_built_with_pkg_config_uses_installed_driver(inst, program, work, driver):
    image = work / f"{driver}.img"
    size = 8 << 20
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        p = run([program, image, driver], env=inst.env(), timeout=60)
        assert p.stdout.startswith(f"ok {driver} "), p.stdout + p.stderr
        # The data is in the image, where the driver put it.
        data = image.read_bytes()
        assert data[:4096] == expected_block(1)
        assert data[size - 4096:] == expected_block(2)
        assert data[32 * 4096:33 * 4096] == expected_block(3)
        for i in range(8):
            assert data[(16 + i) * 4096:(17 + i) * 4096] == expected_block(10 + i)
        # And it was the installed driver: with nothing in ISOLDE_DRIVER_DIR
        # the same program cannot open the device.
        empty = work / "no-drivers"
        empty.mkdir(exist_ok=True)
        p = run([program, image, driver], env=inst.env(ISOLDE_DRIVER_DIR=str(empty)), check=False)
        assert p.returncode == 1 and f"cannot execute {empty}/{driver}" in p.stderr, p.stderr
    finally:
        image.unlink(missing_ok=True)


# ---- the manual pages ----

def render(page, width=80):
    """man's own rendering (nroff, through preconv), with every groff warning
    on stderr."""
    env = dict(os.environ, MANWIDTH=str(width), MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    return run(["man", "--warnings=all", "-l", page], env=env)


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_without_warnings(inst, page):
    need_tools("groff", "man", packages="groff-base man-db")
    path = inst.path(f"{inst.mandir}/{page}")
    for device in ([], ["-Tutf8"]):
        p = run(["groff", "-man", "-ww", "-z", *device, path])
        assert p.stderr == "", f"groff {' '.join(device)}: {p.stderr}"
    p = render(path)
    assert p.stderr == "", p.stderr
    wide = [line for line in p.stdout.splitlines() if len(line) > 80]
    assert not wide, f"lines wider than 80 columns: {wide}"
    assert "@" not in re.sub(r"isolde@\S*", "", p.stdout), "an unsubstituted @VARIABLE@"


def page_text(inst, page):
    """A page as text, wide, with hyphenation at line ends undone (groff
    hyphenates with U+2010; a hyphen written in the page is U+002D)."""
    text = render(inst.path(f"{inst.mandir}/{page}"), width=200).stdout
    return re.sub("\u2010\n\\s*", "", text)


def test_isolde_1_covers_every_command_and_option(inst):
    need_tools("man", packages="man-db")
    text = page_text(inst, "man1/isolde.1")
    isolde = inst.path(f"{inst.bindir}/isolde")
    commands = re.findall(r"^  ([a-z]+)\s{2,}", run([isolde, "--help"]).stdout, re.M)
    assert "verify" in commands and "serve" in commands
    for cmd in {*commands, "ctl"}:
        # A command's section runs to the next command's, or the next section.
        section = re.search(rf"^   isolde {cmd}\b.*?(?=^   isolde |^\S)", text, re.M | re.S)
        assert section, f"isolde(1) has no section for '{cmd}'"
        if cmd in commands:
            usage = run([isolde, cmd, "--help"]).stdout
            for opt in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage)) - {"--help"}:
                assert opt in section.group(0), f"isolde(1) does not describe {cmd} {opt}"
    for sub in ["policy check", "policy show"]:
        assert f"isolde {sub}" in text
    for word in ["device-add", "device-del", "--timeout-ms", "export-add", "export-del", "query-devices",
                 "query-exports", "events", "metrics", "--json", "docs/CONTROL.md",
                 "--config", "--device", "--export", "--control", "--metrics tcp:HOST:PORT",
                 "image=PATH", "driver=", "notify=", "qd=", "readonly", "direct", "shield", "policy=FILE",
                 "nbd:unix:PATH", "nbd:tcp:HOST:PORT", "fuse:PATH", "vhost-user-blk:PATH", "device=NAME",
                 "max-connections=", "handshake-timeout=", "idle-timeout=", "send-timeout=", "max-buffer=",
                 "poll=", "ISOLDE_DRIVER_DIR", "ISOLDE_POLICY_DIR", "/etc/isolde/NAME.conf",
                 f"{PREFIX}/{inst.libexecdir}/isolde"]:
        assert word in text, f"isolde(1) does not mention {word}"


def test_isolde_policy_5_covers_every_key(inst):
    need_tools("man", packages="man-db")
    text = page_text(inst, "man5/isolde-policy.5")
    isolde = inst.path(f"{inst.bindir}/isolde")
    shown = run([isolde, "policy", "show", "blk-file"], env=inst.env()).stdout
    keys = [line.split()[0] for line in shown.splitlines() if line.strip() and not line.startswith("#")]
    assert {"driver", "progress", "threads", "cpu", "log"} <= set(keys), keys
    for key in keys:
        assert re.search(rf"^       {re.escape(key)} ", text, re.M), f"isolde-policy(5) does not describe '{key}'"
    for word in ["base", "io", "sync", "uring", "Argument filters", "fcntl", "fallocate", "ioctl",
                 "DIAGNOSTICS", "unknown key (known:", "given twice", f"{PREFIX}/{inst.datadir}/isolde/policies"]:
        assert word in text, f"isolde-policy(5) does not mention {word}"
    # Its example is the shipped blk-file policy, key for key.
    shipped = [line.split() for line in (ROOT / "policies" / "blk-file.policy").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    example = [line.split() for line in text.splitlines()]
    for words in shipped:
        assert words in example, f"the example lacks '{' '.join(words)}'"


def test_libisolde_3_covers_the_installed_header(inst):
    need_tools("man", packages="man-db")
    text = page_text(inst, "man3/libisolde.3")
    header = inst.path(f"{inst.includedir}/isolde/blk.h").read_text()
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    functions = set(re.findall(r"\b(isolde_blk_[a-z_]+)\s*\(", header))
    assert {"isolde_blk_open", "isolde_blk_flush", "isolde_blk_submit", "isolde_blk_poll"} <= functions
    for fn in sorted(functions):
        assert fn in text, f"libisolde(3) does not describe {fn}"
    config = re.search(r"struct isolde_blk_config \{(.*?)\};", header, re.S).group(1)
    for field in re.findall(r"(\w+);", config):
        if field != "owned":
            assert field in text, f"libisolde(3) does not describe isolde_blk_config.{field}"
    for const in set(re.findall(r"\b(ISOLDE_BLK_EVENT_[A-Z_]+)\b", header)):
        assert const in text, f"libisolde(3) does not describe {const}"
    assert "pkg-config --cflags --libs --static isolde" in text


# ---- the systemd unit ----

def unit_directives(text):
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_systemd_unit(inst):
    text = inst.path(f"{UNIT_DIR}/isolde@.service").read_text()
    lines = unit_directives(text)
    assert f"ExecStart={PREFIX}/{inst.bindir}/isolde serve --config /etc/isolde/%i.conf" in lines
    for want in ["Restart=on-failure", "KillMode=mixed", "RuntimeDirectory=isolde/%i", "StateDirectory=isolde",
                 "NoNewPrivileges=yes"]:
        assert want in lines, f"the unit lacks {want}"
    # What would break isolde itself: a mount namespace (fuse exports would
    # be invisible, cgroups read-only), namespace or system-call filters.
    for bad in ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                "ProtectControlGroups", "ProtectKernelTunables", "RestrictNamespaces", "SystemCallFilter",
                "MemoryDenyWriteExecute", "User", "DynamicUser"]:
        assert not any(line.startswith(bad + "=") for line in lines), f"the unit sets {bad}="


def test_systemd_analyze_verify(inst, work):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names the installed binary, which exists only under DESTDIR:
    # verify a copy that names it there, as an instance of the template, with
    # man(1) looking in DESTDIR for the pages of its Documentation=.
    unit = inst.path(f"{UNIT_DIR}/isolde@.service").read_text()
    installed = f"{PREFIX}/{inst.bindir}/isolde"
    assert installed in unit
    copy_dir = work / "unit"
    copy_dir.mkdir(exist_ok=True)
    copy = copy_dir / "isolde@verify.service"
    copy.write_text(unit.replace(installed, str(inst.path(f"{inst.bindir}/isolde"))))
    env = dict(os.environ, MANPATH=str(inst.path(inst.mandir)), SYSTEMD_LOG_LEVEL="notice")
    p = run(["systemd-analyze", "verify", copy], env=env, check=False)
    assert p.returncode == 0 and "isolde@" not in p.stderr + p.stdout, p.stdout + p.stderr


# ---- make install ----

def test_make_install_with_prefix(inst, work):
    """`make install PREFIX=... DESTDIR=...` configures a build of its own
    for PREFIX and installs the same files there. (-o deps: the packages are
    there already, since this test suite runs after `make deps`; it must not
    apt-get anything.)"""
    prefix = str(work / "prefix")
    dest = work / "dest-make"
    build = work / "build-make"
    run(["make", "-C", ROOT, "-o", "deps", "install", f"PREFIX={prefix}", f"DESTDIR={dest}",
         f"INSTALL_BUILD={build}"], timeout=900)
    made = Install(dest, prefix, build)
    assert made.installed_files() == made.expected_files()
    assert not Path(prefix).exists(), "make install wrote outside DESTDIR"
    # The build was configured for PREFIX: that is where the installed
    # command looks for its policies.
    p = run([made.path(f"{made.bindir}/isolde"), "policy", "show", "blk-file"], check=False,
            env=made.env(ISOLDE_POLICY_DIR=None))
    assert p.returncode == 1 and f"{prefix}/{made.datadir}/isolde/policies/blk-file.policy" in p.stderr, p.stderr
    unit = made.path(f"{UNIT_DIR}/isolde@.service").read_text()
    assert f"ExecStart={prefix}/{made.bindir}/isolde serve" in unit
    # Again, unchanged: nothing to rebuild.
    p = run(["make", "-C", ROOT, "-o", "deps", "install", f"PREFIX={prefix}", f"DESTDIR={dest}",
             f"INSTALL_BUILD={build}"], timeout=900)
    assert "Compiling" not in p.stdout, p.stdout
