#!/bin/sh
# The NBD protocol fuzzer, briefly: builds tests/fuzz/fuzz_nbd.c with clang
# (libFuzzer + ASan + UBSan), seeds it with tests/fuzz/seeds.py and runs it for
# SECONDS (default 20). Exits non-zero on any crash, leak, sanitizer report or
# broken promise, keeping the input that caused it. Needs clang and
# libclang-rt-14-dev (`make deps` installs both); a missing tool is an error.
#
# usage: tests/fuzz/run.sh [SECONDS]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-20}
cc=$(command -v clang || command -v clang-14 || true)
if [ -z "$cc" ]; then
	echo "tests/fuzz/run.sh: clang is missing; run make deps (as root) to install it" >&2
	exit 1
fi
work=$(mktemp -d /tmp/isolde-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
"$cc" -std=gnu11 -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all -I"$root/src/export" \
	"$root/tests/fuzz/fuzz_nbd.c" "$root/src/export/nbd_proto.c" -o "$work/fuzz_nbd"
/usr/bin/python3 "$root/tests/fuzz/seeds.py" "$work/seeds"
mkdir "$work/corpus" "$work/crash"
set +e
"$work/fuzz_nbd" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
	-print_final_stats=1 -artifact_prefix="$work/crash/" "$work/corpus" "$work/seeds" \
	>"$work/log" 2>&1
rc=$?
set -e
tail -n 25 "$work/log"
if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$work/crash")" ]; then
	keep=$(mktemp -d /tmp/isolde-fuzz-crash.XXXXXX)
	cp "$work"/crash/* "$work/log" "$keep"/ 2>/dev/null || true
	echo "tests/fuzz/run.sh: the fuzzer failed (exit $rc); input and log kept in $keep" >&2
	echo "  reproduce: build as above, then run the binary on the crash file" >&2
	exit 1
fi
echo "tests/fuzz/run.sh: $seconds s of fuzzing, no failure"
