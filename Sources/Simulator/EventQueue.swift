import Scheduling

/// The simulator's clock: a binary min-heap of events over simulated time. Events at the same time come out in
/// the order they were pushed (a sequence number breaks ties), so a run is a pure function of its inputs.
public struct EventQueue<Payload: Sendable>: Sendable {
    struct Entry: Sendable, HeapOrdered {
        let time: Double
        let sequence: UInt64
        let payload: Payload

        func before(_ other: Entry) -> Bool {
            time != other.time ? time < other.time : sequence < other.sequence
        }
    }

    private var heap = MinHeap<Entry>()
    private var nextSequence: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { heap.isEmpty }
    public var count: Int { heap.count }
    /// Time of the next event, if any.
    public var nextTime: Double? { heap.first?.time }

    public mutating func push(_ payload: Payload, at time: Double) {
        precondition(time.isFinite, "an event needs a finite time")
        heap.push(Entry(time: time, sequence: nextSequence, payload: payload))
        nextSequence += 1
    }

    /// The earliest event (ties: the first pushed), removed.
    public mutating func pop() -> (time: Double, payload: Payload)? {
        heap.popFirst().map { ($0.time, $0.payload) }
    }
}

/// SplitMix64: a small seeded generator, identical on every platform (the standard library's default
/// generator is not seedable).
public struct SimRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    public mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// Exponential with mean `mean`.
    public mutating func exponential(mean: Double) -> Double { mean * log1pNegated(unit()) }

    /// Standard normal (Box–Muller).
    public mutating func normal() -> Double {
        let u1 = max(unit(), 0x1p-53), u2 = unit()
        return (-2 * logarithm(u1)).squareRoot() * cosine(2 * Double.pi * u2)
    }
}

/// FNV-1a over 64-bit words: the event log's fingerprint.
public struct EventLogHash: Sendable, Equatable {
    public private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325
    public init() {}

    public mutating func mix(_ word: UInt64) {
        var w = word
        for _ in 0..<8 {
            value ^= w & 0xFF
            value &*= 0x0000_0100_0000_01B3
            w >>= 8
        }
    }
    public mutating func mix(_ x: Int) { mix(UInt64(bitPattern: Int64(x))) }
    public mutating func mix(_ x: Double) { mix(x.bitPattern) }
}
