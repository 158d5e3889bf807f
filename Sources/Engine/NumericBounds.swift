import Tokenizers

/// JSON Schema's numeric bounds (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; Draft 4's boolean
/// exclusives too) compiled into the grammar of the numbers between them, digit by digit, so that every number the
/// grammar completes lies within the bounds exactly (decimal comparison of what is written, not of a float).
///
/// A bounded number is written without an exponent: an integer part of at most `maxDigits` digits (no leading zeros),
/// then for `number` an optional fraction of at most `maxDigits` digits. That is a subset of JSON's numbers, as the
/// unbounded rules are; every value within the bounds that fits it can be generated.
struct NumericBounds: Equatable {
    /// A decimal number as digits: `whole` without leading zeros (empty for 0), `fraction` without trailing zeros.
    struct Decimal: Equatable {
        var negative: Bool
        var whole: [UInt8]
        var fraction: [UInt8]

        var isZero: Bool { whole.isEmpty && fraction.isEmpty }
        var magnitude: Decimal { Decimal(negative: false, whole: whole, fraction: fraction) }
        /// The whole part's value; nil past `JSONSchemaGrammar.maxDigits` digits, beyond any number a grammar writes.
        var writableWhole: UInt64? {
            whole.count <= JSONSchemaGrammar.maxDigits ? whole.reduce(0) { $0 * 10 + UInt64($1) } : nil
        }
        /// 10^maxDigits: the first whole number too long to write.
        static let writableLimit: UInt64 = (0..<JSONSchemaGrammar.maxDigits).reduce(1) { p, _ in p * 10 }

        /// From a JSON number: an integer exactly, a double by its shortest round-trip text (what a schema's author
        /// wrote, e.g. 0.1, rather than the binary value's long expansion).
        init?(_ v: ExactJSON) {
            switch v {
            case .int(let i): self.init(text: String(i))
            case .double(let d) where d.isFinite: self.init(text: "\(d)")
            default: return nil
            }
        }

        init(negative: Bool, whole: [UInt8], fraction: [UInt8]) {
            self.negative = negative
            self.whole = Array(whole.drop(while: { $0 == 0 }))
            var f = fraction
            while f.last == 0 { f.removeLast() }
            self.fraction = f
            if self.whole.isEmpty && self.fraction.isEmpty { self.negative = false }
        }

