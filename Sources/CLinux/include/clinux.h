// Linux calls that Swift's Glibc module hides or cannot call (variadic, GNU-only).
#ifndef KILN_CLINUX_H
#define KILN_CLINUX_H

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <pthread.h>
#include <termios.h>
#include <stdint.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sys/xattr.h>

// ioctl with a pointer, integer or no argument (ioctl itself is variadic).
int kiln_ioctl_ptr(int fd, unsigned long request, void *arg);
int kiln_ioctl_int(int fd, unsigned long request, unsigned long arg);

// Installs a handler for `signo` that does nothing and does not restart system
// calls, so that pthread_kill interrupts a blocking KVM_RUN with EINTR; unblocks it in the
// calling thread (and so in threads it starts later).
int kiln_install_kick_handler(int signo);
int kiln_sigrtmin(void);
/* Writes the signal's number as one byte to `fd` (a pipe) when `signo` arrives, from a plain
   handler: for a process whose many threads cannot all block the signal for sigwait. */
int kiln_notify_on_signal(int signo, int fd);

int kiln_pipe2(int fds[2], int flags);

/* openat2(2) (glibc has no wrapper) with RESOLVE_* flags from <linux/openat2.h>: the virtio-fs
   server resolves every guest path beneath a share's root with it. */
#define KILN_RESOLVE_NO_XDEV 0x01
#define KILN_RESOLVE_NO_MAGICLINKS 0x02
#define KILN_RESOLVE_NO_SYMLINKS 0x04
#define KILN_RESOLVE_BENEATH 0x08
int kiln_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
/* getdents64(2): raw directory entries at the descriptor's offset, which lseek sets. */
long kiln_getdents64(int fd, void *buf, size_t len);
/* fstatfs(2) into blocks, bfree, bavail, files, ffree, bsize, namelen, frsize. */
int kiln_fstatfs(int fd, uint64_t out[8]);
#define KILN_O_PATH 010000000
#define KILN_AT_EMPTY_PATH 0x1000
#define KILN_RENAME_NOREPLACE 1
#define KILN_RENAME_EXCHANGE 2
#define KILN_RENAME_WHITEOUT 4
int kiln_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);

// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC (GNU-only, hidden from Swift).
int kiln_accept_nonblocking(int fd);
// Moves the calling thread into the network namespace open at `fd` (setns is GNU-only).
int kiln_setns_net(int fd);

// Gives the calling thread a name visible in /proc (at most 15 bytes).
void kiln_set_thread_name(const char *name);

// Returns freed heap memory of every malloc arena to the kernel (malloc_trim(0), GNU-only).
int kiln_malloc_trim(void);

// Caps glibc's malloc at `count` arenas (mallopt(M_ARENA_MAX)). Without a cap, the first thread
// past eight that allocates makes malloc count the CPUs by opening /sys/devices/system/cpu/online:
// a process whose seccomp filter refuses files must set it before that.
int kiln_malloc_arena_max(int count);

// TAP devices (/dev/net/tun): request numbers and flags Swift cannot compute from the macros.
static const unsigned long KILN_TUNSETIFF = TUNSETIFF;
static const unsigned long KILN_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long KILN_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned int KILN_TUN_F_CSUM = TUN_F_CSUM;
static const unsigned int KILN_TUN_F_TSO4 = TUN_F_TSO4;
static const unsigned int KILN_TUN_F_TSO6 = TUN_F_TSO6;
static const unsigned int KILN_TUN_F_TSO_ECN = TUN_F_TSO_ECN;
static const short KILN_IFF_TAP = IFF_TAP;
static const short KILN_IFF_NO_PI = IFF_NO_PI;
static const short KILN_IFF_VNET_HDR = IFF_VNET_HDR;
static const int KILN_IFNAMSIZ = IFNAMSIZ;

// TUNSETIFF on `fd` with `name` (may hold %d) and `flags`; the kernel's chosen name is
// copied to `actual` (IFNAMSIZ bytes). Hides struct ifreq's unions from Swift.
int kiln_tun_set_iff(int fd, const char *name, short flags, char *actual);

// One message with up to `count` descriptors attached (SCM_RIGHTS), without SIGPIPE; 0 when
// all of `len` went out.
int kiln_send_fds(int sock, const void *buf, size_t len, const int *fds, int count);
// Receives one message; the attached descriptors (close-on-exec) go to `fds`, at most `max`
// (extra ones are closed), their number to *count. Returns the byte count or -1.
long kiln_recv_fds(int sock, void *buf, size_t len, int *fds, int max, int *count);

#include "kiln_process.h"

#endif
