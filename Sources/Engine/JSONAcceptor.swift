import Tokenizers

/// Accepts JSON text (RFC 8259) byte by byte with a state of a few words: what `response_format: json_object`
/// constrains sampling with. A token may be sampled only if every byte of it is accepted from the current state, so
/// the output is always a prefix of a JSON object, and the end-of-sequence token is allowed only once the object is
/// complete (`isComplete`). The top level is an object (OpenAI's JSON mode); nesting is at most `maxDepth` deep and
/// runs of whitespace at most `maxWhitespace` bytes (a model cannot stall in blanks). Strings take any byte but the
/// control characters, with JSON's escapes; UTF-8 inside them is not validated (a token may end inside a character).
public struct JSONAcceptor: Sendable, Hashable {
    public static let maxDepth = 64
    public static let maxWhitespace = 16

    enum Mode: UInt8, Hashable {
        /// A value must start (after `[`, `,` in an array, or `:`); `arrayStart`: `]` may also close the array.
        case value, arrayStart
        /// After `{`: a key or `}`; after `,` in an object: a key.
        case objectStart, key
        /// After a key: `:`.
        case colon
        /// After a value inside a container: `,` or its closer.
        case after
        case string, escape, unicode
        /// Number parts: after `-`; after a leading `0`; integer digits; after `.`; fraction digits; after `e`;
        /// after the exponent's sign; exponent digits.
        case minus, zero, integer, dot, fraction, exponent, exponentSign, exponentDigits
        /// Inside `true`, `false` or `null`.
        case literal
        /// The top-level object closed: only whitespace.
        case done
    }

    var mode: Mode = .value
    /// Bit i set: the container at depth i + 1 is an object (else an array).
    var objects: UInt64 = 0
    var depth: UInt8 = 0
    /// The string being read is a key.
    var inKey = false
    /// Hex digits left in a `\u` escape; the literal's remaining bytes' index; whitespace in the current run.
    var count: UInt8 = 0
    var literal: UInt8 = 0
    var blanks: UInt8 = 0

    public init() {}

    /// The object is complete: nothing more is needed.
    public var isComplete: Bool { mode == .done }

    private static let literals: [[UInt8]] = [Array("true".utf8), Array("false".utf8), Array("null".utf8)]

    private var inObject: Bool { depth > 0 && (objects >> UInt64(depth - 1)) & 1 == 1 }

