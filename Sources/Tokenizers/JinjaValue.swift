import Foundation

/// A render-time or parse-time failure of a Jinja template, with jinja2's wording where it has one.
struct JinjaError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

/// A string whose scalars each remember whether they came from a message's content (`marks[i]`), so a rendered
/// chat can say which of its text the user wrote. `marks` is nil when no scalar is content.
struct JinjaString: Equatable, Sendable {
    var scalars: [Unicode.Scalar]
    var marks: [Bool]?

    init(_ s: String, content: Bool = false) {
        scalars = Array(s.unicodeScalars)
        marks = content && !scalars.isEmpty ? Array(repeating: true, count: scalars.count) : nil
    }

    init(scalars: [Unicode.Scalar], marks: [Bool]?) {
        self.scalars = scalars
        self.marks = marks.flatMap { $0.contains(true) ? $0 : nil }
    }

    var string: String { String(String.UnicodeScalarView(scalars)) }
    var hasContent: Bool { marks != nil }
    var count: Int { scalars.count }

    static func == (a: JinjaString, b: JinjaString) -> Bool { a.scalars == b.scalars }

    mutating func append(_ other: JinjaString) {
        if marks != nil || other.marks != nil {
            var m = marks ?? Array(repeating: false, count: scalars.count)
            m += other.marks ?? Array(repeating: false, count: other.scalars.count)
            marks = m
        }
        scalars += other.scalars
    }

    static func + (a: JinjaString, b: JinjaString) -> JinjaString {
        var r = a
        r.append(b)
        return r
    }

    /// The scalars in `range`, keeping their marks (slicing, strip, split).
    func slice(_ range: Range<Int>) -> JinjaString {
        JinjaString(scalars: Array(scalars[range]), marks: marks.map { Array($0[range]) })
    }

    /// The scalars at `indices` (a stepped slice), keeping their marks.
    func pick(_ indices: [Int]) -> JinjaString {
        JinjaString(scalars: indices.map { scalars[$0] }, marks: marks.map { m in indices.map { m[$0] } })
    }

    /// A new string computed from this one (upper, replace, …): all content if any of this was.
    func derived(_ s: String) -> JinjaString { JinjaString(s, content: hasContent) }
}

/// The namespace object `namespace(...)` makes: the one value a template may mutate (`set ns.x = …`).
final class JinjaNamespace: @unchecked Sendable {
    var attributes = JinjaDict()
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// Something a template can call: a global function, a macro, a bound method, `loop.cycle`.
final class JinjaCallable: @unchecked Sendable {
    let name: String
    let call: (_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue
    init(_ name: String, _ call: @escaping (_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue) {
        self.name = name
        self.call = call
    }
}

/// An insertion-ordered dict with string keys (Python's dict as chat templates use it).
struct JinjaDict: Sendable {
    private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    init() {}
    init(_ pairs: [(String, JinjaValue)]) { for (k, v) in pairs { self[k] = v } }

    subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    var count: Int { keys.count }
    var pairs: [(String, JinjaValue)] { keys.map { ($0, storage[$0]!) } }
}

/// A Jinja value, with Python's semantics for truth, equality and printing.
enum JinjaValue: @unchecked Sendable {
    /// jinja2's default `Undefined`: prints as '', is falsy, iterates as empty; using it any further is an error
    /// with this hint (e.g. "'foo' is undefined").
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(JinjaString)
    case list([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case callable(JinjaCallable)

    static func str(_ s: String) -> JinjaValue { .string(JinjaString(s)) }

    var isUndefined: Bool { if case .undefined = self { true } else { false } }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.scalars.isEmpty
        case .list(let l), .tuple(let l): !l.isEmpty
        case .dict(let d): d.count > 0
        case .namespace, .callable: true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: "Undefined"
        case .none: "NoneType"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "str"
        case .list: "list"
        case .tuple: "tuple"
        case .dict: "dict"
        case .namespace: "Namespace"
        case .callable: "function"
        }
    }

    /// What `str(x)` gives in Python; content marks survive only on a string itself.
    var pyStr: JinjaString {
        switch self {
        case .string(let s): s
        case .undefined: JinjaString("")
        default: JinjaString(repr, content: containsContent)
        }
    }

    var containsContent: Bool {
        switch self {
        case .string(let s): s.hasContent
        case .list(let l), .tuple(let l): l.contains { $0.containsContent }
        case .dict(let d): d.pairs.contains { $0.1.containsContent }
        default: false
        }
    }

    /// Python's `repr(x)`.
    var repr: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): String(i)
        case .double(let d): Self.pyFloat(d)
        case .string(let s): Self.pyRepr(s.string)
        case .list(let l): "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .tuple(let l): "(" + l.map(\.repr).joined(separator: ", ") + (l.count == 1 ? ",)" : ")")
        case .dict(let d): "{" + d.pairs.map { Self.pyRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace: "<Namespace>"
        case .callable(let c): "<function \(c.name)>"
        }
    }

