// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .unsafeFlags(["-warnings-as-errors"]),
]

let package = Package(
    name: "Kiln",
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        .executable(name: "kiln-vmm", targets: ["kiln-vmm"]),
        .library(name: "VMMProtocol", targets: ["VMMProtocol"]),
        .library(name: "VMM", targets: ["VMM"]),
        .library(name: "AgentProtocol", targets: ["AgentProtocol"]),
        .library(name: "Sandbox", targets: ["Sandbox"]),
        .executable(name: "kiln-agent", targets: ["kiln-agent"]),
        .library(name: "KilnService", targets: ["KilnService"]),
        .library(name: "Images", targets: ["Images"]),
        .library(name: "KilnNet", targets: ["KilnNet"]),
        .executable(name: "kiln-egress", targets: ["kiln-egress"]),
    ],
    // Only the service and the CLI link these; the VMM and the agent do not.
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Images: SHA-256 of streamed blobs, and the registry client (HTTPS with the system CA store).
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // The CLI's parser, help and usage (the `kiln` executable only).
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .target(name: "CLinux"),
        .target(name: "CKVM"),
        .target(name: "CSandbox"),
        .target(name: "LinuxSys", dependencies: ["CLinux"], swiftSettings: strict),
        .target(name: "GuestMemory", dependencies: ["LinuxSys"], swiftSettings: strict),
        .target(name: "KVM", dependencies: ["CKVM", "CLinux", "LinuxSys"], swiftSettings: strict),
        .target(name: "Boot", dependencies: ["GuestMemory"], swiftSettings: strict),
        .target(name: "Devices", dependencies: ["GuestMemory", "LinuxSys"], swiftSettings: strict),
        .target(name: "AgentProtocol", swiftSettings: strict),
        // The supervisor-VMM wire formats: the launch configuration, the sandbox record. Pure Swift.
        .target(name: "VMMProtocol", swiftSettings: strict),
        .target(name: "Agent", dependencies: ["AgentProtocol", "CLinux", "LinuxSys"], swiftSettings: strict),
        // The guest's PID 1. Images take the release build, fully static so that it runs from a
        // bare root filesystem; the debug build stays dynamic so that tests can link against it.
        .executableTarget(name: "kiln-agent", dependencies: ["Agent", "CLinux", "LinuxSys"], swiftSettings: strict,
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),
        // A sandbox's network namespace, NAT and egress policy (docs/net.md). Runs `ip` and `nft`.
        .target(name: "KilnNet", dependencies: ["CLinux", "CSandbox", "LinuxSys", "Seccomp"], swiftSettings: strict),
        // A sandbox's DNS answerer and Host/SNI proxy (KilnNet.EgressHelper), one per sandbox with
        // domain rules, in its namespace. Static in release, like kiln-vmm: installed beside kiln.
        .executableTarget(name: "kiln-egress", dependencies: ["KilnNet"], swiftSettings: strict,
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),
        .target(name: "Sandbox", dependencies: ["AgentProtocol", "Boot", "Devices", "Images", "Jailer", "LinuxSys", "KilnNet", "Seccomp", "VMM", "VMMProtocol"], swiftSettings: strict),
        .target(name: "Seccomp", dependencies: ["CSandbox"], swiftSettings: strict),
        .target(name: "VMM", dependencies: ["KVM", "GuestMemory", "Boot", "Devices", "LinuxSys", "Seccomp", "VMMProtocol"], swiftSettings: strict),
        // `kiln serve`: the E2B-compatible multi-tenant service (docs/service.md).
        .target(name: "KilnService", dependencies: [
            "Sandbox", "Devices", "Images", "AgentProtocol", "LinuxSys", "KilnNet",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // OCI images: references, the content store, the registry client, layer unpacking, root disks
        // (docs/images.md). Host side only; the VMM and the agent do not link it.
        .target(name: "Images", dependencies: [
            "CCompression", "CLinux", "LinuxSys", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ], swiftSettings: strict),
        // zlib and zstd for layer decompression (Debian: zlib1g-dev, libzstd-dev).
        .target(name: "CCompression", linkerSettings: [.linkedLibrary("z"), .linkedLibrary("zstd")]),
        .target(name: "Jailer", dependencies: ["CSandbox", "CLinux", "LinuxSys", "VMMProtocol"], swiftSettings: strict),
        // The jailed VMM process, started by kiln and the Sandbox library. Release builds are fully
        // static: no dynamic loader relocations touching every page of the Swift runtime, which
        // keeps the VMM's own resident memory near 4 MiB instead of 10. It links no NIO, no
        // ArgumentParser: nothing the CLI and the service need is mapped where a guest could reach.
        .executableTarget(name: "kiln-vmm", dependencies: ["CLinux", "VMM", "VMMProtocol", "Jailer", "LinuxSys", "Seccomp"], swiftSettings: strict,
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),
        // The CLI and `kiln serve`; static in release too, so that it runs from anywhere
        // (`kiln run --no-jail` and non-root runs keep the VMM in this process).
        .executableTarget(name: "kiln", dependencies: ["VMM", "VMMProtocol", "Sandbox", "KilnService", "Images", "AgentProtocol", "CLinux", "LinuxSys", "Jailer", "KilnNet", "Seccomp",
                                                .product(name: "ArgumentParser", package: "swift-argument-parser")], swiftSettings: strict,
                          linkerSettings: [.unsafeFlags(["-static-executable", "-Xlinker", "-l_FoundationCollections", "-Xlinker", "-l_FoundationCShims",
                                                        // async-http-client (Images) imports Foundation, whose static library needs CoreFoundation.
                                                        "-Xlinker", "-lCoreFoundation", "-Xlinker", "-l_FoundationICU", "-Xlinker", "-lstdc++"],
                                                        .when(configuration: .release))]),
        .executableTarget(name: "kiln-bench", dependencies: ["Devices", "GuestMemory", "LinuxSys", "Sandbox", "AgentProtocol", "VMM"],
                          path: "Benchmarks/Host", swiftSettings: strict),

        .target(name: "KilnTestSupport", dependencies: ["CLinux", "LinuxSys"], path: "Tests/Support", swiftSettings: strict),
        // Tests only: starts a detached sandbox and waits to be killed (SandboxDetachTests).
        .executableTarget(name: "kiln-test-detach", dependencies: ["LinuxSys", "Sandbox"], path: "Tests/DetachHelper", swiftSettings: strict),
        .testTarget(name: "LinuxSysTests", dependencies: ["LinuxSys"], swiftSettings: strict),
        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory"], swiftSettings: strict),
        .testTarget(name: "KVMTests", dependencies: ["KVM"], swiftSettings: strict),
        .testTarget(name: "BootTests", dependencies: ["Boot", "KilnTestSupport"], swiftSettings: strict),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "GuestMemory", "LinuxSys"], swiftSettings: strict),
        .testTarget(name: "SeccompTests", dependencies: ["Seccomp", "CSandbox"], swiftSettings: strict),
        .testTarget(name: "AgentProtocolTests", dependencies: ["AgentProtocol"], swiftSettings: strict),
        .testTarget(name: "AgentTests", dependencies: ["Agent", "Sandbox", "AgentProtocol", "KilnTestSupport", "LinuxSys", "kiln-agent"],
                    swiftSettings: strict),
        .testTarget(name: "JailerTests", dependencies: ["Jailer", "VMMProtocol"], swiftSettings: strict),
        .testTarget(name: "KilnNetTests", dependencies: ["KilnNet", "KilnTestSupport", "LinuxSys"], swiftSettings: strict),
        .testTarget(name: "VMMProtocolTests", dependencies: ["VMMProtocol"], swiftSettings: strict),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "Boot", "KVM", "KilnTestSupport"], swiftSettings: strict),
        .testTarget(name: "KilnServiceTests", dependencies: [
            "KilnService", "Sandbox", "Devices", "AgentProtocol", "LinuxSys",
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .testTarget(name: "ImagesTests", dependencies: ["Images", "KilnTestSupport", "CLinux", "LinuxSys"], swiftSettings: strict),
        .testTarget(name: "KilnTests", dependencies: ["kiln", "kiln-vmm", "kiln-egress", "kiln-test-detach", "KilnTestSupport", "VMMProtocol", "LinuxSys", "KilnNet", "Sandbox", "Images", "AgentProtocol", "VMM"], swiftSettings: strict),
    ]
)
