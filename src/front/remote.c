// SPDX-License-Identifier: MIT
/*
 * Remote images (remote.h): parse the name, read what it names, and make a
 * generation's fd 6. Everything here runs in the trusted front end; the
 * driver sees only the fd and, for NBD, the export name.
 */
#define _GNU_SOURCE
#include "remote.h"
#include "error.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NBD_DEFAULT_PORT "10809"
/* A connect that is not answered within this is a remote that is away: the
 * start fails and recovery tries again later, it does not wait. */
#define CONNECT_TIMEOUT_MS 1000
#define CEPH_FILE_MAX (64 * 1024)


enum isolde_remote_kind isolde_remote_kind_of(const char *image)
{
	if (strncmp(image, "nbd:", 4) == 0 || strncmp(image, "nbd+", 4) == 0 || strncmp(image, "nbds", 4) == 0)
		return ISOLDE_REMOTE_NBD;
	if (strncmp(image, "rbd:", 4) == 0)
		return ISOLDE_REMOTE_RBD;
	return ISOLDE_REMOTE_NONE;
}

const char *isolde_remote_driver(enum isolde_remote_kind kind)
{
	return kind == ISOLDE_REMOTE_NBD ? "blk-nbd" : kind == ISOLDE_REMOTE_RBD ? "blk-rbd" : "blk-file";
}

/* ---- NBD URIs ---- */

static int hexval(char c)
{
	return isdigit((unsigned char)c) ? c - '0' : isxdigit((unsigned char)c) ? tolower((unsigned char)c) - 'a' + 10 : -1;
}

/* Percent-decode [s, s+n) into out; no NUL bytes. */
static int decode(const char *s, size_t n, char *out, size_t len)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '%') {
			int hi, lo;
			if (i + 2 >= n || (hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0)
				return -1;
			c = (char)(hi * 16 + lo);
			i += 2;
			if (c == '\0')
				return -1;
		}
		if (k + 1 >= len)
			return -1;
		out[k++] = c;
	}
	out[k] = '\0';
	return 0;
}

