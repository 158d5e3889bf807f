/// Turns token ids into text one id at a time, for streaming responses.
///
/// Each `append` returns the text completed by that id. A code point split across ids (byte-level BPE pieces,
/// `<0xXX>` byte-fallback tokens) is held back until its last byte arrives, so every returned piece is valid
/// UTF-8 and the pieces concatenate to `Tokenizer.decode(ids, skipSpecial:)` (for byte-fallback runs that are not
/// valid UTF-8, `decode` writes one U+FFFD per byte as HF does, the stream one per maximal invalid subsequence).
/// The SentencePiece leading-space rule of HF decoding (the `▁` that encoding prepended is dropped at the start
/// of the text) applies when the stream starts a sequence. Steady-state appends reuse one byte buffer.
public struct StreamingDetokenizer: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecial: Bool
    /// Bytes received but not yet returned: at most an incomplete UTF-8 sequence between calls.
    private var pending: [UInt8] = []
    /// Leading spaces still to drop (HF `Strip` decoder), while no other byte has been produced.
    private var stripRemaining: Int
    /// No token has contributed yet (HF Metaspace decoder treats the first token specially).
    private var atFirstToken: Bool
    private let startsSequence: Bool

    /// - Parameters:
    ///   - skipSpecial: drop control tokens (BOS, EOS, `<|im_end|>`, …) as `decode(skipSpecial: true)` does.
    ///   - startsSequence: the ids begin the text, so the leading-space rule applies. Pass false when streaming
    ///     a continuation (e.g. generated ids after a prompt), where a leading space is real.
    public init(tokenizer: Tokenizer, skipSpecial: Bool = true, startsSequence: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
        self.startsSequence = startsSequence
        stripRemaining = startsSequence ? tokenizer.decoder.stripLeadingSpaces : 0
        atFirstToken = startsSequence
        pending.reserveCapacity(32)
    }

    /// Feeds one id; returns the text it completes (often empty while a code point is incomplete). Ids out of
    /// range are ignored.
    public mutating func append(_ id: Int) -> String {
        guard id >= 0, id < tokenizer.vocabSize, !(skipSpecial && tokenizer.isSpecial(id)) else { return "" }
        let bytes = tokenizer.decodedBytes(of: id)
        let dropSpaces = atFirstToken && tokenizer.decoder.metaspaceFirstToken && tokenizer.fallbackByte[id] < 0
        atFirstToken = false
        for b in bytes {
            if dropSpaces && b == 0x20 { continue }
            if stripRemaining > 0 {
                if b == 0x20 { stripRemaining -= 1; continue }
                stripRemaining = 0
            }
            pending.append(b)
        }
        let cut = Self.completeLength(pending)
        guard cut > 0 else { return "" }
        let text = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Returns whatever is still held back (an incomplete sequence becomes U+FFFD) and resets for a new sequence.
    public mutating func finish() -> String {
        let text = pending.isEmpty ? "" : String(decoding: pending, as: UTF8.self)
        pending.removeAll(keepingCapacity: true)
        stripRemaining = startsSequence ? tokenizer.decoder.stripLeadingSpaces : 0
        atFirstToken = startsSequence
        return text
    }

    /// The length of the prefix of `bytes` that can be decoded now: everything except a trailing sequence that
    /// is a valid but incomplete UTF-8 prefix (which more bytes may complete). Invalid bytes are not held: they
    /// decode to U+FFFD exactly as they would in the whole text.
    static func completeLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var i = n - 1
        // The lead byte of the last sequence is at most 3 continuation bytes back.
        while i >= 0 && i >= n - 4 {
            let lead = bytes[i]
            if lead & 0xC0 == 0x80 { i -= 1; continue }
            let need: Int
            switch lead {
            case 0xC2...0xDF: need = 2
            case 0xE0...0xEF: need = 3
            case 0xF0...0xF4: need = 4
            default: return n  // ASCII or a byte that can never start a sequence
            }
            let have = n - i
            if have >= need { return n }
            if have >= 2 {
                // The second byte's range depends on the lead (no overlongs, surrogates or values > U+10FFFF).
                let second = bytes[i + 1]
                let ok: Bool = switch lead {
                case 0xE0: (0xA0...0xBF).contains(second)
                case 0xED: (0x80...0x9F).contains(second)
                case 0xF0: (0x90...0xBF).contains(second)
                case 0xF4: (0x80...0x8F).contains(second)
                default: true
                }
                if !ok { return n }
            }
            return i
        }
        return n
    }
}
