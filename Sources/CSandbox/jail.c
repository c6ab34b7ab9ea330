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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

pid_t kiln_jail_spawn(const char *path, char *const argv[], char *const envp[], const int stdio[3], int control_fd,
                      int *pidfd, int *release_fd) {
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
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int i = 0; i < 3; i++) {
            if (stdio[i] >= 0 && stdio[i] != i && dup2(stdio[i], i) != i) _exit(127);
        }
        if (control_fd >= 0) {
            if (control_fd == 3) fcntl(3, F_SETFD, 0);
            else if (dup2(control_fd, 3) != 3) _exit(127);
            syscall(SYS_close_range, 4, ~0U, 0);
        } else {
            syscall(SYS_close_range, 3, ~0U, 0);
        }
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

int kiln_send_with_fd(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = { (void *)buf, len };
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -1;
}

long kiln_recv_with_fd(int sock, void *buf, size_t len, int *fd) {
    struct iovec iov = { buf, len };
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    *fd = -1;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
    return (long)n;
}
