/// dLoRA's reactive migration (OSDI'24 §inter-replica): a global monitor notices an overloaded replica and
/// moves running requests, together with the adapters they need, to underloaded ones. This file holds the
/// settings, the trigger and the plan values; `MigrationPlanner` decides, `ExactMigrationSolver` checks it.

/// Settings of the migration monitor and planner. Defaults are the dLoRA artifact's.
public struct MigrationConfiguration: Sendable, Equatable {
    /// How often the caller should run the trigger (the artifact: every 10 s). The policy never reads a
    /// clock; this is here so the router and the simulator take it from one place.
    public var periodSeconds: Double
    /// The trigger fires when the fullest replica's KV use reaches this while another's is below it.
    public var kvUsageThreshold: Double
    /// The trigger fires when a replica holds at least this many more requests than the average.
    public var requestExcess: Int
    /// A replica that receives requests may not end above this fraction of its KV blocks (moving a replica
    /// to the trigger's threshold would only trigger the next round).
    public var destinationKVLimit: Double
    /// Bound on the planner's improving steps.
    public var maxIterations: Int

    public init(periodSeconds: Double = 10, kvUsageThreshold: Double = 0.9, requestExcess: Int = 16,
                destinationKVLimit: Double = 0.9, maxIterations: Int = 1000) {
        self.periodSeconds = periodSeconds
        self.kvUsageThreshold = kvUsageThreshold
        self.requestExcess = requestExcess
        self.destinationKVLimit = destinationKVLimit
        self.maxIterations = maxIterations
    }
}

/// Why the trigger fired.
public enum MigrationReason: Sendable, Equatable {
    /// A draining replica still holds requests (Llumnix: its virtual usage is infinite).
    case draining(replica: Int)
    /// The fullest replica's KV use is at or above the threshold while another's is below.
    case kvPressure(replica: Int, usage: Double)
    /// A replica holds `excess` more requests than the average, at least `requestExcess`.
    case requestImbalance(replica: Int, excess: Double)
}

/// The migration monitor's test, run once per `periodSeconds` by the caller. Only healthy replicas count;
/// draining ones can be sources but never the "other", less loaded replica.
public struct MigrationTrigger: Sendable {
    public var configuration: MigrationConfiguration

    public init(configuration: MigrationConfiguration = MigrationConfiguration()) {
        self.configuration = configuration
    }

    /// The first reason that holds (draining, then KV pressure, then request imbalance), or nil.
    public func check(_ replicas: [ReplicaLoad]) -> MigrationReason? {
        let healthy = replicas.filter(\.healthy)
        let usable = healthy.filter(\.usable)
        guard !usable.isEmpty else { return nil }

        if let draining = healthy.first(where: { $0.draining && ($0.requests > 0 || !$0.running.isEmpty) }) {
            return .draining(replica: draining.id)
        }

        let threshold = configuration.kvUsageThreshold
        if let fullest = usable.max(by: { $0.kvUsage != $1.kvUsage ? $0.kvUsage < $1.kvUsage : $0.id > $1.id }),
           fullest.kvUsage >= threshold, usable.contains(where: { $0.kvUsage < threshold }) {
            return .kvPressure(replica: fullest.id, usage: fullest.kvUsage)
        }

        let average = Double(healthy.reduce(0) { $0 + $1.requests }) / Double(healthy.count)
        if let busiest = healthy.max(by: { $0.requests != $1.requests ? $0.requests < $1.requests : $0.id > $1.id }) {
            let excess = Double(busiest.requests) - average
            if excess >= Double(configuration.requestExcess) {
                return .requestImbalance(replica: busiest.id, excess: excess)
            }
        }
        return nil
    }
}

/// One request to move. Its adapter moves with it: when `needsAdapterLoad`, the destination must load the
/// adapter (once, however many requests of it arrive) before the request resumes.
public struct MigrationMove: Sendable, Equatable {
    public var requestID: UInt64
    public var from: Int
    public var to: Int
    public var adapter: String
    public var needsAdapterLoad: Bool

    public init(requestID: UInt64, from: Int, to: Int, adapter: String, needsAdapterLoad: Bool) {
        self.requestID = requestID
        self.from = from
        self.to = to
        self.adapter = adapter
        self.needsAdapterLoad = needsAdapterLoad
    }
}

/// A migration decision and what it is expected to achieve.
public struct MigrationPlan: Sendable, Equatable {
    /// The moves, in the order of the replicas' `running` lists.
    public var moves: [MigrationMove]
    /// Slowest replica's work time (seconds) before and after the moves.
    public var makespanBefore: Double
    public var makespanAfter: Double
    /// Requests that stay on draining replicas (no destination could take them).
    public var requestsLeftOnDraining: Int

    public init(moves: [MigrationMove], makespanBefore: Double, makespanAfter: Double, requestsLeftOnDraining: Int) {
        self.moves = moves
        self.makespanBefore = makespanBefore
        self.makespanAfter = makespanAfter
        self.requestsLeftOnDraining = requestsLeftOnDraining
    }
}
