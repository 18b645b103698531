// SPDX-License-Identifier: MIT
/*
 * fault-driver: blk-file with one deterministic fault, for tests. It serves
 * requests correctly until request number --after (counting from 1), then
 * misbehaves as --fault says. Every driver process counts from 1 again, so a
 * restarted driver faults again after --after more requests: a workload sees
 * the fault many times. Built with the test suite; never installed.
 *
 *   unknown-id      answer with an id no request ever had
 *   dup-id          answer correctly, then publish the same response again
 *   stale-id        answer with the id of an earlier, completed request
 *   oversize-length claim more bytes than the request asked for
 *   short-length    claim success for half the bytes
 *   bad-status      a status value the protocol does not define
 *   wrong-op        answer with another op than the request's
 *   prod-overflow   publish a response index far past the responses written,
 *                   then stop (so no later push corrects it)
 *   exit            exit(3)
 *   segfault        write through a null pointer (MMU exception)
 *   grant-write     write into the grant table, mapped read-only (MMU exception)
 *   sigill          execute an undefined instruction (CPU exception)
 *   sigfpe          divide by zero (CPU exception)
 *   abort           abort() (panic)
 *   hang            stop answering (sleep forever)
 *   spin-hang       stop answering (loop forever, burning CPU)
 *   slow            answer this one request --delay-ms late (default 50)
 *   syscall         try openat, socket and execve (each refused by policy),
 *                   then carry on correctly
 *   syscall-kill    call ptrace (on the kill list: the policy kills it)
 *   wild-write      scribble over the header, the ring and the data area, then
 *                   stop answering
 *   leak            allocate and touch 1 MiB per request from here on, until
 *                   memory runs out at the policy's limit; then abort
 *   grow-image      write past the end of the image (the launcher's file size
 *                   limit makes that a policy kill)
 *   lie-ioerr       answer a valid READ or WRITE with an I/O error it did not
 *                   have (a FLUSH or FUA write at --after is served as is: an
 *                   error on one is final by the durability rule, PROTOCOL.md
 *                   §7, so a lie there is a failed flush, not a recovery, and
 *                   which request of a restarted generation is its --after-th
 *                   depends on what was in flight)
 *   lie-invalid     answer a valid request with "invalid request"
 *   flush-and-die   in the first generation only: at the first FLUSH, sync
 *                   the device (taking whatever write-back error it reports)
 *                   and die without answering, so that the FLUSH is replayed
 *                   to a driver whose file description never saw the error
 *   corrupt-write   flip one byte of a WRITE's data before writing it and
 *                   answer it correctly (a non-WRITE request at --after is
 *                   served as is): with zero copy, the flipped byte is in the
 *                   caller's own buffer
 *   corrupt-read    answer a READ correctly but flip one byte of its data:
 *                   a perfectly well-formed lie only the integrity shield
 *                   can catch (a non-READ request at --after is served as is)
 *   start-hang      never become ready, from generation --after on (so with
 *                   --after=2 the first driver serves and every restart is
 *                   stuck in its start until the launcher gives up on it)
 *   flood-calls     from request --after on, signal the front end 512 times
 *                   before each response, and serve correctly: a doorbell
 *                   flood the front end must absorb without stalling
 *   kernel-panic    crash the kernel under the driver: 'c' into
 *                   /proc/sysrq-trigger. Only a VM domain's guest has one (and
 *                   lets its driver write it); in a process domain the open
 *                   fails and the driver exits with 4
 *   kernel-hang     hang the kernel under the driver: lift the real-time
 *                   throttle and spin at SCHED_FIFO priority 99 on the guest's
 *                   one CPU, so nothing else in it runs again (VM domain only;
 *                   elsewhere it exits with 4)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blk_file.h"

static const char *fault = "none";
static unsigned long after = 1;
static unsigned long delay_ms = 50;
static bool leaking;
static unsigned long seen;
static uint64_t last_completed_id;

static const char *const known_faults[] = {
	"none", "unknown-id", "dup-id", "stale-id", "oversize-length", "short-length",
	"bad-status", "wrong-op", "prod-overflow", "exit", "segfault", "grant-write", "sigill",
	"sigfpe", "abort", "hang", "spin-hang", "slow", "syscall", "syscall-kill", "wild-write", "leak",
	"corrupt-read", "lie-ioerr", "lie-invalid", "grow-image", "flush-and-die", "corrupt-write",
	"start-hang", "kernel-panic", "kernel-hang", "flood-calls",
};

static int parse_arg(struct isolde_driver *drv, const char *key, const char *value)
{
	if (strcmp(key, "--fault") == 0 && value) {
		for (size_t i = 0; i < sizeof known_faults / sizeof known_faults[0]; i++) {
			if (strcmp(value, known_faults[i]) == 0) {
				fault = known_faults[i];
				return 0;
			}
		}
		isolde_driver_log(drv, "unknown fault '%s'", value);
		return -1;
	}
	if (strcmp(key, "--delay-ms") == 0 && value) {
		char *end;
		delay_ms = strtoul(value, &end, 10);
		return (*value && !*end) ? 0 : -1;
	}
	if (strcmp(key, "--after") == 0 && value) {
		char *end;
		after = strtoul(value, &end, 10);
		return (*value && !*end && after > 0) ? 0 : -1;
	}
	return -1;
}

static bool is(const char *name)
{
	return strcmp(fault, name) == 0;
}

static void sleep_ms(unsigned long ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void leak_one_mib(struct isolde_driver *drv)
{
	unsigned char *p = malloc(1 << 20);

	if (!p) {
		isolde_driver_log(drv, "out of memory after leaking: aborting");
		abort();
	}
	memset(p, 0xa5, 1 << 20); /* touched, so it is really used */
}

