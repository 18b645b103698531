#!/bin/sh
# The fuzz targets, briefly: builds each with clang (libFuzzer + ASan + UBSan),
# seeds it and runs it. tests/fuzz/fuzz_nbd.c (the NBD protocol, seeded by
# tests/fuzz/seeds.py) runs for SECONDS (default 20);
# tests/fuzz/fuzz_virtqueue.c (the vhost-user-blk export's split virtqueue
# over guest memory, seeded by tests/fuzz/seeds_virtqueue.py) for
# VQ_SECONDS (default 10). Exits non-zero on any crash, leak, sanitizer
# report or broken promise, keeping the input that caused it. Needs clang and
# libclang-rt-14-dev (`make deps` installs both); a missing tool is an error.
#
# usage: tests/fuzz/run.sh [SECONDS [VQ_SECONDS]]   (0 skips a target)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-20}
vq_seconds=${2:-10}
cc=$(command -v clang || command -v clang-14 || true)
if [ -z "$cc" ]; then
	echo "tests/fuzz/run.sh: clang is missing; run make deps (as root) to install it" >&2
	exit 1
fi
work=$(mktemp -d /tmp/isolde-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

# fuzz NAME SECONDS MAX_LEN SEEDS_SCRIPT SOURCE...
fuzz() {
	name=$1 secs=$2 max_len=$3 seeds=$4
	shift 4
	[ "$secs" -gt 0 ] || return 0
	"$cc" -std=gnu11 -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -I"$root/src/export" "$@" -o "$work/$name"
	/usr/bin/python3 "$seeds" "$work/$name.seeds"
	mkdir "$work/$name.corpus" "$work/$name.crash"
	set +e
	"$work/$name" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$work/$name.crash/" "$work/$name.corpus" \
		"$work/$name.seeds" >"$work/$name.log" 2>&1
	rc=$?
	set -e
	echo "== $name"
	tail -n 25 "$work/$name.log"
	if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$work/$name.crash")" ]; then
		keep=$(mktemp -d /tmp/isolde-fuzz-crash.XXXXXX)
		cp "$work/$name.crash"/* "$work/$name.log" "$keep"/ 2>/dev/null || true
		echo "tests/fuzz/run.sh: $name failed (exit $rc); input and log kept in $keep" >&2
		echo "  reproduce: build as above, then run the binary on the crash file" >&2
		exit 1
	fi
	echo "tests/fuzz/run.sh: $name: $secs s of fuzzing, no failure"
}

fuzz fuzz_nbd "$seconds" 16384 "$root/tests/fuzz/seeds.py" \
	"$root/tests/fuzz/fuzz_nbd.c" "$root/src/export/nbd_proto.c"
fuzz fuzz_virtqueue "$vq_seconds" 16384 "$root/tests/fuzz/seeds_virtqueue.py" \
	"$root/tests/fuzz/fuzz_virtqueue.c" "$root/src/export/virtqueue.c" "$root/src/export/guest_memory.c"
