import CKernels
import Foundation

/// A block of raw memory that a tensor views: either owned (allocated here, 64-byte aligned) or borrowed
/// from an owner that keeps it alive (a memory-mapped checkpoint file).
public final class Buffer: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    private let owner: AnyObject?
    private let owned: Bool

    /// Allocates `byteCount` zeroed bytes, 64-byte aligned. Running out of memory stops the process with a
    /// message naming the size (a tensor that silently did not exist would only fail later, elsewhere).
    public init(byteCount: Int) {
        precondition(byteCount >= 0, "Buffer: negative size \(byteCount)")
        let size = max(byteCount, 1)
        var memory: UnsafeMutableRawPointer?
        guard posix_memalign(&memory, 64, size) == 0, let memory else {
            fatalError("dlora: cannot allocate \(size) bytes for a tensor or scratch buffer (out of memory)")
        }
        base = memory
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        self.byteCount = byteCount
        owner = nil
        owned = true
    }

    /// Views memory owned by `owner` (kept alive as long as this buffer).
    public init(borrowing base: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.base = UnsafeMutableRawPointer(mutating: base)
        self.byteCount = byteCount
        self.owner = owner
        owned = false
    }

    /// A buffer of `count` floats.
    public convenience init(floats count: Int) {
        self.init(byteCount: count * MemoryLayout<Float>.stride)
    }

    public var floats: UnsafeMutablePointer<Float> { base.assumingMemoryBound(to: Float.self) }

    deinit {
        if owned { free(base) }
    }
}

/// A 2-D weight matrix of `rows` x `cols` (cols contiguous), stored in `dtype` blocks.
/// Shapes follow the math, y = W x: rows = output features, cols = input features.
public struct WeightMatrix: @unchecked Sendable {
    public let dtype: DType
    public let rows: Int
    public let cols: Int
    public let storage: Buffer
    public let offset: Int
    /// The matrix rounded to bf16 and packed for VDPBF16PS (`packedBF16()`): when set, `Kernels.matmul` runs
    /// bf16 products on it (`--matmul-precision bf16`) instead of the f32 kernels on `storage`.
    public var bf16: Kernels.PackedBF16?
    /// The matrix's codes regrouped for products with int8 activations (`Kernels.PackedInt8`, AVX-512 VNNI or AVX2): when
    /// set, `Kernels.matmul` runs them (`--matmul-precision int8`) instead of the f32 kernels on `storage`.
    public var int8: Kernels.PackedInt8?

    public init(dtype: DType, rows: Int, cols: Int, storage: Buffer, offset: Int = 0) {
        precondition(rows >= 0 && cols >= 0 && cols % dtype.blockSize == 0, "invalid matrix shape")
        precondition(offset + rows * (dtype.byteCount(elements: cols) ?? 0) <= storage.byteCount, "matrix exceeds its buffer")
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.storage = storage
        self.offset = offset
    }

    public var rowBytes: Int { dtype.byteCount(elements: cols)! }
    public var byteCount: Int { rowBytes * rows }
    public var data: UnsafeRawPointer { UnsafeRawPointer(storage.base + offset) }

    /// A dense f32 matrix from values (row-major), for tests and small parameters.
    public static func f32(rows: Int, cols: Int, values: [Float]) -> WeightMatrix {
        precondition(values.count == rows * cols)
        let buf = Buffer(floats: values.count)
        values.withUnsafeBufferPointer { buf.floats.update(from: $0.baseAddress!, count: values.count) }
        return WeightMatrix(dtype: .f32, rows: rows, cols: cols, storage: buf)
    }
}

/// Returns the heap's free pages to the system (glibc's `malloc_trim(0)`; nothing elsewhere). Tensors below glibc's
/// mmap threshold (an adapter's, most of them) come from the heap, and their freed pages stay in the process's RSS
/// until this runs.
extension Kernels {
    public static func returnFreeHeap() { _ = dl_return_free_heap() }
}
