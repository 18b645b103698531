// SPDX-License-Identifier: MIT
/* Unit tests: remote image names (src/front/remote.c) - NBD URIs and rbd:
 * specs, good and hostile, and what the RBD configuration memfd holds. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "remote.h"

static struct isolde_remote r;
static char err[512];

static int open_remote(const char *image)
{
	err[0] = '\0';
	return isolde_remote_open(&r, image, err, sizeof err);
}

static void expect_error(const char *image, const char *needle)
{
	if (open_remote(image) == 0)
		fail_msg("accepted %s", image);
	if (!strstr(err, needle))
		fail_msg("%s: error '%s' does not say '%s'", image, err, needle);
}

static void test_kinds(void **state)
{
	(void)state;
	assert_int_equal(isolde_remote_kind_of("nbd://h/x"), ISOLDE_REMOTE_NBD);
	assert_int_equal(isolde_remote_kind_of("nbd+unix:///x?socket=/s"), ISOLDE_REMOTE_NBD);
	assert_int_equal(isolde_remote_kind_of("nbds://h/x"), ISOLDE_REMOTE_NBD);
	assert_int_equal(isolde_remote_kind_of("rbd:p/i"), ISOLDE_REMOTE_RBD);
	assert_int_equal(isolde_remote_kind_of("/tmp/disk.img"), ISOLDE_REMOTE_NONE);
	assert_int_equal(isolde_remote_kind_of("nbdimage"), ISOLDE_REMOTE_NONE);
	assert_string_equal(isolde_remote_driver(ISOLDE_REMOTE_RBD), "blk-rbd");
}

static void test_nbd_tcp(void **state)
{
	(void)state;
	assert_int_equal(open_remote("nbd://127.0.0.1:10810/my%20disk"), 0);
	assert_false(r.unix_socket);
	assert_string_equal(r.host, "127.0.0.1");
	assert_string_equal(r.port, "10810");
	assert_string_equal(r.export_name, "my disk");
	assert_string_equal(r.driver_arg, "--export=my disk");
	assert_int_equal(open_remote("nbd://127.0.0.1"), 0);
	assert_string_equal(r.port, "10809");
	assert_string_equal(r.export_name, "");
	assert_int_equal(open_remote("nbd://[::1]:99/e"), 0);
	assert_string_equal(r.host, "::1");
	assert_string_equal(r.port, "99");
}

static void test_nbd_unix(void **state)
{
	(void)state;
	assert_int_equal(open_remote("nbd+unix:///exp?socket=/run/nbd.sock"), 0);
	assert_true(r.unix_socket);
	assert_string_equal(((struct sockaddr_un *)&r.addr)->sun_path, "/run/nbd.sock");
	assert_string_equal(r.export_name, "exp");
	assert_int_equal(open_remote("nbd+unix://?socket=/s"), 0);
	assert_string_equal(r.export_name, "");
}

static void test_nbd_hostile(void **state)
{
	(void)state;
	char long_path[300], long_name[5000];

	expect_error("nbds://h/x", "TLS");
	expect_error("nbd+ssh://h/x", "expected nbd://");
	expect_error("nbd://:10809/x", "no host");
	expect_error("nbd://h:0/x", "not in 1..65535");
	expect_error("nbd://h:65536/x", "not in 1..65535");
	expect_error("nbd://h:12ab/x", "not in 1..65535");
	expect_error("nbd://h:/x", "bad port");
	expect_error("nbd://[::1/x", "unclosed");
	expect_error("nbd://h/a%00b", "bad export name");
	expect_error("nbd://h/a%4", "bad export name");
	expect_error("nbd://h/a%zz", "bad export name");
	expect_error("nbd+unix:///x", "needs ?socket=PATH");
	expect_error("nbd+unix://host/x?socket=/s", "takes no host");
	expect_error("nbd+unix:///x?socket=", "socket path empty");
	expect_error("nbd+unix:///x?sock=/s", "unknown query parameter 'sock'");
	expect_error("nbd+unix:///x?socket", "has no value");
	expect_error("nbd://h/x?socket=/s", "unknown query parameter");
	memset(long_path, 'a', sizeof long_path - 1);
	long_path[sizeof long_path - 1] = '\0';
	char uri[sizeof long_path + 64];
	snprintf(uri, sizeof uri, "nbd+unix:///x?socket=/%s", long_path);
	expect_error(uri, "longer than");
	memset(long_name, 'n', sizeof long_name - 1);
	long_name[sizeof long_name - 1] = '\0';
	char *big = malloc(sizeof long_name + 32);
	snprintf(big, sizeof long_name + 32, "nbd://h/%s", long_name);
	expect_error(big, "bad export name");
	free(big);
	expect_error("nbd://no-such-host.invalid/x", "cannot resolve host");
}

/* ---- rbd ---- */

static char dir[64], conf[128], keyring[128];

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup_ceph(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/isolde-remote-test-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(conf, sizeof conf, "%s/ceph.conf", dir);
	snprintf(keyring, sizeof keyring, "%s/k.keyring", dir);
	return 0;
}

static int teardown_ceph(void **state)
{
	(void)state;
	unlink(conf);
	unlink(keyring);
	rmdir(dir);
	return 0;
}

