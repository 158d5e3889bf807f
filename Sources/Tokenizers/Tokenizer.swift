import Foundation

/// Text ↔ token ids for the Llama family: byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen2) and SentencePiece-style
/// BPE with byte fallback (Llama 2, TinyLlama).
///
/// Built from an HF directory (`tokenizer.json` + `tokenizer_config.json`) or from GGUF metadata. Encoding follows
/// HF `tokenizers` step by step: added/special tokens are cut out of the raw text first (leftmost, longest match),
/// each remaining segment is normalized, pre-tokenized into pieces, and each piece is merged by BPE. Decoding
/// follows the tokenizer's HF decoder chain. Immutable and thread-safe; a bounded word cache is shared by callers.
public final class Tokenizer: Sendable {
    /// The BPE flavour.
    public enum Model: String, Sendable, Equatable {
        /// GPT-2 style: text is UTF-8 bytes spelled as printable characters; every byte has a token.
        case byteLevelBPE
        /// SentencePiece style: spaces become `▁`, a `▁` is prepended, unknown characters fall back to `<0xXX>`.
        case sentencePieceBPE
    }

    public let model: Model
    /// Ids run from 0 to `vocabSize - 1` (added tokens included).
    public var vocabSize: Int { tokens.count }
    public let bosTokenID: Int?
    /// Every id that ends generation: the tokenizer's EOS first, then the chat template's end-of-turn token
    /// (`<|im_end|>`, `<|eot_id|>`) and any further ids from `generation_config.json`.
    public let eosTokenIDs: [Int]
    public var eosTokenID: Int? { eosTokenIDs.first }
    public let unknownTokenID: Int?
    /// Ids `encode(_:addSpecial: true)` puts before and after the text (usually `[bos]` and `[]`).
    public let prefixTokenIDs: [Int]
    public let suffixTokenIDs: [Int]
    /// The chat format recognised from the model's own template text.
    public let chatTemplate: ChatTemplate

    let tokens: [String]
    let kinds: [TokenKind]
    let tokenToID: [ExactString: Int]
    let merges: MergeTable
    let matcher: AddedTokenMatcher
    let normalizers: [Normalization]
    let metaspace: Metaspace?
    let byteLevelPrefixSpace: Bool
    let preTokenizer: [PreTokenizerStep]
    let decoder: DecoderStyle
    let byteFallback: Bool
    let fuseUnknown: Bool
    let ignoreMerges: Bool
    /// Byte value → token id (the byte's character for byte-level, `<0xXX>` for SentencePiece), or -1.
    let byteTokenIDs: [Int32]
    /// Single-scalar tokens (SentencePiece initial symbols).
    let scalarTokenIDs: [UInt32: Int32]
    /// Whole-piece lookup for `ignore_merges` (Llama 3): token bytes → id.
    let wholeTokenIDs: [[UInt8]: Int32]
    /// What each id decodes to, flattened: bytes of id i are `decodedBytes[decodedOffsets[i]..<decodedOffsets[i+1]]`.
    let decodedBytes: [UInt8]
    let decodedOffsets: [Int32]
    /// For SentencePiece byte fallback: the byte an id stands for (`<0xXX>`), or -1.
    let fallbackByte: [Int16]
    let cache = WordCache()

