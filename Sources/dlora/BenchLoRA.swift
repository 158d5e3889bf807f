import Adapters
import ArgumentParser
import Engine
import Foundation
import Kernels
import Models

/// The cost model of multi-LoRA execution: per-iteration (decode step) time of base-only, unmerged and
/// merged execution over batch sizes, numbers of distinct adapters and ranks; merge/unmerge time; adapter
/// load time from disk. Prints a markdown section (bench/lora.sh writes it to bench/results/lora.md).
struct BenchLoRA: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lora", abstract: "Multi-LoRA execution costs.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Comma-separated batch sizes.")
    var batches: String = "1,8,32"
    @Option(help: "Comma-separated numbers of distinct adapters per batch.")
    var adapters: String = "1,4,32"
    @Option(help: "Comma-separated LoRA ranks.")
    var ranks: String = "8,16,64"
    @Option(help: "Target modules: qv (PEFT's default for Llama) or all (all seven linear layers).")
    var targets: String = "qv"
    @OptionGroup var timing: StepTimingOptions
    @OptionGroup var products: MatmulPrecisionOption
    @Option(name: .customLong("adapter-dtype"), help: "How adapter weights are held: bf16 (as PEFT training usually saves them), f32, int8 (Q8_0, as serve holds them beside int8 products) or int4 (Q4_0, serve --adapter-precision int4); int8 and int4 need AVX-512 VNNI or AVX-VNNI. auto: as serve would hold them (int8 beside int8 products, else bf16).")
    var adapterDtype: String = "auto"

    static func list(_ s: String) -> [Int] { intList(s, in: 1...1024) ?? [] }

    func validate() throws {
        for (name, l) in [("--batches", batches), ("--adapters", adapters), ("--ranks", ranks)] where intList(l, in: 1...1024) == nil {
            throw ValidationError("\(name) must be a comma-separated list of numbers in 1...1024")
        }
        guard ["qv", "all"].contains(targets) else { throw ValidationError("--targets must be qv or all") }
        guard ["auto", "bf16", "f32", "int8", "int4"].contains(adapterDtype) else { throw ValidationError("--adapter-dtype must be auto, bf16, f32, int8 or int4") }
        if (adapterDtype == "int8" || adapterDtype == "int4") && !Kernels.hasInt8Dot {
            throw ValidationError("--adapter-dtype \(adapterDtype) needs a CPU with AVX-512 VNNI or AVX-VNNI")
        }
    }

    func run() throws {
        let (path, loaded) = try modelOptions.load()
        let m = loaded.model
        try products.apply(to: m)
        let c = m.config
        let (context, steps, rounds) = (timing.context, timing.steps, timing.rounds)
        try timing.check(against: c)
        let targetSet: [LoRATarget] = targets == "qv" ? [.q, .v] : LoRATarget.allCases
        let maxBatch = Self.list(batches).max()!
        let maxAdapters = Self.list(adapters).max()!
        let heldName = adapterDtype != "auto" ? adapterDtype : AdapterPrecision.matching(m) == .int8 ? "int8" : "bf16"
        let dtype: DType = heldName == "int8" ? .q8_0 : heldName == "int4" ? .q4_0 : heldName == "bf16" ? .bf16 : .f32

        print("Model: `\((path as NSString).lastPathComponent)`; targets: \(targetSet.map(\.peftName).joined(separator: ", ")); "
              + "context \(context) tokens; best of \(rounds) interleaved rounds of \(steps) decode steps per cell; threads: \(Kernels.threadCount); kernels: \(Kernels.simdPathName); products: \(MatmulPrecisionOption.name(of: m)). "
              + "Adapters held in \(heldName == "int8" ? "int8 (Q8_0)" : heldName == "int4" ? "int4 (Q4_0)" : heldName); sizes count the rank padded to a multiple of 16 (and what a step reads).")
        print()
        let mergedNames = MergePrecision.allCases.map { $0 == .q8_0 ? "Q8_0" : $0.rawValue }
        print("| batch | distinct adapters | rank | base ms/step | unmerged ms/step | unmerged overhead | "
              + mergedNames.map { "merged \($0) ms/step | merged \($0) overhead" }.joined(separator: " | ") + " |")
        print("|---:|---:|---:|---:|---:|---:|" + String(repeating: "---:|---:|", count: mergedNames.count))
        var loadRows: [String] = []
        var bandwidthRows: [(batch: Int, rank: Int, bytes: Double, extra: Double)] = []
        // Streamed before and after the timed steps (the better of the two counts), when a batch has an adapter per
        // sequence and so gets a bandwidth row.
        let adapterPerSequence = Self.list(batches).contains { $0 >= 8 && Self.list(adapters).contains($0) }
        var streamed = adapterPerSequence ? BenchCore.streamedGBs() : 0
        for rank in Self.list(ranks) {
            let pool = (0..<maxAdapters).map { Self.randomAdapter(config: c, rank: rank, targets: targetSet, dtype: dtype, seed: UInt64(rank * 1000 + $0)) }
            let slots = LoRASlots(capacity: maxAdapters)
            for (i, a) in pool.enumerated() { slots[i] = a }
            for b in Self.list(batches) where b <= maxBatch {
                let runner = StepRunner(model: m, batch: b, context: context)
                // Base, unmerged with k distinct adapters, merged: measured in interleaved rounds (best of
                // `rounds`), so slow drifts of the machine hit every column alike.
                let ks = Self.list(adapters).filter { $0 <= b }
                var base = Double.infinity
                var merged = [Double](repeating: .infinity, count: MergePrecision.allCases.count)
                var unmerged = [Double](repeating: .infinity, count: ks.count)
                for _ in 0..<rounds {
                    base = min(base, runner.time(steps: steps, lora: nil, assign: { _ in -1 }))
                    for (i, k) in ks.enumerated() {
                        unmerged[i] = min(unmerged[i], runner.time(steps: steps, lora: slots, assign: { Int32($0 % k) }))
                    }
                    // Merged steps run one adapter's requests: timed only where a row of one adapter shows them.
                    for (i, precision) in MergePrecision.allCases.enumerated() where ks.contains(1) {
                        Self.merged(m, pool[0], precision) { merged[i] = min(merged[i], runner.time(steps: steps, lora: nil, assign: { _ in -1 })) }
                    }
                }
                for (i, k) in ks.enumerated() {
                    let mergedCells = merged.map { k == 1 ? String(format: "%.2f | %+.1f %%", $0 * 1000, ($0 / base - 1) * 100) : "— | —" }
                        .joined(separator: " | ")
                    print(String(format: "| %d | %d | %d | %.2f | %.2f | %+.1f %% | %@ |", b, k, rank, base * 1000, unmerged[i] * 1000,
                                 (unmerged[i] / base - 1) * 100, mergedCells))
                }
                // The unmerged path's cost as bandwidth: the distinct adapters' bytes (every targeted matrix of
                // each, read once per step) over the time the step gained; only for batches where every sequence
                // has its own adapter, where the bytes, not the arithmetic, set the cost.
                for (i, k) in ks.enumerated() where k == b && b >= 8 {
                    bandwidthRows.append((b, rank, Double(pool.prefix(k).map(\.kernelBytes).reduce(0, +)), unmerged[i] - base))
                }
                StandardError.write("bench lora: rank \(rank) batch \(b) done\n")
            }
            // Merge/unmerge cost and load time from disk.
            var mergeSeconds = [Double](repeating: 0, count: MergePrecision.allCases.count), unmergeSeconds = 0.0
            func seconds(since t: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9 / 3 }
            for _ in 0..<3 {
                for (i, precision) in MergePrecision.allCases.enumerated() {
                    m.mergePrecision = precision
                    var t = DispatchTime.now().uptimeNanoseconds
                    m.merge(pool[0])
                    mergeSeconds[i] += seconds(since: t)
                    t = DispatchTime.now().uptimeNanoseconds
                    m.unmerge()
                    if precision == .f32 { unmergeSeconds += seconds(since: t) }
                }
                m.mergePrecision = .f32
            }
            let load = try Self.loadTime(config: c, rank: rank, targets: targetSet)
            loadRows.append(String(format: "| %d | %.1f | ", rank, Double(pool[0].byteCount) / 1e6)
                            + mergeSeconds.map { String(format: "%.2f", $0 * 1000) }.joined(separator: " | ")
                            + String(format: " | %.3f | %.2f |", unmergeSeconds * 1000, load * 1000))
        }
        print()
        print("| rank | adapter size MB (resident) | " + mergedNames.map { "merge ms (\($0))" }.joined(separator: " | ")
              + " | unmerge ms | load from disk ms (PEFT safetensors, f32) |")
        print("|---:|---:|" + String(repeating: "---:|", count: mergedNames.count) + "---:|---:|")
        loadRows.forEach { print($0) }
        guard !bandwidthRows.isEmpty else { return }
        streamed = max(streamed, BenchCore.streamedGBs())
        print()
        print(String(format: "The unmerged path as bandwidth: the batch's distinct adapters' bytes (read once per step) over the time "
                     + "the step gained over base; memory streamed at %.1f GB/s in the same run (best of 5, before and after, %ld threads).",
                     streamed, Kernels.threadCount))
        print()
        print("| batch | distinct adapters | rank | adapter MB read per step | extra ms per step | effective GB/s | of streamed |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in bandwidthRows {
            let cells = r.extra > 0 ? String(format: "%.1f | %.0f %%", r.bytes / r.extra / 1e9, r.bytes / r.extra / 1e9 / streamed * 100) : "— | —"
            print(String(format: "| %d | %d | %d | %.1f | %.2f | %@ |", r.batch, r.batch, r.rank, r.bytes / 1e6, r.extra * 1000, cells))
        }
    }

    /// Runs `body` with `adapter` merged into `m` in `precision`, then unmerges and restores f32 merging.
    static func merged(_ m: LlamaModel, _ adapter: LoRAWeights, _ precision: MergePrecision, _ body: () -> Void) {
        m.mergePrecision = precision
        m.merge(adapter)
        body()
        m.unmerge()
        m.mergePrecision = .f32
    }

    /// Uniform values in [-1, 1) from a 64-bit LCG (benchmark weights: shapes matter, values do not).
    struct Uniform {
        var state: UInt64
        init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
        mutating func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
    }

    static func randomAdapter(config c: ModelConfig, rank: Int, targets: [LoRATarget], dtype: DType, seed: UInt64) -> LoRAWeights {
        var rng = Uniform(seed: seed)
        func uniform() -> Float { rng.next() }
        let modules: [[LoRAModule?]] = (0..<c.numLayers).map { _ in
            LoRATarget.allCases.map { t -> LoRAModule? in
                guard targets.contains(t) else { return nil }
                let (rows, cols) = t.shape(c)
                let a = (0..<(rank * cols)).map { _ in uniform() * 0.1 }
                let b = (0..<(rows * rank)).map { _ in uniform() * 0.1 }
                // Q8_0 or Q4_0 where the input width allows (else bf16, as serve would keep such a matrix).
                let quantized: AdapterPrecision? = dtype == .q8_0 ? .int8 : dtype == .q4_0 ? .int4 : nil
                let held = quantized?.dtype(stored: .bf16, inFeatures: cols) ?? dtype
                return LoRAModule(rank: rank, inFeatures: cols, outFeatures: rows, a: a, b: b, dtype: held)
            }
        }
        return LoRAWeights(name: "bench-\(seed)", scale: 2, modules: modules)
    }

    /// Writes one PEFT adapter (f32 safetensors) to a temporary directory and times loading it (best of 3).
    static func loadTime(config c: ModelConfig, rank: Int, targets: [LoRATarget]) throws -> Double {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var entries: [String] = []
        var data = Data()
        for layer in 0..<c.numLayers {
            for t in targets {
                let (rows, cols) = t.shape(c)
                let block = t == .gate || t == .up || t == .down ? "mlp" : "self_attn"
                for (suffix, shape) in [("lora_A", [rank, cols]), ("lora_B", [rows, rank])] {
                    let n = shape[0] * shape[1]
                    entries.append("\"base_model.model.model.layers.\(layer).\(block).\(t.peftName).\(suffix).weight\":{\"dtype\":\"F32\",\"shape\":\(shape),\"data_offsets\":[\(data.count),\(data.count + n * 4)]}")
                    data.append(Data(repeating: 0, count: n * 4))
                }
            }
        }
        let header = Data(("{" + entries.joined(separator: ",") + "}").utf8)
        var file = Data(withUnsafeBytes(of: UInt64(header.count).littleEndian, Array.init))
        file.append(header)
        file.append(data)
        try file.write(to: dir.appendingPathComponent("adapter_model.safetensors"))
        let config = "{\"peft_type\": \"LORA\", \"r\": \(rank), \"lora_alpha\": \(2 * rank), \"target_modules\": [\(targets.map { "\"\($0.peftName)\"" }.joined(separator: ","))]}"
        try Data(config.utf8).write(to: dir.appendingPathComponent("adapter_config.json"))
        var best = Double.infinity
        for _ in 0..<3 {
            let t = DispatchTime.now().uptimeNanoseconds
            _ = try AdapterLoader.load(path: dir.path, base: c)
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9)
        }
        return best
    }
}

