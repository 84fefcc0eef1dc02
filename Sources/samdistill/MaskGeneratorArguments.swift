import ArgumentParser
import Distill
import SegmentAnything

/// `--fast` / `--full-grid`: which grid SAM's automatic mask generator decodes.
enum GridMode: String, EnumerableFlag {
    /// Every point of the grid (SAM's algorithm).
    case fullGrid
    /// A budget of the grid (28%): a coarse grid first, then the points whose image embedding
    /// differs most from every decoded point's.
    case fast

    static func help(for value: GridMode) -> ArgumentHelp? {
        switch value {
        case .fullGrid: "Decode every point of the grid (SAM's algorithm)."
        case .fast: "Decode 28% of the grid: a coarse grid first, then the points least like any decoded point."
        }
    }
}

/// The automatic mask generator's options that `segment everything` and `cache --everything-masks`
/// share (SAM's names; each command has its own defaults, given in its help).
struct MaskGeneratorArguments: ParsableArguments {
    @Option(help: "Points per side of the prompt grid.")
    var pointsPerSide: Int?

    @Flag(help: nil)
    var grid: GridMode?

    @Option(help: "Keep masks whose predicted IoU is above this (0 disables; default 0.88).")
    var predIouThresh: Double?

    @Option(help: "Keep masks whose stability score is at least this (0 disables; default 0.95).")
    var stabilityScoreThresh: Double?

    @Option(help: "Box IoU above which NMS removes a duplicate mask (default 0.7).")
    var boxNmsThresh: Double?

    /// True when any option was given.
    var given: Bool {
        pointsPerSide != nil || grid != nil || predIouThresh != nil || stabilityScoreThresh != nil || boxNmsThresh != nil
    }

    /// The given options over `options` (nil ones keep its values); `fast` is the default grid.
    func apply(to options: inout AutomaticMaskGeneratorOptions, fastByDefault: Bool) {
        if let v = pointsPerSide { options.pointsPerSide = v }
        if let v = predIouThresh { options.predIoUThresh = v }
        if let v = stabilityScoreThresh { options.stabilityScoreThresh = v }
        if let v = boxNmsThresh { options.boxNMSThresh = v }
        if (grid ?? (fastByDefault ? .fast : .fullGrid)) == .fast {
            options.fastMode = options.fastMode ?? FastModeOptions()
        } else {
            options.fastMode = nil
        }
    }
}

extension MaskGeneratorArguments {
    /// The given options over a cache's everything-mask settings.
    func apply(to settings: inout EverythingMaskSettings) {
        if let v = pointsPerSide { settings.pointsPerSide = v }
        if let g = grid { settings.fast = g == .fast }
        if let v = predIouThresh { settings.predIoUThresh = v }
        if let v = stabilityScoreThresh { settings.stabilityScoreThresh = v }
        if let v = boxNmsThresh { settings.boxNMSThresh = v }
    }
}
