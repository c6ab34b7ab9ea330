// Linux calls that Swift's Glibc module hides or cannot call (variadic, GNU-only).
#ifndef KILN_CLINUX_H
#define KILN_CLINUX_H

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <pthread.h>
#include <termios.h>
#include <stdint.h>

// ioctl with a pointer, integer or no argument (ioctl itself is variadic).
int kiln_ioctl_ptr(int fd, unsigned long request, void *arg);
int kiln_ioctl_int(int fd, unsigned long request, unsigned long arg);

// Installs a handler for `signo` that does nothing and does not restart system
// calls, so that pthread_kill interrupts a blocking KVM_RUN with EINTR.
int kiln_install_kick_handler(int signo);
int kiln_sigrtmin(void);

int kiln_pipe2(int fds[2], int flags);

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC (GNU-only, hidden from Swift).
int kiln_accept_nonblocking(int fd);

// Gives the calling thread a name visible in /proc (at most 15 bytes).
void kiln_set_thread_name(const char *name);

#endif
