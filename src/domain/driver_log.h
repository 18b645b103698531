/* SPDX-License-Identifier: MIT */
/*
 * A driver's log. Each driver generation writes its stderr into a pipe of
 * its own (never a file or terminal the application holds: no shared open
 * file description, no file size limit to trip over, nothing to F_SETOWN).
 * Its write end is non-blocking, so a driver whose reader is busy loses
 * lines instead of stalling. The launcher reads the other end whenever the
 * domain's watch fd fires and passes each line on to its own stderr:
 *
 *   isolde driver NAME[PID]: LINE
 *
 * The prefix is the launcher's, so a driver cannot print a line that looks
 * like isolde's own; control characters are replaced by '?', lines are cut
 * at ISOLDE_DRIVER_LOG_LINE bytes, and the policy's log rate applies (the
 * rest are counted and reported as suppressed).
 */
#ifndef ISOLDE_DOMAIN_DRIVER_LOG_H
#define ISOLDE_DOMAIN_DRIVER_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ratelimit.h"

#define ISOLDE_DRIVER_LOG_LINE 400
#define ISOLDE_DRIVER_LOG_DRAIN_MAX (64u << 10) /* bytes per drain: a flood cannot hold the caller */

struct isolde_driver_log {
	int fd;                        /* read end, non-blocking; -1 when closed */
	char who[96];                  /* "NAME[PID]" */
	char line[ISOLDE_DRIVER_LOG_LINE];
	size_t len;
	bool cut;                      /* the line being read is longer than the buffer */
	struct isolde_ratelimit *limit;
	uint64_t lines;                /* lines read, passed on or not */
	uint64_t bytes;
};

void isolde_driver_log_attach(struct isolde_driver_log *l, int fd, const char *driver, pid_t pid,
			      struct isolde_ratelimit *limit);
/* Pass on what the pipe holds, up to ISOLDE_DRIVER_LOG_DRAIN_MAX bytes. */
void isolde_driver_log_drain(struct isolde_driver_log *l);
/* The driver has ended: pass on the rest, a last partial line too, close. */
void isolde_driver_log_close(struct isolde_driver_log *l);

/* Print one launcher line ("isolde: ...") through limit, saying first how
 * many lines it suppressed before. Returns whether it was printed. */
bool isolde_limited_log(struct isolde_ratelimit *limit, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
