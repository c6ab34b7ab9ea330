// Process creation, terminals and vsock for the guest agent (and its host-side tests).
#ifndef KILN_PROCESS_H
#define KILN_PROCESS_H

#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

// One process to start. The child gets a new session; `stdio[i]` becomes fd i (other
// descriptors should be close-on-exec); with `controlling_tty`, fd 0 becomes its controlling
// terminal. `set_ids` applies groups, gid and uid (in that order) before `cwd` and execve.
struct kiln_spawn_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int stdio[3];
    int controlling_tty;
    int set_ids;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t group_count;
    // The `cgroup.procs` file (open for writing) of the cgroup the child joins before anything
    // else, so that it and all it starts count against that cgroup's limits; -1: stay.
    int cgroup_procs;
    // RLIMIT_NOFILE set in the child once its stdio is in place and before it drops its ids (so a
    // hard limit may be raised as root); 0 in both: inherit the agent's.
    unsigned long long open_files_soft;
    unsigned long long open_files_hard;
    // Out: errno of the step that failed in the child (0 if execve succeeded), and its name.
    int error;
    const char *failed_step;
};

// Starts the process with clone(CLONE_VM | CLONE_VFORK), like posix_spawn: the child runs only
// async-signal-safe system calls until execve. Returns the pid, or -1 with errno set (then
// `failed_step` names the step; a child that failed has already been reaped).
pid_t kiln_spawn(struct kiln_spawn_request *request);

// A new pseudo-terminal of the given size: the master (close-on-exec, non-blocking) and the
// slave's path. Returns 0 or -1 with errno.
int kiln_open_pty(int *master, char *slave_path, size_t path_size, unsigned short rows, unsigned short cols);
int kiln_set_window_size(int fd, unsigned short rows, unsigned short cols);

// A listening AF_VSOCK stream socket on `port` for any CID (non-blocking, close-on-exec).
int kiln_vsock_listen(unsigned int port, int backlog);

// A signalfd (non-blocking, close-on-exec) for `signals`, which are blocked in the calling thread.
int kiln_signalfd(const int *signals, int count);
// Reads one pending signal from a signalfd: its number, or 0 when none, -1 on error.
int kiln_signalfd_read(int fd);

int kiln_mount(const char *source, const char *target, const char *type, unsigned long flags, const char *data);
int kiln_umount2(const char *target, int flags);
// pivot_root(2), which glibc does not wrap (CSandbox has its own for the jail; the agent links no CSandbox).
int kiln_guest_pivot_root(const char *new_root, const char *put_old);
// Sets the interface's IFF_UP flag (e.g. "lo").
int kiln_link_up(const char *name);
// Mixes `count` bytes into the kernel's entropy pool, credited (RNDADDENTROPY), and reseeds
// the CRNG now (RNDRESEEDCRNG). Returns 0 or the errno. Needs CAP_SYS_ADMIN.
int kiln_add_entropy(const void *bytes, size_t count);
// Opens /dev/urandom once and keeps it for kiln_add_entropy (the agent calls this at start, so
// that a snapshot already holds it and a restored guest's Reseed is two ioctls); 0 or errno.
int kiln_entropy_prepare(void);

// setpriority(2) of the calling process.
int kiln_raise_priority(int nice_value);

// reboot(RB_AUTOBOOT): with reboot=k the VM exits.
int kiln_reboot(void);

// mkostemp (GNU-only): creates a unique file from `template` (ending in XXXXXX) with `flags`.
int kiln_mkostemp(char *template_path, int flags);

#endif
