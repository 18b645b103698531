/* SPDX-License-Identifier: MIT */
/*
 * A VM domain's initramfs for one generation: the guest's own (compressed)
 * archive with an uncompressed newc cpio appended, which the kernel unpacks
 * over it. The result is a sealed memfd QEMU reads as -initrd.
 */
#ifndef ISOLDE_DOMAIN_VM_INITRD_H
#define ISOLDE_DOMAIN_VM_INITRD_H

#include <stddef.h>

struct isolde_initrd_file {
	const char *name;            /* relative, like "isolde/driver" */
	unsigned mode;               /* permission bits */
	const unsigned char *data;
	size_t len;
};

/* Returns the memfd, or -1 with err. */
int isolde_vm_initrd(const unsigned char *base, size_t base_len, const struct isolde_initrd_file *files,
		     unsigned nfiles, char *err, size_t errlen);

#endif
