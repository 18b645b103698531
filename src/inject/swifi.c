// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
#include "swifi.h"

#include <capstone/capstone.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/user.h>
#include <unistd.h>

static const char *const fault_names[SWIFI_COUNT] = {
	"source-register", "destination-register", "pointer", "interface", "branch", "bit-flip", "nop",
	"heap",
};

const char *swifi_fault_name(enum swifi_fault f)
{
	return (unsigned)f < SWIFI_COUNT ? fault_names[f] : "unknown";
}

int swifi_fault_parse(const char *name, enum swifi_fault *f)
{
	for (int i = 0; i < SWIFI_COUNT; i++) {
		if (strcmp(name, fault_names[i]) == 0) {
			*f = (enum swifi_fault)i;
			return 0;
		}
	}
	return -1;
}

struct swifi_object {
	bool pie;                 /* addresses are relative to where it is loaded */
	dev_t dev;                /* the file, to find that place in /proc/PID/maps */
	ino_t ino;
	size_t insns;
};

struct swifi_code {
	csh cs;
	struct swifi_insn *insns;
	size_t n, cap;
	unsigned nobjects;
	struct swifi_object objects[SWIFI_MAX_OBJECTS];
};

size_t swifi_insn_count(const struct swifi_code *c) { return c->n; }

/* Functions that are isolde's driver code, by name; static functions
 * between them in the text are included by address (see swifi_load). */
static bool ours(const char *name)
{
	return strncmp(name, "isolde_", 7) == 0 || strncmp(name, "blk_file_", 9) == 0 ||
	       strncmp(name, "blk_uring_", 10) == 0 || strncmp(name, "blk_nbd_", 8) == 0 ||
	       strncmp(name, "blk_rbd_", 8) == 0 || strncmp(name, "net_tap_", 8) == 0 || strcmp(name, "main") == 0;
}

struct func {
	uint64_t addr, size;
	const char *name;
};

