import Foundation

// The subset of Python's pickle protocol (2–5) that `torch.save` writes for state dicts and
// training checkpoints: containers, scalars, strings, memo, and three hooks for the parts that
// need PyTorch's meaning (which globals exist, what a persistent id loads, what calling a global
// with arguments builds). Anything outside the subset is a `PickleError`, never a crash.

/// A Python value rebuilt by `Unpickler`.
///
/// Lists and dicts are reference types (`PickleList`, `PickleDict`) because pickle creates them
/// empty, memoises them, and fills them afterwards (APPEND/SETITEMS): every memo copy must see the
/// same contents, as in Python.
indirect enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PickleValue])
    case list(PickleList)
    case dict(PickleDict)
    /// A class or function found by GLOBAL/STACK_GLOBAL and accepted by the `resolveGlobal` hook.
    case global(module: String, name: String)
    /// A PyTorch storage (what BINPERSID loads in a checkpoint).
    case storage(TorchStorageReference)
    /// A PyTorch tensor view of a storage (what `_rebuild_tensor_v2` builds).
    case tensor(TorchTensorReference)

    /// Python's spelling of the type, for error messages.
    var typeName: String {
        switch self {
        case .none: "None"
        case .bool: "bool"
        case .int: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .global(let m, let n): "\(m).\(n)"
        case .storage: "storage"
        case .tensor: "tensor"
        }
    }
}

final class PickleList {
    var items: [PickleValue]
    init(_ items: [PickleValue] = []) { self.items = items }
}

/// An insertion-ordered dict. Keys that Python would hash alike (str, int, bool, None) replace
/// their earlier value, as in Python; other keys (tuples…) are appended.
final class PickleDict {
    private(set) var items: [(key: PickleValue, value: PickleValue)] = []
    private var index: [String: Int] = [:]

    func set(_ key: PickleValue, _ value: PickleValue) {
        if let h = PickleDict.hashKey(key) {
            if let i = index[h] { items[i].value = value; return }
            index[h] = items.count
        }
        items.append((key, value))
    }

    private static func hashKey(_ key: PickleValue) -> String? {
        switch key {
        case .string(let s): "s" + s
        case .int(let i): "i\(i)"
        case .bool(let b): "i\(b ? 1 : 0)"  // True == 1 in Python dicts
        case .none: "n"
        default: nil
        }
    }
}

/// Why a pickle stream could not be read. `offset` is the byte position of the opcode; hooks
/// throw with offset -1 and the machine fills in the opcode they ran under.
enum PickleError: Error {
    case unsupportedOpcode(opcode: UInt8, offset: Int)
    case unsupportedGlobal(String, offset: Int)
    case malformed(String, offset: Int)

    func at(_ offset: Int) -> PickleError {
        switch self {
        case .unsupportedGlobal(let g, -1): .unsupportedGlobal(g, offset: offset)
        case .malformed(let m, -1): .malformed(m, offset: offset)
        default: self
        }
    }
}

/// Hooks that give PyTorch's meaning to the generic machine. They throw `PickleError` with
/// offset -1 (the machine adds the opcode's position).
struct PickleHooks {
    /// GLOBAL/STACK_GLOBAL: returns the value for `module.name`, or throws for globals outside the
    /// allow-list (pickle would import and run arbitrary code here; we never do).
    var resolveGlobal: (_ module: String, _ name: String) throws -> PickleValue
    /// BINPERSID: the object a persistent id stands for.
    var persistentLoad: (_ pid: PickleValue) throws -> PickleValue
    /// REDUCE: calls `callable` (a resolved global) with `arguments`.
    var reduce: (_ callable: PickleValue, _ arguments: [PickleValue]) throws -> PickleValue
}

/// A pickle virtual machine over a byte buffer, for the opcodes listed in `run()`.
struct Unpickler {
    private let bytes: [UInt8]
    private let hooks: PickleHooks
    private var position = 0
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [Int: PickleValue] = [:]

    init(bytes: [UInt8], hooks: PickleHooks) {
        self.bytes = bytes
        self.hooks = hooks
    }

