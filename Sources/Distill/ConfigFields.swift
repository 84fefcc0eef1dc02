import Foundation
import Yams

// A config section's keys, each spelled once: a `ConfigField` reads its key from YAML into a
// property (type errors and bad values reported with the key path) and writes the property back
// for the resolved config. A section lists its fields; reading and writing both walk that list.

/// A value a config key can hold: read from a YAML node, written back as one.
protocol ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Self?
    var configNode: Node { get }
}

extension Int: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Int? { r.int(n, key: key) }
    var configNode: Node { Node(String(self), Tag(.int)) }
}

extension UInt64: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> UInt64? { r.int(n, key: key, min: 0).map { UInt64(Swift.max($0, 0)) } }
    var configNode: Node { Node(String(self), Tag(.int)) }
}

extension Double: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Double? { r.double(n, key: key) }
    var configNode: Node { Node(String(self), Tag(.float)) }
}

extension Float: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Float? { r.double(n, key: key).map(Float.init) }
    var configNode: Node { Node(String(Double(self)), Tag(.float)) }
}

extension Bool: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Bool? { r.bool(n, key: key) }
    var configNode: Node { Node(self ? "true" : "false", Tag(.bool)) }
}

extension String: ConfigValue {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> String? { r.string(n, key: key) }
    var configNode: Node { Node(self) }
}

/// An element type of a list-valued key.
protocol ConfigListElement: ConfigValue {
    static func readList(_ n: Node, key: String, _ r: NodeReader) -> [Self]?
}

extension Int: ConfigListElement {
    static func readList(_ n: Node, key: String, _ r: NodeReader) -> [Int]? { r.intList(n, key: key) }
}

extension Float: ConfigListElement {
    static func readList(_ n: Node, key: String, _ r: NodeReader) -> [Float]? {
        guard let seq = n.sequence else { r.sink.add(r.keyPath(key), "expected a list of numbers"); return nil }
        var out: [Float] = []
        for (i, e) in seq.enumerated() {
            guard let v = r.double(e, key: "\(key)[\(i)]") else { return nil }
            out.append(Float(v))
        }
        return out
    }
}

extension String: ConfigListElement {
    static func readList(_ n: Node, key: String, _ r: NodeReader) -> [String]? { r.stringList(n, key: key) }
}

extension Array: ConfigValue where Element: ConfigListElement {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> [Element]? { Element.readList(n, key: key, r) }
    var configNode: Node { Node.sequence(Node.Sequence(map(\.configNode), Tag(.seq), .flow)) }
}

/// A choice among named values (`split: val`): unknown names list the choices.
protocol ConfigChoice: ConfigValue, CaseIterable {
    var choiceName: String { get }
}

extension ConfigChoice {
    static func read(_ n: Node, key: String, _ r: NodeReader) -> Self? {
        guard let s = r.string(n, key: key) else { return nil }
        if let v = allCases.first(where: { $0.choiceName == s }) { return v }
        let names = allCases.map { "'\($0.choiceName)'" }
        let list = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        r.problem(key, "must be \(list), got '\(s)'")
        return nil
    }
    var configNode: Node { Node(choiceName) }
}

/// One key of a config section.
struct ConfigField<Section> {
    let key: String
    let read: (inout Section, NodeReader) -> Void
    let write: (Section) -> Node?

    /// `key` ↔ `property`; `check` returns a problem with a read value (nil: fine).
    static func value<V: ConfigValue>(_ key: String, _ property: WritableKeyPath<Section, V>,
                                      check: ((V) -> String?)? = nil) -> Self {
        ConfigField(key: key, read: { s, r in
            guard let n = r.take(key), let v = V.read(n, key: key, r) else { return }
            s[keyPath: property] = v
            if let m = check?(v) { r.problem(key, m) }
        }, write: { $0[keyPath: property].configNode })
    }

    /// An integer key with a lower bound.
    static func int(_ key: String, _ property: WritableKeyPath<Section, Int>, min: Int) -> Self {
        value(key, property, check: { $0 < min ? "must be ≥ \(min), got \($0)" : nil })
    }

    /// An optional key: absent leaves the default, `null` sets nil; nil is written as `null` when
    /// `writeNull` (a non-nil default must round-trip) and left out otherwise.
    static func optional<V: ConfigValue>(_ key: String, _ property: WritableKeyPath<Section, V?>, writeNull: Bool = false,
                                         check: ((V) -> String?)? = nil) -> Self {
        ConfigField(key: key, read: { s, r in
            guard let n = r.take(key) else { return }
            if n.null != nil, n.scalar?.style == .plain || n.scalar?.style == .any { s[keyPath: property] = nil; return }
            guard let v = V.read(n, key: key, r) else { return }
            s[keyPath: property] = v
            if let m = check?(v) { r.problem(key, m) }
        }, write: { s in s[keyPath: property].map(\.configNode) ?? (writeNull ? Node("null", Tag(.null)) : nil) })
    }

    /// A nested section (`prompts: {types: …, count: …}`) read with its own field list.
    static func section<S>(_ key: String, _ property: WritableKeyPath<Section, S>, _ fields: [ConfigField<S>]) -> Self {
        ConfigField(key: key, read: { s, r in
            guard let sub = r.object(key) else { return }
            sub.read(fields, into: &s[keyPath: property])
            sub.finish()
        }, write: { configMapping($0[keyPath: property], fields) })
    }

    /// A nested section that may be absent (nil); present (even `{}`) it starts from `empty`.
    /// `problems` checks the whole section, each text starting with its relative key.
    static func optionalSection<S>(_ key: String, _ property: WritableKeyPath<Section, S?>, _ fields: [ConfigField<S>],
                                   empty: S, problems: @escaping (S) -> [String] = { _ in [] }) -> Self {
        ConfigField(key: key, read: { s, r in
            guard let sub = r.object(key) else { return }
            var v = empty
            sub.read(fields, into: &v)
            problems(v).forEach(sub.problemText)
            sub.finish()
            s[keyPath: property] = v
        }, write: { s in s[keyPath: property].map { configMapping($0, fields) } })
    }
}

extension NodeReader {
    /// Reads every field of `fields` present under this mapping into `section`.
    func read<S>(_ fields: [ConfigField<S>], into section: inout S) {
        for f in fields { f.read(&section, self) }
    }
}

/// `section` as a YAML mapping: `leading` pairs (a `type:` key) first, then the fields in order.
func configMapping<S>(_ section: S, _ fields: [ConfigField<S>], leading: [(String, Node?)] = []) -> Node {
    let pairs = leading + fields.map { ($0.key, $0.write(section)) }
    return Node.mapping(Node.Mapping(pairs.compactMap { k, v in v.map { (Node(k), $0) } }))
}
