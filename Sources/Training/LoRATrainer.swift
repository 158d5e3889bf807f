import Foundation
import Kernels
import Models

/// What `dlora train lora` sets.
public struct LoRATrainingConfiguration: Sendable, Equatable {
    public var targets: [LoRATarget]
    public var rank: Int
    public var alpha: Double
    public var steps: Int
    public var batchSize: Int
    public var maxLength: Int
    public var seed: UInt64
    public var optimizer: AdamWConfiguration

    public init(targets: [LoRATarget], rank: Int, alpha: Double, steps: Int, batchSize: Int, maxLength: Int, seed: UInt64,
                optimizer: AdamWConfiguration) {
        self.targets = targets
        self.rank = rank
        self.alpha = alpha
        self.steps = steps
        self.batchSize = batchSize
        self.maxLength = maxLength
        self.seed = seed
        self.optimizer = optimizer
    }
}

/// One step's outcome.
public struct TrainingStepReport: Sendable {
    public var step: Int
    public var loss: Double
    /// Positions in the batch that hold a real token (padding excluded), and those with a label.
    public var tokens: Int
    public var labeled: Int
    public var seconds: Double
}

/// The training loop: batches from the data, forward and backward through the frozen base, AdamW on the
/// LoRA matrices. A constant learning rate; one batch per step.
public final class LoRATrainer {
    public let model: LoRATrainingModel
    public let optimizer: AdamW
    public let configuration: LoRATrainingConfiguration
    private var sampler: BatchSampler

    public init(base: FrozenBase, data: TrainingData, configuration: LoRATrainingConfiguration, initialBScale: Float = 0) {
        let lora = LoRAParameters(config: base.config, rank: configuration.rank, alpha: configuration.alpha,
                                  targets: configuration.targets, seed: configuration.seed, bScale: initialBScale)
        model = LoRATrainingModel(base: base, lora: lora)
        optimizer = AdamW(configuration: configuration.optimizer, lora: lora)
        self.configuration = configuration
        sampler = BatchSampler(data: data, size: configuration.batchSize, seed: configuration.seed)
    }

    public var lora: LoRAParameters { model.lora }

    /// One optimisation step on the next batch.
    public func step() -> TrainingStepReport {
        let batch = sampler.nextBatch()
        let start = DispatchTime.now().uptimeNanoseconds
        lora.zeroGradients()
        let loss = model.lossAndGradients(batch)
        optimizer.update()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return TrainingStepReport(step: optimizer.step, loss: loss, tokens: batch.realTokens, labeled: batch.labeledCount,
                                  seconds: seconds)
    }

    /// Runs `configuration.steps` steps, calling `report` after each.
    public func run(report: (TrainingStepReport) -> Void = { _ in }) {
        for _ in 0..<configuration.steps { report(step()) }
    }

    /// `run`, where the report may stop the loop by throwing.
    public func runChecked(report: (TrainingStepReport) throws -> Void) throws {
        for _ in 0..<configuration.steps { try report(step()) }
    }
}
