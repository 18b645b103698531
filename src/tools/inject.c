// SPDX-License-Identifier: MIT
/*
 * isolde inject: a fault-injection campaign. Each trial starts a driver
 * domain, plants one SWIFI fault in the running driver, runs a verified
 * workload through it, and records what happened: for a block driver,
 * verified writes and read-back with the integrity shield on (verify.c);
 * for a network driver (net-*), frames both ways through its TAP, each
 * checked end to end (net_verify.c). Each trial runs in a process of its
 * own, so that a front end that crashed would be counted, not end the
 * campaign.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "isolde/blk.h"
#include "isolde/domain.h"
#include "net_verify.h"
#include "swifi.h"
#include "tracer.h"
#include "verify.h"

enum outcome {
	OUT_NOT_ACTIVATED,   /* the faulty instruction never ran (or, heap: no failure seen) */
	OUT_NO_FAILURE,      /* it ran and nothing went wrong */
	OUT_RECOVERED,       /* a failure was detected and recovered transparently */
	OUT_IO_ERROR,        /* the application got an I/O error (network: the device failed or went dead) */
	OUT_CORRUPT,         /* the application got wrong data: must never happen */
	OUT_FRONT_CRASH,     /* the front end crashed: must never happen */
	OUT_NOT_INJECTED,    /* the fault could not be planted */
	OUT_COUNT
};

static const char *const outcome_names[OUT_COUNT] = {
	"not_activated", "activated_no_failure", "recovered", "io_error", "corrupt_returned",
	"front_end_crash", "not_injected",
};

struct trial {
	enum swifi_fault type;
	enum outcome outcome;
	bool activated;              /* one of its faults, at least */
	unsigned faults, faults_activated;
	unsigned activated_in_libraries;  /* of faults_activated: in a library's code */
	unsigned activated_off_main;      /* of faults_activated: by a thread not the driver's first */
	unsigned rounds;             /* of the workload run */
	uint64_t denials[ISOLDE_DENIAL_CLASSES];  /* system calls its policy refused the driver */
	uint64_t restarts;
	uint64_t by_failure[ISOLDE_FAIL_COUNT];
	uint64_t errors, mismatches;
	struct net_frames {
		uint64_t sent, lost, duplicated, caught;  /* both ways */
	} frames;
	char target[192];
	char error[600];
};

struct tally {
	uint64_t injected;           /* trials with their faults planted */
	uint64_t activated;          /* trials with a fault activated */
	uint64_t faults, faults_activated;
	uint64_t activated_in_libraries, activated_off_main;
	uint64_t rounds;
	uint64_t denials[ISOLDE_DENIAL_CLASSES];
	uint64_t outcomes[OUT_COUNT];
	uint64_t by_failure[ISOLDE_FAIL_COUNT];
	uint64_t shield_caught; /* trials where the shield caught a lying driver */
	struct net_frames frames;
};

struct campaign {
	const char *image;
	const char *driver;
	bool network;              /* a net-* driver: the network workload */
	uint64_t faults;           /* trials */
	unsigned per_trial;        /* faults planted together in each */
	unsigned rounds;           /* of the workload at most, while faults wait to be activated */
	int types[SWIFI_COUNT];
	unsigned ntypes;
	uint64_t seed;
	uint64_t ops;
	unsigned timeout_ms;
	enum isolde_notify_mode notify;
	struct swifi_code *code;
	char space[PATH_MAX + 160]; /* the fault space, in words */
	bool libraries;            /* a library's code is in it */
	const char *function;      /* faults only in this function (--function) */
	struct tally tally[SWIFI_COUNT], total;
	FILE *trials_out;          /* per-trial lines for the JSON, failures only */
	size_t notable;
};

/*
 * Libraries whose own code is in a driver's fault space, beside the
 * driver's: the functions they export under a prefix. librbd does a
 * blk-rbd request's work on threads of its own; Debian's librbd is
 * stripped, so its exported C API (the calls blk-rbd makes, and the code
 * they run before librbd's internals) is the part of it that has names.
 */
static const struct {
	const char *driver, *soname, *prefix, *what;
} fault_libraries[] = {
	{ "blk-rbd", "librbd.so.1", "rbd_", "librbd's C API" },
};

/* The file the dynamic loader maps for soname into binary, as ldd finds
 * it: the loader itself is asked (LD_TRACE_LOADED_OBJECTS), not a guess of
 * its search path. */
static int find_library(const char *binary, const char *soname, char *path, size_t len, char *err, size_t errlen)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		char *const argv[] = { (char *)binary, NULL };
		char *const envp[] = { "LD_TRACE_LOADED_OBJECTS=1", NULL };
		execve(binary, argv, envp);
		_exit(127);
	}
	close(fds[1]);
	FILE *f = pid > 0 ? fdopen(fds[0], "re") : NULL;
	char line[PATH_MAX + 128];
	int rc = -1;
	while (f && fgets(line, sizeof line, f)) {
		char name[256], where[PATH_MAX];
		if (rc != 0 && sscanf(line, " %255s => %4095s", name, where) == 2 && strcmp(name, soname) == 0 &&
		    realpath(where, path) && strlen(path) < len)
			rc = 0;
	}
	if (f)
		fclose(f);
	else
		close(fds[0]);
	if (pid > 0)
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
	if (rc != 0)
		snprintf(err, errlen, "%.*s: the dynamic loader does not find %s for it", (int)(errlen / 2), binary, soname);
	return rc;
}