static int parse_nbd(struct isolde_remote *r, const char *uri, char *err, size_t errlen)
{
	const char *rest, *slash, *query;

	if (strncmp(uri, "nbds", 4) == 0)
		return isolde_fail(err, errlen, "image %.200s: NBD over TLS (nbds) is not supported; use nbd:// or "
			    "nbd+unix:// on a network you trust", uri);
	if (strncmp(uri, "nbd://", 6) == 0 || strncmp(uri, "nbd+tcp://", 10) == 0) {
		rest = uri + (uri[3] == '+' ? 10 : 6);
	} else if (strncmp(uri, "nbd+unix://", 11) == 0) {
		r->unix_socket = true;
		rest = uri + 11;
	} else {
		return isolde_fail(err, errlen, "image %.200s: expected nbd://HOST[:PORT]/EXPORT or "
			    "nbd+unix:///EXPORT?socket=PATH", uri);
	}
	slash = strchr(rest, '/');
	query = strchr(rest, '?');
	if (query && slash && query < slash)
		slash = NULL;
	const char *authority_end = slash ? slash : query ? query : rest + strlen(rest);
	if (r->unix_socket) {
		if (authority_end != rest)
			return isolde_fail(err, errlen, "image %.200s: nbd+unix:// takes no host (three slashes: "
				    "nbd+unix:///EXPORT?socket=PATH)", uri);
	} else {
		const char *host = rest, *colon = NULL, *host_end = authority_end;
		if (*host == '[') {
			const char *close = memchr(host, ']', (size_t)(authority_end - host));
			if (!close)
				return isolde_fail(err, errlen, "image %.200s: unclosed '[' in the host", uri);
			host++;
			host_end = close;
			if (close + 1 < authority_end) {
				if (close[1] != ':')
					return isolde_fail(err, errlen, "image %.200s: junk after the host", uri);
				colon = close + 1;
			}
		} else {
			colon = memchr(host, ':', (size_t)(authority_end - host));
			if (colon)
				host_end = colon;
		}
		if (host_end == host)
			return isolde_fail(err, errlen, "image %.200s: no host", uri);
		if ((size_t)(host_end - host) >= sizeof r->host)
			return isolde_fail(err, errlen, "image %.200s: host name too long", uri);
		memcpy(r->host, host, (size_t)(host_end - host));
		r->host[host_end - host] = '\0';
		if (colon) {
			size_t plen = (size_t)(authority_end - colon - 1);
			char *end;
			if (plen == 0 || plen >= sizeof r->port)
				return isolde_fail(err, errlen, "image %.200s: bad port", uri);
			memcpy(r->port, colon + 1, plen);
			r->port[plen] = '\0';
			long port = strtol(r->port, &end, 10);
			if (*end || port < 1 || port > 65535)
				return isolde_fail(err, errlen, "image %.200s: port '%s' is not in 1..65535", uri, r->port);
		} else {
			snprintf(r->port, sizeof r->port, "%s", NBD_DEFAULT_PORT);
		}
	}
	if (slash) {
		const char *name = slash + 1, *end = query ? query : name + strlen(name);
		if (decode(name, (size_t)(end - name), r->export_name, sizeof r->export_name))
			return isolde_fail(err, errlen, "image %.200s: bad export name (percent-encoding, NUL or length)", uri);
	}
	if (query) {
		char params[PATH_MAX + 64];
		snprintf(params, sizeof params, "%s", query + 1);
		for (char *save = NULL, *kv = strtok_r(params, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
			char *eq = strchr(kv, '=');
			if (!eq)
				return isolde_fail(err, errlen, "image %.200s: query parameter '%s' has no value", uri, kv);
			*eq = '\0';
			if (strcmp(kv, "socket") == 0 && r->unix_socket) {
				struct sockaddr_un *sun = (struct sockaddr_un *)&r->addr;
				char path[PATH_MAX];
				if (decode(eq + 1, strlen(eq + 1), path, sizeof path) || !path[0] ||
				    strlen(path) >= sizeof sun->sun_path)
					return isolde_fail(err, errlen, "image %.200s: socket path empty or longer than %zu bytes",
						    uri, sizeof sun->sun_path - 1);
				sun->sun_family = AF_UNIX;
				memcpy(sun->sun_path, path, strlen(path) + 1);
				r->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
			} else {
				return isolde_fail(err, errlen, "image %.200s: unknown query parameter '%s' (known: socket, "
					    "for nbd+unix)", uri, kv);
			}
		}
	}
	if (r->unix_socket && r->addr_len == 0)
		return isolde_fail(err, errlen, "image %.200s: nbd+unix:// needs ?socket=PATH", uri);
	snprintf(r->driver_arg, sizeof r->driver_arg, "--export=%s", r->export_name);
	return 0;
}

static int resolve_nbd(struct isolde_remote *r, const char *uri, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC }, *res;

	if (r->unix_socket)
		return 0;
	int e = getaddrinfo(r->host, r->port, &hints, &res);
	if (e)
		return isolde_fail(err, errlen, "image %.200s: cannot resolve host %s: %s", uri, r->host, gai_strerror(e));
	memcpy(&r->addr, res->ai_addr, res->ai_addrlen);
	r->addr_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int connect_nbd(struct isolde_remote *r, char *err, size_t errlen)
{
	int fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	const char *where = r->unix_socket ? ((struct sockaddr_un *)&r->addr)->sun_path : r->host;

	if (fd < 0)
		return isolde_fail(err, errlen, "NBD server %s: socket: %s", where, strerror(errno));
	if (connect(fd, (struct sockaddr *)&r->addr, r->addr_len) != 0) {
		int e = errno;
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		socklen_t len = sizeof e;
		if (e != EINPROGRESS)
			goto refused;
		if (poll(&pfd, 1, CONNECT_TIMEOUT_MS) != 1) {
			e = ETIMEDOUT;
			goto refused;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0 || e != 0)
			goto refused;
		if (0) {
refused:
			close(fd);
			return isolde_fail(err, errlen, "NBD server %s%s%s is not reachable: %s", where,
				    r->unix_socket ? "" : " port ", r->unix_socket ? "" : r->port, strerror(e));
		}
	}
	/* Small requests go out at once (NBD is request/response). */
	if (!r->unix_socket) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	/* Blocking again: libnbd sets what it wants on its own. */
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
		close(fd);
		return isolde_fail(err, errlen, "NBD server %s: fcntl: %s", where, strerror(errno));
	}
	return fd;
}

/* ---- rbd: specs ---- */

static int copy_field(char *dst, size_t len, const char *s, size_t n, const char *spec, const char *what,
		      char *err, size_t errlen)
{
	if (n == 0)
		return isolde_fail(err, errlen, "image %.200s: empty %s", spec, what);
	if (n >= len)
		return isolde_fail(err, errlen, "image %.200s: %s longer than %zu bytes", spec, what, len - 1);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || s[i] == '\\' || s[i] == '=')
			return isolde_fail(err, errlen, "image %.200s: %s has a space, control character, '=' or '\\'",
				    spec, what);
	memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

