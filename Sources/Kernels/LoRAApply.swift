import CKernels

extension Kernels {
    /// One step's LoRA work on one base matrix, as runs of batch tokens ("segments") that share an adapter
    /// and scale (Punica's segmented gather, S-LoRA's unmerged path):
    ///
    ///     for each segment s, token t in s.tokens:
    ///         y[t] += s.scale · B_s · (A_s · x[t])        // A: paddedRank × in, B: out × paddedRank
    ///
    /// (or, for a gated MoLE segment, with A_s · x[t] scaled per rank column by its expert's gate for t)
    ///
    /// A and B are F32, F16 or BF16 (both the same) with the rank zero-padded to a multiple of 16, B laid out for
    /// the expand (`LoRAExpandMatrix`). Decode segments (up to 8 tokens, in pieces of up to 4) run lora.c's grouped
    /// shrink, longer ones the batch-invariant matmul kernel; every token's expand runs 32 outputs at a time; all
    /// sum in the matmul kernel's lane order, so a token's result never depends on its batch. Or both are Q8_0 (an
    /// int8 adapter, on AVX-512 VNNI or AVX-VNNI): the shrink with int8 activations as `matmulInt8` computes it, the expand
    /// with the shrunk values quantized per 16 against B's codes; every segment length computes a token alike.
    /// Reused across steps: `reset` keeps capacity, so the step loop does not allocate once warm.
    /// Reference twins: `ReferenceOps.loraApply` (double precision) and `ReferenceOps.loraApplyLanes` (the
    /// kernels' f32 summation order, bit for bit).
    public final class LoRABatch: @unchecked Sendable {
        private var segments: [dl_lora_seg] = []
        public private(set) var inFeatures = 0
        public private(set) var outFeatures = 0
        private var end = 0

        public init() {}

        public var isEmpty: Bool { segments.isEmpty }
        public var count: Int { segments.count }

        /// Starts a new matrix: every segment appended next must map `inFeatures` → `outFeatures`.
        public func reset(inFeatures: Int, outFeatures: Int) {
            precondition(inFeatures > 0 && inFeatures % 16 == 0 && outFeatures > 0,
                         "LoRA: in \(inFeatures) (a positive multiple of 16), out \(outFeatures)")
            segments.removeAll(keepingCapacity: true)
            if !laidOut.isEmpty { laidOut.removeAll() }
            self.inFeatures = inFeatures
            self.outFeatures = outFeatures
            end = 0
        }

        /// B matrices this batch laid out for the expand itself (`append(a:b:...)` with a row-major B), kept until
        /// the next `reset`.
        private var laidOut: [LoRAExpandMatrix] = []

        /// Adds tokens `tokens` (after every earlier segment's) with A (paddedRank × in) and B (out × paddedRank,
        /// row-major; laid out for the expand here, once per call: for tests and one-off use, where the engine's
        /// modules hold theirs ready).
        public func append(a: WeightMatrix, b: WeightMatrix, tokens: Range<Int>, scale: Float) {
            let expand = LoRAExpandMatrix(b)
            laidOut.append(expand)
            append(LoRAOperands(a: a, b: expand), tokens: tokens, scale: scale)
        }

        /// As `append(a:b:tokens:scale:)`, with the matrices checked once beforehand: a step appends one segment per
        /// adapter per matrix (6,720 for 32 adapters on all seven projections of a 30-layer model), so this path
        /// checks only what can differ from call to call and retains nothing.
        public func append(_ m: LoRAOperands, tokens: Range<Int>, scale: Float) {
            precondition(m.inFeatures == inFeatures && m.outFeatures == outFeatures,
                         "LoRA: the module maps \(m.inFeatures) → \(m.outFeatures), the matrix \(inFeatures) → \(outFeatures)")
            precondition(tokens.lowerBound >= end, "LoRA: segment \(tokens) overlaps or precedes the previous one (ends at \(end))")
            guard !tokens.isEmpty else { return }
            segments.append(dl_lora_seg(a: m.a, b: m.b, wtype: m.wtype, prank: m.prank,
                                        start: Int64(tokens.lowerBound), count: Int64(tokens.count), scale: scale,
                                        gates: nil, ldg: 0, gate_col: nil))
            end = tokens.upperBound
        }

