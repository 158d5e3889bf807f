import Adapters
import ArgumentParser
import Foundation
import Kernels
import Models

/// `dlora bench mole`: what a MoLE composition's gates cost inside an unmerged decode batch. One decode step
/// of a batch (every sequence holding `--context` tokens) with: no adapter; one expert; the N experts stacked
/// as a static `cat` composition (NLA's execution: the same stacked rank as MoLE, no gates); the N experts
/// as a MoLE composition (the same stack plus per-token gates, per block or at `--granularity`); and a mixed batch — half plain-expert
/// requests over distinct experts, half MoLE. Measured in interleaved rounds (best round counts).
struct BenchMoLE: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mole", abstract: "MoLE gate cost inside a decode batch.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Comma-separated batch sizes.")
    var batches: String = "1,8,32"
    @Option(help: "Experts per composition.")
    var experts: Int = 6
    @Option(help: "Each expert's LoRA rank.")
    var rank: Int = 8
    @Option(help: "Target modules: qv or all.")
    var targets: String = "qv"
    @Option(help: "Gate granularity: block, layer, network or matrix.")
    var granularity: String = "block"
    @OptionGroup var timing: StepTimingOptions

    func validate() throws {
        guard !BenchLoRA.list(batches).isEmpty, BenchLoRA.list(batches).allSatisfy({ (1...1024).contains($0) }) else {
            throw ValidationError("--batches must be a comma-separated list of numbers in 1...1024")
        }
        guard (2...MoLEGating.maxExperts).contains(experts) else { throw ValidationError("--experts must be between 2 and \(MoLEGating.maxExperts)") }
        guard (1...256).contains(rank) else { throw ValidationError("--rank must be between 1 and 256") }
        guard ["qv", "all"].contains(targets) else { throw ValidationError("--targets must be qv or all") }
        guard MoLEGranularity(rawValue: granularity) != nil else { throw ValidationError("--granularity must be block, layer, network or matrix") }
    }

    func run() throws {
        let (path, loaded) = try modelOptions.load()
        let m = loaded.model, c = m.config
        let (context, steps, rounds) = (timing.context, timing.steps, timing.rounds)
        try timing.check(against: m.config)
        let targetSet: [LoRATarget] = targets == "qv" ? [.q, .v] : LoRATarget.allCases
        let pool = (0..<experts).map { BenchLoRA.randomAdapter(config: c, rank: rank, targets: targetSet, dtype: .f32, seed: UInt64(7000 + $0)) }
        let cat = try LoRAComposition.cat(pool.map { ($0, 1) }, name: "cat", id: .next())
        // Gates: random W (entries ±2/√width) and τ = 1, so the mix varies from token to token.
        var rng = BenchLoRA.Uniform(seed: 12345)
        let g = MoLEGranularity(rawValue: granularity)!
        let inUse = g.unitsInUse(layers: c.numLayers) { _, t in targetSet.contains(t) }
        let gates = inUse.indices.map { u -> [Float] in
            let width = g.inputWidth(unit: u, config: c)
            return inUse[u] ? (0..<(experts * width)).map { _ in rng.next() * 2 / Float(width).squareRoot() } : []
        }
        let mole = try MoLEComposition.compose(pool, names: pool.map(\.name), granularity: g, weights: gates,
                                               temperatures: Array(repeating: 1, count: inUse.count), config: c, name: "mole", id: .next())
        // Slots: 0 the MoLE composition, 1 the cat, 2… the experts alone.
        let slots = LoRASlots(capacity: experts + 2)
        slots[0] = mole
        slots[1] = cat
        for (i, e) in pool.enumerated() { slots[i + 2] = e }

        print("Model: `\((path as NSString).lastPathComponent)`; \(experts) experts of rank \(rank) on \(targetSet.map(\.peftName).joined(separator: ", ")) "
              + "(f32), stacked rank \(experts * rank) per module; context \(context) tokens; best of \(rounds) interleaved rounds of \(steps) "
              + "decode steps per cell; threads: \(Kernels.threadCount); kernels: \(Kernels.simdPathName).")
        print()
        print("| batch | base ms/step | one expert | static cat of \(experts) (NLA) | MoLE of \(experts) (\(granularity) gates) | MoLE vs cat | half MoLE + half distinct experts |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for b in BenchLoRA.list(batches) {
            let runner = StepRunner(model: m, batch: b, context: context)
            var t = [Double](repeating: .infinity, count: 5)
            let cells: [(LoRASlots?, (Int) -> Int32)] = [
                (nil, { _ in -1 }), (slots, { _ in 2 }), (slots, { _ in 1 }), (slots, { _ in 0 }),
                (slots, { s in s % 2 == 0 ? 0 : Int32(2 + (s / 2) % experts) }),
            ]
            for _ in 0..<rounds {
                for (i, cell) in cells.enumerated() { t[i] = min(t[i], runner.time(steps: steps, lora: cell.0, assign: cell.1)) }
            }
            func cell(_ x: Double) -> String { String(format: "%.2f (%+.1f %%)", x * 1000, (x / t[0] - 1) * 100) }
            print(String(format: "| %d | %.2f | %@ | %@ | %@ | %+.1f %% | %@ |", b, t[0] * 1000, cell(t[1]), cell(t[2]), cell(t[3]),
                         (t[3] / t[2] - 1) * 100, cell(t[4])))
            StandardError.write("bench mole: batch \(b) done\n")
        }
    }
}
