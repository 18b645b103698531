#!/usr/bin/env bash
# make bench: every measurement of docs/EVALUATION.md, in one run on this
# machine, on a tmpfs image; writes docs/EVALUATION.md, docs/eval/bench.md,
# docs/eval/bench.json, docs/eval/plots/*.svg, docs/eval/campaign.{md,json}
# and docs/eval/net-campaign/campaign.{md,json}. The block campaign plants
# 100,000 faults in blk-file, MINIX 3's way (100 per trial, 125 trials per
# type; TRIALS=T, PER_TRIAL=N for others); NET_FAULTS=N sets the network
# one's size (default 2000 trials of one fault, about 5 minutes).
# `make campaign` (bench/campaign.sh) is the full 3.2-million-fault one.
#
# usage: bench/run-all.sh ISOLDE [SECONDS]
set -euo pipefail
isolde=${1:?usage: run-all.sh ISOLDE [SECONDS]}
seconds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/docs/eval
img_dir=$(mktemp -d /dev/shm/isolde-bench.XXXXXX)
trap 'rm -rf "$img_dir"' EXIT
image=$img_dir/image
truncate -s 1G "$image"
mkdir -p "$out"

echo "== isolde bench (the default sweep)" >&2
"$isolde" bench --image "$image" --seconds "$seconds" --idle-seconds 5 \
	--json "$out/bench.json" --report "$out" >"$out/bench.txt"
# Name the files as a reader would type them, not as this run's temp paths.
sed -i -e "s#$image#IMAGE#g" -e "s#$root/##g" "$out/bench.md" "$out/bench.json"
echo "== recovery" >&2
recovery=$("$root/bench/recovery.py" "$isolde" --seconds 10 --interval-ms 50)
echo "== peers" >&2
peers=$("$root/bench/peers.sh" "$isolde" "$image" 5)
echo "== isolde serve with many devices" >&2
daemon=$("$root/bench/daemon.py" "$isolde")
echo "== remote storage: blk-rbd against a Ceph test cluster, blk-nbd against nbdkit" >&2
remote=$("$root/bench/remote.py" "$isolde")
echo "== VM driver domains against process domains" >&2
vm=$("$root/bench/vm.py" "$isolde")
echo "== network driver domains against a veth pair" >&2
net=$("$root/bench/net.py" "$isolde")
echo "== a Linux guest through vhost-user-blk" >&2
guest=$("$root/bench/guest.py" "$isolde" 3)
echo "== a Linux guest through vhost-user-net" >&2
net_guest=$("$root/bench/net_guest.py" "$isolde" --seconds 5 --runs 3 --pings 50)
echo "== fault-injection campaign (${TRIALS:=125} trials per type, ${PER_TRIAL:=100} faults each)" >&2
truncate -s 8M "$img_dir/inject"
"$isolde" inject --image "$img_dir/inject" --trials-per-type "$TRIALS" --faults-per-trial "$PER_TRIAL" --seed 1 \
	--json "$out/campaign.json" --report "$out" >/dev/null
sed -i -e "s#$img_dir/inject#IMAGE#g" -e "s#$root/##g" "$out/campaign.md" "$out/campaign.json"
echo "== fault-injection campaign into net-tap (${NET_FAULTS:=2000} faults)" >&2
mkdir -p "$out/net-campaign"
"$isolde" inject --driver net-tap --faults "$NET_FAULTS" --seed 1 \
	--json "$out/net-campaign/campaign.json" --report "$out/net-campaign" >/dev/null
sed -i -e "s#$root/##g" "$out/net-campaign/campaign.md" "$out/net-campaign/campaign.json"

