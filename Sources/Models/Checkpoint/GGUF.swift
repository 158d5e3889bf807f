import Foundation
import Kernels
import Tokenizers

/// A GGUF metadata value.
public enum GGUFValue: Sendable, Equatable {
    case int(Int)
    case float(Double)
    case bool(Bool)
    case string(String)
    case ints([Int])
    case floats([Double])
    case bools([Bool])
    case strings([String])
}

/// One tensor of a GGUF file: name, type, shape in ggml order (ne0, the contiguous dimension, first) and
/// where its bytes lie in the file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Absolute byte offset in the file.
    public let offset: Int
    public let byteCount: Int
}

/// A GGUF v2/v3 file, memory-mapped and fully validated on open: header, typed metadata (arrays too),
/// tensor infos, alignment, every tensor's bytes inside the file and no two tensors overlapping.
public final class GGUFFile: MetadataSource, @unchecked Sendable {
    public let file: MappedFile
    public let version: UInt32
    public let alignment: Int
    public let metadata: [String: GGUFValue]
    public let tensors: [GGUFTensorInfo]
    private let byName: [String: Int]

    /// Names of ggml types we do not read, for clear messages.
    static let knownTypeNames: [UInt32: String] = [
        6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
        16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
        23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0",
        39: "MXFP4",
    ]

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        var r = ByteReader(file)
        let magic = try r.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else { throw r.error("not a GGUF file (bad magic)") }  // "GGUF"
        version = try r.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw r.error("unsupported GGUF version \(version) (expected 3)") }
        let tensorCount = try r.read(UInt64.self, "tensor count")
        let kvCount = try r.read(UInt64.self, "metadata count")
        // Every tensor info takes at least 8+4+8+4+8 bytes, every key/value at least 8+4+1.
        guard tensorCount <= UInt64(r.remaining / 32) else { throw r.error("tensor count \(tensorCount) cannot fit in the file") }
        guard kvCount <= UInt64(r.remaining / 13) else { throw r.error("metadata count \(kvCount) cannot fit in the file") }

        var metadata: [String: GGUFValue] = [:]
        for _ in 0..<Int(kvCount) {
            let key = try Self.string(&r, "metadata key")
            let type = try r.read(UInt32.self, "type of '\(key)'")
            guard metadata[key] == nil else { throw r.error("duplicate metadata key '\(key)'") }
            metadata[key] = try Self.value(&r, type: type, key: key)
        }
        self.metadata = metadata

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard case .int(let v) = a, v > 0, v <= 1 << 16, v & (v - 1) == 0 else {
                throw r.error("general.alignment must be a power of two, got \(a)")
            }
            alignment = v
        }
        self.alignment = alignment

        struct RawInfo { let name: String; let type: UInt32; let dims: [Int]; let offset: UInt64 }
        var raw: [RawInfo] = []
        raw.reserveCapacity(Int(tensorCount))
        for _ in 0..<Int(tensorCount) {
            let name = try Self.string(&r, "tensor name")
            let nDims = try r.read(UInt32.self, "dimension count of '\(name)'")
            guard (1...4).contains(nDims) else { throw r.error("has \(nDims) dimensions (expected 1 to 4)", tensor: name) }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let v = try r.read(UInt64.self, "dimension \(d) of '\(name)'")
                guard v >= 1, v <= 1 << 32 else { throw r.error("dimension \(d) is \(v)", tensor: name) }
                dims.append(Int(v))
            }
            let type = try r.read(UInt32.self, "type of '\(name)'")
            let offset = try r.read(UInt64.self, "offset of '\(name)'")
            raw.append(RawInfo(name: name, type: type, dims: dims, offset: offset))
        }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        guard dataStart <= file.count || raw.isEmpty else { throw r.error("tensor data section starts past the end of the file") }

        var tensors: [GGUFTensorInfo] = []
        var byName: [String: Int] = [:]
        for t in raw {
            guard byName[t.name] == nil else { throw r.error("duplicate tensor name", tensor: t.name) }
            guard let dtype = DType(rawValue: t.type) else {
                let known = Self.knownTypeNames[t.type].map { "\($0) (\(t.type))" } ?? "\(t.type)"
                throw r.error("unsupported tensor type \(known); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1", tensor: t.name)
            }
            var elements = 1
            for d in t.dims {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o, p <= 1 << 40 else { throw r.error("shape \(t.dims) is too large", tensor: t.name) }
                elements = p
            }
            guard t.dims[0] % dtype.blockSize == 0, let bytes = dtype.byteCount(elements: elements) else {
                throw r.error("row length \(t.dims[0]) is not a multiple of the \(dtype) block size \(dtype.blockSize)", tensor: t.name)
            }
            guard t.offset % UInt64(alignment) == 0 else {
                throw r.error("data offset \(t.offset) is not aligned to \(alignment) bytes", tensor: t.name)
            }
            guard t.offset <= UInt64(file.count), UInt64(dataStart) + t.offset + UInt64(bytes) <= UInt64(file.count) else {
                throw r.error("data (offset \(t.offset), \(bytes) bytes) runs past the end of the file (\(file.count) bytes)", tensor: t.name)
            }
            byName[t.name] = tensors.count
            tensors.append(GGUFTensorInfo(name: t.name, dtype: dtype, shape: t.dims, offset: dataStart + Int(t.offset), byteCount: bytes))
        }
        let sorted = tensors.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw r.error("data overlaps tensor '\(a.name)'", tensor: b.name)
        }
        self.tensors = tensors
        self.byName = byName
    }

    public func tensorInfo(named name: String) -> GGUFTensorInfo? { byName[name].map { tensors[$0] } }

    static func string(_ r: inout ByteReader, _ what: String) throws -> String {
        let n = try r.read(UInt64.self, "length of \(what)")
        guard n <= UInt64(r.remaining) else { throw r.error("\(what) of \(n) bytes runs past the end of the file (truncated?)") }
        let bytes = try r.bytes(Int(n), what)
        guard let s = String(validating: bytes, as: UTF8.self) else { throw r.error("\(what) is not valid UTF-8") }
        return s
    }

    /// Element sizes of the fixed-size scalar types (for array bounds checks before allocation).
    static func scalarSize(_ type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: 1
        case 2, 3: 2
        case 4, 5, 6: 4
        case 10, 11, 12: 8
        default: nil
        }
    }

    static func scalar(_ r: inout ByteReader, type: UInt32, key: String) throws -> GGUFValue {
        let what = "value of '\(key)'"
        switch type {
        case 0: return .int(Int(try r.read(UInt8.self, what)))
        case 1: return .int(Int(try r.read(Int8.self, what)))
        case 2: return .int(Int(try r.read(UInt16.self, what)))
        case 3: return .int(Int(try r.read(Int16.self, what)))
        case 4: return .int(Int(try r.read(UInt32.self, what)))
        case 5: return .int(Int(try r.read(Int32.self, what)))
        case 6: return .float(Double(Float(bitPattern: try r.read(UInt32.self, what))))
        case 7:
            let b = try r.read(UInt8.self, what)
            guard b <= 1 else { throw r.error("metadata '\(key)': bool value \(b) is not 0 or 1") }
            return .bool(b == 1)
        case 8: return .string(try string(&r, what))
        case 10:
            let v = try r.read(UInt64.self, what)
            return v <= UInt64(Int.max) ? .int(Int(v)) : .float(Double(v))
        case 11: return .int(Int(try r.read(Int64.self, what)))
        case 12: return .float(Double(bitPattern: try r.read(UInt64.self, what)))
        default: throw r.error("metadata '\(key)' has unknown value type \(type)")
        }
    }

    static func value(_ r: inout ByteReader, type: UInt32, key: String) throws -> GGUFValue {
        guard type == 9 else { return try scalar(&r, type: type, key: key) }
        let elementType = try r.read(UInt32.self, "array type of '\(key)'")
        let count = try r.read(UInt64.self, "array length of '\(key)'")
        let minSize = elementType == 8 ? 8 : (scalarSize(elementType) ?? 1)
        guard count <= UInt64(r.remaining / minSize) else {
            throw r.error("metadata '\(key)': array of \(count) elements runs past the end of the file")
        }
        let n = Int(count)
        switch elementType {
        case 0, 1, 2, 3, 4, 5, 10, 11:
            var a: [Int] = []
            a.reserveCapacity(n)
            for _ in 0..<n {
                guard case .int(let v) = try scalar(&r, type: elementType, key: key) else {
                    throw r.error("metadata '\(key)': integer out of range")
                }
                a.append(v)
            }
            return .ints(a)
        case 6, 12:
            var a: [Double] = []
            a.reserveCapacity(n)
            for _ in 0..<n { if case .float(let v) = try scalar(&r, type: elementType, key: key) { a.append(v) } }
            return .floats(a)
        case 7:
            var a: [Bool] = []
            a.reserveCapacity(n)
            for _ in 0..<n { if case .bool(let v) = try scalar(&r, type: 7, key: key) { a.append(v) } }
            return .bools(a)
        case 8:
            var a: [String] = []
            a.reserveCapacity(n)
            for _ in 0..<n { a.append(try string(&r, "element of '\(key)'")) }
            return .strings(a)
        default:
            throw r.error("metadata '\(key)': arrays of type \(elementType) are not supported")
        }
    }

    // MARK: MetadataSource

    public func string(_ key: String) -> String? {
        if case .string(let s) = metadata[key] { return s }
        return nil
    }

    public func int(_ key: String) -> Int? {
        switch metadata[key] {
        case .int(let v): return v
        case .float(let v) where v == v.rounded() && abs(v) < 1e15: return Int(v)
        default: return nil
        }
    }

    public func float(_ key: String) -> Double? {
        switch metadata[key] {
        case .float(let v): return v
        case .int(let v): return Double(v)
        default: return nil
        }
    }

    public func bool(_ key: String) -> Bool? {
        if case .bool(let b) = metadata[key] { return b }
        return nil
    }

    public func strings(_ key: String) -> [String]? {
        if case .strings(let a) = metadata[key] { return a }
        return nil
    }

    public func ints(_ key: String) -> [Int]? {
        if case .ints(let a) = metadata[key] { return a }
        return nil
    }

    public func floats(_ key: String) -> [Float]? {
        switch metadata[key] {
        case .floats(let a): return a.map { Float($0) }
        case .ints(let a): return a.map { Float($0) }
        default: return nil
        }
    }

    public func hasKey(_ key: String) -> Bool { metadata[key] != nil }
}

