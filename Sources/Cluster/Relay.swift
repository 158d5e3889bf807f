import Foundation
import HTTPFront
import ServingAPI

/// What the relay hands the client's response, in order.
enum RelayOutput: Sendable {
    /// The first replica took the request; `logprobs`: it asked for log-probabilities (as that replica parsed it).
    case accepted(logprobs: Bool)
    /// Completions' `echo`: the prompt, ahead of the first token.
    case echo(PromptEcho)
    /// A token, the text it completed, and its log-probabilities when asked for.
    case token(Int, String, TokenLogprob?)
    case finish(String)
    /// The request cannot go on (its replica failed and none could resume it, or the model failed).
    case failed(status: Int, message: String)
}

/// A generation started on one replica.
struct Attempt: Sendable {
    let replica: Int
    let events: AsyncThrowingStream<ReplicaEvent, any Error>

    /// Gives the generation up before reading it (another choice of its request was refused): an iterator made
    /// and dropped ends the stream, which closes the connection, and the replica cancels the request.
    func abandon() {
        _ = events.makeAsyncIterator()
    }
}

extension ClusterRouter {
    /// Starts a request (or resumes it, with the tokens it has) on `preferred`, else on the replica the dispatch
    /// policy picks among the healthy ones not in `excluding`. A replica that is full (429), shutting down
    /// (503), failing (5xx) or unreachable is skipped; a refusal of the request itself (another 4xx) is thrown
    /// as `ReplicaClient.Rejected`, to be answered to the client as the replica worded it. When no replica took it,
    /// the error is the client's to retry: 429 `queue_full` with the replicas' longest `Retry-After` when some replica
    /// was only full (what a full replica answers; a 503 would say the cluster is down), else 503 `no_replica`.
    func startAttempt(_ f: Flight, preferred: Int?, migration: String?, excluding: Set<Int>) async throws -> Attempt {
        var excluded = excluding
        var preferred = preferred
        var fullRetryAfter: Int?
        var tries = 0
        while tries < 2 * max(1, replicas.snapshot.count) + 2 {
            try Task.checkCancellation()
            tries += 1
            guard let r = preferred ?? dispatch(model: f.model, promptTokens: f.promptTokens, excluding: excluded) else { break }
            let g = ReplicaGenerate(id: f.id, endpoint: f.endpoint, body: f.body, generated: f.generated, seed: f.seed,
                                    migration: preferred == r ? migration : nil, choice: f.choice, prompt: f.prompt)
            preferred = nil
            do {
                guard let events = try await generate(g, on: r) else {
                    // The replica stopped answering its polls before it answered this call: try another.
                    excluded.insert(r)
                    continue
                }
                replicas.noteDispatch(r, model: f.model)
                metrics.dispatched(replica: r)
                return Attempt(replica: r, events: events)
            } catch let e as ReplicaClient.Rejected {
                if e.status == 429 { fullRetryAfter = max(fullRetryAfter ?? 1, e.retryAfter ?? 1) }
                if e.status == 429 || e.status == 503 || e.status >= 500 {
                    excluded.insert(r)
                    continue
                }
                throw e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                replicas.markDown(r)
                excluded.insert(r)
            }
        }
        if let fullRetryAfter {
            var e = APIError(.tooManyRequests, "every replica's queue is full; retry later", code: "queue_full")
            e.retryAfter = fullRetryAfter
            throw e
        }
        var e = APIError(.serviceUnavailable, "no replica can take the request now", code: "no_replica")
        e.retryAfter = 1
        throw e
    }

    /// Sends a generation to replica r and waits for its answer's head, unless the replica's polls find it unreachable
    /// first (nil then, and the call is cancelled): a frozen replica keeps its connections open and answers nothing,
    /// and a request sent to it just before the polls noticed would otherwise wait for as long as it stays frozen (a
    /// probe's eight requests waited the full 60 s of a SIGSTOP while the other replica idled).
    func generate(_ g: ReplicaGenerate, on r: Int) async throws -> AsyncThrowingStream<ReplicaEvent, any Error>? {
        let client = replicas.client(r)
        let interval = options.pollInterval
        return try await withThrowingTaskGroup(of: AsyncThrowingStream<ReplicaEvent, any Error>?.self) { group in
            group.addTask { try await client.generate(g) }
            group.addTask { [replicas] in
                while !replicas.isUnreachable(r) { try await Task.sleep(for: interval) }
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { return nil }
            return first
        }
    }

    /// `startAttempt` for a request that must go on (its replica failed, or it is moving): when no replica can take it
    /// now, it waits for one (every `pollInterval`, at most `resumeWait`), then tries again over all replicas — the
    /// one that failed included, back as a new process — instead of failing the client's stream at once.
    func resumeAttempt(_ f: Flight, preferred: Int?, migration: String?, excluding: Set<Int>) async throws -> Attempt {
        let deadline = ContinuousClock.now + options.resumeWait
        var (preferred, migration, excluded) = (preferred, migration, excluding)
        while true {
            do {
                return try await startAttempt(f, preferred: preferred, migration: migration, excluding: excluded)
            } catch let e as ReplicaClient.Rejected {
                throw e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: options.pollInterval)
                // Whichever replica the polls find healthy again may take it (a failed one is down until then).
                (preferred, migration, excluded) = (nil, nil, [])
            }
        }
    }

