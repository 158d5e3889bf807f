import Foundation
import Testing
import TestSupport

@testable import Models

/// Broken checkpoints give a CheckpointError that names the problem (and the tensor, where there is one);
/// never a crash.
@Suite struct CheckpointCorruptionTests {
    /// Opens `bytes` as a GGUF checkpoint; returns the error (nil if it opened).
    static func openError(_ bytes: [UInt8], in dir: TemporaryDirectory, name: String = "model.gguf") -> CheckpointError? {
        let url = dir.file(name)
        do {
            try Data(bytes).write(to: url)
            _ = try openCheckpoint(path: url.path)
            return nil
        } catch let e as CheckpointError {
            return e
        } catch {
            Issue.record("unexpected error type \(type(of: error)): \(error)")
            return nil
        }
    }

    static func expectError(_ w: GGUFWriter, tensor: String? = nil, mentions: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = try TemporaryDirectory()
        let e = openError(w.bytes(), in: dir)
        #expect(e != nil, "expected an error mentioning '\(mentions)'", sourceLocation: sourceLocation)
        if let e {
            #expect(e.problem.contains(mentions), "got: \(e)", sourceLocation: sourceLocation)
            if let tensor { #expect(e.tensor == tensor, "got: \(e)", sourceLocation: sourceLocation) }
            #expect(e.file.hasSuffix("model.gguf"), sourceLocation: sourceLocation)
            #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
        }
    }

    @Test func theTestWriterMakesAValidModel() throws {
        let dir = try TemporaryDirectory()
        #expect(Self.openError(GGUFWriter.tinyLlama().bytes(), in: dir) == nil)
    }

    @Test func headerProblems() throws {
        var w = GGUFWriter.tinyLlama()
        w.version = 99
        try Self.expectError(w, mentions: "unsupported GGUF version 99")

        let dir = try TemporaryDirectory()
        var bytes = GGUFWriter.tinyLlama().bytes()
        bytes[0] = UInt8(ascii: "X")
        #expect(Self.openError(bytes, in: dir)?.problem.contains("not a GGUF file") == true)
        // Absurd counts: tensor count and metadata count of 2^60.
        for at in [8, 16] {
            var b = GGUFWriter.tinyLlama().bytes()
            b.replaceSubrange(at..<(at + 8), with: GGUFWriter.le(UInt64(1) << 60))
            #expect(Self.openError(b, in: dir)?.problem.contains("cannot fit in the file") == true)
        }
        // The first key's length points past the end.
        var b = GGUFWriter.tinyLlama().bytes()
        b.replaceSubrange(24..<32, with: GGUFWriter.le(UInt64(1) << 40))
        #expect(Self.openError(b, in: dir)?.problem.contains("runs past the end") == true)
        #expect(Self.openError([], in: dir)?.problem.contains("truncated") == true)
    }

    @Test func everyTruncationIsAnError() throws {
        let dir = try TemporaryDirectory()
        let bytes = GGUFWriter.tinyLlama().bytes()
        // Every prefix through the header and tensor infos, then a stride through the data.
        var lengths = Array(0..<1200)
        lengths += Array(stride(from: 1200, to: bytes.count, by: 97))
        for n in lengths where n < bytes.count {
            #expect(Self.openError(Array(bytes[..<n]), in: dir) != nil, "prefix of \(n) bytes opened")
        }
    }

    @Test func tensorInfoProblems() throws {
        func with(_ change: (inout GGUFWriter.Tensor) -> Void, at index: Int = 2) -> GGUFWriter {
            var w = GGUFWriter.tinyLlama()
            change(&w.tensors[index])
            return w
        }
        try Self.expectError(with { $0.dims = [] }, tensor: "blk.0.attn_q.weight", mentions: "0 dimensions")
        try Self.expectError(with { $0.dims = [2, 2, 2, 2, 2] }, tensor: "blk.0.attn_q.weight", mentions: "5 dimensions")
        try Self.expectError(with { $0.dims = [32, 0] }, tensor: "blk.0.attn_q.weight", mentions: "dimension 1 is 0")
        try Self.expectError(with { $0.dims = [1 << 32, 1 << 32, 1 << 32] }, tensor: "blk.0.attn_q.weight", mentions: "too large")
        try Self.expectError(with { $0.type = 99 }, tensor: "blk.0.attn_q.weight", mentions: "unsupported tensor type 99")
        try Self.expectError(with { $0.type = 12 }, tensor: "blk.0.attn_q.weight", mentions: "unsupported tensor type Q4_K (12)")
        try Self.expectError(with { $0.type = 2; $0.dims = [20, 32] }, tensor: "blk.0.attn_q.weight", mentions: "not a multiple of the Q4_0 block size")
        try Self.expectError(with { $0.offset = 7 }, tensor: "blk.0.attn_q.weight", mentions: "not aligned")
        try Self.expectError(with { $0.offset = 1 << 40 }, tensor: "blk.0.attn_q.weight", mentions: "runs past the end of the file")
        try Self.expectError(with({ $0.offset = 0 }, at: 3), tensor: "blk.0.attn_k.weight", mentions: "overlaps")
        try Self.expectError(with({ $0.name = "blk.0.attn_q.weight" }, at: 3), tensor: "blk.0.attn_q.weight", mentions: "duplicate tensor name")
        // Wrong sizes for the model: shape × dtype is consistent but not what the config implies.
        try Self.expectError(with { $0.dims = [32, 16]; $0.data = Array($0.data[..<(32 * 16 * 4)]) }, tensor: "blk.0.attn_q.weight", mentions: "expected [32, 32]")
        // Tensors the config does not need are still shape-checked when present: the lm_head of a tied model,
        // biases the model does not declare.
        var strayOutput = GGUFWriter.tinyLlama()
        strayOutput.tensors.append(.init(name: "output.weight", type: 0, dims: [32, 63], data: Array(repeating: 0, count: 32 * 63 * 4)))
        // (In GGUF an output tensor unties the model, so its shape is checked as a required tensor's.)
        try Self.expectError(strayOutput, tensor: "output.weight", mentions: "expected [32, 64]")
        var strayBias = GGUFWriter.tinyLlama()
        strayBias.tensors.append(.init(name: "blk.0.attn_k.bias", type: 0, dims: [17], data: Array(repeating: 0, count: 17 * 4)))
        try Self.expectError(strayBias, tensor: "blk.0.attn_k.bias", mentions: "expected [16]")
        var goodBias = GGUFWriter.tinyLlama()
        goodBias.tensors.append(.init(name: "blk.0.attn_k.bias", type: 0, dims: [16], data: Array(repeating: 0, count: 16 * 4)))
        #expect(Self.openError(goodBias.bytes(), in: try TemporaryDirectory()) == nil)
        var missing = GGUFWriter.tinyLlama()
        missing.tensors.removeAll { $0.name == "blk.0.ffn_down.weight" }
        try Self.expectError(missing, tensor: "blk.0.ffn_down.weight", mentions: "required tensor is missing")
    }

    @Test func metadataProblems() throws {
        func with(_ key: String, _ value: GGUFWriter.Value?) -> GGUFWriter {
            var w = GGUFWriter.tinyLlama()
            if let i = w.kv.firstIndex(where: { $0.0 == key }) {
                if let value { w.kv[i].1 = value } else { w.kv.remove(at: i) }
            } else if let value {
                w.kv.append((key, value))
            }
            return w
        }
        try Self.expectError(with("general.architecture", .string("gpt-neox")), mentions: "unsupported architecture 'gpt-neox'")
        try Self.expectError(with("general.architecture", nil), mentions: "general.architecture")
        try Self.expectError(with("llama.block_count", nil), mentions: "llama.block_count")
        try Self.expectError(with("llama.attention.head_count_kv", .u32(3)), mentions: "not a multiple of the KV head count 3")
        try Self.expectError(with("llama.attention.head_count", .u32(0)), mentions: "head_count")
        try Self.expectError(with("general.alignment", .u32(3)), mentions: "power of two")
        try Self.expectError(with("general.alignment", .u32(0)), mentions: "power of two")
        try Self.expectError(with("llama.rope.freq_base", .f32(.nan)), mentions: "RoPE base")
        try Self.expectError(with("llama.rope.dimension_count", .u32(7)), mentions: "partial rotary embeddings are not supported")
        try Self.expectError(with("llama.attention.value_length", .u32(7)), mentions: "value_length 7")
        try Self.expectError(with("llama.block_count", .u32(2)), tensor: "blk.1.attn_norm.weight", mentions: "required tensor is missing")
        var dup = GGUFWriter.tinyLlama()
        dup.kv.append(("llama.block_count", .u32(1)))
        try Self.expectError(dup, mentions: "duplicate metadata key")
    }

    /// Random byte flips, biased toward the header: the reader either opens the file or throws a
    /// CheckpointError. A crash would end the test process.
    @Test func randomByteFlipsNeverCrash() throws {
        let dir = try TemporaryDirectory()
        let original = try [UInt8](Data(contentsOf: CheckpointFixtures.models.appendingPathComponent("tiny-llama/tiny-llama.Q4_1.gguf")))
        let headerEnd = try GGUFFile(path: CheckpointFixtures.gguf("tiny-llama", "Q4_1")).tensors.map(\.offset).min()!
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 17
        }
        var opened = 0, failed = 0
        for _ in 0..<2500 {
            var bytes = original
            for _ in 0..<(1 + Int(next() % 8)) {
                let at = next() % 4 == 0 ? Int(next() % UInt64(bytes.count)) : Int(next() % UInt64(headerEnd))
                bytes[at] ^= UInt8(truncatingIfNeeded: 1 << (next() % 8)) | UInt8(truncatingIfNeeded: next() % 2 == 0 ? 0 : next())
            }
            if Self.openError(bytes, in: dir) == nil { opened += 1 } else { failed += 1 }
        }
        #expect(failed > 500, "most header corruptions must be detected (\(failed) errors, \(opened) opened)")
    }

