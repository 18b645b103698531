#!/usr/bin/env bash
# A first measurement of the notify modes: the verified workload (4 KiB random
# writes, then a read-back of every block) through blk-file on a tmpfs image,
# each mode at queue depth 1 and 32, five runs each, median ops/s reported.
# It measures the whole verified workload, pattern generation and checking
# included, so it is a lower bound on ring throughput, not a latency study.
set -euo pipefail
isolde=${1:-build/src/tools/isolde}
ops=${OPS:-50000}
runs=${RUNS:-5}
dir=$(mktemp -d /dev/shm/isolde-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
truncate -s 256M "$dir/image"

printf '%-7s %4s %12s %12s %12s\n' mode qd 'median ops/s' 'kicks/op' 'calls/op'
for mode in event spin hybrid; do
	for qd in 1 32; do
		results=()
		for _ in $(seq "$runs"); do
			results+=("$("$isolde" verify --image "$dir/image" --notify "$mode" --qd "$qd" \
				--ops "$ops" --json 2>/dev/null)")
		done
		printf '%s\n' "${results[@]}" | /usr/bin/python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
bad = [r for r in rows if r["errors"] or r["mismatches"]]
if bad:
    sys.exit("verification failed: %s" % bad[0])
rate = statistics.median(r["ops"] / r["seconds"] for r in rows)
kicks = statistics.median(r["kicks"] / r["ops"] for r in rows)
calls = statistics.median(r["calls"] / r["ops"] for r in rows)
print("%-7s %4s %12.0f %12.3f %12.3f" % (sys.argv[1], sys.argv[2], rate, kicks, calls))
' "$mode" "$qd"
	done
done
