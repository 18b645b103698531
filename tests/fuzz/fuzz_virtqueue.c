// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the split virtqueue's device side
 * (src/export/virtqueue.c over src/export/guest_memory.c): an arbitrary
 * guest's rings and descriptors.
 *
 * The guest's RAM is two regions of one memfd, adjacent in guest-physical
 * and in front-end address space (a buffer over their border must be
 * refused): 64 KiB at GPA0 and 16 KiB right after it, each at a
 * page-aligned offset of the file. The input is a 16-byte header, then
 * bytes written into that RAM (which is otherwise zero):
 *
 *   0      queue size: 1 << (byte % 12), 1 to 2048
 *   1      bit 0 EVENT_IDX, bit 1 INDIRECT_DESC negotiated; bit 2 the
 *          available index is taken as is (else last_avail + it % (num + 1),
 *          so that the queue is not broken at once); bit 3 ring addresses
 *          as is (else aligned); bit 4 the guest sets NO_INTERRUPT;
 *          bits 5-7 how the device answers (push, notify, re-enable kicks;
 *          without push every other request is dropped, the rest stay in
 *          flight)
 *   2, 4, 6  offsets of the descriptor table, available and used rings in
 *          the first region (little endian, as all that follow)
 *   8      last_avail and used_idx (SET_VRING_BASE)
 *   10     the available index
 *   12     used_event
 *   14     where in the RAM (both regions, one after the other) the rest of
 *          the input goes
 *
 * Every element vq_pop returns is checked against what virtqueue.h
 * promises: head inside the queue, at most VQ_MAX_SEGMENTS segments (and no
 * more than the queue's size without INDIRECT_DESC), each segment non-empty,
 * every non-NULL base inside one region's mapping with its whole length,
 * `bad` set exactly when some base is NULL; no more requests taken than
 * were available; a broken queue gives nothing more; no head returned
 * while it is in flight (this harness keeps its own record), never more
 * than num in flight, and vq_push / vq_drop release exactly their head. vq_push's slot and
 * index, and vq_set_notification's writes, are read back. Anything else
 * aborts, which libFuzzer reports as a crash; ASan and UBSan catch the
 * rest. Built by tests/fuzz/run.sh (clang) or by meson when the compiler is
 * clang; tests/fuzz/replay.c runs a corpus through it without libFuzzer.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guest_memory.h"
#include "virtqueue.h"

#define GPA0 0x10000ull
#define UVA0 0x7f5500000000ull
#define SIZE0 0x10000ull
#define SIZE1 0x4000ull
#define HEADER 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct guest_memory *mem;
static unsigned char *ram[2];   /* each region's host mapping */
static unsigned char held[2048]; /* heads in flight, as this harness counts them */
static unsigned nheld;
static const uint64_t ram_size[2] = { SIZE0, SIZE1 };

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "virtqueue broke its promise: %s\n", what);
		abort();
	}
}

static void map_once(void)
{
	struct guest_region_desc r[2] = {
		{ .guest_phys_addr = GPA0, .memory_size = SIZE0, .userspace_addr = UVA0, .mmap_offset = 0 },
		{ .guest_phys_addr = GPA0 + SIZE0, .memory_size = SIZE1, .userspace_addr = UVA0 + SIZE0,
		  .mmap_offset = SIZE0 },
	};
	char err[256];
	int fd = memfd_create("fuzz-virtqueue", MFD_CLOEXEC), fds[2];

	if (fd < 0 || ftruncate(fd, (off_t)(SIZE0 + SIZE1)) != 0) {
		perror("fuzz_virtqueue: memfd");
		abort();
	}
	fds[0] = fds[1] = fd;
	if (!(mem = guest_memory_map(r, 2, fds, err, sizeof err))) {
		fprintf(stderr, "fuzz_virtqueue: %s\n", err);
		abort();
	}
	close(fd);
	ram[0] = guest_memory_gpa(mem, GPA0, SIZE0);
	ram[1] = guest_memory_gpa(mem, GPA0 + SIZE0, SIZE1);
	check(ram[0] && ram[1], "the regions translate");
}

static uint16_t le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static int inside_ram(const void *base, size_t len)
{
	const unsigned char *p = base;

	for (unsigned r = 0; r < 2; r++)
		if (p >= ram[r] && p < ram[r] + ram_size[r] && len <= (size_t)(ram[r] + ram_size[r] - p))
			return 1;
	return 0;
}

static void check_elem(const struct virtqueue *vq, const struct vq_elem *e)
{
	unsigned n = e->nout + e->nin, nnull = 0;
	volatile unsigned char sink = 0;

	check(e->head < vq->num, "head inside the queue");
	check(n <= VQ_MAX_SEGMENTS, "at most VQ_MAX_SEGMENTS segments");
	if (!vq->indirect)
		check(n <= vq->num, "a direct chain no longer than the queue");
	for (unsigned i = 0; i < n; i++) {
		const struct iovec *v = &e->iov[i];

		check(v->iov_len > 0, "no empty segment");
		if (!v->iov_base) {
			nnull++;
			continue;
		}
		check(inside_ram(v->iov_base, v->iov_len), "a segment inside one region");
		/* Touch both ends, as the device would. */
		sink ^= ((const unsigned char *)v->iov_base)[0];
		sink ^= ((const unsigned char *)v->iov_base)[v->iov_len - 1];
	}
	(void)sink;
	check(e->bad == (nnull > 0), "bad exactly when a segment is not in guest memory");
	check(!e->bad || e->bad_reason[0], "a reason for bad");
}

