import Foundation
import Testing
@testable import Tokenizers

/// Every golden string against HF `tokenizers` / sentencepiece ids, decoding, round trips and streaming.
@Suite struct TokenizerGoldenTests {
    /// Checks encode, decode and the streaming detokenizer against one golden file. `expectedIDs` picks the
    /// reference ids for a case (they differ only where a path's reference implementation differs).
    func check(_ tokenizer: Tokenizer, _ goldens: TokenizerGoldens, label: String,
               expectedIDs: (TokenizerGoldens.Case) -> [Int] = { $0.ids },
               checkAddSpecial: Bool = true) {
        #expect(tokenizer.vocabSize == goldens.vocabSize, "\(label) vocab size")
        var roundTrips = 0
        for c in goldens.cases {
            let expected = expectedIDs(c)
            let ids = tokenizer.encode(c.text, addSpecial: false)
            #expect(ids == expected, "\(label) encode \(c.text.debugDescription)")
            if checkAddSpecial && expected == c.ids {
                #expect(tokenizer.encode(c.text, addSpecial: true) == c.idsAddSpecial,
                        "\(label) encode+special \(c.text.debugDescription)")
            }
            guard expected == c.ids else { continue }
            #expect(tokenizer.decode(c.ids, skipSpecial: false) == c.decoded, "\(label) decode \(c.text.debugDescription)")
            #expect(tokenizer.decode(c.ids, skipSpecial: true) == c.decodedSkipSpecial,
                    "\(label) decode skipSpecial \(c.text.debugDescription)")
            if c.decoded == c.text {
                #expect(tokenizer.decode(ids, skipSpecial: false) == c.text)
                roundTrips += 1
            }
            for skip in [false, true] {
                for sequence in [c.ids, c.idsAddSpecial] {
                    let pieces = TokenizerFixtures.streamPieces(tokenizer, sequence, skipSpecial: skip)
                    #expect(pieces.joined() == tokenizer.decode(sequence, skipSpecial: skip),
                            "\(label) stream skip=\(skip) \(c.text.debugDescription)")
                    if !c.text.unicodeScalars.contains("\u{FFFD}") {
                        #expect(!pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") },
                                "\(label) stream emitted U+FFFD for \(c.text.debugDescription)")
                    }
                }
            }
        }
        // Every plain golden string (all but the special-token ones) must survive encode → decode.
        #expect(roundTrips >= goldens.cases.count - 6, "\(label): only \(roundTrips) of \(goldens.cases.count) round trips")
    }

    @Test func tinySentencePieceFromTokenizerJSON() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-spm"))
        #expect(tokenizer.model == .sentencePieceBPE)
        let goldens = try TokenizerFixtures.goldens("tiny-spm")
        #expect(tokenizer.bosTokenID == goldens.bosId && tokenizer.eosTokenID == goldens.eosId)
        #expect(tokenizer.prefixTokenIDs == [goldens.bosId] && tokenizer.suffixTokenIDs.isEmpty)
        check(tokenizer, goldens, label: "tiny-spm json")
    }

    @Test func tinySentencePieceFromGGUFScores() throws {
        // Score-ranked merges (llama.cpp / sentencepiece), not the tokenizer.json merge list: sentencepiece's own
        // ids are the reference; for strings with special tokens in them HF's (= llama.cpp's) handling is.
        let tokenizer = try Tokenizer(metadata: TokenizerFixtures.ggufMetadata("tiny-spm"))
        #expect(tokenizer.model == .sentencePieceBPE)
        let goldens = try TokenizerFixtures.goldens("tiny-spm")
        check(tokenizer, goldens, label: "tiny-spm gguf", expectedIDs: { $0.spmIds ?? $0.ids })
        #expect(tokenizer.chatTemplate.family == .zephyr)
    }

    @Test func tinySentencePieceMetaspace() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-spm-metaspace"))
        let goldens = try TokenizerFixtures.goldens("tiny-spm-metaspace")
        check(tokenizer, goldens, label: "tiny-spm-metaspace")
        // HF's Metaspace(prepend_scheme "first") differs from sentencepiece on leading spaces; make sure the
        // fixture exercises that difference.
        #expect(goldens.cases.contains { $0.spmIds != nil && $0.spmIds != $0.ids })
        #expect(tokenizer.chatTemplate.family == .llama2)
    }

    @Test func tinyLlama3FromTokenizerJSON() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3"))
        #expect(tokenizer.model == .byteLevelBPE)
        let goldens = try TokenizerFixtures.goldens("tiny-llama3")
        check(tokenizer, goldens, label: "tiny-llama3 json")
        #expect(tokenizer.chatTemplate.family == .llama3)
        let eot = try #require(tokenizer.id(for: "<|eot_id|>"))
        #expect(tokenizer.eosTokenIDs == [goldens.eosId, eot])
        #expect(tokenizer.isEndOfSequence(eot) && tokenizer.isSpecial(eot))
    }

    @Test func tinyLlama3FromGGUFMetadata() throws {
        let tokenizer = try Tokenizer(metadata: TokenizerFixtures.ggufMetadata("tiny-llama3"))
        let goldens = try TokenizerFixtures.goldens("tiny-llama3")
        check(tokenizer, goldens, label: "tiny-llama3 gguf")
    }

    @Test func qwen2StylePipeline() throws {
        // NFC normalizer, single-digit Llama 3 regex, no BOS, no config (so no chat template: ChatML by default).
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-qwen2-style"))
        check(tokenizer, try TokenizerFixtures.goldens("tiny-qwen2-style"), label: "tiny-qwen2-style")
        #expect(tokenizer.prefixTokenIDs.isEmpty && tokenizer.chatTemplate.kind == .defaultChatML)
    }

    @Test func smolLMStylePipeline() throws {
        // The HF form of SmolLM2's pre-tokenizer: Sequence[Digits(individual_digits), ByteLevel(use_regex)].
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-smollm-style"))
        check(tokenizer, try TokenizerFixtures.goldens("tiny-smollm-style"), label: "tiny-smollm-style")
    }

    @Test func specialTokensAsPlainText() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3"))
        let eot = try #require(tokenizer.id(for: "<|eot_id|>"))
        #expect(tokenizer.encode("a<|eot_id|>", addSpecial: false) == tokenizer.encode("a", addSpecial: false) + [eot])
        let plain = tokenizer.encode("a<|eot_id|>", addSpecial: false, parseSpecial: false)
        #expect(!plain.contains(eot) && tokenizer.decode(plain, skipSpecial: true) == "a<|eot_id|>")
    }

    @Test
    func smolLM2FromGGUF() throws {
        let tokenizer = try Tokenizer(metadata: TokenizerFixtures.smolLM2Metadata.get())
        let goldens = try TokenizerFixtures.goldens("smollm2-135m-instruct")
        check(tokenizer, goldens, label: "smollm2")
        #expect(tokenizer.bosTokenID == 1 && tokenizer.eosTokenIDs == [2])
        #expect(tokenizer.prefixTokenIDs.isEmpty)
        // The golden file records where transformers' GGUF tokenizer (which ignores pre = "smollm") deviates.
        #expect(goldens.cases.contains { $0.transformersGgufIds != nil })
    }

    @Test func pieceSplitsMatchTheRegexes() {
        func pieces(_ text: String, _ steps: [PreTokenizerStep]) -> [String] {
            var t = ScalarText()
            t.reset(text.unicodeScalars)
            var out: [Range<Int>] = [], scratch: [Range<Int>] = []
            t.split(steps, into: &out, scratch: &scratch)
            return out.map { String(scalars: t.scalars[$0]) }
        }
        // Outputs of HF tokenizers' pre_tokenize_str for the same inputs.
        #expect(pieces("Hello  world's 123 ab!!\n\n  x  ", [.split(.gpt2)])
                == ["Hello", " ", " world", "'s", " 123", " ab", "!!", "\n\n ", " x", "  "])
        #expect(pieces("I'M 12345 (hello)\n\n  \tx?\n", [.split(.llama3(maxDigits: 3))])
                == ["I", "'M", " ", "123", "45", " (", "hello", ")\n\n", "  ", "\tx", "?\n"])
        #expect(pieces("'ſ 'S x'RE", [.split(.llama3(maxDigits: 3))]) == ["'ſ", " '", "S", " x", "'RE"])
        #expect(pieces("a 12b", [.digits(individual: true), .split(.gpt2)]) == ["a", " ", "1", "2", "b"])
        #expect(pieces("x\u{3000}y", [.split(.gpt2)]) == ["x", "\u{3000}", "y"])
    }
}