        /// A gated (MoLE) segment: as `append`, and rank column j of A/B belongs to expert `columns[j]` (-1:
        /// padding; paddedRank entries), weighted for the segment's i-th token by `gates[i · ldg + columns[j]]`.
        /// `gates` and `columns` must stay valid until `apply` returns.
        public func append(a: WeightMatrix, b: WeightMatrix, tokens: Range<Int>, scale: Float,
                           gates: UnsafePointer<Float>, ldg: Int, columns: UnsafePointer<Int32>) {
            let expand = LoRAExpandMatrix(b)
            laidOut.append(expand)
            append(LoRAOperands(a: a, b: expand), tokens: tokens, scale: scale, gates: gates, ldg: ldg, columns: columns)
        }

        /// As the gated `append(a:b:...)`, with the matrices checked once beforehand.
        public func append(_ m: LoRAOperands, tokens: Range<Int>, scale: Float,
                           gates: UnsafePointer<Float>, ldg: Int, columns: UnsafePointer<Int32>) {
            let before = segments.count
            append(m, tokens: tokens, scale: scale)
            guard segments.count > before else { return }
            segments[before].gates = gates
            segments[before].ldg = Int64(ldg)
            segments[before].gate_col = columns
        }

        /// Applies every segment: x rows (in floats, stride ldx) and y rows (out floats, stride ldy) must
        /// cover the last segment's tokens.
        public func apply(_ x: UnsafePointer<Float>, ldx: Int, into y: UnsafeMutablePointer<Float>, ldy: Int) {
            guard !segments.isEmpty else { return }
            precondition(ldx >= inFeatures && ldy >= outFeatures, "LoRA: strides \(ldx)/\(ldy) below \(inFeatures)/\(outFeatures)")
            segments.withUnsafeBufferPointer {
                dl_lora_apply($0.baseAddress!, Int64($0.count), Int64(inFeatures), Int64(outFeatures), x, Int64(ldx), y, Int64(ldy))
            }
        }
    }
}

extension Kernels {
    /// A LoRA module's B (out × paddedRank) in the layout lora.c's expand reads (`dl_lora_b_pack`): groups of 32
    /// outputs, and per rank index the group's 32 values side by side, so 32 outputs are computed as vectors with
    /// the lane tree as plain additions. Same dtype and bytes per value as the row-major B it is made from (F32,
    /// F16 or BF16), the outputs padded to a multiple of 32.
    public final class LoRAExpandMatrix: @unchecked Sendable {
        public let dtype: DType
        /// out (B's rows) and paddedRank (its columns).
        public let rows: Int, cols: Int
        let storage: Buffer

        /// From a row-major B; `quantizedTo` Q8_0 or Q4_0: an f32 B held so, each output's values quantized per block of
        /// 16 rank indices (ggml's rounding; an int8 or int4 adapter's B, laid out for VPDPBUSD: lora.c, "int8 adapters").
        public init(_ b: WeightMatrix, quantizedTo quantized: DType? = nil) {
            precondition(quantized == nil || quantized == .q8_0 || quantized == .q4_0, "LoRA: B quantized to \(quantized!) (Q8_0 or Q4_0)")
            precondition(b.dtype == .f32 || (quantized == nil && (b.dtype == .f16 || b.dtype == .bf16)),
                         "LoRA: B is \(b.dtype) (F32, F16 or BF16; F32 to quantize)")
            precondition(b.rows > 0 && b.cols > 0 && b.cols % 16 == 0, "LoRA: B is \(b.rows)×\(b.cols) (rank padded to a multiple of 16)")
            dtype = quantized ?? b.dtype
            rows = b.rows
            cols = b.cols
            let code = Int32(dtype.rawValue)
            storage = Buffer(byteCount: Int(dl_lora_b_bytes(code, Int64(rows), Int64(cols))))
            dl_lora_b_pack(code, b.data, Int64(rows), Int64(cols), storage.base)
        }

        public var byteCount: Int { storage.byteCount }
        var data: UnsafeRawPointer { UnsafeRawPointer(storage.base) }

        /// B widened to f32, row-major (rows × cols floats).
        public func unpack(into dst: UnsafeMutablePointer<Float>) {
            dl_lora_b_unpack(Int32(dtype.rawValue), storage.base, Int64(rows), Int64(cols), dst)
        }
    }

