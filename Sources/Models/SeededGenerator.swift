/// A small seeded generator (SplitMix64, Steele, Lea & Flood 2014): the same seed gives the same
/// initialisation, data order or drop mask on every machine (training; DARE's masks, `LoRAComposition.dareMask`).
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), 24 bits.
    public mutating func symmetric() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
}
