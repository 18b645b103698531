/* SPDX-License-Identifier: MIT */
/* What every isolde subcommand shares: usage errors, option values, JSON. */
#ifndef ISOLDE_TOOLS_CLI_H
#define ISOLDE_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "json.h"

#define EXIT_USAGE 2

struct cli_command {
	const char *name;
	const char *summary;
	const char *usage; /* full help text */
	int (*run)(int argc, char **argv);
};

/* Print "isolde NAME: <message>" and the command's usage to stderr; returns EXIT_USAGE. */
int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Print the command's help to stdout; returns 0. */
int cli_help(const struct cli_command *cmd);

/* Parse an option value; on failure print a usage error naming the option. */
bool cli_parse_u64(const struct cli_command *cmd, const char *opt, const char *value,
		   uint64_t min, uint64_t max, uint64_t *out);
bool cli_parse_size(const struct cli_command *cmd, const char *opt, const char *value,
		    uint64_t min, uint64_t max, uint64_t *out);


extern const struct cli_command verify_command;
extern const struct cli_command demo_command;
extern const struct cli_command policy_command;
extern const struct cli_command bench_command;
extern const struct cli_command serve_command;
extern const struct cli_command status_command;
extern const struct cli_command ctl_command;
extern const struct cli_command inject_command;

#endif
