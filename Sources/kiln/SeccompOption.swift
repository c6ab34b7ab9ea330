import Glibc
import LinuxSys
import Seccomp

/// The seccomp mode for `kiln boot`: kill unless `--no-seccomp` or KILN_SECCOMP=trap|log|kill
/// says otherwise. Anything weaker than kill is announced on stderr.
func seccompMode(disabled: Bool) -> SeccompMode {
    if disabled {
        writeRaw(2, """
            kiln: WARNING: --no-seccomp: this VMM runs WITHOUT seccomp filters. A guest that breaks
            kiln: WARNING: into Kiln could make any system call as this user. Use it for debugging only.

            """)
        return .off
    }
    let mode = environmentSeccompMode()
    switch mode {
    case .trap: writeRaw(2, "kiln: warning: KILN_SECCOMP=trap: a forbidden system call is reported here and ends Kiln with status 159\n")
    case .log: writeRaw(2, "kiln: WARNING: KILN_SECCOMP=log: forbidden system calls are ALLOWED and only logged by the kernel (dmesg)\n")
    default: break
    }
    return mode
}

/// KILN_SECCOMP (default kill); anything else is a usage error.
func environmentSeccompMode() -> SeccompMode {
    guard let raw = getenv("KILN_SECCOMP") else { return .kill }
    let name = String(cString: raw)
    guard let mode = SeccompMode(rawValue: name), mode != .off else {
        fail("KILN_SECCOMP must be kill, trap or log, got '\(name)' (use --no-seccomp to turn filters off)", code: 2)
    }
    return mode
}

/// Holds every thread of this process (a supervisor whose jailed VMM runs) to the supervisor
/// policy (docs/security.md, "Seccomp"); nothing with --no-seccomp, which the VMM gets too. The
/// VMM has already announced a weaker mode, so this says nothing.
func confineSupervisor(disabled: Bool) throws(SeccompError) {
    guard !disabled else { return }
    try SeccompFilters(mode: environmentSeccompMode()).installOnAllThreads(.supervisor)
}
