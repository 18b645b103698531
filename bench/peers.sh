#!/usr/bin/env bash
# The tools people use today, measured in the same run as isolde: 4 KiB random
# reads at QD1 and QD32 through nbdkit's file plugin and qemu-storage-daemon's
# NBD export (fio's nbd engine, over a Unix socket), isolde's own NBD export
# (`isolde serve --export nbd:unix:...`, notify hybrid and spin) with the same
# fio jobs, fio's psync engine on the image itself (to calibrate fio against
# isolde bench's direct mode), and isolde bench on the same image. Prints a
# Markdown section.
#
# usage: bench/peers.sh ISOLDE IMAGE [SECONDS]
# The NBD rows are one harness (fio's nbd engine) against three servers; the
# isolde bench rows are the same workload shape through a different harness
# (in process, no socket): compare the psync row with direct.
set -euo pipefail
isolde=${1:?usage: peers.sh ISOLDE IMAGE [SECONDS]}
image=${2:?usage: peers.sh ISOLDE IMAGE [SECONDS]}
seconds=${3:-5}
dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

wait_socket() {
	for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "peers.sh: $2 did not create $1" >&2
	exit 1
}

# fio job -> "iops p50_us p99_us"
run_fio() { # name qd engine-args...
	local name=$1 qd=$2
	shift 2
	fio --name="$name" --rw=randread --bs=4k --iodepth="$qd" --time_based --runtime="$seconds" \
		--ramp_time=1 --output-format=json --output="$dir/$name-$qd.json" "$@" >/dev/null
	/usr/bin/python3 - "$dir/$name-$qd.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]["read"]
pct = job["clat_ns"]["percentile"]
print("%.0f %.2f %.2f" % (job["iops"], pct["50.000000"] / 1e3, pct["99.000000"] / 1e3))
PY
}

nbdkit --foreground --unix "$dir/nbdkit.sock" --exit-with-parent file "$image" 2>"$dir/nbdkit.log" &
pids+=($!)
qemu-storage-daemon \
	--blockdev driver=file,node-name=file0,filename="$image",cache.direct=off \
	--blockdev driver=raw,node-name=disk0,file=file0 \
	--nbd-server addr.type=unix,addr.path="$dir/qsd.sock" \
	--export type=nbd,id=exp0,node-name=disk0,name=,writable=off 2>"$dir/qsd.log" &
pids+=($!)
wait_socket "$dir/nbdkit.sock" nbdkit
wait_socket "$dir/qsd.sock" qemu-storage-daemon

declare -A row
for qd in 1 32; do
	row[psync-$qd]=$(run_fio psync "$qd" --ioengine=psync --filename="$image")
	row[nbdkit-$qd]=$(run_fio nbdkit "$qd" --ioengine=nbd --uri="nbd+unix:///?socket=$dir/nbdkit.sock")
	row[qsd-$qd]=$(run_fio qsd "$qd" --ioengine=nbd --uri="nbd+unix:///?socket=$dir/qsd.sock")
done
# isolde's NBD export, one notify mode at a time (an idle spin server still
# burns a core, which would tax every other row on a small machine).
isolde_modes="hybrid spin"
for mode in $isolde_modes; do
	"$isolde" serve --image "$image" --readonly --notify "$mode" --qd 64 \
		--export "nbd:unix:$dir/isolde-$mode.sock" 2>"$dir/isolde-$mode.log" &
	serve_pid=$!
	pids+=("$serve_pid")
	wait_socket "$dir/isolde-$mode.sock" "isolde serve --notify $mode"
	for qd in 1 32; do
		row[isolde-$mode-$qd]=$(run_fio "isolde-$mode" "$qd" --ioengine=nbd \
			--uri="nbd+unix:///?socket=$dir/isolde-$mode.sock")
	done
	kill "$serve_pid"
	wait "$serve_pid" || { echo "peers.sh: isolde serve --notify $mode failed:" >&2; cat "$dir/isolde-$mode.log" >&2; exit 1; }
done
"$isolde" bench --image "$image" --modes direct,event,spin,hybrid --qd 1,32 --bs 4k --rw randread \
	--copy copy --seconds "$seconds" --idle-seconds 0 --json "$dir/isolde.json" >/dev/null 2>&1

echo "| path | QD | IOPS | p50 us | p99 us |"
echo "|---|---|---|---|---|"
for qd in 1 32; do
	for who in psync nbdkit qsd $(printf 'isolde-%s ' $isolde_modes); do
		read -r iops p50 p99 <<<"${row[$who-$qd]}"
		case $who in
		psync) label="fio psync on the image (no server; sync, so QD is 1)" ;;
		nbdkit) label="fio nbd -> nbdkit file plugin" ;;
		qsd) label="fio nbd -> qemu-storage-daemon NBD export" ;;
		isolde-*) label="fio nbd -> isolde serve NBD export, ${who#isolde-} (isolated blk-file driver)" ;;
		esac
		echo "| $label | $qd | $iops | $p50 | $p99 |"
	done
done
/usr/bin/python3 - "$dir/isolde.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    label = "isolde bench direct (in process, sync)" if r["mode"] == "direct" else \
        "isolde bench %s, copy mode (isolated driver)" % r["mode"]
    print("| %s | %d | %.0f | %.2f | %.2f |" % (label, r["qd"], r["iops"], r["lat_us"]["p50"], r["lat_us"]["p99"]))
PY
