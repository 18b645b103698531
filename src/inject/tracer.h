/* SPDX-License-Identifier: MIT */
/*
 * Plants one SWIFI fault into a running driver with ptrace.
 *
 * A code fault is written over the instruction with its first byte replaced
 * by int3: when the driver first executes it, the breakpoint reports the
 * fault as activated, the mutated first byte goes back, and the tracer
 * detaches, leaving the driver to run the mutated instruction. A heap fault
 * flips one bit of the driver's private writable memory at once (its
 * activation cannot be observed). Memory is written through /proc/PID/mem.
 *
 * The tracer runs in a thread of the process that is the driver's parent,
 * and never reaps the driver: it peeks at exits with WNOWAIT, so the front
 * end still learns how its driver ended.
 */
#ifndef ISOLDE_INJECT_TRACER_H
#define ISOLDE_INJECT_TRACER_H

#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "swifi.h"

struct tracer {
	pid_t pid;
	enum swifi_fault fault;
	struct swifi_insn insn;             /* code faults */
	uint8_t mutated[SWIFI_MAX_INSN];
	uint64_t heap_seed;                 /* heap faults: which bit */
	char heap_what[96];
	pthread_t thread;
	sem_t placed;                       /* posted once the fault is in (or failed) */
	bool started;
	/* Results, read after tracer_finish. */
	bool applied;
	bool activated;
	char error[160];
};

/* Start tracing and return once the fault is planted (or planting failed). */
int tracer_start(struct tracer *t);
/* Wait for the tracer (the driver must be dead or about to be). */
void tracer_finish(struct tracer *t);

#endif
