/// Compiles a regular expression to a `Grammar` whose sentences are exactly the texts it fully matches (vLLM's
/// `structured_outputs.regex` / `guided_regex`): literals, `.`, classes (`[a-z]`, `[^…]`), `\d \w \s` and their
/// complements (ASCII, as ECMAScript and JSON Schema define them), groups (capturing, `(?:…)`, named), alternation,
/// and the quantifiers `* + ? {n} {n,} {n,m}` (lazy forms match the same texts); `^` and `$` only at the ends (the
/// match is whole anyway). Backreferences, lookarounds, word boundaries and inline flags cannot be expressed here and
/// are refused with an error naming them. Text is UTF-8; `.` and negated classes match any character but the listed
/// ones (`.` not a newline).
public struct RegexGrammar {
    /// The largest bound `{n,m}` may give, and the most rules a pattern may need.
    public static let maxRepeat = 1000
    public static let maxRules = 100_000

    private var rules: [[[Grammar.Item]]] = []
    private let scalars: [Unicode.Scalar]
    private var p = 0
    /// Characters are written as inside a JSON string (`"`, `\` and control characters escaped as Python's
    /// json.dumps escapes them; the rest as UTF-8), for a JSON Schema's `pattern`.
    private let inJSONString: Bool

    private init(_ pattern: String, inJSONString: Bool = false, rules: [[[Grammar.Item]]] = []) {
        scalars = Array(pattern.unicodeScalars)
        self.inJSONString = inJSONString
        self.rules = rules
    }

    public static func compile(_ pattern: String) throws -> Grammar {
        var rules: [[[Grammar.Item]]] = []
        let (root, _, _) = try embed(pattern, inJSONString: false, into: &rules)
        return try Grammar(rules: rules, root: root)
    }

    /// Adds the rules of `pattern` to `rules`: the rule of the texts it matches whole (with `inJSONString`, their
    /// JSON string encodings), and whether it was anchored at its start (`^`) and end (`$`).
    static func embed(_ pattern: String, inJSONString: Bool, into rules: inout [[[Grammar.Item]]]) throws -> (rule: Int, start: Bool, end: Bool) {
        var c = RegexGrammar(pattern, inJSONString: inJSONString, rules: rules)
        let start = c.peek == "^"
        if start { c.p += 1 }
        let root = try c.alternation()
        let end = c.peek == "$"
        if end { c.p += 1 }
        guard c.p == c.scalars.count else { throw c.fail("unexpected '\(c.scalars[c.p])'") }
        rules = c.rules
        return (root, start, end)
    }

    /// One character as it is written.
    private func literal(_ s: Unicode.Scalar) -> [Grammar.Item] {
        guard inJSONString, s.value < 0x20 || s == "\"" || s == "\\" else { return Grammar.Item.literal(String(s)) }
        return Grammar.Item.literal(JSONSchemaGrammar.text(.string(String(s))).dropFirst().dropLast().description)
    }

    /// The ASCII characters of `set` as alternatives: one byte set, and in a JSON string the escaped ones apart.
    private func ascii(_ set: Grammar.ByteSet) -> [[Grammar.Item]] {
        var plain = Grammar.ByteSet()
        var out: [[Grammar.Item]] = []
        for b in 0..<128 where set.contains(UInt8(b)) {
            let s = Unicode.Scalar(UInt8(b))
            if inJSONString && (b < 0x20 || s == "\"" || s == "\\") { out.append(literal(s)) } else { plain.insert(UInt8(b)) }
        }
        return plain == Grammar.ByteSet() ? out : [[.bytes(plain)]] + out
    }

    private var peek: Unicode.Scalar? { p < scalars.count ? scalars[p] : nil }

    private func fail(_ what: String) -> GrammarError { GrammarError("regex at \(p): \(what)") }

    private mutating func rule(_ alternatives: [[Grammar.Item]]) throws -> Int {
        guard rules.count < Self.maxRules else { throw GrammarError("the regex needs more than \(Self.maxRules) grammar rules") }
        rules.append(alternatives)
        return rules.count - 1
    }

    // MARK: structure

    private mutating func alternation() throws -> Int {
        var alternatives = [try concatenation()]
        while peek == "|" {
            p += 1
            alternatives.append(try concatenation())
        }
        return try rule(alternatives)
    }

    /// A sequence of quantified atoms, up to `|`, `)` or the end (or a final `$`).
    private mutating func concatenation() throws -> [Grammar.Item] {
        var items: [Grammar.Item] = []
        while let c = peek, c != "|", c != ")" {
            if c == "$" && p == scalars.count - 1 { break }
            let atom = try self.atom()
            items.append(contentsOf: try quantified(atom))
        }
        return items
    }

