// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "net_export.h"

#include "error.h"
#include "tap_export.h"
#include "vhost_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct net_export {
	struct tap_export *tap;
	struct vhost_net *vhost;
};

static bool is_tap(const char *spec)
{
	return strncmp(spec, "tap:", 4) == 0;
}

static bool is_vhost(const char *spec)
{
	return strncmp(spec, "vhost-user-net:", 15) == 0;
}

bool net_export_is(const char *spec)
{
	return is_tap(spec) || is_vhost(spec);
}

int net_export_netdev(const char *spec, char *buf, size_t buflen, const char **netdev, char *err, size_t errlen)
{
	const char *a, *b;
	enum isolde_notify_mode poll;
	bool poll_set;

	if (is_tap(spec))
		return tap_export_parse(spec, buf, buflen, &a, &b, netdev, err, errlen);
	if (is_vhost(spec))
		return vhost_net_parse(spec, buf, buflen, &a, netdev, &poll, &poll_set, err, errlen);
	return isolde_fail(err, errlen, "'%s' is not a network export (tap:IFNAME or vhost-user-net:PATH)", spec);
}

struct net_export *net_export_start(const char *name, const struct isolde_net_config *cfg, const char *spec,
				    char *err, size_t errlen)
{
	struct net_export *x = calloc(1, sizeof *x);
	char buf[512];
	const char *ifname, *netns, *netdev;

	if (!x) {
		isolde_fail(err, errlen, "out of memory");
		return NULL;
	}
	if (is_tap(spec)) {
		if (tap_export_parse(spec, buf, sizeof buf, &ifname, &netns, &netdev, err, errlen) == 0)
			x->tap = tap_export_start(name, cfg, ifname, netns, err, errlen);
	} else if (is_vhost(spec)) {
		x->vhost = vhost_net_start(name, cfg, spec, err, errlen);
	} else {
		isolde_fail(err, errlen, "'%s' is not a network export", spec);
	}
	if (!x->tap && !x->vhost) {
		free(x);
		return NULL;
	}
	return x;
}

void net_export_describe(const struct net_export *x, char *buf, size_t len)
{
	if (x->tap)
		tap_export_describe(x->tap, buf, len);
	else
		vhost_net_describe(x->vhost, buf, len);
}

void net_export_stop(struct net_export *x)
{
	if (!x)
		return;
	tap_export_stop(x->tap);
	vhost_net_stop(x->vhost);
	free(x);
}

void net_export_report(const char *name, const struct isolde_net *net)
{
	struct isolde_net_stats st;
	isolde_net_get_stats(net, &st);
	const struct isolde_supervisor_stats *ss = isolde_net_supervisor_stats(net);
	fprintf(stderr, "isolde serve: network device %s: %llu frames sent, %llu received, %llu restarts, "
		"%llu frames sent again, %llu protocol violations%s%s\n", name, (unsigned long long)st.tx_frames,
		(unsigned long long)st.rx_frames, (unsigned long long)ss->restarts,
		(unsigned long long)st.tx_replayed, (unsigned long long)st.protocol_violations,
		isolde_net_failed(net) ? "; failed: " : "", isolde_net_failed(net) ? isolde_net_error(net) : "");
}
