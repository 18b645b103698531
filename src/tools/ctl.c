// SPDX-License-Identifier: MIT
/*
 * isolde ctl: one command to a running `isolde serve` through its control
 * socket (docs/CONTROL.md), its answer printed for people, or as JSON.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "control.h"

#define TIMEOUT_MS_MAX 3600000 /* as the server takes it */

static int run_ctl_command(int argc, char **argv);

const struct cli_command ctl_command = {
	.name = "ctl",
	.summary = "add and remove devices and exports of a running isolde serve; events, metrics",
	.usage =
	"usage: isolde ctl --control SOCK COMMAND [ARGS] [--json]\n"
	"\n"
	"Sends one command to the isolde serve listening on SOCK (its --control)\n"
	"and prints its answer. Exit status: 0 done, 1 the server refused or\n"
	"failed (its reason on stderr, with the field it names), 2 a usage error.\n"
	"\n"
	"commands:\n"
	"  device-add SPEC       add a device: NAME,image=PATH[,driver=D][,notify=M]\n"
	"                        [,qd=N][,policy=FILE][,readonly][,direct][,shield]\n"
	"  device-del NAME       remove a device: its requests in flight drain, or fail\n"
	"                        after --timeout-ms MS (default 30000)\n"
	"  export-add SPEC       add an export: KIND:ADDRESS[,device=NAME][,OPTIONS],\n"
	"                        as serve's --export; prints its id\n"
	"  export-del ID         remove an export\n"
	"  query-devices         every device: state, driver, restarts, I/O\n"
	"  query-exports         every export: device, kind, connections\n"
	"  events                print events (driver failed, recovered, ...) as they\n"
	"                        happen, until interrupted or the server stops\n"
	"  metrics               the Prometheus metrics\n"
	"\n"
	"  --control SOCK        the server's control socket (required)\n"
	"  --timeout-ms MS       device-del: how long requests in flight may drain\n"
	"                        (1..3600000)\n"
	"  --json                print the answer's JSON (\"return\"; each event) as it is\n"
	"  -h, --help            this text\n",
	.run = run_ctl_command,
};

enum ctl_arg { NO_ARG, SPEC_ARG, NAME_ARG, ID_ARG };

struct ctl_op {
	const char *name;
	enum ctl_arg arg;
	const char *arg_name;  /* for usage errors */
	void (*print)(json_t *ret, const char *arg);
};

/* ---- human output ---- */

static const char *str(json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s ? s : "?";
}

static long long num(json_t *obj, const char *key)
{
	return (long long)json_integer_value(json_object_get(obj, key));
}

static void print_device_added(json_t *ret, const char *arg)
{
	(void)arg;
	printf("device %s added: driver pid %lld\n", str(ret, "name"), num(ret, "pid"));
}

static void print_device_removed(json_t *ret, const char *arg)
{
	(void)ret;
	printf("device %s removed\n", arg);
}

static void print_export_added(json_t *ret, const char *arg)
{
	(void)arg;
	printf("export %lld added\n", num(ret, "id"));
}

static void print_export_removed(json_t *ret, const char *arg)
{
	(void)ret;
	printf("export %s removed\n", arg);
}

static void print_devices(json_t *ret, const char *arg)
{
	size_t i;
	json_t *d;

	(void)arg;
	printf("%-16s %-8s %-10s %8s %5s %14s %8s %8s %7s\n", "NAME", "STATE", "DRIVER", "PID", "GEN", "SIZE",
	       "RESTARTS", "INFLIGHT", "EXPORTS");
	json_array_foreach(ret, i, d) {
		printf("%-16s %-8s %-10s %8lld %5lld %14lld %8lld %8lld %7zu\n", str(d, "name"), str(d, "state"),
		       str(d, "driver"), num(d, "pid"), num(d, "generation"), num(d, "size"), num(d, "restarts"),
		       num(d, "inflight"), json_array_size(json_object_get(d, "exports")));
		const char *error = json_string_value(json_object_get(d, "error"));
		if (error)
			printf("  error: %s\n", error);
	}
}

static void print_exports(json_t *ret, const char *arg)
{
	size_t i;
	json_t *x;

	(void)arg;
	printf("%4s %-16s %-15s %11s %8s  %s\n", "ID", "DEVICE", "KIND", "CONNECTIONS", "INFLIGHT", "SPEC");
	json_array_foreach(ret, i, x)
		printf("%4lld %-16s %-15s %11lld %8lld  %s\n", num(x, "id"), str(x, "device"), str(x, "kind"),
		       num(x, "connections"), num(x, "inflight"), str(x, "spec"));
}

static void print_metrics(json_t *ret, const char *arg)
{
	(void)arg;
	fputs(json_string_value(ret) ? json_string_value(ret) : "", stdout);
}

/* "12:00:01.250 driver-failed d1 generation=3 reason=killed ..." */
static void print_event(json_t *ev)
{
	const char *key;
	json_t *v;
	char when[32] = "";
	json_t *t = json_object_get(ev, "time");

	if (json_is_number(t)) {
		double secs = json_number_value(t);
		time_t whole = (time_t)secs;
		struct tm tm;
		if (localtime_r(&whole, &tm))
			snprintf(when, sizeof when, "%02d:%02d:%02d.%03d ", tm.tm_hour, tm.tm_min, tm.tm_sec,
				 (int)((secs - (double)whole) * 1000));
	}
	printf("%s%s %s", when, str(ev, "event"), str(ev, "device"));
	json_object_foreach(ev, key, v) {
		if (!strcmp(key, "event") || !strcmp(key, "device") || !strcmp(key, "time"))
			continue;
		char *text = json_is_string(v) && !strpbrk(json_string_value(v), " \t\"=") ?
			     strdup(json_string_value(v)) : json_dumps(v, JSON_ENCODE_ANY);
		printf(" %s=%s", key, text ? text : "?");
		free(text);
	}
	putchar('\n');
}