extension LoRAModule {
    init(rank: Int, inFeatures: Int, outFeatures: Int, a: [Float], b: [Float], dtype: DType) {
        self = a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                LoRAModule(rank: rank, inFeatures: inFeatures, outFeatures: outFeatures, a: ap.baseAddress!, b: bp.baseAddress!, dtype: dtype)
            }
        }
    }
}

/// How decode steps are timed: context per sequence, steps per round, interleaved rounds (the best counts).
struct StepTimingOptions: ParsableArguments {
    @Option(help: "Tokens of context each sequence holds during the timed decode steps.")
    var context: Int = 128
    @Option(help: "Timed decode steps per configuration and round.")
    var steps: Int = 8
    @Option(help: "Interleaved rounds per configuration (the best round counts).")
    var rounds: Int = 3

    func validate() throws {
        guard context >= 1, context <= 1 << 20, (1...100_000).contains(steps), (1...1000).contains(rounds) else {
            throw ValidationError("--context (1...1048576), --steps (1...100000) and --rounds (1...1000) out of range")
        }
    }

    /// The context and the token each timed step decodes must fit the model.
    func check(against c: ModelConfig) throws {
        guard context < c.maxPositionEmbeddings else {
            throw CLIError("--context \(context) does not fit the model's context length \(c.maxPositionEmbeddings)")
        }
    }
}

