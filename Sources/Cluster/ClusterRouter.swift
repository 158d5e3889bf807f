import AsyncHTTPClient
import ClusterPolicy
import Foundation
import HTTPFront
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServingAPI

/// The router's settings.
public struct RoutingOptions: Sendable {
    public var apiKey: String?
    public var adminKey: String?
    /// The key the replicas' control API wants (default: `adminKey`).
    public var replicaAdminKey: String?
    public var dispatch: DispatchKind = .dlora
    /// nil: no reactive migration.
    public var migration: MigrationMode? = nil
    /// How often the replicas' status is read, and how often the migration trigger is checked.
    public var pollInterval: Duration = .milliseconds(200)
    /// Requests with fewer tokens left than this are never moved.
    public var migrationMinRemainingTokens = 16
    /// How often dLoRA dispatch re-places adapters from their arrival rates.
    public var placementInterval: Duration = .seconds(5)
    /// dLoRA dispatch's settings (its placement starts empty): leftovers counted as a fraction of a batch step,
    /// and by default no adapter-slot bound and no placement hysteresis (`dlora router --dispatch-slot-bound
    /// --placement-hysteresis`).
    public var dloraDispatch = DLoRAProactive(fractionalLeftovers: true)
    public var migrationConfig = MigrationConfiguration()
    public var maxBodyBytes = 1 << 20
    public var http = HTTPLimits()
    /// Bytes of stored Responses answers kept at most (`store`, `previous_response_id`; 0: none are stored). The
    /// router renders Responses answers, so it keeps them; its replicas see chat requests only.
    public var responsesStoreBytes = 64 << 20
    /// How long a request whose replica failed waits for one that can resume it, when none can now (every replica
    /// down at once, or the only one restarting): it resumes where one comes back, with the tokens it has.
    public var resumeWait: Duration = .seconds(30)
    /// How long after a replay of adapter changes failed on a replica the router tries again (while its polls still
    /// show the replica's catalog contradicting them); doubled at each further failure, up to 64 times.
    public var replayRetry: Duration = .seconds(1)

    public init() {}
}

public enum DispatchKind: String, Sendable, CaseIterable {
    case roundRobin = "round-robin"
    case leastLoaded = "least-loaded"
    case loraAffinity = "lora-affinity"
    case dlora
}

/// `dlora router`: the OpenAI API in front of several replicas, in the data path. It owns each client's
/// stream: it dispatches by a pure policy over the replicas' status, relays tokens, moves running requests
/// between replicas (K/V copied in stages, or recomputed) and, when a replica dies, resumes its requests
/// elsewhere with the tokens generated so far. It holds no state a restart would need except the streams it
/// carries and the stored Responses answers, which a restart forgets (docs/design/cluster.md, server.md).
public final class ClusterRouter: Sendable {
    public let replicas: ReplicaSet
    public let options: RoutingOptions
    let metrics = RouterMetrics()
    let flights = Locked([String: Flight]())
    /// The last adapter load or unload made through this router, per adapter name (the endpoint and the body it was
    /// sent with). A replica that was down for it, or restarted since (its catalog is its adapter root again), gets it
    /// replayed when it rejoins: otherwise a restarted replica would lack the adapters loaded at run time and serve
    /// again those unloaded, and the router's catalog would change under the clients (a probe lost a stream of a
    /// loaded adapter when the one replica that still had it died).
    let adapterChanges = Locked([String: (path: String, body: Data)]())

    /// Per replica, the state of replaying adapter changes (`ReplayState`, ClusterRouter+Adapters.swift).
    let replays = Locked(ReplayState())
    let policy: Locked<any DispatchPolicy>
    private let serial = Locked(UInt64(0))
    /// Requests per adapter since the last placement update, and the smoothed rates (requests/s).
    private let arrivals = Locked((counts: [String: Int](), rates: [String: Double]()))
    private let created = Int(Date().timeIntervalSince1970)
    /// The Responses answers this router keeps (nil: `responsesStoreBytes` 0). In memory: a restart forgets them.
    public let responseStore: ResponseStore?

