/* SPDX-License-Identifier: MIT */
/* An error message for the caller's buffer, in the parsers' shape:
 * `return isolde_fail(err, errlen, "...", ...);` */
#ifndef ISOLDE_UTIL_ERROR_H
#define ISOLDE_UTIL_ERROR_H

#include <stddef.h>

/* Format into err (if any room) and return -1. */
int isolde_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
