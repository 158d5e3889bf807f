import Foundation
import Hummingbird
import HummingbirdTesting
import ServingAPI
import Testing

@testable import HTTPFront
@testable import Server

/// The replica side of the router protocol: token-level generation, a live request stopped mid-stream on one
/// replica and resumed on another — with its K/V copied in two stages, or recomputed — continues exactly as the
/// undisturbed run (greedy and seeded), and the control API is closed without the admin key.
@Suite struct ReplicaControlTests {
    static let admin = "admin-key"
    static let prompt = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 4)

    static func body(seed: Int?, temperature: Double) -> String {
        let seedPart = seed.map { ", \"seed\": \($0)" } ?? ""
        return "{\"model\": \"tiny-llama\", \"prompt\": \"\(prompt)\", \"max_tokens\": 28, \"temperature\": \(temperature), "
            + "\"ignore_eos\": true\(seedPart)}"
    }

    static func generateJSON(id: String, body: String, generated: [Int] = [], seed: UInt64? = nil, migration: String? = nil) -> String {
        String(decoding: ClusterWire.encode(ReplicaGenerate(id: id, endpoint: "completions", body: body, generated: generated, seed: seed,
                                                            migration: migration)), as: UTF8.self)
    }

    /// (accepted, token events, finish) of an NDJSON stream.
    static func parse(_ text: String) throws -> (ReplicaEvent.Accepted?, [(Int, String)], String?) {
        var accepted: ReplicaEvent.Accepted?
        var tokens: [(Int, String)] = []
        var finish: String?
        for line in text.split(separator: "\n") {
            let e = try ClusterWire.decode(ReplicaEvent.self, from: Data(line.utf8))
            if let a = e.accepted { accepted = a }
            if let t = e.token { tokens.append((t, e.text ?? "")) }
            if let f = e.finish { finish = f }
            #expect(e.error == nil)
        }
        return (accepted, tokens, finish)
    }

    static func server(slow: Bool) throws -> OpenAIServer {
        try ServerFixtures.server(slow: slow, configure: { $0.adminKey = admin })
    }

    @Test(arguments: [(0.0, true), (0.8, true), (0.8, false)])
    func stoppedOnOneReplicaResumesOnAnother(temperature: Double, copyKV: Bool) async throws {
        let body = Self.body(seed: temperature == 0 ? nil : 42, temperature: temperature)
        // The undisturbed run, and the same request through /v1/completions: the same text.
        let reference = try await ServerFixtures.withServer(try Self.server(slow: false)) { client in
            let r = try await client.post("/internal/generate", Self.generateJSON(id: "ref", body: body), key: Self.admin)
            #expect(r.0 == 200)
            let plain = try await client.post("/v1/completions", body)
            let text = try #require(((try jsonObject(plain.1))["choices"] as? [[String: Any]])?.first?["text"] as? String)
            return (try Self.parse(r.1), text)
        }
        let (refAccepted, refTokens, refFinish) = reference.0
        #expect(refFinish == "length" && refTokens.count == 28)
        #expect(refTokens.map(\.1).joined() == reference.1)
        let seed = try #require(refAccepted?.seed)

        let source = try Self.server(slow: true)
        let destination = try Self.server(slow: false)
        try await ServerFixtures.withServer(source) { src in
            try await ServerFixtures.withServer(destination) { dst in
                func raw(_ c: any TestClientProtocol, _ uri: String, _ method: HTTPRequest.Method, _ body: Data? = nil) async throws -> (Int, Data) {
                    try await c.execute(uri: uri, method: method, headers: [.authorization: "Bearer \(Self.admin)"],
                                        body: body.map { ByteBuffer(bytes: $0) }) { r in (r.status.code, Data(buffer: r.body)) }
                }
                async let streamed = src.post("/internal/generate", Self.generateJSON(id: "r1", body: body, seed: seed), key: Self.admin)
                // Let it decode a few tokens (bounded wait), then copy its full blocks while it keeps running (pre-copy).
                for _ in 0..<500 {
                    let status = try await src.send("/internal/status", .get, key: Self.admin)
                    let s = try ClusterWire.decode(ReplicaStatus.self, from: Data(status.1.utf8))
                    if let r = s.requests.first(where: { $0.id == "r1" }), r.generated >= 4 { break }
                    try await Task.sleep(for: .milliseconds(10))
                }
                let reserve = try await dst.post("/internal/migrations",
                                                 String(decoding: ClusterWire.encode(MigrationReserve(model: "tiny-llama", tokens: 64)), as: UTF8.self),
                                                 key: Self.admin)
                #expect(reserve.0 == 200)
                let mid = try ClusterWire.decode(MigrationReserved.self, from: Data(reserve.1.utf8)).migration
                var next = 0
                if copyKV {
                    let stage = try await raw(src, "/internal/requests/r1/kv?from=0", .get)
                    #expect(stage.0 == 200)
                    let (head, _) = try KVFrame.decode(stage.1, maxFloats: 1 << 26)
                    #expect(head.blockCount >= 1, "the prompt alone fills full blocks")
                    next = head.blockCount
                    #expect(try await raw(dst, "/internal/migrations/\(mid)/blocks", .put, stage.1).0 == 204)
                }
                // The last stage: stop it and take the rest.
                let export = try await raw(src, copyKV ? "/internal/requests/r1/export?kv_from=\(next)" : "/internal/requests/r1/export", .post)
                #expect(export.0 == 200)
                let (head, _) = try KVFrame.decode(export.1, maxFloats: 1 << 26)
                let tokens = try #require(head.tokens), promptCount = try #require(head.promptCount)
                let generated = Array(tokens[promptCount...])
                let before = try Self.parse(try await streamed.1)
                #expect(before.2 == nil, "a stopped request's stream ends without a finish")
                #expect(before.1.map(\.0) == generated, "every token generated before the stop was streamed")
                #expect(!generated.isEmpty && generated.count < 28)
                #expect(try await raw(src, "/internal/requests/r1/kv?from=0", .get).0 == 404, "the request left the source")
                if copyKV {
                    #expect(head.firstBlock == next && head.blockCount >= 1)
                    #expect(try await raw(dst, "/internal/migrations/\(mid)/blocks", .put, export.1).0 == 204)
                }
                let resumed = try await dst.post("/internal/generate",
                                                 Self.generateJSON(id: "r1", body: body, generated: generated, seed: seed,
                                                                   migration: copyKV ? mid : nil), key: Self.admin)
                #expect(resumed.0 == 200)
                let after = try Self.parse(resumed.1)
                #expect((after.0?.adoptedPositions ?? 0 > 0) == copyKV)
                #expect(generated + after.1.map(\.0) == refTokens.map(\.0))
                #expect(before.1.map(\.1).joined() + after.1.map(\.1).joined() == reference.1)
                #expect(after.2 == "length")
                #expect(try await ServerFixtures.waitIdle(source))
                #expect(try await ServerFixtures.waitIdle(destination))
            }
        }
    }

    @Test func controlNeedsTheAdminKeyAndChecksItsInput() async throws {
        try await ServerFixtures.withServer(try ServerFixtures.server()) { client in
            // No admin key configured: the control API does not exist.
            let r = try await client.send("/internal/status", .get, key: "x")
            try expectError(r, status: 404)
        }
        try await ServerFixtures.withServer(try Self.server(slow: false)) { client in
            try expectError(try await client.send("/internal/status", .get), status: 401)
            try expectError(try await client.send("/internal/status", .get, key: "wrong"), status: 401)
            let status = try await client.send("/internal/status", .get, key: Self.admin)
            #expect(status.0 == 200)
            let s = try ClusterWire.decode(ReplicaStatus.self, from: Data(status.1.utf8))
            #expect(s.model == "tiny-llama" && s.kvBlocksFree == s.kvBlocksTotal && s.blockSize == 16 && !s.adapters.isEmpty)
            // Malformed messages, an unknown endpoint, a bad request inside, unknown requests and migrations.
            try expectError(try await client.post("/internal/generate", "{}", key: Self.admin), status: 400)
            try expectError(try await client.post("/internal/generate", Self.generateJSON(id: "a", body: "{\"model\": \"tiny-llama\"}"),
                                                   key: Self.admin), status: 400)
            try expectError(try await client.post("/internal/generate", Self.generateJSON(id: "a b", body: Self.body(seed: 1, temperature: 0)),
                                                   key: Self.admin), status: 400)
            try expectError(try await client.post("/internal/generate",
                                                   Self.generateJSON(id: "a", body: Self.body(seed: 1, temperature: 0), generated: [1_000_000]),
                                                   key: Self.admin), status: 400)
            // n > 1 runs one choice per generation: the choice must be named, and within n.
            let several = String(Self.body(seed: 1, temperature: 0.5).dropLast()) + ", \"n\": 2}"
            try expectError(try await client.post("/internal/generate", Self.generateJSON(id: "c", body: several), key: Self.admin),
                            status: 400, param: "choice")
            let outside = String(decoding: ClusterWire.encode(ReplicaGenerate(id: "c", endpoint: "completions", body: several, choice: 2)), as: UTF8.self)
            try expectError(try await client.post("/internal/generate", outside, key: Self.admin), status: 400, param: "choice")
            // A batch of prompts likewise runs one prompt per generation.
            let batch = "{\"model\": \"tiny-llama\", \"prompt\": [\"a\", \"b\"], \"max_tokens\": 2}"
            try expectError(try await client.post("/internal/generate", Self.generateJSON(id: "p", body: batch), key: Self.admin),
                            status: 400, param: "prompt")
            let beyond = String(decoding: ClusterWire.encode(ReplicaGenerate(id: "p", endpoint: "completions", body: batch, prompt: 2)), as: UTF8.self)
            try expectError(try await client.post("/internal/generate", beyond, key: Self.admin), status: 400, param: "prompt")
            try expectError(try await client.post("/internal/requests/nope/export", "", key: Self.admin), status: 404)
            try expectError(try await client.send("/internal/requests/nope/kv?from=0", .get, key: Self.admin), status: 404)
            try expectError(try await client.send("/internal/migrations/mig-9/blocks", .put, body: ByteBuffer(bytes: [1, 2, 3]),
                                                  key: Self.admin), status: 400)
            let reserve = try await client.post("/internal/migrations",
                                                String(decoding: ClusterWire.encode(MigrationReserve(model: "no-such", tokens: 10)), as: UTF8.self),
                                                key: Self.admin)
            try expectError(reserve, status: 404)
            let huge = try await client.post("/internal/migrations",
                                             String(decoding: ClusterWire.encode(MigrationReserve(model: "tiny-llama", tokens: 100_000)), as: UTF8.self),
                                             key: Self.admin)
            try expectError(huge, status: 400)
        }
    }

    /// A K/V migration's reservation counts the blocks of resident adapters no request needs as free (they are evicted
    /// when the request's K/V is adopted), as the router's planner counts them: an idle replica whose budget idle
    /// adapters filled refused every K/V migration (409 no_kv_room, a probe).
    @Test func aMigrationsReservationCountsIdleAdaptersAsFree() async throws {
        let server = try ServerFixtures.server(kvBlocks: 24, configure: { $0.adminKey = Self.admin })
        try await ServerFixtures.withServer(server) { client in
            for model in ["b-all-r8-rslora"] {
                let r = try await client.post("/v1/completions", "{\"model\": \"\(model)\", \"prompt\": \"the fox\", \"max_tokens\": 2}")
                #expect(r.0 == 200, "\(r.1)")
            }
            #expect(try await ServerFixtures.waitIdle(server))
            let s = server.engine.snapshot
            #expect(s.idleAdapterBlocks >= 16, "idle adapter blocks: \(s.idleAdapterBlocks) (the case needs them)")
            func reserve(blocks: Int) async throws -> (Int, String, HTTPFields) {
                try await client.post("/internal/migrations",
                                      String(decoding: ClusterWire.encode(MigrationReserve(model: "tiny-llama", tokens: blocks * 16)), as: UTF8.self),
                                      key: Self.admin)
            }
            // More than the free blocks, within free + idle and the context (16 blocks).
            let blocks = s.kvBlocksFree + 4
            #expect(blocks <= min(15, s.kvBlocksFree + s.idleAdapterBlocks), "free \(s.kvBlocksFree), idle \(s.idleAdapterBlocks)")
            let fits = try await reserve(blocks: blocks)
            #expect(fits.0 == 200, "\(fits.1)")
        }
    }

    /// A request of more sequences (prompts × n) than the replica queues is refused by `/internal/generate` as by `/v1`
    /// (400 naming n), for every choice the router sends of it: the router splits n into one generation per choice,
    /// and without the check a cluster ran the choices spread over its replicas although each replica refuses it, or
    /// failed part-way with a retryable 503. The status carries this process's identity, the same poll to poll.
    @Test func generationsOfARequestTheQueueCouldNeverHoldAreRefused() async throws {
        let server = try ServerFixtures.server(configure: { $0.adminKey = Self.admin; $0.maxQueue = 3 })
        try await ServerFixtures.withServer(server) { client in
            let four = "{\"model\": \"tiny-llama\", \"prompt\": \"hi\", \"max_tokens\": 2, \"n\": 4}"
            try expectError(try await client.post("/v1/completions", four), status: 400, param: "n")
            for choice in [0, 3] {
                let g = String(decoding: ClusterWire.encode(ReplicaGenerate(id: "n\(choice)", endpoint: "completions", body: four, choice: choice)),
                               as: UTF8.self)
                try expectError(try await client.post("/internal/generate", g, key: Self.admin), status: 400, param: "n")
            }
            #expect(server.inFlight == 0)
            // Three sequences fit: a choice of n = 3 runs.
            let three = "{\"model\": \"tiny-llama\", \"prompt\": \"hi\", \"max_tokens\": 2, \"n\": 3}"
            let g = String(decoding: ClusterWire.encode(ReplicaGenerate(id: "n3", endpoint: "completions", body: three, choice: 1)), as: UTF8.self)
            let ok = try await client.post("/internal/generate", g, key: Self.admin)
            #expect(ok.0 == 200, "\(ok.1)")
            let first = try ClusterWire.decode(ReplicaStatus.self, from: Data(try await client.send("/internal/status", .get, key: Self.admin).1.utf8))
            let second = try ClusterWire.decode(ReplicaStatus.self, from: Data(try await client.send("/internal/status", .get, key: Self.admin).1.utf8))
            #expect(first.instance != nil && first.instance == second.instance)
        }
    }
}
