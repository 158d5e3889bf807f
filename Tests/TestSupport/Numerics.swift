/// SplitMix64 (Steele, Lea, Flood 2014): a small seeded generator, so test data is the same on every run.
public struct SplitMix64: RandomNumberGenerator {
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
    public mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
    public mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
    /// In `range` (modulo bias is irrelevant at test sizes).
    public mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
}

/// The largest |a[i] - b[i]|; infinity when `a` holds a NaN (a NaN must never pass a tolerance).
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var m: Float = 0
    for i in a.indices { m = max(m, abs(a[i] - b[i])) }
    return a.contains(where: \.isNaN) ? .infinity : m
}

/// `maxAbsDiff` over rows (e.g. logits per position), pairing rows and values as far as both go.
public func maxAbsDiff(_ a: [[Float]], _ b: [[Float]]) -> Float {
    var m: Float = 0
    for (x, y) in zip(a, b) { for (p, q) in zip(x, y) { m = max(m, abs(p - q)) } }
    return a.joined().contains(where: \.isNaN) ? .infinity : m
}
