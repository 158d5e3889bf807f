import Foundation
import Models
import Testing
import Tokenizers
import TestSupport

@testable import Engine

/// JSON mode (`response_format: json_object`): the grammar of `{"type": "object"}` against Python's json module
/// (goldens), and the engine's output under it.
@Suite struct JSONModeTests {
    static let grammar = try! JSONSchemaGrammar.compile(schema: JSONSchemaGrammar.objectSchema)

    static func accepts(_ text: String) -> Grammar.State? { grammar.after(Array(text.utf8)) }

    struct Golden: Decodable {
        struct Case: Decodable {
            let text: String
            let object: Bool
        }
        let cases: [Case]
    }

    /// Every text Python's json module takes as one object is accepted to completion, with every proper prefix
    /// accepted but not complete; every other text is refused at some byte or left incomplete
    /// (Tests/Fixtures/json/acceptor.json: hand-written cases and mutations of the valid ones).
    @Test func acceptorAgreesWithPythonsJSON() throws {
        let golden = try FixtureFiles.decodeGolden(Golden.self, at: FixtureFiles.root.appendingPathComponent("json/acceptor.json"))
        #expect(golden.cases.count > 300)
        for c in golden.cases {
            let bytes = Array(c.text.utf8)
            let state = Self.grammar.after(bytes)
            #expect((state?.isComplete == true) == c.object, "\(c.object ? "refused" : "accepted"): \(c.text.debugDescription)")
            guard c.object else { continue }
            let trimmed = bytes.count - (bytes.reversed().firstIndex { ![0x20, 0x0A, 0x0D, 0x09].contains($0) } ?? 0)
            for cut in 0..<trimmed {
                let prefix = Self.grammar.after(bytes[..<cut])
                #expect(prefix != nil && prefix?.isComplete == false, "prefix \(cut) of \(c.text.debugDescription)")
            }
        }
    }

    /// Nesting and whitespace are bounded, so a model cannot run away in either.
    @Test func depthAndWhitespaceAreBounded() {
        #expect(Self.accepts("{\"a\":" + String(repeating: "[", count: 200)) != nil)
        #expect(Self.accepts("{\"a\":" + String(repeating: "[", count: Grammar.maxStackDepth)) == nil)
        #expect(Self.accepts("{" + String(repeating: " ", count: JSONSchemaGrammar.maxWhitespace)) != nil)
        #expect(Self.accepts("{" + String(repeating: " ", count: JSONSchemaGrammar.maxWhitespace + 1)) == nil)
        // Strings are UTF-8, checked byte by byte (a token may end inside a character, but not make a bad one).
        #expect(Self.grammar.after(Array("{\"a\":\"".utf8) + [0xE6, 0x97]) != nil)
        #expect(Self.grammar.after(Array("{\"a\":\"".utf8) + [0xE6, 0x28]) == nil)
        #expect(Self.grammar.after(Array("{\"a\":\"".utf8) + [0xC0, 0x80]) == nil)
    }

    /// On the tiny model (random weights: left alone it writes no JSON), sampled at temperature 1 in JSON mode: every
    /// output is a prefix of a JSON object, and those that end with end-of-sequence parse as one.
    @Test func engineOutputIsJSON() throws {
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let engine = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 256)
        var ids: [RequestID] = []
        for seed in 0..<12 {
            var params = SamplingParams(temperature: 1, seed: UInt64(seed), maxTokens: 120)
            params.grammar = .jsonObject()
            ids.append(try engine.submit(prompt: tokenizer.encode("data:", addSpecial: true), params: params))
        }
        let events = engine.runToCompletion()
        var complete = 0
        for id in ids {
            let mine = events.filter { $0.requestID == id }
            let tokens = mine.compactMap(\.token)
            let bytes = tokens.filter { !engine.endTokens.contains($0) }.flatMap { tokenizer.tokenBytes($0) }
            let state = Self.grammar.after(bytes)
            #expect(state != nil, "output is not a prefix of JSON: \(String(decoding: bytes, as: UTF8.self))")
            if mine.last?.finish == .stop {
                complete += 1
                #expect(state?.isComplete == true)
                let parsed = try? JSONSerialization.jsonObject(with: Data(bytes))
                #expect(parsed is [String: Any], "\(String(decoding: bytes, as: UTF8.self))")
                #expect(mine.map(\.text).joined() == String(decoding: bytes, as: UTF8.self))
            }
        }
        #expect(complete > 0, "no output completed its object within 120 tokens")
    }
}
