// SPDX-License-Identifier: MIT
/*
 * The bench report: Markdown tables, the targets judged as ratios from this
 * one run, and gnuplot SVG plots, readable without the JSON.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The slice of the results the targets and plots are about. */
struct focus {
	uint64_t bs;
	int rw;
	int copy;
};

static const struct bench_result *find(const struct bench_run *run, enum bench_mode mode, unsigned qd,
				       uint64_t bs, int rw, int copy)
{
	for (size_t i = 0; i < run->nresults; i++) {
		const struct bench_result *r = &run->results[i];
		if (r->mode == mode && r->bs == bs && (int)r->rw == rw &&
		    (mode == MODE_DIRECT || (r->qd == qd && r->copy == copy)))
			return r;
	}
	return NULL;
}

static const struct bench_idle *find_idle(const struct bench_run *run, enum bench_mode mode)
{
	for (size_t i = 0; i < run->nidle; i++)
		if (run->idle[i].mode == mode)
			return &run->idle[i];
	return NULL;
}

static unsigned max_qd(const struct bench_run *run)
{
	unsigned q = 0;
	for (size_t i = 0; i < run->nresults; i++)
		if (run->results[i].mode != MODE_DIRECT && run->results[i].qd > q)
			q = run->results[i].qd;
	return q;
}

static void pick_focus(const struct bench_run *run, struct focus *f)
{
	f->bs = run->results[0].bs;
	f->rw = run->results[0].rw;
	f->copy = COPY_ZERO;
	bool has_zero = false;
	for (size_t i = 0; i < run->nresults; i++) {
		const struct bench_result *r = &run->results[i];
		if (r->bs == 4096)
			f->bs = 4096;
		if (r->rw == RW_RANDREAD)
			f->rw = RW_RANDREAD;
		if (r->copy == COPY_ZERO)
			has_zero = true;
	}
	if (!has_zero)
		f->copy = COPY_COPY;
}

static const char *bs_text(uint64_t bs, char *buf, size_t len)
{
	if (bs % 1024 == 0)
		snprintf(buf, len, "%llu KiB", (unsigned long long)(bs / 1024));
	else
		snprintf(buf, len, "%llu B", (unsigned long long)bs);
	return buf;
}

/* ---- targets ---- */

