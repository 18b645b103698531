/* SPDX-License-Identifier: MIT */
/*
 * isolde serve's metrics in the Prometheus text exposition format (0.0.4),
 * rendered from the daemon's snapshots (daemon_snapshots: no device thread
 * is waited for), for `isolde ctl metrics` (the control socket's "metrics"
 * command) and an optional HTTP listener (`--metrics tcp:HOST:PORT`,
 * loopback unless told otherwise; GET /metrics).
 *
 * Per device (label device="NAME"): state, generation, requests in flight,
 * requests by op, bytes read and written, errors, a request-latency
 * histogram, restarts by reason, requests replayed, a recovery-time
 * histogram, policy denials, protocol violations, driver log lines
 * suppressed, the snapshot's age; per export (labels device, export="ID",
 * kind): connections, requests in flight, and its spec (an info metric).
 * docs/METRICS.md lists them.
 */
#ifndef ISOLDE_EXPORT_METRICS_H
#define ISOLDE_EXPORT_METRICS_H

#include <stddef.h>
#include <stdio.h>

struct isolde_daemon;
struct metrics_http;

/* Write every metric to f. Any thread. */
void metrics_render(struct isolde_daemon *d, FILE *f);

/* Listen on "tcp:HOST:PORT" (HOST may be empty: 127.0.0.1). NULL with err. */
struct metrics_http *metrics_http_start(struct isolde_daemon *d, const char *address, char *err, size_t errlen);
/* Where it listens, as "tcp:IP:PORT" (the port chosen when 0 was asked). */
const char *metrics_http_address(const struct metrics_http *m);
void metrics_http_stop(struct metrics_http *m);

#endif
