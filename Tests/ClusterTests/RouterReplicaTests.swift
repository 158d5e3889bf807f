import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import ServingAPI
import Testing

@testable import Cluster

/// The router in process, in front of scripted replicas (Hummingbird apps on loopback that speak the replica's side of
/// ClusterWire: status, adapter loads and unloads, the tokenizer endpoints, generations), so that a restart, a refused
/// load or a full queue is set up exactly and in milliseconds. Polls are driven by the test (`pollOnce`), not a timer.
@Suite struct RouterReplicaTests {
    static let admin = "adm"
    static let base = "base-model"

    @Test func aReplicaRestartedBetweenTwoPollsGetsTheAdapterChangesReplayed() async throws {
        let replicas = [FakeReplica(adapters: ["s1", "s2"]), FakeReplica(adapters: ["s1", "s2"])]
        try await RouterHarness.with(replicas) { h in
            let r1 = try await h.post("/v1/unload_lora_adapter", #"{"lora_name":"s1"}"#, key: Self.admin)
            #expect(r1.0 == 200)
            let r2 = try await h.post("/v1/load_lora_adapter", #"{"lora_name":"dynX","lora_path":"s2"}"#, key: Self.admin)
            #expect(r2.0 == 200)
            #expect(replicas.allSatisfy { $0.adapters == ["s2", "dynX"] })
            // Replica 1 restarts between two polls (a supervisor brings it back within a second): it answers healthy
            // both times, with its startup adapter set and a new identity.
            replicas[1].restart()
            #expect(replicas[1].adapters == ["s1", "s2"])
            await h.router.replicas.pollOnce()
            #expect(replicas[1].adapters == ["s2", "dynX"], "the restarted replica serves \(replicas[1].adapters)")
            #expect(replicas[0].adapters == ["s2", "dynX"])
            // The same identity again replays nothing.
            let calls = replicas[1].adminCalls
            await h.router.replicas.pollOnce()
            #expect(replicas[1].adminCalls == calls)
        }
    }

    /// A replay the replica fails is tried again at a later poll, after `replayRetry` (before, only at its next rejoin:
    /// a replica that failed it once served without the adapter until it restarted again).
    @Test func aReplayTheReplicaFailsIsRetriedAtLaterPolls() async throws {
        let replicas = [FakeReplica(adapters: ["s1"]), FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas, configure: { $0.replayRetry = .milliseconds(400) }) { h in
            let load = try await h.post("/v1/load_lora_adapter", #"{"lora_name":"dynX","lora_path":"s1"}"#, key: Self.admin)
            #expect(load.0 == 200)
            replicas[1].restart()
            replicas[1].state.withLock { $0.failLoads = 1 }
            await h.router.replicas.pollOnce()
            #expect(replicas[1].adapters == ["s1"] && replicas[1].state.withLock { $0.failLoads } == 0, "the rejoin's replay was not tried")
            // Within the wait, a poll does not try again.
            let calls = replicas[1].adminCalls
            await h.router.replicas.pollOnce()
            try await Task.sleep(for: .milliseconds(100))
            #expect(replicas[1].adminCalls == calls)
            // After it, one does, without a rejoin.
            try await Task.sleep(for: .milliseconds(400))
            await h.router.replicas.pollOnce()
            for _ in 0..<100 where !replicas[1].adapters.contains("dynX") { try await Task.sleep(for: .milliseconds(50)) }
            #expect(replicas[1].adapters == ["s1", "dynX"], "replica 1 serves \(replicas[1].adapters)")
            // Once it agrees, polls replay nothing.
            let settled = replicas[1].adminCalls
            try await Task.sleep(for: .milliseconds(500))
            await h.router.replicas.pollOnce()
            await h.router.replicas.pollOnce()
            #expect(replicas[1].adminCalls == settled)
            #expect(replicas[0].adapters == ["s1", "dynX"])
        }
    }

    @Test func aLoadOneReplicaRefusesChangesNoReplicaAndAnUnloadAnyReplicaMadeSucceeds() async throws {
        // Replica 1's adapter root lacks the path: it refuses the load after replica 0 took it.
        let replicas = [FakeReplica(adapters: ["s1", "s2"]), FakeReplica(adapters: ["s1"], missingPaths: ["s2"])]
        try await RouterHarness.with(replicas) { h in
            let load = #"{"lora_name":"dyn2","lora_path":"s2"}"#
            let refused = try await h.post("/v1/load_lora_adapter", load, key: Self.admin)
            #expect(refused.0 == 400, "\(refused.1)")
            let refusedCode = try Self.errorCode(refused.1)
            #expect(refusedCode == "adapter_not_found")
            #expect(replicas.allSatisfy { !$0.adapters.contains("dyn2") }, "dyn2 stayed on \(replicas.map(\.adapters))")
            let models = try await h.get("/v1/models")
            #expect(!models.1.contains("dyn2"), "\(models.1)")
            // Once replica 1 has the path, the retry succeeds (not adapter_exists) and both serve it.
            replicas[1].state.withLock { $0.missingPaths = [] }
            let retried = try await h.post("/v1/load_lora_adapter", load, key: Self.admin)
            #expect(retried.0 == 200, "\(retried.1)")
            #expect(replicas.allSatisfy { $0.adapters.contains("dyn2") })
            // An unload that removed the adapter from some replica succeeds, though another did not have it (404).
            replicas[0].state.withLock { _ = $0.adapters.remove("dyn2") }
            let unload = try await h.post("/v1/unload_lora_adapter", #"{"lora_name":"dyn2"}"#, key: Self.admin)
            #expect(unload.0 == 200, "\(unload.1)")
            #expect(replicas.allSatisfy { !$0.adapters.contains("dyn2") })
            // One that removed it nowhere is the replicas' 404.
            let again = try await h.post("/v1/unload_lora_adapter", #"{"lora_name":"dyn2"}"#, key: Self.admin)
            #expect(again.0 == 404, "\(again.1)")
        }
    }

    @Test func tokenizerEndpointsAskAReplicaThatServesTheModel() async throws {
        let replicas = [FakeReplica(adapters: ["s1"]), FakeReplica(adapters: ["s1", "s2"])]
        try await RouterHarness.with(replicas) { h in
            let tokenize = try await h.post("/tokenize", #"{"model":"s2","prompt":"hi"}"#)
            #expect(tokenize.0 == 200, "\(tokenize.1)")
            let detokenize = try await h.post("/detokenize", #"{"model":"s2","tokens":[1]}"#)
            #expect(detokenize.0 == 200, "\(detokenize.1)")
            // A model no replica serves: a replica's own 404.
            let none = try await h.post("/tokenize", #"{"model":"s9","prompt":"hi"}"#)
            let noneCode = try Self.errorCode(none.1)
            #expect(none.0 == 404 && noneCode == "model_not_found", "\(none.1)")
        }
    }

    /// vLLM's /version and the /ping liveness alias (GET and POST), as a replica answers them.
    @Test func versionAndPing() async throws {
        try await RouterHarness.with([FakeReplica(adapters: ["s1"])]) { h in
            let version = try await h.get("/version")
            let object = try JSONSerialization.jsonObject(with: Data(version.1.utf8)) as? [String: Any]
            #expect(version.0 == 200 && object?["version"] as? String == VersionInfo.current, "\(version.1)")
            let pingGet = try await h.get("/ping"), pingPost = try await h.post("/ping", "")
            #expect(pingGet.0 == 200 && pingPost.0 == 200, "\(pingGet.1) \(pingPost.1)")
        }
    }

    /// vLLM's continuous_usage_stats through the router: every chunk carries the usage so far (the replica's prompt count).
    @Test func continuousUsageStats() async throws {
        try await RouterHarness.with([FakeReplica(adapters: ["s1"])]) { h in
            let body = "{\"model\": \"\(Self.base)\", \"prompt\": \"hi\", \"max_tokens\": 2, \"stream\": true, "
                + "\"stream_options\": {\"include_usage\": true, \"continuous_usage_stats\": true}}"
            let r = try await h.post("/v1/completions", body)
            let events = r.1.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") && $0 != "data: [DONE]" }
            let usages = try events.map { e -> [String: Any]? in
                (try JSONSerialization.jsonObject(with: Data(e.dropFirst(6).utf8)) as? [String: Any])?["usage"] as? [String: Any]
            }
            #expect(r.0 == 200 && usages.count >= 2 && usages.allSatisfy { $0 != nil }, "\(r.1)")
            #expect(usages.last??["completion_tokens"] as? Int == 1 && usages.allSatisfy { $0?["prompt_tokens"] as? Int == 1 }, "\(r.1)")
        }
    }

    @Test func fullReplicasAnswer429WithTheirRetryAfterAndARefusalIsPassedThrough() async throws {
        let replicas = [FakeReplica(adapters: ["s1"]), FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas) { h in
            let body = "{\"model\": \"\(Self.base)\", \"prompt\": \"hi\", \"max_tokens\": 2}"
            let ok = try await h.post("/v1/completions", body)
            #expect(ok.0 == 200, "\(ok.1)")
            // Every replica's queue is full: the replicas' 429 with their Retry-After, not a 503.
            for r in replicas { r.state.withLock { $0.full = true } }
            let full = try await h.post("/v1/completions", body)
            #expect(full.0 == 429, "\(full.1)")
            #expect(full.2.first(name: "Retry-After") == "3")
            let fullCode = try Self.errorCode(full.1)
            #expect(fullCode == "queue_full")
            // n = 2: the first choice is refused everywhere; nothing runs.
            let two = try await h.post("/v1/completions", String(body.dropLast()) + ", \"n\": 2}")
            #expect(two.0 == 429, "\(two.1)")
            // One full, the other shutting down: still full (429), the client retries.
            replicas[1].state.withLock { $0.full = false; $0.refuseAll = 503 }
            let oneFull = try await h.post("/v1/completions", body)
            #expect(oneFull.0 == 429, "\(oneFull.1)")
            // Neither full: the router's own 503, with a Retry-After.
            replicas[0].state.withLock { $0.full = false; $0.refuseAll = 503 }
            let none = try await h.post("/v1/completions", body)
            #expect(none.0 == 503 && none.2.first(name: "Retry-After") == "1", "\(none.1)")
            // A refusal about the request (not capacity) is the client's answer as the replica gave it; nothing runs.
            for r in replicas { r.state.withLock { $0.refuseAll = nil; $0.maxSequences = 3 } }
            let seven = try await h.post("/v1/completions", String(body.dropLast()) + ", \"n\": 7}")
            #expect(seven.0 == 400 && seven.1.contains("\"param\":\"n\""), "\(seven.1)")
            #expect(replicas.reduce(0) { $0 + $1.state.withLock { $0.accepted } } == 1)
        }
    }

    /// A replica frozen (SIGSTOP: its connections open, nothing answered) after the router's last poll: a request sent
    /// to it resumes on the other one once the polls find it unreachable, instead of waiting for as long as it stays
    /// frozen (a probe's requests waited the full 60 s while the other replica idled).
    @Test func aRequestSentToAFrozenReplicaGoesElsewhereOnceThePollsNoticeIt() async throws {
        let replicas = [FakeReplica(adapters: ["s1"]), FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas, configure: { $0.dispatch = .roundRobin; $0.pollInterval = .milliseconds(50) }) { h in
            replicas[0].state.withLock { $0.frozen = true }
            defer { replicas[0].state.withLock { $0.frozen = false } }
            let body = "{\"model\": \"\(Self.base)\", \"prompt\": \"hi\", \"max_tokens\": 2}"
            let start = ContinuousClock.now
            // Round-robin sends one of these to replica 0; the test drives the polls, which time out on it.
            let polls = Task {
                for _ in 0..<100 where !Task.isCancelled {
                    await h.router.replicas.pollOnce(timeout: .milliseconds(200))
                    try? await Task.sleep(for: .milliseconds(50))
                }
            }
            defer { polls.cancel() }
            async let a = h.post("/v1/completions", body)
            async let b = h.post("/v1/completions", body)
            let (ra, rb) = try await (a, b)
            let elapsed = ContinuousClock.now - start
            #expect(ra.0 == 200 && rb.0 == 200, "\(ra.1) \(rb.1)")
            #expect(replicas[0].state.withLock { $0.generations } >= 1, "nothing was sent to the frozen replica: the case tests nothing")
            #expect(elapsed < .seconds(8), "the requests took \(elapsed) (the replica stays frozen 20 s)")
            #expect(replicas[1].state.withLock { $0.accepted } == 2)
        }
    }

    /// A client that leaves a stream through the router is counted as cancelled (it was counted nowhere).
    @Test func aClientThatLeavesAStreamIsCountedAsCancelled() async throws {
        let replicas = [FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas) { h in
            replicas[0].state.withLock { $0.holdAfterAccept = true }
            let body = "{\"model\": \"\(Self.base)\", \"prompt\": \"hi\", \"max_tokens\": 2, \"stream\": true}"
            let client = Task { try await h.post("/v1/completions", body) }
            try await Task.sleep(for: .milliseconds(300))
            client.cancel()
            _ = await client.result
            try await Task.sleep(for: .milliseconds(200))
            replicas[0].state.withLock { $0.holdAfterAccept = false }
            var metrics = ""
            for _ in 0..<100 {
                metrics = try await h.get("/metrics").1
                if metrics.contains("dlora_router_requests_total{status=\"cancelled\"} 1") { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(metrics.contains("dlora_router_requests_total{status=\"cancelled\"} 1"), "\(metrics)")
            #expect(!metrics.contains("dlora_router_requests_total{status=\"ok\"}"), "\(metrics)")
        }
    }

    @Test func everyAnsweredRequestIsCountedWithItsStatus() async throws {
        let replicas = [FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas) { h in
            let body = "{\"model\": \"\(Self.base)\", \"prompt\": \"hi\", \"max_tokens\": 2}"
            #expect(try await h.send("/v1/completions", method: .POST, body: body, key: nil).0 == 200)
            replicas[0].state.withLock { $0.full = true }
            #expect(try await h.send("/v1/completions", method: .POST, body: body, key: nil).0 == 429)
            replicas[0].state.withLock { $0.full = false; $0.refuseAll = 503 }
            #expect(try await h.send("/v1/completions", method: .POST, body: body, key: nil).0 == 503)
            #expect(try await h.send("/v1/completions", method: .POST, body: "[1]", key: nil).0 == 400)
            #expect(try await h.send("/v1/completions", method: .POST, body: #"{"model": "s9", "prompt": "hi"}"#, key: nil).0 == 404)
            // A model that is not a string is worded as the replica words it.
            let notString = try await h.post("/v1/completions", #"{"model": 5, "prompt": "hi"}"#)
            #expect(notString.0 == 400 && notString.1.contains("'model' must be a string"), "\(notString.1)")
            let metrics = try await h.get("/metrics").1
            for line in ["{status=\"ok\"} 1", "{status=\"429\"} 1", "{status=\"503\"} 1", "{status=\"400\"} 2", "{status=\"404\"} 1"] {
                #expect(metrics.contains("dlora_router_requests_total" + line), "no \(line) in \(metrics)")
            }
        }
    }

    /// A malformed body is refused by the router in the replica's words (the replica's own sweep,
    /// `ServerTests.malformedInputSweep`, checks the same messages), and none reaches a replica.
    @Test func malformedBodiesAreRefusedInTheReplicasWords() async throws {
        let replicas = [FakeReplica(adapters: ["s1"])]
        try await RouterHarness.with(replicas) { h in
            let deep = String(repeating: "[", count: 10_000)
            for (body, message) in [("", "the request body is empty; expected a JSON object"),
                                    (deep, "invalid JSON: request body: nesting too deep at byte 256"),
                                    ("{\"model\": \"\(Self.base)\", \"max_tokens\": 1e400, \"prompt\": \"hi\"}", "invalid JSON: request body: invalid number '1e400'"),
                                    ("{\"model\": \"\(Self.base)\", \"prompt\": \"a\\ud800b\"}", "invalid JSON: request body: lone surrogate"),
                                    ("{\"model\": \"\(Self.base)\", \"messages\": [{\"role\": \"user\", \"role\": \"system\"}]}", "duplicate key 'role'"),
                                    ("{\"model\": \"\(Self.base)\", \"model\": \"s1\", \"prompt\": \"hi\"}", "duplicate key 'model'")] {
                let r = try await h.post("/v1/completions", body)
                #expect(r.0 == 400 && r.1.contains(message), "\(body.prefix(60)): \(r.1)")
            }
            var bad = HTTPClientRequest(url: "http://127.0.0.1:\(h.port)/v1/completions")
            bad.method = .POST
            bad.body = .bytes(ByteBuffer(bytes: Array("{\"model\": \"x\", \"prompt\": \"".utf8) + [0xC3, 0x28] + Array("\"}".utf8)))
            let r = try await h.http.execute(bad, timeout: .seconds(10))
            let text = String(buffer: try await r.body.collect(upTo: 1 << 16))
            #expect(r.status == .badRequest && text.contains("not valid UTF-8"), "\(text)")
            #expect(replicas[0].state.withLock { $0.accepted } == 0)
        }
    }

    static func errorCode(_ body: String) throws -> String? {
        let object = try #require(JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        return (object["error"] as? [String: Any])?["code"] as? String
    }
}

/// A replica as the router sees it: its status (with an identity a restart changes), adapter catalog, tokenizer
/// endpoints and generations (one token, then a finish), scripted by the test.
final class FakeReplica: Sendable {
    struct State {
        var instance = UUID().uuidString
        var adapters: Set<String>
        let startup: Set<String>
        /// Adapter paths this replica's root lacks: their loads are refused (400).
        var missingPaths: Set<String>
        /// Generations answered 429 `queue_full`, Retry-After 3.
        var full = false
        /// Every generation answered with this status (a draining replica's 503).
        var refuseAll: Int?
        /// Sequences (prompts × n) the queue could ever hold: above, a generation is refused as the request's fault.
        var maxSequences = 256
        var accepted = 0
        var adminCalls = 0
        /// Adapter loads still to answer with a 500 (a replica that fails them for a while).
        var failLoads = 0
        /// A SIGSTOPped process: status polls and generations get no answer (their connections stay open) until this
        /// is cleared, at most 20 s.
        var frozen = false
        var generations = 0
        /// Generations send their accepted line, then wait while this is set (at most 20 s) before their token.
        var holdAfterAccept = false
    }

    /// Waits while the replica is frozen (bounded).
    func thaw() async {
        for _ in 0..<400 where state.withLock({ $0.frozen }) { try? await Task.sleep(for: .milliseconds(50)) }
    }
    let state: Locked<State>

    init(adapters: Set<String>, missingPaths: Set<String> = []) {
        state = Locked(State(adapters: adapters, startup: adapters, missingPaths: missingPaths))
    }

    var adapters: Set<String> { state.withLock { $0.adapters } }
    var adminCalls: Int { state.withLock { $0.adminCalls } }

    /// A new process on the same address: its startup adapters, another identity.
    func restart() {
        state.withLock {
            $0.instance = UUID().uuidString
            $0.adapters = $0.startup
        }
    }

    static func json(_ status: HTTPResponse.Status, _ text: String, retryAfter: Int? = nil) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func error(_ status: HTTPResponse.Status, _ message: String, param: String? = nil, code: String, retryAfter: Int? = nil) -> Response {
        let p = param.map { "\"\($0)\"" } ?? "null"
        return json(status, "{\"error\":{\"message\":\"\(message)\",\"type\":\"invalid_request_error\",\"param\":\(p),\"code\":\"\(code)\"}}",
                    retryAfter: retryAfter)
    }

    static func object(_ request: Request) async throws -> [String: Any] {
        var request = request
        let body = try await request.collectBody(upTo: 1 << 20)
        return (try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]) ?? [:]
    }

    func serves(_ model: String?) -> Bool { model == RouterReplicaTests.base || state.withLock { s in model.map(s.adapters.contains) ?? false } }

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/internal/status") { _, _ in
            await self.thaw()
            let s = self.state.withLock { $0 }
            let status = ReplicaStatus(model: RouterReplicaTests.base, adapters: s.adapters.sorted(), maxModelLen: 2048, waiting: 0, running: 0,
                                       swapped: 0, kvBlocksTotal: 100, kvBlocksFree: 100, blockSize: 16, adapterSlots: 4, residentAdapters: [],
                                       perAdapter: [:], decodeStepSeconds: 0.01, prefillTokenSeconds: 0.001, mergedFactor: 1,
                                       adapterLoadSeconds: 0.1, maxBatch: 8, requests: [], draining: false, instance: s.instance)
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: ClusterWire.encode(status))))
        }
        router.post("/v1/load_lora_adapter") { request, _ in
            let o = try await Self.object(request)
            let name = o["lora_name"] as? String ?? "", path = o["lora_path"] as? String ?? ""
            return self.state.withLock { s -> Response in
                s.adminCalls += 1
                if s.failLoads > 0 {
                    s.failLoads -= 1
                    return Self.error(.internalServerError, "the load failed", code: "internal_error")
                }
                if s.adapters.contains(name) { return Self.error(.badRequest, "the adapter '\(name)' is already loaded", param: "lora_name", code: "adapter_exists") }
                if s.missingPaths.contains(path) { return Self.error(.badRequest, "no adapter at '\(path)'", param: "lora_path", code: "adapter_not_found") }
                s.adapters.insert(name)
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
            }
        }
        router.post("/v1/unload_lora_adapter") { request, _ in
            let name = try await Self.object(request)["lora_name"] as? String ?? ""
            return self.state.withLock { s -> Response in
                s.adminCalls += 1
                guard s.adapters.remove(name) != nil else {
                    return Self.error(.notFound, "the adapter '\(name)' is not loaded", param: "lora_name", code: "model_not_found")
                }
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
            }
        }
        for path in ["/tokenize", "/detokenize"] {
            router.post(RouterPath(stringLiteral: path)) { request, _ in
                let model = try await Self.object(request)["model"] as? String
                guard self.serves(model) else {
                    return Self.error(.notFound, "the model '\(model ?? "")' does not exist", param: "model", code: "model_not_found")
                }
                return Self.json(.ok, path == "/tokenize" ? #"{"tokens":[1],"count":1,"max_model_len":2048}"# : #"{"prompt":"x"}"#)
            }
        }
        router.post("/internal/generate") { request, _ in
            self.state.withLock { $0.generations += 1 }
            await self.thaw()
            var request = request
            let g = try ClusterWire.decode(ReplicaGenerate.self, from: Data(buffer: try await request.collectBody(upTo: 1 << 20)))
            let body = (try? JSONSerialization.jsonObject(with: Data(g.body.utf8)) as? [String: Any]) ?? [:]
            let n = body["n"] as? Int ?? 1
            let s = self.state.withLock { $0 }
            if let status = s.refuseAll { return Self.error(.init(code: status), "refused", code: "refused", retryAfter: 5) }
            if n > s.maxSequences { return Self.error(.badRequest, "this request asks for \(n) sequences", param: "n", code: "invalid") }
            if s.full { return Self.error(.tooManyRequests, "the server's queue is full", code: "queue_full", retryAfter: 3) }
            self.state.withLock { $0.accepted += 1 }
            let lines = [ReplicaEvent(accepted: .init(promptTokens: 1, seed: 7, adoptedPositions: 0)),
                         ReplicaEvent(token: 5, text: "x", finish: "stop")]
            if s.holdAfterAccept {
                return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init { writer in
                    var first = ClusterWire.encode(lines[0])
                    first.append(0x0A)
                    try await writer.write(ByteBuffer(bytes: first))
                    for _ in 0..<400 where self.state.withLock({ $0.holdAfterAccept }) { try await Task.sleep(for: .milliseconds(50)) }
                    var rest = ClusterWire.encode(lines[1])
                    rest.append(0x0A)
                    try await writer.write(ByteBuffer(bytes: rest))
                    try await writer.finish(nil)
                })
            }
            var out = Data()
            for e in lines { out.append(ClusterWire.encode(e)); out.append(0x0A) }
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init(byteBuffer: ByteBuffer(bytes: out)))
        }
        return router
    }
}

/// The router and its scripted replicas on loopback ports, each app run in a task that is cancelled at the end.
struct RouterHarness {
    let router: ClusterRouter
    let port: Int
    let http: HTTPClient

    /// The servers' own logs (a start line each, an error line at each cancelled stop) are noise here.
    static var quiet: Logger {
        var logger = Logger(label: "router-replica-tests")
        logger.logLevel = .critical
        return logger
    }

    static func with(_ replicas: [FakeReplica], configure: (inout RoutingOptions) -> Void = { _ in },
                     _ body: (RouterHarness) async throws -> Void) async throws {
        var tasks: [Task<Void, any Error>] = []
        defer { for t in tasks { t.cancel() } }
        var urls: [String] = []
        for r in replicas {
            let (task, port) = try await start {
                Application(router: r.makeRouter(), configuration: .init(address: .hostname("127.0.0.1", port: 0)), onServerRunning: $0,
                            logger: quiet)
            }
            tasks.append(task)
            urls.append("http://127.0.0.1:\(port)")
        }
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        var options = RoutingOptions()
        options.adminKey = RouterReplicaTests.admin
        options.resumeWait = .zero
        configure(&options)
        let router = ClusterRouter(replicas: ReplicaSet(urls: urls, http: http, adminKey: RouterReplicaTests.admin), options: options)
        let (task, port) = try await start {
            router.makeApplication(configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: quiet, onServerRunning: $0)
        }
        tasks.append(task)
        await router.replicas.pollOnce()
        #expect(router.replicas.healthyCount == replicas.count)
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            try await body(RouterHarness(router: router, port: port, http: client))
        } catch {
            try? await client.shutdown()
            try? await http.shutdown()
            throw error
        }
        try await client.shutdown()
        try await http.shutdown()
        for t in tasks {
            t.cancel()
            _ = await t.result
        }
    }

    /// Runs an app built with its `onServerRunning` and returns its task and bound port (within 10 s).
    static func start<A: ApplicationProtocol>(_ make: (@escaping @Sendable (any Channel) async -> Void) -> A) async throws -> (Task<Void, any Error>, Int) {
        let bound = Locked(0)
        let app = make { channel in bound.withLock { $0 = channel.localAddress?.port ?? 0 } }
        let task = Task { try await app.run() }
        for _ in 0..<1000 {
            if case let p = bound.withLock({ $0 }), p > 0 { return (task, p) }
            try await Task.sleep(for: .milliseconds(10))
        }
        task.cancel()
        throw CancellationError()
    }

    func post(_ path: String, _ json: String, key: String? = nil) async throws -> (Int, String, HTTPHeaders) {
        try await send(path, method: .POST, body: json, key: key)
    }

    func get(_ path: String) async throws -> (Int, String, HTTPHeaders) { try await send(path, method: .GET, body: nil, key: nil) }

    func send(_ path: String, method: HTTPMethod, body: String?, key: String?) async throws -> (Int, String, HTTPHeaders) {
        var r = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        r.method = method
        if let key { r.headers.add(name: "Authorization", value: "Bearer \(key)") }
        if let body {
            r.headers.add(name: "Content-Type", value: "application/json")
            r.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await http.execute(r, timeout: .seconds(10))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        return (Int(response.status.code), text, response.headers)
    }
}
