/* SPDX-License-Identifier: MIT */
/* blk-uring's operations: the asynchronous model of backend.h over io_uring. */
#ifndef ISOLDE_DRIVERS_BLK_URING_H
#define ISOLDE_DRIVERS_BLK_URING_H

#include "backend.h"

int blk_uring_init(struct isolde_driver *drv);
int blk_uring_submit(struct isolde_driver *drv, const struct isolde_blk_request *req,
		     const struct iovec *iov, int iovcnt, uint32_t tag);
unsigned blk_uring_reap(struct isolde_driver *drv);
bool blk_uring_completion_pending(struct isolde_driver *drv);

#endif
