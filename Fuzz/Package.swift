// swift-tools-version: 6.1
// Fuzz targets for Kiln's parsers of untrusted input. A separate package so that the main
// build never needs libFuzzer. See README.md beside this file.
import PackageDescription

// Instrumentation comes from the command line (see run.sh) so that Kiln's modules get coverage too.
let fuzz: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "KilnFuzz",
    dependencies: [.package(name: "Kiln", path: "..")],
    targets: [
        .target(name: "FuzzSupport"),
        .executableTarget(name: "FuzzVirtqueue", dependencies: ["FuzzSupport", .product(name: "VMM", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzFUSE", dependencies: ["FuzzSupport", .product(name: "VMM", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzNet", dependencies: ["FuzzSupport", .product(name: "VMM", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzBoot", dependencies: ["FuzzSupport", .product(name: "VMM", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzSnapshot", dependencies: ["FuzzSupport", .product(name: "VMM", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzLaunch", dependencies: ["FuzzSupport", .product(name: "VMMProtocol", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzAgentProtocol", dependencies: ["FuzzSupport", .product(name: "AgentProtocol", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzTar", dependencies: ["FuzzSupport", .product(name: "Images", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzImages", dependencies: ["FuzzSupport", .product(name: "Images", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzEgress", dependencies: ["FuzzSupport", .product(name: "KilnNet", package: "Kiln")],
                          swiftSettings: fuzz),
        .executableTarget(name: "FuzzServiceRequests", dependencies: ["FuzzSupport", .product(name: "KilnService", package: "Kiln")],
                          swiftSettings: fuzz),
    ]
)
