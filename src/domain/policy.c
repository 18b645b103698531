// SPDX-License-Identifier: MIT
#include "isolde/policy.h"
#include "isolde/units.h"
#include "build_tree.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ISOLDE_SOURCE_POLICY_DIR
#define ISOLDE_SOURCE_POLICY_DIR ""
#endif
#ifndef ISOLDE_POLICY_INSTALL_DIR
#define ISOLDE_POLICY_INSTALL_DIR "/usr/local/share/isolde/policies"
#endif

#define MAX_POLICY_BYTES 65536
/* A key and its values: 'connect' and 'libraries' take the most. */
#define MAX_WORDS (1 + ISOLDE_POLICY_MAX_PORT_RANGES)

/* The first K_REQUIRED keys must be given; the others have defaults. */
enum key { K_DRIVER, K_DEVICE, K_SYSCALLS, K_MEMORY, K_FILES, K_HEARTBEAT, K_RESTART, K_CRASH_LOOP,
	   K_REQUIRED, K_PROGRESS = K_REQUIRED, K_THREADS, K_CPU, K_LOG, K_LIBRARIES, K_CONNECT, K_UNREACHABLE,
	   K_DOMAIN, K_GUEST_MEMORY, K_STANDBY, K_COUNT };

static const char *const key_names[K_COUNT] = {
	"driver", "device", "syscalls", "memory", "files", "heartbeat", "restart", "crash-loop",
	"progress", "threads", "cpu", "log", "libraries", "connect", "unreachable",
	"domain", "guest-memory", "standby",
};

#define KNOWN_KEYS "driver, device, syscalls, memory, files, heartbeat, restart, crash-loop, " \
		   "progress, threads, cpu, log, libraries, connect, unreachable, domain, guest-memory, standby"

static const struct {
	const char *name;
	uint32_t bit;
} groups[] = {
	{ "base", ISOLDE_SYSCALLS_BASE },
	{ "io", ISOLDE_SYSCALLS_IO },
	{ "sync", ISOLDE_SYSCALLS_SYNC },
	{ "uring", ISOLDE_SYSCALLS_URING },
	{ "stream", ISOLDE_SYSCALLS_STREAM },
	{ "net", ISOLDE_SYSCALLS_NET },
};

#define KNOWN_GROUPS "base, io, sync, uring, stream, net"

static const char *const domain_kind_names[] = {
	[ISOLDE_DOMAIN_PROCESS] = "process",
	[ISOLDE_DOMAIN_VM] = "vm",
};

const char *isolde_domain_kind_name(enum isolde_domain_kind k)
{
	return (unsigned)k <= ISOLDE_DOMAIN_VM ? domain_kind_names[k] : "unknown";
}

int isolde_domain_kind_parse(const char *s, enum isolde_domain_kind *k)
{
	for (unsigned i = 0; i <= ISOLDE_DOMAIN_VM; i++) {
		if (strcmp(s, domain_kind_names[i]) == 0) {
			*k = (enum isolde_domain_kind)i;
			return 0;
		}
	}
	return -1;
}

const char *isolde_syscall_group_name(uint32_t group)
{
	for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
		if (groups[i].bit == group)
			return groups[i].name;
	return "unknown";
}

struct parse_ctx {
	const char *name;
	unsigned line;
	char *err;
	size_t errlen;
};

