#!/usr/bin/env bash
# make campaign: fault injection at MINIX 3's scale (Herder et al., DSN 2009:
# 8 fault types x 1000 trials x 100 faults per trial, per driver
# configuration), over every driver `isolde inject` can plant faults in:
# blk-file, blk-uring, blk-nbd (against nbdkit's memory plugin on a Unix
# socket this script starts), blk-rbd (librbd's C API in the fault space
# too, against a throwaway one-monitor, one-OSD Ceph cluster that
# bench/with_ceph.py starts) and net-tap. Each driver's report goes to
# docs/eval/minix/DRIVER/campaign.{md,json}; bench/campaign_summary.py
# writes docs/eval/minix/README.md, one row per driver.
#
# The drivers run in two lanes side by side, one per CPU of the 2-CPU
# machine this was made for: blk-file, blk-uring, blk-nbd in one; net-tap,
# blk-rbd in the other. Trials are independent processes with images,
# servers and namespaces of their own; a lane mostly waits on hang
# detection, so together they fit MINIX's shape into 90 minutes.
#
# TRIALS=T trials per type (default 1000), PER_TRIAL=N faults per trial
# (default 100), OUT=DIR where the reports go. Hang detection is --timeout-ms 300 for every trial (a
# driver whose heartbeat stops, or that leaves a request unanswered ten
# times as long, is a hang), so that a hung driver costs a trial 0.3-3 s,
# not the policies' 2 s heartbeat.
#
# usage: bench/campaign.sh ISOLDE
set -euo pipefail
isolde=${1:?usage: campaign.sh ISOLDE}
trials=${TRIALS:-1000}
per_trial=${PER_TRIAL:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/docs/eval/minix}
img_dir=$(mktemp -d /dev/shm/isolde-campaign.XXXXXX)
nbdkit_pid=
trap '[ -z "$nbdkit_pid" ] || kill "$nbdkit_pid" 2>/dev/null; rm -rf "$img_dir"' EXIT
mkdir -p "$out"
lane_a="blk-file blk-uring blk-nbd"
lane_b="net-tap blk-rbd"
drivers="blk-file blk-uring blk-nbd blk-rbd net-tap"
# One thread per connection: Debian 12's nbdkit 1.32 can abort (connections.c,
# raw_send_socket: `sock >= 0`) when a faulty client drops the connection in
# the middle of a reply while other threads of it still answer.
nbdkit --foreground --exit-with-parent --threads 1 -P "$img_dir/nbdkit.pid" --unix "$img_dir/nbd.sock" memory 8M \
	2>"$img_dir/nbdkit.log" &
nbdkit_pid=$!
for _ in $(seq 200); do [ -e "$img_dir/nbdkit.pid" ] && break; sleep 0.05; done

campaign() { # DRIVER
	local driver=$1 image=() run=()
	echo "== $driver: $trials trials per type, $per_trial faults per trial" >&2
	mkdir -p "$out/$driver"
	case $driver in
	net-*) ;;
	blk-nbd) image=(--image "nbd+unix:///?socket=$img_dir/nbd.sock") ;;
	blk-rbd) image=(--image @RBD@) run=("$root/bench/with_ceph.py" 8) ;;
	*) image=(--image "$img_dir/image-$driver"); truncate -s 8M "$img_dir/image-$driver" ;;
	esac
	"${run[@]}" "$isolde" inject --driver "$driver" "${image[@]}" --trials-per-type "$trials" \
		--faults-per-trial "$per_trial" --timeout-ms 300 --seed 1 \
		--json "$out/$driver/campaign.json" --report "$out/$driver" >/dev/null
	sed -i -E -e "s#$img_dir/image-$driver#IMAGE#g" -e "s#$img_dir/nbd.sock#NBD_SOCKET#g" -e "s#$root/##g" \
		-e 's#rbd:isolde/campaign:conf=[^ "]*#rbd:isolde/campaign:conf=CEPH_CONF:id=isolde:keyring=KEYRING#g' \
		"$out/$driver/campaign.md" "$out/$driver/campaign.json"
	# Trials against a server that went away measure nothing: say so, loudly.
	if [ "$driver" = blk-nbd ] && ! kill -0 "$nbdkit_pid" 2>/dev/null; then
		echo "campaign.sh: nbdkit exited during the blk-nbd campaign; its log:" >&2
		tail -20 "$img_dir/nbdkit.log" >&2
		return 1
	fi
}

lane() { # DRIVER...
	for driver in "$@"; do campaign "$driver" || return 1; done
}

started=$(date +%s)
lane $lane_b &
lane_b_pid=$!
lane_a_rc=0
lane $lane_a || lane_a_rc=$?
lane_b_rc=0
wait "$lane_b_pid" || lane_b_rc=$?
[ "$lane_a_rc" = 0 ] && [ "$lane_b_rc" = 0 ] || { echo "campaign.sh: a lane failed" >&2; exit 1; }
CAMPAIGN_WALL_SECONDS=$(($(date +%s) - started)) "$root/bench/campaign_summary.py" "$out" $drivers >"$out/README.md"
echo "wrote $out/README.md" >&2
