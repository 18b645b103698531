// SPDX-License-Identifier: MIT
/* A network device's configuration, and its spec (isolde/net.h). */
#include "isolde/net.h"
#include "error.h"
#include "isolde/units.h"
#include "../domain/tap.h"

#include <stdlib.h>
#include <string.h>

void isolde_net_config_default(struct isolde_net_config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	cfg->driver = "net-tap";
	cfg->notify = ISOLDE_NOTIFY_EVENT;
	cfg->ring = ISOLDE_NET_DEFAULT_RING;
	cfg->offload = true;
}

#define NET_CONFIG_MAX_DRIVER_ARGS 16

struct parsed_net_config {
	char *driver_args[NET_CONFIG_MAX_DRIVER_ARGS + 1];
	unsigned ndriver_args;
	char copy[];
};

static int parse_field(struct isolde_net_config *cfg, struct parsed_net_config *pc, const char *key,
		       char *value, char *err, size_t errlen)
{
	uint64_t v;

	if (!value)
		return isolde_fail(err, errlen, "field '%s' needs a value (%s=...)", key, key);
	if (strcmp(key, "driver_arg") == 0) {
		if (!*value)
			return isolde_fail(err, errlen, "field 'driver_arg' needs a value");
		if (pc->ndriver_args == NET_CONFIG_MAX_DRIVER_ARGS)
			return isolde_fail(err, errlen, "field 'driver_arg': at most %d", NET_CONFIG_MAX_DRIVER_ARGS);
		pc->driver_args[pc->ndriver_args++] = value;
		cfg->driver_args = pc->driver_args;
		return 0;
	}
	if (strcmp(key, "ifname") == 0 || strcmp(key, "netns") == 0 || strcmp(key, "driver") == 0 ||
	    strcmp(key, "policy") == 0) {
		if (!*value)
			return isolde_fail(err, errlen, "field '%s' needs a value", key);
		if (key[0] == 'i' && isolde_tap_check_ifname(value, "field 'ifname'", err, errlen))
			return -1;
		if (key[0] == 'n' && isolde_tap_check_netns(value, "field 'netns'", err, errlen))
			return -1;
		if (key[0] == 'i')
			cfg->ifname = value;
		else if (key[0] == 'n')
			cfg->netns = value;
		else if (key[0] == 'd')
			cfg->driver = value;
		else
			cfg->policy = value;
		return 0;
	}
	if (strcmp(key, "notify") == 0) {
		if (isolde_notify_mode_parse(value, &cfg->notify))
			return isolde_fail(err, errlen, "field 'notify': '%s' is not event, spin or hybrid", value);
		return 0;
	}
	if (strcmp(key, "ring") == 0) {
		if (isolde_parse_u64(value, &v) || v < 2 || v > ISOLDE_NET_MAX_RING || (v & (v - 1)))
			return isolde_fail(err, errlen, "field 'ring': '%s' is not a power of two in 2..%u", value,
					   ISOLDE_NET_MAX_RING);
		cfg->ring = (unsigned)v;
		return 0;
	}
	if (strcmp(key, "offload") == 0) {
		if (strcmp(value, "on") && strcmp(value, "off"))
			return isolde_fail(err, errlen, "field 'offload': '%s' is not on or off", value);
		cfg->offload = value[1] == 'n';
		return 0;
	}
	if (strcmp(key, "mtu") == 0) {
		if (isolde_parse_u64(value, &v) || v < 68 || v > 65521)
			return isolde_fail(err, errlen, "field 'mtu': '%s' is not in 68..65521", value);
		cfg->mtu = (unsigned)v;
		return 0;
	}
	if (strcmp(key, "timeout_ms") == 0) {
		if (isolde_parse_u64(value, &v) || v == 0 || v > 3600000)
			return isolde_fail(err, errlen, "field 'timeout_ms': '%s' is not in 1..3600000", value);
		cfg->timeout_ms = (unsigned)v;
		return 0;
	}
	return isolde_fail(err, errlen, "unknown field '%s' (known: driver, ifname, netns, notify, ring, offload, "
			   "mtu, timeout_ms, policy, driver_arg)", key);
}

int isolde_net_config_parse(struct isolde_net_config *cfg, const char *spec, char *err, size_t errlen)
{
	size_t len = strlen(spec);
	struct parsed_net_config *pc = calloc(1, sizeof *pc + len + 1);
	char *save = NULL;
	bool first = true;

	if (!pc)
		return isolde_fail(err, errlen, "out of memory");
	char *copy = memcpy(pc->copy, spec, len + 1);
	if (cfg->owned) {
		isolde_net_config_free(cfg);
		cfg->ifname = cfg->netns = cfg->policy = NULL;
		cfg->driver = "net-tap";
		cfg->driver_args = NULL;
	}
	cfg->owned = pc;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save), first = false) {
		char *eq = strchr(tok, '=');
		if (!eq && first)
			continue; /* the device's name */
		if (eq)
			*eq = '\0';
		if (parse_field(cfg, pc, tok, eq ? eq + 1 : NULL, err, errlen))
			return -1;
	}
	if (!cfg->ifname)
		return isolde_fail(err, errlen, "no TAP device given (ifname=IF)");
	return 0;
}

void isolde_net_config_free(struct isolde_net_config *cfg)
{
	free(cfg->owned);
	cfg->owned = NULL;
}
