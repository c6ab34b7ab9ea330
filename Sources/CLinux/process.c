#define _GNU_SOURCE
#include "kiln_process.h"
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

// The child shares the parent's memory until execve: raw system calls only (glibc's set*id
// wrappers would signal the parent's threads), and errors go back through the request.
static int spawn_child(void *arg) {
    struct kiln_spawn_request *r = arg;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, &dfl, NULL, _NSIG / 8);
    }
    sigset_t none;
    sigemptyset(&none);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, _NSIG / 8);

#define FAIL(step) do { r->error = errno; r->failed_step = step; _exit(127); } while (0)
    // "0" moves the writer: the child is in its cgroup before it can start anything.
    if (r->cgroup_procs >= 0 && write(r->cgroup_procs, "0", 1) != 1) FAIL("cgroup");
    // The agent runs at a higher priority (kiln_raise_priority); its commands do not.
    if (r->cgroup_procs >= 0) syscall(SYS_setpriority, PRIO_PROCESS, 0, 0);
    if (setsid() < 0) FAIL("setsid");
    // Move the sources out of 0-2 first, so that dup2 below never meets its own target.
    int moved[3];
    for (int i = 0; i < 3; i++) {
        moved[i] = fcntl(r->stdio[i], F_DUPFD_CLOEXEC, 3);
        if (moved[i] < 0) FAIL("dup");
    }
    for (int i = 0; i < 3; i++) {
        if (dup2(moved[i], i) < 0) FAIL("dup2");
    }
    if (r->controlling_tty && ioctl(0, TIOCSCTTY, 0) < 0) FAIL("TIOCSCTTY");
    // After the descriptors are in place (the agent's own may number more than the limit, and a
    // dup above it fails) and before the ids change (a hard limit is raised only as root).
    if (r->open_files_soft || r->open_files_hard) {
        struct rlimit limit = { .rlim_cur = r->open_files_soft, .rlim_max = r->open_files_hard };
        if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &limit, NULL) < 0) FAIL("setrlimit");
    }
    if (r->set_ids) {
        if (syscall(SYS_setgroups, r->group_count, r->groups) < 0) FAIL("setgroups");
        if (syscall(SYS_setresgid, r->gid, r->gid, r->gid) < 0) FAIL("setgid");
        if (syscall(SYS_setresuid, r->uid, r->uid, r->uid) < 0) FAIL("setuid");
    }
    if (chdir(r->cwd && r->cwd[0] ? r->cwd : "/") < 0) FAIL("chdir");
    execve(r->path, r->argv, r->envp);
    FAIL("execve");
#undef FAIL
}

pid_t kiln_spawn(struct kiln_spawn_request *r) {
    r->error = 0;
    r->failed_step = NULL;
    const size_t stack_size = 64 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) { r->failed_step = "mmap"; return -1; }
    // No handler of ours may run in the child while it shares our memory.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = clone(spawn_child, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, r);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, stack_size);
    if (pid < 0) { r->failed_step = "clone"; errno = clone_errno; return -1; }
    if (r->error != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        errno = r->error;
        return -1;
    }
    return pid;
}

int kiln_set_window_size(int fd, unsigned short rows, unsigned short cols) {
    struct winsize ws;
    memset(&ws, 0, sizeof ws);
    ws.ws_row = rows;
    ws.ws_col = cols;
    return ioctl(fd, TIOCSWINSZ, &ws);
}

int kiln_open_pty(int *master, char *slave_path, size_t path_size, unsigned short rows, unsigned short cols) {
    int fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    if (grantpt(fd) < 0 || unlockpt(fd) < 0 || ptsname_r(fd, slave_path, path_size) != 0 ||
        kiln_set_window_size(fd, rows, cols) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    *master = fd;
    return 0;
}

int kiln_vsock_listen(unsigned int port, int backlog) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_port = port;
    addr.svm_cid = VMADDR_CID_ANY;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int kiln_signalfd(const int *signals, int count) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int kiln_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n;
    do { n = read(fd, &info, sizeof info); } while (n < 0 && errno == EINTR);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    return n == sizeof info ? (int)info.ssi_signo : 0;
}

int kiln_mount(const char *source, const char *target, const char *type, unsigned long flags, const char *data) {
    return mount(source, target, type, flags, data);
}

int kiln_umount2(const char *target, int flags) { return umount2(target, flags); }
int kiln_guest_pivot_root(const char *new_root, const char *put_old) { return (int)syscall(SYS_pivot_root, new_root, put_old); }

int kiln_link_up(const char *name) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int kiln_reboot(void) { return reboot(RB_AUTOBOOT); }
int kiln_raise_priority(int nice_value) { return setpriority(PRIO_PROCESS, 0, nice_value); }
int kiln_mkostemp(char *template_path, int flags) { return mkostemp(template_path, flags); }

#include <linux/random.h>
static int entropy_fd = -1;

int kiln_entropy_prepare(void) {
    if (entropy_fd < 0) entropy_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    return entropy_fd < 0 ? errno : 0;
}

int kiln_add_entropy(const void *bytes, size_t count) {
    if (count > 512) return EINVAL;
    int e = kiln_entropy_prepare();
    if (e != 0) return e;
    // struct rand_pool_info: entropy_count, buf_size, then the bytes.
    int request[2 + 512 / sizeof(int)];
    memset(request, 0, sizeof request);
    request[0] = (int)(count * 8);
    request[1] = (int)count;
    memcpy(&request[2], bytes, count);
    int rc = ioctl(entropy_fd, RNDADDENTROPY, request);
    if (rc == 0) rc = ioctl(entropy_fd, RNDRESEEDCRNG);
    return rc == 0 ? 0 : errno;
}
