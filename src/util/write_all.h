/* SPDX-License-Identifier: MIT */
/* Write all of a buffer to an fd, across short writes and EINTR. */
#ifndef ISOLDE_UTIL_WRITE_ALL_H
#define ISOLDE_UTIL_WRITE_ALL_H

#include <stdbool.h>
#include <stddef.h>

/* true when every byte was written; false on an error (errno) or a write of 0. */
bool isolde_write_all(int fd, const void *buf, size_t len);

#endif
