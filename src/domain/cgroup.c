// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define CGROUP_ROOT "/sys/fs/cgroup"
#define CGROUP_V1_MAGIC 0x27e0eb
#define CGROUP_V2_MAGIC 0x63677270
#define CPU_PERIOD_US 100000u

static const char *const v1_controllers[ISOLDE_CGROUP_CONTROLLERS] = { "cpu", "pids" };

enum layout { NONE, V1, V2 };

static bool is_fs(const char *path, long magic)
{
	struct statfs s;
	return statfs(path, &s) == 0 && (long)s.f_type == magic;
}

static bool v2_has_controllers(void)
{
	char buf[512];
	int fd = open(CGROUP_ROOT "/cgroup.controllers", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	return strstr(buf, "cpu") && strstr(buf, "pids");
}

static enum layout detect(void)
{
	char path[64];
	unsigned v1 = 0;

	for (unsigned i = 0; i < ISOLDE_CGROUP_CONTROLLERS; i++) {
		snprintf(path, sizeof path, CGROUP_ROOT "/%s", v1_controllers[i]);
		v1 += is_fs(path, CGROUP_V1_MAGIC);
	}
	if (v1 == ISOLDE_CGROUP_CONTROLLERS)
		return V1;
	if (is_fs(CGROUP_ROOT, CGROUP_V2_MAGIC) && v2_has_controllers())
		return V2;
	return NONE;
}

bool isolde_cgroup_available(char *why, size_t whylen)
{
	if (geteuid() != 0) {
		snprintf(why, whylen, "not root");
		return false;
	}
	if (detect() == NONE) {
		snprintf(why, whylen, "no cpu and pids controllers under " CGROUP_ROOT);
		return false;
	}
	return true;
}

static int write_file(const char *dir, const char *name, const char *value)
{
	char path[PATH_MAX + 64];
	int fd, rc = -1;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = strlen(value);
	if (write(fd, value, len) == (ssize_t)len)
		rc = 0;
	close(fd);
	return rc;
}

static int make_dir(const char *path)
{
	return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

/* A name fit for a directory, whatever the driver's name holds. */
static void leaf_name(char *out, size_t len, const char *driver, pid_t pid)
{
	char clean[33];
	size_t n = 0;

	for (const char *p = driver; *p && n < sizeof clean - 1; p++)
		clean[n++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
			      *p == '-' || *p == '_') ? *p : '_';
	clean[n] = '\0';
	snprintf(out, len, "%s-%d", n ? clean : "driver", (int)pid);
}

static int set_limits_v1(struct isolde_cgroup *cg, const struct isolde_cgroup_limits *lim)
{
	char v[32];

	snprintf(v, sizeof v, "%u", CPU_PERIOD_US);
	if (write_file(cg->dirs[0], "cpu.cfs_period_us", v))
		return -1;
	snprintf(v, sizeof v, "%llu", (unsigned long long)lim->cpu_percent * CPU_PERIOD_US / 100);
	if (write_file(cg->dirs[0], "cpu.cfs_quota_us", v))
		return -1;
	snprintf(v, sizeof v, "%u", lim->tasks);
	return write_file(cg->dirs[1], "pids.max", v);
}

static int set_limits_v2(struct isolde_cgroup *cg, const struct isolde_cgroup_limits *lim)
{
	char v[48];

	snprintf(v, sizeof v, "%llu %u", (unsigned long long)lim->cpu_percent * CPU_PERIOD_US / 100,
		 CPU_PERIOD_US);
	if (write_file(cg->dirs[0], "cpu.max", v))
		return -1;
	snprintf(v, sizeof v, "%u", lim->tasks);
	return write_file(cg->dirs[0], "pids.max", v);
}

/*
 * Groups left behind by front ends that died without cleaning up: their
 * driver (the pid in the name) is gone, so the group is empty and rmdir
 * takes it. A live driver's group is never touched.
 */
static void sweep_stale(const char *base)
{
	DIR *dir = opendir(base);
	struct dirent *e;

	if (!dir)
		return;
	while ((e = readdir(dir))) {
		const char *dash = strrchr(e->d_name, '-');
		char *end;
		long pid = dash ? strtol(dash + 1, &end, 10) : 0;
		if (e->d_type != DT_DIR || pid <= 0 || *end)
			continue;
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue; /* alive (or not ours to ask about) */
		char path[PATH_MAX];
		snprintf(path, sizeof path, "%s/%s", base, e->d_name);
		rmdir(path);
	}
	closedir(dir);
}

static int make_groups(struct isolde_cgroup *cg, enum layout layout, const char *leaf)
{
	char base[128];

	if (layout == V2) {
		/* The controllers must be enabled for the children of each level. */
		if (make_dir(CGROUP_ROOT "/isolde") ||
		    (write_file(CGROUP_ROOT, "cgroup.subtree_control", "+cpu +pids") &&
		     errno != EBUSY) ||
		    write_file(CGROUP_ROOT "/isolde", "cgroup.subtree_control", "+cpu +pids"))
			return -1;
		sweep_stale(CGROUP_ROOT "/isolde");
		snprintf(cg->dirs[0], sizeof cg->dirs[0], CGROUP_ROOT "/isolde/%s", leaf);
		cg->ndirs = 1;
		return mkdir(cg->dirs[0], 0755);
	}
	for (unsigned i = 0; i < ISOLDE_CGROUP_CONTROLLERS; i++) {
		snprintf(base, sizeof base, CGROUP_ROOT "/%s/isolde", v1_controllers[i]);
		if (make_dir(base))
			return -1;
		sweep_stale(base);
		snprintf(cg->dirs[i], sizeof cg->dirs[i], "%s/%s", base, leaf);
		if (mkdir(cg->dirs[i], 0755) != 0)
			return -1;
		cg->ndirs = i + 1;
	}
	return 0;
}

int isolde_cgroup_enter(struct isolde_cgroup *cg, const char *driver, pid_t pid,
			const struct isolde_cgroup_limits *lim, char *err, size_t errlen)
{
	enum layout layout = detect();
	char leaf[64], pid_text[16];

	memset(cg, 0, sizeof *cg);
	leaf_name(leaf, sizeof leaf, driver, pid);
	snprintf(pid_text, sizeof pid_text, "%d", (int)pid);
	if (layout == NONE) {
		snprintf(err, errlen, "no cpu and pids controllers under " CGROUP_ROOT);
		return -1;
	}
	if (make_groups(cg, layout, leaf) ||
	    (layout == V1 ? set_limits_v1(cg, lim) : set_limits_v2(cg, lim))) {
		snprintf(err, errlen, "cannot set up control group %s: %s", leaf, strerror(errno));
		isolde_cgroup_remove(cg);
		return -1;
	}
	for (unsigned i = 0; i < cg->ndirs; i++) {
		if (write_file(cg->dirs[i], "cgroup.procs", pid_text)) {
			snprintf(err, errlen, "cannot move driver pid %d into %s: %s", (int)pid, cg->dirs[i],
				 strerror(errno));
			isolde_cgroup_remove(cg);
			return -1;
		}
	}
	return 0;
}

void isolde_cgroup_remove(struct isolde_cgroup *cg)
{
	for (unsigned i = 0; i < cg->ndirs; i++) {
		if (cg->dirs[i][0] && rmdir(cg->dirs[i]) != 0 && errno != ENOENT)
			fprintf(stderr, "isolde: warning: cannot remove control group %s: %s\n", cg->dirs[i],
				strerror(errno));
		cg->dirs[i][0] = '\0';
	}
	cg->ndirs = 0;
}
