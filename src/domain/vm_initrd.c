// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "vm_initrd.h"
#include "write_all.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The kernel reads 4-byte-aligned newc records ("070701"): a header of
 * thirteen 8-digit hex fields, the name with its NUL, the data. */
#define NEWC_HEADER 110

static int pad4(int fd, size_t written)
{
	static const char zeros[4];
	size_t pad = (4 - written % 4) % 4;

	return pad && !isolde_write_all(fd, zeros, pad) ? -1 : 0;
}

static int record(int fd, unsigned ino, unsigned mode, const char *name, const unsigned char *data,
		  size_t len)
{
	char h[NEWC_HEADER + 1];
	size_t namesize = strlen(name) + 1;

	if (len > 0xffffffffu)
		return -1;
	snprintf(h, sizeof h, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", ino, mode, 0u, 0u,
		 1u, 0u, (unsigned)len, 0u, 0u, 0u, 0u, (unsigned)namesize, 0u);
	if (!isolde_write_all(fd, h, NEWC_HEADER) || !isolde_write_all(fd, name, namesize) ||
	    pad4(fd, NEWC_HEADER + namesize))
		return -1;
	if (len && (!isolde_write_all(fd, data, len) || pad4(fd, len)))
		return -1;
	return 0;
}

int isolde_vm_initrd(const unsigned char *base, size_t base_len, const struct isolde_initrd_file *files,
		     unsigned nfiles, char *err, size_t errlen)
{
	int fd = memfd_create("isolde-vm-initrd", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0) {
		snprintf(err, errlen, "cannot make the VM's initramfs: %s", strerror(errno));
		return -1;
	}
	/* The appended archive starts on a 4-byte boundary of the whole. */
	bool ok = isolde_write_all(fd, base, base_len) && pad4(fd, base_len) == 0;
	for (unsigned i = 0; ok && i < nfiles; i++)
		ok = record(fd, 1000 + i, S_IFREG | (files[i].mode & 07777), files[i].name, files[i].data,
			    files[i].len) == 0;
	ok = ok && record(fd, 0, 0, "TRAILER!!!", NULL, 0) == 0;
	/* QEMU reads it; nothing may change it under the guest. */
	ok = ok && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == 0;
	if (!ok) {
		snprintf(err, errlen, "cannot write the VM's initramfs: %s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}