    init(spec: TokenizerSpec) throws {
        let count = spec.tokens.count
        guard count > 0 else { throw TokenizerError.invalidVocabulary("empty vocabulary") }
        guard spec.kinds.count == count else {
            throw TokenizerError.invalidVocabulary("\(spec.kinds.count) token types for \(count) tokens")
        }
        for (name, id) in [("bos", spec.bosID), ("unknown", spec.unknownID)] {
            if let id, !(0..<count).contains(id) { throw TokenizerError.invalidVocabulary("\(name) token id \(id) out of range 0..<\(count)") }
        }
        for id in spec.eosIDs + spec.prefixIDs + spec.suffixIDs + spec.added.map(\.id) where !(0..<count).contains(id) {
            throw TokenizerError.invalidVocabulary("special token id \(id) out of range 0..<\(count)")
        }
        model = spec.model
        tokens = spec.tokens
        kinds = spec.kinds
        merges = spec.merges
        normalizers = spec.normalizers
        metaspace = spec.metaspace
        byteLevelPrefixSpace = spec.byteLevelPrefixSpace
        preTokenizer = spec.preTokenizer
        decoder = spec.decoder
        byteFallback = spec.byteFallback
        fuseUnknown = spec.fuseUnknown
        ignoreMerges = spec.ignoreMerges
        bosTokenID = spec.bosID
        unknownTokenID = spec.unknownID
        prefixTokenIDs = spec.prefixIDs
        suffixTokenIDs = spec.suffixIDs
        matcher = AddedTokenMatcher(spec.added)

        var tokenToID: [ExactString: Int] = [:]
        tokenToID.reserveCapacity(count)
        for (id, token) in spec.tokens.enumerated() where !token.isEmpty && tokenToID[ExactString(token)] == nil {
            tokenToID[ExactString(token)] = id
        }
        self.tokenToID = tokenToID

        var byteIDs = [Int32](repeating: -1, count: 256)
        var scalarIDs: [UInt32: Int32] = [:]
        var whole: [[UInt8]: Int32] = [:]
        var fallback = [Int16](repeating: -1, count: count)
        var bytes: [UInt8] = []
        var offsets: [Int32] = [0]
        offsets.reserveCapacity(count + 1)
        for (id, token) in spec.tokens.enumerated() {
            let kind = spec.kinds[id]
            let mergeable = kind == .normal || kind == .userDefined || kind == .unused
            switch spec.model {
            case .byteLevelBPE:
                let raw = ByteLevelAlphabet.bytes(ofToken: token)
                if mergeable, let raw, raw.count == 1, byteIDs[Int(raw[0])] < 0 { byteIDs[Int(raw[0])] = Int32(id) }
                if spec.ignoreMerges && mergeable, let raw, whole[raw] == nil { whole[raw] = Int32(id) }
                bytes.append(contentsOf: spec.decoder.byteLevel ? (raw ?? Array(token.utf8)) : Array(token.utf8))
            case .sentencePieceBPE:
                if kind == .byte, let b = Self.fallbackByte(token) {
                    if byteIDs[Int(b)] < 0 { byteIDs[Int(b)] = Int32(id) }
                    fallback[id] = Int16(b)
                }
                if mergeable {
                    var it = token.unicodeScalars.makeIterator()
                    if let first = it.next(), it.next() == nil, scalarIDs[first.value] == nil { scalarIDs[first.value] = Int32(id) }
                }
                if spec.decoder.byteFallback && fallback[id] >= 0 {
                    bytes.append(UInt8(fallback[id]))
                } else if spec.decoder.replaceMetaspace {
                    for scalar in token.unicodeScalars {
                        if scalar == "\u{2581}" { bytes.append(0x20) } else { bytes.append(contentsOf: String(scalar).utf8) }
                    }
                } else {
                    bytes.append(contentsOf: token.utf8)
                }
            }
            offsets.append(Int32(bytes.count))
        }
        byteTokenIDs = byteIDs
        scalarTokenIDs = scalarIDs
        wholeTokenIDs = whole
        fallbackByte = spec.decoder.byteFallback ? fallback : [Int16](repeating: -1, count: count)
        decodedBytes = bytes
        decodedOffsets = offsets

        let bosToken = spec.bosID.map { spec.tokens[$0] } ?? ""
        let eosToken = spec.eosIDs.first.map { spec.tokens[$0] } ?? ""
        chatTemplate = ChatTemplate(template: spec.chatTemplate, bosToken: bosToken, eosToken: eosToken)
        var eos: [Int] = []
        for id in spec.eosIDs where !eos.contains(id) { eos.append(id) }
        for token in chatTemplate.endOfTurnTokens {
            if let id = tokenToID[ExactString(token)], !eos.contains(id) { eos.append(id) }
        }
        eosTokenIDs = eos
    }

