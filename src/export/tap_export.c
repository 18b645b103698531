// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "tap_export.h"

#include "../domain/tap.h"
#include "error.h"
#include "net_export.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define BATCH 64                /* frames per direction per pass */
#define HYBRID_IDLE_SPIN_NS 50000u /* hybrid: idle passes before sleeping */

struct tap_export {
	char name[64];
	char ifname[16];
	struct isolde_net *net;
	enum isolde_notify_mode mode;
	int tap_fd;           /* the host's side */
	int stop_fd;          /* eventfd: the thread ends */
	pthread_t thread;
	bool thread_started;
	uint64_t discarded;   /* frames the host sent after the device failed */
};

int tap_export_parse(const char *spec, char *buf, size_t buflen, const char **ifname, const char **netns,
		     const char **netdev, char *err, size_t errlen)
{
	if (strncmp(spec, "tap:", 4) != 0)
		return isolde_fail(err, errlen, "'%s' is not a tap export (tap:IFNAME[,netns=NS][,netdev=NAME])", spec);
	if (strlen(spec + 4) >= buflen)
		return isolde_fail(err, errlen, "tap export spec too long");
	snprintf(buf, buflen, "%s", spec + 4);
	*netns = *netdev = NULL;
	char *save = NULL;
	*ifname = strtok_r(buf, ",", &save);
	if (!*ifname || isolde_tap_check_ifname(*ifname, "tap export", err, errlen))
		return *ifname ? -1 : isolde_fail(err, errlen, "tap export: no interface name (tap:IFNAME)");
	for (char *tok = strtok_r(NULL, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq || !eq[1])
			return isolde_fail(err, errlen, "tap export: field '%s' needs a value", eq ? (*eq = 0, tok) : tok);
		*eq = '\0';
		if (strcmp(tok, "netns") == 0) {
			if (isolde_tap_check_netns(eq + 1, "tap export: field 'netns'", err, errlen))
				return -1;
			*netns = eq + 1;
		} else if (strcmp(tok, "netdev") == 0) {
			*netdev = eq + 1;
		} else {
			return isolde_fail(err, errlen, "tap export: unknown field '%s' (known: netns, netdev)", tok);
		}
	}
	return 0;
}

/* Frames the host sent: into TX buffers while there are any. */
static unsigned host_to_wire(struct tap_export *x)
{
	unsigned n = 0;

	while (n < BATCH) {
		int r;
		if (isolde_net_failed(x->net)) {
			/* Nothing will carry them: read them so that the host's
			 * queue does not fill, and count them. */
			char sink[ISOLDE_NETIF_BUF_SIZE];
			if (read(x->tap_fd, sink, sizeof sink) <= 0)
				break;
			x->discarded++;
			n++;
			continue;
		}
		if (isolde_net_tx_free(x->net) == 0)
			break;
		r = isolde_net_send_from_fd(x->net, x->tap_fd);
		if (r <= 0)
			break;
		n++;
	}
	isolde_net_push(x->net);
	return n;
}

static unsigned wire_to_host(struct tap_export *x)
{
	unsigned n = 0;

	isolde_net_poll(x->net);
	while (n < BATCH && isolde_net_rx_ready(x->net) > 0) {
		isolde_net_receive_to_fd(x->net, x->tap_fd);
		n++;
	}
	isolde_net_push(x->net); /* the buffers, posted again */
	return n;
}

static bool stopped(const struct tap_export *x)
{
	struct pollfd p = { .fd = x->stop_fd, .events = POLLIN };
	return poll(&p, 1, 0) > 0;
}