static void target_row(FILE *f, const char *target, bool measured, bool met, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void target_row(FILE *f, const char *target, bool measured, bool met, const char *fmt, ...)
{
	va_list ap;

	fprintf(f, "| %s | ", target);
	if (measured) {
		va_start(ap, fmt);
		vfprintf(f, fmt, ap);
		va_end(ap);
	} else {
		fputs("not measured in this run", f);
	}
	fprintf(f, " | %s |\n", !measured ? "-" : met ? "met" : "**missed**");
}

static void write_targets(FILE *f, const struct bench_run *run, const struct focus *fc)
{
	const struct bench_result *d = find(run, MODE_DIRECT, 1, fc->bs, fc->rw, -1);
	const struct bench_result *s1 = find(run, MODE_SPIN, 1, fc->bs, fc->rw, fc->copy);
	const struct bench_result *s32 = find(run, MODE_SPIN, 32, fc->bs, fc->rw, fc->copy);
	const struct bench_result *h32 = find(run, MODE_HYBRID, 32, fc->bs, fc->rw, fc->copy);
	const struct bench_result *e32 = find(run, MODE_EVENT, 32, fc->bs, fc->rw, fc->copy);
	const struct bench_idle *hi = find_idle(run, MODE_HYBRID);
	char bsb[32];

	fprintf(f, "## Targets\n\nJudged on %s %s, %s buffers, from this run only (ratios of figures "
		"measured side by side).\n\n| target | measured | verdict |\n|---|---|---|\n",
		bs_text(fc->bs, bsb, sizeof bsb), bench_rw_names[fc->rw], bench_copy_names[fc->copy]);
	target_row(f, "spin QD1 >= 0.75x direct IOPS", d && s1, d && s1 && s1->iops >= 0.75 * d->iops,
		   "%.0f vs %.0f IOPS = %.2fx", s1 ? s1->iops : 0, d ? d->iops : 0,
		   d && s1 ? s1->iops / d->iops : 0);
	target_row(f, "spin QD1 p50 within 0.5 us of direct", d && s1,
		   d && s1 && s1->lat_us[0] - d->lat_us[0] <= 0.5, "%.2f vs %.2f us (+%.2f us)",
		   s1 ? s1->lat_us[0] : 0, d ? d->lat_us[0] : 0, d && s1 ? s1->lat_us[0] - d->lat_us[0] : 0);
	target_row(f, "spin QD32 >= 1.0x direct (single-thread) IOPS", d && s32,
		   d && s32 && s32->iops >= d->iops, "%.0f vs %.0f IOPS = %.2fx", s32 ? s32->iops : 0,
		   d ? d->iops : 0, d && s32 ? s32->iops / d->iops : 0);
	target_row(f, "hybrid QD32 p50 within 1.25x spin's", h32 && s32,
		   h32 && s32 && h32->lat_us[0] <= 1.25 * s32->lat_us[0], "%.2f vs %.2f us = %.2fx",
		   h32 ? h32->lat_us[0] : 0, s32 ? s32->lat_us[0] : 0,
		   h32 && s32 ? h32->lat_us[0] / s32->lat_us[0] : 0);
	target_row(f, "hybrid idle < 2% of a core", hi != NULL, hi && hi->driver_cpu_pct + hi->front_cpu_pct < 2.0,
		   "%.2f%% (driver %.2f%%, front end %.2f%%) over %.1f s",
		   hi ? hi->driver_cpu_pct + hi->front_cpu_pct : 0, hi ? hi->driver_cpu_pct : 0,
		   hi ? hi->front_cpu_pct : 0, hi ? hi->seconds : 0);
	target_row(f, "event QD32 >= 0.5x spin QD32 IOPS", e32 && s32, e32 && s32 && e32->iops >= 0.5 * s32->iops,
		   "%.0f vs %.0f IOPS = %.2fx", e32 ? e32->iops : 0, s32 ? s32->iops : 0,
		   e32 && s32 ? e32->iops / s32->iops : 0);
	double ec = e32 ? e32->cpu_us_front + e32->cpu_us_driver : 0;
	double sc = s32 ? s32->cpu_us_front + s32->cpu_us_driver : 0;
	target_row(f, "event QD32 CPU per I/O < 1/3 of spin's", e32 && s32, e32 && s32 && ec < sc / 3,
		   "%.3f vs %.3f us = %.2fx", ec, sc, sc > 0 ? ec / sc : 0);
	fputs("\n", f);
}

/* ---- tables ---- */

static void write_tables(FILE *f, const struct bench_run *run)
{
	uint64_t seen_bs[64];
	size_t nbs = 0;

	for (size_t i = 0; i < run->nresults; i++) {
		bool known = false;
		for (size_t k = 0; k < nbs; k++)
			known |= seen_bs[k] == run->results[i].bs;
		if (!known && nbs < 64)
			seen_bs[nbs++] = run->results[i].bs;
	}
	fputs("## All results\n\nLatency is per I/O from submission to completion as the caller sees it. "
	      "CPU is scheduler time (`/proc/.../schedstat`) divided by I/Os: F the front end (this "
	      "process), D the driver process. direct is synchronous and has no driver.\n\n", f);
	for (size_t b = 0; b < nbs; b++) {
		for (int rw = 0; rw < RW_COUNT; rw++) {
			bool any = false;
			for (size_t i = 0; i < run->nresults; i++)
				any |= run->results[i].bs == seen_bs[b] && (int)run->results[i].rw == rw;
			if (!any)
				continue;
			char bsb[32];
			fprintf(f, "### %s %s\n\n", bs_text(seen_bs[b], bsb, sizeof bsb), bench_rw_names[rw]);
			fputs("| mode | qd | copy | IOPS | MB/s | p50 us | p99 us | p99.9 us | max us | CPU F us/io | "
			      "CPU D us/io | kicks/io | calls/io |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
			      f);
			for (size_t i = 0; i < run->nresults; i++) {
				const struct bench_result *r = &run->results[i];
				if (r->bs != seen_bs[b] || (int)r->rw != rw)
					continue;
				fprintf(f, "| %s | %u | %s | %.0f | %.1f | %.2f | %.2f | %.2f | %.1f | %.3f | %.3f | "
					"%.3f | %.3f |\n", bench_mode_names[r->mode], r->qd,
					r->copy < 0 ? "-" : bench_copy_names[r->copy], r->iops, r->mbps, r->lat_us[0],
					r->lat_us[1], r->lat_us[2], r->lat_us[3], r->cpu_us_front, r->cpu_us_driver,
					r->kicks_per_io, r->calls_per_io);
			}
			fputs("\n", f);
		}
	}
	if (run->nidle) {
		fputs("### Idle\n\nCPU burnt by an open, idle device (after a burst of traffic), as a share of one "
		      "core.\n\n| mode | seconds | driver | front end |\n|---|---|---|---|\n", f);
		for (size_t i = 0; i < run->nidle; i++)
			fprintf(f, "| %s | %.1f | %.2f%% | %.2f%% |\n", bench_mode_names[run->idle[i].mode],
				run->idle[i].seconds, run->idle[i].driver_cpu_pct, run->idle[i].front_cpu_pct);
		fputs("\n", f);
	}
}

/* ---- plots ---- */

static FILE *gnuplot_open(const char *dir, const char *name, const char *title, const char *xlabel,
			  const char *ylabel)
{
	FILE *g = popen("gnuplot 2>/dev/null", "w");
	if (!g)
		return NULL;
	fprintf(g, "set terminal svg size 760,440 dynamic enhanced font 'sans,11' background '#ffffff'\n"
		   "set output '%s/plots/%s.svg'\nset title '%s'\nset xlabel '%s'\nset ylabel '%s'\n"
		   "set key outside right\nset grid\n", dir, name, title, xlabel, ylabel);
	return g;
}

/* One line per isolated mode: y(qd). */
static int plot_vs_qd(const struct bench_run *run, const struct focus *fc, const char *dir, const char *name,
		      const char *title, const char *ylabel, double (*y)(const struct bench_result *))
{
	const struct bench_result *d = find(run, MODE_DIRECT, 1, fc->bs, fc->rw, -1);
	FILE *g = gnuplot_open(dir, name, title, "queue depth", ylabel);
	if (!g)
		return -1;
	fputs("set logscale x 2\n", g);
	for (int m = MODE_EVENT; m < MODE_COUNT; m++) {
		fprintf(g, "$%s << EOD\n", bench_mode_names[m]);
		for (size_t i = 0; i < run->nresults; i++) {
			const struct bench_result *r = &run->results[i];
			if ((int)r->mode == m && r->bs == fc->bs && (int)r->rw == fc->rw && r->copy == fc->copy)
				fprintf(g, "%u %g\n", r->qd, y(r));
		}
		fputs("EOD\n", g);
	}
	fputs("plot ", g);
	for (int m = MODE_EVENT; m < MODE_COUNT; m++)
		fprintf(g, "%s$%s using 1:2 with linespoints lw 2 title '%s'", m > MODE_EVENT ? ", " : "",
			bench_mode_names[m], bench_mode_names[m]);
	if (d)
		fprintf(g, ", %g with lines dashtype 2 lw 2 title 'direct'", y(d));
	fputs("\n", g);
	return pclose(g) == 0 ? 0 : -1;
}

static double y_p50(const struct bench_result *r) { return r->lat_us[0]; }
static double y_iops(const struct bench_result *r) { return r->iops; }
static double y_cpu(const struct bench_result *r) { return r->cpu_us_front + r->cpu_us_driver; }

static int plot_copy(const struct bench_run *run, const struct focus *fc, const char *dir)
{
	uint64_t big = 0;
	unsigned q = max_qd(run);

	for (size_t i = 0; i < run->nresults; i++)
		if (run->results[i].bs > big && (int)run->results[i].rw == fc->rw)
			big = run->results[i].bs;
	char title[160], bsb[32];
	snprintf(title, sizeof title, "copy vs zero-copy: %s %s at QD%u", bs_text(big, bsb, sizeof bsb),
		 bench_rw_names[fc->rw], q);
	FILE *g = gnuplot_open(dir, "copy-vs-zero", title, "notify mode", "MB/s");
	if (!g)
		return -1;
	fputs("set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
	      "set yrange [0:*]\n$d << EOD\nmode zero copy\n", g);
	for (int m = MODE_EVENT; m < MODE_COUNT; m++) {
		const struct bench_result *z = find(run, (enum bench_mode)m, q, big, fc->rw, COPY_ZERO);
		const struct bench_result *c = find(run, (enum bench_mode)m, q, big, fc->rw, COPY_COPY);
		fprintf(g, "%s %g %g\n", bench_mode_names[m], z ? z->mbps : 0, c ? c->mbps : 0);
	}
	fputs("EOD\nplot $d using 2:xtic(1) title 'zero copy', '' using 3 title 'copy'\n", g);
	return pclose(g) == 0 ? 0 : -1;
}

int bench_write_report(const struct bench_run *run, const char *dir)
{
	char path[4096], bsb[32], title[200];
	struct focus fc;
	FILE *f;

	if (run->nresults == 0)
		return -1;
	snprintf(path, sizeof path, "%s/plots", dir);
	if ((mkdir(dir, 0755) && errno != EEXIST) || (mkdir(path, 0755) && errno != EEXIST)) {
		fprintf(stderr, "isolde bench: cannot create %s: %s\n", path, strerror(errno));
		return -1;
	}
	pick_focus(run, &fc);
	bool plots = true;
	snprintf(title, sizeof title, "p50 latency: %s %s, %s buffers", bs_text(fc.bs, bsb, sizeof bsb),
		 bench_rw_names[fc.rw], bench_copy_names[fc.copy]);
	plots &= plot_vs_qd(run, &fc, dir, "latency-vs-qd", title, "p50 latency (us)", y_p50) == 0;
	snprintf(title, sizeof title, "IOPS: %s %s, %s buffers", bsb, bench_rw_names[fc.rw], bench_copy_names[fc.copy]);
	plots &= plot_vs_qd(run, &fc, dir, "iops-vs-qd", title, "IOPS", y_iops) == 0;
	snprintf(title, sizeof title, "CPU per I/O (front end + driver): %s %s", bsb, bench_rw_names[fc.rw]);
	plots &= plot_vs_qd(run, &fc, dir, "cpu-per-io", title, "CPU us per I/O", y_cpu) == 0;
	plots &= plot_copy(run, &fc, dir) == 0;
	if (!plots)
		fprintf(stderr, "isolde bench: warning: gnuplot failed or is missing; the report has no plots\n");

	snprintf(path, sizeof path, "%s/bench.md", dir);
	f = fopen(path, "we");
	if (!f) {
		fprintf(stderr, "isolde bench: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	const struct bench_machine *m = &run->machine;
	fprintf(f, "# Notification modes and the cost of isolation\n\n"
		"Measured on %s: %s, %u CPUs, %.1f GiB memory, %s; the image is a %.0f MiB file on %s. "
		"Each combination ran for %.1f s.\n\nReproduce with:\n\n```\n%s\n```\n\n",
		m->date, m->cpu, m->cpus, (double)m->mem_bytes / (1u << 30), m->kernel,
		(double)m->image_bytes / (1u << 20), m->image_fs, run->seconds_per_run, m->command);
	write_targets(f, run, &fc);
	if (plots)
		fputs("## Plots\n\n![p50 latency vs queue depth](plots/latency-vs-qd.svg)\n\n"
		      "![IOPS vs queue depth](plots/iops-vs-qd.svg)\n\n"
		      "![CPU per I/O vs queue depth](plots/cpu-per-io.svg)\n\n"
		      "![copy vs zero copy](plots/copy-vs-zero.svg)\n\n", f);
	write_tables(f, run);
	if (fclose(f) != 0) {
		fprintf(stderr, "isolde bench: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}