static int fail(struct parse_ctx *c, const char *key, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (key)
		n = snprintf(c->err, c->errlen, "%s:%u: field '%s': ", c->name, c->line, key);
	else
		n = snprintf(c->err, c->errlen, "%s:%u: ", c->name, c->line);
	if (n < 0 || (size_t)n >= c->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* Split a line into words in place; returns the count. */
static int split(char *s, char **words, int max)
{
	int n = 0;

	while (*s) {
		while (isspace((unsigned char)*s))
			*s++ = '\0';
		if (!*s)
			break;
		if (n == max)
			return max + 1;
		words[n++] = s;
		while (*s && !isspace((unsigned char)*s))
			s++;
	}
	return n;
}

/* "2000ms", "2s" -> milliseconds. */
static int parse_duration_ms(const char *s, uint64_t *ms)
{
	size_t len = strlen(s);
	char num[32];
	uint64_t scale;

	if (len > 2 && strcmp(s + len - 2, "ms") == 0) {
		scale = 1;
		len -= 2;
	} else if (len > 1 && s[len - 1] == 's') {
		scale = 1000;
		len -= 1;
	} else {
		return -1;
	}
	if (len == 0 || len >= sizeof num)
		return -1;
	memcpy(num, s, len);
	num[len] = '\0';
	if (isolde_parse_u64(num, ms) || *ms > UINT32_MAX / scale)
		return -1;
	*ms *= scale;
	return 0;
}

/* "100%" -> 100. */
static int parse_percent(const char *s, uint64_t *v)
{
	size_t len = strlen(s);
	char num[16];

	if (len < 2 || len - 1 >= sizeof num || s[len - 1] != '%')
		return -1;
	memcpy(num, s, len - 1);
	num[len - 1] = '\0';
	return isolde_parse_u64(num, v);
}

/* 'loaded [PATH...]': absolute, normalised paths only, so that what the
 * policy says is what the sandbox grants. */
static int parse_libraries(struct isolde_policy *p, struct parse_ctx *c, char **w, int n)
{
	if (n < 1 || strcmp(w[0], "loaded") != 0)
		return fail(c, "libraries", "expected 'loaded', then optionally paths the driver may also "
			    "read, like 'loaded /usr/lib/x86_64-linux-gnu/ceph'");
	if (n - 1 > ISOLDE_POLICY_MAX_LIBRARY_PATHS)
		return fail(c, "libraries", "more than %d paths", ISOLDE_POLICY_MAX_LIBRARY_PATHS);
	p->libraries = true;
	for (int i = 1; i < n; i++) {
		const char *path = w[i];
		if (path[0] != '/' || strstr(path, "//") || strstr(path, "/./") || strstr(path, "/../") ||
		    (strlen(path) > 1 && path[strlen(path) - 1] == '/') ||
		    (strlen(path) >= 3 && strcmp(path + strlen(path) - 3, "/..") == 0) ||
		    (strlen(path) >= 2 && strcmp(path + strlen(path) - 2, "/.") == 0) || strcmp(path, "/") == 0)
			return fail(c, "libraries", "'%s' is not an absolute, normalised path below /", path);
		if (strlen(path) >= sizeof p->library_paths[0])
			return fail(c, "libraries", "path '%s' is too long", path);
		snprintf(p->library_paths[p->nlibrary_paths++], sizeof p->library_paths[0], "%s", path);
	}
	return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
	uint64_t v;

	if (isolde_parse_u64(s, &v) || v < 1 || v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* 'PORT|LO-HI ...' */
static int parse_connect(struct isolde_policy *p, struct parse_ctx *c, char **w, int n)
{
	if (n < 1)
		return fail(c, "connect", "expected TCP ports or ranges, like '3300 6789 6800-7300'");
	for (int i = 0; i < n; i++) {
		struct isolde_port_range r;
		char lo[8], *dash = strchr(w[i], '-');
		size_t len = dash ? (size_t)(dash - w[i]) : strlen(w[i]);

		if (len == 0 || len >= sizeof lo)
			return fail(c, "connect", "'%s' is not a port (1-65535) or a range LO-HI", w[i]);
		memcpy(lo, w[i], len);
		lo[len] = '\0';
		if (parse_port(lo, &r.lo) || (dash ? parse_port(dash + 1, &r.hi) : (r.hi = r.lo, 0)) ||
		    r.hi < r.lo)
			return fail(c, "connect", "'%s' is not a port (1-65535) or a range LO-HI", w[i]);
		p->connect[p->nconnect++] = r;
	}
	return 0;
}

static int parse_value(struct isolde_policy *p, struct parse_ctx *c, enum key k, char **w, int n)
{
	const char *key = key_names[k];
	uint64_t v, ms;

	switch (k) {
	case K_DRIVER:
		if (n != 1 || strlen(w[0]) >= sizeof p->driver)
			return fail(c, key, "expected one driver name");
		snprintf(p->driver, sizeof p->driver, "%s", w[0]);
		return 0;
	case K_DEVICE:
		if (n == 1 && strcmp(w[0], "read-only") == 0)
			p->device_writable = false;
		else if (n == 1 && strcmp(w[0], "read-write") == 0)
			p->device_writable = true;
		else
			return fail(c, key, "expected read-only or read-write");
		return 0;
	case K_SYSCALLS:
		if (n == 0)
			return fail(c, key, "expected one or more groups (" KNOWN_GROUPS ")");
		p->syscalls = 0;
		for (int i = 0; i < n; i++) {
			uint32_t bit = 0;
			for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
				if (strcmp(w[i], groups[g].name) == 0)
					bit = groups[g].bit;
			if (!bit)
				return fail(c, key, "unknown group '%s' (known: " KNOWN_GROUPS ")", w[i]);
			p->syscalls |= bit;
		}
		if (!(p->syscalls & ISOLDE_SYSCALLS_BASE))
			return fail(c, key, "group 'base' is required: no driver runs without it");
		return 0;
	case K_MEMORY:
		if (n != 1 || isolde_parse_size(w[0], &v) || v < (1u << 20) || v > (UINT64_C(1) << 40))
			return fail(c, key, "expected a size between 1M and 1024G, like 64M");
		p->memory_bytes = v;
		return 0;
	case K_FILES:
		if (n != 1 || isolde_parse_u64(w[0], &v) || v < 8 || v > 65536)
			return fail(c, key, "expected a number between 8 and 65536");
		p->max_files = (uint32_t)v;
		return 0;
	case K_HEARTBEAT:
		if (n != 1 || parse_duration_ms(w[0], &ms) || ms < 10 || ms > 3600000)
			return fail(c, key, "expected a duration between 10ms and 3600s, like 2000ms or 2s");
		p->heartbeat_ms = (uint32_t)ms;
		return 0;
	case K_RESTART:
		if (n != 3 || strcmp(w[1], "per") != 0 || isolde_parse_u64(w[0], &v) || v > 10000 ||
		    parse_duration_ms(w[2], &ms) || ms < 1000 || ms % 1000)
			return fail(c, key, "expected 'N per Ss', like '10 per 60s' (N up to 10000, S >= 1)");
		p->restart_max = (uint32_t)v;
		p->restart_window_s = (uint32_t)(ms / 1000);
		return 0;
	case K_CRASH_LOOP:
		if (n != 1 || isolde_parse_u64(w[0], &v) || v < 1 || v > 1000)
			return fail(c, key, "expected a number of restarts between 1 and 1000");
		p->crash_loop_max = (uint32_t)v;
		return 0;
	case K_PROGRESS:
		if (n != 1 || isolde_parse_u64(w[0], &v) || v < 1 || v > 1000000)
			return fail(c, key, "expected a number of completed requests between 1 and 1000000");
		p->progress_min = (uint32_t)v;
		return 0;
	case K_THREADS:
		if (n != 1 || isolde_parse_u64(w[0], &v) || v > ISOLDE_POLICY_MAX_THREADS)
			return fail(c, key, "expected a number of threads between 0 and %u",
				    ISOLDE_POLICY_MAX_THREADS);
		p->threads = (uint32_t)v;
		return 0;
	case K_CPU:
		if (n != 1 || parse_percent(w[0], &v) || v < 1 || v > 6400)
			return fail(c, key, "expected a percentage of one core between 1%% and 6400%%, "
				    "like 100%%");
		p->cpu_percent = (uint32_t)v;
		return 0;
	case K_LOG:
		if (n != 3 || strcmp(w[1], "per") != 0 || isolde_parse_u64(w[0], &v) || v > 100000 ||
		    parse_duration_ms(w[2], &ms) || ms < 1000 || ms % 1000 || ms > 3600000)
			return fail(c, key, "expected 'N per Ss' lines, like '100 per 1s' (N up to 100000, "
				    "S from 1 to 3600)");
		p->log_lines = (uint32_t)v;
		p->log_window_s = (uint32_t)(ms / 1000);
		return 0;
	case K_UNREACHABLE:
		if (n != 1 || parse_duration_ms(w[0], &ms) || ms < 1000 || ms > 3600000)
			return fail(c, key, "expected a duration between 1s and 3600s, like 60s");
		p->unreachable_ms = (uint32_t)ms;
		return 0;
	case K_DOMAIN:
		if (n != 1 || isolde_domain_kind_parse(w[0], &p->domain))
			return fail(c, key, "expected process or vm");
		return 0;
	case K_GUEST_MEMORY:
		if (n != 1 || isolde_parse_size(w[0], &v) || v < ISOLDE_POLICY_MIN_GUEST_MEMORY ||
		    v > ISOLDE_POLICY_MAX_GUEST_MEMORY || v % (1u << 20))
			return fail(c, key, "expected a whole number of MiB between 64M and 16G, like 256M");
		p->guest_memory_bytes = v;
		return 0;
	case K_STANDBY:
		if (n == 1 && strcmp(w[0], "on") == 0)
			p->vm_standby = true;
		else if (n == 1 && strcmp(w[0], "off") == 0)
			p->vm_standby = false;
		else
			return fail(c, key, "expected on or off");
		return 0;
	case K_LIBRARIES:
		return parse_libraries(p, c, w, n);
	case K_CONNECT:
		return parse_connect(p, c, w, n);
	default:
		return -1;
	}
}

int isolde_policy_parse(struct isolde_policy *p, const char *name, const char *text,
			char *err, size_t errlen)
{
	struct parse_ctx c = { .name = name, .line = 0, .err = err, .errlen = errlen };
	bool seen[K_COUNT] = { false };
	char *copy = strdup(text), *save = NULL, *line;
	int rc = -1;

	memset(p, 0, sizeof *p);
	p->progress_min = ISOLDE_POLICY_DEFAULT_PROGRESS;
	p->cpu_percent = ISOLDE_POLICY_DEFAULT_CPU_PERCENT;
	p->log_lines = ISOLDE_POLICY_DEFAULT_LOG_LINES;
	p->log_window_s = 1;
	p->unreachable_ms = ISOLDE_POLICY_DEFAULT_UNREACHABLE_MS;
	p->domain = ISOLDE_DOMAIN_PROCESS;
	p->guest_memory_bytes = ISOLDE_POLICY_DEFAULT_GUEST_MEMORY;
	p->vm_standby = true;
	snprintf(p->source, sizeof p->source, "%s", name);
	if (!copy) {
		snprintf(err, errlen, "%s: out of memory", name);
		return -1;
	}
	/* strtok_r would skip empty lines and lose the count; walk by hand. */
	for (line = copy; line; line = save) {
		char *words[MAX_WORDS + 1];
		char *hash;
		int n;

		save = strchr(line, '\n');
		if (save)
			*save++ = '\0';
		c.line++;
		if ((hash = strchr(line, '#')))
			*hash = '\0';
		n = split(line, words, MAX_WORDS);
		if (n == 0)
			continue;
		if (n > MAX_WORDS) {
			fail(&c, NULL, "too many words");
			goto out;
		}
		enum key k = K_COUNT;
		for (int i = 0; i < K_COUNT; i++)
			if (strcmp(words[0], key_names[i]) == 0)
				k = (enum key)i;
		if (k == K_COUNT) {
			fail(&c, words[0], "unknown key (known: " KNOWN_KEYS ")");
			goto out;
		}
		if (seen[k]) {
			fail(&c, words[0], "given twice");
			goto out;
		}
		seen[k] = true;
		if (parse_value(p, &c, k, words + 1, n - 1))
			goto out;
	}
	for (int i = 0; i < K_REQUIRED; i++) {
		if (!seen[i]) {
			snprintf(err, errlen, "%s: missing required key '%s'", name, key_names[i]);
			goto out;
		}
	}
	if (p->nconnect && !(p->syscalls & ISOLDE_SYSCALLS_NET)) {
		snprintf(err, errlen, "%s: field 'connect': needs the system-call group 'net' (a driver "
			 "without it cannot make a socket)", name);
		goto out;
	}
	for (enum key k = K_GUEST_MEMORY; k <= K_STANDBY; k++) {
		if (seen[k] && p->domain != ISOLDE_DOMAIN_VM) {
			snprintf(err, errlen, "%s: field '%s': applies to 'domain vm' only", name, key_names[k]);
			goto out;
		}
	}
	if ((p->syscalls & ISOLDE_SYSCALLS_NET) && !p->nconnect) {
		snprintf(err, errlen, "%s: field 'syscalls': group 'net' needs 'connect' with the TCP ports "
			 "the driver may reach", name);
		goto out;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

int isolde_policy_load(struct isolde_policy *p, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *text;
	size_t n;

	if (!f) {
		snprintf(err, errlen, "cannot read policy %s: %s", path, strerror(errno));
		return -1;
	}
	text = malloc(MAX_POLICY_BYTES + 1);
	if (!text) {
		fclose(f);
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	n = fread(text, 1, MAX_POLICY_BYTES + 1, f);
	fclose(f);
	if (n > MAX_POLICY_BYTES) {
		free(text);
		snprintf(err, errlen, "%s: larger than %u bytes", path, MAX_POLICY_BYTES);
		return -1;
	}
	if (memchr(text, '\0', n)) {
		free(text);
		snprintf(err, errlen, "%s: not a text file (contains a NUL byte)", path);
		return -1;
	}
	text[n] = '\0';
	int rc = isolde_policy_parse(p, path, text, err, errlen);
	free(text);
	return rc;
}

int isolde_policy_find(const char *driver_name, char *path, size_t len, char *err, size_t errlen)
{
	const char *dir = getenv("ISOLDE_POLICY_DIR");

	if (!dir || !*dir)
		dir = isolde_running_from_build_tree() ? ISOLDE_SOURCE_POLICY_DIR : ISOLDE_POLICY_INSTALL_DIR;
	if (snprintf(path, len, "%s/%s.policy", dir, driver_name) >= (int)len) {
		snprintf(err, errlen, "policy path too long for driver %s", driver_name);
		return -1;
	}
	if (access(path, R_OK) != 0) {
		snprintf(err, errlen, "no policy for driver %s: cannot read %s: %s", driver_name, path,
			 strerror(errno));
		return -1;
	}
	return 0;
}

/* The optional keys that have no default line: libraries, connect. */
static void format_extras(const struct isolde_policy *p, char *buf, size_t len)
{
	size_t n = strlen(buf);

	if (p->libraries) {
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "libraries  loaded");
		for (unsigned i = 0; i < p->nlibrary_paths; i++)
			n += (size_t)snprintf(buf + n, len > n ? len - n : 0, " %s", p->library_paths[i]);
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "\n");
	}
	if (p->nconnect) {
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "connect   ");
		for (unsigned i = 0; i < p->nconnect; i++) {
			if (p->connect[i].lo == p->connect[i].hi)
				n += (size_t)snprintf(buf + n, len > n ? len - n : 0, " %u", p->connect[i].lo);
			else
				n += (size_t)snprintf(buf + n, len > n ? len - n : 0, " %u-%u", p->connect[i].lo,
						      p->connect[i].hi);
		}
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "\n");
	}
	if (p->domain == ISOLDE_DOMAIN_VM)
		snprintf(buf + n, len > n ? len - n : 0, "domain     vm\nguest-memory %lluM\nstandby    %s\n",
			 (unsigned long long)(p->guest_memory_bytes >> 20), p->vm_standby ? "on" : "off");
}

void isolde_policy_format(const struct isolde_policy *p, char *buf, size_t len)
{
	char sys[64] = "", mem[32];
	uint64_t m = p->memory_bytes;

	for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
		if (p->syscalls & groups[g].bit) {
			if (sys[0])
				strcat(sys, " ");
			strcat(sys, groups[g].name);
		}
	}
	if (m % (1u << 30) == 0)
		snprintf(mem, sizeof mem, "%lluG", (unsigned long long)(m >> 30));
	else if (m % (1u << 20) == 0)
		snprintf(mem, sizeof mem, "%lluM", (unsigned long long)(m >> 20));
	else if (m % 1024 == 0)
		snprintf(mem, sizeof mem, "%lluK", (unsigned long long)(m >> 10));
	else
		snprintf(mem, sizeof mem, "%llu", (unsigned long long)m);
	snprintf(buf, len,
		 "# from %s\n"
		 "driver     %s\n"
		 "device     %s\n"
		 "syscalls   %s\n"
		 "memory     %s\n"
		 "files      %u\n"
		 "heartbeat  %ums\n"
		 "restart    %u per %us\n"
		 "crash-loop %u\n"
		 "progress   %u\n"
		 "threads    %u\n"
		 "cpu        %u%%\n"
		 "log        %u per %us\n"
		 "unreachable %us\n",
		 p->source, p->driver, p->device_writable ? "read-write" : "read-only", sys,
		 mem, p->max_files, p->heartbeat_ms,
		 p->restart_max, p->restart_window_s, p->crash_loop_max, p->progress_min, p->threads,
		 p->cpu_percent, p->log_lines, p->log_window_s, p->unreachable_ms / 1000);
	format_extras(p, buf, len);
}

int isolde_policy_load_for(struct isolde_policy *p, const char *driver_name, const char *path,
			   char *err, size_t errlen)
{
	char found[PATH_MAX];

	if (path)
		snprintf(found, sizeof found, "%s", path);
	else if (isolde_policy_find(driver_name, found, sizeof found, err, errlen))
		return -1;
	if (isolde_policy_load(p, found, err, errlen))
		return -1;
	if (strcmp(p->driver, driver_name) != 0) {
		snprintf(err, errlen, "policy %s is for driver %s, not %s", found, p->driver, driver_name);
		return -1;
	}
	return 0;
}
