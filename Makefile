# isolde: `make demo` and `make check` are the two commands a user needs.
# Each installs what is missing (Debian), builds, and runs.

PACKAGES := gcc libc6-dev meson ninja-build pkg-config libseccomp-dev libcmocka-dev liburing-dev \
	libxxhash-dev libcapstone-dev \
	python3 python3-pytest gnuplot-nox libfuse3-dev fuse3 e2fsprogs util-linux
# The NBD export's system tests use real clients; its fuzzer needs clang and libFuzzer.
PACKAGES += libnbd-bin qemu-utils fio clang libclang-rt-14-dev
# The vhost-user-blk export's guest tests boot a Linux guest under QEMU (TCG); its
# kernel and busybox come from `apt-get download`, unpacked without installing.
PACKAGES += qemu-system-x86 qemu-system-common cpio gzip xz-utils kmod
# isolde serve's control protocol (JSON) and metrics listener (HTTP); the
# metrics tests read them with a real HTTP client and Prometheus's parser.
PACKAGES += libjansson-dev libmicrohttpd-dev curl python3-prometheus-client
# `make install`'s test checks the manual pages with groff and man.
PACKAGES += groff-base man-db
# The remote-storage drivers: blk-nbd links libnbd, blk-rbd librbd (both
# shared-only in Debian); their tests run real servers: nbdkit, and a
# single-node Ceph cluster (ceph-mon, ceph-osd with memstore, cephx), and
# the benchmark qemu-storage-daemon's rbd driver (qemu-block-extra).
PACKAGES += libnbd-dev librbd-dev librados-dev libssl-dev nbdkit ceph-mon ceph-osd ceph-common qemu-block-extra
# Network driver domains: their tests run real stacks in network namespaces
# the tests make (iproute2), with ping and iperf3 as the traffic.
PACKAGES += iproute2 iputils-ping iperf3
# The tools isolde is measured against, for `make bench`.
BENCH_PACKAGES := fio nbdkit qemu-system-common
BUILD := build
ASAN_BUILD := build-asan
PYTEST := /usr/bin/python3 -m pytest

.PHONY: all deps bench-deps build build-asan demo check unit unit-asan system fuzz bench campaign clean

all: build

deps:
	@./scripts/install-deps.sh $(PACKAGES)

bench-deps:
	@./scripts/install-deps.sh $(BENCH_PACKAGES)

build: deps
	@[ -f $(BUILD)/build.ninja ] || meson setup $(BUILD)
	ninja -C $(BUILD)
	./scripts/build-vm-guest.sh $(BUILD)/vm-guest

# AddressSanitizer + UndefinedBehaviorSanitizer, used by `make check`.
build-asan: deps
	@[ -f $(ASAN_BUILD)/build.ninja ] || meson setup $(ASAN_BUILD) -Dbuildtype=debug \
		-Db_sanitize=address,undefined -Db_lundef=false
	ninja -C $(ASAN_BUILD)

demo: build
	$(BUILD)/src/tools/isolde demo

unit: build
	meson test -C $(BUILD) --suite unit --print-errorlogs

unit-asan: build-asan
	meson test -C $(ASAN_BUILD) --suite unit --print-errorlogs

system: build build-asan
	ISOLDE_BUILD=$(abspath $(BUILD)) ISOLDE_ASAN_BUILD=$(abspath $(ASAN_BUILD)) \
		$(PYTEST) -v -rs tests/system

# The NBD protocol's fuzz target, briefly (libFuzzer + ASan + UBSan, built with clang).
fuzz: deps
	./tests/fuzz/run.sh 20

check: unit unit-asan system fuzz

# Every figure of docs/EVALUATION.md, measured in one run (bench/run-all.sh).
bench: build bench-deps
	./bench/run-all.sh $(BUILD)/src/tools/isolde

# Fault injection at MINIX 3's scale: 8 types x 1000 trials x 100 faults into
# each of blk-file, blk-uring, blk-nbd, blk-rbd and net-tap (TRIALS=, PER_TRIAL=
# for other sizes; bench/campaign.sh says how they share the machine).
campaign: build
	./bench/campaign.sh $(BUILD)/src/tools/isolde

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

# `make install` (as root) installs the isolde command, the drivers, their
# policies, libisolde (headers, library, isolde.pc), the manual pages and
# the systemd unit isolde@.service under /usr/local; `make install
# PREFIX=/opt/isolde` puts everything under /opt/isolde instead, and
# DESTDIR=DIR stages it all in DIR (for packaging). It builds in a directory
# of its own, configured for PREFIX (the installed binaries find their
# drivers and policies there), and leaves build/ alone.
PREFIX = /usr/local
INSTALL_BUILD = build-install

.PHONY: install
install: deps
	@if [ -f $(INSTALL_BUILD)/build.ninja ]; then \
		meson configure $(INSTALL_BUILD) -Dprefix=$(PREFIX); \
	else \
		meson setup $(INSTALL_BUILD) -Dprefix=$(PREFIX); \
	fi
	ninja -C $(INSTALL_BUILD)
	meson install -C $(INSTALL_BUILD) --no-rebuild $(if $(DESTDIR),--destdir $(abspath $(DESTDIR)))
