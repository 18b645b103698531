/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user-net export (vhost_net.c): a QEMU guest's virtio-net card
 * whose frames go through a network device's isolated driver. One thread
 * per export.
 */
#ifndef ISOLDE_EXPORT_VHOST_NET_H
#define ISOLDE_EXPORT_VHOST_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isolde/net.h"

struct vhost_net;

struct vhost_net_stats {
	uint64_t tx_frames;      /* the guest's, put on the TX ring */
	uint64_t tx_malformed;   /* the guest's, refused (logged) */
	uint64_t tx_dropped;     /* the guest's, with the device failed or the export stopping */
	uint64_t rx_frames;      /* into the guest's buffers */
	uint64_t rx_dropped;     /* no guest, or an offload it did not accept */
	uint64_t rx_too_long;    /* longer than the guest's buffer */
};

/*
 * Parse "vhost-user-net:PATH[,netdev=NAME][,poll=MODE]" into its parts
 * (pointing into buf, of buflen bytes); *poll is set only if given
 * (*poll_set). Returns 0, or -1 with err naming the bad field.
 */
int vhost_net_parse(const char *spec, char *buf, size_t buflen, const char **path, const char **netdev,
		    enum isolde_notify_mode *poll, bool *poll_set, char *err, size_t errlen);
/* Open the network device of cfg (its driver started), listen on the
 * spec's socket, start the thread. */
struct vhost_net *vhost_net_start(const char *name, const struct isolde_net_config *cfg, const char *spec,
				  char *err, size_t errlen);
void vhost_net_describe(const struct vhost_net *x, char *buf, size_t len);
/* Stop the thread, remove the socket, close the device (its driver stopped). */
void vhost_net_stop(struct vhost_net *x);

#endif
