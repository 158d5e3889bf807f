import CKernels
import Testing
import TestSupport
@testable import Kernels

/// The prefetch plan a bf16 product pulls toward the cache in its shadow (prefetch.h): its parts together name
/// every cache line of every span exactly once, in span order, however the product is split; and a product
/// that prefetches computes the same bits as one that does not.
@Suite struct PrefetchPlanTests {
    typealias Rng = OpsParityTests.Rng

    /// The cache lines a span covers: the line of its first byte through the line of its last.
    static func lines(_ p: UnsafeRawPointer, bytes: Int) -> [UInt] {
        guard bytes > 0 else { return [] }
        let first = UInt(bitPattern: p) & ~63, last = (UInt(bitPattern: p) + UInt(bytes) - 1) & ~63
        return Array(stride(from: first, through: last, by: 64))
    }

    @Test func partsCoverEveryLineOnceInOrder() {
        let arena = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 64)
        defer { arena.deallocate() }
        var rng = Rng(seed: 11)
        for trial in 0..<40 {
            // Spans at odd offsets and of odd sizes (empty, under a line, straddling lines), some overlapping.
            let count = 1 + Int(rng.next() % 6)
            var spans: [dl_span] = []
            var expected: [UInt] = []
            for _ in 0..<count {
                let offset = Int(rng.next() % 20_000), bytes = [0, 1, 63, 64, 65, 127, 640, 4_097][Int(rng.next() % 8)]
                spans.append(dl_span(p: arena + offset, bytes: Int64(bytes)))
                expected += Self.lines(arena + offset, bytes: bytes)
            }
            for parts in [1, 2, 3, 7, 30] {
                for units in [1, 2, 5, 64] {
                    var got = [UnsafeRawPointer?](repeating: nil, count: expected.count + 8)
                    let n = got.withUnsafeMutableBufferPointer { buf in
                        spans.withUnsafeBufferPointer {
                            dl_prefetch_trace($0.baseAddress, Int64($0.count), Int64(parts), Int64(units), buf.baseAddress, Int64(buf.count))
                        }
                    }
                    let traced = got.prefix(Int(n)).map { UInt(bitPattern: $0) }
                    #expect(Int(n) == expected.count && traced == expected, "trial \(trial): \(parts) parts of \(units) units")
                }
            }
        }
        // No plan, or only empty spans: nothing.
        #expect(dl_prefetch_trace(nil, 0, 4, 4, nil, 0) == 0)
        let empty = [dl_span(p: arena, bytes: 0), dl_span(p: arena + 64, bytes: 0)]
        #expect(empty.withUnsafeBufferPointer { dl_prefetch_trace($0.baseAddress, 2, 3, 3, nil, 0) } == 0)
    }

    /// A random n × k matrix of `type`, as a checkpoint would hold it.
    static func matrix(_ type: DType, rows n: Int, cols k: Int, rng: inout Rng) -> WeightMatrix {
        let bytes = MatmulDQTests.randomMatrix(type, rows: n, cols: k, rng: &rng)
        let storage = Buffer(byteCount: bytes.count)
        bytes.withUnsafeBytes { storage.base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return WeightMatrix(dtype: type, rows: n, cols: k, storage: storage)
    }

    /// A plan naming 16 rank-16 adapter modules (1024 → 1024, bf16) as the next LoRA call's would be: A, then B; the
    /// modules are returned too, to be kept alive while the plan names them.
    static func sixteenModules() -> (plan: Kernels.PrefetchPlan, modules: [(WeightMatrix, Kernels.LoRAExpandMatrix)]) {
        let modules = (0..<16).map { _ in
            (WeightMatrix(dtype: .bf16, rows: 16, cols: 1024, storage: Buffer(byteCount: 16 * 1024 * 2)),
             Kernels.LoRAExpandMatrix(WeightMatrix(dtype: .bf16, rows: 1024, cols: 16, storage: Buffer(byteCount: 1024 * 16 * 2))))
        }
        let plan = Kernels.PrefetchPlan()
        for (a, b) in modules { plan.append(Kernels.LoRAOperands(a: a, b: b)) }
        return (plan, modules)
    }

    /// The plan only warms caches: with it, the quantized-code and the dense bf16 products give the same bits.
    @Test(arguments: [DType.q4_1, .q8_0, .f32])
    func productsWithAPlanGiveTheSameBits(type: DType) {
        var rng = Rng(seed: 23)
        let (m, n, k) = (32, 200, 576)
        let packed = Self.matrix(type, rows: n, cols: k, rng: &rng).packedBF16()
        let x = rng.floats(m * k)
        let (plan, modules) = Self.sixteenModules()
        defer { withExtendedLifetime(modules) {} }
        #expect(plan.count == 32 && plan.bytes == 16 * 2 * 16 * 1024 * 2)
        func run(_ plan: Kernels.PrefetchPlan?) -> [Float] {
            var y = [Float](repeating: .nan, count: m * n)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { Kernels.matmulBF16(packed, xp.baseAddress!, ldx: k, ntok: m, $0.baseAddress!, ldy: n, prefetch: plan) }
            }
            return y
        }
        let without = run(nil), with = run(plan)
        #expect(with == without && !without.contains { $0.isNaN })
        plan.removeAll()
        #expect(plan.isEmpty && run(plan) == without)
    }

    /// The products with int8 activations take the same plan (a share per task, a step per tile): the same bits with
    /// it as without, at a decode batch (32 tokens) and a single token, on more rows than one task takes.
    @Test(.enabled(if: Kernels.hasInt8Dot), arguments: [DType.q4_1, .q8_0])
    func int8ProductsWithAPlanGiveTheSameBits(type: DType) throws {
        var rng = Rng(seed: 29)
        let (n, k) = (200, 576)
        let packed = try #require(Kernels.PackedInt8(Self.matrix(type, rows: n, cols: k, rng: &rng)))
        let (plan, modules) = Self.sixteenModules()
        defer { withExtendedLifetime(modules) {} }
        #expect(plan.count == 32)
        for m in [32, 1] {
            let x = rng.floats(m * k)
            func run(_ plan: Kernels.PrefetchPlan?) -> [Float] {
                var y = [Float](repeating: .nan, count: m * n)
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { Kernels.matmulInt8(packed, xp.baseAddress!, ldx: k, ntok: m, $0.baseAddress!, ldy: n, prefetch: plan) }
                }
                return y
            }
            let without = run(nil), with = run(plan)
            #expect(with.map(\.bitPattern) == without.map(\.bitPattern) && !without.contains { $0.isNaN }, "\(m) tokens")
        }
    }

    /// The plan names an int8 module's A and B, and leaves an int4 module out (measured not to pay at its bytes).
    @Test(.enabled(if: Kernels.hasInt8Dot)) func int4ModulesAreNotNamed() {
        let a = [Float](repeating: 0.5, count: 16 * 64), b = [Float](repeating: 0.25, count: 32 * 16)
        func operands(_ dtype: DType) -> (Kernels.LoRAOperands, [Any]) {
            let q = Buffer(byteCount: 16 * dtype.byteCount(elements: 64)!)
            a.withUnsafeBufferPointer { Kernels.quantizeRows($0.baseAddress!, rows: 16, cols: 64, to: dtype, into: q.base) }
            let w = WeightMatrix(dtype: dtype, rows: 16, cols: 64, storage: q)
            let packed = Kernels.PackedInt8(w)
            let bf = Buffer(floats: b.count)
            bf.floats.update(from: b, count: b.count)
            let expand = Kernels.LoRAExpandMatrix(WeightMatrix(dtype: .f32, rows: 32, cols: 16, storage: bf), quantizedTo: dtype)
            return (Kernels.LoRAOperands(a: w.withInt8(packed), b: expand), [q, packed as Any, expand])
        }
        let (int8, keep8) = operands(.q8_0), (int4, keep4) = operands(.q4_0)
        let plan = Kernels.PrefetchPlan()
        plan.append(int4)
        #expect(plan.isEmpty)
        plan.append(int8)
        #expect(plan.count == 2 && plan.bytes == Int(int8.aBytes + int8.bBytes))
        withExtendedLifetime((keep8, keep4)) {}
    }
}