    /// The byte a SentencePiece byte token (`<0xXX>`) stands for.
    static func fallbackByte(_ token: String) -> UInt8? {
        let u = Array(token.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }

    // MARK: - Lookups

    /// The vocabulary entry for an id (byte-level tokens in their `Ġ`-spelling), or nil if out of range.
    public func token(for id: Int) -> String? {
        tokens.indices.contains(id) ? tokens[id] : nil
    }

    /// The id of a vocabulary entry spelled exactly so (same Unicode scalars, not merely canonically equivalent).
    public func id(for token: String) -> Int? { tokenToID[ExactString(token)] }

    /// Control tokens (BOS, EOS, `<|im_start|>`, …) and the unknown token: what `decode(skipSpecial: true)` drops.
    public func isSpecial(_ id: Int) -> Bool {
        guard kinds.indices.contains(id) else { return false }
        return kinds[id] == .control || kinds[id] == .unknown
    }

    /// Whether generation should stop at this id.
    public func isEndOfSequence(_ id: Int) -> Bool { eosTokenIDs.contains(id) }

    // MARK: - Encoding

    /// Token ids for `text`. `addSpecial` adds the BOS/EOS the tokenizer is configured to add (the HF post-processor,
    /// GGUF `add_bos_token`); `parseSpecial` recognises special tokens written in the text (`<|im_start|>`), as HF
    /// does by default. A chat prompt from `ChatTemplate.render` already contains its BOS: encode it with
    /// `addSpecial: false`.
    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool = true) -> [Int] {
        encode(text, addSpecial: addSpecial, parseSpecial: parseSpecial, literal: [])
    }

    /// Token ids for a rendered chat prompt (no BOS/EOS added: the template wrote its own). Special tokens are
    /// recognised only in the template's markup: written inside a message's content they are plain text, as
    /// HF `tokenizers` encodes them with `split_special_tokens=True`. Content without special tokens encodes
    /// exactly as `encode(chat.text, addSpecial: false)`.
    public func encode(_ chat: RenderedChat) -> [Int] {
        encode(chat.text, addSpecial: false, parseSpecial: true, literal: chat.contentRanges)
    }

