// SPDX-License-Identifier: MIT
/*
 * metrics.c against a fake daemon: two devices with known snapshots, one
 * export spec holding every character a label value must escape and
 * bytes that are not UTF-8.
 *
 * Without arguments: the cmocka tests (rendering, escaping, the structure
 * of the text, address errors, the HTTP listener's answers).
 * With --serve ADDRESS: serve the fake daemon's metrics, print
 * "metrics on tcp:IP:PORT" and run until SIGINT or SIGTERM - for
 * tests/system/test_metrics.py, which tries hostile HTTP clients on it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "isolde/notify.h"
#include "metrics.h"

/* server.c's bounds (the test does not link server.c). */
const uint64_t server_latency_bounds_ns[SERVER_LATENCY_BUCKETS] = {
	10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
	50000000, 250000000, 1000000000, 5000000000,
};
const uint64_t server_recovery_bounds_us[SERVER_RECOVERY_BUCKETS] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000, 30000000,
};

/* The spec of disk0's second export, and what a parser must read back. */
#define WEIRD_SPEC "fuse:/tmp/a\"b\\c\nd\xff\xc3\xa9\xed\xa0\x80z"
#define WEIRD_SPEC_RENDERED "fuse:/tmp/a\\\"b\\\\c\\nd\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"

struct isolde_daemon {
	unsigned ndevices;
};

static struct isolde_daemon fake = { .ndevices = 2 };

static void add_latency(struct server_stats *st, uint64_t ns)
{
	st->latency_count++;
	st->latency_sum_ns += ns;
	for (unsigned i = 0; i < SERVER_LATENCY_BUCKETS; i++)
		if (ns <= server_latency_bounds_ns[i])
			st->latency_buckets[i]++;
}

static void add_recovery(struct server_stats *st, uint64_t us)
{
	st->recovery_count++;
	st->recovery_sum_us += us;
	for (unsigned i = 0; i < SERVER_RECOVERY_BUCKETS; i++)
		if (us <= server_recovery_bounds_us[i])
			st->recovery_buckets[i]++;
}

static void fake_export(struct server_export_snapshot *e, unsigned id, const char *kind, const char *spec,
			unsigned connections, unsigned inflight)
{
	e->id = id;
	snprintf(e->kind, sizeof e->kind, "%s", kind);
	snprintf(e->spec, sizeof e->spec, "%s", spec);
	e->connections = connections;
	e->inflight = inflight;
	e->json = strdup("{}");
}

void daemon_snapshots(struct isolde_daemon *d, struct daemon_snapshots *out)
{
	memset(out, 0, sizeof *out);
	out->n = d->ndevices;
	for (unsigned i = 0; i < out->n; i++) {
		struct server_snapshot *s = &out->devices[i];
		snprintf(s->name, sizeof s->name, i == 0 ? "disk0" : "disk-%u.b", i);
		s->status_json = strdup("{}");
		s->published_ns = isolde_now_ns() - 50000000; /* 50 ms ago */
		if (i != 0) {
			s->state = "backoff";
			s->generation = 1;
			continue;
		}
		s->state = "running";
		s->generation = 3;
		s->inflight = 2;
		s->stats = (struct server_stats){ .reads = 10, .writes = 5, .flushes = 1, .others = 2,
						  .read_bytes = 40960, .write_bytes = 20480, .errors = 1 };
		add_latency(&s->stats, 9000);
		add_latency(&s->stats, 30000);
		add_latency(&s->stats, 30000);
		add_latency(&s->stats, 7000000000ull); /* past every bound */
		add_recovery(&s->stats, 800);
		add_recovery(&s->stats, 120000);
		s->sup.restarts = 2;
		s->sup.by_failure[ISOLDE_FAIL_KILLED] = 2;
		s->sup.replayed = 7;
		s->blk.denials = 4;
		s->blk.protocol_violations = 1;
		s->blk.log_suppressed = 9;
		s->nexports = 2;
		fake_export(&s->exports[0], 1, "nbd", "nbd:unix:/tmp/x.sock", 1, 2);
		fake_export(&s->exports[1], 2, "fuse", WEIRD_SPEC, 0, 0);
	}
}

void daemon_snapshots_free(struct daemon_snapshots *s)
{
	for (unsigned i = 0; i < s->n; i++) {
		free(s->devices[i].status_json);
		for (unsigned e = 0; e < s->devices[i].nexports; e++)
			free(s->devices[i].exports[e].json);
	}
	s->n = 0;
}

