// swift-tools-version: 6.0
import PackageDescription

/// Tandem: disaggregated prefill/decode LLM serving in Swift.
///
/// Targets follow the data flow: GGUF (file format) → Kernels (hot loops) → Engine (model, tokenizer,
/// sampling) → Server / KVTransfer / Discovery / Proxy → the `tandem` CLI.
let optimizedC: [CSetting] = [.unsafeFlags(["-O3", "-fno-math-errno"])]

let package = Package(
    name: "Tandem",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tandem", targets: ["tandem"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.29.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.25.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // libzmq from the system (Debian/Ubuntu: libzmq3-dev), for instance registration with the proxy.
        // (No `pkgConfig:` here: Debian's libzmq.pc adds an -isystem flag SwiftPM rejects with a warning; the
        // header is in /usr/include and the module map links -lzmq.)
        .systemLibrary(name: "CZMQ", providers: [.apt(["libzmq3-dev"])]),
        // The innermost SIMD loops (quantized dot products). Small, documented, tested against Swift references.
        .target(name: "CKernels", cSettings: optimizedC),
        .target(name: "GGUF"),
        .target(name: "Kernels", dependencies: ["CKernels", "GGUF"]),
        // JSON values and string literals, with no dependency: shared by the engine (chat templates) and the HTTP API.
        .target(name: "JSON"),
        // Structured outputs: grammars (GBNF, regular expressions, JSON Schema) and the token masks they allow.
        .target(name: "Grammar", dependencies: ["JSON"]),
        .target(name: "Engine", dependencies: ["GGUF", "Grammar", "JSON", "Kernels"]),
        .target(name: "ModelStore", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "Discovery",
            dependencies: [
                "CZMQ", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]),
        // The OpenAI surface shared by instances and proxy: errors, access and body checks, client-gone
        // cancellation, the HTTP/1 connection guards, JSON and event-stream responses.
        .target(
            name: "OpenAIAPI",
            dependencies: [
                "Discovery", "JSON",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ]
        ),
        .target(
            name: "KVTransfer",
            dependencies: [
                "CKernels", "Discovery", "Engine", "JSON",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .target(
            name: "Server",
            dependencies: [
                "Engine", "GGUF", "Discovery", "Grammar", "JSON", "KVTransfer", "Kernels", "OpenAIAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Proxy",
            dependencies: [
                "Discovery", "JSON", "OpenAIAPI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Bench",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "tandem",
            dependencies: [
                "Engine", "ModelStore", "GGUF", "Server", "KVTransfer", "Discovery", "Proxy", "Bench", "Kernels",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Fuzz harnesses for the decoders that read what others send (KV frames, discovery msgpack, request
        // fields): libFuzzer drives them when built by scripts/fuzz.sh; an ordinary build replays inputs.
        .executableTarget(
            name: "tandem-fuzz",
            dependencies: [
                "CFuzzDriver", "KVTransfer", "Server", "Discovery", .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/TandemFuzz"),
        .target(name: "CFuzzDriver"),
        .testTarget(name: "FuzzCorpusTests", dependencies: ["KVTransfer", "Server", "Discovery", "JSON"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF"]),
        .testTarget(name: "GrammarTests", dependencies: ["Grammar", "JSON"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "GGUF"]),
        .testTarget(
            name: "EngineTests", dependencies: ["Engine", "GGUF", "ModelStore"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ModelStoreTests", dependencies: ["ModelStore"]),
        .testTarget(name: "DiscoveryTests", dependencies: ["Discovery"]),
        .testTarget(
            name: "KVTransferTests",
            dependencies: [
                "KVTransfer", "Discovery", "Engine", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]),
        .testTarget(name: "ProxyUnitTests", dependencies: ["Proxy", "Discovery"]),
        .testTarget(
            name: "OpenAIAPITests",
            dependencies: [
                "JSON", "OpenAIAPI", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Engine", "JSON", "ModelStore"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "ModelStore", "Discovery", "Engine", "KVTransfer",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Fixtures")]
        ),
        // Tests across hosts made of network namespaces (scripts/hosts.sh); they need root, as CI has.
        .testTarget(
            name: "HostsTests",
            dependencies: [
                "Discovery",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
