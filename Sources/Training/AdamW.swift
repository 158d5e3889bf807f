import Foundation
import Kernels

/// AdamW (Loshchilov & Hutter 2019) as `torch.optim.AdamW` computes it: weight decay decoupled from the
/// gradient, bias-corrected moments.
///
///     p ← p − lr·λ·p
///     m ← β₁m + (1 − β₁)g;   v ← β₂v + (1 − β₂)g²
///     p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
public struct AdamWConfiguration: Sendable, Equatable {
    public var learningRate: Float
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0
    public init(learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }
}

public final class AdamW {
    public var configuration: AdamWConfiguration
    public private(set) var step = 0
    private let parameters: [(value: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, count: Int)]
    private let moments: [(m: Buffer, v: Buffer)]
    /// Keeps the parameters' buffers alive.
    private let owners: [AnyObject]

    /// Optimises the given (value, gradient, count) triples; `owners` keeps their memory alive.
    public init(configuration: AdamWConfiguration, parameters: [(value: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, count: Int)],
                owners: [AnyObject]) {
        self.configuration = configuration
        self.parameters = parameters
        moments = parameters.map { (Buffer(floats: $0.count), Buffer(floats: $0.count)) }
        self.owners = owners
    }

    /// Every A and B of `lora`.
    public convenience init(configuration: AdamWConfiguration, lora: LoRAParameters) {
        var params: [(value: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, count: Int)] = []
        for m in lora.all {
            params.append((m.a.floats, UnsafePointer(m.gradA.floats), m.aCount))
            params.append((m.b.floats, UnsafePointer(m.gradB.floats), m.bCount))
        }
        self.init(configuration: configuration, parameters: params, owners: [lora])
    }

    /// MoLE's gates: every block's W and the temperatures (the experts stay frozen).
    public convenience init(configuration: AdamWConfiguration, mole: MoLEMixture) {
        var params: [(value: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, count: Int)] = []
        for u in 0..<mole.units where mole.inUse[u] {
            params.append((mole.gateWeights[u].floats, UnsafePointer(mole.gateGradients[u].floats), mole.experts.count * mole.widths[u]))
        }
        params.append((mole.temperatureValues.floats, UnsafePointer(mole.temperatureGradientValues.floats), mole.units))
        self.init(configuration: configuration, parameters: params, owners: [mole])
    }

    /// One update from the current gradients.
    public func update() {
        step += 1
        let c = configuration
        let bc1 = 1 - Foundation.pow(Double(c.beta1), Double(step))
        let bc2 = 1 - Foundation.pow(Double(c.beta2), Double(step))
        // torch: step_size = lr / bc1; denom = √v / √bc2 + ε.
        let stepSize = Float(Double(c.learningRate) / bc1)
        let sqrtBC2 = Float(bc2.squareRoot())
        let decay = 1 - c.learningRate * c.weightDecay
        for (p, mv) in zip(parameters, moments) {
            let m = mv.m.floats, v = mv.v.floats
            for i in 0..<p.count {
                let g = p.grad[i]
                p.value[i] *= decay
                m[i] = c.beta1 * m[i] + (1 - c.beta1) * g
                v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g
                p.value[i] -= stepSize * m[i] / (v[i].squareRoot() / sqrtBC2 + c.epsilon)
            }
        }
    }
}
