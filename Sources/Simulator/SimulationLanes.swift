import Dispatch
import ClusterPolicy
import Scheduling

/// A replica's status as a poll reads it (`SimulationRun.takeStatus`).
struct ReplicaStatus {
    let load: ReplicaLoad
    /// Its requests per adapter key.
    let requests: [(key: Int, counts: AdapterCounts)]
    /// The adapters loaded (true) and evicted (false) since its last status, in order.
    let changes: [(key: Int, loaded: Bool)]
}

/// Lanes handed to `DispatchQueue.concurrentPerform`: lane k is touched by iteration k alone.
private struct LanePointer: @unchecked Sendable {
    let base: UnsafeMutablePointer<SimulationRun>
}

// Parallel replicas (`SimulationConfig.threads`; docs/design/simulator.md, "Parallel replicas").
//
// While the router polls, dispatch reads only the statuses of the last poll and the requests it dispatched since
// (`statusLoads`), and placement reads the same. So between two polls nothing a replica does reaches the router or
// another replica (migration, which would, is off), and the replicas can be simulated apart. A window ends at a
// poll: the router first dispatches the window's arrivals (and re-places adapters) in time order as before, each
// dispatched request going to its replica's lane with the time it reaches the replica; then the lanes — copies of
// this run, each owning the replicas r with r % lanes == k, with its own event queue — run their replicas' events
// up to the poll in parallel and read their statuses; the router takes the statuses in replica order. Each replica
// sees the same events at the same times as in a sequential run, so it makes the same decisions: the records and
// the summary are the same; only the event log's order (and so its hash and the count of delivery events) is the
// parallel run's own.
extension SimulationRun {
    mutating func runParallel(lanes n: Int) {
        // The pending events: the router's stay here, each replica's go to its lane's queue (in their order).
        var router = EventQueue<Event>()
        var laneQueues = Array(repeating: EventQueue<Event>(), count: n)
        while let (t, e) = queue.pop() {
            switch e {
            case .stepDone(let r), .delivered(_, let r): laneQueues[r % n].push(e, at: t)
            default: router.push(e, at: t)
            }
        }
        queue = router
        laneInputs = nil
        var lanes: [SimulationRun] = (0..<n).map { k in
            var lane = self
            lane.queue = laneQueues[k]
            lane.hash = EventLogHash()
            lane.events = 0
            lane.resolved = 0
            lane.invariants.finishedTwice = []
            return lane
        }
        let resolvedBefore = resolved
        laneInputs = Array(repeating: [], count: n)
        var statuses = Array(repeating: [ReplicaStatus](), count: n)

        /// Every lane: takes the window's arrivals, runs its events before `end`, and (at a poll) reads its
        /// replicas' statuses.
        func advance(until end: Double, poll: Bool) {
            let inputs = laneInputs!
            for k in 0..<n { laneInputs![k].removeAll(keepingCapacity: true) }
            lanes.withUnsafeMutableBufferPointer { lanesBuffer in
                statuses.withUnsafeMutableBufferPointer { statusBuffer in
                    let p = LanePointer(base: lanesBuffer.baseAddress!)
                    let out = StatusPointer(base: statusBuffer.baseAddress!)
                    DispatchQueue.concurrentPerform(iterations: n) { k in
                        let lane = p.base + k
                        for (i, r, at) in inputs[k] { lane.pointee.queue.push(.delivered(i, replica: r), at: at) }
                        lane.pointee.runLane(until: end)
                        out.base[k].removeAll(keepingCapacity: true)
                        if poll {
                            for r in stride(from: k, to: lane.pointee.replicas.count, by: n) {
                                out.base[k].append(lane.pointee.takeStatus(r))
                            }
                        }
                    }
                }
            }
            resolved = resolvedBefore + lanes.reduce(0) { $0 + $1.resolved }
        }

        while let (t, event) = queue.pop(), tick(t) {
            guard case .poll = event else {
                handle(event)  // arrivals (to the lanes) and placement
                continue
            }
            advance(until: t, poll: true)
            hash.mix(1)
            for r in replicas.indices { applyStatus(r, statuses[r % n][r / n]) }
            if unresolved { queue.push(.poll, at: now + config.pollInterval) }
        }
        // What is left after the last poll (or up to the time limit).
        advance(until: .infinity, poll: false)
        laneInputs = nil

        // The lanes' replicas and requests back into this run.
        for r in replicas.indices {
            let lane = lanes[r % n]
            replicas[r].scheduler = lane.replicas[r].scheduler
            invariants.maxBlocksUsed[r] = lane.invariants.maxBlocksUsed[r]
        }
        // (A request dispatched before the split is in its replica's lane too: the lanes started as copies.)
        for i in records.indices where dispatchedTo[i] >= 0 {
            records[i] = lanes[Int(dispatchedTo[i]) % n].records[i]
        }
        for lane in lanes {
            events += lane.events
            hash.mix(lane.hash.value)
            invariants.finishedTwice += lane.invariants.finishedTwice
            invariants.timeMonotone = invariants.timeMonotone && lane.invariants.timeMonotone
            now = max(now, lane.now)
        }
    }

    /// A lane's event loop: its replicas' events before `end` (and not past the time limit).
    mutating func runLane(until end: Double) {
        while let t = queue.nextTime, t < end, tick(t) {
            handle(queue.pop()!.payload)
        }
    }
}

/// The lanes' status lists, written by lane k's iteration alone.
private struct StatusPointer: @unchecked Sendable {
    let base: UnsafeMutablePointer<[ReplicaStatus]>
}