        /// Parses "-12.5", "1e-05", "1.5e+16".
        init?(text: String) {
            var s = Substring(text)
            let negative = s.hasPrefix("-")
            if negative { s = s.dropFirst() }
            var exponent = 0
            if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }) {
                guard let x = Int(s[s.index(after: e)...].replacingOccurrences(of: "+", with: "")), abs(x) < 400 else { return nil }
                exponent = x
                s = s[..<e]
            }
            let parts = s.split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), !parts[0].isEmpty || parts.count == 2 else { return nil }
            let digits = parts.joined().utf8.map { $0 &- 0x30 }
            guard !digits.isEmpty, digits.allSatisfy({ $0 < 10 }) else { return nil }
            let point = parts[0].utf8.count + exponent  // digits before the decimal point
            var whole: [UInt8], fraction: [UInt8]
            if point <= 0 {
                whole = []
                fraction = [UInt8](repeating: 0, count: -point) + digits
            } else if point >= digits.count {
                whole = digits + [UInt8](repeating: 0, count: point - digits.count)
                fraction = []
            } else {
                whole = Array(digits[..<point])
                fraction = Array(digits[point...])
            }
            self.init(negative: negative, whole: whole, fraction: fraction)
        }

        /// −1, 0, 1 as `a` is below, equal to or above `b`.
        static func compare(_ a: Decimal, _ b: Decimal) -> Int {
            if a.negative != b.negative { return a.negative ? -1 : 1 }
            let m = compareMagnitudes(a, b)
            return a.negative ? -m : m
        }

        static func compareMagnitudes(_ a: Decimal, _ b: Decimal) -> Int {
            if a.whole.count != b.whole.count { return a.whole.count < b.whole.count ? -1 : 1 }
            for (x, y) in zip(a.whole, b.whole) where x != y { return x < y ? -1 : 1 }
            for i in 0..<max(a.fraction.count, b.fraction.count) {
                let x = i < a.fraction.count ? a.fraction[i] : 0, y = i < b.fraction.count ? b.fraction[i] : 0
                if x != y { return x < y ? -1 : 1 }
            }
            return 0
        }
    }

    struct Bound: Equatable {
        var value: Decimal
        var strict: Bool
    }

    var lower: Bound?
    var upper: Bound?

    /// The numeric keywords: the bounds, and `multipleOf` (the step, parsed by `JSONSchemaGrammar`).
    static let keywords: Set<String> = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"]

    /// The bounds a schema's keywords set (nil: none). Numbers only; Draft 4's `exclusiveMinimum: true` makes
    /// `minimum` strict. Where both an inclusive and an exclusive bound are given, the tighter holds.
    static func parse(_ fields: [String: ExactJSON], path: String) throws -> NumericBounds? {
        func number(_ key: String) throws -> Decimal? {
            guard let v = fields[key], v != .null else { return nil }
            guard let d = Decimal(v) else { throw GrammarError("\(path): '\(key)' must be a number") }
            return d
        }
        func flag(_ key: String) -> Bool? { if case .bool(let b)? = fields[key] { b } else { nil } }
        var b = NumericBounds()
        let draft4Min = flag("exclusiveMinimum"), draft4Max = flag("exclusiveMaximum")
        if let m = try number("minimum") { b.lower = Bound(value: m, strict: draft4Min == true) }
        if let m = try number("maximum") { b.upper = Bound(value: m, strict: draft4Max == true) }
        if (draft4Min == true && b.lower == nil) || (draft4Max == true && b.upper == nil) {
            throw GrammarError("\(path): a boolean exclusiveMinimum/exclusiveMaximum needs minimum/maximum beside it")
        }
        if draft4Min == nil, let m = try number("exclusiveMinimum"), b.lower.map({ Decimal.compare(m, $0.value) >= 0 }) ?? true {
            b.lower = Bound(value: m, strict: true)
        }
        if draft4Max == nil, let m = try number("exclusiveMaximum"), b.upper.map({ Decimal.compare(m, $0.value) <= 0 }) ?? true {
            b.upper = Bound(value: m, strict: true)
        }
        return b.lower == nil && b.upper == nil ? nil : b
    }

    /// Whether `value` (a JSON number) lies within the bounds: for `enum` and `const` values.
    func contains(_ value: Decimal) -> Bool {
        if let l = lower { let c = Decimal.compare(value, l.value); if c < 0 || (c == 0 && l.strict) { return false } }
        if let u = upper { let c = Decimal.compare(value, u.value); if c > 0 || (c == 0 && u.strict) { return false } }
        return true
    }

    /// The integers within the bounds, as an inclusive range clamped to what `maxDigits` digits can write; nil if none.
    func integerRange() -> ClosedRange<Int>? {
        let limit = Int(Decimal.writableLimit) - 1
        func int(_ d: Decimal) -> Int? {
            // Past the limit the bound leaves every writable integer on one side.
            d.writableWhole.map { d.negative ? -Int($0) : Int($0) }
        }
        var lo = -limit, hi = limit
        if let l = lower {
            if let w = int(l.value) {
                // The smallest integer above (or at, inclusive and whole) the bound.
                let whole = l.value.fraction.isEmpty
                lo = Swift.max(lo, l.value.negative ? (whole ? (l.strict ? w + 1 : w) : w) : (whole && !l.strict ? w : w + 1))
            } else if !l.value.negative {
                return nil
            }
        }
        if let u = upper {
            if let w = int(u.value) {
                let whole = u.value.fraction.isEmpty
                hi = Swift.min(hi, u.value.negative ? (whole && !u.strict ? w : w - 1) : (whole ? (u.strict ? w - 1 : w) : w))
            } else if u.value.negative {
                return nil
            }
        }
        return lo <= hi ? lo...hi : nil
    }

    /// The magnitudes of the values within the bounds on one side of zero (`negative`: the values below or at zero,
    /// as magnitudes): nil if that side is empty. A nil end is unbounded.
    func magnitudes(negative: Bool) -> (low: Bound?, high: Bound?)? {
        let zero = Decimal(negative: false, whole: [], fraction: [])
        if !negative {
            if let u = upper, u.value.negative || (u.value.isZero && u.strict) { return nil }
            let low = lower.flatMap { $0.value.negative ? nil : $0 }
            return (low, upper)
        }
        if let l = lower, !l.value.negative && !(l.value.isZero && !l.strict) { return nil }
        let low: Bound? = upper.map { u in u.value.negative ? Bound(value: u.value.magnitude, strict: u.strict) : Bound(value: zero, strict: false) }
        return (low, lower.map { Bound(value: $0.value.magnitude, strict: $0.strict) })
    }
}