    /// Carries a request to its end: relays its replica's tokens to `emit`, carries out migrations handed to
    /// it (a `Cut`), and when its replica fails resumes it elsewhere with the tokens generated so far. Each
    /// token reaches `emit` exactly once and in order, whichever replica produced it.
    func relay(_ f: Flight, first: Attempt, emit: (RelayOutput) async throws -> Void) async throws {
        var next: Attempt? = first
        var excluded = Set<Int>()
        var resumeOn: Int?
        var resumeMigration: String?
        var stallSince: UInt64?
        var pendingCut: Cut?
        var transfers = 0
        var announced = false
        defer {
            f.attach(replica: -1, input: nil)
            pendingCut?.outcome.set(.notMoved("the request ended before it resumed"))
        }

        while true {
            try Task.checkCancellation()
            let a: Attempt
            if let n = next {
                a = n
                next = nil
            } else {
                transfers += 1
                guard transfers <= 32 else {
                    try await emit(.failed(status: 503, message: "the request was moved too many times; giving up"))
                    return
                }
                do {
                    a = try await resumeAttempt(f, preferred: resumeOn, migration: resumeMigration, excluding: excluded)
                } catch let e as ReplicaClient.Rejected {
                    let message = (try? JSONSerialization.jsonObject(with: e.body) as? [String: Any])
                        .flatMap { ($0["error"] as? [String: Any])?["message"] as? String } ?? e.description
                    try await emit(.failed(status: e.status, message: "the request could not be resumed: \(message)"))
                    return
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    try await emit(.failed(status: 503, message: "the request's replica failed and no other could resume it"))
                    return
                }
                resumeOn = nil
                resumeMigration = nil
            }

            let (input, continuation) = AsyncStream<RelayInput>.makeStream()
            f.attach(replica: a.replica, input: continuation)
            let pump = Task {
                do {
                    for try await e in a.events { continuation.yield(.event(e)) }
                    continuation.yield(.ended(nil))
                } catch {
                    continuation.yield(.ended(error))
                }
            }
            defer { pump.cancel() }
            var exported: [Int]?
            var failedOver = false

            reading: for await item in input {
                switch item {
                case .event(let e):
                    if let acc = e.accepted {
                        f.accepted(acc)
                        if !announced {
                            announced = true
                            try await emit(.accepted(logprobs: acc.logprobs ?? false))
                        }
                    }
                    if let t = e.token {
                        if let ex = exported, f.generated.count >= ex.count { continue }
                        f.append(t)
                        // The first token from the destination (not the source's last ones, still draining) ends the stall.
                        if exported == nil, let c = pendingCut, let t0 = stallSince {
                            let stall = Double(DispatchTime.now().uptimeNanoseconds &- t0) / 1e9
                            metrics.migrated(mode: c.mode, stallSeconds: stall)
                            c.outcome.set(.moved(stallSeconds: stall, copiedBlocks: c.nextBlock))
                            pendingCut = nil
                            stallSince = nil
                        }
                        if let echo = e.echo, f.generated.count == 1 { try await emit(.echo(echo)) }
                        try await emit(.token(t, e.text ?? "", e.logprobs))
                    }
                    if let finish = e.finish {
                        continuation.finish()
                        try await emit(.finish(finish))
                        return
                    }
                    if let error = e.error {
                        continuation.finish()
                        try await emit(.failed(status: 500, message: error))
                        return
                    }
                case .ended(let error):
                    if exported == nil {
                        // The replica's stream broke (or ended without a finish): resume elsewhere.
                        if !(error is CancellationError) { replicas.markDown(a.replica) }
                        failedOver = true
                    }
                    break reading
                case .cut(let c):
                    guard exported == nil, c.from == a.replica, pendingCut == nil else {
                        c.outcome.set(.notMoved("the request is no longer where the migration was planned"))
                        continue
                    }
                    let stopped = DispatchTime.now().uptimeNanoseconds
                    do {
                        // Final stage: stop it on the source and take the rest of its K/V (kv mode).
                        let frame = try await replicas.client(c.from).export(id: f.id, kvFrom: c.mode == .kv ? c.nextBlock : nil)
                        let head = try KVFrame.head(of: frame)
                        guard let tokens = head.tokens, let pc = head.promptCount, pc >= 1, pc <= tokens.count else {
                            throw KVFrame.Invalid(description: "the export carries no tokens")
                        }
                        exported = Array(tokens[pc...])
                        stallSince = stopped
                        pendingCut = c
                        resumeOn = c.to
                        if let mid = c.migration {
                            do {
                                if head.blockCount > 0 { try await replicas.client(c.to).stage(migration: mid, frame: frame) }
                                resumeMigration = mid
                            } catch {
                                await replicas.client(c.to).abort(migration: mid)
                            }
                        }
                        // The source's stream now ends; the tokens it generated before the stop still arrive first.
                    } catch let e as ReplicaClient.Rejected where e.status == 404 {
                        if let mid = c.migration { await replicas.client(c.to).abort(migration: mid) }
                        c.outcome.set(.notMoved("the request finished on its replica first"))
                    } catch {
                        if let mid = c.migration { await replicas.client(c.to).abort(migration: mid) }
                        c.outcome.set(.notMoved("stopping it on its replica failed: \(error)"))
                    }
                }
            }
            pump.cancel()
            try Task.checkCancellation()
            if failedOver {
                metrics.redispatched()
                excluded = [a.replica]
                resumeOn = nil
                resumeMigration = nil
            } else if exported == nil {
                return  // the input ended without an outcome: cancelled
            } else {
                excluded = []
            }
        }
    }