#define RBD_MAX_FIELDS 8

/* Split at ':' (QEMU's syntax: "\:" is a colon inside a field, "\\" a
 * backslash); fields go into buf, NUL-separated. The number, or -1. */
static int split_rbd(const char *p, char *buf, size_t len, char **fields)
{
	size_t k = 0;
	int n = 0;

	fields[n++] = buf;
	for (; *p; p++) {
		char c = *p;
		if (c == '\\' && (p[1] == ':' || p[1] == '\\'))
			c = *++p;
		else if (c == ':') {
			if (n == RBD_MAX_FIELDS || k + 1 >= len)
				return -1;
			buf[k++] = '\0';
			fields[n++] = buf + k;
			continue;
		}
		if (k + 1 >= len)
			return -1;
		buf[k++] = c;
	}
	buf[k] = '\0';
	return n;
}

static int parse_rbd(struct isolde_remote *r, const char *spec, char *err, size_t errlen)
{
	char buf[2 * PATH_MAX + 2048], *fields[RBD_MAX_FIELDS];
	int n = split_rbd(spec + 4, buf, sizeof buf, fields);

	if (n < 0)
		return isolde_fail(err, errlen, "image %.200s: too long, or more than %d options", spec, RBD_MAX_FIELDS - 1);
	const char *name = fields[0], *slash = strchr(name, '/'), *at = strchr(name, '@');
	if (!slash || (at && at < slash))
		return isolde_fail(err, errlen, "image %.200s: expected rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=CLIENT]"
			    "[:keyring=PATH][:mon_host=ADDRS]", spec);
	if (copy_field(r->pool, sizeof r->pool, name, (size_t)(slash - name), spec, "pool", err, errlen))
		return -1;
	const char *img = slash + 1, *img_end = at ? at : img + strlen(img);
	if (memchr(img, '/', (size_t)(img_end - img)))
		return isolde_fail(err, errlen, "image %.200s: RBD namespaces (POOL/NAMESPACE/IMAGE) are not supported", spec);
	if (copy_field(r->image, sizeof r->image, img, (size_t)(img_end - img), spec, "image name", err, errlen))
		return -1;
	if (at && copy_field(r->snap, sizeof r->snap, at + 1, strlen(at + 1), spec, "snapshot", err, errlen))
		return -1;
	snprintf(r->id, sizeof r->id, "admin");
	snprintf(r->conf, sizeof r->conf, "/etc/ceph/ceph.conf");
	for (int i = 1; i < n; i++) {
		const char *opt = fields[i], *eq = strchr(opt, '=');
		if (!eq)
			return isolde_fail(err, errlen, "image %.200s: option '%.100s' has no value", spec, opt);
		size_t klen = (size_t)(eq - opt);
		char *dst = NULL;
		size_t dlen = 0;
		if (klen == 4 && strncmp(opt, "conf", 4) == 0)
			dst = r->conf, dlen = sizeof r->conf;
		else if (klen == 2 && strncmp(opt, "id", 2) == 0)
			dst = r->id, dlen = sizeof r->id;
		else if (klen == 7 && strncmp(opt, "keyring", 7) == 0)
			dst = r->keyring, dlen = sizeof r->keyring;
		else if (klen == 8 && strncmp(opt, "mon_host", 8) == 0)
			dst = r->mon_host, dlen = sizeof r->mon_host;
		else
			return isolde_fail(err, errlen, "image %.200s: unknown option '%.*s' (known: conf, id, keyring, "
				    "mon_host)", spec, (int)(klen > 64 ? 64 : klen), opt);
		if (copy_field(dst, dlen, eq + 1, strlen(eq + 1), spec, "option value", err, errlen))
			return -1;
	}
	return 0;
}

/* ---- rbd: what the configuration and keyring say ---- */

