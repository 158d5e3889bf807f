/// The tensor storage of a paged KV cache: for every layer, K and V arrays of
/// [numBlocks][blockSize][numKVHeads][headDim] f32. Which block belongs to which sequence is integer
/// bookkeeping elsewhere (the block pool); this type only owns the floats and copies blocks in and out.
public final class PagedKVStorage: @unchecked Sendable {
    public let numLayers: Int
    public let numBlocks: Int
    public let blockSize: Int
    public let numKVHeads: Int
    public let headDim: Int
    private let keys: [Buffer]
    private let values: [Buffer]

    public init(numLayers: Int, numBlocks: Int, blockSize: Int, numKVHeads: Int, headDim: Int) {
        precondition(numLayers > 0 && numBlocks > 0 && blockSize > 0 && numKVHeads > 0 && headDim > 0)
        self.numLayers = numLayers
        self.numBlocks = numBlocks
        self.blockSize = blockSize
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        let floats = numBlocks * blockSize * numKVHeads * headDim
        keys = (0..<numLayers).map { _ in Buffer(floats: floats) }
        values = (0..<numLayers).map { _ in Buffer(floats: floats) }
    }

    /// Floats in one token's K (or V) row of one layer.
    public var rowFloats: Int { numKVHeads * headDim }
    /// Bytes one block takes over all layers, K and V: the unit the memory budget counts in.
    public var bytesPerBlock: Int { Self.bytesPerBlock(numLayers: numLayers, blockSize: blockSize, numKVHeads: numKVHeads, headDim: headDim) }

    public static func bytesPerBlock(numLayers: Int, blockSize: Int, numKVHeads: Int, headDim: Int) -> Int {
        2 * numLayers * blockSize * numKVHeads * headDim * MemoryLayout<Float>.stride
    }

    public func keys(layer: Int) -> UnsafeMutablePointer<Float> { keys[layer].floats }
    public func values(layer: Int) -> UnsafeMutablePointer<Float> { values[layer].floats }

    /// Floats of one block in one layer (K or V).
    public var blockFloats: Int { blockSize * rowFloats }

    /// Copies block `block` (all layers, K then V per layer) into `destination` (blockFloats * 2 * numLayers).
    public func copyOut(block: Int, to destination: UnsafeMutablePointer<Float>) {
        var dst = destination
        for layer in 0..<numLayers {
            dst.update(from: keys[layer].floats + block * blockFloats, count: blockFloats)
            dst += blockFloats
            dst.update(from: values[layer].floats + block * blockFloats, count: blockFloats)
            dst += blockFloats
        }
    }

    /// The inverse of `copyOut`.
    public func copyIn(block: Int, from source: UnsafePointer<Float>) {
        var src = source
        for layer in 0..<numLayers {
            (keys[layer].floats + block * blockFloats).update(from: src, count: blockFloats)
            src += blockFloats
            (values[layer].floats + block * blockFloats).update(from: src, count: blockFloats)
            src += blockFloats
        }
    }
}
