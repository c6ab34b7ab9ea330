// Tests only (Tests/KilnTests/DetachedSandboxTests.swift): restores a detached sandbox from the
// template TEMPLATE into RUNTIME_DIR, prints `ready DIR` on stdout, then waits to be killed.
//   kiln-test-detach TEMPLATE RUNTIME_DIR
import Glibc
import LinuxSys
import Sandbox

let args = CommandLine.arguments
guard args.count == 3 else {
    writeRaw(2, "usage: kiln-test-detach TEMPLATE_DIR RUNTIME_DIR\n")
    exit(2)
}
do {
    let sandbox = try await Sandbox.restore(snapshot: args[1], runtimeDirectory: args[2], lifetime: .detached)
    writeRaw(1, "ready \(sandbox.directory)\n")
} catch {
    writeRaw(2, "kiln-test-detach: \(error)\n")
    exit(1)
}
while true { pause() }
