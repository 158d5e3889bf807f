import Foundation
import Testing
@testable import Tokenizers

/// Malformed tokenizer.json / GGUF metadata must give one-line `TokenizerError`s, never a crash.
@Suite struct TokenizerErrorTests {
    /// The tiny Llama 3 tokenizer.json as a mutable JSON tree.
    func llama3JSON() throws -> [String: Any] {
        let data = try Data(contentsOf: TokenizerFixtures.directory("tiny-llama3").appendingPathComponent("tokenizer.json"))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func build(_ json: [String: Any], config: [String: Any]? = nil) throws -> Tokenizer {
        let data = try JSONSerialization.data(withJSONObject: json)
        let configData = try config.map { try JSONSerialization.data(withJSONObject: $0) }
        return try Tokenizer(tokenizerJSON: data, config: configData)
    }

    func expectError(_ label: String, _ body: () throws -> Tokenizer) {
        do {
            _ = try body()
            Issue.record("\(label): no error")
        } catch let error as TokenizerError {
            #expect(!error.description.contains("\n"), "\(label): \(error)")
        } catch {
            Issue.record("\(label): unexpected error type \(error)")
        }
    }

    func editModel(_ json: [String: Any], _ edit: (inout [String: Any]) -> Void) -> [String: Any] {
        var json = json
        var model = json["model"] as! [String: Any]
        edit(&model)
        json["model"] = model
        return json
    }

    @Test func malformedTokenizerJSON() throws {
        let good = try llama3JSON()
        _ = try build(good)
        expectError("not JSON") { try Tokenizer(tokenizerJSON: Data("{\"model\": ".utf8)) }
        expectError("not an object") { try Tokenizer(tokenizerJSON: Data("[1, 2]".utf8)) }
        expectError("no model") { var j = good; j["model"] = nil; return try build(j) }
        expectError("unigram") { try build(editModel(good) { $0["type"] = "Unigram" }) }
        expectError("vocab not object") { try build(editModel(good) { $0["vocab"] = [1, 2] }) }
        expectError("negative id") { try build(editModel(good) { m in
            var v = m["vocab"] as! [String: Any]; v["zzz"] = -5; m["vocab"] = v }) }
        expectError("huge id") { try build(editModel(good) { m in
            var v = m["vocab"] as! [String: Any]; v["zzz"] = 2_000_000_000; m["vocab"] = v }) }
        expectError("fractional id") { try build(editModel(good) { m in
            var v = m["vocab"] as! [String: Any]; v["zzz"] = 3.5; m["vocab"] = v }) }
        expectError("duplicate id") { try build(editModel(good) { m in
            var v = m["vocab"] as! [String: Any]; v["zzz"] = 0; m["vocab"] = v }) }
        expectError("merge of unknown token") { try build(editModel(good) { m in
            m["merges"] = (m["merges"] as! [Any]) + [["nope", "Ġ"]] }) }
        expectError("merge result not in vocab") { try build(editModel(good) { m in
            m["merges"] = (m["merges"] as! [Any]) + [["Ā", "Ā"]] }) }
        expectError("merge not a pair") { try build(editModel(good) { m in m["merges"] = ["a b c"] }) }
        expectError("merge wrong type") { try build(editModel(good) { m in m["merges"] = [42] }) }
        expectError("BPE suffix") { try build(editModel(good) { $0["end_of_word_suffix"] = "</w>" }) }
        expectError("unknown pre-tokenizer") { var j = good; j["pre_tokenizer"] = ["type": "BertPreTokenizer"]; return try build(j) }
        expectError("unknown split regex") { var j = good
            j["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "\\w+"], "behavior": "Isolated", "invert": false]
            return try build(j) }
        expectError("unknown normalizer") { var j = good; j["normalizer"] = ["type": "BertNormalizer"]; return try build(j) }
        expectError("no decoder") { var j = good; j["decoder"] = NSNull(); return try build(j) }
        expectError("unknown decoder") { var j = good; j["decoder"] = ["type": "WordPiece"]; return try build(j) }
        expectError("added token id out of range") { var j = good
            j["added_tokens"] = [["id": 99_999_999, "content": "<x>", "special": true]]; return try build(j) }
        expectError("added token without content") { var j = good
            j["added_tokens"] = [["id": 3, "special": true]]; return try build(j) }
        expectError("post-processor id out of range") { var j = good
            j["post_processor"] = ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<b>", "type_id": 0]],
                                                                            ["Sequence": ["id": "A", "type_id": 0]]],
                                   "special_tokens": ["<b>": ["id": "<b>", "ids": [123_456], "tokens": ["<b>"]]]]
            return try build(j) }
        expectError("bos not in vocab") { try build(good, config: ["bos_token": "<nope>"]) }
        expectError("config bool wrong type") { try build(good, config: ["add_bos_token": "yes"]) }
        expectError("missing directory") { try Tokenizer(directory: URL(fileURLWithPath: "/nonexistent/tokenizer")) }
    }