static const struct ctl_op ops[] = {
	{ "device-add", SPEC_ARG, "SPEC", print_device_added },
	{ "device-del", NAME_ARG, "NAME", print_device_removed },
	{ "export-add", SPEC_ARG, "SPEC", print_export_added },
	{ "export-del", ID_ARG, "ID", print_export_removed },
	{ "query-devices", NO_ARG, NULL, print_devices },
	{ "query-exports", NO_ARG, NULL, print_exports },
	{ "events", NO_ARG, NULL, NULL },
	{ "metrics", NO_ARG, NULL, print_metrics },
};

/* ---- talking to the server ---- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* SIGINT and SIGTERM end the event stream: without SA_RESTART, the read
 * returns EINTR. */
static void catch_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* 0, or 1 after printing the error of reply. */
static int refused(const char *op, json_t *reply)
{
	json_t *error = json_object_get(reply, "error");

	if (!error)
		return 0;
	const char *field = json_string_value(json_object_get(error, "field"));
	const char *cls = json_string_value(json_object_get(error, "class"));
	fprintf(stderr, "isolde ctl: %s: %s", op, str(error, "desc"));
	if (field || cls)
		fprintf(stderr, " (%s%s%s%s)", cls ? cls : "", cls && field ? ", " : "", field ? "field " : "",
			field ? field : "");
	fputc('\n', stderr);
	return 1;
}

static void print_json(json_t *v)
{
	char *text = json_dumps(v, JSON_ENCODE_ANY);

	if (text)
		printf("%s\n", text);
	free(text);
}

static int stream_events(struct control_conn *cc, const char *path, bool json)
{
	char err[512];

	for (;;) {
		json_t *ev = control_recv(cc, err, sizeof err);
		if (!ev) {
			if (interrupted || err[0] == '\0')
				return 0; /* interrupted, or the server closed the stream */
			fprintf(stderr, "isolde ctl: %s: %s\n", path, err);
			return 1;
		}
		if (json)
			print_json(ev);
		else if (json_object_get(ev, "event"))
			print_event(ev);
		fflush(stdout);
		json_decref(ev);
	}
}

static int run_ctl_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &ctl_command;
	const char *path = NULL, *timeout_opt = NULL;
	bool json = false;
	uint64_t timeout_ms = 0, id = 0;
	char err[512];
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 't': timeout_opt = optarg; break;
		case 'j': json = true; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (!path)
		return cli_usage_error(cmd, "--control is required");
	if (optind == argc)
		return cli_usage_error(cmd, "no command given");
	const char *name = argv[optind++];
	const struct ctl_op *op = NULL;
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		if (strcmp(ops[i].name, name) == 0)
			op = &ops[i];
	if (!op)
		return cli_usage_error(cmd, "unknown command '%s'", name);
	const char *arg = optind < argc ? argv[optind++] : NULL;
	if (op->arg != NO_ARG && !arg)
		return cli_usage_error(cmd, "%s needs %s", op->name, op->arg_name);
	if (op->arg == NO_ARG && arg)
		return cli_usage_error(cmd, "%s takes no argument, not '%s'", op->name, arg);
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (timeout_opt && op->arg != NAME_ARG)
		return cli_usage_error(cmd, "--timeout-ms applies to device-del only");
	if (timeout_opt && !cli_parse_u64(cmd, "--timeout-ms", timeout_opt, 1, TIMEOUT_MS_MAX, &timeout_ms))
		return EXIT_USAGE;
	if (op->arg == ID_ARG && !cli_parse_u64(cmd, op->name, arg, 0, UINT32_MAX, &id))
		return EXIT_USAGE;

	json_t *args = NULL;
	if (op->arg != NO_ARG && !(args = json_object()))
		return 1;
	if (op->arg == SPEC_ARG)
		json_object_set_new(args, "spec", json_string(arg));
	else if (op->arg == NAME_ARG)
		json_object_set_new(args, "name", json_string(arg));
	else if (op->arg == ID_ARG)
		json_object_set_new(args, "id", json_integer((json_int_t)id));
	if (timeout_ms)
		json_object_set_new(args, "timeout-ms", json_integer((json_int_t)timeout_ms));

	struct control_conn *cc = control_connect(path, err, sizeof err);
	if (!cc) {
		json_decref(args);
		fprintf(stderr, "isolde ctl: %s\n", err);
		return 1;
	}
	if (!op->print)
		catch_signals();
	json_t *reply = NULL;
	if (control_send(cc, op->name, args, 1, err, sizeof err) == 0)
		reply = control_reply(cc, 1, err, sizeof err);
	int rc = 1;
	if (!reply) {
		if (!(interrupted && !op->print))
			fprintf(stderr, "isolde ctl: %s: %s\n", path, err[0] ? err : "the server closed the connection "
				"without an answer");
		rc = interrupted && !op->print ? 0 : 1;
	} else if (refused(op->name, reply)) {
		rc = 1;
	} else if (!op->print) {
		rc = stream_events(cc, path, json);
	} else {
		if (json)
			print_json(json_object_get(reply, "return"));
		else
			op->print(json_object_get(reply, "return"), arg);
		rc = 0;
	}
	json_decref(reply);
	control_close(cc);
	return rc;
}
