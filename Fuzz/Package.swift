// swift-tools-version:6.0
import PackageDescription

// libFuzzer harnesses, one per input format the toolkit reads from users (Scripts/fuzz builds and
// runs them with `-sanitize=fuzzer,address` in their own build folder; each harness's main hands
// libFuzzer its callback through LLVMFuzzerRunDriver). Not part of the toolkit's build.
let formats = [
    ("fuzz-torch-checkpoint", "CheckpointFormats"),  // .pt / .pth: zip container + pickle subset
    ("fuzz-safetensors", "CheckpointFormats"),
    ("fuzz-image", "ImageCodecs"),                  // PNG / JPEG through libpng / libjpeg
    ("fuzz-config", "Distill"),                     // YAML run configs: decoding and validation
    ("fuzz-coco", "Distill"),                       // COCO annotation JSON, RLE and polygons
    ("fuzz-cache", "Distill"),                      // the HDF5 feature cache reader's checks
    ("fuzz-onnx", "ONNX"),                          // ONNX models as `inspect` reads them
]

let package = Package(
    name: "SAMDistillFuzz",
    dependencies: [.package(name: "SAMDistill", path: "..")],
    targets: [.target(name: "CFuzzer"), .target(name: "FuzzSupport", dependencies: ["CFuzzer"])] + formats.map { name, library in
        .executableTarget(name: name, dependencies: ["FuzzSupport", .product(name: library, package: "SAMDistill")])
    },
    swiftLanguageModes: [.v5]
)
