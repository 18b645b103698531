// SPDX-License-Identifier: MIT
/*
 * blk-file: a block driver over a regular file or a block device, with
 * pread/pwrite, fdatasync and hole punching. It owns nothing but the fd it
 * was handed.
 */
#define _GNU_SOURCE
#include "blk_file.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* Advance an iovec array past n bytes. */
static void iov_advance(struct iovec **iov, int *cnt, size_t n)
{
	while (n > 0 && *cnt > 0) {
		if (n >= (*iov)->iov_len) {
			n -= (*iov)->iov_len;
			(*iov)++;
			(*cnt)--;
		} else {
			(*iov)->iov_base = (char *)(*iov)->iov_base + n;
			(*iov)->iov_len -= n;
			n = 0;
		}
	}
}

/*
 * Direct I/O the kernel cannot pin the data area for: a VM domain's shared
 * memory is an ivshmem BAR, which the guest maps as device memory, and its
 * agent opens the disk O_DIRECT (the guest's page cache would die with the
 * guest, and with it writes already answered). The kernel refuses with
 * EFAULT before moving a byte; the rest of the request then goes through a
 * private, aligned buffer: one copy, in the guest.
 */
static unsigned char *bounce;
static size_t bounce_size;

static uint8_t bounced_rw(struct isolde_driver *drv, bool write_op, int flags, off_t off, size_t left,
			  struct iovec *iov, int iovcnt)
{
	if (left > bounce_size) {
		size_t want = (left + 4095) & ~(size_t)4095;
		free(bounce);
		bounce_size = 0;
		if (!(bounce = aligned_alloc(4096, want)))
			return ISOLDE_BLK_S_IOERR;
		bounce_size = want;
	}
	if (write_op) {
		size_t at = 0;
		for (int i = 0; i < iovcnt && at < left; i++) {
			size_t n = iov[i].iov_len < left - at ? iov[i].iov_len : left - at;
			memcpy(bounce + at, iov[i].iov_base, n);
			at += n;
		}
	}
	bool sync_after = false;
	for (size_t done = 0; done < left;) {
		ssize_t n = write_op ? pwritev2(drv->device_fd, &(struct iovec){ bounce + done, left - done }, 1,
						off + (off_t)done, flags)
				     : pread(drv->device_fd, bounce + done, left - done, off + (off_t)done);
		if (n < 0 && errno == EOPNOTSUPP && flags) {
			/* No RWF_DSYNC here: write, then sync the data. */
			flags = 0;
			sync_after = true;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return isolde_driver_status_from_errno(errno);
		if (n == 0)
			return ISOLDE_BLK_S_IOERR;
		done += (size_t)n;
	}
	if (sync_after && fdatasync(drv->device_fd) != 0)
		return isolde_driver_status_from_errno(errno);
	if (!write_op) {
		size_t at = 0;
		for (int i = 0; i < iovcnt && at < left; i++) {
			size_t n = iov[i].iov_len < left - at ? iov[i].iov_len : left - at;
			memcpy(iov[i].iov_base, bounce + at, n);
			at += n;
		}
	}
	return ISOLDE_BLK_S_OK;
}

static uint8_t do_rw(struct isolde_driver *drv, const struct isolde_blk_request *req,
		     const struct iovec *iov_in, int iovcnt)
{
	struct iovec local[ISOLDE_BLK_MAX_SEGS];
	struct iovec *iov = local;
	off_t off = (off_t)req->offset;
	size_t left = req->length;
	bool write_op = req->op == ISOLDE_BLK_OP_WRITE;
	int flags = (write_op && (req->flags & ISOLDE_BLK_F_FUA)) ? RWF_DSYNC : 0;
	bool fua_by_sync = false;

	memcpy(local, iov_in, sizeof local[0] * (size_t)iovcnt);
	while (left > 0) {
		ssize_t n = write_op ? pwritev2(drv->device_fd, iov, iovcnt, off, flags)
				     : preadv2(drv->device_fd, iov, iovcnt, off, 0);
		if (n < 0 && errno == EOPNOTSUPP && flags) {
			/* No RWF_DSYNC here: write, then sync the data. */
			flags = 0;
			fua_by_sync = true;
			continue;
		}
		if (n < 0 && errno == EFAULT) {
			uint8_t st = bounced_rw(drv, write_op, flags, off, left, iov, iovcnt);
			if (st != ISOLDE_BLK_S_OK || !fua_by_sync || fdatasync(drv->device_fd) == 0)
				return st;
			return isolde_driver_status_from_errno(errno);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return isolde_driver_status_from_errno(errno);
		}
		if (n == 0) {
			/* A read past the end of a file that shrank under us:
			 * the front end asked for bytes that no longer exist. */
			return ISOLDE_BLK_S_IOERR;
		}
		left -= (size_t)n;
		off += n;
		iov_advance(&iov, &iovcnt, (size_t)n);
	}
	if (fua_by_sync && fdatasync(drv->device_fd) != 0)
		return isolde_driver_status_from_errno(errno);
	return ISOLDE_BLK_S_OK;
}

static uint8_t write_zero_buffer(struct isolde_driver *drv, uint64_t offset, uint64_t length)
{
	static const char zeroes[65536];

	while (length > 0) {
		size_t chunk = length < sizeof zeroes ? (size_t)length : sizeof zeroes;
		ssize_t n = pwrite(drv->device_fd, zeroes, chunk, (off_t)offset);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return isolde_driver_status_from_errno(errno);
		}
		offset += (uint64_t)n;
		length -= (uint64_t)n;
	}
	return ISOLDE_BLK_S_OK;
}