/// The tokenizers of the tiny model fixtures (Tests/Fixtures/models, made by tools/gen_model_goldens.py) load
/// from their GGUF metadata and round-trip text.
@Suite struct TokenizerModelFixtureTests {
    @Test(arguments: ["tiny-llama/tiny-llama.F32.gguf", "tiny-qwen2/tiny-qwen2.F32.gguf", "tiny-llama3/tiny-llama3.F32.gguf"])
    func tinyModelTokenizers(_ file: String) throws {
        let path = TokenizerFixtures.root.deletingLastPathComponent().appendingPathComponent("models/" + file).path
        let tokenizer = try Tokenizer(metadata: TokenizerTestGGUFReader.read(path: path))
        #expect(tokenizer.model == .byteLevelBPE)
        let text = "The quick brown fox, the end.\n  ü 😀"
        let ids = tokenizer.encode(text, addSpecial: true)
        #expect(tokenizer.decode(ids, skipSpecial: true) == text)
        #expect(ids.allSatisfy { $0 >= 0 && $0 < tokenizer.vocabSize })
        if !file.hasPrefix("tiny-llama3") {
            // Their merges spell " the" ("Ġ t", "Ġt h", "Ġth e"): one token.
            #expect(tokenizer.encode(" the", addSpecial: false).count == 1)
        }
    }
}
