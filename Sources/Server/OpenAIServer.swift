import Adapters
import Engine
import Foundation
import Hummingbird
import HTTPFront
import Logging
import NIOCore
import ServingAPI
import Scheduling
import Models
import NIOHTTP1
import ServiceLifecycle
import Tokenizers

/// Limits and keys of a server.
public struct ServerOptions: Sendable {
    /// The name the base model is served under (`model` in requests, `id` in /v1/models).
    public var modelName: String
    /// Bearer key required on /v1/* (none: open).
    public var apiKey: String?
    /// Bearer key for loading and unloading adapters (none: those endpoints are disabled).
    public var adminKey: String?
    /// Request bodies larger than this are refused with 413.
    public var maxBodyBytes = 1 << 20
    /// Requests admitted (queued or running) at most; more are refused with 429.
    public var maxQueue = 256
    /// Prompt tokens at most (nil: the context less one).
    public var maxPromptTokens: Int?
    /// `max_tokens` at most (nil: the context).
    public var maxTokensLimit: Int?
    /// `max_tokens` of a completion that names none (OpenAI's default); chat defaults to what the context leaves.
    public var defaultCompletionTokens = 16
    /// On shutdown, running requests get this long to finish before they are cancelled.
    public var shutdownDeadline: Duration = .seconds(30)
    /// Connection timeouts and the connection cap (`HTTPLimits`).
    public var http = HTTPLimits()
    /// Bytes of stored Responses answers kept at most (`store`, `previous_response_id`; 0: none are stored).
    public var responsesStoreBytes = 64 << 20

    public init(modelName: String) { self.modelName = modelName }
}

/// The OpenAI-compatible API over one engine loop: completions and chat (streamed or not), models, adapter
/// loading and unloading, health and Prometheus metrics. Every failure is an OpenAI-style JSON error.
public final class OpenAIServer: Sendable {
    public let engine: EngineLoop
    public let tokenizer: Tokenizer
    public let adapters: AdapterRegistry?
    public let options: ServerOptions
    public let metrics = ServerMetrics()
    /// Sequence length one request may reach (prompt + generated).
    public let contextLimit: Int
    private let created = Int(Date().timeIntervalSince1970)
    private let state = Locked(State())
    let control = Locked(ReplicaControlState())
    /// This process's identity in the router's status polls (`ReplicaStatus.instance`): random, so a restart on the
    /// same address is told apart from the process before it.
    let instance = UUID().uuidString
    let prompts: PromptTokenizer
    /// The Responses answers this server keeps (nil: `responsesStoreBytes` 0).
    public let responseStore: ResponseStore?

    private struct State {
        var inFlight = 0
        var draining = false
        var drainCutShort = false
        var nextID: UInt64 = 0
    }