    private func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool, literal: [Range<Int>]) -> [Int] {
        var ids: [Int] = []
        ids.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecial { ids.append(contentsOf: prefixTokenIDs) }
        let scalars = Array(text.unicodeScalars)
        var segments: [TextSegment] = []
        if matcher.isEmpty {
            if !scalars.isEmpty { segments.append(.text(0..<scalars.count)) }
        } else {
            matcher.segment(scalars, parseSpecial: parseSpecial, literal: literal, into: &segments)
        }
        var work = EncodeScratch()
        for segment in segments {
            switch segment {
            case .token(let id): ids.append(id)
            case .text(let range): encodeSegment(scalars[range], atStart: range.lowerBound == 0, into: &ids, work: &work)
            }
        }
        if addSpecial { ids.append(contentsOf: suffixTokenIDs) }
        return ids
    }

    private func encodeSegment(_ segment: ArraySlice<Unicode.Scalar>, atStart: Bool, into ids: inout [Int],
                               work: inout EncodeScratch) {
        var scalars: [Unicode.Scalar]
        if normalizers.isEmpty {
            scalars = Array(segment)
        } else {
            var text = String(scalars: segment)
            for n in normalizers { text = n.apply(text) }
            scalars = Array(text.unicodeScalars)
        }
        if let metaspace {
            let replacement = metaspace.replacement
            for k in scalars.indices where scalars[k] == " " { scalars[k] = replacement }
            let prepend = metaspace.prependScheme == .always || (metaspace.prependScheme == .first && atStart)
            if prepend && scalars.first != replacement { scalars.insert(replacement, at: 0) }
        }
        if byteLevelPrefixSpace && scalars.first != " " { scalars.insert(" ", at: 0) }
        work.text.reset(scalars)
        work.text.split(preTokenizer, into: &work.pieces, scratch: &work.splitScratch)
        for piece in work.pieces { encodePiece(piece, into: &ids, work: &work) }
    }

    private func encodePiece(_ piece: Range<Int>, into ids: inout [Int], work: inout EncodeScratch) {
        work.key.removeAll(keepingCapacity: true)
        for k in piece { appendUTF8Scalar(work.text.scalars[k], to: &work.key) }
        if let cached = cache.get(work.key) {
            for id in cached { ids.append(Int(id)) }
            return
        }
        if ignoreMerges, let id = wholeTokenIDs[work.key] {
            ids.append(Int(id))
            return
        }
        var symbols: [Int32] = []
        swap(&symbols, &work.symbols)  // reuse the buffer without sharing it
        symbols.removeAll(keepingCapacity: true)
        let unknown = unknownTokenID.map { Int32($0) }
        var lastWasUnknown = false
        func appendUnknown() {
            guard let unknown else { return }  // HF BPE without an unknown token drops the character
            if !(fuseUnknown && lastWasUnknown) { symbols.append(unknown) }
            lastWasUnknown = true
        }
        switch model {
        case .byteLevelBPE:
            for b in work.key {
                let id = byteTokenIDs[Int(b)]
                if id >= 0 { symbols.append(id); lastWasUnknown = false } else { appendUnknown() }
            }
        case .sentencePieceBPE:
            for k in piece {
                let scalar = work.text.scalars[k]
                if let id = scalarTokenIDs[scalar.value] {
                    symbols.append(id)
                    lastWasUnknown = false
                    continue
                }
                if byteFallback {
                    var utf8: [UInt8] = []
                    appendUTF8Scalar(scalar, to: &utf8)
                    if utf8.allSatisfy({ byteTokenIDs[Int($0)] >= 0 }) {
                        for b in utf8 { symbols.append(byteTokenIDs[Int(b)]) }
                        lastWasUnknown = false
                        continue
                    }
                }
                appendUnknown()
            }
        }
        merges.merge(&symbols, scratch: &work.bpe)
        for id in symbols { ids.append(Int(id)) }
        cache.put(work.key, symbols)
        work.symbols = symbols
    }

    // MARK: - Decoding

    /// The bytes an id decodes to on its own (before UTF-8 assembly and leading-space rules).
    @inline(__always)
    func decodedBytes(of id: Int) -> ArraySlice<UInt8> {
        decodedBytes[Int(decodedOffsets[id])..<Int(decodedOffsets[id + 1])]
    }

    /// The bytes one token stands for on its own, as OpenAI's `logprobs` report them: a byte-fallback token's
    /// byte, else its text as decoded (a byte-level BPE token may hold part of a UTF-8 character). Empty for an id
    /// out of range.
    public func tokenBytes(_ id: Int) -> [UInt8] {
        guard id >= 0 && id < tokens.count else { return [] }
        if fallbackByte[id] >= 0 { return [UInt8(fallbackByte[id])] }
        return Array(decodedBytes(of: id))
    }

    /// Text for `ids` as HF `tokenizer.decode(ids, skip_special_tokens:)` gives it. Ids out of range are ignored.
    public func decode(_ ids: [Int], skipSpecial: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(ids.count * 4)
        var byteRun: [UInt8] = []
        var first = true
        func flushByteRun() {
            guard !byteRun.isEmpty else { return }
            // HF ByteFallback: a run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte.
            if String(validatingUTF8Bytes: byteRun) != nil {
                out.append(contentsOf: byteRun)
            } else {
                for _ in byteRun { out.append(contentsOf: [0xEF, 0xBF, 0xBD]) }
            }
            byteRun.removeAll(keepingCapacity: true)
        }
        for id in ids where id >= 0 && id < tokens.count && !(skipSpecial && isSpecial(id)) {
            if fallbackByte[id] >= 0 {
                byteRun.append(UInt8(fallbackByte[id]))
                first = false
                continue
            }
            flushByteRun()
            let bytes = decodedBytes(of: id)
            if first && decoder.metaspaceFirstToken {
                out.append(contentsOf: bytes.filter { $0 != 0x20 })
            } else {
                out.append(contentsOf: bytes)
            }
            first = false
        }
        flushByteRun()
        var start = 0
        while start < out.count && start < decoder.stripLeadingSpaces && out[start] == 0x20 { start += 1 }
        return String(decoding: out[start...], as: UTF8.self)
    }
}

