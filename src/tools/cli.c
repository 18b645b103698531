// SPDX-License-Identifier: MIT
#include "cli.h"

#include <stdarg.h>

#include "isolde/units.h"

int cli_usage_error(const struct cli_command *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "isolde %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n\n%s", cmd->usage);
	return EXIT_USAGE;
}

int cli_help(const struct cli_command *cmd)
{
	fputs(cmd->usage, stdout);
	return 0;
}

bool cli_parse_u64(const struct cli_command *cmd, const char *opt, const char *value,
		   uint64_t min, uint64_t max, uint64_t *out)
{
	if (isolde_parse_u64(value, out) || *out < min || *out > max) {
		cli_usage_error(cmd, "%s: '%s' is not a whole number in %llu..%llu", opt, value,
				(unsigned long long)min, (unsigned long long)max);
		return false;
	}
	return true;
}

bool cli_parse_size(const struct cli_command *cmd, const char *opt, const char *value,
		    uint64_t min, uint64_t max, uint64_t *out)
{
	if (isolde_parse_size(value, out) || *out < min || *out > max) {
		cli_usage_error(cmd, "%s: '%s' is not a size in %llu..%llu bytes (suffixes k, M, G)",
				opt, value, (unsigned long long)min, (unsigned long long)max);
		return false;
	}
	return true;
}

