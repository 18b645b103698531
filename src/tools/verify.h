/* SPDX-License-Identifier: MIT */
/*
 * The verified workload: random writes of self-describing blocks through an
 * isolated driver at a queue depth, then a read-back of every block written.
 * Used by `isolde verify` and `isolde demo`.
 */
#ifndef ISOLDE_TOOLS_VERIFY_H
#define ISOLDE_TOOLS_VERIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "isolde/blk.h"

struct verify_options {
	struct isolde_blk_config cfg;
	uint64_t ops;      /* writes; every block written is then read back */
	uint64_t bs;
	uint64_t seed;
	bool zero_copy;    /* buffers in the shared data area instead of copying */
	uint64_t flush_every; /* a FLUSH after this many writes (0: only after the last) */
	bool announce;     /* print the driver's pid on stderr once it runs */
	/* Called once the device is open, before the workload (fault injection
	 * attaches to the driver here). */
	void (*opened)(struct isolde_blk *dev, void *ctx);
	void *opened_ctx;
	/* After a round (ops writes, then every block written read back),
	 * another while again(opened_ctx) says so, up to max_rounds in all (a
	 * campaign runs until its faults were activated or the bound passed). */
	bool (*again)(void *ctx);
	unsigned max_rounds;
};

struct verify_result {
	uint64_t writes;
	uint64_t reads;
	uint64_t errors;      /* requests that completed with an error or could not be queued */
	uint64_t flushes;
	uint64_t flush_failures;
	uint64_t error_reads_with_data; /* failed reads (shield, copy mode) that left data in the buffer */
	uint64_t mismatches;  /* blocks that read back different from what was written */
	unsigned rounds;      /* of the workload run */
	pid_t driver_pid;
	double seconds;
	struct isolde_blk_stats stats;
	struct isolde_supervisor_stats supervisor;
	uint32_t generation;
	int flush_error;      /* the sticky write-back error, or 0 */
	struct isolde_enforcement enforcement;
	char error[512];      /* the device's failure, if any */
};

/* Returns 0 if the workload ran (look at the result), -1 if it could not start (err). */
int verify_run(const struct verify_options *o, struct verify_result *r, char *err, size_t errlen);

/* Did every request succeed and every block verify? */
static inline bool verify_passed(const struct verify_result *r)
{
	return r->errors == 0 && r->mismatches == 0 && r->error[0] == '\0';
}

#endif