    /// Runs to STOP and returns the pickled object.
    mutating func load() throws -> PickleValue {
        while true {
            let start = position
            let op = try readByte()
            do {
                if let result = try step(op) { return result }
            } catch let error as PickleError {
                throw error.at(start)
            }
        }
    }

    /// Executes one opcode; returns the result at STOP.
    private mutating func step(_ op: UInt8) throws -> PickleValue? {
        let at = position - 1
        switch op {
        case 0x80:  // PROTO
            let proto = try readByte()
            guard proto <= 5 else { throw PickleError.malformed("pickle protocol \(proto) is newer than 5", offset: at) }
        case 0x95:  // FRAME: an 8-byte length; the framed bytes follow inline
            _ = try readBytes(8)
        case 0x2E:  // STOP
            guard let result = stack.popLast() else { throw PickleError.malformed("STOP with an empty stack", offset: at) }
            return result
        case 0x28:  // MARK
            marks.append(stack.count)
        case 0x30:  // POP
            _ = try pop(at)
        case 0x31:  // POP_MARK
            _ = try popMark(at)
        case 0x32:  // DUP
            guard let top = stack.last else { throw PickleError.malformed("DUP with an empty stack", offset: at) }
            stack.append(top)

        // Constants and scalars
        case 0x4E: stack.append(.none)  // NONE
        case 0x88: stack.append(.bool(true))  // NEWTRUE
        case 0x89: stack.append(.bool(false))  // NEWFALSE
        case 0x4A: stack.append(.int(Int(Int32(bitPattern: try readUInt32()))))  // BININT
        case 0x4B: stack.append(.int(Int(try readByte())))  // BININT1
        case 0x4D: stack.append(.int(Int(try readUInt16())))  // BININT2
        case 0x8A:  // LONG1: n bytes of little-endian two's complement
            let n = Int(try readByte())
            stack.append(.int(try readLong(count: n, at: at)))
        case 0x8B:  // LONG4
            let n = Int(Int32(bitPattern: try readUInt32()))
            guard n >= 0 else { throw PickleError.malformed("LONG4 with negative length \(n)", offset: at) }
            stack.append(.int(try readLong(count: n, at: at)))
        case 0x47:  // BINFLOAT: big-endian IEEE double
            let raw = try readBytes(8).reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
            stack.append(.float(Double(bitPattern: raw)))

        // Strings and bytes
        case 0x58: stack.append(.string(try readString(count: Int(try readUInt32()), at: at)))  // BINUNICODE
        case 0x8C: stack.append(.string(try readString(count: Int(try readByte()), at: at)))  // SHORT_BINUNICODE
        case 0x8D: stack.append(.string(try readString(count: try readLength64(at), at: at)))  // BINUNICODE8
        case 0x54:  // BINSTRING (Python 2 str, signed 4-byte length)
            let n = Int(Int32(bitPattern: try readUInt32()))
            guard n >= 0 else { throw PickleError.malformed("BINSTRING with negative length \(n)", offset: at) }
            stack.append(.string(try readString(count: n, at: at, latin1: true)))
        case 0x55: stack.append(.string(try readString(count: Int(try readByte()), at: at, latin1: true)))  // SHORT_BINSTRING
        case 0x42: stack.append(.bytes(try readBytes(Int(try readUInt32()))))  // BINBYTES
        case 0x43: stack.append(.bytes(try readBytes(Int(try readByte()))))  // SHORT_BINBYTES
        case 0x8E: stack.append(.bytes(try readBytes(try readLength64(at))))  // BINBYTES8

        // Containers
        case 0x29: stack.append(.tuple([]))  // EMPTY_TUPLE
        case 0x85: stack.append(.tuple(try popCount(1, at)))  // TUPLE1
        case 0x86: stack.append(.tuple(try popCount(2, at)))  // TUPLE2
        case 0x87: stack.append(.tuple(try popCount(3, at)))  // TUPLE3
        case 0x74: stack.append(.tuple(try popMark(at)))  // TUPLE
        case 0x5D: stack.append(.list(PickleList()))  // EMPTY_LIST
        case 0x6C: stack.append(.list(PickleList(try popMark(at))))  // LIST
        case 0x7D: stack.append(.dict(PickleDict()))  // EMPTY_DICT
        case 0x64:  // DICT
            let items = try popMark(at)
            guard items.count % 2 == 0 else { throw PickleError.malformed("DICT with an odd number of items", offset: at) }
            let d = PickleDict()
            for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }
            stack.append(.dict(d))
        case 0x61:  // APPEND
            let value = try pop(at)
            try list(at).items.append(value)
        case 0x65:  // APPENDS
            let values = try popMark(at)
            try list(at).items.append(contentsOf: values)
        case 0x73:  // SETITEM
            let value = try pop(at), key = try pop(at)
            try dict(at).set(key, value)
        case 0x75:  // SETITEMS
            let items = try popMark(at)
            guard items.count % 2 == 0 else { throw PickleError.malformed("SETITEMS with an odd number of items", offset: at) }
            let d = try dict(at)
            for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }

