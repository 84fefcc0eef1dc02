// swift-tools-version:6.0
import PackageDescription

// Dependency direction (ARCHITECTURE.md): Tensor ← Layers ← SegmentAnything ← Distill ← samdistill,
// with Optim (← Tensor only; `Parameter` lives in Tensor) used by Distill. C libraries come from Debian
// through pkg-config.
//
// Release builds target the CPU they are built on (`-target-cpu native`): the toolkit is built
// from source where it runs, and the elementwise kernels vectorise to the CPU's widest vectors.
// Results are the same up to float rounding (Swift never fuses a·b + c into FMA on its own; only
// the summation order of vectorised reductions changes). SAMDISTILL_PORTABLE=1 at build time gives
// a binary for any x86-64. Measurements: Experiments/performance/results.md (session 4).
let portable = Context.environment["SAMDISTILL_PORTABLE"] == "1"
let optimised: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"] + (portable ? [] : ["-target-cpu", "native"]),
                                              .when(configuration: .release))]

let package = Package(
    name: "SAMDistill",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "samdistill", targets: ["samdistill"]),
        .library(name: "SegmentAnything", targets: ["SegmentAnything"]),
        // The readers of user-supplied files, for the fuzz harnesses (Fuzz/Package.swift).
        .library(name: "CheckpointFormats", targets: ["CheckpointFormats"]),
        .library(name: "ImageCodecs", targets: ["ImageCodecs"]),
        .library(name: "Distill", targets: ["Distill"]),
        .library(name: "ONNX", targets: ["ONNX"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/weichsel/ZIPFoundation", from: "0.9.20"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5",
                       providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CImageIO", path: "Sources/CImageIO", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev", "libjpeg-dev"])]),
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),

        .target(name: "Tensor", dependencies: ["CBLAS"], swiftSettings: optimised),
        // File formats with no model type in them: HDF5 (the feature cache's container), the
        // checkpoint formats (PyTorch's zip + pickle subset, safetensors), the image codecs.
        .target(name: "HDF5", dependencies: ["CHDF5"], swiftSettings: optimised),
        .target(name: "CheckpointFormats", dependencies: [
            "Tensor", .product(name: "ZIPFoundation", package: "ZIPFoundation"),
        ], swiftSettings: optimised),
        .target(name: "ImageCodecs", dependencies: ["Tensor", "CImageIO"], swiftSettings: optimised),
        // ONNX: the Swift types generated from onnx.proto (committed; Scripts/gen-onnx-proto) and a
        // small graph builder. Distill's ONNX exporter writes models with it.
        .target(name: "ONNX", dependencies: ["Tensor", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .target(name: "Layers", dependencies: ["Tensor"], swiftSettings: optimised),
        // The processes of a data-parallel job over MPI (rank, size, allreduce, broadcast, barrier);
        // rank 0 of 1 with no MPI call when no launcher (mpirun, srun) started the process.
        .target(name: "Distributed", dependencies: ["CMPI"], swiftSettings: optimised),
        .target(name: "Optim", dependencies: ["Tensor"], swiftSettings: optimised),
        .target(name: "SegmentAnything", dependencies: [
            "Tensor", "Layers", "CheckpointFormats", "ImageCodecs",
        ], swiftSettings: optimised),
        .target(name: "Distill", dependencies: ["Tensor", "Layers", "Optim", "SegmentAnything", "HDF5", "CheckpointFormats", "ImageCodecs", "ONNX", "Distributed",
                                                .product(name: "Yams", package: "Yams"),
                                                .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimised),
        .executableTarget(name: "samdistill", dependencies: [
            "Tensor", "Layers", "Optim", "SegmentAnything", "Distill", "HDF5", "CheckpointFormats", "ImageCodecs", "CBLAS", "ONNX", "Distributed",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: optimised),

        // The naive references (plain loops, Double) the tests compare the fast layers with, kept
        // apart from the production kernels.
        .target(name: "LayersReference", dependencies: ["Tensor", "Layers"], path: "Sources/LayersReference"),
        // Test helpers (finite differences, fixture loading, comparisons), shared by test targets.
        .target(name: "TestSupport", dependencies: ["Tensor", "Layers", "CheckpointFormats"], path: "Sources/TestSupport"),

        .testTarget(name: "TensorTests", dependencies: ["Tensor", "CheckpointFormats", "TestSupport"]),
        .testTarget(name: "LayersTests", dependencies: ["Tensor", "Layers", "LayersReference", "TestSupport"]),
        .testTarget(name: "OptimTests", dependencies: ["Tensor", "Layers", "Optim", "CheckpointFormats", "TestSupport"]),
        .testTarget(name: "SegmentAnythingTests", dependencies: ["Tensor", "Layers", "CheckpointFormats", "ImageCodecs",
                                                                "SegmentAnything", "TestSupport"]),
        .testTarget(name: "DistillTests", dependencies: ["Tensor", "Layers", "Optim", "SegmentAnything", "Distill",
                                                        "HDF5", "CheckpointFormats", "ImageCodecs", "TestSupport", "Distributed"]),
        .testTarget(name: "ONNXExportTests", dependencies: ["Tensor", "Layers", "SegmentAnything", "Distill", "ONNX",
                                                           "CheckpointFormats", "ImageCodecs", "TestSupport"]),
    ],
    // Swift 5 mode: kernels share raw buffers across DispatchQueue.concurrentPerform workers by
    // design (disjoint ranges), which Swift 6's strict Sendable checking cannot express.
    swiftLanguageModes: [.v5]
)