    /// Moves a running request to replica `to`: in kv mode the destination reserves room and loads the adapter,
    /// then full blocks are copied in up to `stages` rounds while the request keeps decoding; the relay then
    /// stops it on the source, ships the last blocks and resumes it on the destination. Returns once the
    /// request produced its first token there (or the migration was abandoned, the request running on).
    public func migrate(requestID: String, to: Int, mode: MigrationMode, stages: Int = 3) async -> MigrationResult {
        guard let f = flights.withLock({ $0[requestID] }) else { return .notMoved("no such request in flight") }
        let from = f.replica
        guard from >= 0, from != to else { return .notMoved(from == to ? "the request already runs there" : "the request is not running") }
        let entries = replicas.snapshot
        guard to >= 0, to < entries.count else { return .notMoved("there is no replica \(to) (replicas 0...\(entries.count - 1))") }
        guard entries[to].healthy else { return .notMoved("replica \(to) is not healthy") }
        guard f.beginMigration() else { return .notMoved("the request is already moving") }
        defer { f.endMigration() }
        var migration: String?
        var next = 0
        if mode == .kv {
            do {
                let tokens = f.promptTokens + f.generated.count + 64
                let reserved = try await replicas.client(to).reserve(model: f.model, tokens: tokens)
                migration = reserved.migration
                for _ in 0..<max(0, stages) {
                    let frame = try await replicas.client(from).kvStage(id: f.id, from: next)
                    let head = try KVFrame.head(of: frame)
                    if head.blockCount > 0 { try await replicas.client(to).stage(migration: reserved.migration, frame: frame) }
                    next = head.firstBlock + head.blockCount
                    let used = (head.computed + head.blockSize - 1) / head.blockSize
                    if used - next <= 2 { break }
                }
            } catch {
                if let migration { await replicas.client(to).abort(migration: migration) }
                metrics.migrationFailed(mode: mode)
                return .notMoved("pre-copy failed, the request stays: \(error)")
            }
        }
        let outcome = Once<MigrationResult>()
        guard f.deliver(Cut(from: from, to: to, mode: mode, migration: migration, nextBlock: next, outcome: outcome)) else {
            if let migration { await replicas.client(to).abort(migration: migration) }
            return .notMoved("the request left its replica before the last stage")
        }
        let result = await outcome.wait(timeout: .seconds(60)) ?? .notMoved("no outcome within 60 s")
        if case .notMoved = result { metrics.migrationFailed(mode: mode) }
        return result
    }
}
