/// K/V of consecutive blocks of one request, as they travel between replicas (staged migration): blocks
/// `firstBlock ..< firstBlock + blockCount`, each `floatsPerBlock` floats in `PagedKVStorage.copyOut` order
/// (every layer's K then V rows of the block's positions). `computed` is how many positions of the request
/// had K/V when the blocks were read.
public struct KVBlocks: Sendable, Equatable {
    public var firstBlock: Int
    public var blockSize: Int
    public var floatsPerBlock: Int
    public var computed: Int
    public var data: [Float]

    public init(firstBlock: Int, blockSize: Int, floatsPerBlock: Int, computed: Int, data: [Float]) {
        self.firstBlock = firstBlock
        self.blockSize = blockSize
        self.floatsPerBlock = floatsPerBlock
        self.computed = computed
        self.data = data
    }

    public var blockCount: Int { floatsPerBlock > 0 ? data.count / floatsPerBlock : 0 }
}