/* vq_pop handed over e: its head was not in flight and is now. */
static void check_taken(const struct virtqueue *vq, const struct vq_elem *e)
{
	check(!held[e->head], "no head taken while it is in flight");
	held[e->head] = 1;
	nheld++;
	check(vq_head_in_flight(vq, e->head), "a taken head is in flight");
	check(vq->inflight == nheld && nheld <= vq->num, "in flight counted, and at most num");
}

/* The device answered or dropped head. */
static void check_released(const struct virtqueue *vq, uint16_t head)
{
	held[head] = 0;
	nheld--;
	check(!vq_head_in_flight(vq, head) && vq->inflight == nheld, "push and drop release their head");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct virtqueue vq;
	struct vq_elem *e;
	unsigned num, avail, taken = 0;
	uint8_t mode, answer;
	size_t image, at;
	int writes;

	if (!mem)
		map_once();
	if (size < HEADER)
		return 0;
	mode = data[1];
	answer = mode >> 5;
	writes = answer & 5; /* the device writes the used ring: the guest's RAM */
	num = 1u << (data[0] % 12);

	memset(ram[0], 0, SIZE0);
	memset(ram[1], 0, SIZE1);
	memset(held, 0, sizeof held);
	nheld = 0;
	at = le16(data + 14);
	image = size - HEADER;
	if (image > SIZE0 + SIZE1 - at)
		image = SIZE0 + SIZE1 - at;
	for (size_t i = 0; i < image; i++) {
		size_t o = at + i;
		if (o < SIZE0)
			ram[0][o] = data[HEADER + i];
		else
			ram[1][o - SIZE0] = data[HEADER + i];
	}

	memset(&vq, 0, sizeof vq);
	vq.index = 1;
	vq.num = num;
	vq.desc_uva = UVA0 + le16(data + 2);
	vq.avail_uva = UVA0 + le16(data + 4);
	vq.used_uva = UVA0 + le16(data + 6);
	if (!(mode & 8)) {
		vq.desc_uva &= ~15ull;
		vq.avail_uva &= ~1ull;
		vq.used_uva &= ~3ull;
	}
	vq.addr_set = 1;
	vq.event_idx = mode & 1;
	vq.indirect = (mode >> 1) & 1;
	vq.last_avail = vq.used_idx = le16(data + 8);
	if (!vq_map_rings(&vq, mem)) {
		check(vq.broken_reason[0] != 0, "a reason for not mapping the rings");
		check(!vq.desc && !vq.avail && !vq.used, "nothing mapped");
		check(vq_pop(&vq, mem) == NULL, "nothing popped from unmapped rings");
		return 0;
	}
	check(inside_ram(vq.desc, 16 * num) && inside_ram(vq.avail, 6 + 2 * num) &&
	      inside_ram(vq.used, 6 + 8 * num), "rings inside one region");

	/* The guest's side of the rings, over its RAM image. */
	if (mode & 4)
		vq.avail->idx = le16(data + 10);
	else
		vq.avail->idx = (uint16_t)(vq.last_avail + le16(data + 10) % (num + 1));
	vq.avail->ring[num] = le16(data + 12);
	vq.avail->flags = (mode & 16) ? VRING_AVAIL_F_NO_INTERRUPT : 0;
	avail = (uint16_t)(vq.avail->idx - vq.last_avail);

	/* The used ring may overlap the rest: every push can rewrite what the
	 * device reads next, just as a guest could. */
	while (taken <= num) {
		uint16_t used_before = vq.used_idx;

		if (!(e = vq_pop(&vq, mem)))
			break;
		taken++;
		check(writes || taken <= avail, "no more taken than the guest made available");
		check(vq.last_avail == (uint16_t)(le16(data + 8) + taken), "last_avail counts what was taken");
		check_elem(&vq, e);
		check_taken(&vq, e);
		if (answer & 1) {
			uint32_t written = 0;
			for (unsigned i = e->nout; i < e->nout + e->nin; i++)
				written += (uint32_t)e->iov[i].iov_len;
			vq_push(&vq, e->head, written);
			check(vq.used_idx == (uint16_t)(used_before + 1), "used_idx moves by one");
			check(vq.used->ring[used_before & (num - 1)].id == e->head &&
			      vq.used->ring[used_before & (num - 1)].len == written &&
			      vq.used->idx == vq.used_idx, "the used slot and index as pushed");
			check_released(&vq, e->head);
		} else if (taken & 1) {
			vq_drop(&vq, e->head);
			check(vq.used_idx == used_before, "a drop leaves the used ring alone");
			check_released(&vq, e->head);
		}
		if (answer & 2) {
			uint16_t old = vq.signalled_used;
			int valid = vq.signalled_used_valid;
			uint16_t event = vq.avail->ring[num];
			int flags = vq.avail->flags;
			int want = !vq.event_idx ? !(flags & VRING_AVAIL_F_NO_INTERRUPT) :
				   !valid || (uint16_t)(vq.used_idx - event - 1) < (uint16_t)(vq.used_idx - old);
			check(vq_should_notify(&vq) == want, "vq_should_notify as vring_need_event");
		}
		if (answer & 4) {
			vq_set_notification(&vq, taken & 1);
			if (vq.event_idx) {
				if (taken & 1)
					check(*(uint16_t *)&vq.used->ring[num] == vq.last_avail, "avail_event");
			} else {
				check(vq.used->flags == ((taken & 1) ? 0 : VRING_USED_F_NO_NOTIFY), "used flags");
			}
		}
		free(e);
	}
	check(writes || taken <= num, "vq_pop stops");
	if (vq.broken) {
		check(vq.broken_reason[0] != 0, "a reason for breaking");
		check(vq_available(&vq) == 0 && vq_pop(&vq, mem) == NULL, "a broken queue gives nothing");
	} else {
		check(writes || taken == avail, "everything available taken");
	}
	return 0;
}
