#define _GNU_SOURCE
#include "clinux.h"
#include <string.h>

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

#include <sched.h>
int kiln_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

void kiln_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

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