static char spec[512];

static const char *rbd_spec(const char *tail)
{
	snprintf(spec, sizeof spec, "rbd:pool/img%s:conf=%s:id=isolde", tail, conf);
	return spec;
}

static void test_rbd_good(void **state)
{
	(void)state;
	write_file(conf, "[global]\n  mon host = [v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0] ; comment\n"
			 "[client.isolde]\nkeyring = KEYRING\n");
	char text[512];
	snprintf(text, sizeof text, "[global]\nmon_host = [v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]\n"
				    "[client.isolde]\nkeyring = %s\n", keyring);
	write_file(conf, text);
	write_file(keyring, "[client.other]\n\tkey = AAAAother==\n[client.isolde]\n\tkey = AQBzbm9rZXkK+/==\n");
	assert_int_equal(open_remote(rbd_spec("@snap1")), 0);
	assert_string_equal(r.pool, "pool");
	assert_string_equal(r.image, "img");
	assert_string_equal(r.snap, "snap1");
	assert_string_equal(r.key, "AQBzbm9rZXkK+/==");
	assert_string_equal(r.mon_host, "v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0");
	/* Names are resolved: the driver has no resolver. */
	snprintf(spec, sizeof spec, "rbd:pool/img:conf=%s:id=isolde:mon_host=localhost\\:6789", conf);
	assert_int_equal(open_remote(spec), 0);
	assert_true(strcmp(r.mon_host, "127.0.0.1:6789") == 0 || strcmp(r.mon_host, "[::1]:6789") == 0);

	/* What the driver gets: a sealed, read-only memfd of key=value lines. */
	int fd = isolde_remote_device(&r, err, sizeof err);
	assert_true(fd >= 0);
	char buf[1024] = "";
	assert_true(pread(fd, buf, sizeof buf - 1, 0) > 0);
	assert_non_null(strstr(buf, "id=isolde\npool=pool\nimage=img\n"));
	assert_non_null(strstr(buf, "key=AQBzbm9rZXkK+/==\n"));
	assert_int_equal(write(fd, "x", 1), -1);
	assert_true((fcntl(fd, F_GET_SEALS) & (F_SEAL_WRITE | F_SEAL_SEAL)) == (F_SEAL_WRITE | F_SEAL_SEAL));
	close(fd);
	isolde_remote_close(&r);
	assert_int_equal(r.key[0], '\0');
}

static void test_rbd_hostile(void **state)
{
	(void)state;
	char text[512];

	snprintf(text, sizeof text, "[global]\nmon_host = 127.0.0.1:6789\nkeyring = %s\n", keyring);
	write_file(conf, text);
	write_file(keyring, "[client.isolde]\nkey = AQBzbm9rZXkK==\n");
	expect_error("rbd:poolonly", "expected rbd:POOL/IMAGE");
	expect_error("rbd:/img", "empty pool");
	expect_error("rbd:pool/", "empty image name");
	expect_error("rbd:pool/img@", "empty snapshot");
	expect_error("rbd:pool/ns/img", "namespaces");
	expect_error("rbd:pool/img:bogus=1", "unknown option 'bogus'");
	expect_error("rbd:pool/img:conf", "has no value");
	expect_error("rbd:pool/im g", "space, control character");
	expect_error("rbd:pool/img:id=a\\b", "space, control character");
	expect_error("rbd:pool/img:conf=/nonexistent/ceph.conf", "cannot read the Ceph configuration /nonexistent");
	snprintf(spec, sizeof spec, "rbd:pool/img:conf=%s:id=nobody", conf);
	expect_error(spec, "has no key for client.nobody");
	snprintf(spec, sizeof spec, "rbd:pool/img:conf=%s:id=isolde:keyring=/nonexistent", conf);
	expect_error(spec, "cannot read the Ceph keyring /nonexistent");
	/* A key that would add lines to the driver's configuration. */
	write_file(keyring, "[client.isolde]\nkey = AQB==x,mon_host=evil\n");
	expect_error(rbd_spec(""), "not base64");
	write_file(keyring, "[client.isolde]\nkey = AQBzbm9rZXkK==\n");
	write_file(conf, "[global]\nfsid = x\n");
	expect_error(rbd_spec(""), "names no mon_host");
	snprintf(text, sizeof text, "[global]\nmon_host = no-such-host.invalid:6789\nkeyring = %s\n", keyring);
	write_file(conf, text);
	expect_error(rbd_spec(""), "cannot resolve monitor");
	snprintf(text, sizeof text, "[global]\nmon_host = 127.0.0.1\nkeyring = %s/$cluster.keyring\n", dir);
	write_file(conf, text);
	expect_error(rbd_spec(""), "without $variables");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kinds),
		cmocka_unit_test(test_nbd_tcp),
		cmocka_unit_test(test_nbd_unix),
		cmocka_unit_test(test_nbd_hostile),
		cmocka_unit_test_setup_teardown(test_rbd_good, setup_ceph, teardown_ceph),
		cmocka_unit_test_setup_teardown(test_rbd_hostile, setup_ceph, teardown_ceph),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