static int by_addr(const void *a, const void *b)
{
	const struct func *x = a, *y = b;
	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static uint64_t next_rand(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Is a function in the fault space: isolde's driver code (by name, and
 * static functions between, by address), or a library's exported functions
 * whose names start with prefix. */
static bool wanted(const struct func *f, const char *prefix, uint64_t lo, uint64_t hi)
{
	return prefix ? strncmp(f->name, prefix, strlen(prefix)) == 0 : f->addr >= lo && f->addr < hi;
}

/* Decode an object's functions into c: the driver's own (prefix NULL, from
 * its symbol table) or a library's exported ones (from its dynamic symbol
 * table, which a stripped library keeps). */
static int load_object(struct swifi_code *c, const char *path, const char *prefix, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *img = MAP_FAILED;
	struct func *funcs = NULL;
	size_t nfuncs = 0, first = c->n;
	int rc = -1;

	if (c->nobjects == SWIFI_MAX_OBJECTS) {
		snprintf(err, errlen, "%s: no room for another object", path);
		goto out;
	}
	if (fd < 0 || fstat(fd, &st) != 0 ||
	    (img = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
	if ((size_t)st.st_size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64 ||
	    (eh->e_type != ET_EXEC && eh->e_type != ET_DYN) || eh->e_shoff == 0 ||
	    eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) > (uint64_t)st.st_size) {
		snprintf(err, errlen, "%s is not an x86-64 executable or library", path);
		goto out;
	}
	const Elf64_Shdr *sh = (const Elf64_Shdr *)(img + eh->e_shoff);
	const Elf64_Shdr *symtab = NULL, *strtab = NULL;
	for (int i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type == (prefix ? SHT_DYNSYM : SHT_SYMTAB) && sh[i].sh_link < eh->e_shnum) {
			symtab = &sh[i];
			strtab = &sh[sh[i].sh_link];
		}
	}
	if (!symtab) {
		snprintf(err, errlen, "%s has no %s (stripped?)", path, prefix ? "dynamic symbol table" : "symbol table");
		goto out;
	}
	const Elf64_Sym *syms = (const Elf64_Sym *)(img + symtab->sh_offset);
	size_t nsyms = symtab->sh_size / sizeof *syms;
	const char *names = (const char *)(img + strtab->sh_offset);
	funcs = calloc(nsyms ? nsyms : 1, sizeof *funcs);
	uint64_t lo = UINT64_MAX, hi = 0;
	for (size_t i = 0; funcs && i < nsyms; i++) {
		if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC || syms[i].st_size == 0 ||
		    syms[i].st_shndx == SHN_UNDEF || syms[i].st_shndx >= eh->e_shnum ||
		    syms[i].st_name >= strtab->sh_size)
			continue;
		funcs[nfuncs++] = (struct func){ syms[i].st_value, syms[i].st_size, names + syms[i].st_name };
		if (ours(names + syms[i].st_name)) {
			lo = syms[i].st_value < lo ? syms[i].st_value : lo;
			hi = syms[i].st_value + syms[i].st_size > hi ? syms[i].st_value + syms[i].st_size : hi;
		}
	}
	if (!prefix && hi == 0) {
		snprintf(err, errlen, "%s has no isolde driver functions", path);
		goto out;
	}
	qsort(funcs, nfuncs, sizeof *funcs, by_addr);

	for (size_t f = 0; f < nfuncs; f++) {
		if (!wanted(&funcs[f], prefix, lo, hi) || (f && funcs[f].addr == funcs[f - 1].addr))
			continue;
		/* File offset of the function: through the section holding it. */
		const Elf64_Shdr *text = NULL;
		for (int i = 0; i < eh->e_shnum; i++)
			if (sh[i].sh_type == SHT_PROGBITS && (sh[i].sh_flags & SHF_EXECINSTR) &&
			    funcs[f].addr >= sh[i].sh_addr &&
			    funcs[f].addr + funcs[f].size <= sh[i].sh_addr + sh[i].sh_size &&
			    sh[i].sh_offset + sh[i].sh_size <= (uint64_t)st.st_size)
				text = &sh[i];
		if (!text)
			continue;
		const uint8_t *code = img + text->sh_offset + (funcs[f].addr - text->sh_addr);
		cs_insn *insn;
		size_t count = cs_disasm(c->cs, code, funcs[f].size, funcs[f].addr, 0, &insn);
		for (size_t k = 0; k < count; k++) {
			if (c->n == c->cap) {
				size_t cap = c->cap ? 2 * c->cap : 4096;
				struct swifi_insn *more = realloc(c->insns, cap * sizeof *more);
				if (!more)
					break;
				c->insns = more;
				c->cap = cap;
			}
			struct swifi_insn *si = &c->insns[c->n++];
			si->addr = insn[k].address;
			si->size = (uint8_t)insn[k].size;
			si->object = (uint8_t)c->nobjects;
			memcpy(si->bytes, insn[k].bytes, insn[k].size);
			snprintf(si->text, sizeof si->text, "%.31s %.31s", insn[k].mnemonic, insn[k].op_str);
			snprintf(si->function, sizeof si->function, "%s", funcs[f].name);
		}
		cs_free(insn, count);
	}
	if (c->n == first) {
		snprintf(err, errlen, "%s: nothing decoded", path);
		goto out;
	}
	c->objects[c->nobjects++] = (struct swifi_object){
		.pie = eh->e_type == ET_DYN, .dev = st.st_dev, .ino = st.st_ino, .insns = c->n - first
	};
	rc = 0;
out:
	free(funcs);
	if (img != MAP_FAILED)
		munmap(img, (size_t)st.st_size);
	if (fd >= 0)
		close(fd);
	return rc;
}

struct swifi_code *swifi_load(const char *binary, char *err, size_t errlen)
{
	struct swifi_code *c = calloc(1, sizeof *c);