    func metadata(_ name: String) throws -> TokenizerTestMetadata { try TokenizerFixtures.ggufMetadata(name) }

    @Test func malformedGGUFMetadata() throws {
        let llama3 = try metadata("tiny-llama3")
        let spm = try metadata("tiny-spm")
        func with(_ m: TokenizerTestMetadata, _ key: String, _ value: TokenizerTestMetadata.Value?) -> TokenizerTestMetadata {
            var m = m
            m.values[key] = value
            return m
        }
        _ = try Tokenizer(metadata: llama3)
        _ = try Tokenizer(metadata: spm)
        expectError("no model") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.model", nil)) }
        expectError("bert model") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.model", .string("bert"))) }
        expectError("no tokens") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.tokens", nil)) }
        expectError("empty tokens") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.tokens", .strings([]))) }
        expectError("type count") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.token_type", .ints([1, 1]))) }
        let types = try #require(llama3.ints("tokenizer.ggml.token_type"))
        expectError("type value") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.token_type", .ints(types.map { _ in 9 }))) }
        expectError("negative type") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.token_type", .ints(types.map { _ in -1 }))) }
        expectError("bos range") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.bos_token_id", .int(1 << 20))) }
        expectError("eos negative") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.eos_token_id", .int(-1))) }
        expectError("merge unknown") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.merges", .strings(["xyz Ġ"]))) }
        expectError("merge result") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.merges", .strings(["Ā Ā"]))) }
        expectError("merge pair") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.merges", .strings(["a"]))) }
        expectError("unknown pre") { try Tokenizer(metadata: with(llama3, "tokenizer.ggml.pre", .string("tekken-v9"))) }
        expectError("scores count") { try Tokenizer(metadata: with(spm, "tokenizer.ggml.scores", .floats([0, 1]))) }
    }

    /// The merge-result cases above rely on "ĀĀ" (two NUL bytes) not being a token while "Ā" is.
    @Test func mergeResultCaseIsReallyMissing() throws {
        let tokenizer = try Tokenizer(directory: TokenizerFixtures.directory("tiny-llama3"))
        #expect(tokenizer.id(for: "Ā") != nil && tokenizer.id(for: "ĀĀ") == nil)
    }
}

/// Vocabulary entries are compared by their exact scalars: "é" (U+00E9) and "e\u{301}" are different tokens,
/// although Swift's `String ==` (and Foundation's JSON dictionaries) treat them as equal.
@Suite struct TokenizerExactVocabularyTests {
    static let json = #"""
    {"model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": false, "fuse_unk": true,
               "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3, "e": 4, "\u0301": 5, "e\u0301": 6, "\u00e9": 7,
                         "\u2581\u00e9": 8},
               "merges": [["e", "\u0301"], ["\u2581", "\u00e9"]]},
     "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}],
     "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
     "pre_tokenizer": null,
     "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                 {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}
    """#

    @Test func canonicallyEquivalentTokensStayDistinct() throws {
        let tokenizer = try Tokenizer(tokenizerJSON: Data(Self.json.utf8))
        #expect(tokenizer.vocabSize == 9)
        #expect(tokenizer.id(for: "\u{E9}") == 7 && tokenizer.id(for: "e\u{301}") == 6)
        #expect(tokenizer.encode("\u{E9}", addSpecial: false) == [8])
        #expect(tokenizer.encode("e\u{301}", addSpecial: false) == [3, 6])
        #expect(tokenizer.decode([3, 6], skipSpecial: false).unicodeScalars.elementsEqual("e\u{301}".unicodeScalars))
        // A character outside the vocabulary (no byte fallback) becomes one fused <unk>.
        #expect(tokenizer.encode("xy", addSpecial: false) == [3, 0])
    }
}
