// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "tracer.h"

#include <dirent.h>
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

static struct tracer_thread *thread_of(struct tracer *t, pid_t tid)
{
	for (unsigned i = 0; i < t->nthreads; i++)
		if (t->threads[i].tid == tid)
			return &t->threads[i];
	return NULL;
}

/* A thread the tracer traces from now on; NULL once the table is full (a
 * thread then runs untraced: should it reach a breakpoint, its SIGTRAP ends
 * the driver, a failure the trial sees like any other). */
static struct tracer_thread *add_thread(struct tracer *t, pid_t tid)
{
	struct tracer_thread *th = thread_of(t, tid);
	if (th || t->nthreads == TRACER_MAX_THREADS)
		return th;
	th = &t->threads[t->nthreads++];
	*th = (struct tracer_thread){ .tid = tid };
	return th;
}

static void forget_thread(struct tracer *t, pid_t tid)
{
	struct tracer_thread *th = thread_of(t, tid);
	if (th)
		*th = t->threads[--t->nthreads];
}

static bool gone(const siginfo_t *info)
{
	return info->si_code == CLD_EXITED || info->si_code == CLD_KILLED || info->si_code == CLD_DUMPED;
}

/*
 * Take the next event of the driver's threads: 1 with a stopped thread's tid
 * and status; 0 once the driver is gone; -1 once thread target (if not 0)
 * has exited. The driver's own exit is only peeked at (WNOWAIT), never
 * reaped; its other threads' exits are consumed here, and must be: the
 * kernel reports the driver's exit only after them. So the wait is always
 * by the whole process group, whichever thread the caller is waiting for.
 */
static int take_event(struct tracer *t, pid_t target, pid_t *tid, int *status)
{
	for (;;) {
		siginfo_t info;
		memset(&info, 0, sizeof info);
		if (waitid(t->by_group ? P_PGID : P_PID, (id_t)t->pid, &info, WEXITED | WSTOPPED | WNOWAIT | __WALL) != 0) {
			if (errno == EINTR)
				continue;
			return 0;
		}
		pid_t who = info.si_pid;
		if (who == t->pid && gone(&info))
			return 0;
		int st;
		/* Peeked, so there: if it cannot be taken, nothing else will be. */
		if (waitpid(who, &st, __WALL | WNOHANG) != who)
			return 0;
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			forget_thread(t, who);
			if (who == target)
				return -1;
			continue;
		}
		*tid = who;
		*status = st;
		return 1;
	}
}

/* Wait for the next stop of any of the driver's threads (those taken while
 * waiting for another first): 1 with its tid and status, or 0 once the
 * driver is gone. */
static int wait_any(struct tracer *t, pid_t *tid, int *status)
{
	for (unsigned i = 0; i < t->nthreads; i++) {
		if (t->threads[i].queued) {
			t->threads[i].queued = false;
			*tid = t->threads[i].tid;
			*status = t->threads[i].queued_status;
			return 1;
		}
	}
	return take_event(t, 0, tid, status) == 1;
}

/* Wait for thread tid's next stop (its first, or a single step's end);
 * false if it or the driver is gone. Other threads' stops are kept for
 * wait_any. */
