// SPDX-License-Identifier: MIT
/*
 * The synchronous API on top of submit/reap: a request of any size is split
 * into pieces the ring can carry, which go out queue_depth at a time.
 */
#include "device.h"

#include <errno.h>
#include <stdbool.h>

static int run_pieces(struct isolde_blk *dev, uint8_t op, uint16_t flags, unsigned char *buf,
		      uint64_t len, uint64_t offset)
{
	uint64_t piece_max = isolde_blk_piece_max(dev, op);
	uint64_t queued = 0;
	unsigned inflight = 0, nfree = 0;
	bool flush_queued = false;
	int first_error = 0;
	struct isolde_blk_io *free_ios[ISOLDE_BLK_MAX_QUEUE_DEPTH];

	if (isolde_shadow_in_flight(&dev->shadow) != 0)
		return -EBUSY;
	if (dev->rec.failed)
		return -EIO;
	for (unsigned i = 0; i < dev->queue_depth; i++)
		free_ios[nfree++] = &dev->sync_ios[i];

	for (;;) {
		/* Queue as much as fits; stop queueing after the first error. */
		while (nfree > 0 && !first_error &&
		       (op == ISOLDE_BLK_OP_FLUSH ? !flush_queued : queued < len)) {
			struct isolde_blk_io *io = free_ios[nfree - 1];
			uint64_t piece = len - queued < piece_max ? len - queued : piece_max;

			io->op = op;
			io->flags = flags;
			io->buf = buf ? buf + queued : NULL;
			io->len = (uint32_t)piece;
			io->offset = offset + queued;
			int r = isolde_blk_submit(dev, io);
			if (r == -EAGAIN)
				break;
			if (r) {
				first_error = r;
				break;
			}
			nfree--;
			inflight++;
			queued += piece;
			flush_queued = true;
		}
		if (inflight == 0)
			return first_error;

		struct isolde_blk_io *done[64];
		int n = isolde_blk_reap(dev, done, 64, 1, -1);
		if (n < 0)
			return n;
		for (int i = 0; i < n; i++) {
			if (done[i]->result && !first_error)
				first_error = done[i]->result;
			free_ios[nfree++] = done[i];
		}
		inflight -= (unsigned)n;
	}
}

int isolde_blk_read(struct isolde_blk *dev, void *buf, size_t len, uint64_t offset)
{
	if (!buf)
		return -EINVAL;
	return run_pieces(dev, ISOLDE_BLK_OP_READ, 0, buf, len, offset);
}

int isolde_blk_write(struct isolde_blk *dev, const void *buf, size_t len, uint64_t offset)
{
	if (!buf)
		return -EINVAL;
	return run_pieces(dev, ISOLDE_BLK_OP_WRITE, 0, (unsigned char *)buf, len, offset);
}

int isolde_blk_write_fua(struct isolde_blk *dev, const void *buf, size_t len, uint64_t offset)
{
	if (!buf)
		return -EINVAL;
	return run_pieces(dev, ISOLDE_BLK_OP_WRITE, ISOLDE_BLK_F_FUA, (unsigned char *)buf, len, offset);
}

int isolde_blk_flush(struct isolde_blk *dev)
{
	return run_pieces(dev, ISOLDE_BLK_OP_FLUSH, 0, NULL, 0, 0);
}

int isolde_blk_discard(struct isolde_blk *dev, uint64_t offset, uint64_t len)
{
	return run_pieces(dev, ISOLDE_BLK_OP_DISCARD, 0, NULL, len, offset);
}

int isolde_blk_write_zeroes(struct isolde_blk *dev, uint64_t offset, uint64_t len, bool may_unmap)
{
	return run_pieces(dev, ISOLDE_BLK_OP_WRITE_ZEROES, may_unmap ? ISOLDE_BLK_F_MAY_UNMAP : 0,
			  NULL, len, offset);
}
