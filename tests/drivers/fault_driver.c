// SPDX-License-Identifier: MIT
/*
 * fault-driver: blk-file with one deterministic fault, for tests. It serves
 * requests correctly until request number --after (counting from 1), then
 * misbehaves as --fault says, once (or for good, for faults that kill or
 * hang it). Built with the test suite; never installed.
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
 *   segfault        write through a null pointer
 *   abort           abort()
 *   hang            stop answering (sleep forever)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blk_file.h"

static const char *fault = "none";
static unsigned long after = 1;
static unsigned long seen;
static uint64_t last_completed_id;

static const char *const known_faults[] = {
	"none", "unknown-id", "dup-id", "stale-id", "oversize-length", "short-length",
	"bad-status", "wrong-op", "prod-overflow", "exit", "segfault", "abort", "hang",
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

static void misbehave(struct isolde_driver *drv, const struct isolde_blk_request *req)
{
	struct isolde_blk_response rsp;

	isolde_driver_log(drv, "injecting fault %s at request %lu", fault, seen);
	if (is("exit"))
		exit(3);
	if (is("segfault"))
		*(volatile int *)NULL = 1;
	if (is("abort"))
		abort();
	if (is("hang"))
		for (;;)
			pause();

	isolde_driver_serve(drv, req, &rsp);
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

	if (++seen == after && !is("none")) {
		misbehave(drv, req);
		return;
	}
	isolde_driver_serve(drv, req, &rsp);
	isolde_driver_respond(drv, &rsp);
	last_completed_id = rsp.id;
}

static const struct isolde_driver_ops fault_driver_ops = {
	.name = "fault-driver",
	.parse_arg = parse_arg,
	.init = blk_file_init,
	.io = blk_file_io,
	.handle = handle,
};

int main(int argc, char **argv)
{
	return isolde_driver_main(argc, argv, &fault_driver_ops);
}