/* The driver's code, and that of the libraries in its fault space. */
static int load_fault_space(struct campaign *c, const char *binary, char *err, size_t errlen)
{
	const char *base = strrchr(c->driver, '/');
	base = base ? base + 1 : c->driver;
	c->code = swifi_load(binary, err, errlen);
	if (!c->code)
		return -1;
	size_t used = (size_t)snprintf(c->space, sizeof c->space, "%zu instructions of its own code",
				       swifi_object_insn_count(c->code, 0));
	unsigned object = 0;
	for (size_t i = 0; i < sizeof fault_libraries / sizeof fault_libraries[0]; i++) {
		char library[PATH_MAX];
		if (strcmp(base, fault_libraries[i].driver) != 0)
			continue;
		if (find_library(binary, fault_libraries[i].soname, library, sizeof library, err, errlen) != 0 ||
		    swifi_add_library(c->code, library, fault_libraries[i].prefix, err, errlen) != 0)
			return -1;
		object++; /* objects are numbered in the order added */
		c->libraries = true;
		if (used < sizeof c->space)
			used += (size_t)snprintf(c->space + used, sizeof c->space - used, " and %zu of %s (%s, %s*)",
						 swifi_object_insn_count(c->code, object), fault_libraries[i].what,
						 library, fault_libraries[i].prefix);
	}
	return 0;
}

/* ---- one trial, in a child process ---- */

struct trial_ctx {
	struct campaign *c;
	struct trial *t;
	struct tracer tracer;
	uint64_t rng;
};

static void plant_in(pid_t driver, void *arg)
{
	struct trial_ctx *x = arg;
	struct tracer *tr = &x->tracer;

	memset(tr, 0, sizeof *tr);
	tr->pid = driver;
	tr->fault = x->t->type;
	tr->code = x->c->code;
	tr->heap_seed = x->rng ^ 0x5bd1e995u;
	/* Distinct instructions: a few more draws than faults, for the
	 * repeats of a small fault space. */
	for (unsigned draw = 0; tr->nfaults < x->c->per_trial && draw < 4 * x->c->per_trial + 8; draw++) {
		struct tracer_fault *f = &tr->faults[tr->nfaults];
		char what[sizeof x->t->target];
		if (swifi_pick(x->c->code, tr->fault, x->c->function, &x->rng, &f->insn, f->mutated, what, sizeof what) != 0)
			break;
		bool again = false;
		for (unsigned k = 0; k < tr->nfaults; k++)
			again |= tr->faults[k].insn.addr == f->insn.addr;
		if (again)
			continue;
		if (tr->nfaults++ == 0)
			snprintf(x->t->target, sizeof x->t->target, "%s", what);
	}
	if (!tr->nfaults) {
		snprintf(x->t->error, sizeof x->t->error, "no instruction fits this fault type");
		return;
	}
	uint64_t bases[SWIFI_MAX_OBJECTS];
	if (swifi_load_bases(x->c->code, driver, bases) != 0) {
		snprintf(x->t->error, sizeof x->t->error, "driver %d: its binary or a library of its fault space "
			 "is not in /proc/%d/maps", (int)driver, (int)driver);
		tr->nfaults = 0;
		return;
	}
	for (unsigned k = 0; k < tr->nfaults; k++)
		tr->faults[k].insn.addr += bases[tr->faults[k].insn.object];
	if (tracer_start(tr) != 0)
		snprintf(x->t->error, sizeof x->t->error, "cannot start the tracer");
}

static void plant(struct isolde_blk *dev, void *arg)
{
	plant_in(isolde_blk_driver_pid(dev), arg);
}

/* Another round of the workload: faults wait to be activated. */
static bool faults_waiting(void *arg)
{
	struct trial_ctx *x = arg;
	return tracer_waiting(&x->tracer);
}

/* After the workload: the tracer's verdict on the fault; false if it was
 * never planted (t->outcome set). */
static bool fault_planted(struct trial_ctx *x)
{
	struct trial *t = x->t;

	tracer_finish(&x->tracer);
	size_t used = strlen(t->target);
	if (t->type == SWIFI_HEAP && x->tracer.heap_what[0])
		used += (size_t)snprintf(t->target + used, sizeof t->target - used, " (%s)", x->tracer.heap_what);
	if (x->tracer.nfaults > 1 && used < sizeof t->target)
		snprintf(t->target + used, sizeof t->target - used, ", and %u more", x->tracer.nfaults - 1);
	t->activated = x->tracer.activated > 0;
	t->faults = x->tracer.nfaults;
	t->faults_activated = x->tracer.activated;
	for (unsigned k = 0; k < x->tracer.nfaults; k++) {
		const struct tracer_fault *f = &x->tracer.faults[k];
		t->activated_in_libraries += f->activated && f->insn.object != 0;
		t->activated_off_main += f->activated && f->by != x->tracer.pid;
	}
	if (x->tracer.applied)
		return true;
	t->outcome = OUT_NOT_INJECTED;
	if (!t->error[0])
		snprintf(t->error, sizeof t->error, "%s", x->tracer.error);
	return false;
}

