import Scheduling

/// An accelerator's published figures (vendor datasheets; docs/design/simulator.md cites them).
public struct GPUSpec: Sendable, Equatable {
    public var name: String
    public var memoryBytes: Double
    /// HBM bandwidth, bytes/s.
    public var hbmBytesPerSecond: Double
    /// Dense FP16/BF16 tensor-core peak, FLOP/s (without sparsity).
    public var peakFLOPS: Double
    /// Host link, bytes/s per direction (PCIe nominal).
    public var pcieBytesPerSecond: Double
    /// GPU-to-GPU link within a node, bytes/s per direction (NVLink), for tensor-parallel all-reduces.
    public var nvlinkBytesPerSecond: Double

    /// A100 80GB SXM: 2,039 GB/s HBM2e, 312 TFLOPS FP16 dense, PCIe Gen4 x16, NVLink 600 GB/s (bidirectional).
    public static let a100 = GPUSpec(name: "a100", memoryBytes: 80e9, hbmBytesPerSecond: 2.039e12, peakFLOPS: 312e12,
                                     pcieBytesPerSecond: 32e9, nvlinkBytesPerSecond: 300e9)
    /// A800 80GB SXM: the A100 with NVLink cut to 400 GB/s; memory and compute as the A100.
    public static let a800 = GPUSpec(name: "a800", memoryBytes: 80e9, hbmBytesPerSecond: 2.039e12, peakFLOPS: 312e12,
                                     pcieBytesPerSecond: 32e9, nvlinkBytesPerSecond: 200e9)
    /// H100 SXM5 80GB: 3.35 TB/s HBM3, 989 TFLOPS FP16 dense, PCIe Gen5 x16, NVLink 900 GB/s.
    public static let h100 = GPUSpec(name: "h100", memoryBytes: 80e9, hbmBytesPerSecond: 3.35e12, peakFLOPS: 989e12,
                                     pcieBytesPerSecond: 64e9, nvlinkBytesPerSecond: 450e9)
    /// H200 SXM 141GB: 4.8 TB/s HBM3e, compute as the H100, PCIe Gen5, NVLink 900 GB/s.
    public static let h200 = GPUSpec(name: "h200", memoryBytes: 141e9, hbmBytesPerSecond: 4.8e12, peakFLOPS: 989e12,
                                     pcieBytesPerSecond: 64e9, nvlinkBytesPerSecond: 450e9)
    public static let all = [a100, a800, h100, h200]
}

/// A Llama-2 base model's shape (the Hugging Face config.json of each checkpoint).
public struct LlamaSpec: Sendable, Equatable {
    public var name: String
    public var parameters: Double
    public var layers: Int
    public var hidden: Int
    public var heads: Int
    public var kvHeads: Int
    public var intermediate: Int
    public var context: Int

    public static let llama2_7b = LlamaSpec(name: "7b", parameters: 6.74e9, layers: 32, hidden: 4096, heads: 32, kvHeads: 32,
                                            intermediate: 11008, context: 4096)
    public static let llama2_13b = LlamaSpec(name: "13b", parameters: 13.0e9, layers: 40, hidden: 5120, heads: 40, kvHeads: 40,
                                             intermediate: 13824, context: 4096)
    public static let llama2_70b = LlamaSpec(name: "70b", parameters: 69.0e9, layers: 80, hidden: 8192, heads: 64, kvHeads: 8,
                                             intermediate: 28672, context: 4096)
    public static let all = [llama2_7b, llama2_13b, llama2_70b]

    var headDim: Int { hidden / heads }
    /// FP16 K and V of every layer for one token.
    public var kvBytesPerToken: Int { 2 * layers * kvHeads * headDim * 2 }
}

/// A GPU replica from a roofline of published figures, calibrated to dLoRA's profiled Llama-2 7B / A800 points
/// (merged step 15 ms, unmerged 27 ms, switch 20 ms; shared/PAPERS.md, the artifact). Every number and why it
/// is what it is: docs/design/simulator.md, "GPU replicas".
///
///     merged(step)   = fixed + max(bytes / (HBM · mbu), flops / (peak · mfu)) + all-reduces (TP > 1)
///     bytes          = weights / TP + K/V attended · kvBytesPerToken / TP
///     flops          = (2 · parameters · tokens + 4 · layers · hidden · context attended) / TP
///     unmerged(step) = merged · (1 + γ) + δ · distinct adapters · (size vs Llama-2 7B) · (A800 HBM / this HBM)
public struct RooflineCostModel: ReplicaCostModel {
    public let gpu: GPUSpec
    public let model: LlamaSpec
    public let tensorParallel: Int
    /// LoRA rank the adapters are profiled at (dLoRA: at most 16), targets q and v (PEFT's default).
    public var memoryBandwidthUtilization = 0.8
    public var computeUtilization = 0.6
    /// Launch and framework overhead per iteration (an assumption: vLLM-0.2-era Python scheduling).
    public var fixedSeconds = 0.0015
    /// Unmerged-mode overhead: γ on the whole step, δ per distinct adapter (calibration in the docs).
    public var unmergedGamma = 0.6
    public var perAdapterSeconds7B = 0.0001
    /// merge + unmerge of a rank-16 q/v adapter on Llama-2 7B on the A800 (the artifact's profiled switch).
    public var switchSeconds7BA800 = 0.020
    /// All-reduce latency per call (two per layer with TP > 1).
    public var allReduceLatency = 8e-6
    /// Replica-to-replica K/V path: 100 Gb/s between nodes (an assumption), and the host links at both ends.
    public var networkBytesPerSecond = 12.5e9
    /// Set-up of an adapter's load from host memory, on top of its bytes over PCIe at 80 %.
    public var adapterLoadFixedSeconds = 0.001
    public var shape: ReplicaShape

