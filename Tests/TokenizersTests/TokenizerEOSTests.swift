import Foundation
import Testing
@testable import Tokenizers

/// Where generation stops: the tokenizer config's EOS, generation_config.json's ids, and — where a model directory has
/// no generation_config.json — config.json's `eos_token_id`, as transformers generates (`GenerationConfig
/// .from_model_config`).
@Suite struct TokenizerEOSTests {
    @Test func theModelConfigsEOSStopsWhereThereIsNoGenerationConfig() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("dlora-eos-\(UInt64.random(in: 0 ... .max))")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: dir) }
        try fm.copyItem(at: TokenizerFixtures.directory("tiny-llama3").appendingPathComponent("tokenizer.json"),
                        to: dir.appendingPathComponent("tokenizer.json"))
        func write(_ name: String, _ json: String) throws { try Data(json.utf8).write(to: dir.appendingPathComponent(name)) }
        func eos() throws -> Set<Int> { Set(try Tokenizer(directory: dir).eosTokenIDs) }

        #expect(try eos().isEmpty)
        // A list in config.json alone: every integer entry stops (not-integers ignored, ids past the vocabulary dropped).
        try write("config.json", #"{"model_type": "llama", "eos_token_id": [1, 258, "x", 999999]}"#)
        #expect(try eos() == [1, 258])
        try write("config.json", #"{"model_type": "llama", "eos_token_id": 7}"#)
        #expect(try eos() == [7])
        try write("config.json", #"{"model_type": "llama", "eos_token_id": null}"#)
        #expect(try eos().isEmpty)
        // generation_config.json, when there is one, is what generation reads instead.
        try write("config.json", #"{"model_type": "llama", "eos_token_id": [1, 258]}"#)
        try write("generation_config.json", #"{"eos_token_id": [3]}"#)
        #expect(try eos() == [3])
        // A config.json that is not JSON is the model loader's to refuse: the tokenizer reads no ids from it.
        try fm.removeItem(at: dir.appendingPathComponent("generation_config.json"))
        try write("config.json", "{")
        #expect(try eos().isEmpty)
    }
}