static void run_net_trial(struct campaign *c, uint64_t i, int out_fd)
{
	struct trial t = { .type = (enum swifi_fault)c->types[i % c->ntypes] };
	struct trial_ctx x = { .c = c, .t = &t, .rng = c->seed * 1000003u + i + 1 };
	struct net_verify_options o = { .frames = c->ops, .seed = c->seed + i, .opened = plant_in,
					.opened_ctx = &x, .again = faults_waiting, .max_rounds = c->rounds };
	struct net_verify_result r;
	char err[512];

	isolde_net_config_default(&o.cfg);
	o.cfg.driver = c->driver;
	o.cfg.notify = c->notify;
	o.cfg.timeout_ms = c->timeout_ms;
	if (net_verify_run(&o, &r, err, sizeof err) != 0) {
		snprintf(t.error, sizeof t.error, "%s", err);
		t.outcome = OUT_NOT_INJECTED;
	} else if (fault_planted(&x)) {
		t.restarts = r.supervisor.restarts;
		memcpy(t.by_failure, r.supervisor.by_failure, sizeof t.by_failure);
		t.frames.sent = r.tx.sent + r.rx.sent;
		t.frames.lost = r.tx.sent - r.tx.delivered + r.rx.sent - r.rx.delivered;
		t.frames.duplicated = r.tx.duplicates + r.rx.duplicates;
		t.frames.caught = r.tx.caught + r.rx.caught;
		memcpy(t.denials, r.stats.denials_by_class, sizeof t.denials);
		t.rounds = r.rounds;
		t.mismatches = r.tx.undetected + r.rx.undetected;
		if (t.mismatches) {
			t.outcome = OUT_CORRUPT;
			snprintf(t.error, sizeof t.error, "%llu frame(s) passed the end-to-end hash and differ from "
				 "what was sent", (unsigned long long)t.mismatches);
		} else if (r.error[0]) {
			t.outcome = OUT_IO_ERROR;
			snprintf(t.error, sizeof t.error, "%s", r.error);
		} else if (r.supervisor.restarts) {
			t.outcome = OUT_RECOVERED;
		} else {
			t.outcome = t.activated ? OUT_NO_FAILURE : OUT_NOT_ACTIVATED;
		}
	}
	(void)!write(out_fd, &t, sizeof t);
}

static void run_trial(struct campaign *c, uint64_t i, int out_fd)
{
	struct trial t = { .type = (enum swifi_fault)c->types[i % c->ntypes] };
	struct trial_ctx x = { .c = c, .t = &t, .rng = c->seed * 1000003u + i + 1 };
	struct verify_options o = { .ops = c->ops, .bs = 4096, .seed = c->seed + i, .opened = plant,
				    .opened_ctx = &x, .again = faults_waiting, .max_rounds = c->rounds };
	struct verify_result r;
	char err[512];

	isolde_blk_config_default(&o.cfg);
	o.cfg.image = c->image;
	o.cfg.driver = c->driver;
	o.cfg.notify = c->notify;
	o.cfg.queue_depth = 8;
	o.cfg.timeout_ms = c->timeout_ms;
	o.cfg.shield = true;
	if (verify_run(&o, &r, err, sizeof err) != 0) {
		snprintf(t.error, sizeof t.error, "%s", err);
		t.outcome = OUT_NOT_INJECTED;
	} else if (fault_planted(&x)) {
		t.restarts = r.supervisor.restarts;
		memcpy(t.by_failure, r.supervisor.by_failure, sizeof t.by_failure);
		t.errors = r.errors;
		t.mismatches = r.mismatches;
		memcpy(t.denials, r.stats.denials_by_class, sizeof t.denials);
		t.rounds = r.rounds;
		if (r.mismatches) {
			t.outcome = OUT_CORRUPT;
		} else if (r.errors || r.error[0]) {
			t.outcome = OUT_IO_ERROR;
			if (r.error[0])
				snprintf(t.error, sizeof t.error, "the device failed: %s", r.error);
			else if (r.stats.shield_mismatches)
				snprintf(t.error, sizeof t.error, "the integrity shield refused %llu block(s) that "
					 "still differed from what was written after restarts: the faulty driver "
					 "acknowledged a write it did not do (or did elsewhere); EIO instead of stale data",
					 (unsigned long long)r.stats.shield_mismatches);
			else
				snprintf(t.error, sizeof t.error, "%llu request(s) failed with an error status a "
					 "fresh driver confirmed", (unsigned long long)r.errors);
		} else if (r.supervisor.restarts) {
			t.outcome = OUT_RECOVERED;
		} else {
			t.outcome = t.activated ? OUT_NO_FAILURE : OUT_NOT_ACTIVATED;
		}
	}
	(void)!write(out_fd, &t, sizeof t);
}

