import CKernels

/// The element type a paged KV cache stores. `f16` halves the cache's bytes (twice the positions in the same
/// memory, half the bytes attention reads per position); rows are rounded to nearest even and clamped to
/// ±65504 as they are written, and widened exactly as they are read, so attention over an f16 cache computes
/// exactly what it would over an f32 cache holding the rounded values.
public enum KVCacheDType: String, Sendable, CaseIterable {
    case f32
    case f16

    public var bytes: Int { self == .f32 ? 4 : 2 }
}

/// The tensor storage of a paged KV cache: for every layer, K and V arrays of
/// [numBlocks][blockSize][numKVHeads][headDim] values of `dtype`. Which block belongs to which sequence is
/// integer bookkeeping elsewhere (the block pool); this type only owns the values and copies blocks in and out:
/// as f32 values (`copyOut`/`copyIn`: the K/V that moves between replicas, whatever each one stores) or in
/// the storage's own bytes (`copyOutRaw`/`copyInRaw`: swaps to host memory).
public final class PagedKVStorage: @unchecked Sendable {
    public let numLayers: Int
    public let numBlocks: Int
    public let blockSize: Int
    public let numKVHeads: Int
    public let headDim: Int
    public let dtype: KVCacheDType
    private let keys: [Buffer]
    private let values: [Buffer]

    public init(numLayers: Int, numBlocks: Int, blockSize: Int, numKVHeads: Int, headDim: Int, dtype: KVCacheDType = .f32) {
        precondition(numLayers > 0 && numBlocks > 0 && blockSize > 0 && numKVHeads > 0 && headDim > 0)
        self.numLayers = numLayers
        self.numBlocks = numBlocks
        self.blockSize = blockSize
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.dtype = dtype
        let bytes = numBlocks * blockSize * numKVHeads * headDim * dtype.bytes
        keys = (0..<numLayers).map { _ in Buffer(byteCount: bytes) }
        values = (0..<numLayers).map { _ in Buffer(byteCount: bytes) }
    }

    /// Values in one token's K (or V) row of one layer.
    public var rowFloats: Int { numKVHeads * headDim }
    /// Bytes one block takes over all layers, K and V: the unit the memory budget counts in.
    public var bytesPerBlock: Int {
        Self.bytesPerBlock(numLayers: numLayers, blockSize: blockSize, numKVHeads: numKVHeads, headDim: headDim, dtype: dtype)
    }

    public static func bytesPerBlock(numLayers: Int, blockSize: Int, numKVHeads: Int, headDim: Int, dtype: KVCacheDType = .f32) -> Int {
        2 * numLayers * blockSize * numKVHeads * headDim * dtype.bytes
    }

    /// The f32 K (V) values of `layer`; only for an f32 cache.
    public func keys(layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(dtype == .f32, "keys(layer:) of an \(dtype) cache")
        return keys[layer].floats
    }
    public func values(layer: Int) -> UnsafeMutablePointer<Float> {
        precondition(dtype == .f32, "values(layer:) of an \(dtype) cache")
        return values[layer].floats
    }

    /// The K (V) storage of `layer`, values of `dtype`.
    public func rawKeys(layer: Int) -> UnsafeMutableRawPointer { keys[layer].base }
    public func rawValues(layer: Int) -> UnsafeMutableRawPointer { values[layer].base }

    /// Value `index` of `layer`'s K (or V) storage, as f32 (exact).
    public func value(layer: Int, key: Bool, index: Int) -> Float {
        precondition(index >= 0 && index < numBlocks * blockFloats)
        var f: Float = 0
        floats(fromRaw: (key ? keys[layer].base : values[layer].base) + index * dtype.bytes, count: 1, into: &f)
        return f
    }

    /// Values of one block in one layer (K or V).
    public var blockFloats: Int { blockSize * rowFloats }
    /// Bytes of one block in one layer (K or V).
    public var blockBytes: Int { blockFloats * dtype.bytes }

    /// Calls `body` with block `block`'s storage in each layer, K then V per layer: the order of every copy below.
    private func forEachPart(of block: Int, _ body: (UnsafeMutableRawPointer) -> Void) {
        precondition(block >= 0 && block < numBlocks, "block \(block) of \(numBlocks)")
        for layer in 0..<numLayers {
            body(keys[layer].base + block * blockBytes)
            body(values[layer].base + block * blockBytes)
        }
    }

    /// Copies block `block` (all layers, K then V per layer) into `destination` as f32 (blockFloats * 2 * numLayers).
    public func copyOut(block: Int, to destination: UnsafeMutablePointer<Float>) {
        var dst = destination
        forEachPart(of: block) { src in
            floats(fromRaw: src, count: blockFloats, into: dst)
            dst += blockFloats
        }
    }

    /// The inverse of `copyOut`: f32 values in, stored as `dtype` (an f16 cache rounds and clamps them as
    /// `Kernels.writeKV` does).
    public func copyIn(block: Int, from source: UnsafePointer<Float>) {
        var src = source
        forEachPart(of: block) { dst in
            switch dtype {
            case .f32: dst.assumingMemoryBound(to: Float.self).update(from: src, count: blockFloats)
            case .f16: dl_kv_to_f16(dst.assumingMemoryBound(to: UInt16.self), src, Int64(blockFloats))
            }
            src += blockFloats
        }
    }

    /// Copies block `block` in the storage's own bytes (bytesPerBlock, `copyOut`'s order).
    public func copyOutRaw(block: Int, to destination: UnsafeMutableRawPointer) {
        var dst = destination
        forEachPart(of: block) { src in
            dst.copyMemory(from: src, byteCount: blockBytes)
            dst += blockBytes
        }
    }

    /// The inverse of `copyOutRaw`.
    public func copyInRaw(block: Int, from source: UnsafeRawPointer) {
        var src = source
        forEachPart(of: block) { dst in
            dst.copyMemory(from: src, byteCount: blockBytes)
            src += blockBytes
        }
    }

    /// `count` values in `copyOutRaw`'s bytes as f32 (`copyOut`'s values for the same blocks).
    public func floats(fromRaw source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .f32: destination.update(from: source.assumingMemoryBound(to: Float.self), count: count)
        case .f16: dl_kv_to_f32(destination, source.assumingMemoryBound(to: UInt16.self), Int64(count))
        }
    }
}
