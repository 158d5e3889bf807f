import Tokenizers

/// JSON text's own rules, which schemas are compiled with (`JSONSchemaGrammar`): whitespace, string characters
/// (UTF-8 validated, escapes), strings with length bounds, numbers, any value, containers; literal alternatives as a
/// trie; any UTF-8 text; and the compact JSON writer every literal, enum value and spec source goes through.
extension JSONSchemaGrammar {
    /// Any UTF-8 text, possibly empty.
    mutating func text() throws -> Int {
        try shared("text") { c in
            let char = try c.utf8Char(except: nil)
            let r = try c.reserve()
            c.rules[r] = [[], [.rule(char), .rule(r)]]
            return r
        }
    }

    /// One UTF-8 character (no NUL), but not the ASCII byte `except`.
    mutating func utf8Char(except: UInt8?) throws -> Int {
        try shared("utf8 \(except.map(String.init) ?? "-")") { c in
            let ascii = Grammar.ByteSet((0x01...0x7F).filter { $0 != except })
            return try c.rule([[.bytes(ascii)]] + Self.multiByte)
        }
    }

    /// Exactly one of `texts`, as a trie: texts sharing a prefix share its parse, so a long list of values (an enum,
    /// a choice) is one parse per distinct prefix, not one per text.
    mutating func literals(_ texts: [[UInt8]]) throws -> Int {
        var groups: [UInt8: [ArraySlice<UInt8>]] = [:]
        var alternatives: [[Grammar.Item]] = []
        for t in texts {
            if let b = t.first { groups[b, default: []].append(t.dropFirst()) } else if alternatives.isEmpty { alternatives.append([]) }
        }
        for b in groups.keys.sorted() {
            var rest = groups[b]!
            // The bytes every text of the group shares next, written out; then what follows them.
            var run: [Grammar.Item] = [.byte(b)]
            while let next = rest.first?.first, rest.allSatisfy({ $0.first == next }) {
                run.append(.byte(next))
                rest = rest.map { $0.dropFirst() }
            }
            if rest.allSatisfy(\.isEmpty) {
                alternatives.append(run)
            } else {
                alternatives.append(run + [.rule(try literals(rest.map(Array.init)))])
            }
        }
        return try rule(alternatives)
    }

    // MARK: rules

    mutating func reserve() throws -> Int {
        guard rules.count < Self.maxRules else { throw GrammarError("the schema needs more than \(Self.maxRules) grammar rules") }
        rules.append([])
        return rules.count - 1
    }

    mutating func rule(_ alternatives: [[Grammar.Item]]) throws -> Int {
        let r = try reserve()
        rules[r] = alternatives
        return r
    }

    /// A shared rule built once (whitespace, string characters, numbers, any value).
    mutating func shared(_ name: String, _ build: (inout JSONSchemaGrammar) throws -> Int) rethrows -> Int {
        if let r = memo[name] { return r }
        let r = try build(&self)
        memo[name] = r
        return r
    }

    static func set(_ ranges: ClosedRange<UInt8>...) -> Grammar.Item { .bytes(Grammar.ByteSet(ranges: ranges)) }

    /// At most `whitespace` blanks.
    mutating func ws() throws -> Grammar.Item {
        .rule(try shared("ws") { c in
            var next = try c.rule([[]])
            for _ in 0..<c.whitespace {
                next = try c.rule([[], [.bytes(Grammar.ByteSet([0x20, 0x0A, 0x0D, 0x09])), .rule(next)]])
            }
            return next
        })
    }

    /// The UTF-8 sequences of the characters beyond ASCII (RFC 3629: no overlongs, no surrogates).
    static let multiByte: [[Grammar.Item]] = {
        let cont = set(0x80...0xBF)
        return [
            [set(0xC2...0xDF), cont],
            [.byte(0xE0), set(0xA0...0xBF), cont],
            [set(0xE1...0xEC, 0xEE...0xEF), cont, cont],
            [.byte(0xED), set(0x80...0x9F), cont],
            [.byte(0xF0), set(0x90...0xBF), cont, cont],
            [set(0xF1...0xF3), cont, cont, cont],
            [.byte(0xF4), set(0x80...0x8F), cont, cont],
        ]
    }()

    /// One character of a JSON string: a UTF-8 sequence (no control characters, `"` or `\`) or an escape.
    mutating func char() throws -> Grammar.Item {
        .rule(try shared("char") { c in
            let hex = Self.set(0x30...0x39, 0x41...0x46, 0x61...0x66)
            return try c.rule([
                [Self.set(0x20...0x21, 0x23...0x5B, 0x5D...0x7F)],
                [.byte(0x5C), .bytes(Grammar.ByteSet(Array("\"\\/bfnrt".utf8)))],
                // \u escapes of everything but surrogates (a pair would be one character counted as two; a
                // character beyond the BMP is written as UTF-8 instead).
                [.byte(0x5C), .byte(0x75), Self.set(0x30...0x39, 0x41...0x43, 0x45...0x46, 0x61...0x63, 0x65...0x66), hex, hex, hex],
                [.byte(0x5C), .byte(0x75), .bytes(Grammar.ByteSet([0x44, 0x64])), Self.set(0x30...0x37), hex, hex],
            ] + Self.multiByte)
        })
    }

