import Foundation

/// Writes a trained MoLE composition: `mole_config.json` (the experts by name and path, the granularity, the
/// gate's input, the balance weight, the model's shape) and `gates.safetensors` (per gate unit in use the matrix
/// W (N × its input width) and the temperature τ, f32, named by `MoLEGranularity.tensorNames`: `layers.{l}.gate.*`
/// per block).
public enum MoLEWriter {
    public struct Expert: Sendable, Equatable {
        public var name: String
        public var path: String
        public init(name: String, path: String) {
            self.name = name
            self.path = path
        }
    }

    /// The gate's input, as the engine must compute it: `token`, each token's own RMS-normalised block input
    /// (docs/design/mole-serving.md). The engine refuses a composition that names another.
    public static let gateInput = "token"

    public static func write(_ mole: MoLEMixture, experts: [Expert], to directory: String, baseModel: String) throws {
        precondition(experts.count == mole.experts.count)
        let c = mole.config, n = mole.experts.count, h = c.hiddenSize
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for u in 0..<mole.units where mole.inUse[u] {
            let (weight, temperature) = mole.granularity.tensorNames(unit: u)
            let w = mole.widths[u]
            tensors.append((weight, [n, w], Array(UnsafeBufferPointer(start: mole.gateWeights[u].floats, count: n * w))))
            tensors.append((temperature, [1], [mole.temperatureValues.floats[u]]))
        }
        let config: [String: Any] = [
            "format": "dlora-mole", "version": 1, "granularity": mole.granularity.rawValue,
            "experts": experts.map { ["name": $0.name, "path": $0.path] },
            "gate_input": gateInput, "balance_weight": Double(String(mole.balanceWeight)) ?? Double(mole.balanceWeight),
            "num_layers": c.numLayers, "hidden_size": h, "base_model": baseModel,
        ]
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try PEFTAdapterWriter.atomicWrite(try SafetensorsWriter.encode(tensors, metadata: ["format": "pt"]),
                                          to: directory + "/gates.safetensors")
        try PEFTAdapterWriter.atomicWrite(json, to: directory + "/mole_config.json")
    }
}
