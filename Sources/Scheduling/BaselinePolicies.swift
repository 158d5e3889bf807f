/// The baselines dLoRA is compared with, each its own type behind `BatchingPolicy`.

/// Always unmerged, FCFS within the token, sequence and adapter-slot budgets. Strict (vLLM / S-LoRA): a
/// request whose adapter finds no free slot is skipped and waits; there are no credits (they are tracked, for
/// metrics and tests, but never change the order). A credited FCFS variant was tried and dropped:
/// docs/design/scheduler.md says why.
public struct FCFSUnmergedPolicy: BatchingPolicy {
    public let config: BatchPolicyConfig
    public private(set) var switches = 0
    private var creditTable = Credits()
    public var mode: ExecutionMode { .unmerged }
    public var credits: [Int: Int] { creditTable.values }

    public init(config: BatchPolicyConfig) { self.config = config }

    public mutating func decide(_ queue: [QueuedRequest]) -> BatchDecision {
        BatchDecision(mode: .unmerged, runs: fillBatch(queue, starving: [], credits: creditTable, config: config))
    }

    public mutating func executed(_ ran: BatchDecision, queue: [QueuedRequest]) {
        creditTable.charge(queue: queue, ran: ran.runs, config: config)
    }

    public mutating func forget(adapter: Int) {}
}

/// One adapter at a time, merged: the oldest request's adapter with all its queued requests (base-model
/// requests run unmerged, alone).
public struct MergedOnlyPolicy: BatchingPolicy {
    public let config: BatchPolicyConfig
    public private(set) var mode: ExecutionMode = .unmerged
    public private(set) var switches = 0
    private var creditTable = Credits()
    public var credits: [Int: Int] { creditTable.values }

    public init(config: BatchPolicyConfig) { self.config = config }

    public mutating func decide(_ queue: [QueuedRequest]) -> BatchDecision {
        guard let first = queue.first else { return BatchDecision(mode: mode, runs: []) }
        let next: ExecutionMode = first.adapter == QueuedRequest.base ? .unmerged : .merged(adapter: first.adapter)
        let pool = queue.filter { $0.adapter == first.adapter }
        return BatchDecision(mode: next, runs: fillBatch(pool, starving: [], credits: creditTable, config: config))
    }

    public mutating func executed(_ ran: BatchDecision, queue: [QueuedRequest]) {
        creditTable.charge(queue: queue, ran: ran.runs, config: config)
        countSwitch(ran, mode: &mode, switches: &switches)
    }

    public mutating func forget(adapter: Int) {}
}

/// HF PEFT style: a static batch of one adapter's requests (the oldest request's adapter, up to the batch
/// size) runs merged to completion before the next batch forms; requests arriving meanwhile wait.
public struct PEFTLikePolicy: BatchingPolicy {
    public let config: BatchPolicyConfig
    public private(set) var mode: ExecutionMode = .unmerged
    public private(set) var switches = 0
    private var creditTable = Credits()
    private var staticBatch: Set<RequestID> = []
    public var credits: [Int: Int] { creditTable.values }

    public init(config: BatchPolicyConfig) { self.config = config }

    public mutating func decide(_ queue: [QueuedRequest]) -> BatchDecision {
        guard let first = queue.first else { return BatchDecision(mode: mode, runs: []) }
        staticBatch.formIntersection(queue.map(\.id))
        if staticBatch.isEmpty {
            staticBatch = Set(queue.filter { $0.adapter == first.adapter }.prefix(config.maxBatchSequences).map(\.id))
        }
        let pool = queue.filter { staticBatch.contains($0.id) }
        let next: ExecutionMode = pool[0].adapter == QueuedRequest.base ? .unmerged : .merged(adapter: pool[0].adapter)
        return BatchDecision(mode: next, runs: fillBatch(pool, starving: [], credits: creditTable, config: config))
    }

    public mutating func executed(_ ran: BatchDecision, queue: [QueuedRequest]) {
        creditTable.charge(queue: queue, ran: ran.runs, config: config)
        countSwitch(ran, mode: &mode, switches: &switches)
    }

    public mutating func forget(adapter: Int) {}
}

/// The mode of an executed iteration becomes the policy's mode; a change counts as a switch (an iteration in
/// which nothing ran changes nothing).
func countSwitch(_ ran: BatchDecision, mode: inout ExecutionMode, switches: inout Int) {
    guard !ran.runs.isEmpty, ran.mode != mode else { return }
    mode = ran.mode
    switches += 1
}
