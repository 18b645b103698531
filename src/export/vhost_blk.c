// SPDX-License-Identifier: MIT
/*
 * The vhost-user-blk export: `isolde serve --export vhost-user-blk:PATH`,
 * optionally followed by ",poll=event|spin|hybrid" (default: the ring's
 * --notify mode). A QEMU guest's virtio-blk disk, served by the driver
 * domain through the server like every other export.
 *
 * vhost_user.c speaks the protocol and hands over each request the guest
 * queued, as segments of guest memory. Here a request becomes a
 * server_io: its 16-byte header is copied out of the guest's memory once
 * and checked (type, sector, length, alignment, the device's capacity),
 * data to write is copied once into a private buffer before it is
 * submitted, and data read is copied into the guest's buffers only when
 * the read completed. A request that is wrong gets VIRTIO_BLK_S_IOERR (or
 * UNSUPP for an unknown type) in its status byte and never reaches the
 * device; one without a status byte the guest could read stops its queue.
 *
 * The guest's queues are at most 32768 entries of up to 32 MiB: private
 * buffers for all of them could exhaust memory, so requests beyond
 * BLK_MAX_BYTES_IN_FLIGHT of data wait here, in order, for earlier ones
 * to complete.
 *
 * What the guest gets wrong is logged through vhost_user_log, which is
 * rate-limited: a guest can make bad requests as fast as it likes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"
#include "vhost_user.h"

#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_MQ 12
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP 1u
#define VIRTIO_BLK_ID_BYTES 20

#define SECTOR 512u
#define BLK_SEG_MAX 126u                 /* a 128-entry queue, less header and status */
#define BLK_MAX_RANGE_SECTORS 0x3fffffu  /* per DISCARD/WRITE_ZEROES: under the server's 4 GiB */
#define BLK_MAX_BYTES_IN_FLIGHT (64u << 20)
#define BLK_ID "isolde"

struct virtio_blk_outhdr {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
};