        // Memo
        case 0x94:  // MEMOIZE
            guard let top = stack.last else { throw PickleError.malformed("MEMOIZE with an empty stack", offset: at) }
            memo[memo.count] = top
        case 0x71: try put(Int(try readByte()), at)  // BINPUT
        case 0x72: try put(Int(try readUInt32()), at)  // LONG_BINPUT
        case 0x68: try get(Int(try readByte()), at)  // BINGET
        case 0x6A: try get(Int(try readUInt32()), at)  // LONG_BINGET

        // Objects
        case 0x63:  // GLOBAL: "module\nname\n"
            let module = try readLine(at), name = try readLine(at)
            stack.append(try resolve(module, name, at))
        case 0x93:  // STACK_GLOBAL
            let nameValue = try pop(at), moduleValue = try pop(at)
            guard case .string(let module) = moduleValue, case .string(let name) = nameValue else {
                throw PickleError.malformed("STACK_GLOBAL needs two strings, got \(moduleValue.typeName), \(nameValue.typeName)", offset: at)
            }
            stack.append(try resolve(module, name, at))
        case 0x51:  // BINPERSID
            let pid = try pop(at)
            stack.append(try hooks.persistentLoad(pid))
        case 0x52:  // REDUCE
            let argsValue = try pop(at), callable = try pop(at)
            guard case .tuple(let args) = argsValue else {
                throw PickleError.malformed("REDUCE arguments are a \(argsValue.typeName), not a tuple", offset: at)
            }
            stack.append(try hooks.reduce(callable, args))
        case 0x62:  // BUILD: sets state on the object below; state dicts carry only a `_metadata`
            // attribute on their OrderedDict (module versions), which loading does not need.
            _ = try pop(at)
            guard !stack.isEmpty else { throw PickleError.malformed("BUILD with no object", offset: at) }