{
	cat <<EOT
# Evaluation

Everything below was measured by \`make bench\` (bench/run-all.sh) in one run
on one machine; rerunning it rewrites this file. Ratios matter more than
absolute figures: this is a shared 2-core virtual machine, and each
comparison below ran side by side in the same run. The machine and the exact
command of each part are given with it.

EOT
	# The bench report, its headings one level down and its plots relative to docs/.
	sed -e 's/^# /## 1. /' -e 's/^## /### /' -e 's/^### 1\. /## 1. /' -e 's#(plots/#(eval/plots/#g' \
		-e 's#^Reproduce with:#Reproduce with `make bench`, which runs (IMAGE: a 1 GiB file in /dev/shm):#' \
		"$out/bench.md"
	echo
	cat "$root/bench/analysis.md"
	cat <<EOT

## 3. Recovery time

Failure detected to first replayed request completed, as the front end
measures it; blk-file on a tmpfs image, 4 KiB verified random writes and
reads at QD32, the driver SIGKILLed every 50 ms for 10 s per mode.
Target: p99 under 10 ms.

\`\`\`
bench/recovery.py $isolde --seconds 10 --interval-ms 50
\`\`\`

$recovery

## 4. The tools people use today

4 KiB random reads of the same tmpfs image, in the same run, with fio
(5 s per row after a 1 s ramp). nbdkit and
qemu-storage-daemon are reached over NBD on a Unix socket, and so is
isolde's own NBD export (\`isolde serve\`); the isolde bench rows are the C
API (same workload shape, a different harness: compare fio's psync row with
isolde's direct row to see the harnesses agree).

\`\`\`
bench/peers.sh $isolde IMAGE 5
\`\`\`

$peers

EOT
	# The campaign report, its headings one level down, numbered 5.
	sed -e 's/^# Fault-injection campaign/## 5. Fault-injection campaign/' -e 's/^## Trials/### Trials/' \
		-e 's#^Reproduce with:#Reproduce with (IMAGE: an 8 MiB file in /dev/shm):#' "$out/campaign.md"
	cat "$root/bench/campaign-notes.md"
	cat <<EOT

## 6. A Linux guest through vhost-user-blk

A Debian 6.1 kernel with a busybox initramfs (tests/guest/build-guest.sh),
booted by QEMU under TCG against isolde's vhost-user-blk export and against
qemu-storage-daemon's, each on a fresh 1 GiB image in /dev/shm; dd in the
guest, O_DIRECT (tests/guest/init, workload \`bench\`).

\`\`\`
bench/guest.py $isolde 3
\`\`\`

$guest

How to read it. Every request here is issued at queue depth 1, so it crosses
the guest's virtqueue, isolde's server loop, the ring and the driver, and
back, before the next one starts; the guest's own work between two requests
is emulated by TCG and takes longer than any of those hops. The poll modes
(\`--notify\`, which also sets the export's \`poll=\`) differ in what the
loop does in that gap: \`event\` sleeps on the guest's kick eventfd at once;
\`hybrid\` polls the queues for 50 µs first, which at this request rate is
mostly spent before the same sleep and wake-up as \`event\`; \`spin\` never
sleeps, and on this 2-core machine takes a core from QEMU's TCG thread and
the driver. qemu-storage-daemon runs its own I/O on the same host files
with no driver domain in between. From one boot to the next the same back
end varies by 10-30% here, so only differences larger than that mean
anything; what this section shows is that isolde keeps up with
qemu-storage-daemon under a real guest, and the guest test with the driver
killed under it (tests/system/test_vhost_user_guest.py) shows it does so
through crashes.

## 7. The storage daemon: a thread per device

\`isolde serve\` serves each device from a thread of its own, which owns the
device's front end, its driver and its exports (ARCHITECTURE.md §16). What
that buys is that one device's load, crashes or hang reach another device
only through the machine's shared CPUs; what it costs is a thread per device,
asleep while its device is idle.

\`\`\`
bench/daemon.py $isolde
\`\`\`

$daemon

How to read it. Eight devices at once share the machine's cores with eight
fio jobs and eight drivers, and every request crosses two process
boundaries where nbdkit's crosses one. A device stuck in \`starting\` or
with its driver stopped should cost the other device nothing: its thread
waits on nothing of the stuck one. A kill storm costs the other device the
CPU its restarts take (clone into fresh namespaces, sandbox, exec,
teardown), as much as the same storm in another process does (the last two
rows); tests/system/test_daemon.py shows the other device's requests never
wait for the recovery. An idle device's loop wakes only for its exports'
timers and once after each burst of activity to publish its snapshot.

## 8. Remote storage: blk-nbd and blk-rbd

blk-rbd (librbd) against fio's rbd engine and qemu-storage-daemon on the
same image of a single-node Ceph test cluster (tests/system/ceph_helpers.py),
blk-nbd against nbdkit, and recovery from a librbd crash. The Ceph figures
are a memstore OSD on the same 2 cores as everything else: compare the rows
with each other, not with a real cluster.

\`\`\`
bench/remote.py $isolde
\`\`\`

$remote

## 9. VM driver domains

blk-file in a VM domain (QEMU, microvm, its own Linux kernel; the ring is
an ivshmem device, the doorbells virtio-serial ports) against the same
driver in a process domain, in one run; failover with and without the
warm standby; start times. QEMU runs under TCG on this machine: every VM
figure is emulation's. KVM would run the guest's code natively and its
doorbells through ioeventfd and irqfd instead of emulated virtio-serial,
and boot a VM in well under a second.

\`\`\`
bench/vm.py $isolde
\`\`\`

$vm

## 10. Network driver domains

net-tap between two network namespaces (the tap export in one, the
driver's TAP in the other; ARCHITECTURE.md §19) against the same two
namespaces joined by a veth pair, the kernel's own path, in one run.

\`\`\`
bench/net.py $isolde
\`\`\`

$net

How to read it. With the TAPs' checksum and TSO offloads, a frame is up to
64 KiB, so a gigabyte is about 16,000 round trips through the rings. Event
mode is the one to use on this 2-core machine: spin and hybrid keep a core
busy in the export thread and another in the driver, which leaves iperf3
and the two kernel stacks to fight over what is left, and their ping
latencies show it. veth moves a segment between namespaces without a copy;
isolde copies each one twice (kernel to ring, ring to kernel) and crosses
two processes.

## 11. A Linux guest's network card through vhost-user-net

The guest of tests/guest/build-net-guest.sh (Debian's 6.1 kernel, busybox,
iperf3) booted by QEMU under TCG with a virtio-net card, on QEMU's own tap
netdev and on isolde's vhost-user-net export (net-tap driver, each notify
mode); the host's side, a TAP with iperf3's server, is in a network
namespace made for each boot. Both cards have no MSI-X vectors (see
ARCHITECTURE.md §20: QEMU 7.2 crashes setting them up for vhost-user-net
under TCG), so both paths take the same interrupts.

\`\`\`
bench/net_guest.py $isolde --seconds 5 --runs 3 --pings 50
\`\`\`

$net_guest

How to read it. The guest's emulated CPU is the bottleneck of every row
(its load is in the JSON: 83-99% throughout), so the table answers "does
isolde's path slow the guest down", not "what can it carry"; and one boot
differs from the next by up to a factor of two on this shared machine (the
runs line), so only the medians' order means anything. Event and hybrid
are at least as fast as QEMU's own tap: with vhost-user the frames leave
QEMU's process, and its threads do only the guest's emulation, where with
tap QEMU's main loop moves every frame itself, beside the emulation. That
is despite two copies of each frame on isolde's path (guest memory to the
ring's data area, the ring to the TAP) and a crossing of the driver's
process. Spin takes one of the machine's two cores for the export's thread
and leaves QEMU's TCG thread and the driver to share the other, which
halves what the guest can do; hybrid spins only 50 µs after each burst.
tests/system/test_guest_net.py shows the same guest's TCP streams arrive
intact while the driver is killed every 200 ms.

EOT
	# The network campaign's report, its headings two levels down, numbered 12.
	sed -e 's/^# Fault-injection campaign/## 12. Fault-injection campaign into net-tap/' \
		-e 's/^## Trials that ended/### Trials that ended/' "$out/net-campaign/campaign.md"
	cat <<EOT

How to read it (docs/FAULTS.md has the workload). Most planted faults never
run: net-tap's hot path is a few hundred of its instructions, the rest is
start-up and error handling that a trial of 100 frames each way never
reaches. Of the faults that strike, nearly all end in a failure the front
end detects - MMU and CPU exceptions, protocol violations (a mangled
answer), hangs (no heartbeat, a TX frame never answered, the wire's frames
left unread) - and is recovered with the frames the dead driver held
re-sent. The trials that end "I/O error" are the drivers that go on beating
and lose frames in a way the front end cannot tell from a NIC that drops
them: they read the wire's frames and discard them, or answer every frame
to send as refused by the device, as a TAP whose link is down makes a
sound driver answer; FAULTS.md says why isolde does not restart a driver
for that. No frame that passed the end-to-end hash differed from what
was sent.
EOT
	# make campaign's summary, if it ran (about 50 minutes; make bench does not run it).
	if [ -f "$out/minix/README.md" ]; then
		echo
		sed -e "s/^# Fault injection at MINIX 3's scale/## 13. Fault injection at MINIX 3's scale (make campaign)/" \
			-e 's#DRIVER/campaign.md beside this file#docs/eval/minix/DRIVER/campaign.md#' "$out/minix/README.md"
		cat <<'EOT'

How to read it. With 100 faults of one type planted together, nearly
every trial's driver fails, most often at once (an MMU exception: a
pointer, register or NOP fault on the path of the first request); the
table counts each restart under the class the front end gave it
(docs/ARCHITECTURE.md). A trial recovered transparently when its verified
workload - every block written and read back, every frame checked by
its hash - completed with no error after one restart or more. The clean
failures are the ends no front end can recover from without data it
does not keep or a word it cannot trust; FAULTS.md explains each class,
and the table above counts them from each trial's reason. The refused
system calls are a few trials each: a flipped branch sends a driver
round a loop of one call its policy refuses until the launcher kills it
(1,000 refusals a generation).

What the campaign found, fixed before this run (git log says more):
nbdkit 1.32 aborts (connections.c, raw_send_socket: `sock >= 0`) when a
faulty client drops the connection while another of its threads still
answers, so its blk-nbd server runs one thread per connection; the
tracer waited for the driver's first thread alone while the dead
driver's other traced threads waited to be reaped, and blk-rbd's heap
trials hung (test_heap_faults_in_a_threaded_driver).
EOT
	fi

} >"$root/docs/EVALUATION.md"
echo "wrote docs/EVALUATION.md" >&2
