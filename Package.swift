// swift-tools-version:6.1
import PackageDescription

// Strict settings for every Swift target (shared/STYLE.md: no warnings, ExistentialAny).
let strictSwift: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .unsafeFlags(["-warnings-as-errors"], .when(configuration: .debug)),
]

// C kernels are always built optimised: a debug test build must still run the model at a usable speed.
let kernelCFlags: [CSetting] = [
    .unsafeFlags(["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
]

let package = Package(
    name: "dlora",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "dlora", targets: ["dlora"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
        // Imported directly by the Server's HTTP guard (ConnectionGuard); already in the graph through Hummingbird.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.25.0"),
        // The router's client to its replicas (streams, connection pooling); HummingbirdTesting already pulls it in.
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // OpenBLAS from Debian's libopenblas-dev, found through pkg-config.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Sources/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // SIMD kernels (AVX-512 with runtime dispatch and portable fallbacks) and the kernel thread pool.
        // Only `Kernels` (and its tests) import them: everything else calls the typed Swift face.
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: kernelCFlags, linkerSettings: [.linkedLibrary("pthread")]),
        .target(name: "Kernels", dependencies: ["CKernels", "COpenBLAS"], swiftSettings: strictSwift),
        // Byte-level BPE and SentencePiece tokenizers, chat templates, the streaming detokenizer; the GGUF
        // metadata they read comes in through the small `MetadataSource` protocol defined here.
        .target(name: "Tokenizers", swiftSettings: strictSwift),
        // Models imports Tokenizers only for `MetadataSource`, which its GGUF reader implements.
        .target(name: "Models", dependencies: ["Kernels", "Tokenizers"], swiftSettings: strictSwift),
        // LoRA adapter formats (PEFT, GGUF LoRA), validation against the base, the adapter registry.
        .target(name: "Adapters", dependencies: ["Models", "Tokenizers", "Kernels"], swiftSettings: strictSwift),
        // Pure request/batch bookkeeping: no tensors, no clock, no I/O (shared/DESIGN.md).
        .target(name: "Scheduling", swiftSettings: strictSwift),
        // Pure cluster policies over replica status values: dispatch, adapter placement, migration planning.
        // Shared by the router and the simulator; no clock, no I/O (shared/DESIGN.md).
        .target(name: "ClusterPolicy", swiftSettings: strictSwift),
        // Discrete-event simulation of replicas and the router over simulated time: the real `Scheduler` and
        // `ClusterPolicy` code on modelled step, merge, load, swap and transfer times. Pure: no clock, no I/O.
        .target(name: "Simulator", dependencies: ["Scheduling", "ClusterPolicy"], swiftSettings: strictSwift),
        // LoRA training: backward passes of the Llama block over frozen f32 base weights, AdamW, JSONL data,
        // PEFT export (docs/design/training.md). Tokenizers for the training data.
        .target(name: "Training", dependencies: ["Models", "Adapters", "Kernels", "Tokenizers"], swiftSettings: strictSwift),
        // The continuous-batching engine of one replica: sequences, sampling, the step loop.
        .target(name: "Engine", dependencies: ["Scheduling", "Models", "Tokenizers", "Adapters", "Kernels"], swiftSettings: strictSwift),
        // OpenAI's wire types (responses, chunks, errors) and their one JSON encoder: no logic, Foundation only.
        .target(name: "ServingAPI", swiftSettings: strictSwift),
        // The hardened HTTP front both the replica server and the router stand behind: connection guard
        // (timeouts, framing, limits), connection cap, OpenAI-shaped errors, bearer keys. No engine.
        .target(
            name: "HTTPFront",
            dependencies: [
                "ServingAPI", "Tokenizers",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift
        ),
        // The OpenAI-compatible HTTP server (Hummingbird), its metrics and the adapter catalog it serves.
        .target(
            name: "Server",
            dependencies: [
                "ServingAPI", "HTTPFront", "Engine", "Scheduling", "Models", "Tokenizers", "Adapters",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSwift
        ),
        // The router process: replica handles, health, stream relay, migration, failover. Never links the engine.
        .target(
            name: "Cluster",
            dependencies: [
                "ServingAPI", "HTTPFront", "ClusterPolicy",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "dlora",
            dependencies: ["Server", "Cluster", "ClusterPolicy", "Simulator", "Engine", "Models", "Tokenizers", "Adapters", "Kernels", "Training",
                           .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "AsyncHTTPClient", package: "async-http-client"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSwift
        ),
        // Test-only scaffolding shared by the test targets: fixture paths, golden decoding, temporary
        // directories, a seeded RNG, tolerance helpers. Foundation only; never part of a product.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strictSwift),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "CKernels", "TestSupport"], swiftSettings: strictSwift),
        .testTarget(name: "SchedulingTests", dependencies: ["Scheduling", "TestSupport"], swiftSettings: strictSwift),
        .testTarget(name: "ClusterPolicyTests", dependencies: ["ClusterPolicy"], swiftSettings: strictSwift),
        .testTarget(name: "SimulatorTests", dependencies: ["Simulator", "Scheduling", "ClusterPolicy", "TestSupport"], swiftSettings: strictSwift),
        // Multi-process: `dlora cluster` (router + replicas) on loopback, driven over HTTP; and the router in process in
        // front of scripted replicas (Hummingbird apps on loopback).
        .testTarget(name: "ClusterTests", dependencies: ["TestSupport", "ServingAPI", "Cluster", "ClusterPolicy",
                                                          .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                          .product(name: "Hummingbird", package: "hummingbird"),
                                                          .product(name: "Logging", package: "swift-log"),
                                                          .product(name: "NIOCore", package: "swift-nio"),
                                                          .product(name: "NIOHTTP1", package: "swift-nio")],
                    swiftSettings: strictSwift),
        .testTarget(name: "ModelsTests", dependencies: ["TestSupport", "Models", "Kernels"], swiftSettings: strictSwift),
        // Models only for `DefaultModel`: the SmolLM2 goldens read the default model where the CLI finds it.
        .testTarget(name: "TokenizersTests", dependencies: ["TestSupport", "Tokenizers", "Models"], swiftSettings: strictSwift),
        .testTarget(name: "EngineTests", dependencies: ["TestSupport", "Engine", "Models", "Tokenizers", "Adapters", "Kernels"], swiftSettings: strictSwift),
        .testTarget(name: "ServerTests", dependencies: ["TestSupport", "ServingAPI", "HTTPFront", "Server", "Engine", "Models", "Tokenizers", "Adapters", .product(name: "HummingbirdTesting", package: "hummingbird")],
                    swiftSettings: strictSwift),
        // Gradient checks (finite differences over f64 twins), training runs, PEFT export through the engine.
        .testTarget(name: "TrainingTests", dependencies: ["TestSupport", "Training", "Engine", "Adapters", "Models", "Tokenizers", "Kernels"],
                    swiftSettings: strictSwift),
        .testTarget(name: "AdaptersTests", dependencies: ["TestSupport", "Adapters", "Engine", "Models", "Tokenizers", "Kernels"], swiftSettings: strictSwift),
    ]
)