	if (!c || cs_open(CS_ARCH_X86, CS_MODE_64, &c->cs) != CS_ERR_OK) {
		snprintf(err, errlen, "capstone: cannot open x86-64");
		free(c);
		return NULL;
	}
	cs_option(c->cs, CS_OPT_DETAIL, CS_OPT_ON);
	if (load_object(c, binary, NULL, err, errlen) != 0) {
		swifi_free(c);
		return NULL;
	}
	return c;
}

int swifi_add_library(struct swifi_code *c, const char *library, const char *prefix, char *err, size_t errlen)
{
	return load_object(c, library, prefix, err, errlen);
}

size_t swifi_object_insn_count(const struct swifi_code *c, unsigned object)
{
	return object < c->nobjects ? c->objects[object].insns : 0;
}

int swifi_load_bases(const struct swifi_code *c, pid_t pid, uint64_t bases[SWIFI_MAX_OBJECTS])
{
	char path[64], line[512];
	unsigned found = 0, needed = 0;

	for (unsigned k = 0; k < c->nobjects; k++) {
		bases[k] = 0;
		needed += c->objects[k].pie;
	}
	if (!needed)
		return 0;
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	while (found < needed && fgets(line, sizeof line, f)) {
		unsigned long long start, offset, inode;
		unsigned major, minor;
		if (sscanf(line, "%llx-%*x %*s %llx %x:%x %llu", &start, &offset, &major, &minor, &inode) != 5 ||
		    offset != 0)
			continue;
		for (unsigned k = 0; k < c->nobjects; k++) {
			const struct swifi_object *o = &c->objects[k];
			if (o->pie && !bases[k] && inode == (unsigned long long)o->ino && makedev(major, minor) == o->dev) {
				bases[k] = start;
				found++;
			}
		}
	}
	fclose(f);
	return found == needed ? 0 : -1;
}

void swifi_free(struct swifi_code *c)
{
	if (!c)
		return;
	cs_close(&c->cs);
	free(c->insns);
	free(c);
}

/* Decode one instruction (with detail); NULL if the bytes are not one. */
static cs_insn *decode(const struct swifi_code *c, const uint8_t *bytes, size_t size, uint64_t addr)
{
	cs_insn *insn;
	size_t n = cs_disasm(c->cs, bytes, size, addr, 1, &insn);

	if (n == 1 && insn->size == size)
		return insn;
	if (n)
		cs_free(insn, n);
	return NULL;
}

/* Registers an instruction's explicit operands read / write. */
static void operand_regs(const cs_insn *insn, unsigned access, unsigned *regs, int *n)
{
	const cs_x86 *x = &insn->detail->x86;

	*n = 0;
	for (int i = 0; i < x->op_count; i++)
		if (x->operands[i].type == X86_OP_REG && (x->operands[i].access & access))
			regs[(*n)++] = x->operands[i].reg;
}

