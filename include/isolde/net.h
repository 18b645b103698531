/* SPDX-License-Identifier: MIT */
/*
 * isolde/net.h - libisolde's network front end.
 *
 * Opens a network device through an isolated driver domain: a driver process
 * (net-tap) that holds one TAP fd the front end opened, and talks to the
 * front end only over a TX and an RX ring (isolde/netif.h).
 *
 *     struct isolde_net_config cfg;
 *     isolde_net_config_default(&cfg);
 *     cfg.ifname = "tap0";
 *     struct isolde_net *net = isolde_net_open(&cfg, err, sizeof err);
 *     isolde_net_send(net, frame, len, NULL);
 *     isolde_net_push(net);
 *     ... isolde_net_poll(net); n = isolde_net_receive(net, buf, sizeof buf, &off);
 *     isolde_net_close(net);
 *
 * Nothing blocks but isolde_net_wait: an event loop waits on the fds of
 * isolde_net_event_fds (and isolde_net_timeout_ms), then calls
 * isolde_net_poll. A handle must be used by one thread at a time.
 *
 * The driver is hostile: every answer is copied once and checked against a
 * private record of what was posted (the buffer, its sequence number); a
 * driver that breaks the protocol, dies or hangs (no heartbeat while frames
 * wait to be sent) is killed and a fresh one started; frames still waiting
 * to be sent are sent again, in order, and the empty RX buffers are posted
 * again. A restart can therefore lose frames (those the dead driver had
 * read from the wire and not yet answered) and duplicate frames (those it
 * had sent and not yet answered): what a network may do anyway, which TCP
 * repairs. It never hands the application a frame the protocol check
 * refused. The driver can read and write every buffer of the data area: it
 * owns the wire, so a frame's contents are whatever it sent or received.
 */
#ifndef ISOLDE_NET_H
#define ISOLDE_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "isolde/blk.h"
#include "isolde/netif.h"
#include "isolde/notify.h"

#define ISOLDE_NET_DEFAULT_RING 256u
#define ISOLDE_NET_MAX_RING 1024u

struct isolde_net_config {
	const char *ifname;       /* the TAP device the driver gets (created if missing) */
	const char *netns;        /* its network namespace (/run/netns/NAME), NULL: ours */
	const char *driver;       /* net-tap, or a path to a driver binary */
	enum isolde_notify_mode notify;
	unsigned ring;            /* slots per ring, a power of two, 2..1024 */
	bool offload;             /* checksum and TSO offloads (default on) */
	unsigned mtu;             /* 0: leave the TAP's */
	unsigned timeout_ms;      /* hang: no heartbeat this long with frames to send; 0: policy */
	const char *policy;       /* NULL: the driver's shipped policy */
	char **driver_args;       /* extra argv for the driver, NULL-terminated */
	void *owned;              /* private: memory owned by isolde_net_config_parse */
};

void isolde_net_config_default(struct isolde_net_config *cfg);
/*
 * Parse "NAME,driver=D,ifname=IF,netns=NS,notify=M,ring=N,offload=on|off,mtu=N,
 * timeout_ms=MS,policy=PATH,driver_arg=ARG" (the first element without '='
 * is skipped: the caller's name for the device). Returns 0, or -1 with a
 * message naming the bad field.
 */
int isolde_net_config_parse(struct isolde_net_config *cfg, const char *spec, char *err, size_t errlen);
void isolde_net_config_free(struct isolde_net_config *cfg);

struct isolde_net;

struct isolde_net *isolde_net_open(const struct isolde_net_config *cfg, char *err, size_t errlen);
void isolde_net_close(struct isolde_net *net);

/*
 * Queue one frame to send (copied into a TX buffer; published by
 * isolde_net_push). off may be NULL (no offload). Returns 0; -EAGAIN if
 * every TX buffer is in flight; -EMSGSIZE for a frame shorter than an
 * Ethernet header or longer than ISOLDE_NETIF_MAX_FRAME; -EINVAL for an
 * offload the device does not carry or that does not fit the frame; -EIO if
 * the device has failed. While the driver restarts, frames queue up to the
 * ring's size and go out when it is back.
 */
int isolde_net_send(struct isolde_net *net, const void *frame, size_t len,
		    const struct isolde_netif_offload *off);
