/* SPDX-License-Identifier: MIT */
/* blk-file's operations, shared with test drivers that wrap them. */
#ifndef ISOLDE_DRIVERS_BLK_FILE_H
#define ISOLDE_DRIVERS_BLK_FILE_H

#include "backend.h"

int blk_file_init(struct isolde_driver *drv);
uint8_t blk_file_io(struct isolde_driver *drv, const struct isolde_blk_request *req,
		    const struct iovec *iov, int iovcnt);

#endif
