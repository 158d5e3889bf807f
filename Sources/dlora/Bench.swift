import ArgumentParser
import Engine
import Foundation
import Kernels
import Models

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks (bench/*.sh run them and write bench/results/).",
        subcommands: [BenchCore.self, BenchLoRA.self, BenchReplica.self, BenchMoLE.self]
    )
}

/// Prefill and decode throughput of the forward pass at several batch sizes, on llama-batched-bench's
/// schedule (B sequences × P prompt tokens prefilled in ubatches of up to 512 tokens, then G greedy decode
/// steps of B tokens), plus the batch-1 memory-bandwidth bound. Prints a markdown section.
struct BenchCore: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "core", abstract: "Forward-pass throughput (prefill, decode).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Comma-separated batch sizes.")
    var batches: String = "1,8,32"
    @Option(help: "Prompt tokens per sequence.")
    var prompt: Int = 128
    @Option(help: "Generated tokens per sequence.")
    var gen: Int = 64
    @Option(help: "Tokens per forward pass during prefill (llama.cpp's -ub).")
    var ubatch: Int = 512
    @OptionGroup var kvCache: KVCacheOption
    @OptionGroup var products: MatmulPrecisionOption

    func validate() throws {
        // Bounded so that sums of them cannot overflow (a trap at --gen 9223372036854775807); the context bounds them further.
        guard (1...(1 << 24)).contains(prompt), (1...(1 << 24)).contains(gen), (1...(1 << 24)).contains(ubatch) else {
            throw ValidationError("--prompt, --gen and --ubatch must be in 1...\(1 << 24)")
        }
        guard intList(batches, in: 1...1024) != nil else {
            throw ValidationError("--batches must be a comma-separated list of sizes in 1...1024")
        }
    }

    var batchSizes: [Int] { intList(batches, in: 1...1024) ?? [] }

    func run() throws {
        let (path, loaded) = try modelOptions.load()
        let m = loaded.model
        let c = m.config
        guard prompt + gen <= c.maxPositionEmbeddings else { throw CLIError("--prompt + --gen exceed the model's context") }

        try products.apply(to: m)
        let kvCacheDType = kvCache.resolved(for: m)
        // The largest batch's K/V is allocated whole: one the machine cannot hold stopped the process with an allocation
        // failure (--batches 1024 --prompt 4000 --gen 4000) instead of this message.
        let blocks = (batchSizes.max() ?? 1) * ((prompt + gen + 15) / 16)
        let kvBytes = Double(blocks) * Double(EngineConfiguration.bytesPerBlock(c, blockSize: 16, dtype: kvCacheDType))
        let memory = Double(ProcessInfo.processInfo.physicalMemory)
        guard kvBytes < memory / 2 else {
            throw CLIError(String(format: "the largest batch's K/V cache needs %.1f GiB, more than half this machine's %.1f GiB: lower --batches, --prompt or --gen",
                                  kvBytes / Double(1 << 30), memory / Double(1 << 30)))
        }
        // Measured before and after the runs, the higher counting: on a shared host one measurement can fall into
        // a neighbour's burst (16.5 GB/s once, against 28-33 on either side), and a low bound flatters the ratio.
        var bestGBs = Self.streamedGBs()
        let weightBytes = m.weightBytesPerToken

        var rows: [String] = []
        for b in batchSizes {
            let r = run(model: m, batch: b, kvCacheDType: kvCacheDType)
            rows.append(String(format: "| %d | %d | %d | %.1f | %.1f | %.2f |", b, prompt, gen, r.prefill, r.decode, r.msPerStep))
            StandardError.write("bench core: batch \(b): prefill \(Int(r.prefill)) tok/s, decode \(Int(r.decode)) tok/s\n")
        }
        bestGBs = max(bestGBs, Self.streamedGBs())
        print("Model: `\((path as NSString).lastPathComponent)` (\(c.architecture.rawValue), \(c.numLayers) layers, hidden \(c.hiddenSize)); threads: \(Kernels.threadCount); kernels: \(Kernels.simdPathName); BLAS: \(Kernels.blasCoreName); KV cache: \(kvCacheDType); products: \(MatmulPrecisionOption.name(of: m)).")
        print()
        print("| batch | prompt | gen | prefill tok/s | decode tok/s | decode ms/step |")
        print("|---:|---:|---:|---:|---:|---:|")
        rows.forEach { print($0) }
        print()
        print(String(format: "Memory-bandwidth bound for batch-1 decode: %.1f GB/s streamed (best of 5 before the runs and 5 after, %ld threads) / %.1f MB of weights read per token = **%.1f tok/s**.",
                     bestGBs, Kernels.threadCount, Double(weightBytes) / 1e6, bestGBs * 1e9 / Double(weightBytes)))
    }

    /// Memory read bandwidth in GB/s: a 256 MiB buffer (much larger than the caches) summed over the kernel
    /// threads, best of 5.
    static func streamedGBs() -> Double {
        let floats = 256 << 20 / 4
        let big = Buffer(floats: floats)
        for i in stride(from: 0, to: floats, by: 1024) { big.floats[i] = 1 }
        var bestGBs = 0.0
        for _ in 0..<5 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let sum = Kernels.streamSum(big.floats, count: floats)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            precondition(sum > 0)
            bestGBs = max(bestGBs, Double(floats * 4) / dt / 1e9)
        }
        return bestGBs
    }

    struct Result { var prefill: Double; var decode: Double; var msPerStep: Double }

    func run(model m: LlamaModel, batch b: Int, kvCacheDType: KVCacheDType) -> Result {
        let c = m.config
        let blockSize = 16
        let blocksPerSeq = (prompt + gen + blockSize - 1) / blockSize
        // The engine's runner (KV storage, workspace, logits), driven with block tables laid out here.
        let runner = ModelRunner(model: m, numBlocks: b * blocksPerSeq, blockSize: blockSize, maxBatchTokens: min(ubatch, b * prompt),
                                 adapterSlots: 1, kvDType: kvCacheDType)
        let tables = (0..<b).map { s in (0..<blocksPerSeq).map { Int32(s * blocksPerSeq + $0) } }
        var batch = ForwardBatch()
        // Deterministic pseudo-random prompts (as llama-batched-bench, content does not matter for speed).
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        let prompts = (0..<b).map { _ in
            (0..<prompt).map { _ -> Int in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Int((state >> 33) % UInt64(c.vocabSize))
            }
        }
        var last = [Int](repeating: 0, count: b)

        // Warm-up: one small forward pass (page in the weights, start the pool).
        batch.append(sequence: prompts[0].prefix(8), start: 0, blockTable: tables[0], blockSize: blockSize)
        _ = runner.forward(batch)

        // Prefill: the B prompts back to back, cut into ubatches.
        let t0 = DispatchTime.now().uptimeNanoseconds
        var s = 0, done = 0
        while s < b {
            batch.reset()
            var room = ubatch
            while s < b && room > 0 {
                let n = min(prompt - done, room)
                batch.append(sequence: prompts[s][done..<(done + n)], start: done, blockTable: tables[s], blockSize: blockSize,
                             logits: done + n == prompt ? .last : .none)
                room -= n
                done += n
                if done == prompt { s += 1; done = 0 }
            }
            _ = runner.forward(batch)
        }
        let prefillSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        for i in 0..<b { last[i] = prompts[i][prompt - 1] }

        // Decode: G steps of one token per sequence, greedy. Each step is timed too, for the growth of the step
        // with the context attended (one run, so the machine's drift between runs does not enter it).
        var stepSeconds = [Double](repeating: 0, count: gen)
        let t1 = DispatchTime.now().uptimeNanoseconds
        var stepStart = t1
        for step in 0..<gen {
            batch.reset()
            for i in 0..<b {
                batch.append(sequence: CollectionOfOne(last[i]), start: prompt + step, blockTable: tables[i], blockSize: blockSize)
            }
            _ = runner.forward(batch)
            for i in 0..<b {
                last[i] = Sampler.argmax(runner.logitsRow(i))
            }
            let now = DispatchTime.now().uptimeNanoseconds
            stepSeconds[step] = Double(now - stepStart) / 1e9
            stepStart = now
        }
        let decodeSeconds = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e9
        if gen >= 16 {
            // Least squares of step seconds on the positions each sequence attends (prompt + step + 1), per sequence.
            let xs = (0..<gen).map { Double(prompt + $0 + 1) }
            let mx = xs.reduce(0, +) / Double(gen), my = stepSeconds.reduce(0, +) / Double(gen)
            var sxy = 0.0, sxx = 0.0
            for (x, y) in zip(xs, stepSeconds) { sxy += (x - mx) * (y - my); sxx += (x - mx) * (x - mx) }
            let perPosition = sxy / sxx / Double(b)
            StandardError.write(String(format: "bench core: batch %d: decode step + %.0f ns per position attended per sequence (least squares over %d steps, positions %d–%d)\n",
                                               b, perPosition * 1e9, gen, prompt + 1, prompt + gen))
        }
        return Result(prefill: Double(b * prompt) / prefillSeconds, decode: Double(b * gen) / decodeSeconds,
                      msPerStep: decodeSeconds * 1000 / Double(gen))
    }
}
