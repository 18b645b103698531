/* SPDX-License-Identifier: MIT */
/*
 * A control group per driver process, so that what rlimits cannot bound is
 * bounded too: CPU time (a driver that keeps answering while it burns
 * cores) and the number of tasks, threads included.
 *
 *   cpu     cpu.cfs_quota_us / cpu.cfs_period_us (v1), cpu.max (v2)
 *   pids    pids.max
 *
 * Memory is bounded by RLIMIT_AS (the policy's memory plus the shared
 * area), not by the memory controller: it charges page cache to whoever
 * touches a page first, so a driver writing an image on tmpfs (whose pages
 * cannot be reclaimed) would be killed by the controller's OOM killer for
 * holding the image itself - measured: a 512 MiB image in /dev/shm written
 * in 1 MiB blocks under a limit of memory + shared area, 4 OOM kills in
 * 600 writes.
 *
 * Groups live in isolde/DRIVER-PID under each controller's hierarchy
 * (cgroup v1: /sys/fs/cgroup/CONTROLLER/; v2: /sys/fs/cgroup/). The
 * launcher, still root, creates the group, writes the limits and moves the
 * child into it before the child drops its identity; the group is removed
 * once the driver has been reaped. Without root, or without the
 * controllers, nothing is created and the plan says so.
 */
#ifndef ISOLDE_DOMAIN_CGROUP_H
#define ISOLDE_DOMAIN_CGROUP_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct isolde_cgroup_limits {
	uint32_t cpu_percent;   /* of one core */
	uint32_t tasks;         /* threads included */
};

#define ISOLDE_CGROUP_CONTROLLERS 2

struct isolde_cgroup {
	char dirs[ISOLDE_CGROUP_CONTROLLERS][PATH_MAX]; /* "" where not created */
	unsigned ndirs;
};

/* Can groups be made here (root, and the two controllers mounted)? If
 * not, why, in why. */
bool isolde_cgroup_available(char *why, size_t whylen);

/* Make the group of driver pid (named after driver), set its limits and
 * move pid into it. 0, or -1 with err (anything made is removed). */
int isolde_cgroup_enter(struct isolde_cgroup *cg, const char *driver, pid_t pid,
			const struct isolde_cgroup_limits *lim, char *err, size_t errlen);

/* Remove the group of a driver that has been reaped. */
void isolde_cgroup_remove(struct isolde_cgroup *cg);

#endif
