/// Pre-tokenization: cutting a text segment into the pieces BPE runs on, without a regex engine.
///
/// The split regexes of GPT-2 and Llama 3 / Qwen2 are hand-compiled into scanners over Unicode scalars. Each
/// scanner mirrors the regex engine: at each position it takes the *first* alternative that matches (not the
/// longest), with the same greedy/backtracking outcome. Character classes follow Oniguruma, which HF
/// `tokenizers` uses: `\p{L}` / `\p{N}` are the general categories L* / N*, `\s` is Unicode White_Space.

/// The classes the split patterns distinguish.
enum ScalarClass: UInt8 {
    case letter      // \p{L}
    case number      // \p{N}
    case space       // U+0020, the only character ` ?` accepts
    case whitespace  // other \s, except \r and \n
    case newline     // \r or \n
    case other       // [^\s\p{L}\p{N}]

    var isWhitespace: Bool { self == .space || self == .whitespace || self == .newline }

    static func of(_ scalar: Unicode.Scalar) -> ScalarClass {
        let v = scalar.value
        if v < 128 { return ascii[Int(v)] }
        let properties = scalar.properties
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return properties.isWhitespace ? .whitespace : .other
        }
    }

    private static let ascii: [ScalarClass] = (0..<128).map { v -> ScalarClass in
        switch v {
        case 0x0A, 0x0D: .newline
        case 0x20: .space
        case 0x09, 0x0B, 0x0C: .whitespace
        case 0x30...0x39: .number
        case 0x41...0x5A, 0x61...0x7A: .letter
        default: .other
        }
    }
}

