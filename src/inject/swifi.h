/* SPDX-License-Identifier: MIT */
/*
 * Software-implemented fault injection (SWIFI) into a driver's own code:
 * the classic fault model of the Nooks and MINIX 3 campaigns, applied as
 * mutations of the driver's machine code (or, for "heap", of its data).
 *
 * The driver's code is found from its ELF symbol table (the functions of
 * isolde's driver sources, not libc) and decoded with capstone; each fault
 * type picks an instruction it applies to and mutates it in place, keeping
 * its length. Every register or pointer mutation is decoded again to confirm
 * it changed what the fault type says (a source register, a destination
 * register, a memory operand).
 */
#ifndef ISOLDE_INJECT_SWIFI_H
#define ISOLDE_INJECT_SWIFI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum swifi_fault {
	SWIFI_SOURCE_REGISTER,  /* a register an instruction reads is swapped for another */
	SWIFI_DEST_REGISTER,    /* a register an instruction writes is swapped for another */
	SWIFI_POINTER,          /* a memory operand's base or displacement is corrupted */
	SWIFI_INTERFACE,        /* an argument load before a call is removed (NOPs) */
	SWIFI_BRANCH,           /* a conditional branch (or loop condition) is inverted */
	SWIFI_BIT_FLIP,         /* one random bit of an instruction is flipped */
	SWIFI_NOP,              /* an instruction is replaced by NOPs */
	SWIFI_HEAP,             /* one bit of the heap or data an instruction reads is flipped as it reads it */
	SWIFI_COUNT
};

const char *swifi_fault_name(enum swifi_fault f);
int swifi_fault_parse(const char *name, enum swifi_fault *f);

#define SWIFI_MAX_INSN 15
#define SWIFI_MAX_OBJECTS 4   /* the driver's binary and the libraries in its fault space */

struct swifi_insn {
	uint64_t addr;
	uint8_t size;
	uint8_t object;           /* whose code: 0 the driver's binary, then the libraries added */
	uint8_t bytes[SWIFI_MAX_INSN];
	char text[64];            /* "mov rdi, qword ptr [rbx + 8]" */
	char function[48];
};

struct swifi_code;            /* the decoded text of one driver binary */

/* Decode the driver's own functions from its executable (static, or a PIE:
 * then addresses are relative to its load base). */
struct swifi_code *swifi_load(const char *binary, char *err, size_t errlen);
/* Add a shared library's exported functions whose names start with prefix
 * (a library's own code the driver runs, such as librbd's C API). */
int swifi_add_library(struct swifi_code *c, const char *library, const char *prefix, char *err, size_t errlen);
/* Where process pid has each object loaded (0 for a static executable):
 * 0, or -1 if one is not in pid's maps. Add an instruction's object's base
 * to its address. */
int swifi_load_bases(const struct swifi_code *c, pid_t pid, uint64_t bases[SWIFI_MAX_OBJECTS]);
size_t swifi_object_insn_count(const struct swifi_code *c, unsigned object);
void swifi_free(struct swifi_code *c);
size_t swifi_insn_count(const struct swifi_code *c);

/*
 * Pick an instruction the fault applies to (using *rng) and compute its
 * mutation. Returns 0 with the original in *insn and the mutated bytes in
 * mutated[] (same length), or -1 if no instruction fits. With function,
 * only that function's instructions are candidates. SWIFI_HEAP picks
 * an instruction that reads memory at an address the tracer can compute
 * (swifi_read_address); its "mutation" is the original bytes.
 */
int swifi_pick(const struct swifi_code *c, enum swifi_fault f, const char *function, uint64_t *rng,
	       struct swifi_insn *insn, uint8_t mutated[SWIFI_MAX_INSN], char *what, size_t whatlen);
bool swifi_has_function(const struct swifi_code *c, const char *function);

struct user_regs_struct;
/* The address and length of the memory insn reads, with the registers it
 * is about to run with (stopped at its address); 0, or -1. */
int swifi_read_address(const struct swifi_code *c, const struct swifi_insn *insn,
		       const struct user_regs_struct *regs, uint64_t *addr, unsigned *len);

#endif
