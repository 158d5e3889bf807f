import Testing

/// Every training suite runs inside this one, one test at a time: the f64 gradient checks and training runs
/// are long synchronous computations, and Swift Testing runs synchronous tests on the cooperative pool (one
/// thread per core, two in CI). Run side by side they held both threads for ~45 s of a full run, and the
/// server suites' timing bounds (a drain deadline, header timeouts) failed for want of a thread. Serialized,
/// they hold at most one.
@Suite(.serialized) enum TrainingSuites {}
