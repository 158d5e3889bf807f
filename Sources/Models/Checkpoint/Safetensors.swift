import Foundation
import Kernels
import Tokenizers

/// Errors about a safetensors header, naming its file.
private struct HeaderErrors {
    let path: String
    func error(_ problem: String, tensor: String? = nil) -> CheckpointError { CheckpointError(file: path, tensor: tensor, problem: problem) }
}

/// One tensor of a safetensors file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    /// Row-major shape, outermost first (PyTorch order: a Linear weight is [out, in]).
    public let shape: [Int]
    /// Absolute byte offset in the file.
    public let offset: Int
    public let byteCount: Int
}

/// A safetensors file, memory-mapped; the JSON header and every tensor's byte range are validated on open.
public final class SafetensorsFile: @unchecked Sendable {
    public let file: MappedFile
    public let tensors: [String: SafetensorsTensorInfo]

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        var r = ByteReader(file)
        let headerLength = try r.read(UInt64.self, "header length")
        guard headerLength <= UInt64(r.remaining), headerLength <= 100 << 20 else {
            throw r.error("header length \(headerLength) exceeds the file (\(file.count) bytes) or 100 MB")
        }
        tensors = try Self.tensors(header: try r.bytes(Int(headerLength), "header"), fileSize: file.count, path: file.path)
    }

    /// Checks a safetensors file open on `fd` (`size` bytes) from its header alone, read with two `pread`s, before its
    /// data is read: a file its tensors do not cover exactly (a few kilobytes of tensors in a file padded to gigabytes)
    /// is refused without reading it.
    public static func checkHeader(fd: Int32, size: Int, path: String) throws {
        func fail(_ problem: String) -> CheckpointError { CheckpointError(file: path, problem: problem) }
        guard size >= 8 else { throw fail("too short for a safetensors header (\(size) bytes)") }
        var length: UInt64 = 0
        try MappedFile.readFully(fd, into: &length, count: 8, at: 0, path: path)
        length = UInt64(littleEndian: length)
        guard length <= UInt64(size - 8), length <= 100 << 20 else {
            throw fail("header length \(length) exceeds the file (\(size) bytes) or 100 MB")
        }
        var header = [UInt8](repeating: 0, count: Int(length))
        try header.withUnsafeMutableBytes { try MappedFile.readFully(fd, into: $0.baseAddress!, count: $0.count, at: 8, path: path) }
        _ = try header.withUnsafeBytes { try tensors(header: $0, fileSize: size, path: path) }
    }

    /// The tensors a header (the bytes after the 8-byte length) declares, each range checked against a file of
    /// `fileSize` bytes, which they must cover exactly.
    static func tensors(header: UnsafeRawBufferPointer, fileSize: Int, path: String) throws -> [String: SafetensorsTensorInfo] {
        let r = HeaderErrors(path: path)
        let dataStart = 8 + header.count
        let dataSize = fileSize - dataStart
        // Parsed once, exactly: integers stay integers (a shape of 16.0 is refused, as the safetensors library's
        // unsigned fields refuse it), and the members stay in order with any repeated name.
        let parsed: ExactJSON
        do {
            parsed = try ExactJSON.parse(header, name: "safetensors header")
        } catch {
            throw r.error("header is not a JSON object (\(error))")
        }
        guard case .object(let members) = parsed else { throw r.error("header is not a JSON object") }
        // A name given twice would be read as whichever entry a parser kept: refused, as the safetensors library does.
        var names = Set<String>()
        for (name, _) in members where !names.insert(name).inserted { throw r.error("the header names it twice", tensor: name) }
        var tensors: [String: SafetensorsTensorInfo] = [:]
        for (name, value) in members where name != "__metadata__" {
            guard case .object(let fields) = value, let dtypeName = Self.field(fields, "dtype").flatMap(Self.string),
                  case .array(let shape)? = Self.field(fields, "shape"), case .array(let offsets)? = Self.field(fields, "data_offsets"),
                  offsets.count == 2 else {
                throw r.error("header entry must have dtype, shape and data_offsets [begin, end]", tensor: name)
            }
            let dtype: DType
            switch dtypeName {
            case "F32": dtype = .f32
            case "F16": dtype = .f16
            case "BF16": dtype = .bf16
            default: throw r.error("unsupported dtype \(dtypeName) (supported: F32, F16, BF16)", tensor: name)
            }
            let dims = shape.compactMap(Self.integer)
            guard dims.count == shape.count, dims.count <= 8, dims.allSatisfy({ $0 >= 0 && $0 <= 1 << 32 }) else {
                throw r.error("invalid shape \(Self.text(shape))", tensor: name)
            }
            guard let begin = Self.integer(offsets[0]), let end = Self.integer(offsets[1]), begin >= 0, end >= begin else {
                throw r.error("invalid data_offsets \(Self.text(offsets))", tensor: name)
            }
            guard end <= dataSize else {
                throw r.error("data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes)", tensor: name)
            }
            var elements = 1
            for d in dims {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o, p <= 1 << 40 else { throw r.error("shape \(dims) is too large", tensor: name) }
                elements = p
            }
            guard elements * dtype.blockBytes == end - begin else {
                throw r.error("shape \(dims) × \(dtypeName) is \(elements * dtype.blockBytes) bytes but data_offsets span \(end - begin)", tensor: name)
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: dims, offset: dataStart + begin, byteCount: end - begin)
        }
        // The tensors cover the data exactly, one after another from its start to the file's end, as the safetensors
        // library requires ("file not fully covered"): no two overlap, and bytes no tensor names are refused, not
        // carried (a file padded to gigabytes with 8 KB of tensors was read whole and served).
        var covered = dataStart
        var previous: SafetensorsTensorInfo?
        for t in tensors.values.sorted(by: { ($0.offset, $0.name) < ($1.offset, $1.name) }) {
            if t.offset < covered, let previous { throw r.error("data overlaps tensor '\(previous.name)'", tensor: t.name) }
            guard t.offset == covered else {
                throw r.error("data_offsets leave \(t.offset - covered) bytes before it that no tensor covers", tensor: t.name)
            }
            covered += t.byteCount
            previous = t
        }
        guard covered == fileSize else {
            throw r.error("\(fileSize - covered) bytes after the last tensor's data: the file is not fully covered by its tensors")
        }
        return tensors
    }

    /// The first member named `key` (the header's entries are checked for repeated names, not their fields: a
    /// repeated field is read as its first).
    static func field(_ members: [(key: String, value: ExactJSON)], _ key: String) -> ExactJSON? {
        members.first { $0.key == key }?.value
    }

    static func string(_ v: ExactJSON) -> String? {
        if case .string(let s) = v { return s }
        return nil
    }

    /// A JSON integer literal (not a fraction, exponent or boolean).
    static func integer(_ v: ExactJSON) -> Int? {
        if case .int(let i) = v { return i }
        return nil
    }

    /// Values for a message, cut short.
    static func text(_ values: [ExactJSON]) -> String {
        let parts = values.prefix(9).map { v -> String in
            switch v {
            case .int(let i): String(i)
            case .double(let d): String(d)
            case .string(let s): "\"\(s.prefix(32))\""
            case .bool(let b): String(b)
            case .null: "null"
            case .array: "[…]"
            case .object: "{…}"
            }
        }
        return "[" + parts.joined(separator: ", ") + (values.count > 9 ? ", …]" : "]")
    }
}

