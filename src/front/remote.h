/* SPDX-License-Identifier: MIT */
/*
 * Remote images: a device on another machine, reached by its driver (blk-nbd,
 * blk-rbd) rather than opened by the front end. The trusted front end parses
 * the image name, reads whatever configuration and secrets it names, and for
 * every driver generation makes fd 6, which is all the driver gets:
 *
 *   nbd://HOST[:PORT]/EXPORT             (the NBD URI format; port 10809)
 *   nbd+unix:///EXPORT?socket=PATH       fd 6 is the connected socket, the
 *                                        handshake not started; the export
 *                                        name goes in argv (--export=NAME)
 *   rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=CLIENT][:keyring=PATH][:mon_host=ADDRS]
 *                                        (QEMU's rbd syntax) fd 6 is a
 *                                        sealed memfd of key=value lines:
 *                                        id, pool, image, snap, mon_host
 *                                        (IP addresses only: names are
 *                                        resolved here), key (the cephx
 *                                        secret). The driver reads no file.
 */
#ifndef ISOLDE_FRONT_REMOTE_H
#define ISOLDE_FRONT_REMOTE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

enum isolde_remote_kind { ISOLDE_REMOTE_NONE, ISOLDE_REMOTE_NBD, ISOLDE_REMOTE_RBD };

struct isolde_remote {
	enum isolde_remote_kind kind;
	/* NBD */
	bool unix_socket;
	char host[256];
	char port[8];
	char export_name[4097];
	struct sockaddr_storage addr; /* resolved once, at open */
	socklen_t addr_len;
	/* RBD */
	char pool[128];
	char image[256];
	char snap[256];
	char conf[PATH_MAX];
	char id[64];
	char keyring[PATH_MAX];
	char mon_host[1024];
	char key[128];
	char driver_arg[4200];  /* argv the driver gets: --export=NAME */
};

/* The kind of an image name: only a prefix is looked at. */
enum isolde_remote_kind isolde_remote_kind_of(const char *image);

/* The driver that serves a kind of remote image. */
const char *isolde_remote_driver(enum isolde_remote_kind kind);

/*
 * Parse a remote image name and do what needs doing once: resolve the NBD
 * host; read the Ceph configuration and keyring and resolve the monitors.
 * 0, or -1 with an error naming the part that is wrong.
 */
int isolde_remote_open(struct isolde_remote *r, const char *image, char *err, size_t errlen);

/* A generation's fd 6 (isolde_open_device_fn): connect (NBD), or a new
 * sealed memfd of the configuration (RBD). Bounded: never waits long. */
int isolde_remote_device(void *ctx, char *err, size_t errlen);

/* Forget the secret. */
void isolde_remote_close(struct isolde_remote *r);

#endif
