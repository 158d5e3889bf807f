/// A JSON parser that keeps object keys exactly as written.
///
/// Foundation's `JSONSerialization` (and `JSONDecoder`) build Swift dictionaries, whose `String` keys compare by
/// canonical equivalence: a vocabulary holding both "é" (U+00E9) and "e\u{301}" would silently lose one of them.
/// SentencePiece vocabularies can hold both, so tokenizer files are parsed here, objects as ordered key/value lists.
public enum ExactJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([ExactJSON])
    case object([(key: String, value: ExactJSON)])

    /// `strict` (request bodies, adapter configs): a key repeated in any nested object (the outermost object's keys are
    /// the caller's to check, which names them as parameters), and a lone UTF-16
    /// surrogate escape (`\ud800`, which no Unicode scalar can hold) are errors, not merged or repaired to U+FFFD —
    /// a proxy that keeps the first of two keys would see another request than the one served.
    public static func parse(_ bytes: UnsafeRawBufferPointer, name: String, strict: Bool = false) throws -> ExactJSON {
        var parser = Parser(bytes: bytes, name: name)
        parser.strict = strict
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.p == bytes.count else { throw parser.error("trailing characters") }
        return value
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        let name: String
        var p = 0
        var strict = false

        init(bytes: UnsafeRawBufferPointer, name: String) {
            self.bytes = bytes
            self.name = name
        }

        func error(_ what: String) -> TokenizerError {
            TokenizerError.invalidJSON("\(name): \(what) at byte \(p)")
        }

        mutating func skipWhitespace() {
            while p < bytes.count, bytes[p] == 0x20 || bytes[p] == 0x0A || bytes[p] == 0x0D || bytes[p] == 0x09 { p += 1 }
        }

        mutating func expect(_ literal: StaticString) throws {
            let n = literal.utf8CodeUnitCount
            guard p + n <= bytes.count else { throw error("unexpected end") }
            for k in 0..<n where bytes[p + k] != literal.utf8Start[k] { throw error("invalid literal") }
            p += n
        }

        mutating func value(depth: Int) throws -> ExactJSON {
            guard depth < 256 else { throw error("nesting too deep") }
            guard p < bytes.count else { throw error("unexpected end") }
            switch bytes[p] {
            case 0x7B: return try object(depth: depth)
            case 0x5B: return try array(depth: depth)
            case 0x22: return .string(try string())
            case 0x74: try expect("true"); return .bool(true)
            case 0x66: try expect("false"); return .bool(false)
            case 0x6E: try expect("null"); return .null
            case 0x2D, 0x30...0x39: return try number()
            default: throw error("unexpected character")
            }
        }

        mutating func object(depth: Int) throws -> ExactJSON {
            p += 1
            var members: [(key: String, value: ExactJSON)] = []
            var keys = Set<String>()
            skipWhitespace()
            if p < bytes.count, bytes[p] == 0x7D { p += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard p < bytes.count, bytes[p] == 0x22 else { throw error("expected a key") }
                let at = p
                let key = try string()
                if strict && depth > 0 && !keys.insert(key).inserted {
                    p = at
                    throw error("duplicate key '\(String(key.unicodeScalars.prefix(64).map { $0.value < 0x20 ? "?" : Character($0) }))'")
                }
                skipWhitespace()
                guard p < bytes.count, bytes[p] == 0x3A else { throw error("expected ':'") }
                p += 1
                skipWhitespace()
                members.append((key, try value(depth: depth + 1)))
                skipWhitespace()
                guard p < bytes.count else { throw error("unexpected end") }
                if bytes[p] == 0x2C { p += 1; continue }
                if bytes[p] == 0x7D { p += 1; return .object(members) }
                throw error("expected ',' or '}'")
            }
        }

        mutating func array(depth: Int) throws -> ExactJSON {
            p += 1
            var elements: [ExactJSON] = []
            skipWhitespace()
            if p < bytes.count, bytes[p] == 0x5D { p += 1; return .array(elements) }
            while true {
                skipWhitespace()
                elements.append(try value(depth: depth + 1))
                skipWhitespace()
                guard p < bytes.count else { throw error("unexpected end") }
                if bytes[p] == 0x2C { p += 1; continue }
                if bytes[p] == 0x5D { p += 1; return .array(elements) }
                throw error("expected ',' or ']'")
            }
        }

        mutating func number() throws -> ExactJSON {
            let start = p
            var isInteger = true
            if bytes[p] == 0x2D { p += 1 }
            while p < bytes.count {
                let c = bytes[p]
                if c >= 0x30 && c <= 0x39 {
                    p += 1
                } else if c == 0x2E || c == 0x65 || c == 0x45 || c == 0x2B || c == 0x2D {
                    isInteger = false
                    p += 1
                } else {
                    break
                }
            }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<p]), as: UTF8.self)
            if isInteger, let i = Int(text) { return .int(i) }
            guard let d = Double(text), d.isFinite else { throw error("invalid number '\(text)'") }
            return .double(d)
        }

        mutating func hex4() throws -> UInt32 {
            guard p + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[p]
                let digit: UInt8
                switch c {
                case 0x30...0x39: digit = c - 0x30
                case 0x41...0x46: digit = c - 0x41 + 10
                case 0x61...0x66: digit = c - 0x61 + 10
                default: throw error("invalid \\u escape")
                }
                v = v << 4 | UInt32(digit)
                p += 1
            }
            return v
        }

        mutating func string() throws -> String {
            p += 1  // opening quote
            let start = p
            while p < bytes.count && bytes[p] != 0x22 && bytes[p] != 0x5C { p += 1 }
            guard p < bytes.count else { throw error("unterminated string") }
            if bytes[p] == 0x22 {
                let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<p]), as: UTF8.self)
                p += 1
                return s
            }
            // Escapes: assemble the UTF-8 bytes.
            var out = Array(bytes[start..<p])
            while true {
                guard p < bytes.count else { throw error("unterminated string") }
                let c = bytes[p]
                if c == 0x22 { p += 1; break }
                if c != 0x5C { out.append(c); p += 1; continue }
                p += 1
                guard p < bytes.count else { throw error("unterminated escape") }
                let e = bytes[p]
                p += 1
                switch e {
                case 0x22, 0x5C, 0x2F: out.append(e)
                case 0x62: out.append(0x08)
                case 0x66: out.append(0x0C)
                case 0x6E: out.append(0x0A)
                case 0x72: out.append(0x0D)
                case 0x74: out.append(0x09)
                case 0x75:
                    var v = try hex4()
                    if (0xD800...0xDBFF).contains(v), p + 6 <= bytes.count, bytes[p] == 0x5C, bytes[p + 1] == 0x75 {
                        let save = p
                        p += 2
                        let low = try hex4()
                        if (0xDC00...0xDFFF).contains(low) {
                            v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            p = save
                        }
                    }
                    // A lone surrogate cannot be a Swift scalar: it becomes U+FFFD, as in a lossy decode (strict: an error).
                    guard let scalar = Unicode.Scalar(v) else {
                        if strict { throw error("lone surrogate \\u\(String(v, radix: 16)) (not a Unicode scalar)") }
                        appendUTF8Scalar("\u{FFFD}", to: &out)
                        continue
                    }
                    appendUTF8Scalar(scalar, to: &out)
                default:
                    throw error("invalid escape")
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

/// A `String` key compared and hashed by its exact UTF-8 bytes, not by canonical equivalence like `String`:
/// vocabulary entries that are different byte sequences must stay different tokens.
struct ExactString: Hashable, Sendable {
    let value: String

    init(_ value: String) { self.value = value }

    static func == (a: ExactString, b: ExactString) -> Bool { a.value.utf8.elementsEqual(b.value.utf8) }

    func hash(into hasher: inout Hasher) {
        let done: Void? = value.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if done == nil {
            for b in value.utf8 { hasher.combine(b) }
        }
        hasher.combine(0xFF as UInt8)  // terminator: no UTF-8 string contains 0xFF
    }
}

extension ExactJSON {
    /// Strings compare by their exact bytes, objects by their ordered members.
    public static func == (a: ExactJSON, b: ExactJSON) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.double(let x), .double(let y)): x == y
        case (.string(let x), .string(let y)): x.utf8.elementsEqual(y.utf8)
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }
}

extension ExactJSON {
    /// A string as Python's `json.dumps(s, ensure_ascii=False)` writes it: `"` and `\` escaped, \n \r \t \b \f by name,
    /// other control characters as \u00xx, everything else as it is. (Jinja's `tojson` and the structured-output
    /// goldens' literals both follow Python's json.)
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