    /// The knobs a measured profile may replace (`dlora simulate --cost h200-7b --cost-profile FILE`), by snake_case
    /// name; δ and the switch stay referenced to Llama-2 7B (and the switch to the A800) and are scaled to the
    /// model and GPU as above (tools/gpu_profile_report.py --knobs converts a measurement).
    public static var profileKeys: [String: WritableKeyPath<RooflineCostModel, Double>] {
        ["memory_bandwidth_utilization": \.memoryBandwidthUtilization, "compute_utilization": \.computeUtilization,
         "fixed_seconds": \.fixedSeconds, "unmerged_gamma": \.unmergedGamma, "per_adapter_seconds_7b": \.perAdapterSeconds7B,
         "switch_seconds_7b_a800": \.switchSeconds7BA800, "all_reduce_latency": \.allReduceLatency,
         "network_bytes_per_second": \.networkBytesPerSecond, "adapter_load_seconds": \.adapterLoadFixedSeconds]
    }

    /// Keys that are fractions of a peak, in (0, 1].
    public static let utilizationKeys: Set<String> = ["memory_bandwidth_utilization", "compute_utilization"]

    public init(gpu: GPUSpec, model: LlamaSpec, tensorParallel: Int = 1, adapterSlots: Int = 32, maxBatchSequences: Int = 32,
                maxBatchTokens: Int = 4096) {
        self.gpu = gpu
        self.model = model
        self.tensorParallel = max(1, tensorParallel)
        let bytesPerBlock = 16 * model.kvBytesPerToken
        // vLLM's gpu_memory_utilization 0.9, minus the FP16 weights (activations inside the 10 %).
        let kvBytes = max(0, 0.9 * gpu.memoryBytes * Double(self.tensorParallel) - 2 * model.parameters)
        shape = ReplicaShape(numBlocks: max(16, Int(kvBytes) / bytesPerBlock), bytesPerBlock: bytesPerBlock, contextLimit: model.context,
                             hostSwapBytes: 64 << 30, adapterSlots: adapterSlots, maxBatchSequences: maxBatchSequences,
                             maxBatchTokens: maxBatchTokens)
    }

    public var name: String { "\(gpu.name)-\(model.name)" + (tensorParallel > 1 ? "-tp\(tensorParallel)" : "") }

    /// The named models of `dlora simulate --cost`: cpu, and a100/a800/h100/h200 × 7b/13b/70b (70B at TP 4).
    /// `adapterSlots` and `maxBatchSequences` override the defaults (CPU: the engine's 32 and 256; GPU: 32 and
    /// the paper's B = 32).
    public static func named(_ name: String, adapterSlots: Int? = nil, maxBatchSequences: Int? = nil) -> (any ReplicaCostModel)? {
        if name == "cpu" { return CPUCostModel(adapterSlots: adapterSlots ?? 32, maxBatchSequences: maxBatchSequences ?? 256) }
        let parts = name.split(separator: "-")
        guard parts.count == 2, let g = GPUSpec.all.first(where: { $0.name == parts[0] }),
              let m = LlamaSpec.all.first(where: { $0.name == parts[1] }) else { return nil }
        return RooflineCostModel(gpu: g, model: m, tensorParallel: m.name == "70b" ? 4 : 1, adapterSlots: adapterSlots ?? 32,
                                 maxBatchSequences: maxBatchSequences ?? 32)
    }

    public static var names: [String] {
        ["cpu"] + GPUSpec.all.flatMap { g in LlamaSpec.all.map { "\(g.name)-\($0.name)" } }
    }

    /// Rank-16 q/v adapter elements per token of this model: the reference adapter of the policy's profile.
    var referenceLoRAParameters: Int { model.layers * 16 * (2 * model.hidden + model.hidden + model.kvHeads * model.headDim) }
    private var sizeVs7B: Double { Double(model.layers * model.hidden) / Double(32 * 4096) }