/*
 * The same, reading the frame from fd (a TAP with a vnet header: one read
 * gives the header and the frame) straight into a TX buffer. Returns 1 for a
 * frame queued, 0 if fd had none (EAGAIN) or gave one the check refused
 * (counted in tx_refused), or the errors above, or -errno from read.
 */
int isolde_net_send_from_fd(struct isolde_net *net, int fd);
/* Publish queued frames and re-posted RX buffers; kick the driver at most once. */
void isolde_net_push(struct isolde_net *net);

/*
 * Take the next received frame: copied into buf (at most cap bytes; a longer
 * frame is cut and the full length returned), its offload into *off (may be
 * NULL). Returns the frame's length, -EAGAIN if none is waiting, -EIO if the
 * device failed.
 */
int isolde_net_receive(struct isolde_net *net, void *buf, size_t cap, struct isolde_netif_offload *off);
/* The length of the next received frame, its offload into *off (may be
 * NULL), without taking it; -EAGAIN, -EIO. */
int isolde_net_peek(const struct isolde_net *net, struct isolde_netif_offload *off);
/* Take the next received frame into the segments iov, starting skip bytes
 * in; what does not fit is cut. Returns the frame's length, -EAGAIN, -EIO. */
int isolde_net_receive_iov(struct isolde_net *net, const struct iovec *iov, unsigned iovcnt, size_t skip);
/* The same, written with its vnet header to fd (a TAP) by one writev.
 * Returns the frame's length, -EAGAIN, -EIO, or -errno from writev (the frame
 * is dropped). */
int isolde_net_receive_to_fd(struct isolde_net *net, int fd);

/*
 * Without blocking: answer the driver's watch fd, detect its end or hang,
 * advance the recovery of a failed driver, collect TX completions and RX
 * frames. Returns the number of received frames waiting, or -EIO.
 */
int isolde_net_poll(struct isolde_net *net);
/* Block up to timeout_ms (-1: no limit) until a frame is received, a TX
 * buffer frees up, or the device fails; then poll. */
int isolde_net_wait(struct isolde_net *net, int timeout_ms);

/* The fds that become readable when the device needs attention (stable
 * across restarts), as for isolde_blk_event_fds. */
void isolde_net_event_fds(const struct isolde_net *net, int *call_fd, int *watch_fd);
/* True if an event loop may sleep: nothing to collect and the rings armed. */
bool isolde_net_prepare_sleep(struct isolde_net *net);
/* -1 while a driver runs, else ms until the recovery's next deadline. */
int isolde_net_timeout_ms(const struct isolde_net *net);

/* TX buffers free for isolde_net_send. */
unsigned isolde_net_tx_free(const struct isolde_net *net);
/* Frames received and not yet taken. */
unsigned isolde_net_rx_ready(const struct isolde_net *net);

bool isolde_net_failed(const struct isolde_net *net);
const char *isolde_net_error(const struct isolde_net *net);
const char *isolde_net_state(const struct isolde_net *net);
pid_t isolde_net_driver_pid(const struct isolde_net *net);
uint32_t isolde_net_generation(const struct isolde_net *net);
uint32_t isolde_net_features(const struct isolde_net *net);
const char *isolde_net_ifname(const struct isolde_net *net);
const struct isolde_supervisor_stats *isolde_net_supervisor_stats(const struct isolde_net *net);
void isolde_net_set_event_handler(struct isolde_net *net, isolde_blk_event_fn fn, void *ctx);
const struct isolde_enforcement *isolde_net_enforcement(const struct isolde_net *net);

struct isolde_net_stats {
	uint64_t tx_frames;        /* sent: the driver answered OK */
	uint64_t tx_errors;        /* the driver answered that the device dropped it */
	uint64_t tx_refused;       /* send_from_fd frames the check refused */
	uint64_t tx_replayed;      /* frames sent again after a restart */
	uint64_t rx_frames;        /* received and checked */
	uint64_t rx_dropped;       /* taken by receive_to_fd and refused by the fd */
	uint64_t kicks;
	uint64_t calls;
	uint64_t protocol_violations;
	uint64_t denials;
	uint64_t denials_by_class[ISOLDE_DENIAL_CLASSES]; /* by enum isolde_denial_class (isolde/blk.h) */
};
void isolde_net_get_stats(const struct isolde_net *net, struct isolde_net_stats *st);

#endif