    /// A JSON string of `min`…`max` characters (`max` nil: unbounded).
    mutating func string(min: Int, max: Int?) throws -> Int {
        try shared("string \(min) \(max.map(String.init) ?? "-")") { c in
            let ch = try c.char()
            // The tail after k characters, built from the end.
            var chars: Int
            var k: Int
            if let max {
                chars = try c.rule([[]])
                k = max
            } else {
                chars = try c.anyChars()
                k = min
            }
            while k > 0 {
                k -= 1
                chars = try c.rule(k >= min ? [[], [ch, .rule(chars)]] : [[ch, .rule(chars)]])
            }
            return try c.rule([[.byte(0x22), .rule(chars), .byte(0x22)]])
        }
    }

    /// Any number of a JSON string's characters.
    mutating func anyChars() throws -> Int {
        try shared("chars") { c in
            let ch = try c.char()
            let r = try c.reserve()
            c.rules[r] = [[], [ch, .rule(r)]]
            return r
        }
    }

    /// 1…n digits, or 0…n with `optional`.
    mutating func digits(_ n: Int, optional: Bool) throws -> Int {
        try shared("digits \(n) \(optional)") { c in
            let digit = Self.set(0x30...0x39)
            var tail = try c.rule([[]])
            for _ in 0..<(n - 1) { tail = try c.rule([[], [digit, .rule(tail)]]) }
            let one = try c.rule([[digit, .rule(tail)]])
            return optional ? try c.rule([[], [.rule(one)]]) : one
        }
    }

    mutating func integer() throws -> Int {
        try shared("integer") { c in
            let rest = try c.digits(Self.maxDigits - 1, optional: true)
            let magnitude = try c.rule([[.byte(0x30)], [Self.set(0x31...0x39), .rule(rest)]])
            return try c.rule([[.rule(magnitude)], [.byte(0x2D), .rule(magnitude)]])
        }
    }

    mutating func number() throws -> Int {
        try shared("number") { c in
            let int = try c.integer()
            let fraction = try c.rule([[], [.byte(0x2E), .rule(try c.digits(Self.maxDigits, optional: false))]])
            let exponent = try c.rule([[], [.bytes(Grammar.ByteSet([0x65, 0x45])), .rule(try c.rule([[], [.bytes(Grammar.ByteSet([0x2B, 0x2D]))]])),
                                            .rule(try c.digits(3, optional: false))]])
            return try c.rule([[.rule(int), .rule(fraction), .rule(exponent)]])
        }
    }

    /// Any JSON value (a schema of `true` or `{}`).
    mutating func anyValue() throws -> Int {
        if let r = memo["any"] { return r }
        let value = try reserve()
        memo["any"] = value
        let ws = try ws()
        let key = try string(min: 0, max: nil)
        let member = [Grammar.Item.rule(key), ws, .byte(0x3A), ws, .rule(value)]
        let object = try container(open: 0x7B, close: 0x7D, item: member)
        let array = try container(open: 0x5B, close: 0x5D, item: [.rule(value)])
        rules[value] = [[.rule(object)], [.rule(array)], [.rule(try string(min: 0, max: nil))], [.rule(try number())],
                        Grammar.Item.literal("true"), Grammar.Item.literal("false"), Grammar.Item.literal("null")]
        return value
    }

    /// `open` (item (, item)*)? `close`, whitespace between.
    mutating func container(open: UInt8, close: UInt8, item: [Grammar.Item]) throws -> Int {
        let ws = try ws()
        let more = try reserve()
        rules[more] = [[], [ws, .byte(0x2C), ws] + item + [.rule(more)]]
        let items = try rule([[], item + [.rule(more), ws]])
        return try rule([[.byte(open), ws, .rule(items), .byte(close)]])
    }

    /// Compact JSON text of a value (strings with JSON's shortest escapes, as Python's json.dumps writes them).
    public static func text(_ v: ExactJSON) -> String {
        switch v {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return d.rounded() == d && abs(d) < 1e15 ? String(Int(d)) + ".0" : "\(d)"
        case .string(let s): return ExactJSON.quoted(s)
        case .array(let a): return "[" + a.map(text).joined(separator: ",") + "]"
        case .object(let m): return "{" + m.map { text(.string($0.key)) + ":" + text($0.value) }.joined(separator: ",") + "}"
        }
    }
}