/// A split pattern from a tokenizer's pre-tokenizer.
enum SplitPattern: Equatable, Sendable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (GPT-2, ByteLevel use_regex).
    case gpt2
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|`
    /// `\s*[\r\n]+|\s+(?!\S)|\s+` — Llama 3 (maxDigits 3) and Qwen2 (`\p{N}`, maxDigits 1).
    case llama3(maxDigits: Int)

    static let gpt2Regex = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Regex =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The pattern for a regex string found in a tokenizer.json `Split` pre-tokenizer, if it is a known one.
    init?(regex: String) {
        switch regex {
        case Self.gpt2Regex, #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#: self = .gpt2
        case Self.llama3Regex: self = .llama3(maxDigits: 3)
        case Self.qwen2Regex: self = .llama3(maxDigits: 1)
        default: return nil
        }
    }
}

/// One step of a pre-tokenizer pipeline; each step refines the current pieces.
enum PreTokenizerStep: Equatable, Sendable {
    /// Split with a regex, keeping every piece (HF `Split` behaviour `Isolated`, and ByteLevel `use_regex`).
    case split(SplitPattern)
    /// HF `Digits`: isolate each digit (`individual`) or each run of digits.
    case digits(individual: Bool)
    /// Split before every occurrence of the scalar, which starts the next piece (Metaspace `split: true`).
    case splitBefore(Unicode.Scalar)
}

/// A segment of text being pre-tokenized: its scalars and their classes.
struct ScalarText {
    var scalars: [Unicode.Scalar] = []
    var classes: [ScalarClass] = []

    mutating func reset<S: Sequence<Unicode.Scalar>>(_ source: S) {
        scalars.removeAll(keepingCapacity: true)
        classes.removeAll(keepingCapacity: true)
        for s in source {
            scalars.append(s)
            classes.append(ScalarClass.of(s))
        }
    }

    /// Applies the steps in order; `pieces` is replaced by the final pieces (ranges into `scalars`).
    func split(_ steps: [PreTokenizerStep], into pieces: inout [Range<Int>], scratch: inout [Range<Int>]) {
        pieces.removeAll(keepingCapacity: true)
        if scalars.isEmpty { return }
        pieces.append(0..<scalars.count)
        for step in steps {
            scratch.removeAll(keepingCapacity: true)
            for range in pieces {
                switch step {
                case .split(.gpt2): splitGPT2(range, into: &scratch)
                case .split(.llama3(let maxDigits)): splitLlama3(range, maxDigits: maxDigits, into: &scratch)
                case .digits(let individual): splitDigits(range, individual: individual, into: &scratch)
                case .splitBefore(let scalar): splitBefore(scalar, range, into: &scratch)
                }
            }
            swap(&pieces, &scratch)
        }
    }

    /// Length of a contraction (`'s 't 'm 'd` → 2, `'re 've 'll` → 3) starting at the apostrophe at `i`, or 0.
    /// Case-insensitive matching follows Unicode case folding, under which `ſ` (U+017F) is an `s`.
    private func contraction(at i: Int, end: Int, caseInsensitive: Bool) -> Int {
        guard scalars[i] == "'", i + 1 < end else { return 0 }
        func lower(_ k: Int) -> UInt32 {
            let v = scalars[k].value
            guard caseInsensitive else { return v }
            if v >= 0x41 && v <= 0x5A { return v + 0x20 }
            if v == 0x17F { return 0x73 }
            return v
        }
        switch lower(i + 1) {
        case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
        case 0x72, 0x76: return i + 2 < end && lower(i + 2) == 0x65 ? 3 : 0  // re ve
        case 0x6C: return i + 2 < end && lower(i + 2) == 0x6C ? 3 : 0  // ll
        default: return 0
        }
    }

    /// After a run of whitespace `i..<j` (all \s), the end of `\s+(?!\S)|\s+`: the whole run at the end of the
    /// text, else all but its last character (which then leads the next piece), but at least one character.
    private func whitespaceEnd(_ i: Int, _ j: Int, end: Int) -> Int {
        (j == end || j - i == 1) ? j : j - 1
    }

    private func runEnd(from i: Int, end: Int, while predicate: (ScalarClass) -> Bool) -> Int {
        var k = i
        while k < end && predicate(classes[k]) { k += 1 }
        return k
    }

    private func splitGPT2(_ range: Range<Int>, into out: inout [Range<Int>]) {
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let start = i
            let c = classes[i]
            let next: ScalarClass? = i + 1 < end ? classes[i + 1] : nil
            let n = contraction(at: i, end: end, caseInsensitive: false)
            if n > 0 {
                i += n
            } else if c == .letter || (c == .space && next == .letter) {
                i = runEnd(from: c == .space ? i + 1 : i, end: end) { $0 == .letter }
            } else if c == .number || (c == .space && next == .number) {
                i = runEnd(from: c == .space ? i + 1 : i, end: end) { $0 == .number }
            } else if c == .other || (c == .space && next == .other) {
                i = runEnd(from: c == .space ? i + 1 : i, end: end) { $0 == .other }
            } else {
                let j = runEnd(from: i, end: end) { $0.isWhitespace }
                i = whitespaceEnd(i, j, end: end)
            }
            out.append(start..<i)
        }
    }

    private func splitLlama3(_ range: Range<Int>, maxDigits: Int, into out: inout [Range<Int>]) {
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let start = i
            let c = classes[i]
            let next: ScalarClass? = i + 1 < end ? classes[i + 1] : nil
            let n = contraction(at: i, end: end, caseInsensitive: true)
            if n > 0 {
                i += n
            } else if c == .letter || (c != .newline && c != .number && next == .letter) {
                // [^\r\n\p{L}\p{N}]?\p{L}+
                i = runEnd(from: c == .letter ? i : i + 1, end: end) { $0 == .letter }
            } else if c == .number {
                var k = i
                while k < end && k - i < maxDigits && classes[k] == .number { k += 1 }
                i = k
            } else if c == .other || (c == .space && next == .other) {
                // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
                i = runEnd(from: c == .space ? i + 1 : i, end: end) { $0 == .other }
                i = runEnd(from: i, end: end) { $0 == .newline }
            } else {
                let j = runEnd(from: i, end: end) { $0.isWhitespace }
                // `\s*[\r\n]+`: the greedy \s* backs off to the run's last newline.
                var lastNewline = -1
                var k = j - 1
                while k >= i {
                    if classes[k] == .newline { lastNewline = k; break }
                    k -= 1
                }
                i = lastNewline >= 0 ? lastNewline + 1 : whitespaceEnd(i, j, end: end)
            }
            out.append(start..<i)
        }
    }

    private func splitDigits(_ range: Range<Int>, individual: Bool, into out: inout [Range<Int>]) {
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let start = i
            if classes[i] == .number {
                i = individual ? i + 1 : runEnd(from: i, end: end) { $0 == .number }
            } else {
                i = runEnd(from: i, end: end) { $0 != .number }
            }
            out.append(start..<i)
        }
    }

    private func splitBefore(_ marker: Unicode.Scalar, _ range: Range<Int>, into out: inout [Range<Int>]) {
        var start = range.lowerBound
        for k in range where k > start && scalars[k] == marker {
            out.append(start..<k)
            start = k
        }
        out.append(start..<range.upperBound)
    }
}