static bool same_regs(const unsigned *a, int na, const unsigned *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

static bool mem_operand(const cs_insn *insn, x86_op_mem *m)
{
	const cs_x86 *x = &insn->detail->x86;
	for (int i = 0; i < x->op_count; i++) {
		if (x->operands[i].type == X86_OP_MEM) {
			*m = x->operands[i].mem;
			return true;
		}
	}
	return false;
}

/*
 * Register faults: flip a bit of the ModRM reg or rm field (register form)
 * and keep the mutation only if a register of the wanted kind changed and
 * the instruction still decodes to the same length.
 */
static bool mutate_register(const struct swifi_code *c, const struct swifi_insn *si, bool dest, uint64_t *rng,
			    uint8_t *out)
{
	cs_insn *orig = decode(c, si->bytes, si->size, si->addr);
	bool ok = false;

	if (!orig)
		return false;
	const cs_x86 *x = &orig->detail->x86;
	unsigned want = dest ? CS_AC_WRITE : CS_AC_READ;
	unsigned before[8], after[8];
	int nb, na;
	operand_regs(orig, want, before, &nb);
	if (x->encoding.modrm_offset == 0 || (x->modrm >> 6) != 3 || nb == 0)
		goto out;
	for (int attempt = 0; attempt < 6 && !ok; attempt++) {
		unsigned bit = (unsigned)(next_rand(rng) % 6); /* rm bits 0-2, reg bits 3-5 */
		memcpy(out, si->bytes, si->size);
		out[x->encoding.modrm_offset] ^= (uint8_t)(1u << bit);
		cs_insn *mut = decode(c, out, si->size, si->addr);
		if (!mut)
			continue;
		operand_regs(mut, want, after, &na);
		if (!same_regs(before, nb, after, na)) {
			/* A source fault must leave the destination alone, and
			 * the other way round, so the type says what changed. */
			unsigned ob[8], oa[8];
			int nob, noa;
			operand_regs(orig, dest ? CS_AC_READ : CS_AC_WRITE, ob, &nob);
			operand_regs(mut, dest ? CS_AC_READ : CS_AC_WRITE, oa, &noa);
			unsigned only_other_before[8], only_other_after[8];
			int k1 = 0, k2 = 0;
			for (int i = 0; i < nob; i++) {
				bool shared = false;
				for (int j = 0; j < nb; j++)
					shared |= ob[i] == before[j];
				if (!shared)
					only_other_before[k1++] = ob[i];
			}
			for (int i = 0; i < noa; i++) {
				bool shared = false;
				for (int j = 0; j < na; j++)
					shared |= oa[i] == after[j];
				if (!shared)
					only_other_after[k2++] = oa[i];
			}
			ok = same_regs(only_other_before, k1, only_other_after, k2);
		}
		cs_free(mut, 1);
	}
out:
	cs_free(orig, 1);
	return ok;
}

static bool mutate_pointer(const struct swifi_code *c, const struct swifi_insn *si, uint64_t *rng, uint8_t *out)
{
	cs_insn *orig = decode(c, si->bytes, si->size, si->addr);
	x86_op_mem before, after;
	bool ok = false;

	if (!orig)
		return false;
	const cs_x86 *x = &orig->detail->x86;
	if (!mem_operand(orig, &before) || before.base == X86_REG_RIP || x->encoding.modrm_offset == 0 ||
	    strncmp(orig->mnemonic, "lea", 3) == 0 || strncmp(orig->mnemonic, "nop", 3) == 0)
		goto out;
	for (int attempt = 0; attempt < 8 && !ok; attempt++) {
		memcpy(out, si->bytes, si->size);
		if (x->encoding.disp_size && (next_rand(rng) & 1)) {
			unsigned bit = (unsigned)(next_rand(rng) % (8u * x->encoding.disp_size));
			out[x->encoding.disp_offset + bit / 8] ^= (uint8_t)(1u << (bit % 8));
		} else if ((x->modrm & 7) != 4) {
			out[x->encoding.modrm_offset] ^= (uint8_t)(1u << (next_rand(rng) % 3)); /* base register */
		} else {
			continue;
		}
		cs_insn *mut = decode(c, out, si->size, si->addr);
		if (!mut)
			continue;
		ok = mem_operand(mut, &after) && memcmp(&before, &after, sizeof before) != 0 &&
		     strcmp(mut->mnemonic, orig->mnemonic) == 0;
		cs_free(mut, 1);
	}
out:
	cs_free(orig, 1);
	return ok;
}

/* A general register's value in regs (64-bit names and RIP); false for any
 * other register, whose value the tracer does not take. */
static bool reg_value(unsigned reg, const struct user_regs_struct *r, uint64_t next_rip, uint64_t *v)
{
	switch (reg) {
	case X86_REG_RAX: *v = r->rax; return true;
	case X86_REG_RBX: *v = r->rbx; return true;
	case X86_REG_RCX: *v = r->rcx; return true;
	case X86_REG_RDX: *v = r->rdx; return true;
	case X86_REG_RSI: *v = r->rsi; return true;
	case X86_REG_RDI: *v = r->rdi; return true;
	case X86_REG_RBP: *v = r->rbp; return true;
	case X86_REG_RSP: *v = r->rsp; return true;
	case X86_REG_R8: *v = r->r8; return true;
	case X86_REG_R9: *v = r->r9; return true;
	case X86_REG_R10: *v = r->r10; return true;
	case X86_REG_R11: *v = r->r11; return true;
	case X86_REG_R12: *v = r->r12; return true;
	case X86_REG_R13: *v = r->r13; return true;
	case X86_REG_R14: *v = r->r14; return true;
	case X86_REG_R15: *v = r->r15; return true;
	case X86_REG_RIP: *v = next_rip; return true;
	default: return false;
	}
}

/* The explicit memory operand an instruction reads, if its address is one
 * the tracer can compute: no segment override, base and index general
 * registers (or RIP) by their 64-bit names, not a stack slot by RSP. */
static bool read_operand(const cs_insn *insn, const cs_x86_op **op)
{
	const cs_x86 *x = &insn->detail->x86;
	struct user_regs_struct none = { 0 };
	uint64_t v;

	if (strncmp(insn->mnemonic, "lea", 3) == 0 || strncmp(insn->mnemonic, "nop", 3) == 0 ||
	    strncmp(insn->mnemonic, "prefetch", 8) == 0)
		return false;
	for (int i = 0; i < x->op_count; i++) {
		const cs_x86_op *o = &x->operands[i];
		if (o->type != X86_OP_MEM || !(o->access & CS_AC_READ) || o->size == 0 || o->size > 64)
			continue;
		if (o->mem.segment != X86_REG_INVALID || o->mem.base == X86_REG_RSP)
			return false;
		if ((o->mem.base != X86_REG_INVALID && !reg_value(o->mem.base, &none, 0, &v)) ||
		    (o->mem.index != X86_REG_INVALID && !reg_value(o->mem.index, &none, 0, &v)))
			return false;
		*op = o;
		return true;
	}
	return false;
}

int swifi_read_address(const struct swifi_code *c, const struct swifi_insn *si, const struct user_regs_struct *regs,
		       uint64_t *addr, unsigned *len)
{
	cs_insn *insn = decode(c, si->bytes, si->size, si->addr);
	const cs_x86_op *o;
	int rc = -1;

	if (!insn)
		return -1;
	if (read_operand(insn, &o)) {
		uint64_t base = 0, index = 0, next = si->addr + si->size;
		if ((o->mem.base == X86_REG_INVALID || reg_value(o->mem.base, regs, next, &base)) &&
		    (o->mem.index == X86_REG_INVALID || reg_value(o->mem.index, regs, next, &index))) {
			*addr = base + index * (uint64_t)(o->mem.scale ? o->mem.scale : 1) + (uint64_t)o->mem.disp;
			*len = o->size;
			rc = 0;
		}
	}
	cs_free(insn, 1);
	return rc;
}

static bool data_candidate(const struct swifi_code *c, const struct swifi_insn *si)
{
	cs_insn *insn = decode(c, si->bytes, si->size, si->addr);
	const cs_x86_op *o;

	if (!insn)
		return false;
	bool ok = read_operand(insn, &o);
	cs_free(insn, 1);
	return ok;
}

static bool is_arg_reg(unsigned reg)
{
	switch (reg) {
	case X86_REG_RDI: case X86_REG_EDI: case X86_REG_RSI: case X86_REG_ESI:
	case X86_REG_RDX: case X86_REG_EDX: case X86_REG_RCX: case X86_REG_ECX:
	case X86_REG_R8: case X86_REG_R8D: case X86_REG_R9: case X86_REG_R9D:
		return true;
	default:
		return false;
	}
}

/* A mov/lea into an argument register with a call within six instructions. */
static bool interface_candidate(const struct swifi_code *c, size_t i)
{
	const struct swifi_insn *si = &c->insns[i];
	cs_insn *insn;

	if (strncmp(si->text, "mov", 3) != 0 && strncmp(si->text, "lea", 3) != 0)
		return false;
	insn = decode(c, si->bytes, si->size, si->addr);
	if (!insn)
		return false;
	const cs_x86 *x = &insn->detail->x86;
	bool arg = x->op_count >= 1 && x->operands[0].type == X86_OP_REG && is_arg_reg(x->operands[0].reg);
	cs_free(insn, 1);
	for (size_t k = i + 1; arg && k < c->n && k <= i + 6; k++) {
		if (strcmp(c->insns[k].function, si->function) != 0)
			return false;
		if (strncmp(c->insns[k].text, "call", 4) == 0)
			return true;
	}
	return false;
}

static bool mutate(const struct swifi_code *c, size_t i, enum swifi_fault f, uint64_t *rng, uint8_t *out)
{
	const struct swifi_insn *si = &c->insns[i];
	const uint8_t *b = si->bytes;

	switch (f) {
	case SWIFI_NOP:
		memset(out, 0x90, si->size);
		return true;
	case SWIFI_BIT_FLIP: {
		unsigned bit = (unsigned)(next_rand(rng) % (8u * si->size));
		memcpy(out, b, si->size);
		out[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		return true;
	}
	case SWIFI_BRANCH:
		memcpy(out, b, si->size);
		if (si->size == 2 && b[0] >= 0x70 && b[0] <= 0x7f) {
			out[0] ^= 1;
			return true;
		}
		if (si->size == 6 && b[0] == 0x0f && b[1] >= 0x80 && b[1] <= 0x8f) {
			out[1] ^= 1;
			return true;
		}
		return false;
	case SWIFI_INTERFACE:
		if (!interface_candidate(c, i))
			return false;
		memset(out, 0x90, si->size);
		return true;
	case SWIFI_SOURCE_REGISTER:
		return mutate_register(c, si, false, rng, out);
	case SWIFI_DEST_REGISTER:
		return mutate_register(c, si, true, rng, out);
	case SWIFI_POINTER:
		return mutate_pointer(c, si, rng, out);
	case SWIFI_HEAP:
		/* The code stays; the tracer flips the data it reads. */
		memcpy(out, b, si->size);
		return data_candidate(c, si);
	default:
		return false;
	}
}

bool swifi_has_function(const struct swifi_code *c, const char *function)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->insns[i].function, function) == 0)
			return true;
	return false;
}

