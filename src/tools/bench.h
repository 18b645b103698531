/* SPDX-License-Identifier: MIT */
/* isolde bench: what isolation costs, measured. Shared by the runner and the report. */
#ifndef ISOLDE_TOOLS_BENCH_H
#define ISOLDE_TOOLS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bench_mode { MODE_DIRECT, MODE_EVENT, MODE_SPIN, MODE_HYBRID, MODE_COUNT };
enum bench_rw { RW_RANDREAD, RW_RANDWRITE, RW_RANDRW, RW_COUNT };
enum bench_copy { COPY_ZERO, COPY_COPY, COPY_COUNT };

extern const char *const bench_mode_names[MODE_COUNT];
extern const char *const bench_rw_names[RW_COUNT];
extern const char *const bench_copy_names[COPY_COUNT];

struct bench_result {
	enum bench_mode mode;
	unsigned qd;
	uint64_t bs;
	enum bench_rw rw;
	int copy;              /* enum bench_copy, or -1 for direct (no buffers shared) */
	uint64_t ios;
	uint64_t errors;
	double seconds;
	double iops;
	double mbps;           /* 10^6 bytes per second */
	double lat_us[4];      /* p50, p99, p99.9, max */
	double cpu_us_front;   /* per I/O */
	double cpu_us_driver;  /* per I/O */
	double kicks_per_io;
	double calls_per_io;
	unsigned driver_restarts;
};

struct bench_idle {
	enum bench_mode mode;
	double seconds;
	double driver_cpu_pct;
	double front_cpu_pct;
};

struct bench_machine {
	char cpu[128];
	unsigned cpus;
	char kernel[256];
	uint64_t mem_bytes;
	char image_fs[32];
	uint64_t image_bytes;
	char date[32];
	char command[1024];
};

struct bench_run {
	struct bench_machine machine;
	struct bench_result *results;
	size_t nresults;
	struct bench_idle idle[MODE_COUNT];
	size_t nidle;
	double seconds_per_run;
};

/* Write DIR/bench.md and the SVG plots in DIR/plots; 0 or -1 (message on stderr). */
int bench_write_report(const struct bench_run *run, const char *dir);

#endif