static char *render(void)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	metrics_render(&fake, f);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void assert_line(const char *text, const char *line)
{
	char *want;

	assert_true(asprintf(&want, "\n%s\n", line) > 0);
	if (!strstr(text, want))
		fail_msg("missing line: %s\n--- in ---\n%s", line, text);
	free(want);
}

static void test_device_samples(void **state)
{
	(void)state;
	char *t = render();

	assert_line(t, "isolde_devices 2");
	assert_line(t, "isolde_device_up{device=\"disk0\"} 1");
	assert_line(t, "isolde_device_up{device=\"disk-1.b\"} 0");
	assert_line(t, "isolde_device_state{device=\"disk0\",state=\"running\"} 1");
	assert_line(t, "isolde_device_state{device=\"disk0\",state=\"backoff\"} 0");
	assert_line(t, "isolde_device_state{device=\"disk-1.b\",state=\"backoff\"} 1");
	assert_line(t, "isolde_device_state{device=\"disk-1.b\",state=\"running\"} 0");
	assert_line(t, "isolde_device_generation{device=\"disk0\"} 3");
	assert_line(t, "isolde_device_inflight{device=\"disk0\"} 2");
	assert_line(t, "isolde_device_requests_total{device=\"disk0\",op=\"read\"} 10");
	assert_line(t, "isolde_device_requests_total{device=\"disk0\",op=\"write\"} 5");
	assert_line(t, "isolde_device_requests_total{device=\"disk0\",op=\"flush\"} 1");
	assert_line(t, "isolde_device_requests_total{device=\"disk0\",op=\"other\"} 2");
	assert_line(t, "isolde_device_bytes_total{device=\"disk0\",direction=\"read\"} 40960");
	assert_line(t, "isolde_device_bytes_total{device=\"disk0\",direction=\"write\"} 20480");
	assert_line(t, "isolde_device_errors_total{device=\"disk0\"} 1");
	assert_line(t, "isolde_device_replayed_total{device=\"disk0\"} 7");
	assert_line(t, "isolde_device_denials_total{device=\"disk0\"} 4");
	assert_line(t, "isolde_device_protocol_violations_total{device=\"disk0\"} 1");
	assert_line(t, "isolde_device_log_suppressed_total{device=\"disk0\"} 9");
	assert_line(t, "isolde_device_restarts_total{device=\"disk0\",reason=\"killed\"} 2");
	for (int i = 0; i < ISOLDE_FAIL_COUNT; i++) {
		char *line;
		assert_true(asprintf(&line, "isolde_device_restarts_total{device=\"disk-1.b\",reason=\"%s\"} 0",
				     isolde_failure_name((enum isolde_failure)i)) > 0);
		assert_line(t, line);
		free(line);
	}
	assert_non_null(strstr(t, "\nisolde_device_snapshot_age_seconds{device=\"disk0\"} 0.0"));
	free(t);
}

static void test_histograms(void **state)
{
	(void)state;
	char *t = render();

	/* 9 us, 30 us, 30 us, 7 s */
	assert_line(t, "isolde_device_request_duration_seconds_bucket{device=\"disk0\",le=\"0.00001\"} 1");
	assert_line(t, "isolde_device_request_duration_seconds_bucket{device=\"disk0\",le=\"0.000025\"} 1");
	assert_line(t, "isolde_device_request_duration_seconds_bucket{device=\"disk0\",le=\"0.00005\"} 3");
	assert_line(t, "isolde_device_request_duration_seconds_bucket{device=\"disk0\",le=\"5\"} 3");
	assert_line(t, "isolde_device_request_duration_seconds_bucket{device=\"disk0\",le=\"+Inf\"} 4");
	assert_line(t, "isolde_device_request_duration_seconds_sum{device=\"disk0\"} 7.000069");
	assert_line(t, "isolde_device_request_duration_seconds_count{device=\"disk0\"} 4");
	/* 800 us, 120 ms */
	assert_line(t, "isolde_device_recovery_seconds_bucket{device=\"disk0\",le=\"0.001\"} 1");
	assert_line(t, "isolde_device_recovery_seconds_bucket{device=\"disk0\",le=\"0.1\"} 1");
	assert_line(t, "isolde_device_recovery_seconds_bucket{device=\"disk0\",le=\"0.25\"} 2");
	assert_line(t, "isolde_device_recovery_seconds_bucket{device=\"disk0\",le=\"30\"} 2");
	assert_line(t, "isolde_device_recovery_seconds_bucket{device=\"disk0\",le=\"+Inf\"} 2");
	assert_line(t, "isolde_device_recovery_seconds_sum{device=\"disk0\"} 0.1208");
	assert_line(t, "isolde_device_recovery_seconds_count{device=\"disk0\"} 2");
	assert_line(t, "isolde_device_recovery_seconds_count{device=\"disk-1.b\"} 0");
	assert_line(t, "isolde_device_recovery_seconds_sum{device=\"disk-1.b\"} 0");
	free(t);
}

