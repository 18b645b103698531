// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "tracer.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int mem_rw(pid_t pid, uint64_t addr, void *buf, size_t len, bool write)
{
	char path[64];
	int fd;
	ssize_t n;

	snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
	fd = open(path, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = write ? pwrite(fd, buf, len, (off_t)addr) : pread(fd, buf, len, (off_t)addr);
	close(fd);
	return n == (ssize_t)len ? 0 : -1;
}

/* Is [addr, addr + len) inside the driver's own data: [heap] or the
 * binary's data and bss, private and writable? Not the shared memory (a
 * memfd), not a stack, not the vDSO's. */
static bool driver_data(pid_t pid, uint64_t addr, unsigned len)
{
	char path[64], line[512];
	bool inside = false;

	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	while (!inside && fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		char perms[8], name[256] = "";
		if (sscanf(line, "%llx-%llx %7s %*s %*s %*s %255s", &a, &b, perms, name) < 3)
			continue;
		if (strcmp(perms, "rw-p") != 0 || strstr(name, "memfd") || strstr(name, "[stack") ||
		    strstr(name, "[v"))
			continue;
		inside = addr >= a && addr + len <= b && addr + len > addr;
	}
	fclose(f);
	return inside;
}

/* Flip one bit of the len bytes at addr (chosen by *seed); describe it. */
static int flip_bit(struct tracer *t, uint64_t addr, unsigned len, char *what, size_t whatlen)
{
	uint64_t s = t->heap_seed;
	s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
	t->heap_seed = s;
	uint64_t pick = (s * 0x2545f4914f6cdd1dull) % ((uint64_t)len * 8);
	uint8_t byte;

	if (mem_rw(t->pid, addr + pick / 8, &byte, 1, false))
		return -1;
	byte ^= (uint8_t)(1u << (pick % 8));
	snprintf(what, whatlen, "bit %u of byte 0x%llx", (unsigned)(pick % 8), (unsigned long long)(addr + pick / 8));
	return mem_rw(t->pid, addr + pick / 8, &byte, 1, true);
}

/* Wait for a stop; false if the driver is gone (left unreaped). */
static bool wait_stop(pid_t pid, int *status)
{
	for (;;) {
		siginfo_t info;
		memset(&info, 0, sizeof info);
		if (waitid(P_PID, (id_t)pid, &info, WEXITED | WSTOPPED | WNOWAIT | __WALL) != 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		if (info.si_code == CLD_EXITED || info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED)
			return false;
		/* A stop: consume just that. */
		if (waitpid(pid, status, __WALL | WNOHANG) == pid && !WIFEXITED(*status) && !WIFSIGNALED(*status))
			return true;
	}
}

static void *trace_and_plant(struct tracer *t);

static void *trace(void *arg)
{
	struct tracer *t = arg;
	void *r = trace_and_plant(t);
	__atomic_store_n(&t->done, true, __ATOMIC_RELEASE);
	/* Planting failed before the breakpoint loop: let the caller go on. */
	if (!t->applied)
		sem_post(&t->placed);
	return r;
}

static struct tracer_fault *fault_at(struct tracer *t, uint64_t addr)
{
	for (unsigned i = 0; i < t->nfaults; i++)
		if (t->faults[i].insn.addr == addr && !t->faults[i].activated && t->faults[i].rearms <= TRACER_MAX_REARMS)
			return &t->faults[i];
	return NULL;
}

static bool armed(const struct tracer_fault *f)
{
	return !f->activated && f->rearms <= TRACER_MAX_REARMS;
}

/* Each fault's instruction with int3 first (the rest already mutated); 0,
 * or -1 with the error set and whatever was planted taken out again. */
static int plant_all(struct tracer *t)
{
	for (unsigned i = 0; i < t->nfaults; i++) {
		struct tracer_fault *f = &t->faults[i];
		uint8_t now[SWIFI_MAX_INSN], planted[SWIFI_MAX_INSN];
		if (mem_rw(t->pid, f->insn.addr, now, f->insn.size, false) != 0 ||
		    memcmp(now, f->insn.bytes, f->insn.size) != 0) {
			snprintf(t->error, sizeof t->error, "driver text at 0x%llx differs from its binary",
				 (unsigned long long)f->insn.addr);
		} else {
			memcpy(planted, f->mutated, f->insn.size);
			planted[0] = 0xcc;
			if (mem_rw(t->pid, f->insn.addr, planted, f->insn.size, true) == 0)
				continue;
			snprintf(t->error, sizeof t->error, "cannot write driver text: %s", strerror(errno));
		}
		while (i-- > 0)
			mem_rw(t->pid, t->faults[i].insn.addr, t->faults[i].insn.bytes, t->faults[i].insn.size, true);
		return -1;
	}
	return 0;
}

/* A data fault hit at f: flip a bit of what the instruction reads if it is
 * the driver's data (activated), else step over the original instruction
 * and set the breakpoint again. The driver is stopped at f, rip rewound.
 * false if the driver is gone. */
static bool data_hit(struct tracer *t, struct tracer_fault *f, struct user_regs_struct *regs)
{
	uint64_t addr;
	unsigned len;
	char what[96];
	int status;

	if (swifi_read_address(t->code, &f->insn, regs, &addr, &len) == 0 && driver_data(t->pid, addr, len) &&
	    flip_bit(t, addr, len, what, sizeof what) == 0) {
		f->activated = true;
		t->activated++;
		if (!t->heap_what[0])
			snprintf(t->heap_what, sizeof t->heap_what, "%s", what);
		mem_rw(t->pid, f->insn.addr, f->insn.bytes, 1, true);
		return true;
	}
	/* Not the driver's data this time (a stack slot through another
	 * register, the shared memory): let this one read pass. */
	mem_rw(t->pid, f->insn.addr, f->insn.bytes, 1, true);
	if (++f->rearms > TRACER_MAX_REARMS)
		return true;
	if (ptrace(PTRACE_SINGLESTEP, t->pid, 0, 0) != 0 || !wait_stop(t->pid, &status))
		return false;
	uint8_t int3 = 0xcc;
	mem_rw(t->pid, f->insn.addr, &int3, 1, true);
	/* A signal that came with the step is the driver's; the next CONT
	 * would lose it, so it ends the step as a SIGTRAP would not. */
	if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP && !(status >> 16))
		kill(t->pid, WSTOPSIG(status));
	return true;
}

static void *trace_and_plant(struct tracer *t)
{
	int status;

	if (ptrace(PTRACE_SEIZE, t->pid, 0, 0) != 0) {
		snprintf(t->error, sizeof t->error, "ptrace seize %d: %s", (int)t->pid, strerror(errno));
		return NULL;
	}
	if (ptrace(PTRACE_INTERRUPT, t->pid, 0, 0) != 0 || !wait_stop(t->pid, &status)) {
		snprintf(t->error, sizeof t->error, "could not stop driver %d", (int)t->pid);
		return NULL;
	}
	if (t->nfaults == 0 || plant_all(t) != 0) {
		if (!t->error[0])
			snprintf(t->error, sizeof t->error, "no fault to plant");
		ptrace(PTRACE_DETACH, t->pid, 0, 0);
		return NULL;
	}
	t->applied = true;
	int sig = 0;
	unsigned live = t->nfaults;
	__atomic_store_n(&t->live, live, __ATOMIC_RELEASE);
	for (bool first = true; live; first = false) {
		long cont = ptrace(PTRACE_CONT, t->pid, 0, (void *)(long)sig);
		/* Planted: the caller goes on, even if the driver is gone now. */
		if (first)
			sem_post(&t->placed);
		if (cont != 0)
			return NULL;
		if (!wait_stop(t->pid, &status))
			return NULL; /* it died: the front end sees how */
		sig = 0;
		if (!WIFSTOPPED(status))
			continue;
		int s = WSTOPSIG(status);
		if (status >> 16) /* an event stop (e.g. PTRACE_INTERRUPT): no signal to pass */
			continue;
		if (s != SIGTRAP) {
			sig = s; /* not ours: deliver it */
			continue;
		}
		struct user_regs_struct regs;
		if (ptrace(PTRACE_GETREGS, t->pid, 0, &regs) != 0)
			return NULL;
		struct tracer_fault *f = fault_at(t, regs.rip - 1);
		if (!f) {
			sig = s;
			continue;
		}
		regs.rip = f->insn.addr;
		ptrace(PTRACE_SETREGS, t->pid, 0, &regs);
		if (t->fault == SWIFI_HEAP) {
			if (!data_hit(t, f, &regs))
				return NULL;
		} else {
			f->activated = true;
			t->activated++;
			mem_rw(t->pid, f->insn.addr, f->mutated, 1, true);
		}
		if (!armed(f))
			__atomic_store_n(&t->live, --live, __ATOMIC_RELEASE);
	}
	ptrace(PTRACE_DETACH, t->pid, 0, 0);
	return NULL;
}

bool tracer_waiting(const struct tracer *t)
{
	return t->started && !__atomic_load_n(&t->done, __ATOMIC_ACQUIRE) && __atomic_load_n(&t->live, __ATOMIC_ACQUIRE);
}

int tracer_start(struct tracer *t)
{
	if (sem_init(&t->placed, 0, 0) != 0 || pthread_create(&t->thread, NULL, trace, t) != 0)
		return -1;
	t->started = true;
	while (sem_wait(&t->placed) != 0 && errno == EINTR)
		;
	return 0;
}

#define TRACER_FINISH_WAIT_S 5

void tracer_finish(struct tracer *t)
{
	if (t->started) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += TRACER_FINISH_WAIT_S;
		/* The front end's reap used to consume the tracer's stops
		 * (isolde_domain_reap explains how), leaving the tracer waiting
		 * for a driver in ptrace-stop forever and the campaign stuck.
		 * Should a stop ever go missing again, the trial's verdict is
		 * in by now: end that driver. Its pid cannot have been reused,
		 * as the tracer would not be waiting for a reaped child. */
		if (pthread_timedjoin_np(t->thread, NULL, &until) != 0) {
			fprintf(stderr, "isolde inject: the tracer of driver %d is stuck; killing the driver\n",
				(int)t->pid);
			kill(t->pid, SIGKILL);
			pthread_join(t->thread, NULL);
		}
		sem_destroy(&t->placed);
	}
	t->started = false;
}
