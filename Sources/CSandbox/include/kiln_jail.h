// The jailer's system calls: raw clone3/pivot_root/capset and the variadic or GNU-only
// calls (prctl, unshare, setresuid) Swift cannot make directly. No libcap: the few calls
// needed are simpler than the dependency.
#ifndef KILN_JAIL_H
#define KILN_JAIL_H

#include <sys/types.h>
#include <stdint.h>

// Starts `path` with `argv`/`envp` in new mount, PID, IPC and UTS namespaces (the network
// namespace comes later, from the child itself, after it opened its TAP). The child waits
// until `kiln_jail_release` so the caller can move it into its cgroups first; before execve it
// asks for SIGKILL when the caller dies (or, `detached`, starts a session of its own and
// outlives the caller), unblocks all signals, puts `stdio` (-1: keep the
// caller's) at fds 0-2 and `control_fds` (-1: none) at fds 3 and 4, and closes every other
// descriptor.
// Returns the pid (or -1 with errno) and a pidfd.
pid_t kiln_jail_spawn(const char *path, char *const argv[], char *const envp[], const int stdio[3], const int control_fds[2],
                      int detached, int *pidfd, int *release_fd);
// Lets a child started by kiln_jail_spawn run (go = 1) or makes it exit 127 (go = 0).
int kiln_jail_release(int release_fd, int go);

// pidfd_open(pid, 0) and pidfd_send_signal(pidfd, signo, NULL, 0): a process that is not our
// child, named so that a reused pid cannot be signalled by mistake.
int kiln_pidfd_open(pid_t pid);
int kiln_pidfd_kill(int pidfd, int signo);

// The launcher's (Sources/Jailer/VMMSpawner.swift): blocks SIGCHLD and returns a signalfd
// (non-blocking, close-on-exec) for it, or -1; kiln_drain_fd reads a non-blocking fd empty.
int kiln_sigchld_fd(void);
void kiln_drain_fd(int fd);
int kiln_pipe_cloexec(int fds[2]);

int kiln_unshare(int flags);
int kiln_pivot_root(const char *new_root, const char *put_old);
int kiln_mknod_char(const char *path, unsigned mode, unsigned major, unsigned minor);
int kiln_close_from(int first);

// Credentials: no supplementary groups, then gid, then uid (all threads, via glibc's setxid).
int kiln_set_ids(uid_t uid, gid_t gid);
// Drops every capability from the bounding set (needs CAP_SETPCAP, so before the uid change).
int kiln_drop_bounding_set(void);
// Clears the ambient set, then effective, permitted and inheritable (capset v3, this thread).
int kiln_drop_capabilities(void);
int kiln_no_new_privs(void);
int kiln_set_pdeathsig(int signo);
int kiln_set_dumpable(int dumpable);
int kiln_set_rlimit(int resource, uint64_t value);

enum {
    KILN_CLONE_NEWNET = 0x40000000,
    KILN_CLONE_NEWCGROUP = 0x02000000,
    KILN_RLIMIT_NOFILE = 7,
    KILN_RLIMIT_FSIZE = 1,
    KILN_RLIMIT_CORE = 4,
    KILN_MS_RDONLY = 1,
    KILN_MS_NOSUID = 2,
    KILN_MS_NODEV = 4,
    KILN_MS_NOEXEC = 8,
    KILN_MS_REMOUNT = 32,
    KILN_MS_BIND = 4096,
    KILN_MS_REC = 16384,
    KILN_MS_PRIVATE = 1 << 18,
    KILN_MNT_DETACH = 2,
};

#endif
