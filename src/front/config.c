// SPDX-License-Identifier: MIT
#include "isolde/blk.h"
#include "error.h"
#include "isolde/units.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void isolde_blk_config_default(struct isolde_blk_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->driver = "blk-file";
	cfg->notify = ISOLDE_NOTIFY_HYBRID;
	cfg->queue_depth = ISOLDE_BLK_DEFAULT_QUEUE_DEPTH;
	cfg->max_io = ISOLDE_BLK_DEFAULT_MAX_IO;
}


#define CONFIG_MAX_DRIVER_ARGS 16

/* What a parse owns: the spec's copy, into which the fields point, and the
 * driver's extra argv. */
struct parsed_config {
	char *driver_args[CONFIG_MAX_DRIVER_ARGS + 1];
	unsigned ndriver_args;
	char copy[];
};

static int parse_field(struct isolde_blk_config *cfg, struct parsed_config *pc, char *key, char *value,
		       char *err, size_t errlen)
{
	uint64_t v;

	if (strcmp(key, "driver_arg") == 0) {
		if (!value || !*value)
			return isolde_fail(err, errlen, "field 'driver_arg' needs a value");
		if (pc->ndriver_args == CONFIG_MAX_DRIVER_ARGS)
			return isolde_fail(err, errlen, "field 'driver_arg': at most %d", CONFIG_MAX_DRIVER_ARGS);
		pc->driver_args[pc->ndriver_args++] = value;
		cfg->driver_args = pc->driver_args;
		return 0;
	}

	if (strcmp(key, "image") == 0 || strcmp(key, "driver") == 0 || strcmp(key, "policy") == 0) {
		if (!value || !*value)
			return isolde_fail(err, errlen, "field '%s' needs a value", key);
		if (key[0] == 'i')
			cfg->image = value;
		else if (key[0] == 'd')
			cfg->driver = value;
		else
			cfg->policy = value;
		return 0;
	}
	if (strcmp(key, "domain") == 0) {
		if (!value || (strcmp(value, "process") != 0 && strcmp(value, "vm") != 0))
			return isolde_fail(err, errlen, "field 'domain': '%s' is not process or vm",
					   value ? value : "");
		cfg->domain = value;
		return 0;
	}
	if (strcmp(key, "notify") == 0) {
		if (!value || isolde_notify_mode_parse(value, &cfg->notify))
			return isolde_fail(err, errlen, "field 'notify': '%s' is not event, spin or hybrid",
				    value ? value : "");
		return 0;
	}
	if (strcmp(key, "qd") == 0) {
		if (!value || isolde_parse_u64(value, &v) || v == 0 || v > ISOLDE_BLK_MAX_QUEUE_DEPTH)
			return isolde_fail(err, errlen, "field 'qd': '%s' is not a queue depth in 1..%u",
				    value ? value : "", ISOLDE_BLK_MAX_QUEUE_DEPTH);
		cfg->queue_depth = (unsigned)v;
		return 0;
	}
	if (strcmp(key, "max_io") == 0) {
		if (!value || isolde_parse_size(value, &v) || v < 4096 || v > (64u << 20) || v % 4096)
			return isolde_fail(err, errlen,
				    "field 'max_io': '%s' is not a multiple of 4k between 4k and 64M",
				    value ? value : "");
		cfg->max_io = (size_t)v;
		return 0;
	}
	if (strcmp(key, "timeout_ms") == 0) {
		if (!value || isolde_parse_u64(value, &v) || v == 0 || v > 3600000)
			return isolde_fail(err, errlen, "field 'timeout_ms': '%s' is not in 1..3600000",
				    value ? value : "");
		cfg->timeout_ms = (unsigned)v;
		return 0;
	}
	if (strcmp(key, "readonly") == 0 || strcmp(key, "direct") == 0 || strcmp(key, "shield") == 0) {
		if (value)
			return isolde_fail(err, errlen, "field '%s' takes no value", key);
		if (key[0] == 'r')
			cfg->readonly = true;
		else if (key[0] == 'd')
			cfg->direct = true;
		else
			cfg->shield = true;
		return 0;
	}
	if (strcmp(key, "uring_without_namespaces") == 0) {
		if (value)
			return isolde_fail(err, errlen, "field '%s' takes no value", key);
		cfg->uring_without_namespaces = true;
		return 0;
	}
	return isolde_fail(err, errlen, "unknown field '%s' (known: image, driver, domain, notify, qd, "
		    "max_io, timeout_ms, policy, readonly, direct, shield, uring_without_namespaces, driver_arg)", key);
}

int isolde_blk_config_parse(struct isolde_blk_config *cfg, const char *spec, char *err, size_t errlen)
{
	size_t len = strlen(spec);
	struct parsed_config *pc = calloc(1, sizeof *pc + len + 1);
	char *copy, *save = NULL;
	bool first = true;

	if (!pc)
		return isolde_fail(err, errlen, "out of memory");
	copy = memcpy(pc->copy, spec, len + 1);
	if (cfg->owned) {
		/* Fields of an earlier parse point into the memory freed here. */
		isolde_blk_config_free(cfg);
		cfg->image = NULL;
		cfg->driver = "blk-file";
		cfg->policy = NULL;
		cfg->driver_args = NULL;
	}
	cfg->owned = pc;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save), first = false) {
		char *eq = strchr(tok, '=');
		if (!eq && first && strcmp(tok, "readonly") && strcmp(tok, "direct") && strcmp(tok, "shield")) {
			cfg->image = tok;
			continue;
		}
		if (eq)
			*eq = '\0';
		if (parse_field(cfg, pc, tok, eq ? eq + 1 : NULL, err, errlen))
			return -1;
	}
	if (!cfg->image)
		return isolde_fail(err, errlen, "no image given (image=PATH)");
	return 0;
}

void isolde_blk_config_free(struct isolde_blk_config *cfg)
{
	free(cfg->owned);
	cfg->owned = NULL;
}
