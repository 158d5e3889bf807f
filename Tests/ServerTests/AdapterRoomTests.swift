import Foundation
import Hummingbird
import Testing
import TestSupport

@testable import Server

/// A large adapter in a small KV budget leaves a sequence fewer tokens than the context (its weights take blocks of the
/// same budget). A request whose explicit max_tokens needs more is refused as one past the context is, naming the
/// adapter; a request that leaves max_tokens out stops where the room ends. (A probe got 68 of its 100 tokens with
/// finish_reason "length" and status 200.)
@Suite struct AdapterRoomTests {
    @Test func maxTokensPastTheAdaptersRoomIsRefused() async throws {
        let server = try ServerFixtures.server(kvBlocks: 20)
        let adapter = try #require(server.adapters).load("b-all-r8-rslora")
        let room = server.engine.lengthLimit(adapter: adapter)
        #expect(room < server.contextLimit, "the adapter leaves the whole context (\(room) of \(server.contextLimit)): the case tests nothing")
        let prompt = "the quick brown fox jumps over the lazy dog"
        let promptTokens = server.tokenizer.encode(prompt, addSpecial: true).count
        try await ServerFixtures.withServer(server) { client in
            func completion(_ model: String, maxTokens: Int?) async throws -> (Int, String, HTTPFields) {
                let limit = maxTokens.map { ",\"max_tokens\":\($0)" } ?? ""
                return try await client.post("/v1/completions",
                                             "{\"model\":\"\(model)\",\"prompt\":\"\(prompt)\",\"ignore_eos\":true,\"temperature\":0\(limit)}")
            }
            // Past the room, inside the context: refused, naming the adapter and the room.
            let past = try await completion("b-all-r8-rslora", maxTokens: room - promptTokens + 1)
            try expectError(past, status: 400, param: "max_tokens", code: "context_length_exceeded")
            #expect(past.1.contains("b-all-r8-rslora") && past.1.contains("at most \(room) tokens"), "\(past.1)")
            // The base model takes the same request (its room is the context).
            let base = try await completion("tiny-llama", maxTokens: room - promptTokens + 1)
            #expect(base.0 == 200, "\(base.1)")
            // Exactly the room: every token asked for.
            let fits = try await completion("b-all-r8-rslora", maxTokens: room - promptTokens)
            #expect(fits.0 == 200, "\(fits.1)")
            let usage = try #require(try JSONSerialization.jsonObject(with: Data(fits.1.utf8)) as? [String: Any])["usage"] as? [String: Any]
            #expect(usage?["completion_tokens"] as? Int == room - promptTokens, "\(fits.1)")

            // A prompt that fits the context but not beside the adapter: refused for that (it was refused for a
            // min_tokens the client never sent), and the base model takes it.
            var long = prompt
            while server.tokenizer.encode(long, addSpecial: true).count < room { long += " " + prompt }
            let longTokens = server.tokenizer.encode(long, addSpecial: true).count
            #expect(longTokens < server.contextLimit - 1, "the prompt must fit the context: \(longTokens) of \(server.contextLimit)")
            let tooLong = try await client.post("/v1/completions", "{\"model\":\"b-all-r8-rslora\",\"prompt\":\"\(long)\",\"max_tokens\":1}")
            try expectError(tooLong, status: 400, param: "prompt", code: "context_length_exceeded")
            #expect(tooLong.1.contains("b-all-r8-rslora") && tooLong.1.contains("at most \(room) tokens"), "\(tooLong.1)")
            let baseLong = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"\(long)\",\"max_tokens\":1}")
            #expect(baseLong.0 == 200, "\(baseLong.1)")
        }
    }
}
