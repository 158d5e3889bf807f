/// A context-free grammar over bytes, compiled to a flat program, and the pushdown acceptor that decides byte by byte
/// whether a text can still become a sentence of it: what structured outputs (a JSON schema, a choice of strings)
/// constrain sampling with (`GrammarAutomaton`).
///
/// A rule is a list of alternatives; an alternative a sequence of byte sets and references to rules, ended by `end`.
/// The acceptor's state is a set of stacks of program positions: each stack is one way the text so far can be
/// parsed, its top the byte set the next byte must match (below it the positions to return to). Left recursion is
/// not allowed (the builders never make it; expansion is bounded anyway, so a bad grammar rejects instead of hanging).
public struct Grammar: Sendable {
    /// A set of byte values (256 bits).
    public struct ByteSet: Hashable, Sendable {
        var bits: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

        public init() {}
        public init(_ bytes: some Sequence<UInt8>) { for b in bytes { insert(b) } }
        public init(ranges: [ClosedRange<UInt8>]) { for r in ranges { for b in r { insert(b) } } }

        public mutating func insert(_ b: UInt8) {
            let bit = UInt64(1) << UInt64(b & 63)
            switch b >> 6 {
            case 0: bits.0 |= bit
            case 1: bits.1 |= bit
            case 2: bits.2 |= bit
            default: bits.3 |= bit
            }
        }

        public func contains(_ b: UInt8) -> Bool {
            let word: UInt64
            switch b >> 6 {
            case 0: word = bits.0
            case 1: word = bits.1
            case 2: word = bits.2
            default: word = bits.3
            }
            return (word >> UInt64(b & 63)) & 1 == 1
        }

        public static func == (a: ByteSet, b: ByteSet) -> Bool {
            a.bits.0 == b.bits.0 && a.bits.1 == b.bits.1 && a.bits.2 == b.bits.2 && a.bits.3 == b.bits.3
        }

        public func hash(into h: inout Hasher) {
            h.combine(bits.0)
            h.combine(bits.1)
            h.combine(bits.2)
            h.combine(bits.3)
        }
    }

    /// One item of an alternative as a builder writes it.
    public enum Item: Sendable {
        case bytes(ByteSet)
        case rule(Int)

        public static func byte(_ b: UInt8) -> Item { .bytes(ByteSet([b])) }
        /// The bytes of `text`, one item each.
        public static func literal(_ text: String) -> [Item] { text.utf8.map { .byte($0) } }
    }

    enum Element: Sendable {
        case bytes(Int32)
        case rule(Int32)
        case end
    }

    let elements: [Element]
    let sets: [ByteSet]
    /// Per rule, the program positions its alternatives start at.
    let alternatives: [[Int32]]
    let root: Int32

    /// The most stack entries one parse may hold (deeper nesting is refused), and the most parses a state may hold
    /// (a grammar whose start needs more is refused when it is built; a byte that would need more is refused).
    public static let maxStackDepth = 1024
    public static let maxStacks = 1024

    /// Builds a grammar from rules (`rules[i]` the alternatives of rule i); `root` is the start rule.
    public init(rules: [[[Item]]], root: Int) throws {
        guard rules.indices.contains(root) else { throw GrammarError("the start rule \(root) is not defined") }
        var elements: [Element] = []
        var sets: [ByteSet] = []
        var setIndex: [ByteSet: Int32] = [:]
        var alternatives: [[Int32]] = []
        for rule in rules {
            var starts: [Int32] = []
            for alternative in rule {
                starts.append(Int32(elements.count))
                for item in alternative {
                    switch item {
                    case .bytes(let set):
                        if let i = setIndex[set] {
                            elements.append(.bytes(i))
                        } else {
                            setIndex[set] = Int32(sets.count)
                            elements.append(.bytes(Int32(sets.count)))
                            sets.append(set)
                        }
                    case .rule(let r):
                        guard rules.indices.contains(r) else { throw GrammarError("rule \(r) is referenced but not defined") }
                        elements.append(.rule(Int32(r)))
                    }
                }
                elements.append(.end)
            }
            alternatives.append(starts)
        }
        guard elements.count < Int(Int32.max) else { throw GrammarError("the grammar is too large") }
        self.elements = elements
        self.sets = sets
        self.alternatives = alternatives
        self.root = Int32(root)
        var out = Set<[Int32]>()
        for alt in alternatives[root] { expand([alt], into: &out, budget: 0) }
        guard out.count <= Self.maxStacks else {
            throw GrammarError("the grammar starts with more than \(Self.maxStacks) parses at once (nested alternatives: simplify anyOf/oneOf)")
        }
        guard !out.isEmpty else { throw GrammarError("the grammar allows no text") }
        start = State(out)
    }

    /// The state before any byte: the start rule expanded.
    public private(set) var start = State([])

    /// The state after byte `b`, or nil when no parse continues with it.
    public func advance(_ state: State, _ b: UInt8) -> State? {
        var out = Set<[Int32]>()
        for stack in state.stacks {
            guard let top = stack.last, case .bytes(let set) = elements[Int(top)], sets[Int(set)].contains(b) else { continue }
            var next = stack
            next[next.count - 1] = top + 1
            expand(next, into: &out, budget: 0)
        }
        if out.count > Self.maxStacks { return nil }
        return out.isEmpty ? nil : State(out)
    }

    /// Moves every stack to a byte set (or to empty: complete), following rule references and alternatives' ends.
    /// `budget` bounds expansions without a byte in between (left recursion rejects instead of looping).
    private func expand(_ stack: [Int32], into out: inout Set<[Int32]>, budget: Int) {
        // Past the bound the caller refuses the state: stop expanding (nested alternatives can multiply parses).
        guard out.count <= Self.maxStacks, budget < 4 * Self.maxStackDepth, stack.count <= Self.maxStackDepth else { return }
        guard let top = stack.last else {
            out.insert(stack)
            return
        }
        switch elements[Int(top)] {
        case .bytes:
            out.insert(stack)
        case .end:
            var s = stack
            s.removeLast()
            expand(s, into: &out, budget: budget + 1)
        case .rule(let r):
            var s = stack
            // Return to the position after the reference; a reference that ends its alternative returns nowhere
            // (a tail call: right recursion runs in constant depth).
            if case .end = elements[Int(top) + 1] { s.removeLast() } else { s[s.count - 1] = top + 1 }
            for alt in alternatives[Int(r)] {
                var t = s
                t.append(alt)
                expand(t, into: &out, budget: budget + 1)
            }
        }
    }

    /// The parses of the text so far, in a canonical order (equal states compare and hash equal).
    public struct State: Hashable, Sendable {
        let stacks: [[Int32]]

        init(_ set: Set<[Int32]>) {
            stacks = set.sorted { a, b in a.lexicographicallyPrecedes(b) }
        }

        /// The text so far is a sentence of the grammar (it may also go on).
        public var isComplete: Bool { stacks.contains { $0.isEmpty } }
    }

    /// The state after `bytes`, or nil when they leave the grammar.
    public func after(_ bytes: some Sequence<UInt8>, from state: State? = nil) -> State? {
        var s = state ?? start
        for b in bytes {
            guard let next = advance(s, b) else { return nil }
            s = next
        }
        return s
    }
}

public struct GrammarError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
