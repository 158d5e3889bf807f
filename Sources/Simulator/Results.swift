import Scheduling

/// What a run produced: one record per request, a summary, the replicas' counters, the invariants checked
/// along the way and the event log's fingerprint.

public struct RequestRecord: Sendable, Equatable {
    public let id: Int
    public let adapter: Int
    public let arrival: Double
    public let promptTokens: Int
    /// Time of its first generated token (nil: none).
    public var firstToken: Double?
    /// Time it finished (nil: it never did — a bug the invariants report).
    public var finish: Double?
    public var finishReason: FinishReason?
    /// Generated tokens.
    public var tokens: Int
    /// The replica that finished it.
    public var replica: Int?
    public var migrations: Int
    /// Rejected at admission (it never fitted a replica).
    public var rejected: Bool

    public var latency: Double? { finish.map { $0 - arrival } }
}

public struct SimulationSummary: Sendable, Equatable {
    public var requests: Int
    public var finished: Int
    public var rejected: Int
    public var generatedTokens: Int
    /// From the first arrival to the last finish, simulated seconds.
    public var makespan: Double
    /// Generated tokens per simulated second.
    public var throughput: Double
    /// Σ latencies / Σ generated tokens (dLoRA's metric).
    public var avgLatencyPerToken: Double
    public var p90Latency: Double
    public var meanTTFT: Double
    public var p90TTFT: Double
    /// Share of requests whose latency per generated token is within the SLO.
    public var sloAttainment: Double
    public var steps: Int
    public var modeSwitches: Int
    public var preemptions: Int
    public var adapterLoads: Int
    /// Adapter file loads into host memory, over all replicas (first loads and reloads after an eviction;
    /// `SimulationConfig.adapterFiles`), and evictions from the replicas' host caches.
    public var adapterFileLoads: Int
    public var adapterFileEvictions: Int
    public var migrations: Int
    /// Migration-loop checks, and how many fired for KV pressure and for request imbalance.
    public var migrationChecks: Int
    public var kvPressureTriggers: Int
    public var imbalanceTriggers: Int
    /// Mean seconds from a migrated request's stop on its source to its next token on the destination.
    public var meanMigrationStall: Double
    public var events: Int
    public var eventLogHash: UInt64
}

/// Checked while the simulation runs.
public struct InvariantReport: Sendable, Equatable {
    /// Every event came at or after the one before it.
    public var timeMonotone = true
    /// Per replica: the most blocks requests and resident adapters held at once, and the budget.
    public var maxBlocksUsed: [Int] = []
    public var numBlocks = 0
    /// Requests that finished more than once, or never.
    public var finishedTwice: [Int] = []
    public var neverFinished: [Int] = []

    public var holds: Bool {
        timeMonotone && maxBlocksUsed.allSatisfy { $0 <= numBlocks } && finishedTwice.isEmpty && neverFinished.isEmpty
    }
}

/// One iteration of one replica, kept when `SimulationConfig.recordSteps` is set (for cross-checks).
public struct StepRecord: Sendable, Equatable {
    public let replica: Int
    public let start: Double
    public let output: SchedulerOutput
    /// Seconds the actions took, then the forward pass.
    public let actionSeconds: Double
    public let forwardSeconds: Double
}

public struct SimulationResult: Sendable {
    public var records: [RequestRecord]
    public var summary: SimulationSummary
    public var replicaStats: [SchedulerStats]
    public var invariants: InvariantReport
    public var steps: [StepRecord]
}

func percentile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
}
