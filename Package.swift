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
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // Functional core: manifest types, diagnostics, ports. No I/O.
        .target(name: "CapstanCore", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // YAML -> Core types with line:col, the manifest schema, the folder source.
        .target(name: "CapstanManifests", dependencies: [
            "CapstanCore",
            .product(name: "Yams", package: "Yams"),
        ]),
        // libgit2, found through pkg-config (apt: libgit2-dev).
        .systemLibrary(name: "CLibGit2", pkgConfig: "libgit2", providers: [.apt(["libgit2-dev"])]),
        // A socket stream for libgit2 with connect/read/write timeouts (libgit2 1.5 has none).
        .target(name: "CCapstanGitStream", dependencies: ["CLibGit2"], linkerSettings: [.linkedLibrary("z")]),
        // Git: repositories, mirrors and fetches, trees and blobs, diffs, materialized trees, and
        // the ManifestSource over a commit.
        .target(name: "CapstanGit", dependencies: [
            "CapstanCore",
            "CLibGit2",
            "CCapstanGitStream",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // SQLite (GRDB): the state database (state, embedded registry, audit log, locks) and the
        // content-addressed artifact store.
        .target(name: "CapstanStore", dependencies: [
            "CapstanCore",
            "CapstanSystem",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // What several adapters need of the operating system: private folders and files, process
        // liveness from /proc, the artifact digest (shared by the store and the serving agent).
        .target(name: "CapstanSystem", dependencies: [
            "CapstanCore",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The StepRunner over local subprocesses: process groups, timeouts, streamed output.
        .target(name: "CapstanRunner", dependencies: [
            "CapstanCore",
            .product(name: "Subprocess", package: "swift-subprocess"),
        ]),
        // The local serving agent (`capstan serve`): model-server supervisor, weighted gateway,
        // admin API; and the ServingTarget client of that API.
        .target(name: "CapstanServing", dependencies: [
            "CapstanCore",
            "CapstanSystem",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The controller's HTTP side (`capstan run`): health, readiness, Prometheus metrics, the
        // status API and page, signed Git webhooks; and outgoing notifications.
        .target(name: "CapstanServer", dependencies: [
            "CapstanCore",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The MLflow tracking server's REST API and artifact proxy: experiments, runs, artifacts,
        // registered models, versions and aliases (the registry backend builds on it).
        .target(name: "CapstanMLflow", dependencies: [
            "CapstanCore",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "_NIOFileSystem", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The reconciler: desired state at a commit + actual state -> plan -> executed pass. Sees
        // only ports (CapstanCore): no SQLite, libgit2 or HTTP client.
        .target(name: "CapstanEngine", dependencies: [
            "CapstanCore",
            "CapstanManifests",
            "CapstanSystem",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The long-running loop of `capstan run` as a Service over the engine and its ports:
        // triggers, the lease per pass, the wake-up.
        .target(name: "CapstanController", dependencies: [
            "CapstanCore",
            "CapstanEngine",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // Commands; the only layer that wires adapters together.
        .target(name: "CapstanCLI", dependencies: [
            "CapstanCore",
            "CapstanManifests",
            "CapstanGit",
            "CapstanStore",
            "CapstanRunner",
            "CapstanEngine",
            "CapstanController",
            "CapstanServing",
            "CapstanServer",
            "CapstanMLflow",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "capstan", dependencies: ["CapstanCLI"]),
        // Fuzzing (scripts/fuzz.sh, docs/security.md#fuzzing): the targets' bodies and invariants,
        // libFuzzer's driver entry, and one executable per target. A plain build replays inputs;
        // only scripts/fuzz.sh builds them with -sanitize=fuzzer,address and -DFUZZING.
        .target(name: "CapstanFuzz", dependencies: [
            "CapstanCore", "CapstanManifests", "CapstanServer", "CapstanServing",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ], path: "Sources/Fuzz/CapstanFuzz"),
        .target(name: "CFuzzerDriver", path: "Sources/Fuzz/CFuzzerDriver"),
        .executableTarget(name: "FuzzManifest", dependencies: ["CapstanFuzz", "CFuzzerDriver"], path: "Sources/Fuzz/FuzzManifest"),
        .executableTarget(name: "FuzzWebhook", dependencies: ["CapstanFuzz", "CFuzzerDriver"], path: "Sources/Fuzz/FuzzWebhook"),
        .executableTarget(name: "FuzzGatewayHead", dependencies: ["CapstanFuzz", "CFuzzerDriver"], path: "Sources/Fuzz/FuzzGatewayHead"),
        // Benchmarks that need one long-lived process (scripts/bench-*.sh drive them).
        .executableTarget(name: "capstan-bench", dependencies: ["CapstanCore", "CapstanGit", "CapstanManifests", "CapstanStore", "CapstanEngine"]),
        .testTarget(name: "CapstanCoreTests", dependencies: ["CapstanCore"]),
        .testTarget(name: "CapstanManifestsTests", dependencies: ["CapstanManifests", "CapstanCore"],
                    resources: [.copy("Fixtures")]),
        // Real Git for tests (repositories, git daemon, HTTP and stalling servers); no Capstan code.
        .target(name: "CapstanTestSupport", path: "Tests/CapstanTestSupport"),
        .testTarget(name: "CapstanGitTests", dependencies: ["CapstanGit", "CapstanManifests", "CapstanCore", "CapstanTestSupport"]),
        .testTarget(name: "CapstanStoreTests", dependencies: [
            "CapstanStore", "CapstanCore", "CapstanSystem", "CapstanTestSupport", .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        .testTarget(name: "CapstanServingTests", dependencies: ["CapstanServing", "CapstanCore", "CapstanSystem", "CapstanTestSupport"]),
        .testTarget(name: "CapstanServerTests", dependencies: ["CapstanServer", "CapstanCore", "CapstanTestSupport"]),
        // A real `mlflow server` (scripts/test.sh installs it) and MLflow's own Python client as the judge.
        .testTarget(name: "CapstanMLflowTests", dependencies: ["CapstanMLflow", "CapstanCore", "CapstanTestSupport"]),
        .testTarget(name: "CapstanRunnerTests", dependencies: ["CapstanRunner", "CapstanCore", "CapstanTestSupport"]),
        .testTarget(name: "CapstanEngineTests", dependencies: [
            "CapstanEngine", "CapstanCore", "CapstanGit", "CapstanStore", "CapstanManifests", "CapstanRunner", "CapstanTestSupport",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // Every seed and every past finding of the fuzz targets, run through the same invariants.
        .testTarget(name: "CapstanFuzzTests", dependencies: ["CapstanFuzz"], exclude: ["Seeds", "Regressions"]),
        // The wake-up's invariants, in a test process of their own: the CLI tests block the
        // cooperative threads while they wait for real processes, and would starve its deadlines.
        .testTarget(name: "CapstanControllerTests", dependencies: ["CapstanController"]),
        .testTarget(name: "CapstanCLITests", dependencies: [
            "CapstanCLI", "capstan", "capstan-bench", "CapstanTestSupport", "CapstanStore", "CapstanCore", "CapstanEngine", "CapstanServer",
            .product(name: "Crypto", package: "swift-crypto"), .product(name: "GRDB", package: "GRDB.swift"),
        ], resources: [.copy("GoldenPlans")]),
    ],
    swiftLanguageModes: [.v6]
)