/// B sequences holding `context` tokens; times decode steps (one token per sequence, at a fixed position,
/// so every step does the same work).
final class StepRunner {
    let model: LlamaModel
    let b: Int
    let context: Int
    /// The engine's runner (KV storage, workspace, logits), driven with block tables laid out here.
    let runner: ModelRunner
    let tables: [[Int32]]
    var batch = ForwardBatch()

    init(model m: LlamaModel, batch b: Int, context: Int) {
        model = m
        self.b = b
        self.context = context
        let c = m.config, blockSize = 16
        let per = (context + 1 + blockSize - 1) / blockSize
        runner = ModelRunner(model: m, numBlocks: b * per, blockSize: blockSize, maxBatchTokens: max(b, 64), adapterSlots: 1)
        tables = (0..<b).map { s in (0..<per).map { Int32(s * per + $0) } }
        // Fill the context (content does not matter for timing).
        for s in 0..<b {
            batch.reset()
            batch.append(sequence: (0..<context).map { ($0 * 7 + s) % c.vocabSize }, start: 0, blockTable: tables[s], blockSize: blockSize)
            _ = runner.forward(batch)
        }
    }

    /// Mean seconds per decode step; `assign` gives each sequence's adapter slot (sequences of one slot kept
    /// together, as the engine groups them).
    func time(steps: Int, lora: LoRASlots?, assign: (Int) -> Int32) -> Double {
        let order = (0..<b).sorted { assign($0) < assign($1) }
        func step() {
            batch.reset()
            for s in order {
                batch.append(sequence: CollectionOfOne(1), start: context, blockTable: tables[s], blockSize: runner.kv.blockSize,
                             adapterSlot: lora == nil ? -1 : assign(s))
            }
            _ = runner.forward(batch, lora: lora)
        }
        step()  // warm-up
        let t = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<steps { step() }
        return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9 / Double(steps)
    }
}