    private mutating func quantified(_ atom: [Grammar.Item]) throws -> [Grammar.Item] {
        guard let c = peek else { return atom }
        var lo = 1, hi: Int? = 1
        switch c {
        case "*": (lo, hi) = (0, nil); p += 1
        case "+": (lo, hi) = (1, nil); p += 1
        case "?": (lo, hi) = (0, 1); p += 1
        case "{":
            guard let bounds = try braces() else { return atom }  // a literal "{"
            (lo, hi) = bounds
        default: return atom
        }
        if peek == "?" { p += 1 }  // lazy: the same texts
        if peek == "+" || peek == "*" || peek == "{" { throw fail("a quantifier after a quantifier (possessive or nested) is not supported") }
        let one = try rule([atom])
        var tail: Int
        if let hi {
            tail = try rule([[]])
            for _ in 0..<(hi - lo) { tail = try rule([[], [.rule(one), .rule(tail)]]) }
        } else {
            tail = try rule([[]])
            rules[tail] = [[], [.rule(one), .rule(tail)]]
        }
        return Array(repeating: Grammar.Item.rule(one), count: lo) + [.rule(tail)]
    }

    /// `{n}`, `{n,}`, `{n,m}`; nil (nothing consumed) when the brace does not start one (Python reads it as a literal).
    private mutating func braces() throws -> (Int, Int?)? {
        let start = p
        p += 1
        func number() -> Int? {
            var n: Int?
            while let c = peek, let d = Int(String(c)), c.isASCII {
                n = (n ?? 0) * 10 + d
                if n! > 1_000_000 { return n }
                p += 1
            }
            return n
        }
        let lo = number()
        var hi: Int?
        var open = false
        if peek == "," {
            p += 1
            hi = number()
            open = hi == nil
        } else {
            hi = lo
        }
        guard peek == "}", lo != nil || (hi != nil) else {
            p = start
            return nil
        }
        p += 1
        let low = lo ?? 0
        if let hi, hi < low { throw fail("{\(low),\(hi)}: the bounds are reversed") }
        guard max(low, hi ?? 0) <= Self.maxRepeat else { throw fail("repetition bounds above \(Self.maxRepeat) are not supported") }
        return (low, open ? nil : hi)
    }

    private mutating func atom() throws -> [Grammar.Item] {
        let c = scalars[p]
        p += 1
        switch c {
        case "(":
            if peek == "?" {
                p += 1
                switch peek {
                case ":": p += 1
                case "P" where p + 1 < scalars.count && scalars[p + 1] == "<", "<" where p + 1 < scalars.count && scalars[p + 1] != "=" && scalars[p + 1] != "!":
                    while let x = peek, x != ">" { p += 1 }
                    guard peek == ">" else { throw fail("unterminated group name") }
                    p += 1
                default:
                    throw fail("'(?' groups other than (?:…) and named ones (lookarounds, flags, backreferences) are not supported")
                }
            }
            let inner = try alternation()
            guard peek == ")" else { throw fail("missing ')'") }
            p += 1
            return [.rule(inner)]
        case ")": throw fail("unbalanced ')'")
        case "[": return [.rule(try characterClass())]
        case ".": return [.rule(try anyExcept(ascii: Grammar.ByteSet([0x0A])))]
        case "\\": return try escape(inClass: false).items(&self)
        case "*", "+", "?": throw fail("nothing to repeat")
        case "^", "$": throw fail("anchors are supported only at the ends of the pattern")
        default: return literal(c)
        }
    }

    // MARK: characters

    /// What an escape stands for: one character, or a set of ASCII bytes (its complement with `negated`).
    enum Escaped {
        case scalar(Unicode.Scalar)
        case ascii(Grammar.ByteSet, negated: Bool)

        func items(_ c: inout RegexGrammar) throws -> [Grammar.Item] {
            switch self {
            case .scalar(let s): return c.literal(s)
            case .ascii(let set, false): return [.rule(try c.rule(c.ascii(set)))]
            case .ascii(let set, true): return [.rule(try c.anyExcept(ascii: set))]
            }
        }
    }

    static let digits = Grammar.ByteSet(ranges: [0x30...0x39])
    static let word = Grammar.ByteSet(ranges: [0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x5F...0x5F])
    static let space = Grammar.ByteSet([0x20, 0x09, 0x0A, 0x0D, 0x0C, 0x0B])