static uint8_t do_discard(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	if (req->length == 0)
		return ISOLDE_BLK_S_OK;
	if (drv->params.device_flags & ISOLDE_DEV_BLOCKDEV) {
		uint64_t range[2] = { req->offset, req->length };
		if (ioctl(drv->device_fd, BLKDISCARD, range) == 0)
			return ISOLDE_BLK_S_OK;
	} else if (fallocate(drv->device_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			     (off_t)req->offset, (off_t)req->length) == 0) {
		return ISOLDE_BLK_S_OK;
	}
	/* Discard is advisory: a device that cannot do it still succeeds. */
	return (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) ? ISOLDE_BLK_S_OK
									     : isolde_driver_status_from_errno(errno);
}

static uint8_t do_write_zeroes(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	off_t off = (off_t)req->offset, len = (off_t)req->length;

	if (len == 0)
		return ISOLDE_BLK_S_OK;
	if (drv->params.device_flags & ISOLDE_DEV_BLOCKDEV) {
		uint64_t range[2] = { req->offset, req->length };
		if (ioctl(drv->device_fd, BLKZEROOUT, range) == 0)
			return ISOLDE_BLK_S_OK;
	} else {
		/* ZERO_RANGE without KEEP_SIZE: inside the image it changes no
		 * size, and past its end RLIMIT_FSIZE stops it (the policy
		 * allows no other mode). */
		int mode = (req->flags & ISOLDE_BLK_F_MAY_UNMAP)
				   ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
				   : FALLOC_FL_ZERO_RANGE;
		if (fallocate(drv->device_fd, mode, off, len) == 0)
			return ISOLDE_BLK_S_OK;
		if (errno != EOPNOTSUPP && errno != EINVAL)
			return isolde_driver_status_from_errno(errno);
	}
	return write_zero_buffer(drv, req->offset, req->length);
}

uint8_t blk_file_io(struct isolde_driver *drv, const struct isolde_blk_request *req,
		    const struct iovec *iov, int iovcnt)
{
	switch (req->op) {
	case ISOLDE_BLK_OP_READ:
	case ISOLDE_BLK_OP_WRITE:
		return do_rw(drv, req, iov, iovcnt);
	case ISOLDE_BLK_OP_FLUSH:
		return fdatasync(drv->device_fd) == 0 ? ISOLDE_BLK_S_OK : isolde_driver_status_from_errno(errno);
	case ISOLDE_BLK_OP_DISCARD:
		return do_discard(drv, req);
	case ISOLDE_BLK_OP_WRITE_ZEROES:
		return do_write_zeroes(drv, req);
	default:
		return ISOLDE_BLK_S_UNSUPPORTED;
	}
}

int blk_file_init(struct isolde_driver *drv)
{
	struct stat st;

	if (isolde_driver_fstat(drv->device_fd, &st) != 0) {
		isolde_driver_log(drv, "device fd %d is not open: %s", drv->device_fd, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		isolde_driver_log(drv, "device fd is neither a regular file nor a block device");
		return -1;
	}
	return 0;
}
