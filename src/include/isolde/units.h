/* SPDX-License-Identifier: MIT */
/* isolde/units.h - sizes as people write them: 4096, 4k, 64K, 1M, 2G. */
#ifndef ISOLDE_UNITS_H
#define ISOLDE_UNITS_H

#include <stdint.h>

/* Returns 0 and *out, or -1 if s is not a number with an optional k/m/g
 * suffix (powers of 1024), or if it overflows. */
int isolde_parse_size(const char *s, uint64_t *out);
/* Returns 0 and *out, or -1 if s is not a plain unsigned decimal. */
int isolde_parse_u64(const char *s, uint64_t *out);

#endif
