/* SPDX-License-Identifier: MIT */
/*
 * Plants a trial's SWIFI faults into a running driver with ptrace: up to
 * TRACER_MAX_FAULTS of one type, at distinct instructions.
 *
 * Each fault's instruction is written over with its first byte replaced by
 * int3. When the driver first executes it, the breakpoint marks that fault
 * activated: a code fault's mutated first byte goes in and the driver runs
 * the mutated instruction; a data fault ("heap") flips one bit of the
 * memory the instruction is about to read, if that memory is the driver's
 * own data (its heap, data or bss: not the shared memory, not the stack),
 * and the instruction runs on the flipped bit; if it is not, the breakpoint
 * is stepped over and set again, up to TRACER_MAX_REARMS times. The tracer
 * stays attached until every fault was activated or the driver is gone.
 * Memory is written through /proc/PID/mem.
 *
 * Every thread of the driver is traced (a library such as librbd runs the
 * driver's code, and its own, on threads of its own): those there when the
 * tracer seizes the driver, and each one they create (PTRACE_O_TRACECLONE).
 * A thread that reaches a breakpoint another thread has just taken out is
 * put back on the instruction, unharmed.
 *
 * The tracer runs in a thread of the process that is the driver's parent,
 * and never reaps the driver: it peeks at exits with WNOWAIT, so the front
 * end still learns how its driver ended. (The driver's other threads are
 * the tracer's to reap: the driver's own exit is not reported until they
 * are.)
 */
#ifndef ISOLDE_INJECT_TRACER_H
#define ISOLDE_INJECT_TRACER_H

#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "swifi.h"

#define TRACER_MAX_FAULTS 128
#define TRACER_MAX_REARMS 64
#define TRACER_MAX_THREADS 512

struct tracer_fault {
	struct swifi_insn insn;
	uint8_t mutated[SWIFI_MAX_INSN];    /* a data fault: the original bytes */
	bool activated;
	pid_t by;                           /* the thread that activated it */
	unsigned rearms;                    /* a data fault's hits on memory not the driver's data */
};

struct tracer_thread {
	pid_t tid;
	bool stopped;                       /* in a ptrace-stop the tracer has taken */
	int pending_signal;                 /* to deliver when it is resumed */
	bool queued;                        /* a stop taken while waiting for another thread, */
	int queued_status;                  /* not yet handled */
};

struct tracer {
	pid_t pid;
	enum swifi_fault fault;
	const struct swifi_code *code;      /* for a data fault's effective address */
	unsigned nfaults;
	struct tracer_fault faults[TRACER_MAX_FAULTS];
	uint64_t heap_seed;                 /* data faults: which bit */
	char heap_what[96];                 /* the first data fault's flipped bit */
	bool by_group;                      /* the driver leads its process group: wait for it by that */
	unsigned nthreads;
	struct tracer_thread threads[TRACER_MAX_THREADS];
	pthread_t thread;
	sem_t placed;                       /* posted once the faults are in (or failed) */
	bool started;
	unsigned live;                      /* faults still armed (atomic: tracer_waiting) */
	bool done;                          /* the tracer left the driver (atomic) */
	/* Results, read after tracer_finish. */
	bool applied;
	unsigned activated;                 /* faults activated */
	char error[160];
};

/* Start tracing and return once the faults are planted (or planting failed). */
int tracer_start(struct tracer *t);
/* While the workload runs: are faults still armed in a driver the tracer is
 * attached to (worth running the workload on for)? */
bool tracer_waiting(const struct tracer *t);
/* Wait for the tracer (the driver must be dead or about to be). */
void tracer_finish(struct tracer *t);

#endif
