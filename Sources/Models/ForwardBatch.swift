/// One iteration's flat batch: the new tokens of several sequences (prefill chunks and decodes mixed),
/// each sequence a contiguous run. Rebuilt every step with `reset()`, which keeps capacity, so the step
/// loop does not allocate once warm.
public struct ForwardBatch: Sendable {
    /// Token ids, positions (absolute, in their sequence) and KV-cache slots, one entry per token.
    public private(set) var tokens: [Int32] = []
    public private(set) var positions: [Int32] = []
    public private(set) var slots: [Int64] = []
    /// Where each token's block table starts in `blockTables`.
    public private(set) var tableOffsets: [Int64] = []
    /// The block tables of the batch's sequences, concatenated.
    public private(set) var blockTables: [Int32] = []
    /// Indices (into `tokens`) whose logits the caller wants, in output row order.
    public private(set) var logitRows: [Int] = []
    /// Per token: the adapter slot whose LoRA path applies (-1 = base only).
    public private(set) var adapterSlots: [Int32] = []
    /// Per token: the request's multiplier on its adapter's scaling (1 = as trained).
    public private(set) var adapterScales: [Float] = []

    public init() {}

    public var count: Int { tokens.count }

    public mutating func reset() {
        tokens.removeAll(keepingCapacity: true)
        positions.removeAll(keepingCapacity: true)
        slots.removeAll(keepingCapacity: true)
        tableOffsets.removeAll(keepingCapacity: true)
        blockTables.removeAll(keepingCapacity: true)
        logitRows.removeAll(keepingCapacity: true)
        adapterSlots.removeAll(keepingCapacity: true)
        adapterScales.removeAll(keepingCapacity: true)
    }

    public enum Logits: Sendable { case none, last, all }

    /// Appends `tokens` of one sequence, starting at absolute position `start`; `blockTable` must already
    /// cover positions 0 ..< start + tokens.count.
    public mutating func append<T: Collection<Int>>(sequence newTokens: T, start: Int, blockTable: [Int32], blockSize: Int,
                                                    logits: Logits = .last, adapterSlot: Int32 = -1, adapterScale: Float = 1) {
        precondition(blockTable.count * blockSize >= start + newTokens.count, "block table too short")
        let offset = Int64(blockTables.count)
        blockTables.append(contentsOf: blockTable)
        var p = start
        for token in newTokens {
            if logits == .all { logitRows.append(tokens.count) }
            tokens.append(Int32(truncatingIfNeeded: token))
            positions.append(Int32(p))
            slots.append(Int64(blockTable[p / blockSize]) * Int64(blockSize) + Int64(p % blockSize))
            tableOffsets.append(offset)
            adapterSlots.append(adapterSlot)
            adapterScales.append(adapterScale)
            p += 1
        }
        if logits == .last && !newTokens.isEmpty { logitRows.append(tokens.count - 1) }
    }
}
