/* SPDX-License-Identifier: MIT */
/*
 * isolde/driver.h - what a driver process is given, for driver authors: the
 * file descriptors it starts with. Everything else it knows is in the shared
 * memory's header (isolde/shm.h); the ring and requests are isolde/ring.h
 * and isolde/blkif.h, the grants isolde/grant.h.
 *
 *   0, 1  /dev/null                  2  its log: a non-blocking pipe; one
 *                                       line per write, no prefix
 *   3     shared memory (memfd)      4  kick eventfd (front end -> driver)
 *   5     call eventfd (driver -> front end)
 *   6     the device: an open file description of its own
 *   7     only with the policy's 'uring': an io_uring restricted to I/O on
 *         fd 6 (argv: --uring-fd 7 --uring-params HEX)
 *
 * argv: --shm-fd 3 --kick-fd 4 --call-fd 5 --device-fd 6 [ring] [its own];
 * the environment is empty, the root directory empty (docs/PROTOCOL.md §1.5).
 */
#ifndef ISOLDE_DRIVER_H
#define ISOLDE_DRIVER_H

#define ISOLDE_DRIVER_FD_SHM 3
#define ISOLDE_DRIVER_FD_KICK 4
#define ISOLDE_DRIVER_FD_CALL 5
#define ISOLDE_DRIVER_FD_DEVICE 6
#define ISOLDE_DRIVER_FD_URING 7

#endif