    public init(replicas: ReplicaSet, options: RoutingOptions) {
        self.replicas = replicas
        self.options = options
        responseStore = options.responsesStoreBytes > 0 ? ResponseStore(capacityBytes: options.responsesStoreBytes) : nil
        let p: any DispatchPolicy = switch options.dispatch {
        case .roundRobin: RoundRobin()
        case .leastLoaded: LeastLoaded()
        case .loraAffinity: LoRAAffinity()
        case .dlora: options.dloraDispatch
        }
        policy = Locked(p)
        replicas.onRejoin = { [weak self] i, status in await self?.replayAdapterChanges(on: i, status: status) }
        replicas.onHealthy = { [weak self] i, status in self?.retryReplay(on: i, status: status) }
        // A replica that stops answering its polls (hung: its connections stay open) gives up its requests, which
        // resume elsewhere with the tokens they have, as when a replica dies.
        replicas.onDown = { [weak self] i in
            guard let self else { return }
            self.flights.withLock { f in for flight in f.values { _ = flight.abandon(replica: i) } }
        }
    }

    /// Background work: status polling, and the migration loop when migration is on. Runs until cancelled.
    public func runBackground() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.replicas.poll(every: self.options.pollInterval) }
            if let mode = options.migration {
                group.addTask { await self.migrationLoop(mode: mode) }
            }
            if options.dispatch == .dlora {
                group.addTask { await self.placementLoop() }
            }
        }
    }

    // MARK: Policies

    /// What the policies see: the last status of each replica, with the requests dispatched since it.
    func loads(_ entries: [ReplicaSet.Entry], includeRequests: Bool = false) -> [ReplicaLoad] {
        entries.enumerated().compactMap { i, e -> ReplicaLoad? in
            guard let s = e.status, !e.gone else { return nil }
            var per: [String: ClusterPolicy.AdapterCounts] = [:]
            for (name, c) in s.perAdapter { per[name] = .init(waiting: c.waiting, running: c.running) }
            for (name, n) in e.dispatchedSinceStatus {
                per[name == s.model ? "" : name, default: .init()].waiting += n
            }
            var running: [RequestInfo] = []
            var pinned = 0.0
            if includeRequests {
                for r in s.requests {
                    let remaining = max(0, r.maxTokens - r.generated)
                    let seconds = Double(remaining) * s.decodeStepSeconds
                    // Only running requests with enough left to repay a move are candidates (a move stalls a request
                    // for about a decode step or more); the rest is work that stays.
                    if let serial = flights.withLock({ $0[r.id]?.serial }), r.running, remaining >= options.migrationMinRemainingTokens {
                        running.append(RequestInfo(id: serial, adapter: r.model, tokens: r.tokens,
                                                   kvBlocks: (r.computed + s.blockSize - 1) / s.blockSize,
                                                   remainingEstimate: remaining, remainingSeconds: seconds))
                    } else {
                        pinned += seconds
                    }
                }
            }
            return ReplicaLoad(id: i, healthy: e.healthy, draining: s.draining, kvBlocksTotal: s.kvBlocksTotal, kvBlocksFree: s.kvBlocksFree,
                               blockSize: s.blockSize, adapterSlots: s.adapterSlots, residentAdapters: Set(s.residentAdapters),
                               perAdapter: per, decodeStepSeconds: s.decodeStepSeconds, mergedCostFactor: s.mergedFactor,
                               maxBatch: s.maxBatch, defaultAdapterLoadSeconds: s.adapterLoadSeconds, running: running,
                               pinnedWorkSeconds: pinned)
        }
    }

    /// The replica for a new request of `model`, among the healthy ones not excluded.
    func dispatch(model: String, promptTokens: Int, excluding: Set<Int>) -> Int? {
        let entries = replicas.snapshot
        let base = entries.compactMap(\.status).first?.model
        let adapter = model == base ? "" : model
        if !adapter.isEmpty { arrivals.withLock { $0.counts[adapter, default: 0] += 1 } }
        let candidates = loads(entries).filter {
            !excluding.contains($0.id) && (adapter.isEmpty || entries[$0.id].status?.adapters.contains(adapter) == true)
        }
        return policy.withLock { $0.choose(adapter: adapter, promptTokens: promptTokens, replicas: candidates) }
    }

    /// dLoRA's proactive placement: every `placementInterval`, the adapters' arrival rates (smoothed over
    /// the last intervals) place each adapter on replicas in proportion to its share; dispatch prefers them.
    func placementLoop() async {
        let seconds = Double(options.placementInterval.components.seconds) + Double(options.placementInterval.components.attoseconds) / 1e18
        while !Task.isCancelled {
            try? await Task.sleep(for: options.placementInterval)
            let rates = arrivals.withLock { a -> [String: Double] in
                var rates: [String: Double] = [:]
                for name in Set(a.counts.keys).union(a.rates.keys) {
                    let r = options.dloraDispatch.smoothedRate(previous: a.rates[name] ?? 0, arrivals: a.counts[name] ?? 0,
                                                               periodSeconds: seconds)
                    if r > 1e-3 { rates[name] = r }
                }
                a = ([:], rates)
                return rates
            }
            let current = loads(replicas.snapshot)
            guard !rates.isEmpty, !current.isEmpty else { continue }
            policy.withLock { p in
                guard var d = p as? DLoRAProactive else { return }
                d.updatePlacement(rates: rates, replicas: current)
                p = d
            }
        }
    }

    /// dLoRA's reactive migration: every interval, if the trigger fires, plan and carry out the moves.
    func migrationLoop(mode: MigrationMode) async {
        let trigger = MigrationTrigger(configuration: options.migrationConfig)
        let planner = MigrationPlanner(configuration: options.migrationConfig)
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(Int64(options.migrationConfig.periodSeconds * 1000)))
            let current = loads(replicas.snapshot, includeRequests: true)
            guard trigger.check(current) != nil else { continue }
            let plan = planner.plan(replicas: current)
            let bySerial = flights.withLock { f in Dictionary(f.values.map { ($0.serial, $0.id) }, uniquingKeysWith: { a, _ in a }) }
            await withTaskGroup(of: Void.self) { group in
                for move in plan.moves {
                    guard let id = bySerial[move.requestID] else { continue }
                    group.addTask { _ = await self.migrate(requestID: id, to: move.to, mode: mode) }
                }
            }
        }
    }

    // MARK: HTTP

    public func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: ErrorMiddleware())
        let health: @Sendable (Request, BasicRequestContext) async throws -> Response = { _, _ in
            guard self.replicas.healthyCount > 0 else { throw APIError(.serviceUnavailable, "no replica is healthy") }
            return Self.json(.ok, OpenAIWire.encode(HealthStatus()))
        }
        router.get("/health", use: health)
        // vLLM's liveness alias (SageMaker's /ping: GET and POST) and version.
        router.get("/ping", use: health)
        router.post("/ping", use: health)
        router.get("/version") { _, _ in Self.json(.ok, OpenAIWire.encode(VersionInfo())) }
        router.get("/metrics") { _, _ in
            let stored = (self.responseStore?.count ?? 0, self.responseStore?.storedBytes ?? 0)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: self.metrics.render(replicas: self.replicas.snapshot, stored: stored))))
        }
        router.get("/v1/models") { request, _ in
            try Self.authorize(request, key: self.options.apiKey)
            return Self.json(.ok, OpenAIWire.encode(ModelList(data: try self.modelCards())))
        }
        router.get("/v1/models/**") { request, context in
            try Self.authorize(request, key: self.options.apiKey)
            return try modelResponse(try self.modelCards(), id: context.parameters.getCatchAll().joined(separator: "/"))
        }
        router.post("/v1/completions") { request, _ in try await self.generate(request, endpoint: "completions") }
        router.post("/v1/chat/completions") { request, _ in try await self.generate(request, endpoint: "chat") }
        router.post("/v1/responses") { request, _ in
            do {
                return try await self.generate(request, endpoint: "responses")
            } catch let e as APIError {
                throw e.inResponsesTerms  // an error about a chat parameter names the Responses body's
            }
        }
        addStoredResponseRoutes(to: router, store: responseStore) { try Self.authorize($0, key: self.options.apiKey) }
        // vLLM's tokenizer endpoints: every replica has the same tokenizer, so any healthy one that serves the model answers.
        router.post("/tokenize") { request, _ in try await self.askOne(request, path: "/tokenize") }
        router.post("/detokenize") { request, _ in try await self.askOne(request, path: "/detokenize") }
        router.post("/v1/load_lora_adapter") { request, _ in try await self.fanOut(request, path: Self.loadPath) }
        router.post("/v1/unload_lora_adapter") { request, _ in try await self.fanOut(request, path: Self.unloadPath) }
        router.post("/admin/migrate") { request, _ in try await self.adminMigrate(request) }
        router.get("/admin/status") { request, _ in
            try self.authorizeAdmin(request)
            return self.clusterStatus()
        }
        return router
    }

    public func makeApplication(configuration: ApplicationConfiguration = .init(), logger: Logger? = nil,
                                onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }) -> some ApplicationProtocol {
        makeHardenedApplication(router: makeRouter(), limits: options.http, maxBodyBytes: options.maxBodyBytes,
                                configuration: configuration, logger: logger, onServerRunning: onServerRunning)
    }

    static func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func authorize(_ request: Request, key: String?) throws {
        guard let key else { return }
        let header = request.headers[.authorization] ?? ""
        guard BearerKey.matches(header: header, key: key) else {
            throw APIError(.unauthorized, header.isEmpty ? "missing API key (Authorization: Bearer …)" : "invalid API key", code: "invalid_api_key")
        }
    }

    func authorizeAdmin(_ request: Request) throws {
        guard let key = options.adminKey else { throw APIError(.notFound, "admin endpoints are disabled on this router (start it with --admin-key)") }
        try Self.authorize(request, key: key)
    }

    func collect(_ request: inout Request) async throws -> ByteBuffer {
        do {
            return try await request.collectBody(upTo: options.maxBodyBytes)
        } catch let e as any HTTPResponseError where e.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "the request body is larger than \(options.maxBodyBytes) bytes")
        }
    }

    /// The base model and every adapter some healthy replica serves.
    private func modelCards() throws -> [ModelCard] {
        let statuses = replicas.snapshot.filter { $0.healthy && !$0.gone }.compactMap(\.status)
        guard let first = statuses.first else { throw APIError(.serviceUnavailable, "no replica is healthy") }
        var names = Set<String>()
        for s in statuses { names.formUnion(s.adapters) }
        names.remove(first.model)
        let maxLen = statuses.map(\.maxModelLen).min() ?? first.maxModelLen
        let cards = [ModelCard(id: first.model, created: created, root: first.model, parent: nil, maxModelLen: maxLen)]
            + names.sorted().map { ModelCard(id: $0, created: created, root: $0, parent: first.model, maxModelLen: maxLen) }
        return cards
    }

    private func clusterStatus() -> Response {
        struct Entry: Encodable {
            let replica: Int
            let url: String
            let healthy: Bool
            let status: ReplicaStatus?
        }
        let entries = replicas.snapshot.enumerated().filter { !$0.element.gone }.map {
            Entry(replica: $0.offset, url: $0.element.url, healthy: $0.element.healthy, status: $0.element.status)
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: ClusterWire.encode(entries))))
    }

    /// A request any replica serving its `model` answers alike (the tokenizer endpoints): the first healthy replica that
    /// serves the model and answers, its refusal (4xx) as it gave it; a replica that cannot be reached is marked down and
    /// the next one asked. Replicas that do not serve the model are asked last, so a model none serves gets a replica's
    /// own 404 (before, only the first replica was asked, and a model only another one serves was a 404 here while its
    /// completions worked).
    private func askOne(_ request: Request, path: String) async throws -> Response {
        try Self.authorize(request, key: options.apiKey)
        var request = request
        let body = Data(buffer: try await collect(&request))
        let model = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["model"] as? String
        let entries = replicas.snapshot
        let healthy = replicas.healthyIndices
        let serving = healthy.filter { i in
            guard let model else { return true }
            return entries[i].status.map { $0.model == model || $0.adapters.contains(model) } ?? false
        }
        let targets = serving + healthy.filter { !serving.contains($0) }
        for i in targets {
            do {
                let data = try await replicas.client(i).call(path, method: .POST, body: body, key: options.apiKey, timeout: .seconds(60))
                return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
            } catch let e as ReplicaClient.Rejected {
                guard e.status >= 500 else { return Self.rejection(e) }  // the request's fault: the same from every replica
            } catch {
                replicas.markDown(i)
            }
        }
        throw APIError(.serviceUnavailable, "no replica is healthy")
    }

    private func adminMigrate(_ request: Request) async throws -> Response {
        try authorizeAdmin(request)
        var request = request
        let body = try await collect(&request)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw APIError(.badRequest, "the body must be a JSON object {\"request\", \"to\", \"mode\"}")
        }
        guard let id = object["request"] as? String else { throw APIError.invalid("request", "'request' (the response id) is required") }
        guard let to = object["to"] as? Int else { throw APIError.invalid("to", "'to' (a replica index) is required") }
        let modeName = object["mode"] as? String ?? (options.migration ?? .kv).rawValue
        guard let mode = MigrationMode(rawValue: modeName) else { throw APIError.invalid("mode", "mode must be 'kv' or 'recompute'") }
        let result = await migrate(requestID: id, to: to, mode: mode)
        switch result {
        case .moved(let stall, let blocks):
            return Self.json(.ok, "{\"moved\":true,\"stall_seconds\":\(stall),\"copied_blocks\":\(blocks)}")
        case .notMoved(let why):
            throw APIError(.conflict, "not moved: \(why)", code: "not_moved")
        }
    }

    // MARK: Generation

    private func newID(_ prefix: String) -> (String, UInt64) {
        let n = serial.withLock { s -> UInt64 in
            s += 1
            return s
        }
        return (prefix + String(UInt64(created) << 20 ^ n, radix: 16) + ResponseStore.unguessable(prefix), n)
    }

    /// A generation request, counted in `dlora_router_requests_total` by the status it is answered with: an error
    /// thrown before the response starts (the router's own — a key, a body, no replica, every replica full — or a
    /// collected answer's failure) is counted here, a replica's refusal and a relayed outcome where they are known
    /// (before, the router's own errors were not counted at all: a probe's 503s left no series).
    private func generate(_ request: Request, endpoint: String) async throws -> Response {
        do {
            return try await startGeneration(request, endpoint: endpoint)
        } catch let e as any HTTPResponseError {
            metrics.request(status: String(e.status.code))
            throw e
        }
    }

    private func startGeneration(_ request: Request, endpoint: String) async throws -> Response {
        try Self.authorize(request, key: options.apiKey)
        var request = request
        var body = try await collect(&request)
        // A Responses body runs as the chat request it translates to (ResponsesRequest), answered in its own shapes.
        var responses: ResponsesEcho?
        var endpoint = endpoint
        if endpoint == "responses" {
            let translated: ResponsesRequest
            do {
                translated = try ResponsesRequest.translate(Data(buffer: body), store: responseStore)
            } catch {
                throw APIError(error)
            }
            (body, responses, endpoint) = (ByteBuffer(data: translated.chatBody), translated.echo, "chat")
        }
        // The router reads only what it needs to carry the request; the replica parses and checks all of it. A body
        // that is not one well-formed JSON object is refused here in the replica's words (`RequestJSON`).
        _ = try RequestJSON.object(body)
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw APIError(.badRequest, "the body must be a JSON object")
        }
        guard let model = object["model"] as? String else {
            // The replica's words (JSONFields.string): a model of another type is not a missing one.
            throw APIError.invalid("model", object["model"] == nil || object["model"] is NSNull ? "'model' is required" : "'model' must be a string")
        }
        let stream = object["stream"] as? Bool ?? false
        let includeUsage = ((object["stream_options"] as? [String: Any])?["include_usage"] as? Bool) ?? false
        let continuousUsage = includeUsage && ((object["stream_options"] as? [String: Any])?["continuous_usage_stats"] as? Bool) ?? false
        let statuses = replicas.snapshot.filter { $0.healthy && !$0.gone }.compactMap(\.status)
        guard !statuses.isEmpty else {
            var e = APIError(.serviceUnavailable, "no replica is healthy")
            e.retryAfter = 1
            throw e
        }
        guard statuses.contains(where: { $0.model == model || $0.adapters.contains(model) }) else {
            throw APIError(.notFound, "the model '\(String(model.prefix(256)))' does not exist", param: "model", code: "model_not_found")
        }
        let chat = endpoint == "chat"
        let (id, number) = newID(responses != nil ? "resp_" : chat ? "chatcmpl-" : "cmpl-")
        // A request with n > 1 choices runs as n requests, each dispatched, migrated and resumed on its own (the
        // replica checks n; a value it would refuse goes to it as one request, for its 400).
        let n = (object["n"] as? Int).flatMap { (2...128).contains($0) ? $0 : nil } ?? 1
        // A completions batch (an array of prompts: strings, or token-id arrays) likewise runs one flight per prompt
        // and choice, choice index prompt · n + choice.
        let prompts: Int = {
            guard endpoint == "completions", let items = object["prompt"] as? [Any], (2...256).contains(items.count) else { return 1 }
            return items.allSatisfy({ $0 is String }) || items.allSatisfy({ $0 is [Any] }) ? items.count : 1
        }()
        let bodyText = String(buffer: body)
        var started: [Flight] = []
        var startedAttempts: [Attempt] = []
        for k in 0..<(prompts * n) {
            let flight = Flight(id: prompts * n == 1 ? id : "\(id)-\(k)", serial: k == 0 ? number : newID("").1, endpoint: endpoint,
                                body: bodyText, model: model, choice: n == 1 ? nil : k % n, prompt: prompts == 1 ? nil : k / n)
            do {
                startedAttempts.append(try await startAttempt(flight, preferred: nil, migration: nil, excluding: []))
            } catch let e as ReplicaClient.Rejected {
                // A replica's refusal of the request itself (a 4xx not about its capacity) is the client's answer, as the
                // replica gave it; the choices already started are given up (the replicas cancel them).
                for a in startedAttempts { a.abandon() }
                metrics.request(status: String(e.status))
                var refused = Self.rejection(e)
                if responses != nil { refused.body = .init(byteBuffer: ByteBuffer(bytes: Self.inResponsesTerms(e.body))) }
                return refused
            } catch {
                for a in startedAttempts { a.abandon() }
                throw error
            }
            started.append(flight)
        }
        let flights = started, attempts = startedAttempts
        self.flights.withLock { f in for flight in flights { f[flight.id] = flight } }
        let forget = { @Sendable in self.flights.withLock { f in for flight in flights { f[flight.id] = nil } } }
        let call = RouterCall(router: self, id: id, flights: flights, chat: chat, created: Int(Date().timeIntervalSince1970),
                              tools: chat ? ToolCallMode.from(body: object) : nil, responses: responses)
        // Which replica the request was dispatched to (its index in the router's list, as the dispatch metrics'
        // `replica` label; the first choice's): for logs, load tests, and replaying the router's decisions in
        // `dlora simulate`.
        let replicaHeader = String(attempts[0].replica)
        if stream {
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", .dloraReplica: replicaHeader],
                            body: .init { writer in
                                defer { forget() }
                                try await ClientConnection.cancellingOnDisconnect {
                                    try await call.stream(first: attempts, includeUsage: includeUsage, continuousUsage: continuousUsage, writer: &writer)
                                }
                                try await writer.finish(nil)
                            })
        }
        defer { forget() }
        ClientConnection.current?.armHalfCloseProbe()
        let text = try await ClientConnection.cancellingOnDisconnect { try await call.collect(first: attempts) }
        var response = Self.json(.ok, text)
        response.headers[.dloraReplica] = replicaHeader
        return response
    }
}

extension ClusterRouter {
    /// A replica's error body about a `/v1/responses` request (run as chat), in the Responses body's words.
    static func inResponsesTerms(_ body: Data) -> Data {
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              var error = object["error"] as? [String: Any], let message = error["message"] as? String else { return body }
        let (param, renamed) = ResponsesRequest.rename(param: error["param"] as? String, message: message)
        error["message"] = renamed
        error["param"] = param ?? NSNull()
        return (try? JSONSerialization.data(withJSONObject: ["error": error], options: [.sortedKeys, .withoutEscapingSlashes])) ?? body
    }
}

extension HTTPField.Name {
    /// The router's response header naming the replica a completion was dispatched to.
    static let dloraReplica = HTTPField.Name("x-dlora-replica")!
}
