/// Request identity and lifecycle as the scheduler sees it: counts and block ids, never token values.

/// One request's identity, assigned once when it is submitted and used by every layer after that
/// (scheduler, runner, engine loop, server).
public struct RequestID: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    public let rawValue: Int
    public init(_ rawValue: Int) { self.rawValue = rawValue }
    public init(integerLiteral value: Int) { rawValue = value }
    public static func < (a: RequestID, b: RequestID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "req#\(rawValue)" }
}

/// Why a request stopped (OpenAI's `finish_reason`, plus the ways a request can end without one).
public enum FinishReason: String, Sendable, Equatable {
    /// End-of-sequence token or a stop string.
    case stop
    /// The request's length limit (max_tokens, the context, or the KV budget beside its adapter).
    case length
    /// Taken out by the caller (client gone, shutdown, migration).
    case cancelled
    /// The engine could not continue it (e.g. its adapter produced non-finite logits).
    case error
}

/// Where a request stands.
public enum RequestStatus: Equatable, Sendable {
    /// Holds no KV (never scheduled, or preempted and to be recomputed).
    case waiting
    /// Holds KV blocks.
    case running
    /// Preempted with its KV in host memory; resumes with a swap-in.
    case swapped
    case finished(FinishReason)
}

/// The scheduler's record of one request.
public struct Request: Equatable, Sendable {
    public let id: RequestID
    /// The scheduler's adapter key (`Request.base` for the base model).
    public let adapter: Int
    public let promptCount: Int
    /// Prompt plus generated tokens so far.
    public internal(set) var tokenCount: Int
    /// Tokens whose K/V are computed (in blocks, or in host memory while swapped).
    public internal(set) var computed = 0
    public internal(set) var blockTable: [Int32] = []
    public internal(set) var status: RequestStatus = .waiting
    /// The longest the request may grow (prompt + generated); it finishes with `.length` there.
    public let maxLength: Int
    /// Blocks' worth of K/V held in host memory while swapped.
    public internal(set) var swappedBlocks = 0
    /// Admission order (FCFS key).
    let arrival: Int

    public static let base = -1

    public var generated: Int { tokenCount - promptCount }
    /// Tokens to compute before it can sample next (prompt remainder, or 1 when decoding).
    public var pendingTokens: Int { tokenCount - computed }
}