    private static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }
    private static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    /// Takes one byte; false (and the state unspecified) when JSON cannot continue with it.
    public mutating func accept(_ b: UInt8) -> Bool {
        switch mode {
        case .string:
            if b == 0x22 {  // "
                if inKey {
                    inKey = false
                    mode = .colon
                } else {
                    endValue()
                }
                return true
            }
            if b == 0x5C { mode = .escape; return true }
            return b >= 0x20
        case .escape:
            switch b {
            case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74: mode = .string; return true
            case 0x75: mode = .unicode; count = 4; return true
            default: return false
            }
        case .unicode:
            guard Self.isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66) else { return false }
            count -= 1
            if count == 0 { mode = .string }
            return true
        case .literal:
            let word = Self.literals[Int(literal)]
            guard b == word[Int(count)] else { return false }
            count += 1
            if Int(count) == word.count { endValue() }
            return true
        case .minus:
            guard Self.isDigit(b) else { return false }
            mode = b == 0x30 ? .zero : .integer
            return true
        case .zero, .integer, .fraction, .exponentDigits:
            if Self.isDigit(b) && mode != .zero { return true }
            if b == 0x2E && (mode == .zero || mode == .integer) { mode = .dot; return true }
            if (b == 0x65 || b == 0x45) && mode != .exponentDigits { mode = .exponent; return true }
            // The number ended: the byte belongs to what follows it.
            endValue()
            return accept(b)
        case .dot:
            guard Self.isDigit(b) else { return false }
            mode = .fraction
            return true
        case .exponent:
            if b == 0x2B || b == 0x2D { mode = .exponentSign; return true }
            guard Self.isDigit(b) else { return false }
            mode = .exponentDigits
            return true
        case .exponentSign:
            guard Self.isDigit(b) else { return false }
            mode = .exponentDigits
            return true
        case .value, .arrayStart, .objectStart, .key, .colon, .after, .done:
            if Self.isBlank(b) {
                guard blanks < Self.maxWhitespace else { return false }
                blanks += 1
                return true
            }
            blanks = 0
            return structural(b)
        }
    }

    /// A byte where JSON's structure decides (outside strings, numbers and literals).
    private mutating func structural(_ b: UInt8) -> Bool {
        switch mode {
        case .value, .arrayStart:
            if mode == .arrayStart && b == 0x5D { return close(object: false) }
            if depth == 0 && b != 0x7B { return false }  // the top level is an object
            return startValue(b)
        case .objectStart, .key:
            if mode == .objectStart && b == 0x7D { return close(object: true) }
            guard b == 0x22 else { return false }
            inKey = true
            mode = .string
            return true
        case .colon:
            guard b == 0x3A else { return false }
            mode = .value
            return true
        case .after:
            if b == 0x2C {
                mode = inObject ? .key : .value
                return true
            }
            guard b == 0x7D || b == 0x5D else { return false }
            return close(object: b == 0x7D)
        default:
            return false
        }
    }

    private mutating func startValue(_ b: UInt8) -> Bool {
        switch b {
        case 0x7B, 0x5B:  // { [
            guard Int(depth) < Self.maxDepth else { return false }
            let object = b == 0x7B
            if object { objects |= 1 << UInt64(depth) } else { objects &= ~(1 << UInt64(depth)) }
            depth += 1
            mode = object ? .objectStart : .arrayStart
            return true
        case 0x22:
            inKey = false
            mode = .string
            return true
        case 0x2D: mode = .minus; return true
        case 0x30: mode = .zero; return true
        case 0x31...0x39: mode = .integer; return true
        case 0x74, 0x66, 0x6E:  // t f n
            literal = b == 0x74 ? 0 : b == 0x66 ? 1 : 2
            count = 1
            mode = .literal
            return true
        default:
            return false
        }
    }

    /// Closes the innermost container if it is of that kind.
    private mutating func close(object: Bool) -> Bool {
        guard depth > 0, inObject == object else { return false }
        depth -= 1
        endValue()
        return true
    }

    /// A value ended: what may follow it.
    private mutating func endValue() {
        mode = depth == 0 ? .done : .after
        blanks = 0
    }

    /// The state after `bytes`, or nil when JSON cannot continue with them.
    public func after(_ bytes: some Sequence<UInt8>) -> JSONAcceptor? {
        var s = self
        for b in bytes where !s.accept(b) { return nil }
        return s
    }

    /// Whether JSON can continue with `bytes` (all of them, at least one).
    func allows(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !bytes.isEmpty else { return false }
        var s = self
        for b in bytes where !s.accept(b) { return false }
        return true
    }
}

/// JSON mode's per-step token mask: the mask the last step filled, and the masks of recent acceptor states (most
/// steps inside a string or a number repeat one).
struct JSONTokenMasks {
    private let table: TokenByteTable
    private(set) var mask: [UInt8]
    private var cache: [JSONAcceptor: [UInt8]] = [:]
    static let cacheLimit = 32

    init(table: TokenByteTable) {
        self.table = table
        mask = [UInt8](repeating: 0, count: table.vocab)
    }

    /// Fills `mask` with the tokens allowed after `generated`, and says whether the object is complete (then only
    /// `endTokens` are allowed); not filled when the tokens so far are not JSON (only a request resumed from
    /// elsewhere could bring such): then the step is not constrained. The state is replayed from `generated`, so
    /// nothing needs carrying when a request moves.
    mutating func fill(after generated: ArraySlice<Int>, endTokens: Set<Int>) -> (filled: Bool, complete: Bool) {
        let vocab = mask.count
        var state = JSONAcceptor()
        for token in generated where token >= 0 && token < vocab {
            guard let next = state.after(table.bytes(of: token)) else { return (false, false) }
            state = next
        }
        let complete = state.isComplete
        if let cached = cache[state] {
            mask = cached
            return (true, complete)
        }
        let offsets = table.offsets
        table.storage.withUnsafeBufferPointer { b in
            mask.withUnsafeMutableBufferPointer { m in
                for id in 0..<vocab {
                    if endTokens.contains(id) {
                        m[id] = complete ? 1 : 0
                    } else {
                        m[id] = !complete && state.allows(UnsafeBufferPointer(rebasing: b[offsets[id]..<offsets[id + 1]])) ? 1 : 0
                    }
                }
            }
        }
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[state] = mask
        return (true, complete)
    }
}
