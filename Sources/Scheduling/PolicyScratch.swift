#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The batching policies' per-iteration tables (`DLoRAPolicy.decide`/`executed`, `Credits.charge`): refilled at
/// every call and empty in between, so they are no part of a policy's state. One set per thread, not one per
/// policy: a simulation runs a thousand schedulers on one thread, and a thousand sets of tables (two arrays each)
/// meant two cache misses per table per iteration, as each replica's tables had gone cold since its last step
/// (docs/design/simulator.md, "Speed"). Per thread, so policies on different threads never share one.
struct PolicyScratch {
    /// `DLoRAPolicy`: the queue's requests per adapter, the executed runs' ids, each run's adapter, tokens per
    /// adapter, the distinct adapters of a window.
    var counts = IntTable(), runIDs = IntTable(), adapterOf = IntTable(), perAdapter = IntTable(), distinct = IntTable()
    /// `Credits.charge`: the ids that ran and those FCFS would have run, the adapters served, those that waited and
    /// those passed over, adapters to drop.
    var ranIDs = IntTable(), fcfsIDs = IntTable(), served = IntTable(), waiting = IntTable(), passed = IntTable()
    var gone: [Int] = []
    /// `fillBatch`: the adapters a batch has taken, and the pool positions taken for starving adapters.
    var batchAdapters: [Int] = [], takenAt: [Int] = []

    /// This thread's tables. A caller uses them within one call and does not keep the pointer.
    static var current: UnsafeMutablePointer<PolicyScratch> {
        if let p = pthread_getspecific(policyScratchKey) { return p.assumingMemoryBound(to: PolicyScratch.self) }
        let p = UnsafeMutablePointer<PolicyScratch>.allocate(capacity: 1)
        p.initialize(to: PolicyScratch())
        pthread_setspecific(policyScratchKey, p)
        return p
    }
}

/// The thread-local slot of `PolicyScratch.current`; a thread's tables are freed when it exits.
private let policyScratchKey: pthread_key_t = {
    var key = pthread_key_t()
    let status = pthread_key_create(&key) { p in
        guard let p else { return }
        let s = p.assumingMemoryBound(to: PolicyScratch.self)
        s.deinitialize(count: 1)
        s.deallocate()
    }
    precondition(status == 0, "pthread_key_create failed")
    return key
}()