/* ---- the campaign, in the parent ---- */

static void record(struct campaign *c, const struct trial *t)
{
	struct tally *k[2] = { &c->tally[t->type], &c->total };

	for (int j = 0; j < 2; j++) {
		k[j]->outcomes[t->outcome]++;
		if (t->outcome == OUT_NOT_INJECTED)
			continue;
		k[j]->injected++;
		k[j]->faults += t->faults;
		k[j]->faults_activated += t->faults_activated;
		k[j]->activated_in_libraries += t->activated_in_libraries;
		k[j]->activated_off_main += t->activated_off_main;
		k[j]->rounds += t->rounds;
		for (int d = 0; d < ISOLDE_DENIAL_CLASSES; d++)
			k[j]->denials[d] += t->denials[d];
		if (t->activated)
			k[j]->activated++;
		for (int f = 0; f < ISOLDE_FAIL_COUNT; f++)
			k[j]->by_failure[f] += t->by_failure[f];
		if (t->by_failure[ISOLDE_FAIL_CORRUPTION])
			k[j]->shield_caught++;
		k[j]->frames.sent += t->frames.sent;
		k[j]->frames.lost += t->frames.lost;
		k[j]->frames.duplicated += t->frames.duplicated;
		k[j]->frames.caught += t->frames.caught;
	}
	/* Keep the trials a reader has to be able to explain. */
	if (c->trials_out && (t->outcome == OUT_IO_ERROR || t->outcome == OUT_CORRUPT ||
			      t->outcome == OUT_FRONT_CRASH || t->outcome == OUT_NOT_INJECTED)) {
		fprintf(c->trials_out, "%s\n  {\"type\": \"%s\", \"outcome\": \"%s\", \"target\": ",
			c->notable++ ? "," : "", swifi_fault_name(t->type), outcome_names[t->outcome]);
		json_write_string(c->trials_out, t->target);
		fprintf(c->trials_out, ", \"error\": ");
		json_write_string(c->trials_out, t->error);
		fputs("}", c->trials_out);
	}
}

