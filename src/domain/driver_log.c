// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "driver_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool allowed(struct isolde_ratelimit *limit)
{
	uint64_t suppressed;

	if (!isolde_ratelimit_allow(limit, now_ns(), &suppressed))
		return false;
	if (suppressed)
		fprintf(stderr, "isolde: %llu log lines suppressed (policy log limit of %u per %u s)\n",
			(unsigned long long)suppressed, limit->lines, limit->window_s);
	return true;
}

bool isolde_limited_log(struct isolde_ratelimit *limit, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (!allowed(limit))
		return false;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "isolde: %s\n", msg);
	return true;
}

void isolde_driver_log_attach(struct isolde_driver_log *l, int fd, const char *driver, pid_t pid,
			      struct isolde_ratelimit *limit)
{
	memset(l, 0, sizeof *l);
	l->fd = fd;
	l->limit = limit;
	snprintf(l->who, sizeof l->who, "%s[%d]", driver, (int)pid);
}

static void emit(struct isolde_driver_log *l)
{
	l->lines++;
	if (allowed(l->limit))
		fprintf(stderr, "isolde driver %s: %.*s%s\n", l->who, (int)l->len, l->line,
			l->cut ? " [cut]" : "");
	l->len = 0;
	l->cut = false;
}

static void take(struct isolde_driver_log *l, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];

		if (c == '\n') {
			emit(l);
			continue;
		}
		/* A serial console (a VM domain's) ends its lines with "\r\n". */
		if (c == '\r' && i + 1 < n && p[i + 1] == '\n')
			continue;
		if (l->len == sizeof l->line) {
			l->cut = true;
			continue;
		}
		/* Printable ASCII only: no escape sequences reach a terminal. */
		l->line[l->len++] = (c >= 0x20 && c < 0x7f) || c == '\t' ? (char)c : '?';
	}
}

void isolde_driver_log_drain(struct isolde_driver_log *l)
{
	unsigned char buf[4096];
	size_t total = 0;

	while (l->fd >= 0 && total < ISOLDE_DRIVER_LOG_DRAIN_MAX) {
		ssize_t n = read(l->fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		l->bytes += (uint64_t)n;
		total += (size_t)n;
		take(l, buf, (size_t)n);
	}
}

void isolde_driver_log_close(struct isolde_driver_log *l)
{
	if (l->fd < 0)
		return;
	/* The pipe holds at most its 64 KiB; the writer is gone. */
	for (unsigned i = 0; i < 64; i++) {
		uint64_t before = l->bytes;
		isolde_driver_log_drain(l);
		if (l->bytes == before)
			break;
	}
	if (l->len || l->cut)
		emit(l);
	close(l->fd);
	l->fd = -1;
}
