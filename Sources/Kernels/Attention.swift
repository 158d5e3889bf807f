import CKernels

/// Where a flat batch's tokens live in a paged KV cache (vLLM's slot mapping): per token its absolute
/// position, its cache slot (block · blockSize + offset) and where its sequence's block table starts in
/// `blockTables` (the tables of all the batch's sequences, concatenated).
public struct PagedBatchLayout {
    public let positions: UnsafeBufferPointer<Int32>
    public let slots: UnsafeBufferPointer<Int64>
    public let tableOffsets: UnsafeBufferPointer<Int64>
    public let blockTables: UnsafeBufferPointer<Int32>

    public init(positions: UnsafeBufferPointer<Int32>, slots: UnsafeBufferPointer<Int64>,
                tableOffsets: UnsafeBufferPointer<Int64>, blockTables: UnsafeBufferPointer<Int32>) {
        precondition(positions.count == slots.count && positions.count == tableOffsets.count,
                     "paged batch: \(positions.count) positions, \(slots.count) slots, \(tableOffsets.count) table offsets")
        self.positions = positions
        self.slots = slots
        self.tableOffsets = tableOffsets
        self.blockTables = blockTables
    }

    public var tokens: Int { positions.count }

    /// Checks every token against `kv`: its slot is a cache slot, its block table lies inside
    /// `blockTables` and covers its position, and every block id is a block of `kv`. O(tokens + table entries):
    /// nothing next to the attention it guards, and a wrong table would otherwise read out of bounds.
    func validate(against kv: PagedKVStorage) {
        let slotCount = Int64(kv.numBlocks * kv.blockSize)
        for t in 0..<tokens {
            precondition(slots[t] >= 0 && slots[t] < slotCount, "token \(t): KV slot \(slots[t]) outside the cache (\(slotCount) slots)")
            precondition(positions[t] >= 0, "token \(t): negative position \(positions[t])")
            let needed = Int64(positions[t]) / Int64(kv.blockSize) + 1
            precondition(tableOffsets[t] >= 0 && tableOffsets[t] + needed <= Int64(blockTables.count),
                         "token \(t): block table at \(tableOffsets[t]) does not cover position \(positions[t])")
        }
        for b in blockTables { precondition(b >= 0 && Int(b) < kv.numBlocks, "block id \(b) outside the cache (\(kv.numBlocks) blocks)") }
    }
}

/// Typed faces of the paged-KV kernels in attention.c. Reference twin: `ReferenceOps.attention`.
extension Kernels {
    /// Writes each token's K and V rows (numKVHeads · headDim floats, token strides ldk / ldv) into its
    /// slot of `layer` (an f16 cache stores them rounded to nearest even, clamped to ±65504).
    public static func writeKV(_ kv: PagedKVStorage, layer: Int, slots: UnsafeBufferPointer<Int64>,
                               keys: UnsafePointer<Float>, ldk: Int, values: UnsafePointer<Float>, ldv: Int) {
        precondition(layer >= 0 && layer < kv.numLayers, "writeKV: layer \(layer) of \(kv.numLayers)")
        precondition(ldk >= kv.rowFloats && ldv >= kv.rowFloats, "writeKV: strides \(ldk)/\(ldv) below the row (\(kv.rowFloats))")
        guard let s = slots.baseAddress, !slots.isEmpty else { return }
        let slotCount = Int64(kv.numBlocks * kv.blockSize)
        for slot in slots { precondition(slot >= 0 && slot < slotCount, "writeKV: slot \(slot) outside the cache (\(slotCount) slots)") }
        dl_kv_write(kv.rawKeys(layer: layer), kv.rawValues(layer: layer), kv.dtype == .f16 ? 1 : 0, s, Int64(slots.count),
                    Int64(kv.rowFloats), keys, Int64(ldk), values, Int64(ldv))
    }

    /// Causal attention for every (token, head) of a flat batch over `layer` of the paged cache: token t, a
    /// query at position p, attends to its sequence's positions 0 ... p through its block table. q and out
    /// are [tokens][heads][headDim] with token strides ldq / ldo; GQA head h reads KV head h / (heads / numKVHeads).
    /// The batch's own K/V must be written first (`writeKV`).
    public static func pagedAttention(query q: UnsafePointer<Float>, ldq: Int, heads: Int, layout: PagedBatchLayout,
                                      kv: PagedKVStorage, layer: Int, scale: Float,
                                      into out: UnsafeMutablePointer<Float>, ldo: Int) {
        let width = heads * kv.headDim
        precondition(heads > 0 && heads % kv.numKVHeads == 0, "pagedAttention: \(heads) heads over \(kv.numKVHeads) KV heads")
        precondition(ldq >= width && ldo >= width, "pagedAttention: strides \(ldq)/\(ldo) below \(width)")
        precondition(layer >= 0 && layer < kv.numLayers, "pagedAttention: layer \(layer) of \(kv.numLayers)")
        guard layout.tokens > 0 else { return }
        layout.validate(against: kv)
        dl_attention(q, Int64(ldq), Int64(layout.tokens), layout.positions.baseAddress!, layout.blockTables.baseAddress!,
                     layout.tableOffsets.baseAddress!, Int64(kv.blockSize), kv.rawKeys(layer: layer), kv.rawValues(layer: layer),
                     kv.dtype == .f16 ? 1 : 0,
                     Int64(heads), Int64(kv.numKVHeads), Int64(kv.headDim), scale, out, Int64(ldo))
    }
}
