import Foundation
import TestSupport

@testable import Models

/// Writes small GGUF and safetensors files byte by byte, so tests can build valid checkpoints and then
/// break exactly one thing.
struct GGUFWriter {
    enum Value {
        case u32(UInt32), i32(Int32), f32(Float), bool(Bool), string(String), strings([String]), i32s([Int32])
    }

    struct Tensor {
        var name: String
        var type: UInt32
        var dims: [UInt64]
        var data: [UInt8]
        /// Overrides the offset written into the tensor info (nil: packed, aligned).
        var offset: UInt64? = nil
    }

    var version: UInt32 = 3
    var kv: [(String, Value)] = []
    var tensors: [Tensor] = []
    var alignment = 32

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }

    func bytes() -> [UInt8] {
        var out = Array("GGUF".utf8) + Self.le(version) + Self.le(UInt64(tensors.count)) + Self.le(UInt64(kv.count))
        for (key, value) in kv {
            out += Self.str(key)
            switch value {
            case .u32(let v): out += Self.le(UInt32(4)) + Self.le(v)
            case .i32(let v): out += Self.le(UInt32(5)) + Self.le(v)
            case .f32(let v): out += Self.le(UInt32(6)) + Self.le(v.bitPattern)
            case .bool(let v): out += Self.le(UInt32(7)) + [v ? 1 : 0]
            case .string(let s): out += Self.le(UInt32(8)) + Self.str(s)
            case .strings(let a): out += Self.le(UInt32(9)) + Self.le(UInt32(8)) + Self.le(UInt64(a.count)) + a.flatMap(Self.str)
            case .i32s(let a): out += Self.le(UInt32(9)) + Self.le(UInt32(5)) + Self.le(UInt64(a.count)) + a.flatMap(Self.le)
            }
        }
        var offsets: [UInt64] = []
        var at: UInt64 = 0
        for t in tensors {
            offsets.append(t.offset ?? at)
            at += UInt64((t.data.count + alignment - 1) / alignment * alignment)
        }
        for (t, offset) in zip(tensors, offsets) {
            out += Self.str(t.name) + Self.le(UInt32(t.dims.count)) + t.dims.flatMap(Self.le) + Self.le(t.type) + Self.le(offset)
        }
        while out.count % alignment != 0 { out.append(0) }
        for t in tensors {
            out += t.data
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    /// A valid tiny llama: hidden 32, 1 layer, 2 heads / 1 KV head (head dim 16), ffn 64, vocab 64, F32.
    static func tinyLlama() -> GGUFWriter {
        var w = GGUFWriter()
        w.kv = [("general.architecture", .string("llama")), ("general.alignment", .u32(32)),
                ("llama.block_count", .u32(1)), ("llama.context_length", .u32(128)), ("llama.embedding_length", .u32(32)),
                ("llama.feed_forward_length", .u32(64)), ("llama.attention.head_count", .u32(2)),
                ("llama.attention.head_count_kv", .u32(1)), ("llama.rope.freq_base", .f32(10000)),
                ("llama.attention.layer_norm_rms_epsilon", .f32(1e-5)),
                ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.tokens", .strings((0..<64).map { "t\($0)" }))]
        func f32(_ name: String, _ dims: [UInt64]) -> Tensor {
            let n = dims.reduce(1, *)
            return Tensor(name: name, type: 0, dims: dims, data: (0..<n).flatMap { le((0.01 * Float($0 % 13)).bitPattern) })
        }
        w.tensors = [f32("token_embd.weight", [32, 64]), f32("blk.0.attn_norm.weight", [32]), f32("blk.0.attn_q.weight", [32, 32]),
                     f32("blk.0.attn_k.weight", [32, 16]), f32("blk.0.attn_v.weight", [32, 16]), f32("blk.0.attn_output.weight", [32, 32]),
                     f32("blk.0.ffn_norm.weight", [32]), f32("blk.0.ffn_gate.weight", [32, 64]), f32("blk.0.ffn_up.weight", [32, 64]),
                     f32("blk.0.ffn_down.weight", [64, 32]), f32("output_norm.weight", [32])]
        return w
    }

    func write(to url: URL) throws { try Data(bytes()).write(to: url) }
}

/// Writes a safetensors file from (name, dtype, shape, bytes) entries, with optional raw header override.
struct SafetensorsWriter {
    struct Tensor {
        var name: String
        var dtype: String
        var shape: [Int]
        var data: [UInt8]
    }

    var tensors: [Tensor] = []
    /// Replaces the JSON header text (for malformed-header tests).
    var headerOverride: String? = nil

    func bytes() -> [UInt8] {
        var entries: [String] = []
        var at = 0
        var data: [UInt8] = []
        for t in tensors {
            entries.append("\"\(t.name)\":{\"dtype\":\"\(t.dtype)\",\"shape\":\(t.shape),\"data_offsets\":[\(at),\(at + t.data.count)]}")
            at += t.data.count
            data += t.data
        }
        let header = headerOverride ?? "{" + entries.joined(separator: ",") + "}"
        return GGUFWriter.le(UInt64(header.utf8.count)) + Array(header.utf8) + data
    }

    func write(to url: URL) throws { try Data(bytes()).write(to: url) }
}