extension JSONSchemaGrammar {
    /// Integers (no leading zeros, "-" before negatives) in `range` that are multiples of `k` (1: all); nil if none.
    mutating func boundedInteger(_ range: ClosedRange<Int>, multipleOf k: Int = 1) throws -> Int? {
        var alternatives: [[Grammar.Item]] = []
        if range.upperBound >= 0, let r = try wholeRange(UInt64(Swift.max(0, range.lowerBound)), UInt64(range.upperBound), multipleOf: k) {
            alternatives.append([.rule(r)])
        }
        if range.lowerBound < 0 {
            let low = range.upperBound < 0 ? UInt64(-range.upperBound) : 1
            if let r = try wholeRange(low, UInt64(-range.lowerBound), multipleOf: k) { alternatives.append([.byte(0x2D), .rule(r)]) }
        }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// Numbers (integer part, optional fraction, no exponent) within `bounds`; nil if none can be written (e.g. every
    /// number in the bounds needs more than `maxDigits` fraction digits).
    mutating func boundedNumber(_ bounds: NumericBounds) throws -> Int? {
        var alternatives: [[Grammar.Item]] = []
        if let (low, high) = bounds.magnitudes(negative: false), let r = try magnitude(low: low, high: high) {
            alternatives.append([.rule(r)])
        }
        if let (low, high) = bounds.magnitudes(negative: true), let r = try magnitude(low: low, high: high) {
            alternatives.append([.byte(0x2D), .rule(r)])
        }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// The decimal texts of the whole numbers in [lo, hi] (at most `maxDigits` digits, no leading zeros) that are
    /// multiples of `k`; nil if none. Every rule built can still complete (dead ends are left out, so a model is never
    /// steered into a prefix no digit can finish).
    private mutating func wholeRange(_ lo: UInt64, _ hi: UInt64, multipleOf k: Int = 1) throws -> Int? {
        // Lengths whose every number lies in [lo, hi] share one deterministic rule (first digit, then digits that may
        // stop once long enough), so the parses do not split by length up front; the lengths only partly inside get
        // their own edge-tracking rule. At most four alternatives: 0, the shortest partial length, the full lengths, the
        // longest partial length.
        var alternatives: [[Grammar.Item]] = []
        var full: ClosedRange<Int>?
        var length = 1, low: UInt64 = 0, high: UInt64 = 9
        if lo == 0 { alternatives.append(Grammar.Item.literal("0")) }
        while length <= Self.maxDigits {
            let first = Swift.max(low, 1)  // 0 is written on its own above
            let a = Swift.max(lo, first), b = Swift.min(hi, high)
            if a == first && b == high {
                full = (full?.lowerBound ?? length)...length
            } else if a <= b, let r = try fixedLength(Self.digitsOf(a, length), Self.digitsOf(b, length), at: 0, tightLow: true, tightHigh: true, remainder: 0, k: k) {
                alternatives.append([.rule(r)])
            }
            low = high + 1
            high = high * 10 + 9
            length += 1
        }
        if let full, let r = try fullLengths(full, k: k) { alternatives.append([.rule(r)]) }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// Numbers of `lengths` digits (no leading zero) that are multiples of `k`: a first digit 1–9, then digits that may
    /// stop once the number is long enough and a multiple; nil if none.
    private mutating func fullLengths(_ lengths: ClosedRange<Int>, k: Int) throws -> Int? {
        let alternatives = try remainderGroups(1...9, remainder: 0, k: k) { c, r in try c.digitsUpTo(1, remainder: r, lengths: lengths, k: k) }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// After `count` digits leaving `remainder`: stop (if the length and remainder allow) or another digit.
    private mutating func digitsUpTo(_ count: Int, remainder: Int, lengths: ClosedRange<Int>, k: Int) throws -> Int? {
        let key = "digits after \(count) leaving \(remainder) mod \(k), lengths \(lengths.lowerBound)-\(lengths.upperBound)"
        if let r = memo[key] { return r < 0 ? nil : r }
        var alternatives: [[Grammar.Item]] = []
        if remainder == 0 && lengths.contains(count) { alternatives.append([]) }
        if count < lengths.upperBound {
            alternatives += try remainderGroups(0...9, remainder: remainder, k: k) { c, r in
                try c.digitsUpTo(count + 1, remainder: r, lengths: lengths, k: k)
            }
        }
        let result = alternatives.isEmpty ? nil : try rule(alternatives)
        memo[key] = result ?? -1
        return result
    }

    private static func digitsOf(_ v: UInt64, _ length: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length), v = v
        for i in stride(from: length - 1, through: 0, by: -1) {
            out[i] = UInt8(v % 10)
            v /= 10
        }
        return out
    }

    /// Digits `at`… of a fixed-length number between `a` and `b` (same length), while it still equals `a`'s (`tightLow`)
    /// or `b`'s (`tightHigh`) digits so far, its digits so far leaving `remainder` mod `k`; nil if no completion is a
    /// multiple of `k`.
    private mutating func fixedLength(_ a: [UInt8], _ b: [UInt8], at i: Int, tightLow: Bool, tightHigh: Bool, remainder: Int, k: Int) throws -> Int? {
        if !tightLow && !tightHigh { return try digitsLeaving(a.count - i, remainder: remainder, k: k) }
        if i == a.count { return remainder == 0 ? try rule([[]]) : nil }
        let lowDigit = tightLow ? a[i] : 0, highDigit = tightHigh ? b[i] : 9
        guard lowDigit <= highDigit else { return nil }
        var alternatives: [[Grammar.Item]] = []
        for (range, tl, th) in Self.splits(lowDigit, highDigit, tightLow, tightHigh) {
            if !tl && !th {
                // Between the edges: the digits grouped by the remainder they leave.
                alternatives += try remainderGroups(range, remainder: remainder, k: k) { c, r in try c.digitsLeaving(a.count - i - 1, remainder: r, k: k) }
            } else if let next = try fixedLength(a, b, at: i + 1, tightLow: tl, tightHigh: th, remainder: (remainder * 10 + Int(range.lowerBound)) % k, k: k) {
                alternatives.append([.bytes(Grammar.ByteSet(ranges: [(range.lowerBound + 0x30)...(range.upperBound + 0x30)])), .rule(next)])
            }
        }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// The digits from `low` to `high` grouped by whether each stays on the low edge, the high edge, or between.
    private static func splits(_ low: UInt8, _ high: UInt8, _ tightLow: Bool, _ tightHigh: Bool) -> [(ClosedRange<UInt8>, Bool, Bool)] {
        if low == high { return [(low...low, tightLow, tightHigh)] }
        var out: [(ClosedRange<UInt8>, Bool, Bool)] = [(low...low, tightLow, false)]
        if high - low >= 2 { out.append(((low + 1)...(high - 1), false, false)) }
        out.append((high...high, false, tightHigh))
        return out
    }

    /// For each remainder mod `k` the digits of `digits` lead to (from `remainder`), the digits as one byte set followed
    /// by `next`'s rule for that remainder, where it has one.
    private mutating func remainderGroups(_ digits: ClosedRange<UInt8>, remainder: Int, k: Int,
                                          _ next: (inout JSONSchemaGrammar, Int) throws -> Int?) throws -> [[Grammar.Item]] {
        var byRemainder: [(Int, Grammar.ByteSet)] = []
        for d in digits {
            let r = (remainder * 10 + Int(d)) % k
            if let i = byRemainder.firstIndex(where: { $0.0 == r }) { byRemainder[i].1.insert(d + 0x30) } else { byRemainder.append((r, Grammar.ByteSet([d + 0x30]))) }
        }
        var out: [[Grammar.Item]] = []
        for (r, set) in byRemainder {
            if let rest = try next(&self, r) { out.append([.bytes(set), .rule(rest)]) }
        }
        return out
    }

    /// Exactly `n` digits that bring `remainder` to 0 mod `k` (k = 1: any n digits); nil if none do.
    private mutating func digitsLeaving(_ n: Int, remainder: Int, k: Int) throws -> Int? {
        let key = "digits \(n) leaving \(remainder) mod \(k)"
        if let r = memo[key] { return r < 0 ? nil : r }
        var result: Int?
        if n == 0 {
            result = remainder == 0 ? try rule([[]]) : nil
        } else {
            let alternatives = try remainderGroups(0...9, remainder: remainder, k: k) { c, r in try c.digitsLeaving(n - 1, remainder: r, k: k) }
            result = alternatives.isEmpty ? nil : try rule(alternatives)
        }
        memo[key] = result ?? -1
        return result
    }

    /// Non-negative decimals (integer part, optional fraction) from `low` to `high` (nil: unbounded); nil if none.
    private mutating func magnitude(low: NumericBounds.Bound?, high: NumericBounds.Bound?) throws -> Int? {
        typealias D = NumericBounds.Decimal
        let lowWhole: UInt64 = low.flatMap { $0.value.writableWhole } ?? (low == nil ? 0 : D.writableLimit)
        var highWhole: UInt64 = D.writableLimit - 1
        var highFraction: NumericBounds.Bound? = nil  // the fraction bound where the integer part is highWhole
        if let h = high, let w = h.value.writableWhole {
            highWhole = w
            highFraction = NumericBounds.Bound(value: D(negative: false, whole: [], fraction: h.value.fraction), strict: h.strict)
        }
        guard lowWhole <= highWhole else { return nil }
        let lowFraction = low.map { NumericBounds.Bound(value: D(negative: false, whole: [], fraction: $0.value.fraction), strict: $0.strict) }
        var alternatives: [[Grammar.Item]] = []
        if lowWhole == highWhole {
            if let f = try fraction(low: lowFraction, high: highFraction), let w = try wholeRange(lowWhole, lowWhole) {
                alternatives.append([.rule(w), .rule(f)])
            }
        } else {
            if let f = try fraction(low: lowFraction, high: nil), let w = try wholeRange(lowWhole, lowWhole) { alternatives.append([.rule(w), .rule(f)]) }
            if highWhole - lowWhole >= 2, let f = try fraction(low: nil, high: nil), let w = try wholeRange(lowWhole + 1, highWhole - 1) {
                alternatives.append([.rule(w), .rule(f)])
            }
            if let f = try fraction(low: nil, high: highFraction), let w = try wholeRange(highWhole, highWhole) { alternatives.append([.rule(w), .rule(f)]) }
        }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }

    /// What may follow an integer part so that its fraction 0.F lies between `low` and `high` (fractions of the
    /// bounds; nil: unbounded): nothing (F = 0) where allowed, or "." and 1…`maxDigits` digits. nil if nothing can.
    private mutating func fraction(low: NumericBounds.Bound?, high: NumericBounds.Bound?) throws -> Int? {
        let g = low?.value.fraction ?? [], h = high?.value.fraction ?? []
        var memo: [Int: Int?] = [:]
        // Digits from position i on, still equal to g's (tl) / h's (th) digits so far; mayEnd: the fraction may stop.
        func canEnd(_ i: Int, _ tl: Bool, _ th: Bool) -> Bool {
            if tl, let low { if i < g.count || low.strict { return false } }
            if th, let high { if i >= h.count && high.strict { return false } }
            return true
        }
        func node(_ c: inout JSONSchemaGrammar, _ i: Int, _ tl: Bool, _ th: Bool, mayEnd: Bool) throws -> Int? {
            let tl = tl && low != nil, th = th && high != nil
            let key = ((i * 2 + (tl ? 1 : 0)) * 2 + (th ? 1 : 0)) * 2 + (mayEnd ? 1 : 0)
            if let r = memo[key] { return r }
            var alternatives: [[Grammar.Item]] = []
            if mayEnd && canEnd(i, tl, th) { alternatives.append([]) }
            if i < Self.maxDigits {
                if !tl && !th {
                    let rest = Self.maxDigits - i - 1
                    alternatives.append([Self.set(0x30...0x39), .rule(rest > 0 ? try c.digits(rest, optional: true) : try c.rule([[]]))])
                } else {
                    let lowDigit: UInt8 = tl ? (i < g.count ? g[i] : 0) : 0
                    let highDigit: UInt8 = th ? (i < h.count ? h[i] : 0) : 9
                    if lowDigit <= highDigit {
                        for (range, ntl, nth) in Self.splits(lowDigit, highDigit, tl, th) {
                            if let next = try node(&c, i + 1, ntl, nth, mayEnd: true) {
                                alternatives.append([.bytes(Grammar.ByteSet(ranges: [(range.lowerBound + 0x30)...(range.upperBound + 0x30)])), .rule(next)])
                            }
                        }
                    }
                }
            }
            let r = alternatives.isEmpty ? nil : try c.rule(alternatives)
            memo[key] = r
            return r
        }
        var alternatives: [[Grammar.Item]] = []
        if canEnd(0, true, true) { alternatives.append([]) }
        if let digits = try node(&self, 0, true, true, mayEnd: false) { alternatives.append([.byte(0x2E), .rule(digits)]) }
        return alternatives.isEmpty ? nil : try rule(alternatives)
    }
}