static bool wait_thread(struct tracer *t, pid_t tid, int *status)
{
	struct tracer_thread *th = thread_of(t, tid);
	if (th && th->queued) {
		th->queued = false;
		*status = th->queued_status;
		return true;
	}
	for (;;) {
		pid_t who;
		int st;
		int r = take_event(t, tid, &who, &st);
		if (r != 1)
			return false;
		if (who == tid) {
			*status = st;
			return true;
		}
		struct tracer_thread *other = add_thread(t, who);
		if (!other) {
			ptrace(PTRACE_DETACH, who, 0, 0);
			continue;
		}
		other->queued = true;
		other->queued_status = st;
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

/* A data fault hit at f by thread tid: flip a bit of what the instruction
 * reads if it is the driver's data (activated), else step over the original
 * instruction and set the breakpoint again. The thread is stopped at f, rip
 * rewound. false if the driver is gone. */
static bool data_hit(struct tracer *t, pid_t tid, struct tracer_fault *f, struct user_regs_struct *regs)
{
	uint64_t addr;
	unsigned len;
	char what[96];
	int status;

	if (swifi_read_address(t->code, &f->insn, regs, &addr, &len) == 0 && driver_data(t->pid, addr, len) &&
	    flip_bit(t, addr, len, what, sizeof what) == 0) {
		f->activated = true;
		f->by = tid;
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
	if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0) != 0 || !wait_thread(t, tid, &status))
		return false;
	uint8_t int3 = 0xcc;
	mem_rw(t->pid, f->insn.addr, &int3, 1, true);
	/* A signal that came with the step is the thread's: deliver it when
	 * it is resumed, as a SIGTRAP of the step's own is not. */
	if (WIFSTOPPED(status) && WSTOPSIG(status) != SIGTRAP && !(status >> 16))
		thread_of(t, tid)->pending_signal = WSTOPSIG(status);
	return true;
}

/* Is addr a fault's instruction that no longer starts with int3: a thread
 * that trapped there raced the tracer taking the breakpoint out. */
static bool stale_breakpoint(struct tracer *t, uint64_t addr)
{
	for (unsigned i = 0; i < t->nfaults; i++) {
		if (t->faults[i].insn.addr == addr) {
			uint8_t now;
			return mem_rw(t->pid, addr, &now, 1, false) == 0 && now != 0xcc;
		}
	}
	return false;
}

/* Seize every thread of the driver, those it creates later too, and stop
 * them; false with the error set if the driver itself cannot be. */
static bool seize_all(struct tracer *t)
{
	char path[64];
	unsigned before;

	/* Its threads' stops are waited for by its process group (the
	 * launcher gives each driver its own); without one, only the driver's
	 * first thread can be waited for, and only it is traced. */
	t->by_group = getpgid(t->pid) == t->pid;
	snprintf(path, sizeof path, "/proc/%d/task", (int)t->pid);
	if (!t->by_group) {
		if (ptrace(PTRACE_SEIZE, t->pid, 0, 0) != 0) {
			snprintf(t->error, sizeof t->error, "ptrace seize %d: %s", (int)t->pid, strerror(errno));
			return false;
		}
		add_thread(t, t->pid);
	} else do { /* until a pass finds no thread the last one missed */
		before = t->nthreads;
		DIR *d = opendir(path);
		if (!d)
			break;
		for (struct dirent *e; (e = readdir(d));) {
			pid_t tid = (pid_t)atoi(e->d_name);
			if (tid <= 0 || thread_of(t, tid))
				continue;
			/* Not every thread can be traced (io_uring's workers cannot,
			 * and run no user code): those are left alone. */
			if (ptrace(PTRACE_SEIZE, tid, 0, (void *)(long)PTRACE_O_TRACECLONE) != 0) {
				if (tid == t->pid) {
					snprintf(t->error, sizeof t->error, "ptrace seize %d: %s", (int)t->pid, strerror(errno));
					closedir(d);
					return false;
				}
				continue;
			}
			add_thread(t, tid);
		}
		closedir(d);
	} while (t->nthreads != before);
	if (!thread_of(t, t->pid)) {
		snprintf(t->error, sizeof t->error, "ptrace seize %d: %s", (int)t->pid, strerror(ESRCH));
		return false;
	}
	for (unsigned i = 0; i < t->nthreads; i++)
		ptrace(PTRACE_INTERRUPT, t->threads[i].tid, 0, 0);
	/* Until every thread is stopped: waiting for one takes the others'
	 * stops and exits too, which reorders the table. */
	for (;;) {
		struct tracer_thread *next = NULL;
		for (unsigned i = 0; i < t->nthreads && !next; i++)
			if (!t->threads[i].stopped)
				next = &t->threads[i];
		if (!next)
			break;
		pid_t tid = next->tid;
		int status;
		if (!wait_thread(t, tid, &status)) {
			if (tid == t->pid || thread_of(t, tid)) {
				snprintf(t->error, sizeof t->error, "could not stop driver %d", (int)t->pid);
				return false;
			}
			continue; /* that thread exited */
		}
		struct tracer_thread *th = thread_of(t, tid);
		th->stopped = true;
		/* A real signal is the thread's; an event stop has none. */
		if (!(status >> 16) && WSTOPSIG(status) != SIGTRAP)
			th->pending_signal = WSTOPSIG(status);
	}
	return true;
}

static bool resume(struct tracer_thread *th)
{
	int sig = th->pending_signal;
	th->pending_signal = 0;
	th->stopped = false;
	return ptrace(PTRACE_CONT, th->tid, 0, (void *)(long)sig) == 0;
}

/* Stop the running threads and let every thread go; a breakpoint a thread
 * raced is undone first, and a signal it was stopped with goes with it. */
static void detach_all(struct tracer *t)
{
	for (unsigned i = 0; i < t->nthreads; i++)
		if (!t->threads[i].stopped)
			ptrace(PTRACE_INTERRUPT, t->threads[i].tid, 0, 0);
	for (;;) {
		bool all = true;
		for (unsigned i = 0; i < t->nthreads; i++)
			all &= t->threads[i].stopped;
		if (all)
			break;
		pid_t tid;
		int status;
		if (!wait_any(t, &tid, &status))
			return; /* the driver died: nothing to detach from */
		struct tracer_thread *th = add_thread(t, tid);
		if (!th)
			continue;
		th->stopped = true;
		if (status >> 16) {
			if ((status >> 16) == PTRACE_EVENT_CLONE) {
				unsigned long child;
				if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &child) == 0 && add_thread(t, (pid_t)child))
					ptrace(PTRACE_INTERRUPT, (pid_t)child, 0, 0);
			}
			continue;
		}
		struct user_regs_struct regs;
		if (WSTOPSIG(status) == SIGTRAP && ptrace(PTRACE_GETREGS, tid, 0, &regs) == 0 &&
		    stale_breakpoint(t, regs.rip - 1)) {
			regs.rip--;
			ptrace(PTRACE_SETREGS, tid, 0, &regs);
		} else {
			th->pending_signal = WSTOPSIG(status);
		}
	}
	for (unsigned i = 0; i < t->nthreads; i++)
		ptrace(PTRACE_DETACH, t->threads[i].tid, 0, (void *)(long)t->threads[i].pending_signal);
}

