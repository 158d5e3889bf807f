import Foundation
import HTTPFront

/// The router's own Prometheus series (rendered by hand: a few counters and one histogram).
final class RouterMetrics: Sendable {
    private struct State {
        var requests: [String: Int] = [:]
        var dispatch: [Int: Int] = [:]
        var redispatches = 0
        var migrations: [String: Int] = [:]
        var migrationFailures: [String: Int] = [:]
        var stallBuckets: [String: [Int]] = [:]
        var stallSum: [String: Double] = [:]
        var stallCount: [String: Int] = [:]
    }
    private let state = Locked(State())
    static let stallBounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    func request(status: String) { state.withLock { $0.requests[status, default: 0] += 1 } }
    func dispatched(replica: Int) { state.withLock { $0.dispatch[replica, default: 0] += 1 } }
    func redispatched() { state.withLock { $0.redispatches += 1 } }
    func migrationFailed(mode: MigrationMode) { state.withLock { $0.migrationFailures[mode.rawValue, default: 0] += 1 } }

    func migrated(mode: MigrationMode, stallSeconds: Double) {
        state.withLock { s in
            let m = mode.rawValue
            s.migrations[m, default: 0] += 1
            var b = s.stallBuckets[m] ?? [Int](repeating: 0, count: Self.stallBounds.count)
            for (i, bound) in Self.stallBounds.enumerated() where stallSeconds <= bound { b[i] += 1 }
            s.stallBuckets[m] = b
            s.stallSum[m, default: 0] += stallSeconds
            s.stallCount[m, default: 0] += 1
        }
    }

    var redispatches: Int { state.withLock { $0.redispatches } }
    func migrations(mode: MigrationMode) -> Int { state.withLock { $0.migrations[mode.rawValue] ?? 0 } }

    /// `stored`: the Responses answers the router keeps, and their bytes (`ResponseStore`).
    func render(replicas: [ReplicaSet.Entry], stored: (count: Int, bytes: Int) = (0, 0)) -> String {
        let s = state.withLock { $0 }
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) { out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n" }
        family("dlora_router_responses_stored", "gauge", "Responses API answers the router keeps for previous_response_id.")
        out += "dlora_router_responses_stored \(stored.count)\n"
        family("dlora_router_responses_stored_bytes", "gauge", "Bytes of the Responses API answers the router keeps.")
        out += "dlora_router_responses_stored_bytes \(stored.bytes)\n"
        family("dlora_router_requests_total", "counter", "Generation requests (completions, chat, responses) by outcome: ok or the HTTP status.")
        for (k, v) in s.requests.sorted(by: { $0.key < $1.key }) { out += "dlora_router_requests_total{status=\"\(k)\"} \(v)\n" }
        family("dlora_router_dispatch_total", "counter", "Generations started per replica (first dispatch, migration and failover).")
        for (k, v) in s.dispatch.sorted(by: { $0.key < $1.key }) { out += "dlora_router_dispatch_total{replica=\"\(k)\"} \(v)\n" }
        family("dlora_router_redispatches_total", "counter", "Requests resumed on another replica after theirs failed.")
        out += "dlora_router_redispatches_total \(s.redispatches)\n"
        family("dlora_router_migrations_total", "counter", "Requests moved between replicas, by mode.")
        for m in MigrationMode.allCases { out += "dlora_router_migrations_total{mode=\"\(m.rawValue)\"} \(s.migrations[m.rawValue] ?? 0)\n" }
        family("dlora_router_migration_failures_total", "counter", "Migrations abandoned (the request kept running where it was, or resumed elsewhere).")
        for m in MigrationMode.allCases {
            out += "dlora_router_migration_failures_total{mode=\"\(m.rawValue)\"} \(s.migrationFailures[m.rawValue] ?? 0)\n"
        }
        family("dlora_router_migration_stall_seconds", "histogram", "Time a migrated request did not advance: source stop to first token on the destination.")
        for m in MigrationMode.allCases {
            let b = s.stallBuckets[m.rawValue] ?? [Int](repeating: 0, count: Self.stallBounds.count)
            for (i, bound) in Self.stallBounds.enumerated() {
                out += "dlora_router_migration_stall_seconds_bucket{mode=\"\(m.rawValue)\",le=\"\(bound)\"} \(b[i])\n"
            }
            let count = s.stallCount[m.rawValue] ?? 0
            out += "dlora_router_migration_stall_seconds_bucket{mode=\"\(m.rawValue)\",le=\"+Inf\"} \(count)\n"
            out += "dlora_router_migration_stall_seconds_sum{mode=\"\(m.rawValue)\"} \(s.stallSum[m.rawValue] ?? 0)\n"
            out += "dlora_router_migration_stall_seconds_count{mode=\"\(m.rawValue)\"} \(count)\n"
        }
        family("dlora_router_replica_up", "gauge", "1 when the replica answers its status polls.")
        for (i, r) in replicas.enumerated() where !r.gone {
            out += "dlora_router_replica_up{replica=\"\(i)\",url=\"\(Self.escape(r.url))\"} \(r.healthy ? 1 : 0)\n"
        }
        return out
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
