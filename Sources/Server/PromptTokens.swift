import HTTPFront
import Dispatch
import Foundation
import Tokenizers
import Models

/// Turning a request's prompt into tokens without stalling the server:
/// - a prompt whose byte length alone proves it exceeds the token limit is refused before it is tokenized;
/// - tokenization runs on its own dispatch queue, never on a NIO event loop or a Swift-concurrency
///   cooperative thread (a multi-megabyte one-word prompt costs seconds of BPE; /health must not wait).
struct PromptTokenizer: Sendable {
    let tokenizer: Tokenizer
    /// Input bytes one token can stand for, at most (nil: no sound bound for this tokenizer).
    let maxBytesPerToken: Int?

    /// At most cores − 1 prompts are tokenized at once, so that a burst of long prompts leaves a core for the
    /// event loops and the engine.
    private static let queue: OperationQueue = {
        let q = OperationQueue()
        q.name = "dlora.tokenize"
        q.qualityOfService = .userInitiated
        q.maxConcurrentOperationCount = max(1, ProcessInfo.processInfo.activeProcessorCount - 1)
        return q
    }()

    init(_ tokenizer: Tokenizer) {
        self.tokenizer = tokenizer
        maxBytesPerToken = Self.bytesPerTokenBound(tokenizer)
    }

    /// The fewest tokens a text of `bytes` UTF-8 bytes can encode to: every token covers at most
    /// `maxBytesPerToken` input bytes, so at least ceil(bytes / maxBytesPerToken) tokens (0 if unbounded).
    func minimumTokens(bytes: Int) -> Int {
        guard let m = maxBytesPerToken, m > 0 else { return 0 }
        return (bytes + m - 1) / m
    }

    /// `tokenizer.encode` off the cooperative pool.
    func encode(_ text: String, addSpecial: Bool) async -> [Int] {
        let tokenizer = tokenizer
        return await offPool { tokenizer.encode(text, addSpecial: addSpecial) }
    }

    /// A rendered chat, encoded off the cooperative pool (message content as text: no control tokens).
    func encode(_ chat: RenderedChat) async -> [Int] {
        let tokenizer = tokenizer
        return await offPool { tokenizer.encode(chat) }
    }

    private func offPool(_ work: @escaping @Sendable () -> [Int]) async -> [Int] {
        await withCheckedContinuation { c in
            Self.queue.addOperation { c.resume(returning: work()) }
        }
    }

    /// Why the bound is sound, per tokenizer model (public API only; `Tokenizer` keeps its normalizers and
    /// unknown-token rules internal):
    /// - Every token stands for a piece of the normalized text: for byte-level BPE a token string is one
    ///   alphabet character per byte (added tokens: their UTF-8 text); for SentencePiece a token string's
    ///   UTF-8 length is at least the input it covers (`▁` is 3 bytes for a 1-byte space, `<0xXX>` 6 for 1).
    /// - Unknown characters could fuse into one `<unk>` of any length, or be dropped: the bound is only
    ///   used when every byte costs at least one token (byte-level: see below; SentencePiece: byte fallback
    ///   seen working on a private-use character).
    /// - Normalization can shrink text: NFC by up to 3× (Hangul jamo), NFKC/lowercase by up to 4×
    ///   (U+1D400 → "A"). If encoding shows any of them at work, the bound is multiplied by 4.
    static func bytesPerTokenBound(_ t: Tokenizer) -> Int? {
        guard t.vocabSize > 0 else { return nil }
        var longest = 1
        switch t.model {
        case .byteLevelBPE:
            let alphabet = byteLevelAlphabet()
            // Bytes without a token become `<unk>` (SmolLM2 lacks a few control bytes and rare lead bytes).
            // Sound only if each such byte still costs a token: an unknown id exists, no missing byte is a
            // continuation byte (lead bytes are never adjacent in UTF-8), and runs of missing ASCII bytes are
            // not fused into one `<unk>` (probed).
            let missing = (0..<256).filter { b in
                !(b == 0xC0 || b == 0xC1 || b >= 0xF5) && t.id(for: String(Character(alphabet[b]))) == nil
            }
            if !missing.isEmpty {
                guard t.unknownTokenID != nil, !missing.contains(where: { (0x80...0xBF).contains($0) }) else { return nil }
                let ascii = missing.filter { $0 < 0x80 }.map { Character(Unicode.Scalar(UInt8($0))) }
                let run = String(ascii + ascii + ascii)
                if !run.isEmpty && t.encode(run, addSpecial: false, parseSpecial: false).count < run.utf8.count { return nil }
            }
            let inAlphabet = Set(alphabet)
            for id in 0..<t.vocabSize {
                guard let s = t.token(for: id) else { continue }
                let n = s.unicodeScalars.allSatisfy(inAlphabet.contains) ? s.unicodeScalars.count : s.utf8.count
                longest = max(longest, n)
            }
        case .sentencePieceBPE:
            guard (0..<256).allSatisfy({ t.id(for: String(format: "<0x%02X>", $0)) != nil }) else { return nil }
            if let unknown = t.unknownTokenID, t.encode("a\u{10FFFD}b", addSpecial: false, parseSpecial: false).contains(unknown) {
                return nil
            }
            for id in 0..<t.vocabSize {
                longest = max(longest, t.token(for: id)?.utf8.count ?? 0)
            }
        }
        func same(_ a: String, _ b: String) -> Bool {
            t.encode(a, addSpecial: false, parseSpecial: false) == t.encode(b, addSpecial: false, parseSpecial: false)
        }
        let normalizes = same("e\u{301}", "\u{E9}") || same("\u{FB01}", "fi") || same("A", "a") || same("\u{1D400}", "A")
        return normalizes ? longest * 4 : longest
    }

    /// GPT-2's byte → printable character table: printable Latin-1 bytes stand for themselves, the others
    /// are moved to U+0100 and up in byte order.
    static func byteLevelAlphabet() -> [Unicode.Scalar] {
        var next: UInt32 = 256
        return (0..<256).map { b -> Unicode.Scalar in
            if (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b) {
                return Unicode.Scalar(UInt8(b))
            }
            defer { next += 1 }
            return Unicode.Scalar(next)!
        }
    }
}