struct virtio_blk_range {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

/* struct virtio_blk_config, little-endian like the x86 hosts this runs on. */
struct virtio_blk_config {
	uint64_t capacity;
	uint32_t size_max;
	uint32_t seg_max;
	uint16_t cylinders;
	uint8_t heads;
	uint8_t sectors;
	uint32_t blk_size;
	uint8_t physical_block_exp;
	uint8_t alignment_offset;
	uint16_t min_io_size;
	uint32_t opt_io_size;
	uint8_t writeback;
	uint8_t unused0;
	uint16_t num_queues;
	uint32_t max_discard_sectors;
	uint32_t max_discard_seg;
	uint32_t discard_sector_alignment;
	uint32_t max_write_zeroes_sectors;
	uint32_t max_write_zeroes_seg;
	uint8_t write_zeroes_may_unmap;
	uint8_t unused1[3];
} __attribute__((packed));
_Static_assert(sizeof(struct virtio_blk_config) == 60, "virtio_blk_config is 60 bytes");

struct blk_request {
	struct server_io sio;            /* first: the done callback gets it */
	struct vhost_blk *blk;
	struct vhost_request *vr;
	uint8_t *status;
	void *bounce;
	struct blk_request *next;        /* waiting for room */
};

struct vhost_blk {
	struct isolde_server *srv;
	struct vhost_user *vu;
	struct vhost_device_ops ops;
	uint64_t size;
	uint32_t blk_size;
	bool readonly;
	uint64_t bytes_in_flight;
	struct blk_request *wait_head, *wait_tail;
	bool stopped;
	unsigned long long in_flight;
};

/* ---- the guest's segments as byte streams ---- */

/* Copy len bytes at offset off of the segments iov[0..n) into dst. */
static void copy_from_segments(const struct iovec *iov, unsigned n, size_t off, void *dst, size_t len)
{
	for (unsigned i = 0; i < n && len; i++) {
		if (off >= iov[i].iov_len) {
			off -= iov[i].iov_len;
			continue;
		}
		size_t k = iov[i].iov_len - off < len ? iov[i].iov_len - off : len;
		memcpy(dst, (const uint8_t *)iov[i].iov_base + off, k);
		dst = (uint8_t *)dst + k;
		len -= k;
		off = 0;
	}
}

static void copy_to_segments(const struct iovec *iov, unsigned n, const void *src, size_t len)
{
	for (unsigned i = 0; i < n && len; i++) {
		size_t k = iov[i].iov_len < len ? iov[i].iov_len : len;
		memcpy(iov[i].iov_base, src, k);
		src = (const uint8_t *)src + k;
		len -= k;
	}
}

static size_t segments_len(const struct iovec *iov, unsigned n)
{
	size_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += iov[i].iov_len;
	return total;
}

/* ---- requests ---- */

static void finish(struct blk_request *r, uint8_t status, uint32_t data_written)
{
	struct vhost_blk *blk = r->blk;

	*r->status = status;
	vhost_user_complete(r->vr, data_written + 1);
	blk->in_flight--;
	free(r->bounce);
	free(r);
}

static void start_waiting(struct vhost_blk *blk);

static void io_done(struct server_io *sio)
{
	struct blk_request *r = (struct blk_request *)sio;
	struct vhost_blk *blk = r->blk;
	const struct vq_elem *e = r->vr->elem;
	uint32_t written = 0;

	if (sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE)
		blk->bytes_in_flight -= sio->len;
	if (sio->result) {
		vhost_user_log(blk->vu, "queue %u: %s of %llu bytes at %llu failed: %s", r->vr->queue,
			       sio->op == ISOLDE_BLK_OP_READ ? "read" : sio->op == ISOLDE_BLK_OP_WRITE ? "write"
			       : sio->op == ISOLDE_BLK_OP_FLUSH ? "flush" : "discard or write-zeroes",
			       (unsigned long long)sio->len, (unsigned long long)sio->offset, strerror(-sio->result));
	} else if (sio->op == ISOLDE_BLK_OP_READ) {
		copy_to_segments(e->iov + e->nout, e->nin, r->bounce, sio->len);
		written = sio->len;
	}
	finish(r, sio->result ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, written);
	start_waiting(blk);
}

static void submit(struct blk_request *r)
{
	struct vhost_blk *blk = r->blk;
	const struct vq_elem *e = r->vr->elem;
	struct server_io *sio = &r->sio;
	bool data = sio->op == ISOLDE_BLK_OP_READ || sio->op == ISOLDE_BLK_OP_WRITE;

	if (data) {
		/* Page-aligned, so that an O_DIRECT image could take it as is. */
		size_t cap = (sio->len + 4095u) & ~(size_t)4095u;
		if (!(r->bounce = aligned_alloc(4096, cap ? cap : 4096))) {
			vhost_user_log(blk->vu, "out of memory for a %llu-byte request",
				       (unsigned long long)sio->len);
			finish(r, VIRTIO_BLK_S_IOERR, 0);
			return;
		}
		/* The guest's data, copied once: what it changes afterwards
		 * is not what was checked and written. */
		if (sio->op == ISOLDE_BLK_OP_WRITE)
			copy_from_segments(e->iov, e->nout, sizeof(struct virtio_blk_outhdr), r->bounce, sio->len);
	}
	/* Everything this request read from the guest (header, range, data)
	 * was read by now: if its memory file shrank meanwhile, some of it is
	 * zeros, and none of it goes to the disk. */
	if (vhost_user_memory_lost(r->vr)) {
		finish(r, VIRTIO_BLK_S_IOERR, 0);
		return;
	}
	if (data) {
		sio->buf = r->bounce;
		blk->bytes_in_flight += sio->len;
	}
	server_submit(blk->srv, sio);
}

static bool fits(const struct vhost_blk *blk, const struct blk_request *r)
{
	bool data = r->sio.op == ISOLDE_BLK_OP_READ || r->sio.op == ISOLDE_BLK_OP_WRITE;
	return !data || blk->bytes_in_flight == 0 || blk->bytes_in_flight + r->sio.len <= BLK_MAX_BYTES_IN_FLIGHT;
}

static void start_waiting(struct vhost_blk *blk)
{
	while (blk->wait_head && fits(blk, blk->wait_head)) {
		struct blk_request *r = blk->wait_head;
		blk->wait_head = r->next;
		if (!blk->wait_head)
			blk->wait_tail = NULL;
		submit(r);
	}
}

static void enqueue(struct vhost_blk *blk, struct blk_request *r)
{
	if (!blk->wait_head && fits(blk, r)) {
		submit(r);
		return;
	}
	r->next = NULL;
	if (blk->wait_tail)
		blk->wait_tail->next = r;
	else
		blk->wait_head = r;
	blk->wait_tail = r;
}

/* Offset and length of sectors [sector, sector + bytes/512) if they are
 * inside the device and aligned; false otherwise. */
static bool check_range(const struct vhost_blk *blk, uint64_t sector, uint64_t bytes, uint64_t *offset)
{
	if (sector > blk->size / SECTOR)
		return false;
	*offset = sector * SECTOR;
	return bytes <= blk->size - *offset && *offset % blk->blk_size == 0 && bytes % blk->blk_size == 0;
}

static void request(void *dev, struct vhost_request *vr)
{
	struct vhost_blk *blk = dev;
	const struct vq_elem *e = vr->elem;
	const struct iovec *last = e->nin ? &e->iov[e->nout + e->nin - 1] : NULL;
	struct virtio_blk_outhdr hdr;
	struct blk_request *r;
	size_t out_len, in_len;
	uint64_t offset;

	if (!last || !last->iov_base) {
		vhost_user_abandon(vr, e->bad ? e->bad_reason : "no device-writable status byte");
		return;
	}
	if (!(r = calloc(1, sizeof *r))) {
		vhost_user_abandon(vr, "out of memory");
		return;
	}
	r->blk = blk;
	r->vr = vr;
	r->status = (uint8_t *)last->iov_base + last->iov_len - 1;
	blk->in_flight++;
	if (e->bad) {
		vhost_user_log(blk->vu, "queue %u: request at descriptor %u: %s", vr->queue, e->head, e->bad_reason);
		finish(r, VIRTIO_BLK_S_IOERR, 0);
		return;
	}
	out_len = segments_len(e->iov, e->nout);
	in_len = segments_len(e->iov + e->nout, e->nin) - 1; /* less the status byte */
	if (out_len < sizeof hdr) {
		vhost_user_log(blk->vu, "queue %u: request at descriptor %u: header of %zu bytes, not %zu",
			       vr->queue, e->head, out_len, sizeof hdr);
		finish(r, VIRTIO_BLK_S_IOERR, 0);
		return;
	}
	copy_from_segments(e->iov, e->nout, 0, &hdr, sizeof hdr);
	out_len -= sizeof hdr;

	switch (hdr.type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool write = hdr.type == VIRTIO_BLK_T_OUT;
		size_t len = write ? out_len : in_len;
		const char *wrong = write && blk->readonly ? "a write to a read-only disk"
				    : write && in_len ? "a write with device-writable data buffers"
				    : !write && out_len ? "a read with device-readable data buffers"
				    : len > SERVER_MAX_REQUEST ? "larger than 32 MiB"
				    : !check_range(blk, hdr.sector, len, &offset) ? "outside the disk or misaligned"
				    : NULL;
		if (wrong) {
			vhost_user_log(blk->vu, "queue %u: request at descriptor %u (%zu bytes at sector %llu): %s",
				       vr->queue, e->head, len, (unsigned long long)hdr.sector, wrong);
			finish(r, VIRTIO_BLK_S_IOERR, 0);
			return;
		}
		if (len == 0) {
			finish(r, VIRTIO_BLK_S_OK, 0);
			return;
		}
		r->sio.op = write ? ISOLDE_BLK_OP_WRITE : ISOLDE_BLK_OP_READ;
		r->sio.len = (uint32_t)len;
		r->sio.offset = offset;
		break;
	}
	case VIRTIO_BLK_T_FLUSH:
		r->sio.op = ISOLDE_BLK_OP_FLUSH;
		break;
	case VIRTIO_BLK_T_GET_ID: {
		char id[VIRTIO_BLK_ID_BYTES] = BLK_ID;
		size_t n = in_len < sizeof id ? in_len : sizeof id;
		copy_to_segments(e->iov + e->nout, e->nin, id, n);
		finish(r, VIRTIO_BLK_S_OK, (uint32_t)n);
		return;
	}
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES: {
		bool zeroes = hdr.type == VIRTIO_BLK_T_WRITE_ZEROES;
		struct virtio_blk_range range;
		/* One range per request: max_discard_seg and max_write_zeroes_seg are 1. */
		if (out_len != sizeof range || blk->readonly) {
			finish(r, out_len != sizeof range ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR, 0);
			return;
		}
		copy_from_segments(e->iov, e->nout, sizeof hdr, &range, sizeof range);
		if (range.flags & ~(zeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0u)) {
			finish(r, VIRTIO_BLK_S_UNSUPP, 0);
			return;
		}
		if (range.num_sectors > BLK_MAX_RANGE_SECTORS ||
		    !check_range(blk, range.sector, (uint64_t)range.num_sectors * SECTOR, &offset)) {
			finish(r, VIRTIO_BLK_S_IOERR, 0);
			return;
		}
		if (range.num_sectors == 0) {
			finish(r, VIRTIO_BLK_S_OK, 0);
			return;
		}
		r->sio.op = zeroes ? ISOLDE_BLK_OP_WRITE_ZEROES : ISOLDE_BLK_OP_DISCARD;
		r->sio.flags = zeroes && (range.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) ? ISOLDE_BLK_F_MAY_UNMAP : 0;
		r->sio.len = range.num_sectors * SECTOR;
		r->sio.offset = offset;
		break;
	}
	default:
		finish(r, VIRTIO_BLK_S_UNSUPP, 0);
		return;
	}
	r->sio.done = io_done;
	r->sio.ctx = r;
	enqueue(blk, r);
}

