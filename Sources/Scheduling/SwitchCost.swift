/// What switching a replica to merged mode and back costs, as the scheduler prices it before it has timed a merge
/// of its own: seconds per base-matrix element a merge rewrites, per multiply-add of its update
/// (`AdapterProfile.mergeMultiplyAdds`: elements × padded rank), per element whose merge workspace is not allocated
/// yet (once: the engine's first merge allocates and faults in the workspace, on the F32 SmolLM2 base about 0.3 s for
/// all seven layers, 1–3.5 s on a VM that hands freed memory back to its host, against 0.05 s for the merges after
/// it), and one unmerge's seconds.
public struct SwitchPrior: Equatable, Sendable {
    public var mergeSecondsPerElement: Double
    public var mergeSecondsPerMultiplyAdd: Double
    public var allocationSecondsPerElement: Double
    public var unmergeSeconds: Double

    public init(mergeSecondsPerElement: Double, mergeSecondsPerMultiplyAdd: Double = 0, allocationSecondsPerElement: Double = 0,
                unmergeSeconds: Double) {
        self.mergeSecondsPerElement = mergeSecondsPerElement
        self.mergeSecondsPerMultiplyAdd = mergeSecondsPerMultiplyAdd
        self.allocationSecondsPerElement = allocationSecondsPerElement
        self.unmergeSeconds = unmergeSeconds
    }

    /// This CPU's figures for the SmolLM2 Q4_1 base (bench/results/lora.md: ~11 ms for q/v's 13.3 M elements, ~57 ms
    /// for all seven layers' 106 M), with no rank or allocation term: the scheduler's default. A replica on other
    /// hardware or another model starts from its own (a GPU merges a 7B q/v adapter in ~10 ms, not 0.75 s; `dlora
    /// serve` times merges on its model at start), or a policy that never merges never learns otherwise.
    public static let cpu = SwitchPrior(mergeSecondsPerElement: 0.7e-9, unmergeSeconds: 0.0001)

    /// Every figure finite and ≥ 0.
    public var isValid: Bool {
        [mergeSecondsPerElement, mergeSecondsPerMultiplyAdd, allocationSecondsPerElement, unmergeSeconds]
            .allSatisfy { $0.isFinite && $0 >= 0 }
    }
}

/// The scheduler's running switch-cost estimates: started from a `SwitchPrior`, moved by the merges and unmerges the
/// engine times.
struct SwitchCostEstimate: Sendable {
    private let allocationSecondsPerElement: Double
    private(set) var mergeSecondsPerElement: Double
    private(set) var mergeSecondsPerMultiplyAdd: Double
    private(set) var lastUnmergeSeconds: Double
    /// The most base elements one merge has covered so far: a stand-in for the merge workspace already there (an
    /// adapter that targets no more elements than this is taken to merge into it without allocating, exact when the
    /// adapters' target sets are nested, as q/v within all seven).
    private(set) var mergedElementsHigh = 0

    init(_ prior: SwitchPrior) {
        precondition(prior.isValid, "switch-cost prior: every figure must be finite and >= 0")
        allocationSecondsPerElement = prior.allocationSecondsPerElement
        mergeSecondsPerElement = prior.mergeSecondsPerElement
        mergeSecondsPerMultiplyAdd = prior.mergeSecondsPerMultiplyAdd
        lastUnmergeSeconds = prior.unmergeSeconds
    }

    /// Whether the first allocation is priced (then a growing workspace changes other adapters' estimates).
    var modelsAllocation: Bool { allocationSecondsPerElement > 0 }

    /// Merging an adapter into an allocated workspace.
    func mergeSeconds(_ profile: AdapterProfile) -> Double {
        Double(profile.mergeElements) * mergeSecondsPerElement + Double(profile.mergeMultiplyAdds) * mergeSecondsPerMultiplyAdd
    }

    /// Switching to an adapter and back now: its merge, the workspace its merge would still allocate, an unmerge.
    func switchSeconds(_ profile: AdapterProfile) -> Double {
        mergeSeconds(profile) + lastUnmergeSeconds
            + Double(max(0, profile.mergeElements - mergedElementsHigh)) * allocationSecondsPerElement
    }

    mutating func observeUnmerge(seconds: Double) {
        if seconds.isFinite, seconds >= 0 { lastUnmergeSeconds = seconds }
    }

    /// An adapter was merged; true when that grew the workspace.
    mutating func merged(_ profile: AdapterProfile) -> Bool {
        guard profile.mergeElements > mergedElementsHigh else { return false }
        mergedElementsHigh = profile.mergeElements
        return true
    }

    /// A timed merge (into an allocated workspace): halfway to what it says; with a rank term, both terms scale by the
    /// same factor.
    mutating func observeMerge(_ profile: AdapterProfile, seconds s: Double) {
        let predicted = mergeSeconds(profile)
        if mergeSecondsPerMultiplyAdd > 0, profile.mergeMultiplyAdds > 0, predicted > 0 {
            let factor = 0.5 + 0.5 * s / predicted
            mergeSecondsPerElement *= factor
            mergeSecondsPerMultiplyAdd *= factor
        } else {
            mergeSecondsPerElement = 0.5 * mergeSecondsPerElement + 0.5 * s / Double(profile.mergeElements)
        }
    }
}