/// A Hugging Face model directory: config.json and model.safetensors, or model.safetensors.index.json
/// with shards. F16/BF16 tensors are upcast exactly to f32 when read.
public final class HFCheckpoint: ModelCheckpoint, @unchecked Sendable {
    public let path: String
    public let config: ModelConfig
    public var metadata: (any MetadataSource)? { nil }
    private let files: [SafetensorsFile]
    private let location: [String: (file: Int, info: SafetensorsTensorInfo)]

    public init(directory: String) throws {
        path = directory
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent("config.json").path
        if let problem = FileKind(path: configPath).problem { throw CheckpointError(file: configPath, problem: problem) }
        guard let configData = FileManager.default.contents(atPath: configPath) else {
            throw CheckpointError(file: configPath, problem: "missing (a Hugging Face model directory needs config.json)")
        }
        config = try Self.parseConfig(configData, file: configPath)

        // Shards: the index's weight_map, or the single model.safetensors.
        var shardNames = ["model.safetensors"]
        let indexPath = dir.appendingPathComponent("model.safetensors.index.json").path
        if let indexData = FileManager.default.contents(atPath: indexPath) {
            guard let index = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
                  let map = index["weight_map"] as? [String: String] else {
                throw CheckpointError(file: indexPath, problem: "not a JSON object with a weight_map of tensor name → file")
            }
            shardNames = Array(Set(map.values)).sorted()
            for name in shardNames where name.isEmpty || name.contains("/") || name.hasPrefix(".") {
                throw CheckpointError(file: indexPath, problem: "shard name '\(name)' must be a plain file name inside the model directory")
            }
        } else if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path),
                  let pickled = ["pytorch_model.bin", "pytorch_model.bin.index.json"].first(where: {
                      FileManager.default.fileExists(atPath: dir.appendingPathComponent($0).path) }) {
            // PyTorch's pickle format runs code when loaded: not read here (transformers' save_pretrained writes safetensors).
            throw CheckpointError(file: dir.appendingPathComponent(pickled).path,
                                  problem: "PyTorch .bin weights are not read (pickle); save the model as safetensors (save_pretrained(safe_serialization=True))")
        }
        var files: [SafetensorsFile] = []
        var location: [String: (file: Int, info: SafetensorsTensorInfo)] = [:]
        for name in shardNames {
            let f = try SafetensorsFile(path: dir.appendingPathComponent(name).path)
            for (tensor, info) in f.tensors {
                guard location[tensor] == nil else {
                    throw CheckpointError(file: f.file.path, tensor: tensor, problem: "also present in another shard")
                }
                location[tensor] = (files.count, info)
            }
            files.append(f)
        }
        self.files = files
        self.location = location