    /// One LoRA module's A (paddedRank × in, row-major) and B (out × paddedRank, laid out for the expand) as lora.c
    /// reads them, checked when the module is made. Holds raw pointers: valid only while the matrices' storage
    /// lives (their owner keeps both).
    public struct LoRAOperands: @unchecked Sendable {
        let a: UnsafeRawPointer, b: UnsafeRawPointer
        let wtype: Int32
        let prank: Int64
        /// A's and B's bytes (the spans a `PrefetchPlan` names).
        public let aBytes: Int64, bBytes: Int64
        public let inFeatures: Int, outFeatures: Int

        /// A Q8_0 or Q4_0 A must carry its int8 copy (`WeightMatrix.withInt8`), which the kernel reads.
        public init(a: WeightMatrix, b: LoRAExpandMatrix) {
            precondition(a.dtype == b.dtype && [.f32, .f16, .bf16, .q8_0, .q4_0].contains(a.dtype),
                         "LoRA: A is \(a.dtype), B is \(b.dtype) (both F32, F16, BF16, Q8_0 or Q4_0)")
            precondition(a.rows > 0 && a.rows % 16 == 0 && b.cols == a.rows && a.cols > 0 && a.cols % 16 == 0 && b.rows > 0,
                         "LoRA: A is \(a.rows)×\(a.cols), B is \(b.rows)×\(b.cols) (rank padded to a multiple of 16, in a multiple of 16)")
            if a.dtype == .q8_0 || a.dtype == .q4_0 {
                guard let packed = a.int8 else { preconditionFailure("LoRA: a \(a.dtype) A without its int8 copy") }
                precondition(Kernels.hasInt8Dot, "LoRA: \(a.dtype) adapters need AVX-512 VNNI or AVX-VNNI")
                self.a = UnsafeRawPointer(packed.storage.base)
                aBytes = Int64(packed.byteCount)
            } else {
                self.a = UnsafeRawPointer(a.data)
                aBytes = Int64(a.byteCount)
            }
            self.b = b.data
            wtype = Int32(a.dtype.rawValue)
            prank = Int64(a.rows)
            bBytes = Int64(b.byteCount)
            inFeatures = a.cols
            outFeatures = b.rows
        }
    }
}

extension Kernels {
    /// Byte spans a compute-bound product pulls toward the cache while it runs (ckernels.h's dl_span): the
    /// adapter weights of the LoRA call that follows it. A batch of distinct adapters reads each one's A and B
    /// once per step, a memory-bound stream; named here, those bytes are fetched in the shadow of the base
    /// product's arithmetic (which at batch 8 and above is compute-bound), so the LoRA call finds them in L2/L3.
    /// Reused across steps: `removeAll` keeps capacity, so a warm step loop does not allocate.
    public final class PrefetchPlan: @unchecked Sendable {
        private var spans: [dl_span] = []

        public init() {}

        public var isEmpty: Bool { spans.isEmpty }
        public var count: Int { spans.count }
        /// The bytes the plan names.
        public var bytes: Int { spans.reduce(0) { $0 + Int($1.bytes) } }

        public func removeAll() { spans.removeAll(keepingCapacity: true) }

        /// A module's A, then its B. An int4 (Q4_0) module is left out: at its bytes the prefetch cost the products more
        /// than it saved the LoRA calls (8 of 8 alternating rounds, docs/design/lora-kernels.md "int4 adapters").
        public func append(_ m: LoRAOperands) {
            guard m.wtype != Int32(DType.q4_0.rawValue) else { return }
            spans.append(dl_span(p: m.a, bytes: m.aBytes))
            spans.append(dl_span(p: m.b, bytes: m.bBytes))
        }

        /// Calls body with the plan's spans (nil and 0 for no plan or an empty one).
        static func withSpans<R>(_ plan: PrefetchPlan?, _ body: (UnsafePointer<dl_span>?, Int64) -> R) -> R {
            guard let plan, !plan.spans.isEmpty else { return body(nil, 0) }
            return plan.spans.withUnsafeBufferPointer { body($0.baseAddress, Int64($0.count)) }
        }
    }
}