    private mutating func escape(inClass: Bool) throws -> Escaped {
        guard let c = peek else { throw fail("a pattern cannot end with '\\'") }
        p += 1
        switch c {
        case "d": return .ascii(Self.digits, negated: false)
        case "D": return .ascii(Self.digits, negated: true)
        case "w": return .ascii(Self.word, negated: false)
        case "W": return .ascii(Self.word, negated: true)
        case "s": return .ascii(Self.space, negated: false)
        case "S": return .ascii(Self.space, negated: true)
        case "n": return .scalar("\n")
        case "t": return .scalar("\t")
        case "r": return .scalar("\r")
        case "f": return .scalar("\u{0C}")
        case "v": return .scalar("\u{0B}")
        case "x", "u":
            let n = c == "x" ? 2 : 4
            guard p + n <= scalars.count, let v = UInt32(String(String.UnicodeScalarView(scalars[p..<(p + n)])), radix: 16),
                  let s = Unicode.Scalar(v) else { throw fail("\\\(c) needs \(n) hex digits of a character") }
            p += n
            return .scalar(s)
        case "b" where inClass: return .scalar("\u{08}")
        default:
            if c.properties.isAlphabetic || c.properties.numericType != nil {
                throw fail("the escape '\\\(c)' (word boundaries, backreferences, classes) is not supported")
            }
            return .scalar(c)
        }
    }

    /// `[…]` after its '['.
    private mutating func characterClass() throws -> Int {
        var negated = false
        if peek == "^" {
            negated = true
            p += 1
        }
        var ascii = Grammar.ByteSet()
        var asciiNegatedSets: [Grammar.ByteSet] = []
        var others: [Unicode.Scalar] = []
        var first = true
        func add(_ lo: Unicode.Scalar, _ hi: Unicode.Scalar) throws {
            guard lo.value <= hi.value else { throw fail("a class range is reversed") }
            guard hi.value - lo.value <= 4096 || hi.isASCII else { throw fail("class ranges beyond ASCII are limited to 4,096 characters") }
            for v in lo.value...hi.value {
                guard let s = Unicode.Scalar(v) else { continue }
                if s.isASCII { ascii.insert(UInt8(v)) } else { others.append(s) }
            }
        }
        while true {
            guard let c = peek else { throw fail("missing ']'") }
            if c == "]" && !first { p += 1; break }
            first = false
            p += 1
            var lo: Unicode.Scalar
            if c == "\\" {
                switch try escape(inClass: true) {
                case .scalar(let s): lo = s
                case .ascii(let set, let neg):
                    if neg { asciiNegatedSets.append(set) } else {
                        for b in 0..<128 where set.contains(UInt8(b)) { ascii.insert(UInt8(b)) }
                    }
                    continue
                }
            } else {
                if c == "[" && peek == ":" { throw fail("POSIX classes ([:alpha:]) are not supported") }
                lo = c
            }
            if peek == "-", p + 1 < scalars.count, scalars[p + 1] != "]" {
                p += 1
                var hi = scalars[p]
                p += 1
                if hi == "\\" {
                    guard case .scalar(let s) = try escape(inClass: true) else { throw fail("a class range cannot end in a class") }
                    hi = s
                }
                try add(lo, hi)
            } else {
                try add(lo, lo)
            }
        }
        // A negated escape (\D, \W, \S) inside a class: every ASCII byte outside its set, and every non-ASCII character.
        var allNonASCII = false
        for set in asciiNegatedSets {
            for b in 0..<128 where !set.contains(UInt8(b)) { ascii.insert(UInt8(b)) }
            allNonASCII = true
        }
        if negated {
            guard others.isEmpty, !allNonASCII else { throw fail("a negated class with characters beyond ASCII is not supported") }
            return try anyExcept(ascii: ascii)
        }
        var alternatives = self.ascii(ascii)
        if allNonASCII { alternatives += JSONSchemaGrammar.multiByte }
        for s in Set(others.map(\.value)).sorted() { alternatives.append(literal(Unicode.Scalar(s)!)) }
        guard !alternatives.isEmpty else { throw fail("an empty class matches nothing") }
        return try rule(alternatives)
    }

    /// Any character (UTF-8) but NUL and the ASCII bytes in `excluded`.
    private mutating func anyExcept(ascii excluded: Grammar.ByteSet) throws -> Int {
        var set = Grammar.ByteSet()
        for b in 1..<128 where !excluded.contains(UInt8(b)) { set.insert(UInt8(b)) }
        return try rule(ascii(set) + JSONSchemaGrammar.multiByte)
    }
}
