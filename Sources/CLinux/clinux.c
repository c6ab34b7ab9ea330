#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <malloc.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/openat2.h>
#include <sys/vfs.h>

int kiln_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int kiln_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

static void kiln_kick_handler(int signo) { (void)signo; }

int kiln_install_kick_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kiln_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
    if (sigaction(signo, &sa, NULL) != 0) return -1;
    // A mask inherited from whoever started Kiln must not hold the kick back: unblock it here,
    // and in the vCPU threads this thread starts afterwards.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

int kiln_sigrtmin(void) { return SIGRTMIN; }

static int kiln_notify_fd = -1;
static void kiln_notify_handler(int signo) {
    unsigned char b = (unsigned char)signo;
    int saved = errno;
    (void)!write(kiln_notify_fd, &b, 1);
    errno = saved;
}

int kiln_notify_on_signal(int signo, int fd) {
    kiln_notify_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kiln_notify_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    return sigaction(signo, &sa, NULL);
}

#include <sched.h>
int kiln_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

void kiln_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int kiln_malloc_trim(void) { return malloc_trim(0); }

int kiln_malloc_arena_max(int count) { return mallopt(M_ARENA_MAX, count); }

#include <unistd.h>
int kiln_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

#include <sys/socket.h>
int kiln_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
int kiln_tun_set_iff(int fd, const char *name, short flags, char *actual) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = flags;
    int rc = ioctl(fd, TUNSETIFF, &ifr);
    if (rc == 0) {
        memcpy(actual, ifr.ifr_name, IFNAMSIZ);
        actual[IFNAMSIZ - 1] = 0;
    }
    return rc;
}

#define KILN_MAX_FDS 16

int kiln_send_fds(int sock, const void *buf, size_t len, const int *fds, int count) {
    if (count < 0 || count > KILN_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec iov = { (void *)buf, len };
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * KILN_MAX_FDS)]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)count);
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -1;
}

long kiln_recv_fds(int sock, void *buf, size_t len, int *fds, int max, int *count) {
    struct iovec iov = { buf, len };
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * KILN_MAX_FDS)]; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    *count = 0;
    ssize_t n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t got = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < got; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (*count < max) fds[(*count)++] = fd; else close(fd);
        }
    }
    return (long)n;
}

int kiln_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how = { .flags = flags, .mode = mode, .resolve = resolve };
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

long kiln_getdents64(int fd, void *buf, size_t len) { return syscall(SYS_getdents64, fd, buf, len); }

int kiln_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int kiln_fstatfs(int fd, uint64_t out[8]) {
    struct statfs st;
    if (fstatfs(fd, &st) != 0) return -1;
    out[0] = st.f_blocks; out[1] = st.f_bfree; out[2] = st.f_bavail; out[3] = st.f_files; out[4] = st.f_ffree;
    out[5] = (uint64_t)st.f_bsize; out[6] = (uint64_t)st.f_namelen; out[7] = (uint64_t)st.f_frsize;
    return 0;
}