static void *trace_and_plant(struct tracer *t)
{
	if (!seize_all(t))
		return NULL;
	if (t->nfaults == 0 || plant_all(t) != 0) {
		if (!t->error[0])
			snprintf(t->error, sizeof t->error, "no fault to plant");
		detach_all(t);
		return NULL;
	}
	t->applied = true;
	unsigned live = t->nfaults;
	__atomic_store_n(&t->live, live, __ATOMIC_RELEASE);
	for (unsigned i = 0; i < t->nthreads; i++)
		resume(&t->threads[i]);
	/* Planted: the caller goes on, even if the driver is gone now. */
	sem_post(&t->placed);
	while (live) {
		pid_t tid;
		int status;
		if (!wait_any(t, &tid, &status))
			return NULL; /* it died: the front end sees how */
		struct tracer_thread *th = add_thread(t, tid);
		if (!th) {
			ptrace(PTRACE_DETACH, tid, 0, 0);
			continue;
		}
		th->stopped = true;
		int event = status >> 16, s = WSTOPSIG(status);
		if (event == PTRACE_EVENT_CLONE) {
			unsigned long child;
			if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &child) == 0)
				add_thread(t, (pid_t)child); /* it reports its first stop itself */
		} else if (event) {
			/* An event stop (a new thread's first, an interrupt): no signal. */
		} else if (s != SIGTRAP) {
			th->pending_signal = s; /* not ours: deliver it */
		} else {
			struct user_regs_struct regs;
			if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0)
				return NULL;
			struct tracer_fault *f = fault_at(t, regs.rip - 1);
			if (f) {
				regs.rip = f->insn.addr;
				ptrace(PTRACE_SETREGS, tid, 0, &regs);
				if (t->fault == SWIFI_HEAP) {
					if (!data_hit(t, tid, f, &regs))
						return NULL;
				} else {
					f->activated = true;
					f->by = tid;
					t->activated++;
					mem_rw(t->pid, f->insn.addr, f->mutated, 1, true);
				}
				if (!armed(f))
					__atomic_store_n(&t->live, --live, __ATOMIC_RELEASE);
			} else if (stale_breakpoint(t, regs.rip - 1)) {
				regs.rip--;
				ptrace(PTRACE_SETREGS, tid, 0, &regs);
			} else {
				th->pending_signal = s;
			}
		}
		if (live && !resume(th))
			forget_thread(t, tid);
	}
	detach_all(t);
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
