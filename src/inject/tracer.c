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

/* One random bit of the driver's private writable memory: [heap] or the
 * binary's data and bss. Not the shared memory, not the stack. */
static int flip_heap_bit(struct tracer *t)
{
	char path[64], line[512];
	uint64_t starts[32], ends[32];
	int n = 0;
	uint64_t total = 0, s = t->heap_seed;

	snprintf(path, sizeof path, "/proc/%d/maps", (int)t->pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	while (n < 32 && fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		char perms[8], name[256] = "";
		if (sscanf(line, "%llx-%llx %7s %*s %*s %*s %255s", &a, &b, perms, name) < 3)
			continue;
		if (strcmp(perms, "rw-p") != 0 || strstr(name, "memfd") || strstr(name, "[stack") ||
		    strstr(name, "[v"))
			continue;
		starts[n] = a;
		ends[n] = b;
		total += b - a;
		n++;
	}
	fclose(f);
	if (total == 0)
		return -1;
	s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
	uint64_t pick = (s * 0x2545f4914f6cdd1dull) % (total * 8);
	for (int i = 0; i < n; i++) {
		uint64_t bits = (ends[i] - starts[i]) * 8;
		if (pick >= bits) {
			pick -= bits;
			continue;
		}
		uint64_t addr = starts[i] + pick / 8;
		uint8_t byte;
		if (mem_rw(t->pid, addr, &byte, 1, false))
			return -1;
		byte ^= (uint8_t)(1u << (pick % 8));
		snprintf(t->heap_what, sizeof t->heap_what, "bit %u of byte 0x%llx", (unsigned)(pick % 8),
			 (unsigned long long)addr);
		return mem_rw(t->pid, addr, &byte, 1, true);
	}
	return -1;
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
	/* Planting failed before the breakpoint loop: let the caller go on. */
	if (!t->applied)
		sem_post(&t->placed);
	return r;
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
	if (t->fault == SWIFI_HEAP) {
		if (flip_heap_bit(t) == 0)
			t->applied = true;
		else
			snprintf(t->error, sizeof t->error, "heap fault: cannot write driver memory");
		ptrace(PTRACE_DETACH, t->pid, 0, 0);
		if (t->applied)
			sem_post(&t->placed);
		return NULL;
	}
	uint8_t now[SWIFI_MAX_INSN], planted[SWIFI_MAX_INSN];
	if (mem_rw(t->pid, t->insn.addr, now, t->insn.size, false) != 0 ||
	    memcmp(now, t->insn.bytes, t->insn.size) != 0) {
		snprintf(t->error, sizeof t->error, "driver text at 0x%llx differs from its binary",
			 (unsigned long long)t->insn.addr);
		ptrace(PTRACE_DETACH, t->pid, 0, 0);
		return NULL;
	}
	memcpy(planted, t->mutated, t->insn.size);
	planted[0] = 0xcc;
	if (mem_rw(t->pid, t->insn.addr, planted, t->insn.size, true) != 0) {
		snprintf(t->error, sizeof t->error, "cannot write driver text: %s", strerror(errno));
		ptrace(PTRACE_DETACH, t->pid, 0, 0);
		return NULL;
	}
	t->applied = true;
	int sig = 0;
	for (bool first = true;; first = false) {
		if (ptrace(PTRACE_CONT, t->pid, 0, (void *)(long)sig) != 0)
			return NULL;
		if (first)
			sem_post(&t->placed);
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
		if (regs.rip != t->insn.addr + 1) {
			sig = s;
			continue;
		}
		t->activated = true;
		mem_rw(t->pid, t->insn.addr, t->mutated, 1, true);
		regs.rip = t->insn.addr;
		ptrace(PTRACE_SETREGS, t->pid, 0, &regs);
		ptrace(PTRACE_DETACH, t->pid, 0, 0);
		return NULL;
	}
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