static bool durability_request(const struct isolde_blk_request *req)
{
	return req->op == ISOLDE_BLK_OP_FLUSH || (req->op == ISOLDE_BLK_OP_WRITE && (req->flags & ISOLDE_BLK_F_FUA));
}

static void misbehave(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	struct isolde_blk_response rsp;
	volatile int zero = 0, seven = 7;

	isolde_driver_log(drv, "injecting fault %s at request %lu", fault, seen);
	if (is("exit"))
		exit(3);
	if (is("segfault"))
		*(volatile int *)NULL = 1;
	if (is("grant-write"))
		*(volatile uint16_t *)&drv->grants.table[0].access = 3;
	if (is("sigill"))
		__builtin_trap();
	if (is("sigfpe"))
		zero = seven / zero; /* not 1/x: gcc turns that into a compare */
	if (is("abort"))
		abort();
	if (is("hang"))
		for (;;)
			pause();
	if (is("spin-hang"))
		for (;;)
			__asm__ volatile("" ::: "memory");
	if (is("kernel-panic")) {
		int fd = open("/proc/sysrq-trigger", O_WRONLY);
		isolde_driver_log(drv, "injecting fault kernel-panic: %s",
				  fd < 0 ? "no /proc/sysrq-trigger here" : "sysrq c");
		if (fd < 0 || write(fd, "c", 1) != 1)
			exit(4);
		for (;;)
			pause();
	}
	if (is("kernel-hang")) {
		struct sched_param sp = { .sched_priority = 99 };
		int fd = open("/proc/sys/kernel/sched_rt_runtime_us", O_WRONLY);
		isolde_driver_log(drv, "injecting fault kernel-hang: %s",
				  fd < 0 ? "no /proc/sys here" : "SCHED_FIFO 99, unthrottled");
		if (fd < 0 || write(fd, "-1", 2) != 2 || sched_setscheduler(0, SCHED_FIFO, &sp) != 0)
			exit(4);
		for (;;)
			__asm__ volatile("" ::: "memory");
	}
	if (is("slow"))
		sleep_ms(delay_ms);
	if (is("syscall")) {
		char *const argv[] = { "/bin/sh", NULL };
		int fd = open("/etc/passwd", O_RDONLY);
		int sock = socket(AF_INET, SOCK_STREAM, 0);
		execve("/bin/sh", argv, NULL);
		isolde_driver_log(drv, "open: %d, socket: %d, execve returned: all refused", fd, sock);
	}
	if (is("syscall-kill"))
		ptrace(PTRACE_TRACEME, 0, NULL, NULL);
	if (is("wild-write")) {
		/* Everything the driver can write: the header's page, the ring
		 * and the data area. (The grant table is read-only to it.) Then
		 * it stops: a driver that went on serving requests from the
		 * scribbled data area would write garbage and answer OK, a lie
		 * only the integrity shield can catch (corrupt-read's kind), and
		 * whether the front end saw the scribbled ring first would be a
		 * race. */
		unsigned char *base = (unsigned char *)drv->header;
		memset(base, 0xa5, drv->params.grant_offset);
		memset(base + drv->params.data_offset, 0x5a, drv->params.data_size);
		for (;;)
			pause();
	}
	if (is("leak"))
		leaking = true;
	if (is("grow-image")) {
		static const char block[4096];
		(void)!pwrite(drv->device_fd, block, sizeof block,
			      (off_t)(drv->params.device_size + (1u << 20)));
	}

	if (is("corrupt-write") && req->op == ISOLDE_BLK_OP_WRITE) {
		unsigned char *p = isolde_grant_access(&drv->grants, req->seg[0].gref, req->seg[0].offset,
						       req->seg[0].length, ISOLDE_GRANT_DRIVER_READS);
		if (p)
			p[req->seg[0].length / 2] ^= 0x40;
	}
	isolde_driver_serve(drv, req, &rsp);
	if (is("corrupt-read") && req->op == ISOLDE_BLK_OP_READ && rsp.status == ISOLDE_BLK_S_OK) {
		unsigned char *p = isolde_grant_access(&drv->grants, req->seg[0].gref, req->seg[0].offset,
						       req->seg[0].length, ISOLDE_GRANT_DRIVER_WRITES);
		if (p)
			p[req->seg[0].length / 2] ^= 0x40;
	}
	if (is("unknown-id"))
		rsp.id = UINT64_C(0xdead0000beef) | 0xffff;
	else if (is("stale-id"))
		rsp.id = last_completed_id ? last_completed_id : 0x10000;
	else if (is("oversize-length"))
		rsp.length = req->length + 4096;
	else if (is("short-length"))
		rsp.length = req->length / 2;
	else if (is("bad-status"))
		rsp.status = 200;
	else if (is("lie-ioerr") && !durability_request(req))
		rsp.status = ISOLDE_BLK_S_IOERR, rsp.length = 0;
	else if (is("lie-invalid"))
		rsp.status = ISOLDE_BLK_S_INVALID, rsp.length = 0;
	else if (is("wrong-op"))
		rsp.op = req->op == ISOLDE_BLK_OP_READ ? ISOLDE_BLK_OP_WRITE : ISOLDE_BLK_OP_READ;
	isolde_driver_respond(drv, &rsp);
	if (is("dup-id"))
		isolde_driver_respond(drv, &rsp);
	if (is("prod-overflow")) {
		/* The lie must stay visible: a later push would publish the true
		 * index again. So call the front end and stop. */
		uint32_t p = __atomic_load_n(&drv->ring.sring->rsp_prod, __ATOMIC_RELAXED);
		__atomic_store_n(&drv->ring.sring->rsp_prod, p + 1000, __ATOMIC_RELEASE);
		isolde_waiter_signal(&drv->waiter, true);
		for (;;)
			pause();
	}
}

