/* SPDX-License-Identifier: MIT */
/*
 * agent_exit.h - how a VM driver domain tells the host how its driver ended:
 * through QEMU's exit status, the one channel that survives the guest.
 *
 * The guest's init (isolde-vm-agent, guest_agent.c) writes one 32-bit value
 * to QEMU's isa-debug-exit device (-device isa-debug-exit,iobase=0xf4,
 * iosize=0x04); QEMU then exits at once with status (value << 1) | 1, which
 * is always odd. The values are chosen so that every status has one meaning:
 *
 *   QEMU status  value     meaning
 *   0            -         a plain poweroff or reboot (-no-reboot): not the
 *                          agent's doing
 *   1            (0)       QEMU's own failure, or the guest kernel panicked
 *                          (pvpanic with -action panic=exit-failure); the
 *                          agent never writes 0
 *   3..127       1..63     the driver exited with code c: value 1 + min(c, 62),
 *                          so status 127 means "62 or more"; a start failure
 *                          in the agent (before or at the exec) is reported as
 *                          code 127 and so lands there too
 *   131..255     65..127   the driver was killed by signal n (1..63):
 *                          value 64 + n (64, Linux's SIGRTMAX, is reported as 63)
 *
 * Anything else (an even status other than 0, 129) is not made by this
 * scheme. A host that kills QEMU itself sees that in its own wait status
 * (killed by a signal), not here.
 */
#ifndef ISOLDE_VM_AGENT_EXIT_H
#define ISOLDE_VM_AGENT_EXIT_H

#include <stdint.h>

#define ISOLDE_VM_EXIT_IOBASE 0xf4
#define ISOLDE_VM_EXIT_IOSIZE 4

/* Exit codes from this one up are all reported as this one. */
#define ISOLDE_VM_EXIT_CODE_MAX 62
/* Signals from this one up are all reported as this one. */
#define ISOLDE_VM_EXIT_SIGNAL_MAX 63
/* The exit code the agent reports when it could not start the driver. */
#define ISOLDE_VM_EXIT_START_FAILED 127

#define ISOLDE_VM_STATUS_POWEROFF 0
#define ISOLDE_VM_STATUS_FAILURE 1

enum isolde_vm_end {
	ISOLDE_VM_END_POWEROFF, /* status 0 */
	ISOLDE_VM_END_FAILURE,	/* status 1: QEMU failed or the guest panicked */
	ISOLDE_VM_END_EXITED,	/* *value: the exit code, CODE_MAX meaning that or more */
	ISOLDE_VM_END_SIGNALED, /* *value: the signal, SIGNAL_MAX meaning that or more */
	ISOLDE_VM_END_UNKNOWN,	/* a status this scheme does not make */
};

/* The value the agent writes for a driver that exited with code (0..255). */
static inline uint32_t isolde_vm_exit_value_exited(int code)
{
	if (code < 0)
		code = ISOLDE_VM_EXIT_CODE_MAX;
	return 1u + (uint32_t)(code < ISOLDE_VM_EXIT_CODE_MAX ? code : ISOLDE_VM_EXIT_CODE_MAX);
}

/* The value the agent writes for a driver killed by signal sig (1..64). */
static inline uint32_t isolde_vm_exit_value_signaled(int sig)
{
	if (sig < 1 || sig > ISOLDE_VM_EXIT_SIGNAL_MAX)
		sig = ISOLDE_VM_EXIT_SIGNAL_MAX;
	return 64u + (uint32_t)sig;
}

/* The status QEMU exits with when the guest writes value. */
static inline int isolde_vm_exit_status(uint32_t value)
{
	return (int)(((value << 1) | 1u) & 0xffu);
}

/* What QEMU's exit status (0..255, from WEXITSTATUS) says about the driver. */
static inline enum isolde_vm_end isolde_vm_exit_decode(int status, int *value)
{
	*value = 0;
	if (status == ISOLDE_VM_STATUS_POWEROFF)
		return ISOLDE_VM_END_POWEROFF;
	if (status == ISOLDE_VM_STATUS_FAILURE)
		return ISOLDE_VM_END_FAILURE;
	if (status < 0 || status > 255 || !(status & 1))
		return ISOLDE_VM_END_UNKNOWN;
	int v = status >> 1;
	if (v >= 1 && v <= 1 + ISOLDE_VM_EXIT_CODE_MAX) {
		*value = v - 1;
		return ISOLDE_VM_END_EXITED;
	}
	if (v >= 65 && v <= 64 + ISOLDE_VM_EXIT_SIGNAL_MAX) {
		*value = v - 64;
		return ISOLDE_VM_END_SIGNALED;
	}
	return ISOLDE_VM_END_UNKNOWN;
}

#endif
