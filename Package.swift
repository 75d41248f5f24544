// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "capstan",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "capstan", targets: ["capstan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // Functional core: manifest types, diagnostics, ports. No I/O.
        .target(name: "CapstanCore"),
        // YAML -> Core types with line:col, the manifest schema, the folder source.
        .target(name: "CapstanManifests", dependencies: [
            "CapstanCore",
            .product(name: "Yams", package: "Yams"),
        ]),
        // Commands; the only layer that wires adapters together.
        .target(name: "CapstanCLI", dependencies: [
            "CapstanCore",
            "CapstanManifests",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "capstan", dependencies: ["CapstanCLI"]),
        .testTarget(name: "CapstanCoreTests", dependencies: ["CapstanCore"]),
        .testTarget(name: "CapstanManifestsTests", dependencies: ["CapstanManifests", "CapstanCore"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "CapstanCLITests", dependencies: ["CapstanCLI", "capstan"]),
    ],
    swiftLanguageModes: [.v6]
)