static void handle(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	struct isolde_blk_response rsp;

	if (is("flush-and-die") && req->op == ISOLDE_BLK_OP_FLUSH && drv->params.generation == 1) {
		int r = fdatasync(drv->device_fd);
		isolde_driver_log(drv, "injecting fault flush-and-die: fdatasync said %s; dying unanswered",
				  r == 0 ? "ok" : strerror(errno));
		abort();
	}
	if (++seen == after && !is("none") && !is("flush-and-die") && !is("flood-calls")) {
		misbehave(drv, req);
		return;
	}
	if (leaking)
		leak_one_mib(drv);
	if (is("flood-calls") && seen >= after)
		for (int i = 0; i < 512; i++)
			isolde_waiter_signal(&drv->waiter, true);
	isolde_driver_serve(drv, req, &rsp);
	isolde_driver_respond(drv, &rsp);
	last_completed_id = rsp.id;
}

static int init(struct isolde_driver *drv)
{
	if (is("start-hang") && drv->params.generation >= after) {
		isolde_driver_log(drv, "injecting fault start-hang in generation %u", drv->params.generation);
		for (;;)
			sleep_ms(1000000);
	}
	return blk_file_init(drv);
}

static const struct isolde_driver_ops fault_driver_ops = {
	.name = "fault-driver",
	.parse_arg = parse_arg,
	.init = init,
	.io = blk_file_io,
	.handle = handle,
};

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &fault_driver_ops);
}
