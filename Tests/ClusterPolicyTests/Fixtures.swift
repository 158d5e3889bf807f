import ClusterPolicy

/// A replica for tests: 100 KV blocks, 4 adapter slots, healthy, with the given per-adapter counts.
func replica(_ id: Int, free: Int = 100, total: Int = 100, slots: Int = 4, resident: Set<String> = [],
             waiting: [String: Int] = [:], running: [String: Int] = [:], healthy: Bool = true,
             draining: Bool = false) -> ReplicaLoad {
    var perAdapter: [String: AdapterCounts] = [:]
    for (name, n) in waiting { perAdapter[name, default: AdapterCounts()].waiting = n }
    for (name, n) in running { perAdapter[name, default: AdapterCounts()].running = n }
    return ReplicaLoad(id: id, healthy: healthy, draining: draining, kvBlocksTotal: total, kvBlocksFree: free,
                       adapterSlots: slots, residentAdapters: resident, perAdapter: perAdapter)
}

/// SplitMix64: a seeded generator, so every "random" case is the same on every run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
