// Seccomp for Kiln's own BPF filters: the kernel structures, constants Swift cannot compute
// from the headers' macros, and the calls Swift cannot make (prctl and syscall are variadic).
#ifndef KILN_CSANDBOX_H
#define KILN_CSANDBOX_H

#include <stddef.h>
#include <stdint.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

static const uint32_t KILN_AUDIT_ARCH_X86_64 = AUDIT_ARCH_X86_64;
// x32 system calls share x86_64's audit arch and are told apart by this bit in the number.
static const uint32_t KILN_X32_SYSCALL_BIT = 0x40000000U;

static const uint32_t KILN_SECCOMP_RET_KILL_PROCESS = SECCOMP_RET_KILL_PROCESS;
static const uint32_t KILN_SECCOMP_RET_TRAP = SECCOMP_RET_TRAP;
static const uint32_t KILN_SECCOMP_RET_LOG = SECCOMP_RET_LOG;
static const uint32_t KILN_SECCOMP_RET_ALLOW = SECCOMP_RET_ALLOW;
static const uint32_t KILN_SECCOMP_RET_ERRNO = SECCOMP_RET_ERRNO;
static const int KILN_BPF_MAXINSNS = BPF_MAXINSNS;

// Offsets into struct seccomp_data, the input every filter reads.
static const uint32_t KILN_SECCOMP_DATA_NR = offsetof(struct seccomp_data, nr);
static const uint32_t KILN_SECCOMP_DATA_ARCH = offsetof(struct seccomp_data, arch);
static const uint32_t KILN_SECCOMP_DATA_ARGS = offsetof(struct seccomp_data, args);

// Sets no_new_privs and installs `count` BPF instructions as a seccomp filter on the calling
// thread only (no TSYNC). Returns 0, or the errno of the call that failed.
int kiln_seccomp_install(const struct sock_filter *filter, unsigned short count);
// The same for every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC); EBUSY when a
// thread carries a filter the caller's does not extend.
int kiln_seccomp_install_all_threads(const struct sock_filter *filter, unsigned short count);

// Trap mode: a SIGSYS handler that prints which thread made which forbidden call, then exits
// with status 159 (128 + SIGSYS). `names[nr]` names system call nr (NULL where unknown); the
// table must live as long as the process.
int kiln_seccomp_report_traps(const char *const *names, int count);
// The thread kind named in trap reports for the calling thread (at most 15 bytes kept).
void kiln_seccomp_set_thread_kind(const char *kind);

// Named constants the policy files may use (ioctl requests, address families, PROT_ flags).
struct kiln_policy_constant {
    const char *name;
    uint64_t value;
};
int kiln_policy_constant_count(void);
struct kiln_policy_constant kiln_policy_constant_at(int index);

#include "kiln_jail.h"

#endif