int swifi_pick(const struct swifi_code *c, enum swifi_fault f, const char *function, uint64_t *rng,
	       struct swifi_insn *insn, uint8_t mutated[SWIFI_MAX_INSN], char *what, size_t whatlen)
{
	if (c->n == 0)
		return -1;
	/* Random starting point, then walk until an instruction fits. */
	size_t start = (size_t)(next_rand(rng) % c->n);
	for (size_t k = 0; k < c->n; k++) {
		size_t i = (start + k) % c->n;
		if ((!function || strcmp(c->insns[i].function, function) == 0) && mutate(c, i, f, rng, mutated)) {
			*insn = c->insns[i];
			char hex[3 * SWIFI_MAX_INSN + 1] = "";
			for (int j = 0; j < insn->size; j++)
				snprintf(hex + 3 * j, 4, "%02x ", mutated[j]);
			if (f == SWIFI_HEAP) {
				snprintf(what, whatlen, "%s+0x%llx: %s reads a flipped bit", insn->function,
					 (unsigned long long)insn->addr, insn->text);
				return 0;
			}
			cs_insn *mut = decode(c, mutated, insn->size, insn->addr);
			snprintf(what, whatlen, "%s+0x%llx: %s -> %s", insn->function,
				 (unsigned long long)insn->addr, insn->text,
				 mut ? mut->mnemonic : hex);
			if (mut) {
				size_t used = strlen(what);
				snprintf(what + used, whatlen - used, " %s", mut->op_str);
				cs_free(mut, 1);
			}
			return 0;
		}
	}
	return -1;
}
