import Distill
import Foundation
import ImageCodecs
import SegmentAnything
import TestSupport
import XCTest

/// The CLI checks every exported student family passes (conv, RepViT): `segment` on a real photo
/// gives the library's mask score for the same model, `segment everything` decodes its whole 4×4
/// grid, and `eval` of the training checkpoint against MobileSAM reports its prompts.
enum StudentCLIChecks {
    /// `full`: the export with prompt encoder + decoder (`model` loaded from it); `checkpoint`: the
    /// training checkpoint; `encoderPrefix`: how `segment --json` names the encoder. Returns the eval report.
    @discardableResult
    static func segmentEverythingAndEval(exe: URL, full: URL, checkpoint: URL, model: SAMModel, encoderPrefix: String,
                                         in dir: URL, file: StaticString = #filePath, line: UInt = #line) throws -> EvaluationReport {
        let photo = try CacheTestSupport.realPhotos(["fruits.jpg"])[0]
        let json = dir.appendingPathComponent("seg.json")
        let s = try CacheTestSupport.run(exe, ["segment", "--checkpoint", full.path, "--image", photo.path, "--point", "250,240",
                                               "--out", dir.appendingPathComponent("overlay.png").path, "--json", json.path])
        XCTAssertEqual(s.status, 0, s.err, file: file, line: line)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
        let predictor = SAMPredictor(model: model)
        predictor.setImage(try ImageIO.read(photo))
        let p = try predictor.predict(points: [PromptPoint(x: 250, y: 240, label: 1)], multimaskOutput: false)
        XCTAssertEqual(try XCTUnwrap(summary["score"] as? Double), Double(p.iou(prompt: 0, index: 0)), accuracy: 1e-6, file: file, line: line)
        XCTAssertTrue((summary["encoder"] as? String)?.hasPrefix(encoderPrefix) == true, "\(summary)", file: file, line: line)

        let everything = dir.appendingPathComponent("everything.json")
        let g = try CacheTestSupport.run(exe, ["segment", "everything", "--checkpoint", full.path, "--image", photo.path,
                                               "--points-per-side", "4", "--out", dir.appendingPathComponent("all.png").path,
                                               "--json", everything.path])
        XCTAssertEqual(g.status, 0, g.err, file: file, line: line)
        let all = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: everything)) as? [String: Any])
        XCTAssertEqual(all["decoded_prompts"] as? Int, 16, file: file, line: line)

        let images = dir.appendingPathComponent("images")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: photo, to: images.appendingPathComponent("fruits.jpg"))
        let report = dir.appendingPathComponent("eval.json")
        let r = try CacheTestSupport.run(exe, ["eval", "--student", checkpoint.path, "--teacher", try Fixture.mobileSAMCheckpoint().path,
                                               "--images", images.path, "--prompts", "point", "--points-per-image", "2",
                                               "--json", report.path])
        XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
        let evaluation = try JSONDecoder().decode(EvaluationReport.self, from: Data(contentsOf: report), snakeCase: true)
        XCTAssertEqual(evaluation.summary.map(\.prompts), [2], file: file, line: line)
        return evaluation
    }
}
