import Foundation
import ServingAPI

/// How a request moves between replicas.
public enum MigrationMode: String, Sendable, CaseIterable {
    /// dLoRA's: the destination recomputes the K/V from the tokens.
    case recompute
    /// Llumnix-style multi-stage pre-copy: full blocks are copied while the request keeps decoding on the
    /// source, then it stops for the last few and resumes on the destination.
    case kv
}

public enum MigrationResult: Sendable, Equatable {
    /// Moved; `stallSeconds` is the time from the source's stop to the destination's first token.
    case moved(stallSeconds: Double, copiedBlocks: Int)
    /// Not moved: the request finished, is already moving, is already there, or a step failed before the
    /// source stopped it (it keeps running on the source).
    case notMoved(String)
}

/// One client request as the router carries it: what it asked (the body, verbatim), where it runs, the
/// tokens generated so far and its seed — everything needed to start it again anywhere, exactly where it was.
final class Flight: @unchecked Sendable {
    let id: String
    /// The router's number for it (what the pure policies call it).
    let serial: UInt64
    let endpoint: String
    let body: String
    let model: String
    /// Which choice of a request with n > 1 (each runs as a flight of its own); nil for a single one.
    let choice: Int?
    /// Which prompt of a completions batch (each runs as flights of its own); nil for a single one.
    let prompt: Int?
    let arrival: UInt64

    private let lock = NSLock()
    private var _generated: [Int] = []
    private var _seed: UInt64?
    private var _promptTokens = 0
    private var _replica = -1
    private var _migrating = false
    private var input: AsyncStream<RelayInput>.Continuation?

    init(id: String, serial: UInt64, endpoint: String, body: String, model: String, choice: Int? = nil, prompt: Int? = nil) {
        self.id = id
        self.serial = serial
        self.endpoint = endpoint
        self.body = body
        self.model = model
        self.choice = choice
        self.prompt = prompt
        arrival = DispatchTime.now().uptimeNanoseconds
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    var generated: [Int] { locked { _generated } }
    var seed: UInt64? { locked { _seed } }
    var promptTokens: Int { locked { _promptTokens } }
    var replica: Int { locked { _replica } }

    func append(_ token: Int) { locked { _generated.append(token) } }
    func accepted(_ a: ReplicaEvent.Accepted) {
        locked {
            _seed = a.seed
            _promptTokens = a.promptTokens
        }
    }

    func attach(replica: Int, input: AsyncStream<RelayInput>.Continuation?) {
        locked {
            _replica = replica
            self.input = input
        }
    }

    /// Claims the right to migrate (one migration at a time per request).
    func beginMigration() -> Bool {
        locked {
            guard !_migrating else { return false }
            _migrating = true
            return true
        }
    }

    func endMigration() { locked { _migrating = false } }

    /// Ends the attempt on `replica` as if its stream had broken, so the relay resumes the request elsewhere with the
    /// tokens it has (the replica stopped answering its status polls: hung, not dead, its connection open); false when
    /// the request is not running there.
    func abandon(replica: Int) -> Bool {
        let target = locked { _replica == replica ? input : nil }
        guard let target else { return false }
        if case .terminated = target.yield(.ended(ReplicaUnresponsive(replica: replica))) { return false }
        return true
    }

    /// Hands a cut to the relay of the replica it was planned on; false when the request is no longer running
    /// there (finished, failed over).
    func deliver(_ cut: Cut) -> Bool {
        let target = locked { _replica == cut.from ? input : nil }
        guard let target else { return false }
        if case .terminated = target.yield(.cut(cut)) { return false }
        return true
    }
}

/// Why a relay left a replica whose stream was still open: the replica's status polls failed.
struct ReplicaUnresponsive: Error, CustomStringConvertible {
    let replica: Int
    var description: String { "replica \(replica) stopped answering its status polls" }
}

/// What the relay of one attempt reads: the replica's events, the end of its stream, or a migration's cut.
enum RelayInput: Sendable {
    case event(ReplicaEvent)
    case ended((any Error)?)
    case cut(Cut)
}

/// The last stage of a migration, carried out by the request's relay (the only task that reads its stream).
struct Cut: Sendable {
    let from: Int
    let to: Int
    let mode: MigrationMode
    /// Blocks already staged on the destination (kv mode).
    let migration: String?
    let nextBlock: Int
    let outcome: Once<MigrationResult>
}

/// A value set once, awaited by one or more tasks, with a deadline.
final class Once<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T?
    private var waiters: [CheckedContinuation<T?, Never>] = []

    func set(_ v: T) {
        lock.lock()
        guard value == nil else {
            lock.unlock()
            return
        }
        value = v
        let w = waiters
        waiters = []
        lock.unlock()
        for c in w { c.resume(returning: v) }
    }

    /// The value, or nil after `timeout`.
    func wait(timeout: Duration) async -> T? {
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.expire()
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { c in
            lock.lock()
            if let value {
                lock.unlock()
                c.resume(returning: value)
                return
            }
            waiters.append(c)
            lock.unlock()
        }
    }

    private func expire() {
        lock.lock()
        let w = waiters
        waiters = []
        lock.unlock()
        for c in w { c.resume(returning: nil) }
    }
}
