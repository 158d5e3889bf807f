import Foundation
import Kernels
import Models
import Testing
import TestSupport
import Tokenizers

@testable import Training

extension TrainingSuites {
@Suite struct TrainingRunTests {
    /// AdamW against the formulas written out in f64 (Loshchilov & Hutter 2019, torch.optim.AdamW's
    /// order: decay, moments, bias-corrected step) over three steps with changing gradients.
    @Test func adamWMatchesTheFormulas() {
        let p = Buffer(floats: 3), grad = Buffer(floats: 3)
        let start: [Float] = [0.5, -1.25, 2]
        p.floats.update(from: start, count: 3)
        let c = AdamWConfiguration(learningRate: 0.01, beta1: 0.8, beta2: 0.95, epsilon: 1e-6, weightDecay: 0.1)
        let opt = AdamW(configuration: c, parameters: [(p.floats, UnsafePointer(grad.floats), 3)], owners: [p, grad])
        let grads: [[Double]] = [[0.3, -2, 1e-3], [-0.1, 0.5, 4], [0.2, 0.2, -0.7]]
        var ref = start.map(Double.init), m = [0.0, 0, 0], v = [0.0, 0, 0]
        let (lr, b1, b2, eps, wd) = (0.01, 0.8, 0.95, 1e-6, 0.1)
        for (t, g) in grads.enumerated() {
            for i in 0..<3 { grad.floats[i] = Float(g[i]) }
            opt.update()
            let step = Double(t + 1)
            for i in 0..<3 {
                ref[i] -= lr * wd * ref[i]
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                let mHat = m[i] / (1 - pow(b1, step)), vHat = v[i] / (1 - pow(b2, step))
                ref[i] -= lr * mHat / (vHat.squareRoot() + eps)
            }
            for i in 0..<3 { #expect(abs(Double(p.floats[i]) - ref[i]) < 1e-6, "step \(t + 1), parameter \(i): \(p.floats[i]) vs \(ref[i])") }
        }
    }

    /// PEFT's initialisation: A uniform within ±1/√in (kaiming-uniform, a = √5) and not all zero, B zero.
    @Test func peftInitialisation() throws {
        let c = try FrozenBase(path: FixtureFiles.checkpoint(model: "tiny-llama", variant: "hf")).config
        let lora = LoRAParameters(config: c, rank: 8, alpha: 16, targets: [.q, .v], seed: 3)
        #expect(lora.all.count == 2 * c.numLayers)
        for m in lora.all {
            let bound = 1 / Float(m.inFeatures).squareRoot()
            let a = m.aValues
            #expect(a.allSatisfy { abs($0) <= bound })
            #expect(a.map(abs).max()! > 0.9 * bound)
            #expect(m.bValues.allSatisfy { $0 == 0 })
        }
        #expect(lora.scale == 2)
    }

    /// The memory estimates `dlora train lora` checks before it loads anything equal what is allocated.
    @Test(arguments: [("tiny-llama", "hf"), ("tiny-qwen2", "hf")]) func memoryEstimatesMatchAllocations(model: String, variant: String) throws {
        let base = try FrozenBase(path: FixtureFiles.checkpoint(model: model, variant: variant))
        let c = base.config
        var weights = base.embedding.byteCount + base.outputNorm.byteCount + (base.output === base.embedding ? 0 : base.output.byteCount)
        for l in base.layers {
            weights += [l.attnNorm, l.ffnNorm, l.qkv, l.o, l.gateUp, l.down].reduce(0) { $0 + $1.byteCount } + (l.qkvBias?.byteCount ?? 0)
        }
        #expect(FrozenBase.bytes(config: c) == weights)

        let lora = LoRAParameters(config: c, rank: 4, alpha: 8, targets: [.q, .v, .down], seed: 1)
        let m = LoRATrainingModel(base: base, lora: lora)
        let (batch, length) = (3, 7)
        m.ws.reserve(batch: batch, length: length, targets: lora.targets)
        m.ws.reserveLabeled(batch * length)
        let ws = m.ws
        var allocated = 0
        for b in ws.blocks {
            allocated += [b.x, b.rstd1, b.xn1, b.qkv, b.probs, b.attn, b.h, b.rstd2, b.xn2, b.gateUp, b.act].reduce(0) { $0 + $1.byteCount }
            allocated += b.loraU.reduce(0) { $0 + ($1?.byteCount ?? 0) }
        }
        allocated += [ws.xFinal, ws.ropeCos, ws.ropeSin, ws.ropeNegSin, ws.dx, ws.dxn, ws.dqkv, ws.dAttn, ws.dAct, ws.dGateUp, ws.du,
                      ws.dScores, ws.tmp, ws.xnFinal, ws.rstdFinal, ws.logits, ws.dxnFinal].reduce(0) { $0 + $1.byteCount }
        #expect(LoRATrainingModel.workspaceBytes(config: c, rank: 4, targets: 3, batch: batch, length: length) == allocated)
    }

    static func tinyTokenizer() throws -> (Tokenizer, String) {
        let path = FixtureFiles.checkpoint(model: "tiny-llama", variant: "F32")
        let checkpoint = try openCheckpoint(path: path)
        return (try Tokenizer(metadata: try #require(checkpoint.metadata)), path)
    }

    /// A task the base cannot do: eight prompts, each with its own fixed completion. LoRA r8 on q and v of
    /// the tiny model (1.5k trainable values) learns it: the mean loss on the completions falls from ~6
    /// (random-weight model) below 0.5 in 60 AdamW steps (lr 3e-2, batch 8) — a few seconds.
    @Test func tinyModelLearnsCompletions() throws {
        let (tokenizer, path) = try Self.tinyTokenizer()
        var lines: [String] = []
        let words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
        for (i, w) in words.enumerated() {
            lines.append(#"{"prompt": "color \#(i):", "completion": " \#(w)"}"#)
        }
        let data = try TrainingData(jsonl: Data(lines.joined(separator: "\n").utf8), file: "colors.jsonl", tokenizer: tokenizer, maxLength: 32)
        #expect(data.examples.count == 8)
        let base = try FrozenBase(path: path)
        let config = LoRATrainingConfiguration(targets: [.q, .v], rank: 8, alpha: 16, steps: 60, batchSize: 8, maxLength: 32, seed: 1,
                                               optimizer: AdamWConfiguration(learningRate: 3e-2))
        let trainer = LoRATrainer(base: base, data: data, configuration: config)
        var losses: [Double] = []
        trainer.run { losses.append($0.loss) }
        let full = TrainingData.batch(data.examples)
        let final = trainer.model.loss(full)
        #expect(losses[0] > 3, "initial loss \(losses[0])")
        #expect(final < 0.5, "loss after 60 steps: \(final) (first \(losses[0]))")
    }

    /// `--precision bf16`: the frozen products in bf16 with f32 sums. Where the CPU has AVX-512 BF16, one
    /// step's loss and LoRA gradients stay within bf16's precision of the f32 step's (loss 1 %, gradients
    /// 5 % in relative L2 norm, all seven projections adapted, B non-zero so every path carries gradient), and
    /// the colours task still trains below 0.5 in 60 steps as in f32; elsewhere `useBF16Products` must
    /// refuse and leave the products f32.
    @Test func bf16ProductsTrackF32() throws {
        let (tokenizer, path) = try Self.tinyTokenizer()
        let words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
        let lines = words.enumerated().map { #"{"prompt": "color \#($0.offset):", "completion": " \#($0.element)"}"# }
        let data = try TrainingData(jsonl: Data(lines.joined(separator: "\n").utf8), file: "colors.jsonl", tokenizer: tokenizer, maxLength: 32)
        let base32 = try FrozenBase(path: path), base16 = try FrozenBase(path: path)
        guard let bytes = base16.useBF16Products() else {
            #expect(!Kernels.hasBF16Dot)
            #expect(base16.bf16Layers == nil && base16.bf16Output == nil)
            return
        }
        let c = base16.config, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let weights = c.numLayers * ((qDim + 2 * kvDim) * c.hiddenSize + c.hiddenSize * qDim + 3 * c.intermediateSize * c.hiddenSize)
            + c.vocabSize * c.hiddenSize
        #expect(bytes >= 4 * weights && bytes < 8 * weights, "packed copies take \(bytes) bytes for \(weights) weights")
        let batch = TrainingData.batch(data.examples)
        func step(_ base: FrozenBase) -> (Double, [Float]) {
            let lora = LoRAParameters(config: base.config, rank: 4, alpha: 8, targets: LoRATarget.allCases, seed: 3, bScale: 0.3)
            let model = LoRATrainingModel(base: base, lora: lora)
            lora.zeroGradients()
            let loss = model.lossAndGradients(batch)
            return (loss, lora.all.flatMap { $0.gradAValues + $0.gradBValues })
        }
        let (loss32, grad32) = step(base32), (loss16, grad16) = step(base16)
        #expect(abs(loss16 - loss32) <= 0.01 * loss32, "loss \(loss16) in bf16 against \(loss32) in f32")
        let diff = zip(grad16, grad32).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }.squareRoot()
        let norm = grad32.reduce(0.0) { $0 + Double($1 * $1) }.squareRoot()
        #expect(norm > 0 && diff <= 0.05 * norm, "gradients differ by \(diff / norm) of their norm")

        let trainer = LoRATrainer(base: base16, data: data, configuration: LoRATrainingConfiguration(
            targets: [.q, .v], rank: 8, alpha: 16, steps: 60, batchSize: 8, maxLength: 32, seed: 1,
            optimizer: AdamWConfiguration(learningRate: 3e-2)))
        var first = Double.nan
        trainer.run { if first.isNaN { first = $0.loss } }
        let final = trainer.model.loss(batch)
        #expect(first > 3 && final < 0.5, "bf16 products: loss \(first) → \(final) after 60 steps")
    }

    /// MoLE gate training: expert 0 is an adapter trained on the colours task, expert 1 a random one. From
    /// even gates, AdamW on the gates alone (experts frozen) must lower the loss on the task below a quarter
    /// (measured: 2.25 → 0.08 in 30 steps) and move the gates towards expert 0 in every block (measured:
    /// ~1.0 in block 0, ~0.9 in block 1; required > 0.7).
    @Test func moleGatesLearnToPickTheRightExpert() throws {
        let (tokenizer, path) = try Self.tinyTokenizer()
        let words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
        let lines = words.enumerated().map { #"{"prompt": "color \#($0.offset):", "completion": " \#($0.element)"}"# }
        let data = try TrainingData(jsonl: Data(lines.joined(separator: "\n").utf8), file: "colors.jsonl", tokenizer: tokenizer, maxLength: 32)
        let base = try FrozenBase(path: path)
        let trainer = LoRATrainer(base: base, data: data, configuration: LoRATrainingConfiguration(
            targets: [.q, .v], rank: 8, alpha: 16, steps: 60, batchSize: 8, maxLength: 32, seed: 1,
            optimizer: AdamWConfiguration(learningRate: 3e-2)))
        trainer.run()
        let random = LoRAParameters(config: base.config, rank: 8, alpha: 16, targets: [.q, .v], seed: 9, bScale: 0.3)
        let mole = MoLEMixture(config: base.config, experts: [trainer.lora, random], balanceWeight: 0.01)
        let none = LoRAParameters(config: base.config, rank: 1, alpha: 1, targets: [], seed: 0)
        let model = LoRATrainingModel(base: base, lora: none, mole: mole)
        let opt = AdamW(configuration: AdamWConfiguration(learningRate: 5e-2), mole: mole)
        let batch = TrainingData.batch(data.examples)
        let start = model.loss(batch)
        #expect(mole.gateValues(layer: 0).allSatisfy { abs($0 - 0.5) < 1e-6 })
        for _ in 0..<30 {
            mole.zeroGradients()
            model.lossAndGradients(batch)
            opt.update()
            mole.clampTemperatures()
        }
        let end = model.loss(batch)
        #expect(end < 0.25 * start, "loss \(start) → \(end)")
        for l in 0..<base.config.numLayers {
            let g = mole.gateValues(layer: l)
            let expert0 = stride(from: 0, to: g.count, by: 2).map { g[$0] }.reduce(0, +) / Float(g.count / 2)
            #expect(expert0 > 0.7, "layer \(l): expert 0 weighs \(expert0)")
        }
    }

    @Test func completionLabelsOnly() throws {
        let (tokenizer, _) = try Self.tinyTokenizer()
        let data = try TrainingData(jsonl: Data(#"{"prompt": "ab", "completion": "cd"}"#.utf8), file: "x.jsonl", tokenizer: tokenizer, maxLength: 64)
        let e = data.examples[0]
        let prompt = tokenizer.encode("ab", addSpecial: true, parseSpecial: false)
        let completion = tokenizer.encode("cd", addSpecial: false, parseSpecial: false)
        let eos = try #require(tokenizer.eosTokenID)
        #expect(e.tokens == prompt + completion + [eos])
        #expect(e.completionStart == prompt.count)
        let batch = TrainingData.batch([e, TrainingExample(tokens: [1, 2], completionStart: 1)])
        // Row t predicts token t + 1: only the completion tokens (and EOS) are labels; the shorter example is padded.
        let labels = Array(batch.labels[0..<batch.length])
        #expect(labels == Array(repeating: -1, count: prompt.count - 1) + (completion + [eos]).map(Int32.init) + [-1])
        #expect(Array(batch.labels[batch.length...]) == [2] + Array(repeating: -1, count: batch.length - 1))
        #expect(batch.realTokens == e.tokens.count + 2)
    }

    @Test(arguments: [
        ("{\"prompt\": \"a\"}", "x.jsonl:1: expected either prompt and completion, or text"),
        ("\n[1, 2]", "x.jsonl:2: not a JSON object"),
        ("{\"text\": 3}", "x.jsonl:1: text must be a string"),
        ("{\"text\": \"a\", \"label\": 1}", "x.jsonl:1: unexpected key 'label' (expected prompt + completion, or text)"),
        ("{\"prompt\": \"a\", \"completion\": \"\"}", "x.jsonl:1: completion is empty"),
        ("{\"prompt\": \"a\", \"completion\": \"b\", \"text\": \"c\"}", "x.jsonl:1: expected either prompt and completion, or text"),
        ("{\"text\": \"ab\"", "x.jsonl:1: not a JSON object"),
        ("\n\n", "x.jsonl: holds no examples"),
    ]) func badDataIsRefusedWithItsLine(text: String, message: String) throws {
        let (tokenizer, _) = try Self.tinyTokenizer()
        #expect(throws: TrainingDataError.self) { try TrainingData(jsonl: Data(text.utf8), file: "x.jsonl", tokenizer: tokenizer, maxLength: 16) }
        do {
            _ = try TrainingData(jsonl: Data(text.utf8), file: "x.jsonl", tokenizer: tokenizer, maxLength: 16)
        } catch {
            #expect("\(error)" == message)
        }
    }

    /// A prompt that fills --max-length leaves no completion: the example is dropped (and counted).
    @Test func overlongPromptsAreDropped() throws {
        let (tokenizer, _) = try Self.tinyTokenizer()
        let text = #"{"prompt": "\#(String(repeating: "q", count: 40))", "completion": "x"}"# + "\n" + #"{"text": "hello"}"#
        let data = try TrainingData(jsonl: Data(text.utf8), file: "x.jsonl", tokenizer: tokenizer, maxLength: 8)
        #expect(data.examples.count == 1 && data.dropped == 1)
        #expect(data.examples[0].tokens.count <= 8)
    }
}
}
