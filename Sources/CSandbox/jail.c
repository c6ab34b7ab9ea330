#define _GNU_SOURCE
#include "kiln_jail.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

pid_t kiln_jail_spawn(const char *path, char *const argv[], char *const envp[], const int stdio[3], const int control_fds[2],
                      int detached, int *pidfd, int *release_fd) {
    int sync[2];
    if (pipe2(sync, O_CLOEXEC) != 0) return -1;
    int child_pidfd = -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&child_pidfd;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) {
        int e = errno;
        close(sync[0]); close(sync[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        // The child: a copy of a multi-threaded process, so only async-signal-safe calls until execve.
        close(sync[1]);
        char go = 0;
        ssize_t n;
        do { n = read(sync[0], &go, 1); } while (n < 0 && errno == EINTR);
        if (n != 1 || go != 'g') _exit(127);
        // Tied: the VMM dies with the thread that started it. Detached: its own session and
        // process group, so neither that death nor a signal to the caller's group reaches it.
        if (detached) { if (setsid() < 0) _exit(127); }
        else prctl(PR_SET_PDEATHSIG, SIGKILL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        // The control sockets go to fds 3 and 4: first out of the way (a source may be 0-4), then in place.
        int moved[2] = { -1, -1 };
        for (int i = 0; i < 2; i++) {
            if (control_fds[i] >= 0 && (moved[i] = fcntl(control_fds[i], F_DUPFD_CLOEXEC, 16)) < 0) _exit(127);
        }
        for (int i = 0; i < 3; i++) {
            if (stdio[i] >= 0 && stdio[i] != i && dup2(stdio[i], i) != i) _exit(127);
        }
        for (int i = 0; i < 2; i++) {
            if (moved[i] >= 0) { if (dup2(moved[i], 3 + i) != 3 + i) _exit(127); } else close(3 + i);
        }
        syscall(SYS_close_range, 5, ~0U, 0);
        execve(path, argv, envp);
        _exit(127);
    }
    close(sync[0]);
    *pidfd = child_pidfd;
    *release_fd = sync[1];
    return (pid_t)pid;
}

int kiln_jail_release(int release_fd, int go) {
    char byte = go ? 'g' : 'x';
    ssize_t n;
    do { n = write(release_fd, &byte, 1); } while (n < 0 && errno == EINTR);
    close(release_fd);
    return n == 1 ? 0 : -1;
}

int kiln_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int kiln_pidfd_kill(int pidfd, int signo) { return (int)syscall(SYS_pidfd_send_signal, pidfd, signo, NULL, 0); }

int kiln_unshare(int flags) { return unshare(flags); }
int kiln_pivot_root(const char *new_root, const char *put_old) { return (int)syscall(SYS_pivot_root, new_root, put_old); }
int kiln_mknod_char(const char *path, unsigned mode, unsigned major, unsigned minor) {
    return mknod(path, S_IFCHR | mode, makedev(major, minor));
}
int kiln_close_from(int first) { return (int)syscall(SYS_close_range, (unsigned)first, ~0U, 0); }

int kiln_set_ids(uid_t uid, gid_t gid) {
    if (setgroups(0, NULL) != 0) return -1;
    if (setresgid(gid, gid, gid) != 0) return -1;
    return setresuid(uid, uid, uid);
}

int kiln_drop_bounding_set(void) {
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_READ, cap) < 0) break; // past the last capability this kernel knows
        if (prctl(PR_CAPBSET_DROP, cap) != 0) return -1;
    }
    return 0;
}

int kiln_drop_capabilities(void) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return -1;
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &header, data);
}

int kiln_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
int kiln_set_pdeathsig(int signo) { return prctl(PR_SET_PDEATHSIG, signo); }
int kiln_set_dumpable(int dumpable) { return prctl(PR_SET_DUMPABLE, dumpable); }
int kiln_set_rlimit(int resource, uint64_t value) {
    struct rlimit limit = { value, value };
    return setrlimit(resource, &limit);
}


int kiln_sigchld_fd(void) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) return -1;
    return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

void kiln_drain_fd(int fd) {
    char buffer[512];
    while (read(fd, buffer, sizeof buffer) > 0) {}
}

int kiln_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
