/* SPDX-License-Identifier: MIT */
/* JSON output, as the tools, the control socket and the exports write it. */
#ifndef ISOLDE_UTIL_JSON_H
#define ISOLDE_UTIL_JSON_H

#include <stdio.h>

/* Write s as a JSON string literal (quotes, backslashes and control
 * characters escaped); NULL is written as "". */
void json_write_string(FILE *f, const char *s);

#endif