    public init(engine: EngineLoop, tokenizer: Tokenizer, adapters: AdapterRegistry?, options: ServerOptions) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.options = options
        contextLimit = engine.contextLimit
        prompts = PromptTokenizer(tokenizer)
        responseStore = options.responsesStoreBytes > 0 ? ResponseStore(capacityBytes: options.responsesStoreBytes) : nil
    }

    /// Requests admitted and not yet finished.
    public var inFlight: Int { state.withLock { $0.inFlight } }

    /// The HTTP server for this API (`makeHardenedApplication`: timeouts, framing, limits, connection cap).
    public func makeApplication(configuration: ApplicationConfiguration = .init(), logger: Logger? = nil,
                                onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
        -> some ApplicationProtocol {
        var limits = options.http
        // K/V frames of a migration: at most the whole cache (plus the frame head), only on the staging path.
        limits.largeBodyPaths = ["/internal/migrations/", "/internal/generate"]
        limits.largeBodyBytes = engine.snapshot.kvBlocksTotal * engine.floatsPerBlock * 4 + KVFrame.maxHeadBytes + 4
        return makeHardenedApplication(router: makeRouter(), limits: limits, maxBodyBytes: options.maxBodyBytes,
                                configuration: configuration, logger: logger, onServerRunning: onServerRunning)
    }

    /// The router with every endpoint.
    public func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: ErrorMiddleware())
        router.get("/health") { _, _ in try self.health() }
        // vLLM's liveness alias (SageMaker's /ping: GET and POST) and version.
        router.get("/ping") { _, _ in try self.health() }
        router.post("/ping") { _, _ in try self.health() }
        router.get("/version") { _, _ in self.json(.ok, OpenAIWire.encode(VersionInfo())) }
        router.get("/metrics") { _, _ in self.renderMetrics() }
        router.get("/v1/models") { request, _ in
            try self.authorize(request, key: self.options.apiKey)
            return self.json(.ok, OpenAIWire.encode(ModelList(data: self.modelCards())))
        }
        // OpenAI's models.retrieve; the name may hold slashes.
        router.get("/v1/models/**") { request, context in
            try self.authorize(request, key: self.options.apiKey)
            return try modelResponse(self.modelCards(), id: context.parameters.getCatchAll().joined(separator: "/"))
        }
        router.post("/v1/completions") { request, _ in try await self.generate(request, chat: false) }
        router.post("/v1/chat/completions") { request, _ in try await self.generate(request, chat: true) }
        router.post("/v1/responses") { request, _ in
            do {
                return try await self.generate(request, chat: true, responses: true)
            } catch let e as APIError {
                throw e.inResponsesTerms  // an error about a chat parameter names the Responses body's
            }
        }
        addStoredResponseRoutes(to: router, store: responseStore) { try self.authorize($0, key: self.options.apiKey) }
        router.post("/tokenize") { request, _ in try await self.tokenize(request) }
        router.post("/detokenize") { request, _ in try await self.detokenize(request) }
        router.post("/v1/load_lora_adapter") { request, _ in try await self.loadAdapter(request) }
        router.post("/v1/unload_lora_adapter") { request, _ in try await self.unloadAdapter(request) }
        addReplicaControl(to: router)
        return router
    }

    // MARK: Shutdown

    /// Stops admitting requests (503), lets running ones finish for up to `options.shutdownDeadline`, then
    /// cancels the rest (their clients get an error, their KV blocks and adapter references are freed).
    public func drain() async {
        state.withLock { $0.draining = true }
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: options.shutdownDeadline)
        while inFlight > 0 && clock.now < end && !state.withLock({ $0.drainCutShort }) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        guard inFlight > 0 else { return }
        engine.cancelAll()
        // Handlers see their streams end and answer; give them a moment.
        let grace = clock.now.advanced(by: .seconds(5))
        while inFlight > 0 && clock.now < grace {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    public var isDraining: Bool { state.withLock { $0.draining } }

    /// Ends a drain's wait for running requests now (a second SIGTERM): they are cancelled as at its deadline.
    public func endDrainNow() { state.withLock { $0.drainCutShort = true } }

    // MARK: Endpoints

    private func health() throws -> Response {
        guard !isDraining else { throw APIError(.serviceUnavailable, "the server is shutting down") }
        return json(.ok, OpenAIWire.encode(HealthStatus()))
    }

    private func renderMetrics() -> Response {
        let text = metrics.render(engine.snapshot, modelName: options.modelName, inFlight: inFlight, hostCache: adapters?.hostBytes ?? 0,
                                  fileLoads: (adapters?.loadAttempts ?? 0, adapters?.loadSeconds ?? 0),
                                  stored: (responseStore?.count ?? 0, responseStore?.storedBytes ?? 0))
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// The base model, then every adapter.
    private func modelCards() -> [ModelCard] {
        func card(_ id: String, parent: String?) -> ModelCard {
            ModelCard(id: id, created: created, root: id, parent: parent, maxModelLen: contextLimit)
        }
        var data = [card(options.modelName, parent: nil)]
        for name in adapters?.available() ?? [] where name != options.modelName {
            data.append(card(name, parent: options.modelName))
        }
        return data
    }

    private func loadAdapter(_ request: Request) async throws -> Response {
        let (registry, fields) = try await adminRequest(request)
        guard let name = try fields.string("lora_name") else { throw APIError.invalid("lora_name", "'lora_name' is required") }
        guard let path = try fields.string("lora_path") else { throw APIError.invalid("lora_path", "'lora_path' is required") }
        for key in fields.fields.keys where !["lora_name", "lora_path", "lora_int_id", "load_inplace"].contains(key) {
            throw APIError.invalid(key, "unrecognized request argument '\(JSONFields.printable(key))'")
        }
        guard name != options.modelName else { throw APIError.invalid("lora_name", "'\(name)' is the base model's name") }
        do { try AdapterRegistry.checkName(name) } catch { throw APIError.invalid("lora_name", "\(error)") }
        let replace = try fields.bool("load_inplace") ?? false
        let previous = registry.id(for: name)
        // The registry loads and validates the files before it serves them under the name; on any failure
        // nothing changes (with load_inplace, the earlier version keeps serving).
        do {
            try await registry.registerAsync(name: name, relativePath: path, replace: replace)
        } catch let e as AdapterRegistry.NameTaken {
            throw APIError.invalid("lora_name", e.description, code: "adapter_exists")
        } catch {
            throw APIError.invalid("lora_path", "\(error)")
        }
        // Requests of the old version finish on it; the engine drops it after them.
        if let previous, previous != registry.id(for: name) { engine.retire(adapter: previous) }
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
    }

    private func unloadAdapter(_ request: Request) async throws -> Response {
        let (registry, fields) = try await adminRequest(request)
        guard let name = try fields.string("lora_name") else { throw APIError.invalid("lora_name", "'lora_name' is required") }
        for key in fields.fields.keys where !["lora_name", "lora_int_id"].contains(key) {
            throw APIError.invalid(key, "unrecognized request argument '\(JSONFields.printable(key))'")
        }
        guard registry.serves(name) else {
            throw APIError(.notFound, "the adapter '\(JSONFields.printable(name))' is not loaded", param: "lora_name", code: "model_not_found")
        }
        let previous = registry.id(for: name)
        registry.unregister(name)
        // In-flight requests keep it until they finish; then the engine drops its weights and residency.
        if let previous { engine.retire(adapter: previous) }
        metrics.forget(model: name)
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
    }

    /// Checks the admin key and parses an adapter-management body.
    private func adminRequest(_ request: Request) async throws -> (AdapterRegistry, JSONFields) {
        guard let adminKey = options.adminKey, let registry = adapters else {
            throw APIError(.notFound, "adapter loading is disabled on this server (start it with --adapters and --admin-key)")
        }
        try authorize(request, key: adminKey)
        var request = request
        let body = try await collect(&request)
        return (registry, try JSONFields(members: JSONFields.parseObject(body)))
    }

    // MARK: Generation

    /// One admitted request: holds its place in the queue until it is released (explicitly or when dropped,
    /// e.g. when a response body is never written because the client left first).
    final class Admission: Sendable {
        let server: OpenAIServer
        init(_ server: OpenAIServer) { self.server = server }
        deinit { server.state.withLock { $0.inFlight -= 1 } }
    }

    func admit() throws -> Admission { try admit(count: 1)[0] }

    /// Queue places for `count` sequences at once (a request's prompts × n), all or none: a request never runs part of
    /// its choices. A count the queue could never hold (above `--max-queue`) is the request's own error (400), not the
    /// server's load (429, worth retrying).
    func admit(count: Int, parameter: String? = nil) throws -> [Admission] {
        try checkSequences(count, parameter: parameter)
        try state.withLock { s in
            guard !s.draining else {
                var e = APIError(.serviceUnavailable, "the server is shutting down")
                e.retryAfter = 5
                throw e
            }
            guard s.inFlight + count <= options.maxQueue else {
                var e = APIError(.tooManyRequests, "the server's queue is full (\(options.maxQueue) sequences: prompts × n per request); retry later", code: "queue_full")
                e.retryAfter = 1
                throw e
            }
            s.inFlight += count
        }
        return (0..<count).map { _ in Admission(self) }
    }

    /// A request of `count` sequences (prompts × n) that the queue could never hold is refused as the request's own
    /// error (400). `/internal/generate` checks it too, for the whole request each part belongs to: the router splits
    /// such a request into one generation per prompt and choice, and without the check it ran there (spread over the
    /// replicas) although each replica refuses it on `/v1`, or failed part-way with a retryable 503.
    func checkSequences(_ count: Int, parameter: String?) throws {
        guard count <= options.maxQueue else {
            throw APIError.invalid(parameter, "this request asks for \(count) sequences (prompts × n); this server queues at most "
                                   + "\(options.maxQueue) at a time (--max-queue)")
        }
    }

    private func newID(_ prefix: String) -> String {
        let n = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        return prefix + String(UInt64(created) << 20 ^ n, radix: 16) + ResponseStore.unguessable(prefix)
    }

    /// `/v1/completions` and `/v1/chat/completions`; `/v1/responses` (`responses`) as the chat request its body
    /// translates to (ResponsesRequest), answered in the Responses API's shapes.
    private func generate(_ request: Request, chat: Bool, responses: Bool = false) async throws -> Response {
        try authorize(request, key: options.apiKey)
        var request = request
        var body = try await collect(&request)
        let arrival = DispatchTime.now().uptimeNanoseconds
        var echo: ResponsesEcho?
        if responses {
            do {
                let translated = try ResponsesRequest.translate(Data(buffer: body), store: responseStore)
                (body, echo) = (ByteBuffer(data: translated.chatBody), translated.echo)
            } catch {
                throw APIError(error)
            }
        }
        // Every answer counts in dlora_requests_total, an invalid request's too (its model may be unknown).
        let parsed: GenerationRequest
        do {
            parsed = try GenerationRequest.parse(body, chat: chat)
        } catch let e as APIError {
            metrics.request(model: "_unknown", status: String(e.status.code))
            throw e
        }
        let resolved = try await resolveModel(parsed.model)
        let adapter: LoRAWeights?
        do {
            adapter = try restrict(resolved, to: parsed.moleExperts)
        } catch let e as APIError {
            metrics.request(model: parsed.model, status: String(e.status.code))
            throw e
        }
        let model = parsed.model
        do {
            return try await run(parsed, adapter: adapter, request: request, arrival: arrival, responses: echo)
        } catch let e as APIError {
            metrics.request(model: model, status: String(e.status.code))
            throw e
        }
    }

    /// A MoLE composition restricted to the experts a request names (`mole_experts`); a 400 when the model is
    /// not a MoLE composition or an expert is not one of its own.
    func restrict(_ adapter: LoRAWeights?, to experts: [String]?) throws -> LoRAWeights? {
        guard let experts else { return adapter }
        guard let adapter, let gating = adapter.gating else {
            throw APIError.invalid("mole_experts", "mole_experts applies only to a MoLE composition; '\(adapter?.name ?? options.modelName)' is not one")
        }
        do {
            return adapter.restricted(toExperts: try MoLEComposition.mask(experts, of: gating, adapter: adapter.name))
        } catch let e as AdapterError {
            throw APIError.invalid("mole_experts", e.problem)
        }
    }

    /// The adapter a request names (nil: the base model), loaded from disk on first use, off the engine thread.
    func resolveModel(_ name: String) async throws -> LoRAWeights? {
        guard name != options.modelName else { return nil }
        guard let registry = adapters, registry.serves(name) else {
            metrics.request(model: "_unknown", status: "404")
            throw APIError(.notFound, "the model '\(JSONFields.printable(name))' does not exist", param: "model", code: "model_not_found")
        }
        do {
            return try await registry.loadAsync(name)
        } catch {
            metrics.request(model: name, status: "400")
            throw APIError.invalid("model", "the adapter '\(name)' failed to load: \(error)", code: "adapter_load_failed")
        }
    }

    /// The prompt's tokens and the sampling parameters of a parsed request, checked against this server's
    /// limits (text too long by its byte length alone is refused before tokenizing); `max_tokens` filled in.
    func prepare(_ parsed: GenerationRequest, input: GenerationRequest.Input, adapter: LoRAWeights?) async throws -> (prompt: [Int], params: SamplingParams) {
        let prompt: [Int]
        let promptParam = parsed.isChat ? "messages" : "prompt"
        let maxPrompt = min(options.maxPromptTokens ?? contextLimit - 1, contextLimit - 1)
        func checkBytes(_ text: String) throws {
            let atLeast = prompts.minimumTokens(bytes: text.utf8.count)
            guard atLeast <= maxPrompt else {
                throw APIError.invalid(promptParam, "the prompt has at least \(atLeast) tokens (\(text.utf8.count) bytes); this server takes at most \(maxPrompt)",
                                       code: "context_length_exceeded")
            }
        }
        func tokens(_ text: String, addSpecial: Bool) async throws -> [Int] {
            try checkBytes(text)
            return await prompts.encode(text, addSpecial: addSpecial)
        }
        switch input {
        case .text(let text):
            guard !text.isEmpty else { throw APIError.invalid("prompt", "the prompt is empty") }
            prompt = try await tokens(text, addSpecial: true)
        case .tokens(let ids):
            prompt = ids
        case .messages(let messages):
            let rendered = try renderChat(messages, parsed.chat)
            // Control tokens written in a message are text: a user cannot forge a turn of another role.
            try checkBytes(rendered.text)
            prompt = await prompts.encode(rendered)
        }
        guard !prompt.isEmpty else { throw APIError.invalid(promptParam, "the prompt is empty") }
        guard prompt.count <= maxPrompt else {
            throw APIError.invalid(promptParam, "the prompt has \(prompt.count) tokens; this server takes at most \(maxPrompt)",
                                   code: "context_length_exceeded")
        }
        let tokenLimit = min(options.maxTokensLimit ?? contextLimit, contextLimit)
        // A sequence beside a large adapter in a small budget holds fewer tokens than the context (the adapter's blocks
        // come out of the same budget): an explicit max_tokens past that is refused like one past the context, not cut
        // short with finish_reason "length" (a probe got 68 of 100 tokens); a defaulted one stops there.
        let room = min(contextLimit, engine.lengthLimit(adapter: adapter))
        // A prompt that fits the context but not beside the adapter (whose weights take part of the budget) is refused
        // for that, not for a min_tokens the client never sent.
        if prompt.count >= room && room < contextLimit {
            throw APIError.invalid(promptParam, room == 0
                ? "adapter '\(parsed.model)' takes this server's whole KV budget, so no request can run beside it"
                : "beside adapter '\(parsed.model)' a sequence holds at most \(room) tokens in this server's KV budget (the adapter's "
                    + "weights take the rest); the prompt has \(prompt.count)", code: "context_length_exceeded")
        }
        var params = parsed.params
        if params.minTokens > min(room - prompt.count, tokenLimit) {
            throw APIError.invalid("min_tokens", "min_tokens (\(params.minTokens)) does not fit in the context after the prompt")
        }
        if let m = params.maxTokens {
            let name = parsed.maxTokensParam
            guard m <= tokenLimit else {
                throw APIError.invalid(name, "\(name) is \(m); this server allows at most \(tokenLimit)", code: "context_length_exceeded")
            }
            guard prompt.count + m <= contextLimit else {
                throw APIError.invalid(name, "this model's maximum context length is \(contextLimit) tokens; the request asks for "
                                       + "\(prompt.count + m) (\(prompt.count) in the prompt, \(m) to generate)", code: "context_length_exceeded")
            }
            guard prompt.count + m <= room || prompt.count >= room else {
                throw APIError.invalid(name, "beside adapter '\(parsed.model)' a sequence holds at most \(room) tokens in this server's KV budget "
                                       + "(the adapter's weights take the rest); the request asks for \(prompt.count + m) (\(prompt.count) in the "
                                       + "prompt, \(m) to generate)", code: "context_length_exceeded")
            }
        } else {
            let left = max(1, room - prompt.count)
            // At least min_tokens, where they fit.
            params.maxTokens = max(min(parsed.isChat ? left : options.defaultCompletionTokens, left, tokenLimit),
                                   min(params.minTokens, left, tokenLimit))
        }
        return (prompt, params)
    }

    private func run(_ parsed: GenerationRequest, adapter: LoRAWeights?, request: Request, arrival: UInt64,
                     responses: ResponsesEcho? = nil) async throws -> Response {
        let promptParam = parsed.isChat ? "messages" : "prompt"
        let id = newID(responses != nil ? "resp_" : parsed.isChat ? "chatcmpl-" : "cmpl-")
        // Every prompt checked before any runs.
        var prepared: [(prompt: [Int], params: SamplingParams)] = []
        for input in parsed.inputs { prepared.append(try await prepare(parsed, input: input, adapter: adapter)) }
        // One engine request per prompt and choice, each with its own queue place (choice index: prompt · n + choice);
        // a seeded request's choice i samples with seed + i (so choice 0 is what n = 1 gives), an unseeded one's with
        // a seed of its own.
        var calls: [Call] = []
        var streams: [RequestStream] = []
        var admissions = try admit(count: parsed.inputs.count * parsed.n, parameter: parsed.n > 1 ? "n" : promptParam)
        for (k, (input, (prompt, params))) in zip(parsed.inputs, prepared).enumerated() {
            let echo = parsed.echo ? (echoText(input, prompt: prompt), prompt[0]) : nil
            for i in 0..<parsed.n {
                var p = params
                p.seed = params.seed.map { $0 &+ UInt64(i) }
                let admission = admissions.removeLast()
                let ticket: Scheduling.RequestID
                let events: RequestStream
                do {
                    (ticket, events) = try engine.submit(prompt: prompt, params: p, adapter: adapter)
                } catch {
                    throw APIError.invalid(Self.parameter(of: error, otherwise: promptParam), "\(error)")
                }
                calls.append(Call(server: self, model: parsed.model, chat: parsed.isChat, id: id, index: k * parsed.n + i,
                                  countsPrompt: i == 0, promptTokens: prompt.count, arrival: arrival, ticket: ticket, admission: admission,
                                  logprobs: params.logprobs != nil, echo: echo))
                streams.append(events)
            }
        }
        let response = Calls(calls, streams, tools: parsed.tools, responses: responses)
        // A client that leaves cancels the request: the connection's close is watched beside the request
        // (ClientConnection), not by reading its inbound stream, so keep-alive, pipelining and a half-close
        // still work (docs/design/server.md, "Disconnects").
        if parsed.stream {
            let includeUsage = parsed.includeUsage, continuousUsage = parsed.continuousUsage
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                            body: .init { writer in
                                try await ClientConnection.cancellingOnDisconnect {
                                    try await response.stream(includeUsage: includeUsage, continuousUsage: continuousUsage, writer: &writer)
                                }
                                try await writer.finish(nil)
                            })
        }
        ClientConnection.current?.armHalfCloseProbe()
        let body = try await ClientConnection.cancellingOnDisconnect { try await response.completion() }
        return json(.ok, body)
    }

    // MARK: Helpers

    /// A conversation through the model's chat template (control tokens typed in a message marked as text); a template
    /// error is a 400 about `messages`.
    func renderChat(_ messages: [ChatMessage], _ options: GenerationRequest.ChatOptions) throws -> RenderedChat {
        do {
            return try tokenizer.chatTemplate.renderMarked(messages: messages, addGenerationPrompt: options.addGenerationPrompt,
                                                           continueFinalMessage: options.continueFinalMessage,
                                                           arguments: options.templateArguments)
        } catch {
            throw APIError.invalid("messages", "\(error)")
        }
    }

    /// The parameter a refused submit names: a sampling parameter's own (nil when the error names none), else
    /// `otherwise` (the prompt, or the tokens a resumed request brought).
    static func parameter(of error: any Error, otherwise: String) -> String? {
        if let e = error as? SamplingError { return e.parameter }
        return otherwise
    }

    func authorize(_ request: Request, key: String?) throws {
        guard let key else { return }
        let header = request.headers[.authorization] ?? ""
        guard BearerKey.matches(header: header, key: key) else {
            throw APIError(.unauthorized, header.isEmpty ? "missing API key (Authorization: Bearer …)" : "invalid API key",
                           code: "invalid_api_key")
        }
    }

    func collect(_ request: inout Request) async throws -> ByteBuffer {
        do {
            return try await request.collectBody(upTo: options.maxBodyBytes)
        } catch let e as any HTTPResponseError where e.status == .contentTooLarge {
            throw APIError(.contentTooLarge, "the request body is larger than \(options.maxBodyBytes) bytes")
        }
    }

    func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Drains the server when a graceful shutdown starts (SIGTERM/SIGINT through swift-service-lifecycle).
/// Listed after the HTTP application in the service group, it is shut down first: it stops admitting work
/// and waits for running requests (up to the deadline) before the application stops listening.
public struct DrainService: Service {
    let server: OpenAIServer

    public init(server: OpenAIServer) { self.server = server }

    public func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled, not shut down gracefully
        }
        await server.drain()
    }
}