static char *read_small_file(const char *path, const char *what, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf;
	ssize_t n;

	if (fd < 0) {
		isolde_fail(err, errlen, "cannot read the Ceph %s %s: %s", what, path, strerror(errno));
		return NULL;
	}
	buf = malloc(CEPH_FILE_MAX + 1);
	n = buf ? read(fd, buf, CEPH_FILE_MAX + 1) : -1;
	close(fd);
	if (n < 0 || n > CEPH_FILE_MAX) {
		isolde_fail(err, errlen, "cannot read the Ceph %s %s: %s", what, path,
		     n < 0 ? strerror(errno) : "larger than 64 KiB");
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* Ceph spells a key with spaces, dashes or underscores alike. */
static bool same_key(const char *a, const char *b)
{
	for (; *a && *b; a++, b++) {
		char x = (*a == ' ' || *a == '-') ? '_' : *a, y = (*b == ' ' || *b == '-') ? '_' : *b;
		if (x != y)
			return false;
	}
	return *a == *b;
}

/*
 * The value of key in the sections that apply to client.ID ([global],
 * [client], [client.ID]: later ones win), or false. Lines: "key = value",
 * ';' and '#' start comments.
 */
static bool ini_get(const char *text, const char *id, const char *key, char *out, size_t len)
{
	char *copy = strdup(text), *save = NULL;
	char section[128] = "global", client[80];
	bool found = false;

	if (!copy)
		return false;
	snprintf(client, sizeof client, "client.%s", id);
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *c = strpbrk(line, "#;");
		if (c)
			*c = '\0';
		line = trim(line);
		if (line[0] == '[') {
			char *close = strchr(line, ']');
			if (close) {
				*close = '\0';
				snprintf(section, sizeof section, "%s", trim(line + 1));
			}
			continue;
		}
		char *eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq = '\0';
		if (!same_key(trim(line), key))
			continue;
		if (strcmp(section, "global") && strcmp(section, "client") && strcmp(section, client))
			continue;
		snprintf(out, len, "%s", trim(eq + 1));
		found = true;
	}
	free(copy);
	return found;
}

/*
 * mon_host with every name resolved: "[v2:1.2.3.4:3300/0,v1:...]", "a:6789,b",
 * "host" ... The driver has no resolver (no /etc, no UDP): it gets addresses.
 */
static int resolve_mon_host(struct isolde_remote *r, const char *spec, char *err, size_t errlen)
{
	char in[sizeof r->mon_host], out[sizeof r->mon_host] = "";
	size_t used = 0;

	snprintf(in, sizeof in, "%s", r->mon_host);
	for (char *save = NULL, *tok = strtok_r(in, ", ;", &save); tok; tok = strtok_r(NULL, ", ;", &save)) {
		char host[256], rest[64] = "", prefix[8] = "", addr[INET6_ADDRSTRLEN + 2];
		char *t = tok;
		/* The list's own brackets: "[v2:...,v1:...]" */
		if (t[0] == '[' && (strncmp(t + 1, "v1:", 3) == 0 || strncmp(t + 1, "v2:", 3) == 0))
			t++;
		size_t tl = strlen(t), open = 0, closed = 0;
		for (size_t i = 0; i < tl; i++)
			open += t[i] == '[', closed += t[i] == ']';
		while (closed > open && tl && t[tl - 1] == ']')
			t[--tl] = '\0', closed--;
		if (strncmp(t, "v1:", 3) == 0 || strncmp(t, "v2:", 3) == 0) {
			memcpy(prefix, t, 3);
			prefix[3] = '\0';
			t += 3;
		}
		/* host, [v6]:port, host:port, host:port/nonce */
		const char *h = t, *hend;
		if (*t == '[') {
			h = t + 1;
			hend = strchr(h, ']');
			if (!hend)
				return isolde_fail(err, errlen, "image %.200s: bad monitor address '%s'", spec, tok);
			snprintf(rest, sizeof rest, "%s", hend + 1);
		} else {
			hend = strpbrk(t, ":/");
			if (!hend)
				hend = t + strlen(t);
			snprintf(rest, sizeof rest, "%s", hend);
		}
		if (hend == h || (size_t)(hend - h) >= sizeof host)
			return isolde_fail(err, errlen, "image %.200s: bad monitor address '%s'", spec, tok);
		memcpy(host, h, (size_t)(hend - h));
		host[hend - h] = '\0';
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC }, *res;
		int e = getaddrinfo(host, NULL, &hints, &res);
		if (e)
			return isolde_fail(err, errlen, "image %.200s: cannot resolve monitor %s: %s", spec, host, gai_strerror(e));
		if (res->ai_family == AF_INET6) {
			addr[0] = '[';
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, addr + 1, sizeof addr - 2);
			strcat(addr, "]");
		} else {
			inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, addr, sizeof addr);
		}
		freeaddrinfo(res);
		int w = snprintf(out + used, sizeof out - used, "%s%s%s%s", used ? "," : "", prefix, addr, rest);
		if (w < 0 || (size_t)w >= sizeof out - used)
			return isolde_fail(err, errlen, "image %.200s: monitor list too long", spec);
		used += (size_t)w;
	}
	if (!used)
		return isolde_fail(err, errlen, "image %.200s: no monitor address (mon_host)", spec);
	snprintf(r->mon_host, sizeof r->mon_host, "%s", out);
	return 0;
}

