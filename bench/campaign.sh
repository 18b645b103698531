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
# Four campaigns run side by side on the 2-CPU machine this was made for:
# blk-file, blk-uring, blk-nbd and net-tap one after another, and blk-rbd
# in three parts (four fault types, three, and heap alone: a blk-rbd trial
# costs twice another driver's, a lock takeover through the monitor at each
# restart, and a heap trial of it five times that, stepping over the reads
# of its 40 threads that are not the driver's data). Trials
# are independent processes with images, servers and namespaces of their
# own, and mostly wait on hang detection, so together they fit MINIX's
# shape into 90 minutes. DRIVER/part-K/ holds a part's report.
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
lane="blk-file blk-uring blk-nbd net-tap"
drivers="blk-file blk-uring blk-nbd blk-rbd net-tap"
rbd_parts=("source-register,destination-register,pointer,interface" "branch,bit-flip,nop" "heap")
# One thread per connection: Debian 12's nbdkit 1.32 can abort (connections.c,
# raw_send_socket: `sock >= 0`) when a faulty client drops the connection in
# the middle of a reply while other threads of it still answer.
nbdkit --foreground --exit-with-parent --threads 1 -P "$img_dir/nbdkit.pid" --unix "$img_dir/nbd.sock" memory 8M \
	2>"$img_dir/nbdkit.log" &
nbdkit_pid=$!
for _ in $(seq 200); do [ -e "$img_dir/nbdkit.pid" ] && break; sleep 0.05; done

inject_command() { # DRIVER DIR ARGS...: the command, in $inject
	local driver=$1 dir=$2
	shift 2
	inject=("$isolde" inject --driver "$driver" "$@" --trials-per-type "$trials" --faults-per-trial "$per_trial"
		--timeout-ms 300 --seed 1 --json "$dir/campaign.json" --report "$dir")
}

anonymize() { # FILE...
	sed -i -E -e "s#$img_dir/image-[a-z-]*#IMAGE#g" -e "s#$img_dir/nbd.sock#NBD_SOCKET#g" -e "s#$root/##g" \
		-e 's#(rbd:isolde/campaign-[0-9]+):conf=[^ "]*#\1:conf=CEPH_CONF:id=isolde:keyring=KEYRING#g' "$@"
}

campaign() { # DRIVER
	local driver=$1 image=() inject=()
	echo "== $driver: $trials trials per type, $per_trial faults per trial" >&2
	mkdir -p "$out/$driver"
	case $driver in
	net-*) ;;
	blk-nbd) image=(--image "nbd+unix:///?socket=$img_dir/nbd.sock") ;;
	*) image=(--image "$img_dir/image-$driver"); truncate -s 8M "$img_dir/image-$driver" ;;
	esac
	inject_command "$driver" "$out/$driver" "${image[@]}"
	"${inject[@]}" >/dev/null
	anonymize "$out/$driver/campaign.md" "$out/$driver/campaign.json"
	# Trials against a server that went away measure nothing: say so, loudly.
	if [ "$driver" = blk-nbd ] && ! kill -0 "$nbdkit_pid" 2>/dev/null; then
		echo "campaign.sh: nbdkit exited during the blk-nbd campaign; its log:" >&2
		tail -20 "$img_dir/nbdkit.log" >&2
		return 1
	fi
}

# blk-rbd: its fault types in parts side by side, each on an image of
# its own in one cluster. The monitor commits a lock takeover's blocklist
# within 1-10 ms instead of the fixture's 50-100 ms (paxos), as a
# monitor tuned for fast failover would.
rbd_campaign() {
	local cmd=() k=0 inject=()
	echo "== blk-rbd: $trials trials per type, $per_trial faults per trial, in ${#rbd_parts[@]} parts" >&2
	for types in "${rbd_parts[@]}"; do
		k=$((k + 1))
		mkdir -p "$out/blk-rbd/part-$k"
		[ "$k" = 1 ] || cmd+=(--also)
		inject_command blk-rbd "$out/blk-rbd/part-$k" --types "$types" --image @RBD@
		cmd+=("${inject[@]}")
	done
	"$root/bench/with_ceph.py" --mon paxos_min_wait=0.001 --mon paxos_propose_interval=0.01 8 "${cmd[@]}" >/dev/null
	anonymize "$out"/blk-rbd/part-*/campaign.md "$out"/blk-rbd/part-*/campaign.json
}

started=$(date +%s)
rbd_campaign &
rbd_pid=$!
lane_rc=0
for driver in $lane; do campaign "$driver" || { lane_rc=1; break; }; done
rbd_rc=0
wait "$rbd_pid" || rbd_rc=$?
[ "$lane_rc" = 0 ] && [ "$rbd_rc" = 0 ] || { echo "campaign.sh: a driver's campaign failed" >&2; exit 1; }
CAMPAIGN_WALL_SECONDS=$(($(date +%s) - started)) "$root/bench/campaign_summary.py" "$out" $drivers >"$out/README.md"
echo "wrote $out/README.md" >&2