    @Test func safetensorsProblems() throws {
        let dir = try TemporaryDirectory()
        func err(_ w: SafetensorsWriter) -> CheckpointError? {
            let url = dir.file("x.safetensors")
            do {
                try w.write(to: url)
                _ = try SafetensorsFile(path: url.path)
                return nil
            } catch let e as CheckpointError { return e } catch { return nil }
        }
        let good = SafetensorsWriter(tensors: [.init(name: "a", dtype: "F32", shape: [2, 2], data: Array(repeating: 0, count: 16)),
                                               .init(name: "b", dtype: "BF16", shape: [3], data: Array(repeating: 0, count: 6))])
        #expect(err(good) == nil)
        var w = good
        w.headerOverride = "not json"
        #expect(err(w)?.problem.contains("not a JSON object") == true)
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,999]}}"#
        #expect(err(w)?.problem.contains("run past the end") == true)
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#
        #expect(err(w)?.problem.contains("data_offsets span 16") == true)
        w.headerOverride = #"{"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#
        #expect(err(w)?.problem.contains("unsupported dtype I64") == true)
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#
        #expect(err(w)?.problem.contains("overlaps") == true)
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}}"#
        #expect(err(w)?.problem.contains("invalid shape") == true)
        // Integers only, as the safetensors library's unsigned fields: not 2.0, 2e0, true or "2".
        for shape in ["[2.0,2]", "[2e0,2]", "[true,2]", "[\"2\",2]"] {
            w.headerOverride = #"{"a":{"dtype":"F32","shape":"# + shape + #","data_offsets":[0,16]}}"#
            #expect(err(w)?.problem.contains("invalid shape") == true, "\(shape): \(String(describing: err(w)))")
        }
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16.0]}}"#
        #expect(err(w)?.problem.contains("invalid data_offsets") == true)
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        #expect(err(w)?.problem.contains("names it twice") == true, "\(String(describing: err(w)))")
        // The tensors must cover the data exactly, as the safetensors library requires: no bytes after the last one
        // (4 KiB appended to a good file, or a tensor the header leaves out) and no gap between two.
        try Data(good.bytes() + [UInt8](repeating: 0, count: 4096)).write(to: dir.file("t.safetensors"))
        #expect(throws: CheckpointError.self) { try SafetensorsFile(path: dir.file("t.safetensors").path) }
        #expect((try? SafetensorsFile(path: dir.file("t.safetensors").path)) == nil)
        do { _ = try SafetensorsFile(path: dir.file("t.safetensors").path) } catch let e as CheckpointError {
            #expect(e.problem.contains("4096 bytes after the last tensor"), "\(e)")
        }
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#
        #expect(err(w)?.problem.contains("not fully covered") == true, "\(String(describing: err(w)))")
        w.headerOverride = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[18,22]}}"#
        #expect(err(w)?.problem.contains("2 bytes before it") == true, "\(String(describing: err(w)))")
        var huge = good.bytes()
        huge.replaceSubrange(0..<8, with: GGUFWriter.le(UInt64(1) << 50))
        try Data(huge).write(to: dir.file("h.safetensors"))
        #expect(throws: CheckpointError.self) { try SafetensorsFile(path: dir.file("h.safetensors").path) }

        // Byte flips in a real file's header.
        let original = try [UInt8](Data(contentsOf: CheckpointFixtures.models.appendingPathComponent("tiny-qwen2/hf/model.safetensors")))
        var state: UInt64 = 12345
        for _ in 0..<400 {
            var bytes = original
            for _ in 0..<3 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                bytes[Int((state >> 20) % 3000)] = UInt8(truncatingIfNeeded: state >> 40)
            }
            try Data(bytes).write(to: dir.file("f.safetensors"))
            do { _ = try SafetensorsFile(path: dir.file("f.safetensors").path) } catch is CheckpointError {}
        }
    }

    @Test func huggingFaceDirectoryProblems() throws {
        let dir = try TemporaryDirectory()
        let src = URL(fileURLWithPath: CheckpointFixtures.hf("tiny-llama"))
        let model = try Data(contentsOf: src.appendingPathComponent("model.safetensors"))
        let config = try String(contentsOf: src.appendingPathComponent("config.json"), encoding: .utf8)
        func open(config text: String?, index: String? = nil, extra: [String: [UInt8]] = [:]) -> CheckpointError? {
            let fm = FileManager.default
            try? fm.removeItem(at: dir.url)
            try? fm.createDirectory(at: dir.url, withIntermediateDirectories: true)
            try? model.write(to: dir.file("model.safetensors"))
            for (name, bytes) in extra { try? Data(bytes).write(to: dir.file(name)) }
            if let text { try? Data(text.utf8).write(to: dir.file("config.json")) }
            if let index { try? Data(index.utf8).write(to: dir.file("model.safetensors.index.json")) }
            do { _ = try openCheckpoint(path: dir.url.path); return nil } catch let e as CheckpointError { return e } catch { return nil }
        }
        #expect(open(config: config) == nil)
        #expect(open(config: nil)?.problem.contains("config.json") == true)
        #expect(open(config: "{ nope")?.problem.contains("not a JSON object") == true)
        #expect(open(config: config.replacingOccurrences(of: "\"num_hidden_layers\"", with: "\"layers_x\""))?.problem.contains("num_hidden_layers") == true)
        #expect(open(config: config.replacingOccurrences(of: "\"llama\"", with: "\"gpt2\""))?.problem.contains("unsupported architecture") == true)
        let wrongVocab = open(config: config.replacingOccurrences(of: "\"vocab_size\": 320", with: "\"vocab_size\": 321"))
        #expect(wrongVocab?.tensor == "model.embed_tokens.weight")
        let traversal = open(config: config, index: #"{"weight_map": {"model.norm.weight": "../../etc/passwd"}}"#)
        #expect(traversal?.problem.contains("plain file name") == true)
        #expect(open(config: config, index: #"{"weight_map": {"model.norm.weight": "model.safetensors"}}"#) == nil)
        #expect(open(config: config, index: #"{"weight_map": {"model.norm.weight": "/etc/passwd"}}"#)?.problem.contains("plain file name") == true)
        // A second shard: an lm_head in a tied model is still shape-checked; a tensor in two shards is refused.
        let index = #"{"weight_map": {"model.norm.weight": "model.safetensors", "lm_head.weight": "extra.safetensors"}}"#
        func shard(_ name: String, _ shape: [Int]) -> [UInt8] {
            SafetensorsWriter(tensors: [.init(name: name, dtype: "F32", shape: shape, data: Array(repeating: 0, count: shape.reduce(4, *)))]).bytes()
        }
        let badHead = open(config: config, index: index, extra: ["extra.safetensors": shard("lm_head.weight", [320, 32])])
        #expect(badHead?.tensor == "lm_head.weight" && badHead?.problem.contains("expected [320, 64]") == true, "got \(String(describing: badHead))")
        #expect(open(config: config, index: index, extra: ["extra.safetensors": shard("lm_head.weight", [320, 64])]) == nil)
        let twice = open(config: config, index: index, extra: ["extra.safetensors": shard("model.norm.weight", [64])])
        #expect(twice?.tensor == "model.norm.weight" && twice?.problem.contains("another shard") == true)
        #expect(open(config: config, index: index)?.problem.contains("cannot open") == true, "a shard named by the index is missing")
        // PyTorch's pickled weights alone: named as such, not as a missing model.safetensors.
        try FileManager.default.removeItem(at: dir.file("model.safetensors"))
        try FileManager.default.removeItem(at: dir.file("model.safetensors.index.json"))
        try Data([0x80, 0x02]).write(to: dir.file("pytorch_model.bin"))
        do {
            _ = try openCheckpoint(path: dir.url.path)
            Issue.record("a directory with pytorch_model.bin only opened")
        } catch let e as CheckpointError {
            #expect(e.file.hasSuffix("pytorch_model.bin") && e.problem.contains("safetensors"), "\(e)")
        }
    }
}