static void *export_thread(void *arg)
{
	struct tap_export *x = arg;
	uint64_t idle_since = 0;
	unsigned spins = 0;

	for (;;) {
		unsigned work = host_to_wire(x) + wire_to_host(x);
		if (work) {
			idle_since = 0;
			continue;
		}
		/* A spinning device is looked at again at once; now and then
		 * the stop request is. */
		if (x->mode == ISOLDE_NOTIFY_SPIN && isolde_net_timeout_ms(x->net) < 0 &&
		    !isolde_net_failed(x->net)) {
			if (++spins % 1024 == 0 && stopped(x))
				break;
			continue;
		}
		if (x->mode == ISOLDE_NOTIFY_HYBRID) {
			uint64_t now = isolde_now_ns();
			if (!idle_since)
				idle_since = now;
			if (now - idle_since < HYBRID_IDLE_SPIN_NS)
				continue;
		}
		if (!isolde_net_prepare_sleep(x->net))
			continue;
		int call_fd, watch_fd;
		isolde_net_event_fds(x->net, &call_fd, &watch_fd);
		bool can_send = isolde_net_tx_free(x->net) > 0 || isolde_net_failed(x->net);
		struct pollfd p[4] = {
			{ .fd = x->stop_fd, .events = POLLIN },
			{ .fd = can_send ? x->tap_fd : -1, .events = POLLIN },
			{ .fd = call_fd, .events = POLLIN },
			{ .fd = watch_fd, .events = POLLIN },
		};
		if (poll(p, 4, isolde_net_timeout_ms(x->net)) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		idle_since = 0;
	}
	return NULL;
}

struct tap_export *tap_export_start(const char *name, const struct isolde_net_config *cfg, const char *ifname,
				    const char *netns, char *err, size_t errlen)
{
	const char *dev_ns = cfg->netns ? cfg->netns : "";
	if (strcmp(ifname, cfg->ifname) == 0 && strcmp(netns ? netns : "", dev_ns) == 0) {
		isolde_fail(err, errlen, "tap export %s is the TAP of network device %s's driver: give the host's "
			    "side a TAP of its own", ifname, name);
		return NULL;
	}
	struct tap_export *x = calloc(1, sizeof *x);
	if (!x) {
		isolde_fail(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(x->name, sizeof x->name, "%s", name);
	snprintf(x->ifname, sizeof x->ifname, "%s", ifname);
	x->mode = cfg->notify;
	x->tap_fd = -1;
	x->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (x->stop_fd < 0) {
		isolde_fail(err, errlen, "eventfd: %s", strerror(errno));
		goto fail;
	}
	char nerr[512];
	if (!(x->net = isolde_net_open(cfg, nerr, sizeof nerr))) {
		isolde_fail(err, errlen, "network device %s: %s", name, nerr);
		goto fail;
	}
	x->tap_fd = isolde_tap_open(ifname, netns, isolde_net_features(x->net), cfg->mtu, nerr, sizeof nerr);
	if (x->tap_fd < 0) {
		isolde_fail(err, errlen, "tap export: %s", nerr);
		goto fail;
	}
	int r = pthread_create(&x->thread, NULL, export_thread, x);
	if (r) {
		isolde_fail(err, errlen, "cannot start the tap export's thread: %s", strerror(r));
		goto fail;
	}
	x->thread_started = true;
	return x;
fail:
	tap_export_stop(x);
	return NULL;
}

void tap_export_describe(const struct tap_export *x, char *buf, size_t len)
{
	snprintf(buf, len, "network device %s: TAP %s through driver pid %d, notify %s, offload %s", x->name,
		 x->ifname, (int)isolde_net_driver_pid(x->net), isolde_notify_mode_name(x->mode),
		 isolde_net_features(x->net) ? "on" : "off");
}

void tap_export_stop(struct tap_export *x)
{
	if (!x)
		return;
	if (x->thread_started) {
		uint64_t one = 1;
		(void)!write(x->stop_fd, &one, sizeof one);
		pthread_join(x->thread, NULL);
	}
	if (x->net)
		net_export_report(x->name, x->net);
	isolde_net_close(x->net);
	if (x->tap_fd >= 0)
		close(x->tap_fd);
	if (x->stop_fd >= 0)
		close(x->stop_fd);
	free(x);
}