static void test_exports_and_escaping(void **state)
{
	(void)state;
	char *t = render();

	assert_line(t, "isolde_export_connections{device=\"disk0\",export=\"1\",kind=\"nbd\"} 1");
	assert_line(t, "isolde_export_inflight{device=\"disk0\",export=\"1\",kind=\"nbd\"} 2");
	assert_line(t, "isolde_export_connections{device=\"disk0\",export=\"2\",kind=\"fuse\"} 0");
	assert_line(t, "isolde_export_info{device=\"disk0\",export=\"1\",kind=\"nbd\",spec=\"nbd:unix:/tmp/x.sock\"} 1");
	assert_line(t, "isolde_export_info{device=\"disk0\",export=\"2\",kind=\"fuse\",spec=\"" WEIRD_SPEC_RENDERED
		    "\"} 1");
	assert_null(strstr(t, "disk-1.b\",export="));
	free(t);
}

/*
 * Every line is a HELP, a TYPE or a sample of the family the last TYPE
 * named; every family has one HELP and one TYPE, HELP first.
 */
static void test_structure(void **state)
{
	(void)state;
	char *t = render();
	regex_t help, type, smp;
	char family[128] = "";
	unsigned nfamilies = 0;
	bool help_seen = false;

	assert_int_equal(regcomp(&help, "^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) [^\n]+$", REG_EXTENDED), 0);
	assert_int_equal(regcomp(&type, "^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$",
				 REG_EXTENDED), 0);
	assert_int_equal(regcomp(&smp,
				 "^([a-zA-Z_:][a-zA-Z0-9_:]*)"
				 "(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\[\\\\\"n])*\""
				 "(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\[\\\\\"n])*\")*\\})? "
				 "(\\+Inf|[0-9]+(\\.[0-9]+)?)$",
				 REG_EXTENDED), 0);
	assert_true(strlen(t) > 0 && t[strlen(t) - 1] == '\n');
	for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
		regmatch_t m[2];
		if (regexec(&help, line, 2, m, 0) == 0) {
			snprintf(family, sizeof family, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
			assert_false(help_seen);
			help_seen = true;
			nfamilies++;
		} else if (regexec(&type, line, 2, m, 0) == 0) {
			assert_true(help_seen);
			assert_int_equal((size_t)(m[1].rm_eo - m[1].rm_so), strlen(family));
			assert_memory_equal(line + m[1].rm_so, family, strlen(family));
			help_seen = false;
		} else if (regexec(&smp, line, 2, m, 0) == 0) {
			assert_false(help_seen);
			assert_true(family[0]);
			if (strncmp(line, family, strlen(family)) != 0)
				fail_msg("sample outside its family %s: %s", family, line);
		} else {
			fail_msg("not a line of the format: %s", line);
		}
	}
	assert_int_equal(nfamilies, 19);
	regfree(&help);
	regfree(&type);
	regfree(&smp);
	free(t);
}

static void test_no_devices(void **state)
{
	(void)state;
	fake.ndevices = 0;
	char *t = render();
	fake.ndevices = 2;

	assert_line(t, "isolde_devices 0");
	assert_line(t, "# TYPE isolde_device_up gauge");
	assert_null(strstr(t, "device=\""));
	free(t);
}

static void assert_address_error(const char *address, const char *why)
{
	char err[512] = "";
	struct metrics_http *m = metrics_http_start(&fake, address, err, sizeof err);
	char *prefix;

	if (m) {
		metrics_http_stop(m);
		fail_msg("%s was accepted", address);
	}
	assert_true(asprintf(&prefix, "--metrics %s: ", address) > 0);
	if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, why))
		fail_msg("%s: error \"%s\" (wanted \"%s...%s\")", address, err, prefix, why);
	free(prefix);
}

