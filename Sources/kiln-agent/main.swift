import Agent
import CLinux
import Glibc
import LinuxSys

// kiln-agent: the guest's PID 1 (docs/agent-protocol.md). As PID 1 it first enters the image
// named by `kiln.root=` when it was started from Kiln's initramfs (docs/images.md), mounts /proc
// and friends and listens on vsock port 1024. For tests and benchmarks it also runs on the host:
//   kiln-agent --listen PATH     serve on a Unix socket (not as init)
//   kiln-agent --vsock-port N    serve on vsock port N (inside a guest, not as PID 1)
// and, started by the host through Exec, one connection of a port forward:
//   kiln-agent --forward PORT    relay stdin/stdout to 127.0.0.1:PORT in the guest (PortRelay)

let software = "kiln-agent 0.1"
let isInit = getpid() == 1
if isInit {
    ImageRoot.enterIfRequested()
    GuestInit.setUp()
}

// As PID 1, arguments are only readable once /proc is mounted (static Swift binary).
let args = CommandLine.arguments

func die(_ message: String) -> Never {
    writeRaw(2, "kiln-agent: \(message)\n")
    if isInit { while true { pause() } } // PID 1 must not exit: the kernel would panic
    exit(1)
}

if !isInit, let i = args.firstIndex(of: "--forward") {
    guard i + 1 < args.count, let port = UInt16(args[i + 1]), port > 0 else { die("--forward needs a port from 1 to 65535") }
    exit(PortRelay.run(port: port))
}

var listener: Int32 = -1
var where_ = ""
if let i = args.firstIndex(of: "--listen"), i + 1 < args.count {
    let path = args[i + 1]
    do {
        listener = try UnixSocket.listen(path: path).release()
    } catch { die("cannot listen on \(path): \(error)") }
    where_ = path
} else {
    var port: UInt32 = 1024
    if let i = args.firstIndex(of: "--vsock-port"), i + 1 < args.count, let p = UInt32(args[i + 1]) { port = p }
    listener = kiln_vsock_listen(port, 64)
    if listener < 0 { die("cannot listen on vsock port \(port): \(Errno.current("vsock"))") }
    where_ = "vsock port \(port)"
}

let server: AgentServer
// Host-profile settings the kernel passed to init (see HostProfile.glibcTunables).
var inherited: [String] = []
for name in ["GLIBC_TUNABLES"] {
    if let value = getenv(name) { inherited.append(name + "=" + String(cString: value)) }
}
do { server = try AgentServer(listener: listener, options: .init(software: software, isInit: isInit, inheritedEnvironment: isInit ? inherited : [])) }
catch { die("\(error)") }
writeRaw(isInit ? 1 : 2, "kiln-agent: ready on \(where_)\n")
server.run()
if isInit { die("stopped") }
exit(0)
