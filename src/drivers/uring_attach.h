/* SPDX-License-Identifier: MIT */
/* Mapping the io_uring the launcher made for a driver whose policy grants
 * 'uring' (fd 7, with its parameters in --uring-params). */
#ifndef ISOLDE_DRIVERS_URING_ATTACH_H
#define ISOLDE_DRIVERS_URING_ATTACH_H

#include <liburing.h>

#include "backend.h"

/* 0, or -1 after logging why. */
int isolde_driver_map_uring(struct isolde_driver *drv, struct io_uring *ring);

#endif