static int read_ceph_config(struct isolde_remote *r, const char *spec, char *err, size_t errlen)
{
	char *conf = read_small_file(r->conf, "configuration", err, errlen);
	char value[PATH_MAX];

	if (!conf)
		return -1;
	if (!r->mon_host[0] && !ini_get(conf, r->id, "mon_host", r->mon_host, sizeof r->mon_host)) {
		free(conf);
		return isolde_fail(err, errlen, "image %.200s: the Ceph configuration %s names no mon_host", spec, r->conf);
	}
	if (!r->keyring[0]) {
		if (ini_get(conf, r->id, "keyring", value, sizeof value))
			snprintf(r->keyring, sizeof r->keyring, "%s", value);
		else
			snprintf(r->keyring, sizeof r->keyring, "/etc/ceph/ceph.client.%s.keyring", r->id);
	}
	free(conf);
	if (strstr(r->keyring, "$") || strchr(r->keyring, ','))
		return isolde_fail(err, errlen, "image %.200s: keyring '%s': give one path, without $variables", spec,
			    r->keyring);
	char *keyring = read_small_file(r->keyring, "keyring", err, errlen);
	if (!keyring)
		return -1;
	bool have = ini_get(keyring, r->id, "key", r->key, sizeof r->key);
	/* Only the client's own section counts for the key. */
	char section[80];
	snprintf(section, sizeof section, "[client.%s]", r->id);
	if (!strstr(keyring, section))
		have = false;
	explicit_bzero(keyring, strlen(keyring));
	free(keyring);
	if (!have || !r->key[0])
		return isolde_fail(err, errlen, "image %.200s: the keyring %s has no key for client.%s", spec, r->keyring, r->id);
	for (const char *k = r->key; *k; k++)
		if (!isalnum((unsigned char)*k) && *k != '+' && *k != '/' && *k != '=')
			return isolde_fail(err, errlen, "image %.200s: the key for client.%s in %s is not base64", spec, r->id,
				    r->keyring);
	return resolve_mon_host(r, spec, err, errlen);
}

static int rbd_config_fd(struct isolde_remote *r, char *err, size_t errlen)
{
	char text[2048];
	int n = snprintf(text, sizeof text, "id=%s\npool=%s\nimage=%s\n%s%s%smon_host=%s\nkey=%s\n", r->id, r->pool,
			 r->image, r->snap[0] ? "snap=" : "", r->snap, r->snap[0] ? "\n" : "", r->mon_host, r->key);
	int fd = memfd_create("isolde-rbd-config", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (n < 0 || (size_t)n >= sizeof text) {
		if (fd >= 0)
			close(fd);
		explicit_bzero(text, sizeof text);
		return isolde_fail(err, errlen, "the RBD configuration is too long");
	}
	if (fd < 0 || write(fd, text, (size_t)n) != n ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
		int e = errno;
		explicit_bzero(text, sizeof text);
		if (fd >= 0)
			close(fd);
		return isolde_fail(err, errlen, "cannot make the RBD configuration for the driver: %s", strerror(e));
	}
	explicit_bzero(text, sizeof text);
	/* The driver may only read it: a read-only description of it. */
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	close(fd);
	if (ro < 0)
		return isolde_fail(err, errlen, "cannot reopen the RBD configuration read-only: %s", strerror(errno));
	return ro;
}

/* ---- the interface ---- */

int isolde_remote_open(struct isolde_remote *r, const char *image, char *err, size_t errlen)
{
	memset(r, 0, sizeof *r);
	r->kind = isolde_remote_kind_of(image);
	switch (r->kind) {
	case ISOLDE_REMOTE_NBD:
		return parse_nbd(r, image, err, errlen) || resolve_nbd(r, image, err, errlen) ? -1 : 0;
	case ISOLDE_REMOTE_RBD:
		return parse_rbd(r, image, err, errlen) || read_ceph_config(r, image, err, errlen) ? -1 : 0;
	default:
		return isolde_fail(err, errlen, "image %.200s is not a remote image", image);
	}
}

int isolde_remote_device(void *ctx, char *err, size_t errlen)
{
	struct isolde_remote *r = ctx;

	return r->kind == ISOLDE_REMOTE_NBD ? connect_nbd(r, err, errlen) : rbd_config_fd(r, err, errlen);
}

void isolde_remote_close(struct isolde_remote *r)
{
	explicit_bzero(r->key, sizeof r->key);
}
