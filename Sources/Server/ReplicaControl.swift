import HTTPFront
import Engine
import Foundation
import Hummingbird
import Models
import NIOCore
import Scheduling
import ServingAPI

// The replica's side of the router protocol (ServingAPI/ClusterWire.swift, docs/design/cluster.md): status,
// token-level generation that a router can resume elsewhere, and the stages of a live migration. Everything
// under /internal/* requires the admin key; without one the routes answer 404.

/// Requests the router placed here, and K/V blocks staged for requests about to be imported.
struct ReplicaControlState {
    /// The router's id of each live request it placed here → the engine's id.
    var live: [String: Scheduling.RequestID] = [:]
    var byTicket: [Scheduling.RequestID: String] = [:]

    struct Staged {
        let model: String
        var kv: KVBlocks?
        let created: UInt64
        var bytes: Int { (kv?.data.count ?? 0) * 4 }
    }
    var staged: [String: Staged] = [:]
    var nextMigration: UInt64 = 0

    /// Staged blocks not claimed within this long are dropped (a router that died mid-migration).
    static let stagedLifetimeNanoseconds: UInt64 = 30_000_000_000
    /// Host memory all staged blocks may take together.
    static let stagedLimitBytes = 2 << 30

    mutating func expireStaged(now: UInt64) {
        staged = staged.filter { now &- $0.value.created < Self.stagedLifetimeNanoseconds }
    }

    var stagedBytes: Int { staged.values.reduce(0) { $0 + $1.bytes } }
}

extension OpenAIServer {
    func addReplicaControl(to router: Router<BasicRequestContext>) {
        router.get("/internal/status") { request, _ in
            try self.authorizeControl(request)
            return self.jsonData(.ok, ClusterWire.encode(await self.replicaStatus()))
        }
        router.post("/internal/generate") { request, _ in try await self.internalGenerate(request) }
        router.get("/internal/requests/:id/kv") { request, context in
            try self.authorizeControl(request)
            return try await self.kvStage(id: context.parameters.get("id") ?? "", request: request)
        }
        router.post("/internal/requests/:id/export") { request, context in
            try self.authorizeControl(request)
            return try await self.exportRequest(id: context.parameters.get("id") ?? "", request: request)
        }
        router.post("/internal/migrations") { request, _ in try await self.reserveMigration(request) }
        router.put("/internal/migrations/:mid/blocks") { request, context in
            try await self.stageBlocks(mid: context.parameters.get("mid") ?? "", request: request)
        }
        router.delete("/internal/migrations/:mid") { request, context in
            try self.authorizeControl(request)
            let mid = context.parameters.get("mid") ?? ""
            _ = self.control.withLock { $0.staged.removeValue(forKey: mid) }
            return Response(status: .noContent)
        }
    }

    private func authorizeControl(_ request: Request) throws {
        guard let key = options.adminKey else {
            throw APIError(.notFound, "the replica control API is disabled on this server (start it with --admin-key)")
        }
        try authorize(request, key: key)
    }

