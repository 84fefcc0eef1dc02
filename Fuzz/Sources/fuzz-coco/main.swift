import Distill
import FuzzSupport

/// COCO annotation JSON (with RLE and polygon segmentations, decoded to masks up to 4 Mpixel).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let dataset = try? CocoDataset(json: FuzzInput.data(data, size), file: "fuzz.json") else { return 0 }
    for a in dataset.annotations.prefix(8) {
        guard let image = dataset.images.first(where: { $0.id == a.imageId }),
              image.width.multipliedReportingOverflow(by: image.height).partialValue <= 1 << 22 else { continue }
        _ = CocoMask.mask(a.segmentation, height: image.height, width: image.width)
    }
    return 0
}

runFuzzer(fuzzOne)
