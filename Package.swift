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
        .target(name: "Engine", dependencies: ["GGUF", "Kernels"]),
        .target(name: "ModelStore", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "Discovery", dependencies: ["CZMQ"]),
        .executableTarget(
            name: "tandem",
            dependencies: [
                "Engine", "ModelStore", "GGUF",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "GGUF"]),
        .testTarget(
            name: "EngineTests", dependencies: ["Engine", "GGUF", "ModelStore"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ModelStoreTests", dependencies: ["ModelStore"]),
        .testTarget(name: "DiscoveryTests", dependencies: ["Discovery"]),
        .testTarget(
            name: "EndToEndTests", dependencies: ["ModelStore"], resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