    public func adapterProfile(key: Int, rank: Int) -> AdapterProfile {
        let r = max(1, rank)
        let perToken = model.layers * r * ((model.hidden + model.hidden) + (model.hidden + model.kvHeads * model.headDim))
        return AdapterProfile(key: key, bytes: perToken * 2, loraParameters: perToken,
                              mergeElements: model.layers * (model.hidden * model.hidden + model.hidden * model.kvHeads * model.headDim))
    }

    func mergedSeconds(tokens: Int, context: Int) -> Double {
        let tp = Double(tensorParallel)
        let bytes = (2 * model.parameters + Double(context) * Double(model.kvBytesPerToken)) / tp
        let flops = (2 * model.parameters * Double(tokens) + 4 * Double(model.layers * model.hidden) * Double(context)) / tp
        var t = fixedSeconds + max(bytes / (gpu.hbmBytesPerSecond * memoryBandwidthUtilization), flops / (gpu.peakFLOPS * computeUtilization))
        if tensorParallel > 1 {
            let message = Double(tokens * model.hidden * 2)
            let ring = 2 * (tp - 1) / tp * message / gpu.nvlinkBytesPerSecond
            t += Double(2 * model.layers) * (allReduceLatency + ring)
        }
        return t
    }

    public func stepSeconds(_ s: StepShape) -> Double {
        let merged = mergedSeconds(tokens: s.tokens, context: s.contextTokens)
        switch s.mode {
        case .merged: return merged
        case .unmerged:
            guard s.distinctAdapters > 0 else { return merged }
            let perAdapter = perAdapterSeconds7B * sizeVs7B * (GPUSpec.a800.hbmBytesPerSecond / gpu.hbmBytesPerSecond) / Double(tensorParallel)
            return merged * (1 + unmergedGamma) + perAdapter * Double(s.distinctAdapters)
        }
    }

    /// The 7B/A800 switch scaled by the elements rewritten and the HBM bandwidth (a merge streams the
    /// targeted matrices in and out); split evenly between merge and unmerge (an assumption).
    private func switchSeconds(_ a: AdapterProfile) -> Double {
        let reference = Double(32 * (4096 * 4096 + 4096 * 4096))
        return switchSeconds7BA800 * Double(a.mergeElements) / reference * (GPUSpec.a800.hbmBytesPerSecond / gpu.hbmBytesPerSecond)
            / Double(tensorParallel)
    }
    /// The scheduler starts from this model's own merge cost (the reference rank-16 q/v adapter's), not the
    /// CPU's: at 0.7 ns per element a 7B q/v merge would look like 0.75 s, and dLoRA would never merge.
    public var switchPrior: SwitchPrior {
        let reference = adapterProfile(key: 0, rank: 16)
        return SwitchPrior(mergeSecondsPerElement: mergeSeconds(reference) / Double(max(1, reference.mergeElements)),
                           unmergeSeconds: unmergeSeconds(reference))
    }
    public func mergeSeconds(_ a: AdapterProfile) -> Double { switchSeconds(a) / 2 }
    public func unmergeSeconds(_ a: AdapterProfile) -> Double { switchSeconds(a) / 2 }
    /// PCIe at 80 % of nominal, plus a set-up (1 ms unless a profile says otherwise).
    public func adapterLoadSeconds(bytes: Int) -> Double { adapterLoadFixedSeconds + Double(bytes) / (0.8 * gpu.pcieBytesPerSecond) }
    public func swapSeconds(bytes: Int) -> Double { Double(bytes) / (0.8 * gpu.pcieBytesPerSecond * Double(tensorParallel)) }
    public func transferSeconds(bytes: Int) -> Double {
        Double(bytes) / min(networkBytesPerSecond, 0.8 * gpu.pcieBytesPerSecond)
    }

    /// The policy's prior: this roofline at context 512 per sequence, linearised (fixed + per token), with the
    /// unmerged overhead as per-token (γ) and per-adapter (δ) terms.
    public var schedulerPrior: StepCostModel {
        let one = mergedSeconds(tokens: 1, context: 512)
        let full = mergedSeconds(tokens: shape.maxBatchSequences, context: 512 * shape.maxBatchSequences)
        let perToken = max(0, (full - one) / Double(max(1, shape.maxBatchSequences - 1)))
        let fixed = max(0, one - perToken)
        let mid = mergedSeconds(tokens: shape.maxBatchSequences / 2, context: 512 * shape.maxBatchSequences / 2)
        let perAdapter = perAdapterSeconds7B * sizeVs7B * (GPUSpec.a800.hbmBytesPerSecond / gpu.hbmBytesPerSecond) / Double(tensorParallel)
        var m = StepCostModel(fixedSeconds: fixed, perTokenSeconds: perToken,
                              perLoRATokenSeconds: unmergedGamma * mid / Double(max(1, shape.maxBatchSequences / 2)),
                              perAdapterSeconds: perAdapter, switchSeconds: switchSeconds(adapterProfile(key: 0, rank: 16)))
        m.referenceLoRAParameters = Double(referenceLoRAParameters)
        return m
    }
}