        for (t, shape) in LlamaTensor.expected(config) {
            guard let (fi, info) = location[t.hfName] else {
                throw CheckpointError(file: directory, tensor: t.hfName, problem: "required tensor is missing")
            }
            guard info.shape == shape else {
                throw CheckpointError(file: files[fi].file.path, tensor: t.hfName, problem: "shape \(info.shape), expected \(shape)")
            }
        }
        for (t, shape) in LlamaTensor.optional(config) {
            guard let (fi, info) = location[t.hfName] else { continue }
            guard info.shape == shape else {
                throw CheckpointError(file: files[fi].file.path, tensor: t.hfName, problem: "shape \(info.shape), expected \(shape)")
            }
        }
    }

    public func matrix(_ tensor: LlamaTensor) throws -> WeightMatrix? {
        guard let (fi, info) = location[tensor.hfName] else { return nil }
        let file = files[fi].file
        guard info.shape.count == 2 else { throw CheckpointError(file: file.path, tensor: info.name, problem: "is not 2-D") }
        let rows = info.shape[0], cols = info.shape[1]
        if info.dtype == .f32 && info.offset % 4 == 0 {
            return WeightMatrix(dtype: .f32, rows: rows, cols: cols,
                                storage: Buffer(borrowing: file.base, byteCount: file.count, owner: file), offset: info.offset)
        }
        let buffer = Buffer(floats: rows * cols)
        Kernels.dequantize(info.dtype, file.base + info.offset, count: rows * cols, into: buffer.floats)
        return WeightMatrix(dtype: .f32, rows: rows, cols: cols, storage: buffer)
    }

    public func vector(_ tensor: LlamaTensor) throws -> [Float]? {
        guard let (fi, info) = location[tensor.hfName] else { return nil }
        let file = files[fi].file
        guard info.shape.count == 1 else { throw CheckpointError(file: file.path, tensor: info.name, problem: "is not 1-D") }
        return floatValues(file.base + info.offset, dtype: info.dtype, count: info.shape[0])
    }

    public func ropeFrequencyFactors() throws -> [Float]? { nil }

    /// Reads config.json (transformers 4.x form, or 5.x with `rope_parameters`): `ModelConfig`'s Decodable
    /// conformance (ModelConfigJSON.swift), with its problems reported against `file`.
    static func parseConfig(_ data: Data, file: String) throws -> ModelConfig {
        do {
            return try JSONDecoder().decode(ModelConfig.self, from: data)
        } catch let e as ModelConfigProblem {
            throw CheckpointError(file: file, problem: e.problem)
        } catch {
            throw CheckpointError(file: file, problem: "not a JSON object")
        }
    }
}
