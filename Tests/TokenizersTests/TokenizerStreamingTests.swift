import Foundation
import Testing
@testable import Tokenizers

@Suite struct TokenizerStreamingTests {
    /// Ids spelling `text` byte by byte (byte-level: each byte's character token; SentencePiece: `<0xXX>`).
    func byteIDs(_ tokenizer: Tokenizer, _ text: String) throws -> [Int] {
        try text.utf8.map { b in
            let name = tokenizer.model == .byteLevelBPE
                ? String(ByteLevelAlphabet.scalarForByte[Int(b)])
                : "<0x" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true) + ">"
            return try #require(tokenizer.id(for: name), "no token for byte \(b)")
        }
    }

    @Test func codePointsSplitAcrossTokensAreHeldBack() throws {
        for name in ["tiny-llama3", "tiny-spm"] {
            let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory(name))
            let ids = try byteIDs(tokenizer, "a😀é")
            var stream = StreamingDetokenizer(tokenizer: tokenizer, startsSequence: false)
            let pieces = ids.map { stream.append($0) }
            #expect(pieces == ["a", "", "", "", "😀", "", "é"], "\(name)")
            #expect(stream.finish() == "")
        }
    }

    @Test func invalidBytesBecomeReplacementCharacters() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3"))
        func id(_ b: UInt8) throws -> Int { try #require(tokenizer.id(for: String(ByteLevelAlphabet.scalarForByte[Int(b)]))) }
        var stream = StreamingDetokenizer(tokenizer: tokenizer)
        // A lead byte followed by ASCII: the lead is invalid at once, the ASCII is not held.
        #expect(stream.append(try id(0xC3)) == "")
        #expect(stream.append(try id(0x41)) == "\u{FFFD}A")
        // A stray continuation byte is invalid on its own.
        #expect(stream.append(try id(0x80)) == "\u{FFFD}")
        // An incomplete sequence left at the end is flushed as one U+FFFD, like a whole-text decode.
        #expect(stream.append(try id(0xF0)) == "")
        #expect(stream.append(try id(0x9F)) == "")
        #expect(stream.finish() == "\u{FFFD}")
        #expect(tokenizer.decode([try id(0xF0), try id(0x9F)], skipSpecial: false) == "\u{FFFD}")
        // E0 80 can never become valid (overlong): not held back.
        #expect(stream.append(try id(0xE0)) == "")
        #expect(stream.append(try id(0x80)) == "\u{FFFD}\u{FFFD}")
        #expect(stream.finish() == "")
    }

    @Test func completeLengthFollowsUTF8() {
        #expect(StreamingDetokenizer.completeLength([]) == 0)
        #expect(StreamingDetokenizer.completeLength([0x61, 0xE4, 0xBD]) == 1)
        #expect(StreamingDetokenizer.completeLength([0xE4, 0xBD, 0xA0]) == 3)
        #expect(StreamingDetokenizer.completeLength([0xF4, 0x90]) == 2)  // above U+10FFFF: invalid, not held
        #expect(StreamingDetokenizer.completeLength([0xED, 0xA0]) == 2)  // surrogate: invalid
        #expect(StreamingDetokenizer.completeLength([0xF0, 0x9F, 0x98]) == 0)
        #expect(StreamingDetokenizer.completeLength([0xFF]) == 1)
    }

    @Test func sentencePieceLeadingSpaceOnlyAtSequenceStart() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-spm"))
        let ids = tokenizer.encode("Hello world", addSpecial: true)
        #expect(ids.first == tokenizer.bosTokenID)
        #expect(TokenizerFixtures.streamPieces(tokenizer, ids, skipSpecial: true).joined() == "Hello world")
        #expect(TokenizerFixtures.streamPieces(tokenizer, ids, skipSpecial: false).joined() == "<s> Hello world")
        // A continuation keeps its leading space (the ▁ of "▁Hello" is a real space after a prompt).
        var continuation = StreamingDetokenizer(tokenizer: tokenizer, startsSequence: false)
        #expect(ids.dropFirst().map { continuation.append($0) }.joined() + continuation.finish() == " Hello world")
        // finish() resets for the next sequence.
        var stream = StreamingDetokenizer(tokenizer: tokenizer)
        for _ in 0..<2 {
            #expect(ids.map { stream.append($0) }.joined() + stream.finish() == "Hello world")
        }
    }

    @Test func outOfRangeIDsAreIgnored() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3"))
        var stream = StreamingDetokenizer(tokenizer: tokenizer)
        #expect(stream.append(-1) == "" && stream.append(tokenizer.vocabSize) == "")
        #expect(tokenizer.decode([-1, tokenizer.vocabSize, 1_000_000], skipSpecial: false) == "")
        #expect(tokenizer.token(for: tokenizer.vocabSize) == nil)
    }
}
