#define _GNU_SOURCE
#include "csandbox.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

int kiln_seccomp_install(const struct sock_filter *filter, unsigned short count) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
    struct sock_fprog prog = { .len = count, .filter = (struct sock_filter *)filter };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) return errno;
    return 0;
}

int kiln_seccomp_install_all_threads(const struct sock_filter *filter, unsigned short count) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
    struct sock_fprog prog = { .len = count, .filter = (struct sock_filter *)filter };
    long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    if (rc < 0) return errno;
    if (rc > 0) return EBUSY; // thread rc has a filter of its own that this one does not extend
    return 0;
}

static const char *const *trap_names;
static int trap_name_count;
static __thread char thread_kind[16] = "unnamed";

void kiln_seccomp_set_thread_kind(const char *kind) {
    strncpy(thread_kind, kind, sizeof thread_kind - 1);
    thread_kind[sizeof thread_kind - 1] = 0;
}

// Async-signal-safe formatting: only stack buffers and write(2).
static size_t append(char *buf, size_t at, size_t cap, const char *s) {
    while (*s && at + 1 < cap) buf[at++] = *s++;
    return at;
}

static size_t append_number(char *buf, size_t at, size_t cap, unsigned long long v, int hex) {
    char digits[24];
    int n = 0;
    unsigned base = hex ? 16 : 10;
    do { digits[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v && n < 24);
    if (hex) at = append(buf, at, cap, "0x");
    while (n && at + 1 < cap) buf[at++] = digits[--n];
    return at;
}

static void report_trap(int signo, siginfo_t *info, void *context) {
    (void)signo;
    char line[256];
    size_t at = 0, cap = sizeof line;
    int nr = info->si_syscall;
    at = append(line, at, cap, "kiln: seccomp: thread '");
    at = append(line, at, cap, thread_kind);
    at = append(line, at, cap, "' made a forbidden system call: ");
    if (nr >= 0 && nr < trap_name_count && trap_names[nr]) at = append(line, at, cap, trap_names[nr]);
    else at = append(line, at, cap, "?");
    at = append(line, at, cap, " (");
    at = append_number(line, at, cap, (unsigned)nr, 0);
    at = append(line, at, cap, ")");
    ucontext_t *uc = context;
    at = append(line, at, cap, " arg0=");
    at = append_number(line, at, cap, (unsigned long long)uc->uc_mcontext.gregs[REG_RDI], 1);
    at = append(line, at, cap, " arg1=");
    at = append_number(line, at, cap, (unsigned long long)uc->uc_mcontext.gregs[REG_RSI], 1);
    at = append(line, at, cap, " arg2=");
    at = append_number(line, at, cap, (unsigned long long)uc->uc_mcontext.gregs[REG_RDX], 1);
    line[at++] = '\n';
    ssize_t ignored = write(2, line, at);
    (void)ignored;
    _exit(128 + SIGSYS);
}

int kiln_seccomp_report_traps(const char *const *names, int count) {
    trap_names = names;
    trap_name_count = count;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = report_trap;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL) == 0 ? 0 : errno;
}

// The constants policy files can name. Add here when a policy needs a new one.
#include <sched.h>
#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <termios.h>

#define K(name) { #name, (uint64_t)(name) }
static const struct kiln_policy_constant constants[] = {
    // KVM: vCPU
    K(KVM_RUN), K(KVM_GET_REGS), K(KVM_SET_REGS), K(KVM_GET_SREGS), K(KVM_SET_SREGS),
    K(KVM_GET_FPU), K(KVM_SET_FPU), K(KVM_GET_LAPIC), K(KVM_SET_LAPIC), K(KVM_GET_MSRS), K(KVM_SET_MSRS),
    K(KVM_SET_CPUID2), K(KVM_GET_VCPU_EVENTS), K(KVM_SET_VCPU_EVENTS), K(KVM_GET_MP_STATE), K(KVM_SET_MP_STATE),
    K(KVM_TRANSLATE), K(KVM_GET_XSAVE), K(KVM_SET_XSAVE), K(KVM_GET_XCRS), K(KVM_SET_XCRS),
    K(KVM_GET_DEBUGREGS), K(KVM_SET_DEBUGREGS), K(KVM_KVMCLOCK_CTRL),
    // KVM: VM and system
    K(KVM_GET_API_VERSION), K(KVM_GET_MSR_INDEX_LIST), K(KVM_CREATE_VM), K(KVM_CHECK_EXTENSION), K(KVM_GET_VCPU_MMAP_SIZE),
    K(KVM_GET_SUPPORTED_CPUID), K(KVM_CREATE_VCPU), K(KVM_SET_USER_MEMORY_REGION), K(KVM_SET_TSS_ADDR),
    K(KVM_SET_IDENTITY_MAP_ADDR), K(KVM_CREATE_IRQCHIP), K(KVM_CREATE_PIT2), K(KVM_IRQFD), K(KVM_IOEVENTFD),
    K(KVM_IRQ_LINE), K(KVM_IRQ_LINE_STATUS), K(KVM_SIGNAL_MSI), K(KVM_GET_CLOCK), K(KVM_SET_CLOCK),
    K(KVM_GET_IRQCHIP), K(KVM_SET_IRQCHIP), K(KVM_GET_PIT2), K(KVM_SET_PIT2), K(KVM_SET_GSI_ROUTING),
    // terminals, TAP, sockets
    K(TCGETS), K(TCSETS), K(TCSETSW), K(TCSETSF), K(TIOCGWINSZ), K(FIONBIO), K(FIONREAD),
    K(TUNSETIFF), K(TUNSETVNETHDRSZ), K(TUNSETOFFLOAD), K(TUNGETIFF), K(SIOCGIFFLAGS), K(SIOCSIFFLAGS),
    K(AF_UNIX), K(AF_INET), K(AF_INET6), K(AF_NETLINK), K(AF_PACKET), K(AF_VSOCK),
    K(SOCK_STREAM), K(SOCK_DGRAM), K(SOCK_NONBLOCK), K(SOCK_CLOEXEC),
    // memory
    K(PROT_NONE), K(PROT_READ), K(PROT_WRITE), K(PROT_EXEC),
    K(MADV_DONTNEED), K(MADV_FREE), K(MADV_DONTDUMP), K(MADV_HUGEPAGE),
    // signals and errors
    K(SIGABRT), K(SIGSYS), K(SIGKILL), { "SIGRTMIN", 0 /* glibc's, at run time */ },
    // threads
    K(CLONE_THREAD), K(PR_SET_NAME),
    K(EACCES), K(EPERM), K(ENOENT), K(ENOSYS),
};
int kiln_policy_constant_count(void) { return sizeof constants / sizeof constants[0]; }
struct kiln_policy_constant kiln_policy_constant_at(int index) {
    struct kiln_policy_constant c = constants[index];
    if (strcmp(c.name, "SIGRTMIN") == 0) c.value = (uint64_t)SIGRTMIN;
    return c;
}
