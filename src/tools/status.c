// SPDX-License-Identifier: MIT
/* isolde status: ask a running `isolde serve` how a device's driver is doing. */
#define _GNU_SOURCE
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "control.h"

static int run_status_command(int argc, char **argv);

const struct cli_command status_command = {
	.name = "status",
	.summary = "show a device of a running isolde serve: state, restarts, denials, I/O",
	.usage =
	"usage: isolde status --control SOCK [--device NAME] [--json]\n"
	"\n"
	"Asks the isolde serve listening on SOCK (its --control) for a device's\n"
	"driver state, notify mode, generation, restarts by reason, replayed\n"
	"requests, policy denials, I/O counters and exports. `isolde ctl\n"
	"query-devices` shows every device.\n"
	"\n"
	"  --control SOCK   the server's control socket (required)\n"
	"  --device NAME    the device (default: the first)\n"
	"  --json           print the device's JSON object as the server wrote it\n"
	"  -h, --help       this text\n",
	.run = run_status_command,
};

/* A member of obj (a.b: of a member) as JSON text, "?" if missing. */
static void print_field(const char *label, json_t *obj, const char *key, const char *sub)
{
	json_t *v = json_object_get(obj, key);
	char *text;

	if (sub)
		v = json_object_get(v, sub);
	if (json_is_string(v)) { /* a name or a message: as it is, not quoted */
		printf("%-22s %s\n", label, json_string_value(v));
		return;
	}
	text = v ? json_dumps(v, JSON_ENCODE_ANY) : NULL;
	printf("%-22s %s\n", label, text ? text : "?");
	free(text);
}

static void print_device(json_t *dev)
{
	print_field("device", dev, "name", NULL);
	print_field("driver", dev, "driver", NULL);
	print_field("state", dev, "state", NULL);
	print_field("pid", dev, "pid", NULL);
	print_field("notify", dev, "notify", NULL);
	print_field("generation", dev, "generation", NULL);
	print_field("restarts", dev, "restarts", NULL);
	print_field("restarts by reason", dev, "restarts_by_reason", NULL);
	print_field("replayed requests", dev, "replayed", NULL);
	print_field("policy denials", dev, "denials", NULL);
	print_field("requests done", dev, "io", "requests");
	print_field("request errors", dev, "io", "errors");
	print_field("in flight", dev, "inflight", NULL);
	print_field("error", dev, "error", NULL);
	print_field("exports", dev, "exports", NULL);
}

/* The device named (or the first), or NULL with a message. */
static json_t *pick(json_t *devices, const char *name)
{
	size_t i;
	json_t *dev;

	if (json_array_size(devices) == 0) {
		fprintf(stderr, "isolde status: the server has no device\n");
		return NULL;
	}
	if (!name)
		return json_array_get(devices, 0);
	json_array_foreach(devices, i, dev) {
		const char *n = json_string_value(json_object_get(dev, "name"));
		if (n && strcmp(n, name) == 0)
			return dev;
	}
	fprintf(stderr, "isolde status: there is no device %s (there are:", name);
	json_array_foreach(devices, i, dev) {
		const char *n = json_string_value(json_object_get(dev, "name"));
		fprintf(stderr, " %s", n ? n : "?");
	}
	fprintf(stderr, ")\n");
	return NULL;
}

static int run_status_command(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "control", required_argument, NULL, 'c' },
		{ "device", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct cli_command *cmd = &status_command;
	const char *path = NULL, *name = NULL;
	bool json = false;
	char err[512];
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'd': name = optarg; break;
		case 'j': json = true; break;
		case 'h': return cli_help(cmd);
		case ':': return cli_usage_error(cmd, "%s needs a value", argv[optind - 1]);
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (!path)
		return cli_usage_error(cmd, "--control is required");

	struct control_conn *cc = control_connect(path, err, sizeof err);
	if (!cc) {
		fprintf(stderr, "isolde status: %s\n", err);
		return 1;
	}
	json_t *reply = NULL;
	if (control_send(cc, "query-devices", NULL, 1, err, sizeof err) == 0)
		reply = control_reply(cc, 1, err, sizeof err);
	control_close(cc);
	if (!reply) {
		fprintf(stderr, "isolde status: %s: %s\n", path, err[0] ? err : "the server answered nothing");
		return 1;
	}
	json_t *error = json_object_get(reply, "error");
	if (error) {
		fprintf(stderr, "isolde status: %s: %s\n", path,
			json_string_value(json_object_get(error, "desc")) ?: "the server refused");
		json_decref(reply);
		return 1;
	}
	json_t *dev = pick(json_object_get(reply, "return"), name);
	int rc = 1;
	if (dev && json) {
		char *text = json_dumps(dev, 0);
		if (text)
			printf("%s\n", text);
		rc = text ? 0 : 1;
		free(text);
	} else if (dev) {
		print_device(dev);
		rc = 0;
	}
	json_decref(reply);
	return rc;
}