static size_t get_config(void *dev, uint8_t *buf, size_t len)
{
	const struct vhost_blk *blk = dev;
	struct virtio_blk_config cfg = {
		.capacity = blk->size / SECTOR,
		.seg_max = BLK_SEG_MAX,
		.blk_size = blk->blk_size,
		.writeback = 1,
		.num_queues = VHOST_USER_MAX_QUEUES,
		.max_discard_sectors = BLK_MAX_RANGE_SECTORS,
		.max_discard_seg = 1,
		.discard_sector_alignment = blk->blk_size / SECTOR,
		.max_write_zeroes_sectors = BLK_MAX_RANGE_SECTORS,
		.max_write_zeroes_seg = 1,
		.write_zeroes_may_unmap = 1,
	};
	size_t n = sizeof cfg < len ? sizeof cfg : len;

	memcpy(buf, &cfg, n);
	return n;
}

/* ---- the export ---- */

static int start(struct isolde_server *srv, const char *spec, void **state, char *err, size_t errlen)
{
	struct vhost_blk *blk = calloc(1, sizeof *blk);
	enum isolde_notify_mode poll = isolde_blk_notify_mode(server_device(srv));
	const char *opt = strchr(spec, ',');
	char path[256], why[256];
	size_t path_len = opt ? (size_t)(opt - spec) : strlen(spec);

	if (!blk) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (path_len == 0 || path_len >= sizeof path) {
		snprintf(err, errlen, "--export vhost-user-blk:%s: expected vhost-user-blk:PATH[,poll=MODE]", spec);
		goto fail;
	}
	memcpy(path, spec, path_len);
	path[path_len] = '\0';
	if (opt) {
		if (strncmp(opt, ",poll=", 6) != 0 || isolde_notify_mode_parse(opt + 6, &poll) != 0) {
			snprintf(err, errlen, "--export vhost-user-blk:%s: unknown option '%s' "
				 "(only ,poll=event|spin|hybrid)", spec, opt + 1);
			goto fail;
		}
	}
	blk->srv = srv;
	blk->size = server_device_size(srv);
	blk->readonly = server_readonly(srv);
	blk->blk_size = server_alignment(srv) > SECTOR ? server_alignment(srv) : SECTOR;
	if (blk->size % blk->blk_size) {
		snprintf(err, errlen, "--export vhost-user-blk: the device's %llu bytes are not a whole number "
			 "of %u-byte blocks", (unsigned long long)blk->size, blk->blk_size);
		goto fail;
	}
	blk->ops.features = (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_BLK_SIZE) |
			    (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_MQ) |
			    (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES) |
			    (blk->readonly ? 1ull << VIRTIO_BLK_F_RO : 0);
	blk->ops.max_queues = VHOST_USER_MAX_QUEUES;
	blk->ops.get_config = get_config;
	blk->ops.request = request;
	blk->ops.kind = "vhost-user-blk";
	char prefix[96];
	const char *name = server_name(srv);
	snprintf(prefix, sizeof prefix, "%s%svhost-user-blk", name[0] && strcmp(name, "disk") ? name : "",
		 name[0] && strcmp(name, "disk") ? ": " : "");
	blk->vu = vhost_user_start(server_loop(srv), prefix, path, poll, &blk->ops, blk, why, sizeof why);
	if (!blk->vu) {
		snprintf(err, errlen, "--export vhost-user-blk:%s: %s", spec, why);
		goto fail;
	}
	*state = blk;
	return 0;
fail:
	free(blk);
	return -1;
}

static void quiesce(void *state)
{
	struct vhost_blk *blk = state;
	vhost_user_quiesce(blk->vu);
}

static void stop(void *state)
{
	struct vhost_blk *blk = state;

	vhost_user_stop(blk->vu);
	/* Requests the server gave up draining still point here. */
	if (blk->in_flight == 0)
		free(blk);
}

static void describe(void *state, FILE *f)
{
	struct vhost_blk *blk = state;
	vhost_user_describe(blk->vu, f);
}

static unsigned inflight(void *state)
{
	return (unsigned)((struct vhost_blk *)state)->in_flight;
}

static unsigned connections(void *state)
{
	return vhost_user_connected(((struct vhost_blk *)state)->vu) ? 1 : 0;
}

const struct export_ops vhost_blk_export_ops = {
	.scheme = "vhost-user-blk", .start = start, .quiesce = quiesce, .stop = stop, .describe = describe,
	.inflight = inflight, .connections = connections,
};