static int trial_in_child(struct campaign *c, uint64_t i, struct trial *t)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) != 0)
		return -1;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(p[0]);
		/* The driver's log lines are not the campaign's output. */
		if (!getenv("ISOLDE_INJECT_VERBOSE"))
			(void)!freopen("/dev/null", "w", stderr);
		if (c->network)
			run_net_trial(c, i, p[1]);
		else
			run_trial(c, i, p[1]);
		_exit(0);
	}
	close(p[1]);
	ssize_t n = read(p[0], t, sizeof *t);
	close(p[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	if (n != (ssize_t)sizeof *t || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		memset(t, 0, sizeof *t);
		t->type = (enum swifi_fault)c->types[i % c->ntypes];
		t->outcome = OUT_FRONT_CRASH;
		snprintf(t->error, sizeof t->error, "trial process %s %d", WIFSIGNALED(status) ? "killed by signal"
			 : "exited with", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	}
	return 0;
}

static void write_tally_json(FILE *f, const struct tally *k)
{
	fprintf(f, "{\"injected\": %llu, \"activated\": %llu, \"faults\": %llu, \"faults_activated\": %llu, "
		"\"faults_activated_in_libraries\": %llu, \"faults_activated_off_main_thread\": %llu, \"rounds\": %llu",
		(unsigned long long)k->injected, (unsigned long long)k->activated, (unsigned long long)k->faults,
		(unsigned long long)k->faults_activated, (unsigned long long)k->activated_in_libraries,
		(unsigned long long)k->activated_off_main, (unsigned long long)k->rounds);
	for (int o = 0; o < OUT_COUNT; o++)
		fprintf(f, ", \"%s\": %llu", outcome_names[o], (unsigned long long)k->outcomes[o]);
	fputs(", \"denials\": {", f);
	for (int d = 0; d < ISOLDE_DENIAL_CLASSES; d++)
		fprintf(f, "%s\"%s\": %llu", d ? ", " : "", isolde_denial_class_name((enum isolde_denial_class)d),
			(unsigned long long)k->denials[d]);
	fputs("}", f);
	fprintf(f, ", \"shield_caught\": %llu, \"frames\": {\"sent\": %llu, \"lost\": %llu, \"duplicated\": %llu, "
		"\"caught_by_hash\": %llu}, \"failures\": {", (unsigned long long)k->shield_caught,
		(unsigned long long)k->frames.sent, (unsigned long long)k->frames.lost,
		(unsigned long long)k->frames.duplicated, (unsigned long long)k->frames.caught);
	for (int j = 0; j < ISOLDE_FAIL_COUNT; j++)
		fprintf(f, "%s\"%s\": %llu", j ? ", " : "", isolde_failure_name((enum isolde_failure)j),
			(unsigned long long)k->by_failure[j]);
	fputs("}}", f);
}

static void write_tally_row(FILE *f, const char *name, const struct tally *k)
{
	uint64_t detected = 0;
	for (int j = 0; j < ISOLDE_FAIL_COUNT; j++)
		detected += k->by_failure[j];
	fprintf(f, "| %s | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu | %llu |\n",
		name, (unsigned long long)k->injected, (unsigned long long)k->faults,
		(unsigned long long)k->faults_activated, (unsigned long long)k->activated,
		(unsigned long long)k->outcomes[OUT_NOT_ACTIVATED], (unsigned long long)k->outcomes[OUT_NO_FAILURE],
		(unsigned long long)detected, (unsigned long long)k->by_failure[ISOLDE_FAIL_CPU],
		(unsigned long long)k->by_failure[ISOLDE_FAIL_MMU],
		(unsigned long long)(k->by_failure[ISOLDE_FAIL_PANIC] + k->by_failure[ISOLDE_FAIL_POLICY] +
				     k->by_failure[ISOLDE_FAIL_KILLED] + k->by_failure[ISOLDE_FAIL_START]),
		(unsigned long long)k->by_failure[ISOLDE_FAIL_HANG],
		(unsigned long long)k->by_failure[ISOLDE_FAIL_PROTOCOL],
		(unsigned long long)k->by_failure[ISOLDE_FAIL_CORRUPTION],
		(unsigned long long)k->by_failure[ISOLDE_FAIL_ERROR_STATUS],
		(unsigned long long)k->outcomes[OUT_RECOVERED], (unsigned long long)k->outcomes[OUT_IO_ERROR],
		(unsigned long long)(k->outcomes[OUT_CORRUPT] + k->outcomes[OUT_FRONT_CRASH]));
}

static int write_report(const struct campaign *c, const char *dir, const char *command, double seconds,
			const char *notable_errors)
{
	char path[PATH_MAX];

	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "isolde inject: cannot create %s: %s\n", dir, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof path, "%s/campaign.md", dir);
	FILE *f = fopen(path, "we");
	if (!f) {
		fprintf(stderr, "isolde inject: cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	fprintf(f, "# Fault-injection campaign\n\n%llu faults in %llu trials (%u per trial, of one type) injected "
		"into the running %s driver, %s (%llu trials could not be planted), notify mode %s, %llu %s per "
		"round%s, up to %u round(s) a trial while one of its faults waits to be activated; %.0f s.\n\n"
		"Reproduce with:\n\n```\n%s\n```\n\n",
		(unsigned long long)c->total.faults, (unsigned long long)c->total.injected, c->per_trial, c->driver,
		c->space, (unsigned long long)c->total.outcomes[OUT_NOT_INJECTED], isolde_notify_mode_name(c->notify),
		(unsigned long long)c->ops,
		c->network ? "frames each way through the driver and its TAP" :
		"verified writes and their read-back",
		c->network ? ", each checked end to end against what was sent (a 64-bit hash in the frame, as "
		"a transport's checksum; a frame that passes it and differs counts as corrupt)" :
		" at QD8 with the integrity shield on", c->rounds, seconds, command);
	uint64_t detected = 0;
	for (int j = 0; j < ISOLDE_FAIL_COUNT; j++)
		detected += c->total.by_failure[j];
	uint64_t failed_trials = c->total.outcomes[OUT_RECOVERED] + c->total.outcomes[OUT_IO_ERROR];
	fprintf(f, "**Corrupt data returned to the application: %llu. Front-end crashes: %llu.** "
		"Trials with a detected failure: %llu, of which %llu (%.2f%%) recovered transparently and "
		"%llu %s (explained below).\n\n",
		(unsigned long long)c->total.outcomes[OUT_CORRUPT],
		(unsigned long long)c->total.outcomes[OUT_FRONT_CRASH], (unsigned long long)failed_trials,
		(unsigned long long)c->total.outcomes[OUT_RECOVERED],
		failed_trials ? 100.0 * (double)c->total.outcomes[OUT_RECOVERED] / (double)failed_trials : 100.0,
		(unsigned long long)c->total.outcomes[OUT_IO_ERROR],
		c->network ? "left the device failed or dead" : "returned an I/O error");
	if (c->libraries || c->total.activated_off_main)
		fprintf(f, "Of the %llu faults activated, %llu were in a library's code and %llu were reached by "
			"a thread other than the driver's first (the tracer follows them all).\n\n",
			(unsigned long long)c->total.faults_activated, (unsigned long long)c->total.activated_in_libraries,
			(unsigned long long)c->total.activated_off_main);
	if (c->network)
		fprintf(f, "Frames: %llu sent (both ways), %llu lost, %llu duplicated, %llu damaged by the driver "
			"and caught by the end-to-end hash: what a network may do, and a transport repairs. "
			"In the table, \"I/O error\" is a trial whose device failed or went dead (no round "
			"of frames arrived whole after the fault).\n\n",
			(unsigned long long)c->total.frames.sent, (unsigned long long)c->total.frames.lost,
			(unsigned long long)c->total.frames.duplicated, (unsigned long long)c->total.frames.caught);
	fputs("Columns: trials with their faults planted; faults planted; faults activated (a code fault "
	      "when its instruction first ran, a heap fault when its instruction read the driver's own "
	      "data and the bit was flipped as it did); trials with a fault activated; not activated and no "
	      "failure; activated without failure; "
	      "failures detected, counted as driver restarts (a trial can fail more than once) and by "
	      "class: CPU exception, MMU exception, panic/exit/policy kill, hang, protocol violation, "
	      "silent corruption caught by the integrity shield, error status re-checked on a fresh "
	      "driver; trials recovered transparently; trials that returned an I/O error; trials with "
	      "corrupt data returned or a front-end crash (must be 0).\n\n"
	      "| fault type | trials | faults | activated | trials activated | not activated | no failure | "
	      "restarts | CPU | MMU | panic | hang | protocol | shield | error status | recovered | I/O error | "
	      "corrupt/crash |\n"
	      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n", f);
	for (unsigned i = 0; i < c->ntypes; i++)
		write_tally_row(f, swifi_fault_name((enum swifi_fault)c->types[i]), &c->tally[c->types[i]]);
	write_tally_row(f, "**total**", &c->total);
	fputs("\nSystem calls the driver's policy refused (seccomp, answered EPERM; a connect outside the "
	      "policy, EACCES), by what they would have reached:\n\n| fault type |", f);
	for (int d = 0; d < ISOLDE_DENIAL_CLASSES; d++)
		fprintf(f, " %s |", isolde_denial_class_name((enum isolde_denial_class)d));
	fputs(" total |\n|---|", f);
	for (int d = 0; d <= ISOLDE_DENIAL_CLASSES; d++)
		fputs("---|", f);
	fputc('\n', f);
	for (unsigned i = 0; i <= c->ntypes; i++) {
		const struct tally *k = i < c->ntypes ? &c->tally[c->types[i]] : &c->total;
		uint64_t sum = 0;
		fprintf(f, "| %s |", i < c->ntypes ? swifi_fault_name((enum swifi_fault)c->types[i]) : "**total**");
		for (int d = 0; d < ISOLDE_DENIAL_CLASSES; d++) {
			fprintf(f, " %llu |", (unsigned long long)k->denials[d]);
			sum += k->denials[d];
		}
		fprintf(f, " %llu |\n", (unsigned long long)sum);
	}
	(void)detected;
	if (notable_errors && *notable_errors)
		fprintf(f, "\n## Trials that ended in %s\n\n%s",
			c->network ? "a failed or dead device" : "an I/O error", notable_errors);
	fclose(f);
	return 0;
}

static int run_inject_command(int argc, char **argv);

const struct cli_command inject_command = {
	.name = "inject",
	.summary = "fault-injection campaign: SWIFI faults into a running driver, recovery checked",
	.usage =
	"usage: isolde inject [--image PATH] --faults N | --trials-per-type T [OPTIONS]\n"
	"\n"
	"For each of N trials: start a driver domain, attach to the driver with\n"
	"ptrace, mutate one instruction of the driver's own code (or one bit of its\n"
	"data) by the fault type's rule, and run a verified workload through it: a\n"
	"block driver's writes and read-back with the integrity shield on, or a\n"
	"network driver's (net-*) frames both ways through its TAP in a namespace\n"
	"of the trial's own, each checked end to end. Records whether the fault was\n"
	"activated, how the failure was detected, whether it was recovered, and\n"
	"whether any error or corrupt data reached the application. Exits 0 only if\n"
	"no corrupt data was returned and the front end never crashed. THIS\n"
	"OVERWRITES THE IMAGE (a block driver's).\n"
	"\n"
	"  --image PATH       image (required for a block driver; a few MiB is plenty)\n"
	"  --faults N         number of trials (or --trials-per-type T: T of each type)\n"
	"  --faults-per-trial N  faults of the trial's type planted together, at distinct\n"
	"                     instructions (1 to 128, default 1)\n"
	"  --types LIST|all   of source-register, destination-register, pointer, interface,\n"
	"                     branch, bit-flip, nop, heap (default all, taken in turn)\n"
	"  --seed S           random seed (default 1)\n"
	"  --notify MODE      event, spin or hybrid (default hybrid)\n"
	"  --ops N            verified writes (network: frames each way) per round (default 100)\n"
	"  --rounds N         rounds of the workload at most, another while a planted fault\n"
	"                     waits to be activated in the driver it was planted in (default 1)\n"
	"  --timeout-ms MS    hang detection per trial (default 300)\n"
	"  --driver NAME      driver to inject into (default blk-file; net-tap: as root)\n"
	"  --json FILE        write the campaign's results as JSON\n"
	"  --report DIR       write DIR/campaign.md\n"
	"  --function NAME    plant faults only in this function of the fault space\n"
	"  -h, --help         this text\n",
	.run = run_inject_command,
};

enum { OPT_TYPES = 256, OPT_JSON, OPT_REPORT, OPT_TIMEOUT, OPT_PER_TRIAL, OPT_PER_TYPE, OPT_ROUNDS, OPT_FUNCTION };

static int run_inject_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "image", required_argument, NULL, 'i' },
		{ "faults", required_argument, NULL, 'f' },
		{ "faults-per-trial", required_argument, NULL, OPT_PER_TRIAL },
		{ "trials-per-type", required_argument, NULL, OPT_PER_TYPE },
		{ "rounds", required_argument, NULL, OPT_ROUNDS },
		{ "types", required_argument, NULL, OPT_TYPES },
		{ "seed", required_argument, NULL, 's' },
		{ "notify", required_argument, NULL, 'n' },
		{ "ops", required_argument, NULL, 'o' },
		{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
		{ "driver", required_argument, NULL, 'd' },
		{ "json", required_argument, NULL, OPT_JSON },
		{ "report", required_argument, NULL, OPT_REPORT },
		{ "function", required_argument, NULL, OPT_FUNCTION },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &inject_command;
	struct campaign c = { .driver = "blk-file", .seed = 1, .ops = 100, .timeout_ms = 300, .per_trial = 1,
			      .rounds = 1,
			      .notify = ISOLDE_NOTIFY_HYBRID };
	const char *json = NULL, *report = NULL;
	uint64_t v, per_type = 0;
	char err[512];
	int opt;

	for (int i = 0; i < SWIFI_COUNT; i++)
		c.types[c.ntypes++] = i;
	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'i': c.image = optarg; break;
		case 'f':
			if (!cli_parse_u64(cmd, "--faults", optarg, 1, 10000000, &c.faults))
				return EXIT_USAGE;
			break;
		case OPT_TYPES:
			if (strcmp(optarg, "all") != 0) {
				char copy[512], *save = NULL;
				snprintf(copy, sizeof copy, "%s", optarg);
				c.ntypes = 0;
				for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
					enum swifi_fault f;
					if (swifi_fault_parse(tok, &f))
						return cli_usage_error(cmd, "--types: unknown fault type '%s'", tok);
					if (c.ntypes == SWIFI_COUNT)
						return cli_usage_error(cmd, "--types: a type is given twice");
					c.types[c.ntypes++] = (int)f;
				}
				if (c.ntypes == 0)
					return cli_usage_error(cmd, "--types: empty list");
			}
			break;
		case 's':
			if (!cli_parse_u64(cmd, "--seed", optarg, 0, UINT64_MAX, &c.seed))
				return EXIT_USAGE;
			break;
		case 'n':
			if (isolde_notify_mode_parse(optarg, &c.notify))
				return cli_usage_error(cmd, "--notify: '%s' is not event, spin or hybrid", optarg);
			break;
		case 'o':
			if (!cli_parse_u64(cmd, "--ops", optarg, 1, 1000000, &c.ops))
				return EXIT_USAGE;
			break;
		case OPT_PER_TRIAL:
			if (!cli_parse_u64(cmd, "--faults-per-trial", optarg, 1, TRACER_MAX_FAULTS, &v))
				return EXIT_USAGE;
			c.per_trial = (unsigned)v;
			break;
		case OPT_ROUNDS:
			if (!cli_parse_u64(cmd, "--rounds", optarg, 1, 1000, &v))
				return EXIT_USAGE;
			c.rounds = (unsigned)v;
			break;
		case OPT_PER_TYPE:
			if (!cli_parse_u64(cmd, "--trials-per-type", optarg, 1, 1000000, &per_type))
				return EXIT_USAGE;
			break;
		case OPT_TIMEOUT:
			if (!cli_parse_u64(cmd, "--timeout-ms", optarg, 10, 600000, &v))
				return EXIT_USAGE;
			c.timeout_ms = (unsigned)v;
			break;
		case 'd': c.driver = optarg; break;
		case OPT_JSON: json = optarg; break;
		case OPT_REPORT: report = optarg; break;
		case OPT_FUNCTION: c.function = optarg; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	const char *base = strrchr(c.driver, '/');
	c.network = strncmp(base ? base + 1 : c.driver, "net-", 4) == 0;
	if (c.network && c.image)
		return cli_usage_error(cmd, "--image: a network driver (%s) has no image", c.driver);
	if (!c.network && !c.image)
		return cli_usage_error(cmd, "--image is required");
	if (c.faults && per_type)
		return cli_usage_error(cmd, "--faults and --trials-per-type both give the number of trials: "
				       "give one");
	if (per_type)
		c.faults = per_type * c.ntypes;
	if (c.faults == 0)
		return cli_usage_error(cmd, "--faults (or --trials-per-type) is required");

	char binary[PATH_MAX];
	if (isolde_driver_resolve(c.driver, binary, sizeof binary, err, sizeof err)) {
		fprintf(stderr, "isolde inject: %s\n", err);
		return 1;
	}
	if (load_fault_space(&c, binary, err, sizeof err) != 0) {
		fprintf(stderr, "isolde inject: %s\n", err);
		return 1;
	}
	if (c.function && !swifi_has_function(c.code, c.function)) {
		fprintf(stderr, "isolde inject: --function: %s is not a function of %s's fault space (%s)\n",
			c.function, c.driver, c.space);
		return EXIT_USAGE;
	}
	if (c.function) {
		size_t used = strlen(c.space);
		snprintf(c.space + used, sizeof c.space - used, ", faults only in %s", c.function);
	}
	char *notable = NULL, *errors_md = NULL;
	size_t notable_len = 0, errors_len = 0;
	c.trials_out = open_memstream(&notable, &notable_len);
	FILE *errors_out = open_memstream(&errors_md, &errors_len);
	uint64_t start = isolde_now_ns(), last_progress = start;

	fprintf(stderr, "isolde inject: %llu trials into %s (%s)\n", (unsigned long long)c.faults, binary, c.space);
	for (uint64_t i = 0; i < c.faults; i++) {
		struct trial t;
		if (trial_in_child(&c, i, &t) != 0) {
			fprintf(stderr, "isolde inject: cannot run trial %llu: %s\n", (unsigned long long)i,
				strerror(errno));
			return 1;
		}
		record(&c, &t);
		if (t.outcome == OUT_IO_ERROR && errors_out)
			fprintf(errors_out, "- %s at `%s`: %s\n", swifi_fault_name(t.type), t.target, t.error);
		uint64_t now = isolde_now_ns();
		if (now - last_progress > 2000000000ull || i + 1 == c.faults) {
			double el = (double)(now - start) / 1e9;
			fprintf(stderr, "isolde inject: %llu/%llu trials, %llu recovered, %llu I/O errors, "
				"%llu corrupt, %llu crashes (%.0f s, about %.0f s left)\n",
				(unsigned long long)(i + 1), (unsigned long long)c.faults,
				(unsigned long long)c.total.outcomes[OUT_RECOVERED],
				(unsigned long long)c.total.outcomes[OUT_IO_ERROR],
				(unsigned long long)c.total.outcomes[OUT_CORRUPT],
				(unsigned long long)c.total.outcomes[OUT_FRONT_CRASH], el,
				el / (double)(i + 1) * (double)(c.faults - i - 1));
			last_progress = now;
		}
	}
	fclose(c.trials_out);
	if (errors_out)
		fclose(errors_out);
	double seconds = (double)(isolde_now_ns() - start) / 1e9;

	char command[1024];
	size_t n = 0;
	for (int i = 0; i < argc && n < sizeof command - 2; i++)
		n += (size_t)snprintf(command + n, sizeof command - n, "%s%s", i ? " " : "isolde ", argv[i]);
	int rc = 0;
	if (json) {
		FILE *f = strcmp(json, "-") == 0 ? stdout : fopen(json, "we");
		if (!f) {
			fprintf(stderr, "isolde inject: cannot write %s: %s\n", json, strerror(errno));
			rc = 1;
		} else {
			fprintf(f, "{\"campaign\": {\"faults\": %llu, \"faults_per_trial\": %u, \"rounds\": %u, "
				"\"seed\": %llu, \"notify\": \"%s\", \"ops\": %llu, \"driver\": ",
				(unsigned long long)c.faults, c.per_trial, c.rounds, (unsigned long long)c.seed,
				isolde_notify_mode_name(c.notify), (unsigned long long)c.ops);
			json_write_string(f, c.driver);
			fprintf(f, ", \"seconds\": %.1f, \"command\": ", seconds);
			json_write_string(f, command);
			fprintf(f, "},\n \"totals\": ");
			write_tally_json(f, &c.total);
			fprintf(f, ",\n \"types\": {");
			for (unsigned i = 0; i < c.ntypes; i++) {
				fprintf(f, "%s\n  \"%s\": ", i ? "," : "", swifi_fault_name((enum swifi_fault)c.types[i]));
				write_tally_json(f, &c.tally[c.types[i]]);
			}
			fprintf(f, "\n },\n \"notable_trials\": [%s\n ]}\n", notable ? notable : "");
			if (f != stdout)
				fclose(f);
		}
	}
	if (report && write_report(&c, report, command, seconds, errors_md))
		rc = 1;
	printf("%llu faults in %llu trials injected, %llu trials activated: %llu not activated, %llu no failure, "
	       "%llu recovered, %llu I/O errors, %llu corrupt data returned, %llu front-end crashes, %llu not "
	       "injected\n", (unsigned long long)c.total.faults,
	       (unsigned long long)c.total.injected, (unsigned long long)c.total.activated,
	       (unsigned long long)c.total.outcomes[OUT_NOT_ACTIVATED],
	       (unsigned long long)c.total.outcomes[OUT_NO_FAILURE],
	       (unsigned long long)c.total.outcomes[OUT_RECOVERED],
	       (unsigned long long)c.total.outcomes[OUT_IO_ERROR],
	       (unsigned long long)c.total.outcomes[OUT_CORRUPT],
	       (unsigned long long)c.total.outcomes[OUT_FRONT_CRASH],
	       (unsigned long long)c.total.outcomes[OUT_NOT_INJECTED]);
	free(notable);
	free(errors_md);
	swifi_free(c.code);
	if (c.total.outcomes[OUT_CORRUPT] || c.total.outcomes[OUT_FRONT_CRASH])
		rc = 1;
	return rc;
}