    /// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -4 ..< 16.
    static func pyFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
        // Swift's description is also shortest round-trip; take its digits and exponent and lay them out as Python does.
        var text = "\(abs(d))"
        var exp = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exp = Int(text[text.index(after: e)...])!
            text = String(text[..<e])
        }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let intPart = String(parts[0]), fracPart = parts.count > 1 ? String(parts[1]) : ""
        var digits = intPart + fracPart
        var point = intPart.count + exp  // the decimal point sits after `point` digits
        let lead = digits.prefix { $0 == "0" }.count
        digits.removeFirst(lead)
        point -= lead
        while digits.hasSuffix("0") { digits.removeLast() }
        if digits.isEmpty { digits = "0" }
        let sci = point - 1
        let sign = d < 0 ? "-" : ""
        if sci < -4 || sci >= 16 {
            let mant = digits.count > 1 ? "\(digits.first!).\(digits.dropFirst())" : String(digits)
            return sign + mant + "e" + (sci < 0 ? "-" : "+") + (abs(sci) < 10 ? "0" : "") + String(abs(sci))
        }
        if point <= 0 { return sign + "0." + String(repeating: "0", count: -point) + digits }
        if point >= digits.count { return sign + digits + String(repeating: "0", count: point - digits.count) + ".0" }
        return sign + digits.prefix(point) + "." + digits.dropFirst(point)
    }

    /// Python's `repr(str)`.
    static func pyRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(c) == quote { out += "\\" + String(quote) }
                else if c.value < 0x20 || c.value == 0x7F { out += String(format: "\\x%02x", c.value) }
                else { out.unicodeScalars.append(c) }
            }
        }
        out.append(quote)
        return out
    }

    /// Python `==` (1 == 1.0 == True).
    static func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.none, .none): return true
        case (.undefined, .undefined): return true
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.dict(let x), .dict(let y)):
            return x.count == y.count && x.pairs.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        case (.namespace(let x), .namespace(let y)): return x === y
        case (.callable(let x), .callable(let y)): return x === y
        default:
            if let x = a.number, let y = b.number { return x == y }
            return false
        }
    }

    /// The value as a number for arithmetic and comparison (bools are ints in Python).
    var number: Double? {
        switch self {
        case .bool(let b): b ? 1 : 0
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }

    var intValue: Int? {
        switch self {
        case .bool(let b): b ? 1 : 0
        case .int(let i): i
        default: nil
        }
    }

    /// Python `<` for numbers, strings and lists.
    static func less(_ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
        switch (a, b) {
        case (.string(let x), .string(let y)): return x.scalars.lexicographicallyPrecedes(y.scalars) { $0.value < $1.value }
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            for (p, q) in zip(x, y) where !equal(p, q) { return try less(p, q) }
            return x.count < y.count
        default:
            if let i = a.intValue, let j = b.intValue { return i < j }
            if let x = a.number, let y = b.number { return x < y }
            throw JinjaError("'<' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
        }
    }

    /// `json.dumps(x, ensure_ascii=False, indent=…, separators=…, sort_keys=…)` as HF's `tojson` filter calls it.
    func json(indent: String?, itemSeparator: String, keySeparator: String, sortKeys: Bool, level: Int = 0) throws -> String {
        switch self {
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return Self.pyFloat(d)
        case .string(let s): return Self.jsonString(s.string)
        case .list(let l), .tuple(let l):
            if l.isEmpty { return "[]" }
            let items = try l.map { try $0.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator,
                                                   sortKeys: sortKeys, level: level + 1) }
            return Self.jsonJoin(items, open: "[", close: "]", indent: indent, itemSeparator: itemSeparator, level: level)
        case .dict(let d):
            if d.count == 0 { return "{}" }
            var pairs = d.pairs
            if sortKeys { pairs.sort { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) { $0.value < $1.value } } }
            let items = try pairs.map {
                Self.jsonString($0.0) + keySeparator
                    + (try $0.1.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator, sortKeys: sortKeys,
                                     level: level + 1))
            }
            return Self.jsonJoin(items, open: "{", close: "}", indent: indent, itemSeparator: itemSeparator, level: level)
        case .namespace, .callable, .undefined:
            throw JinjaError("Object of type \(typeName) is not JSON serializable")
        }
    }

    private static func jsonJoin(_ items: [String], open: String, close: String, indent: String?, itemSeparator: String,
                                 level: Int) -> String {
        guard let indent else { return open + items.joined(separator: itemSeparator) + close }
        let inner = "\n" + String(repeating: indent, count: level + 1), outer = "\n" + String(repeating: indent, count: level)
        return open + inner + items.joined(separator: itemSeparator + inner) + outer + close
    }

    static func jsonString(_ s: String) -> String { ExactJSON.quoted(s) }
}
