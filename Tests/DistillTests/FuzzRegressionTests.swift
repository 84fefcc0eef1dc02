import CheckpointFormats
import Distill
import Foundation
import ImageCodecs
import TestSupport
import XCTest

/// Every input `Scripts/fuzz` found crashing a reader (Tests/Fixtures/fuzz/TARGET/, one file per
/// fixed crash) now ends in that reader's own error naming the file: a regression would trap and
/// take the test process down.
final class FuzzRegressionTests: XCTestCase {
    private func reproducers(_ target: String) throws -> [URL] {
        let dir = Fixture.directory.appendingPathComponent("fuzz/\(target)")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.sorted().map { dir.appendingPathComponent($0) }
    }

    /// `body` must throw an error whose text names `url` (the reader's own message, not a crash).
    private func assertRejects(_ url: URL, suffix: String, _ body: (URL) throws -> Void, file: StaticString = #filePath, line: UInt = #line) throws {
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-\(url.lastPathComponent)\(suffix)")
        try? FileManager.default.removeItem(at: copy)
        try FileManager.default.copyItem(at: url, to: copy)
        defer { try? FileManager.default.removeItem(at: copy) }
        do {
            try body(copy)
            XCTFail("\(url.lastPathComponent): read without an error", file: file, line: line)
        } catch {
            XCTAssertTrue("\(error)".contains(copy.path) || "\(error)".contains(copy.lastPathComponent),
                          "\(url.lastPathComponent): the error does not name the file: \(error)", file: file, line: line)
        }
    }

    func testSafeTensorsReproducers() throws {
        let files = try reproducers("safetensors")
        XCTAssertFalse(files.isEmpty, "Tests/Fixtures/fuzz/safetensors holds the fixed crashes")
        for f in files { try assertRejects(f, suffix: ".safetensors") { _ = try SafeTensors.read($0) } }
    }

    func testTorchCheckpointReproducers() throws {
        for f in try reproducers("torch-checkpoint") { try assertRejects(f, suffix: ".pt") { _ = try TorchCheckpoint(contentsOf: $0) } }
    }

    func testImageReproducers() throws {
        for f in try reproducers("image") {
            try assertRejects(f, suffix: ".png") { _ = try ImageIO.read($0) }
        }
    }

    func testCacheReproducers() throws {
        for f in try reproducers("cache") {
            try assertRejects(f, suffix: ".h5") { url in
                let r = try CacheReader(url)
                for row in r.rows().prefix(2) { _ = try r.row(row); _ = try r.everythingMasks(row) }
            }
        }
    }

    func testCocoReproducers() throws {
        for f in try reproducers("coco") { try assertRejects(f, suffix: ".json") { _ = try CocoDataset.read($0) } }
    }

    func testConfigReproducers() throws {
        for f in try reproducers("config") {
            XCTAssertThrowsError(try RunConfig.load(f), f.lastPathComponent) { XCTAssertTrue($0 is ConfigError, "\($0)") }
        }
    }
}