        default:
            throw PickleError.unsupportedOpcode(opcode: op, offset: at)
        }
        return nil
    }

    // MARK: Stack helpers

    private mutating func pop(_ at: Int) throws -> PickleValue {
        if let m = marks.last, stack.count <= m { throw PickleError.malformed("pop across a MARK", offset: at) }
        guard let v = stack.popLast() else { throw PickleError.malformed("pop from an empty stack", offset: at) }
        return v
    }

    private mutating func popCount(_ n: Int, _ at: Int) throws -> [PickleValue] {
        guard stack.count >= n + (marks.last ?? 0) else { throw PickleError.malformed("stack underflow", offset: at) }
        let items = Array(stack.suffix(n))
        stack.removeLast(n)
        return items
    }

    private mutating func popMark(_ at: Int) throws -> [PickleValue] {
        guard let m = marks.popLast() else { throw PickleError.malformed("no MARK to pop to", offset: at) }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }

    private func list(_ at: Int) throws -> PickleList {
        guard case .list(let l)? = stack.last else {
            throw PickleError.malformed("APPEND to a \(stack.last?.typeName ?? "missing object"), not a list", offset: at)
        }
        return l
    }

    private func dict(_ at: Int) throws -> PickleDict {
        guard case .dict(let d)? = stack.last else {
            throw PickleError.malformed("SETITEM on a \(stack.last?.typeName ?? "missing object"), not a dict", offset: at)
        }
        return d
    }

    private mutating func put(_ i: Int, _ at: Int) throws {
        guard let top = stack.last else { throw PickleError.malformed("PUT with an empty stack", offset: at) }
        memo[i] = top
    }

    private mutating func get(_ i: Int, _ at: Int) throws {
        guard let v = memo[i] else { throw PickleError.malformed("memo key \(i) was never stored", offset: at) }
        stack.append(v)
    }

    private func resolve(_ module: String, _ name: String, _ at: Int) throws -> PickleValue {
        try hooks.resolveGlobal(module, name)
    }

    // MARK: Byte readers

    private mutating func readByte() throws -> UInt8 {
        guard position < bytes.count else { throw PickleError.malformed("pickle ends before STOP", offset: position) }
        defer { position += 1 }
        return bytes[position]
    }

    private mutating func readBytes(_ n: Int) throws -> [UInt8] {
        guard n >= 0, n <= bytes.count - position else {
            throw PickleError.malformed("pickle ends inside a \(n)-byte field", offset: position)
        }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }

    private mutating func readUInt16() throws -> UInt16 {
        let b = try readBytes(2)
        return UInt16(b[0]) | UInt16(b[1]) << 8
    }

    private mutating func readUInt32() throws -> UInt32 {
        let b = try readBytes(4)
        return b.reversed().reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
    }

    private mutating func readLength64(_ at: Int) throws -> Int {
        let b = try readBytes(8)
        let n = b.reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        guard n <= UInt64(Int.max) else { throw PickleError.malformed("length \(n) is too large", offset: at) }
        return Int(n)
    }

    /// A little-endian two's-complement integer of `count` bytes that must fit in Int64.
    private mutating func readLong(count n: Int, at: Int) throws -> Int {
        let b = try readBytes(n)
        guard n > 0 else { return 0 }
        let negative = b[n - 1] & 0x80 != 0
        if n > 8 {  // bytes beyond the eighth must be pure sign extension
            guard b.dropFirst(8).allSatisfy({ $0 == (negative ? 0xFF : 0) }), (b[7] & 0x80 != 0) == negative else {
                throw PickleError.malformed("integer of \(n) bytes does not fit in 64 bits", offset: at)
            }
        }
        var v: UInt64 = 0
        for (i, byte) in b.prefix(8).enumerated() { v |= UInt64(byte) << UInt64(8 * i) }
        if n < 8, negative { v |= ~UInt64(0) << UInt64(8 * n) }
        return Int(Int64(bitPattern: v))
    }

    private mutating func readString(count n: Int, at: Int, latin1: Bool = false) throws -> String {
        let b = try readBytes(n)
        if latin1 { return String(b.map { Character(Unicode.Scalar($0)) }) }
        guard let s = String(validating: b, as: UTF8.self) else {
            throw PickleError.malformed("string is not valid UTF-8", offset: at)
        }
        return s
    }

    private mutating func readLine(_ at: Int) throws -> String {
        guard let end = bytes[position...].firstIndex(of: 0x0A) else {
            throw PickleError.malformed("GLOBAL name without a newline", offset: at)
        }
        let line = try readString(count: end - position, at: at)
        position += 1
        return line
    }
}

/// Names of the pickle opcodes, for error messages.
func pickleOpcodeName(_ op: UInt8) -> String {
    let names: [UInt8: String] = [
        0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT",
        0x49: "INT", 0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE",
        0x50: "PERSID", 0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING",
        0x55: "SHORT_BINSTRING", 0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD",
        0x63: "GLOBAL", 0x64: "DICT", 0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET",
        0x69: "INST", 0x6A: "LONG_BINGET", 0x6C: "LIST", 0x5D: "EMPTY_LIST", 0x6F: "OBJ", 0x70: "PUT",
        0x71: "BINPUT", 0x72: "LONG_BINPUT", 0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE",
        0x75: "SETITEMS", 0x47: "BINFLOAT", 0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2",
        0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE",
        0x8A: "LONG1", 0x8B: "LONG4", 0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE",
        0x8D: "BINUNICODE8", 0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET",
        0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8",
        0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]
    return names[op] ?? String(format: "unknown opcode 0x%02X", op)
}