static void test_address_errors(void **state)
{
	(void)state;
	assert_address_error("udp:127.0.0.1:0", "expected tcp:HOST:PORT");
	assert_address_error("127.0.0.1:0", "expected tcp:HOST:PORT");
	assert_address_error("tcp:", "expected tcp:HOST:PORT");
	assert_address_error("tcp:127.0.0.1", "expected tcp:HOST:PORT");
	assert_address_error("tcp:127.0.0.1:", "port");
	assert_address_error("tcp:127.0.0.1:65536", "port");
	assert_address_error("tcp:127.0.0.1:80x", "port");
	assert_address_error("tcp:127.0.0.1:-1", "port");
	assert_address_error("tcp:127.0.0.1:1234567", "port");
	assert_address_error("tcp:::1:0", "brackets");
	assert_address_error("tcp:[::1:0", "expected tcp:HOST:PORT");
	assert_address_error("tcp:[::1]0", "expected tcp:HOST:PORT");
	assert_address_error("tcp:[]:0", "IPv6");
	assert_address_error("tcp:[127.0.0.1]:0", "127.0.0.1");
	assert_address_error("tcp:300.1.2.3:0", "300.1.2.3");
	assert_address_error("tcp:192.0.2.1:0", "Cannot assign requested address"); /* TEST-NET-1: not ours */
}

/* One HTTP/1.0 request on a fresh connection; the whole answer. */
static char *http(const char *address, const char *request)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	unsigned port = 0;
	char ip[64];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(sscanf(address, "tcp:%63[0-9.]:%u", ip, &port), 2);
	assert_int_equal(inet_pton(AF_INET, ip, &sin.sin_addr), 1);
	sin.sin_port = htons((uint16_t)port);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap * 2 + 65536;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		ssize_t n = read(fd, buf + len, cap - len);
		assert_true(n >= 0);
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	return buf;
}

static void test_http(void **state)
{
	(void)state;
	char err[512] = "";
	struct metrics_http *m = metrics_http_start(&fake, "tcp::0", err, sizeof err);

	assert_non_null(m);
	assert_int_equal(strncmp(metrics_http_address(m), "tcp:127.0.0.1:", 14), 0);
	assert_true(atoi(metrics_http_address(m) + 14) > 0);

	char *r = http(metrics_http_address(m), "GET /metrics HTTP/1.0\r\n\r\n");
	assert_int_equal(strncmp(r, "HTTP/1.1 200 ", 13), 0);
	assert_non_null(strcasestr(r, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
	assert_non_null(strstr(r, "\r\n\r\n# HELP isolde_devices "));
	assert_non_null(strstr(r, "\nisolde_devices 2\n"));
	free(r);

	r = http(metrics_http_address(m), "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
	assert_int_equal(strncmp(r, "HTTP/1.1 200 ", 13), 0);
	free(r);

	r = http(metrics_http_address(m), "HEAD /metrics HTTP/1.0\r\n\r\n");
	assert_int_equal(strncmp(r, "HTTP/1.1 200 ", 13), 0);
	assert_null(strstr(r, "# HELP"));
	free(r);

	r = http(metrics_http_address(m), "GET / HTTP/1.0\r\n\r\n");
	assert_int_equal(strncmp(r, "HTTP/1.1 404 ", 13), 0);
	free(r);

	r = http(metrics_http_address(m), "POST /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello");
	assert_int_equal(strncmp(r, "HTTP/1.1 405 ", 13), 0);
	assert_non_null(strcasestr(r, "\r\nAllow: GET, HEAD\r\n"));
	free(r);

	/* The same port again: taken. */
	char again[128];
	snprintf(again, sizeof again, "%s", metrics_http_address(m));
	assert_null(metrics_http_start(&fake, again, err, sizeof err));
	assert_non_null(strstr(err, "Address already in use"));
	metrics_http_stop(m);
}

static void test_http_ipv6(void **state)
{
	(void)state;
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	bool have_ipv6 = fd >= 0 && bind(fd, (struct sockaddr *)&s6, sizeof s6) == 0;

	if (fd >= 0)
		close(fd);
	if (!have_ipv6)
		skip();
	char err[512] = "";
	struct metrics_http *m = metrics_http_start(&fake, "tcp:[::1]:0", err, sizeof err);
	if (!m)
		fail_msg("%s", err);
	assert_int_equal(strncmp(metrics_http_address(m), "tcp:[::1]:", 10), 0);
	metrics_http_stop(m);
}

static int serve(const char *address)
{
	char err[512];
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	struct metrics_http *m = metrics_http_start(&fake, address, err, sizeof err);
	if (!m) {
		fprintf(stderr, "test_metrics: %s\n", err);
		return 1;
	}
	printf("metrics on %s\n", metrics_http_address(m));
	fflush(stdout);
	sigwait(&set, &sig);
	metrics_http_stop(m);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--serve") == 0)
		return serve(argv[2]);

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_device_samples),
		cmocka_unit_test(test_histograms),
		cmocka_unit_test(test_exports_and_escaping),
		cmocka_unit_test(test_structure),
		cmocka_unit_test(test_no_devices),
		cmocka_unit_test(test_address_errors),
		cmocka_unit_test(test_http),
		cmocka_unit_test(test_http_ipv6),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