extension String {
    /// The string if `bytes` are valid UTF-8, else nil.
    init?(validatingUTF8Bytes bytes: [UInt8]) {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        loop: while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: break loop
            case .error: return nil
            }
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    /// A string from scalars, built through UTF-8 (appending scalars to a `UnicodeScalarView` one by one can
    /// copy the whole string each time).
    init(scalars: some Collection<Unicode.Scalar>) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(scalars.count)
        for s in scalars { appendUTF8Scalar(s, to: &bytes) }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

@inline(__always)
func appendUTF8Scalar(_ scalar: Unicode.Scalar, to bytes: inout [UInt8]) {
    let v = scalar.value
    if v < 0x80 {
        bytes.append(UInt8(v))
    } else if v < 0x800 {
        bytes.append(UInt8(0xC0 | (v >> 6)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    } else if v < 0x10000 {
        bytes.append(UInt8(0xE0 | (v >> 12)))
        bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    } else {
        bytes.append(UInt8(0xF0 | (v >> 18)))
        bytes.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
        bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    }
}

/// Per-call working memory for `encode`.
struct EncodeScratch {
    var text = ScalarText()
    var pieces: [Range<Int>] = []
    var splitScratch: [Range<Int>] = []
    var key: [UInt8] = []
    var symbols: [Int32] = []
    var bpe = BPEScratch()
}

// MARK: - Specification shared by the loaders

/// GGUF token types (llama.cpp `llama_token_type`); HF added tokens map to control (special) or user-defined.
enum TokenKind: UInt8, Sendable {
    case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// A text normalizer step (HF `normalizers`).
enum Normalization: Sendable, Equatable {
    case nfc, nfd, nfkc, nfkd, lowercase
    case prepend(String)
    case replace(String, with: String)

    func apply(_ text: String) -> String {
        switch self {
        case .nfc: text.precomposedStringWithCanonicalMapping
        case .nfd: text.decomposedStringWithCanonicalMapping
        case .nfkc: text.precomposedStringWithCompatibilityMapping
        case .nfkd: text.decomposedStringWithCompatibilityMapping
        case .lowercase: text.lowercased()
        case .prepend(let p): text.isEmpty ? text : p + text
        case .replace(let pattern, let content): Self.replace(pattern, with: content, in: text)
        }
    }
}

extension Normalization {
    /// Literal replacement over Unicode scalars (Foundation's would match by canonical equivalence and refuse to
    /// split a space from a following combining mark).
    static func replace(_ pattern: String, with content: String, in text: String) -> String {
        let p = Array(pattern.unicodeScalars)
        guard !p.isEmpty else { return text }
        let t = Array(text.unicodeScalars)
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(t.count)
        var i = 0
        while i < t.count {
            if t[i] == p[0], i + p.count <= t.count, t[i..<(i + p.count)].elementsEqual(p) {
                out.append(contentsOf: content.unicodeScalars)
                i += p.count
            } else {
                out.append(t[i])
                i += 1
            }
        }
        return String(scalars: out)
    }
}

/// HF `Metaspace` pre-tokenizer: spaces become the replacement, which is also prepended.
struct Metaspace: Sendable, Equatable {
    enum PrependScheme: Sendable, Equatable { case always, first, never }
    var replacement: Unicode.Scalar = "\u{2581}"
    var prependScheme: PrependScheme = .always
}

/// What the HF decoder chain does to the token strings.
struct DecoderStyle: Sendable, Equatable {
    /// `ByteLevel`: token characters map back to bytes (tokens outside the alphabet pass through as UTF-8).
    var byteLevel = false
    /// `Replace("▁", " ")` or `Metaspace`.
    var replaceMetaspace = false
    /// `ByteFallback`: `<0xXX>` tokens are bytes.
    var byteFallback = false
    /// `Strip(" ", start: n)` after `Fuse`: up to n leading spaces of the text are dropped.
    var stripLeadingSpaces = 0
    /// `Metaspace` decoder with a prepend scheme: the first token loses its `▁`s.
    var metaspaceFirstToken = false
}

/// Everything a loader (tokenizer.json or GGUF) determines; `Tokenizer.init(spec:)` validates and indexes it.
struct TokenizerSpec {
    var model: Tokenizer.Model
    var tokens: [String]
    var kinds: [TokenKind]
    var merges = MergeTable()
    var added: [AddedToken] = []
    var normalizers: [Normalization] = []
    var metaspace: Metaspace?
    var byteLevelPrefixSpace = false
    var preTokenizer: [PreTokenizerStep] = []
    var decoder = DecoderStyle()
    var byteFallback = false
    var fuseUnknown = false
    var ignoreMerges = false
    var unknownID: Int?
    var bosID: Int?
    var eosIDs: [Int] = []
    var prefixIDs: [Int] = []
    var suffixIDs: [Int] = []
    var chatTemplate: String?
}