    func jsonData(_ status: HTTPResponse.Status, _ data: Data) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    private func frameResponse(_ data: Data) -> Response {
        Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    // MARK: Status

    func replicaStatus() async -> ReplicaStatus {
        let names = control.withLock { s in s.byTicket }
        let snapshot = await engine.perform { e -> EngineView in EngineView(e, routerIDs: names) }
        let loadable = adapters?.available() ?? []
        return ReplicaStatus(
            model: options.modelName, adapters: loadable, maxModelLen: contextLimit, waiting: snapshot.waiting, running: snapshot.running, swapped: snapshot.swapped,
            kvBlocksTotal: snapshot.kvBlocksTotal, kvBlocksFree: snapshot.kvBlocksFree, blockSize: engine.blockSize,
            adapterSlots: snapshot.adapterSlots, residentAdapters: snapshot.resident, perAdapter: snapshot.perAdapter,
            decodeStepSeconds: snapshot.decodeStepSeconds, prefillTokenSeconds: snapshot.prefillTokenSeconds,
            mergedFactor: snapshot.mergedFactor, adapterLoadSeconds: AdapterResidency.reportedLoadSeconds, maxBatch: snapshot.maxBatch,
            requests: snapshot.requests, draining: isDraining, instance: instance)
    }

    /// What the status reads from the engine, built on the engine thread between steps.
    private struct EngineView: Sendable {
        var waiting = 0, running = 0, swapped = 0, kvBlocksTotal = 0, kvBlocksFree = 0, adapterSlots = 0, maxBatch = 0
        var resident: [String] = []
        var perAdapter: [String: ReplicaStatus.AdapterCounts] = [:]
        var requests: [ReplicaStatus.LiveRequest] = []
        var decodeStepSeconds = 0.0, prefillTokenSeconds = 0.0, mergedFactor = 1.0

        init(_ e: EngineCore, routerIDs: [Scheduling.RequestID: String]) {
            let s = e.scheduler
            func name(_ key: Int) -> String { key == Scheduling.Request.base ? "" : e.adapterName(key)?.0 ?? "" }
            kvBlocksTotal = s.pool.numBlocks
            kvBlocksFree = s.pool.freeCount
            adapterSlots = e.configuration.adapterSlots
            let policy = s.policy.config
            maxBatch = policy.maxBatchSequences
            resident = Array(Set(s.residentAdapters.map(name))).sorted()
            var distinct = Set<Int>()
            for r in s.liveRequests {
                let n = name(r.adapter)
                var c = perAdapter[n] ?? .init(waiting: 0, running: 0)
                if r.status == .running {
                    running += 1
                    c.running += 1
                    distinct.insert(r.adapter)
                } else {
                    waiting += 1
                    c.waiting += 1
                    if r.status == .swapped { swapped += 1 }
                }
                perAdapter[n] = c
                if let id = routerIDs[r.id] {
                    requests.append(.init(id: id, model: n, tokens: r.tokenCount, computed: r.computed, generated: r.generated,
                                          maxTokens: r.maxLength - r.promptCount, running: r.status == .running))
                }
            }
            let b = max(1, running)
            decodeStepSeconds = policy.costs.unmerged(tokens: b, adapters: distinct.subtracting([Scheduling.Request.base]).count)
            prefillTokenSeconds = policy.costs.perTokenSeconds
            let full = max(1, policy.maxBatchSequences)
            mergedFactor = policy.costs.merged(tokens: full) / max(1e-9, policy.costs.unmerged(tokens: full, adapters: 1))
        }
    }

    // MARK: Generation

    private func internalGenerate(_ request: Request) async throws -> Response {
        try authorizeControl(request)
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: options.maxBodyBytes * 2)
        } catch let e as any HTTPResponseError where e.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "the request body is larger than \(options.maxBodyBytes * 2) bytes")
        }
        let g: ReplicaGenerate
        do {
            g = try ClusterWire.decode(ReplicaGenerate.self, from: Data(buffer: body))
        } catch {
            throw APIError(.badRequest, "the body is not a ReplicaGenerate message: \(error)")
        }
        guard g.endpoint == "completions" || g.endpoint == "chat" else {
            throw APIError.invalid("endpoint", "endpoint must be 'completions' or 'chat'")
        }
        guard !g.id.isEmpty, g.id.utf8.count <= 128, g.id.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
            throw APIError.invalid("id", "id must be 1 to 128 printable ASCII characters")
        }
        let parsed = try GenerationRequest.parse(ByteBuffer(string: g.body), chat: g.endpoint == "chat")
        let adapter = try restrict(try await resolveModel(parsed.model), to: parsed.moleExperts)
        // One prompt and one choice per generation: the router splits a batch of prompts and a request with n > 1,
        // and names each part.
        let choice = g.choice ?? 0, promptIndex = g.prompt ?? 0
        guard parsed.n == 1 || g.choice != nil else {
            throw APIError.invalid("choice", "a request with n = \(parsed.n) runs one choice per generation: name it in 'choice'")
        }
        guard (0..<parsed.n).contains(choice) else {
            throw APIError.invalid("choice", "choice \(choice) is outside 0..<\(parsed.n)")
        }
        guard parsed.inputs.count == 1 || g.prompt != nil else {
            throw APIError.invalid("prompt", "a batch of \(parsed.inputs.count) prompts runs one prompt per generation: name it in 'prompt'")
        }
        guard parsed.inputs.indices.contains(promptIndex) else {
            throw APIError.invalid("prompt", "prompt \(promptIndex) is outside 0..<\(parsed.inputs.count)")
        }
        try checkSequences(parsed.inputs.count * parsed.n, parameter: parsed.n > 1 ? "n" : parsed.isChat ? "messages" : "prompt")
        let input = parsed.inputs[promptIndex]
        var (prompt, params) = try await prepare(parsed, input: input, adapter: adapter)
        let seed = g.seed ?? params.seed.map { $0 &+ UInt64(choice) } ?? UInt64.random(in: .min ... .max)
        params.seed = seed
        var kv: KVBlocks?
        if let mid = g.migration {
            let staged = control.withLock { $0.staged.removeValue(forKey: mid) }
            if let staged, staged.model == parsed.model { kv = staged.kv }
        }
        let admission = try admit()
        let ticket: Scheduling.RequestID
        let events: RequestStream
        do {
            (ticket, events) = try engine.submit(prompt: prompt, params: params, adapter: adapter, generated: g.generated, kv: kv)
        } catch {
            throw APIError.invalid(Self.parameter(of: error, otherwise: "generated"), "\(error)")
        }
        let registered = control.withLock { s -> Bool in
            guard s.live[g.id] == nil else { return false }
            s.live[g.id] = ticket
            s.byTicket[ticket] = g.id
            return true
        }
        guard registered else {
            engine.cancel(ticket)
            throw APIError(.conflict, "a request with id '\(g.id)' is already live here", code: "duplicate_request")
        }
        let total = prompt.count + g.generated.count
        let adopted = kv.map { min($0.computed, total - 1, $0.blockCount * $0.blockSize) } ?? 0
        let accepted = ReplicaEvent(accepted: .init(promptTokens: prompt.count, seed: seed, adoptedPositions: max(0, adopted),
                                                    logprobs: params.logprobs != nil))
        let id = g.id, model = parsed.model, promptCount = prompt.count
        // Echoed once, by the replica that starts the request (a resumed one's router has it already).
        let echo = parsed.echo && g.generated.isEmpty ? (echoText(input, prompt: prompt), prompt[0]) : nil
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson", .cacheControl: "no-cache"],
                        body: .init { writer in
                            defer { self.forgetLive(id, ticket: ticket) }
                            try await ClientConnection.cancellingOnDisconnect {
                                try await self.relay(events, first: accepted, ticket: ticket, model: model,
                                                     promptTokens: promptCount, echo: echo, admission: admission, writer: &writer)
                            }
                            try await writer.finish(nil)
                        })
    }

    private func relay(_ events: RequestStream, first: ReplicaEvent, ticket: Scheduling.RequestID, model: String,
                       promptTokens: Int, echo: (text: String, firstToken: Int)?, admission: Admission,
                       writer: inout any ResponseBodyWriter) async throws {
        var finished = false
        var generated = 0
        metrics.began(model: model)
        defer {
            // Dropped before its end (router gone): free the request now.
            if !finished { engine.cancel(ticket) }
            withExtendedLifetime(admission) {}
            metrics.ended(model: model)
        }
        try await writeLine(first, &writer)
        var echoed = echo == nil
        for await e in events {
            if e.token != nil { generated += 1 }
            var line = ReplicaEvent(token: e.token, text: e.text, finish: e.finish.map { $0 == .error ? nil : $0.rawValue } ?? nil,
                                    error: e.finish == .error ? (e.message ?? "the model produced non-finite logits") : nil,
                                    logprobs: e.logprobs.map(tokenizer.render))
            if !echoed, let echo, e.finish != .error {
                line.echo = promptEcho(text: echo.text, firstToken: echo.firstToken, logprobs: e.promptLogprobs)
            }
            echoed = true
            try await writeLine(line, &writer)
            if let f = e.finish {
                finished = true
                if f != .error { metrics.finished(model: model, reason: f == .cancelled ? "abort" : f.rawValue) }
            }
        }
        metrics.tokens(model: model, prompt: promptTokens, generated: generated)
        if finished {
            metrics.request(model: model, status: "ok")
            return
        }
        // Ended here without a finish: exported for migration, or cancelled (shutdown). The stream just ends, with
        // no error line: the router resumes the request elsewhere from the tokens it has.
        finished = true
    }

    private func writeLine(_ e: ReplicaEvent, _ writer: inout any ResponseBodyWriter) async throws {
        var data = ClusterWire.encode(e)
        data.append(0x0A)
        try await writer.write(ByteBuffer(bytes: data))
    }

    private func forgetLive(_ id: String, ticket: Scheduling.RequestID) {
        control.withLock { s in
            if s.live[id] == ticket { s.live[id] = nil }
            if s.byTicket[ticket] == id { s.byTicket[ticket] = nil }
        }
    }

    // MARK: Migration, source side

    private func ticket(_ id: String) throws -> Scheduling.RequestID {
        guard let t = control.withLock({ $0.live[id] }) else {
            throw APIError(.notFound, "no live request '\(JSONFields.printable(String(id.prefix(128))))' here", code: "request_not_found")
        }
        return t
    }

    private func blockQuery(_ request: Request, _ name: String) throws -> Int? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let k = Int(text), k >= 0, k < 1 << 24 else { throw APIError.invalid(name, "\(name) must be a block index ≥ 0") }
        return k
    }

    /// A pre-copy stage: the request's full blocks from `from` on, read while it keeps decoding.
    private func kvStage(id: String, request: Request) async throws -> Response {
        let t = try ticket(id)
        let from = try blockQuery(request, "from") ?? 0
        guard let kv = await engine.kvBlocks(of: t, from: from) else {
            throw APIError(.notFound, "the request '\(id)' is no longer live here", code: "request_not_found")
        }
        let head = KVFrameHead(firstBlock: kv.firstBlock, blockCount: kv.blockCount, blockSize: kv.blockSize,
                               floatsPerBlock: kv.floatsPerBlock, computed: kv.computed)
        return frameResponse(KVFrame.encode(head: head, floats: kv.data))
    }

    /// The last stage: stops the request between steps and returns its tokens and the K/V of its blocks from
    /// `kv_from` on (no K/V without `kv_from`: the destination recomputes).
    private func exportRequest(id: String, request: Request) async throws -> Response {
        let t = try ticket(id)
        let from = try blockQuery(request, "kv_from")
        guard let out = await engine.stopForMigration(t, kvFrom: from) else {
            throw APIError(.notFound, "the request '\(id)' is no longer live here", code: "request_not_found")
        }
        let kv = out.kv
        let head = KVFrameHead(firstBlock: kv?.firstBlock ?? from ?? 0, blockCount: kv?.blockCount ?? 0, blockSize: engine.blockSize,
                               floatsPerBlock: engine.floatsPerBlock, computed: kv?.computed ?? 0, tokens: out.tokens,
                               promptCount: out.promptCount)
        return frameResponse(KVFrame.encode(head: head, floats: kv?.data ?? []))
    }

    // MARK: Migration, destination side

    private func reserveMigration(_ request: Request) async throws -> Response {
        try authorizeControl(request)
        var request = request
        let body = try await collect(&request)
        let r: MigrationReserve
        do {
            r = try ClusterWire.decode(MigrationReserve.self, from: Data(buffer: body))
        } catch {
            throw APIError(.badRequest, "the body is not a MigrationReserve message: \(error)")
        }
        guard r.tokens >= 0, r.tokens < contextLimit else { throw APIError.invalid("tokens", "tokens must be within the context") }
        // The adapter moves with its request: loaded (and validated) here before the request arrives.
        _ = try await resolveModel(r.model)
        let need = (r.tokens + engine.blockSize - 1) / engine.blockSize
        // Resident adapters no request needs are evicted on demand when the request's K/V is adopted: free for this
        // (a probe's idle replica, 176 of its 182 blocks held by 8 idle adapters, refused every K/V migration).
        let snapshot = engine.snapshot
        let free = snapshot.kvBlocksFree + snapshot.idleAdapterBlocks
        guard need <= free else {
            throw APIError(.conflict, "no room for \(need) KV blocks here (\(free) free)", code: "no_kv_room")
        }
        let now = DispatchTime.now().uptimeNanoseconds
        let mid = control.withLock { s -> String in
            s.expireStaged(now: now)
            s.nextMigration += 1
            let mid = "mig-\(s.nextMigration)"
            s.staged[mid] = .init(model: r.model, kv: nil, created: now)
            return mid
        }
        return jsonData(.ok, ClusterWire.encode(MigrationReserved(migration: mid, blocksFree: free)))
    }

    private func stageBlocks(mid: String, request: Request) async throws -> Response {
        try authorizeControl(request)
        var request = request
        let limit = engine.snapshot.kvBlocksTotal * engine.floatsPerBlock
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: limit * 4 + KVFrame.maxHeadBytes + 4)
        } catch let e as any HTTPResponseError where e.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "the K/V frame is larger than this replica's whole cache")
        }
        let head: KVFrameHead, floats: [Float]
        do {
            (head, floats) = try KVFrame.decode(Data(buffer: body), maxFloats: limit)
        } catch {
            throw APIError(.badRequest, "\(error)")
        }
        guard head.blockSize == engine.blockSize, head.floatsPerBlock == engine.floatsPerBlock else {
            throw APIError(.badRequest, "K/V geometry \(head.blockSize)×\(head.floatsPerBlock) does not match this replica's "
                           + "\(engine.blockSize)×\(engine.floatsPerBlock)", code: "kv_geometry")
        }
        let blocks = KVBlocks(firstBlock: head.firstBlock, blockSize: head.blockSize, floatsPerBlock: head.floatsPerBlock,
                              computed: head.computed, data: floats)
        let now = DispatchTime.now().uptimeNanoseconds
        try control.withLock { s in
            s.expireStaged(now: now)
            // Taken out of the table while it grows, so the append extends its one buffer in place (a copy
            // left in the table would make every stage copy all the blocks staged before it).
            guard var staged = s.staged.removeValue(forKey: mid) else {
                throw APIError(.notFound, "no migration '\(JSONFields.printable(String(mid.prefix(64))))' here (expired or claimed)",
                               code: "migration_not_found")
            }
            defer { s.staged[mid] = staged }
            let expected = staged.kv.map { $0.firstBlock + $0.blockCount } ?? 0
            guard blocks.firstBlock == expected else {
                throw APIError(.conflict, "blocks from \(head.firstBlock) do not continue the \(staged.kv?.blockCount ?? 0) staged",
                               code: "kv_out_of_order")
            }
            guard s.stagedBytes + staged.bytes + floats.count * 4 <= ReplicaControlState.stagedLimitBytes else {
                throw APIError(.init(code: 507, reasonPhrase: "Insufficient Storage"), "staged K/V would exceed this replica's limit", code: "kv_staging_full")
            }
            if staged.kv == nil {
                staged.kv = blocks
            } else {
                staged.kv!.data.append(contentsOf: blocks.data)
                staged.kv!.computed = max(staged.kv!.computed, blocks.computed)
            }
        }
        return Response(status: .noContent)
    }
}