/// A Llama-family model in a GGUF file. Matrices are borrowed from the memory map as stored.
public final class GGUFCheckpoint: ModelCheckpoint, @unchecked Sendable {
    public let gguf: GGUFFile
    public let config: ModelConfig
    public var path: String { gguf.file.path }
    public var metadata: (any MetadataSource)? { gguf }
    private let storage: Buffer

    public convenience init(path: String) throws {
        try self.init(gguf: GGUFFile(path: path))
    }

    public init(gguf: GGUFFile) throws {
        self.gguf = gguf
        storage = Buffer(borrowing: gguf.file.base, byteCount: gguf.file.count, owner: gguf.file)
        let path = gguf.file.path
        func fail(_ problem: String, tensor: String? = nil) -> CheckpointError {
            CheckpointError(file: path, tensor: tensor, problem: problem)
        }
        guard let archName = gguf.string("general.architecture") else { throw fail("missing metadata general.architecture") }
        guard let arch = Architecture(rawValue: archName) else {
            throw fail("unsupported architecture '\(archName)' (supported: llama, mistral, qwen2)")
        }
        func required(_ key: String) throws -> Int {
            guard let v = gguf.int("\(archName).\(key)") else { throw fail("missing or non-integer metadata \(archName).\(key)") }
            return v
        }
        let hidden = try required("embedding_length")
        let heads = try required("attention.head_count")
        guard heads > 0 else { throw fail("\(archName).attention.head_count is \(heads)") }
        guard let embedding = gguf.tensorInfo(named: LlamaTensor.tokenEmbedding.ggufName), embedding.shape.count == 2 else {
            throw fail("missing or not 2-D", tensor: LlamaTensor.tokenEmbedding.ggufName)
        }
        var scaling = RopeScaling.none
        if let type = gguf.string("\(archName).rope.scaling.type"), type != "none" {
            guard type == "linear", let f = gguf.float("\(archName).rope.scaling.factor") else {
                throw fail("unsupported RoPE scaling '\(type)'")
            }
            scaling = .linear(factor: f)
        }
        let eos = gguf.int("tokenizer.ggml.eos_token_id")
        config = ModelConfig(
            architecture: arch,
            hiddenSize: hidden,
            intermediateSize: try required("feed_forward_length"),
            numLayers: try required("block_count"),
            numHeads: heads,
            numKVHeads: gguf.int("\(archName).attention.head_count_kv") ?? heads,
            headDim: gguf.int("\(archName).attention.key_length") ?? (hidden / heads),
            vocabSize: embedding.shape[1],
            rmsNormEps: Float(gguf.float("\(archName).attention.layer_norm_rms_epsilon") ?? 1e-5),
            ropeTheta: gguf.float("\(archName).rope.freq_base") ?? 10000,
            ropeScaling: scaling,
            ropeStyle: arch == .qwen2 ? .halves : .adjacentPairs,
            maxPositionEmbeddings: try required("context_length"),
            tieWordEmbeddings: gguf.tensorInfo(named: LlamaTensor.output.ggufName) == nil,
            attentionBias: gguf.tensorInfo(named: LlamaTensor.qBias(0).ggufName) != nil,
            bosTokenID: gguf.int("tokenizer.ggml.bos_token_id"),
            eosTokenIDs: eos.map { [$0] } ?? [])
        try config.validate(file: path)
        // Rotary positions over the whole head (llama.cpp's rope.dimension_count defaults to the head size): a partial
        // rotation would load and run as a full one, with wrong numbers.
        if let ropeDims = gguf.int("\(archName).rope.dimension_count"), ropeDims != config.headDim {
            throw fail("\(archName).rope.dimension_count \(ropeDims) is not the head size \(config.headDim) (partial rotary embeddings are not supported)")
        }
        if let valueLength = gguf.int("\(archName).attention.value_length"), valueLength != config.headDim {
            throw fail("\(archName).attention.value_length \(valueLength) is not the key length \(config.headDim)")
        }
        if hidden != heads * config.headDim && gguf.int("\(archName).attention.key_length") == nil {
            throw fail("embedding length \(hidden) is not a multiple of the head count \(heads)")
        }

        // Every tensor the config implies, with the right shape (GGUF lists ne0 = columns first).
        for (t, shape) in LlamaTensor.expected(config) {
            guard let info = gguf.tensorInfo(named: t.ggufName) else { throw fail("required tensor is missing", tensor: t.ggufName) }
            let want = shape.count == 2 ? [shape[1], shape[0]] : shape
            guard info.shape == want else { throw fail("shape \(info.shape), expected \(want)", tensor: t.ggufName) }
            if shape.count == 1 && info.dtype.isQuantized { throw fail("1-D tensor must be F32, F16 or BF16, not \(info.dtype)", tensor: t.ggufName) }
        }
        for (t, shape) in LlamaTensor.optional(config) {
            guard let info = gguf.tensorInfo(named: t.ggufName) else { continue }
            let want = shape.count == 2 ? [shape[1], shape[0]] : shape
            guard info.shape == want else { throw fail("shape \(info.shape), expected \(want)", tensor: t.ggufName) }
            if shape.count == 1 && info.dtype.isQuantized { throw fail("1-D tensor must be F32, F16 or BF16, not \(info.dtype)", tensor: t.ggufName) }
        }
        if let f = gguf.tensorInfo(named: "rope_freqs.weight") {
            guard f.shape == [config.headDim / 2], !f.dtype.isQuantized else {
                throw fail("shape \(f.shape) \(f.dtype), expected [\(config.headDim / 2)] floats", tensor: "rope_freqs.weight")
            }
            let values = floatValues(gguf.file.base + f.offset, dtype: f.dtype, count: f.shape[0])
            if let bad = values.first(where: { !$0.isFinite || $0 <= 0 }) {
                throw fail("frequency divisor \(bad) is not a positive number", tensor: "rope_freqs.weight")
            }
        }
    }

    public func matrix(_ tensor: LlamaTensor) throws -> WeightMatrix? {
        guard let info = gguf.tensorInfo(named: tensor.ggufName) else { return nil }
        guard info.shape.count == 2 else { throw CheckpointError(file: path, tensor: info.name, problem: "is not 2-D") }
        return WeightMatrix(dtype: info.dtype, rows: info.shape[1], cols: info.shape[0], storage: storage, offset: info.offset)
    }

    public func vector(_ tensor: LlamaTensor) throws -> [Float]? {
        guard let info = gguf.tensorInfo(named: tensor.ggufName) else { return nil }
        return try vector(info)
    }

    private func vector(_ info: GGUFTensorInfo) throws -> [Float] {
        guard info.shape.count == 1, !info.dtype.isQuantized else {
            throw CheckpointError(file: path, tensor: info.name, problem: "expected a 1-D F32/F16/BF16 tensor")
        }
        return floatValues(gguf.file.base + info.offset, dtype: info.dtype, count: info.shape[0])
    }

    public func ropeFrequencyFactors() throws -> [Float]? {
        try gguf.tensorInfo(named: "rope_freqs.weight").map(vector)
    }
}
