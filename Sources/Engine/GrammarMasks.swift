import Tokenizers

/// Every token's bytes as constrained decoding reads them (special tokens and empty ones have none: never allowed
/// in constrained text).
struct TokenByteTable: Sendable {
    let storage: [UInt8]
    /// Token i's bytes are storage[offsets[i] ..< offsets[i + 1]].
    let offsets: [Int]
    var vocab: Int { offsets.count - 1 }

    init(tokenizer: Tokenizer, vocabSize: Int) {
        var storage: [UInt8] = []
        var offsets = [0]
        offsets.reserveCapacity(vocabSize + 1)
        for id in 0..<vocabSize {
            if !tokenizer.isSpecial(id) { storage += tokenizer.tokenBytes(id) }
            offsets.append(storage.count)
        }
        self.storage = storage
        self.offsets = offsets
    }

    func bytes(of token: Int) -> ArraySlice<UInt8> { storage[offsets[token]..<offsets[token + 1]] }
}

/// A grammar's acceptor made deterministic as it is used: each parse state met gets a number, and its transitions
/// on each byte are computed once and kept (a lazily built DFA), so replaying a request's tokens and scanning the
/// vocabulary for a mask are table lookups after the first time. Masks are kept per state.
final class GrammarAutomaton {
    let grammar: Grammar
    private var states: [Grammar.State] = []
    private var numbers: [Grammar.State: Int32] = [:]
    private var complete: [Bool] = []
    /// 256 per state: the next state, `dead`, or `unknown` (a raw buffer: the vocabulary scan reads it a few
    /// hundred thousand times per new state, without the exclusivity checks of a class's array property).
    private var transitions: UnsafeMutablePointer<Int32>
    private var capacity = 0
    private var masks: [Int32: [UInt8]] = [:]
    private static let unknown: Int32 = -2
    static let dead: Int32 = -1
    /// States kept before the tables start over (each costs 1 KiB of transitions), and masks kept.
    static let maxStates = 16_384
    static let maxMasks = 64

    init(grammar: Grammar) {
        self.grammar = grammar
        capacity = 64
        transitions = .allocate(capacity: capacity * 256)
        reset()
    }

    deinit { transitions.deallocate() }

    /// Where a request's replay stands: the tables' epoch (they start over past `maxStates`, voiding state
    /// numbers), the tokens replayed, and the state they reached; the next step replays only what came since.
    struct Cursor {
        var epoch: Int
        var tokens: Int
        var state: Int32
    }

    private var epoch = 0

    private func reset() {
        epoch += 1
        states = []
        numbers = [:]
        complete = []
        masks = [:]
        _ = number(grammar.start)
    }

    private func number(_ state: Grammar.State) -> Int32 {
        if let n = numbers[state] { return n }
        let n = Int32(states.count)
        if states.count == capacity {
            let grown = UnsafeMutablePointer<Int32>.allocate(capacity: capacity * 2 * 256)
            grown.update(from: transitions, count: capacity * 256)
            transitions.deallocate()
            transitions = grown
            capacity *= 2
        }
        (transitions + Int(n) * 256).initialize(repeating: Self.unknown, count: 256)
        states.append(state)
        numbers[state] = n
        complete.append(state.isComplete)
        return n
    }

    func isComplete(_ s: Int32) -> Bool { complete[Int(s)] }

    /// The state after byte `b` from state `s` (`dead` when the grammar cannot continue with it).
    func next(_ s: Int32, _ b: UInt8) -> Int32 {
        let slot = Int(s) &* 256 &+ Int(b)
        let t = transitions[slot]
        if t != Self.unknown { return t }
        let n = grammar.advance(states[Int(s)], b).map(number) ?? Self.dead
        transitions[slot] = n
        return n
    }

    /// The state after `tokens` from the start, or nil when they leave the grammar; from `cursor` on when it is
    /// of these tables and behind the tokens (a request's tokens only grow), and `cursor` moved to the end. Starts
    /// the tables over first when they have grown past `maxStates` (state numbers from before are then void).
    func state(after tokens: ArraySlice<Int>, table: TokenByteTable, cursor: inout Cursor?) -> Int32? {
        if states.count > Self.maxStates { reset() }
        var s: Int32 = 0
        var from = tokens.startIndex
        if let c = cursor, c.epoch == epoch, c.tokens <= tokens.count {
            s = c.state
            from += c.tokens
        }
        for token in tokens[from...] where token >= 0 && token < table.vocab {
            for b in table.bytes(of: token) {
                s = next(s, b)
                if s == Self.dead {
                    cursor = nil
                    return nil
                }
            }
        }
        cursor = Cursor(epoch: epoch, tokens: tokens.count, state: s)
        return s
    }

    /// The tokens allowed in state `s`: those whose every byte the grammar takes, and `endTokens` once the text is
    /// complete.
    func mask(_ s: Int32, table: TokenByteTable, endTokens: Set<Int>) -> [UInt8] {
        if let m = masks[s] { return m }
        let vocab = table.vocab
        var mask = [UInt8](repeating: 0, count: vocab)
        table.storage.withUnsafeBufferPointer { bytes in
            table.offsets.withUnsafeBufferPointer { offsets in
                mask.withUnsafeMutableBufferPointer { m in
                    for id in 0..<vocab {
                        let lo = offsets[id], hi = offsets[id + 1]
                        guard lo < hi else { continue }
                        var t = s
                        var i = lo
                        while i < hi {
                            t = next(t, bytes[i])
                            if t == Self.dead { break }
                            i += 1
                        }
                        if t != Self.dead { m[id] = 1 }
                    }
                }
            }
        }
        // End-of-sequence (a special token: no bytes above) once the text is complete.
        for id in endTokens where id >= 0 && id < vocab { mask[id] = complete[Int(s)] ? 1 : 0 }
        if masks.count >= Self.maxMasks { masks.removeAll(keepingCapacity: true) }
        masks[s] = mask
        return mask
    }
}

/// What the engine constrains sampling with: the token table (built on first use) and the automata of recent
/// grammars (structured outputs), each compiled once per spec.
struct ConstrainedDecoding {
    let table: TokenByteTable
    private var automata: [GrammarSpec: GrammarAutomaton] = [:]
    static let maxGrammars = 8

    init(tokenizer: Tokenizer, vocabSize: Int) {
        table = TokenByteTable(tokenizer: tokenizer, vocabSize: vocabSize)
    }

    /// The automaton of a grammar spec (compiled on first use).
    mutating func automaton(_ spec: GrammarSpec) throws -> GrammarAutomaton {
        if let a = automata[spec] { return a }
        let a = GrammarAutomaton(grammar: try spec.compile())
        if automata.count >= Self.maxGrammars { automata.removeAll() }
        automata[spec] = a
        return a
    }
}

/// A structured-output constraint as a request carries it: what kind, and its source (canonical JSON text), from
/// which the grammar is compiled (`compile`). Codable and comparable by source, so requests that move or are
/// swapped out carry it as text, and equal specs share one automaton.
public struct GrammarSpec: Sendable, Hashable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// A JSON Schema (`JSONSchemaGrammar.compile`).
        case jsonSchema
        /// The same, written without whitespace outside strings (vLLM's `disable_any_whitespace`).
        case compactJSONSchema
        /// A JSON array of strings: the output is exactly one of them.
        case choice
        /// `{"marker": M, "schema": S}`: M then a JSON text valid against S, or any text not starting with M (a chat
        /// answer that may be a tool call).
        case markedOrText
        /// A JSON string holding a regular expression: the texts it fully matches (`RegexGrammar`).
        case regex
    }

    public var kind: Kind
    public var source: String

    public init(kind: Kind, source: String) {
        self.kind = kind
        self.source = source
    }

    /// The spec of a schema (its canonical text); `compact`: no whitespace outside strings.
    public static func jsonSchema(_ schema: ExactJSON, compact: Bool = false) -> GrammarSpec {
        GrammarSpec(kind: compact ? .compactJSONSchema : .jsonSchema, source: JSONSchemaGrammar.text(schema))
    }

    /// JSON mode: any JSON object.
    public static func jsonObject(compact: Bool = false) -> GrammarSpec { jsonSchema(JSONSchemaGrammar.objectSchema, compact: compact) }

    public static func markedOrText(marker: String, schema: ExactJSON) -> GrammarSpec {
        GrammarSpec(kind: .markedOrText, source: JSONSchemaGrammar.text(.object([("marker", .string(marker)), ("schema", schema)])))
    }

    public static func regex(_ pattern: String) -> GrammarSpec { GrammarSpec(kind: .regex, source: JSONSchemaGrammar.text(.string(pattern))) }

    public static func choice(_ choices: [String]) -> GrammarSpec {
        GrammarSpec(kind: .choice, source: JSONSchemaGrammar.text(.array(choices.map { .string($0) })))
    }

    public func compile() throws -> Grammar {
        let value = try Array(source.utf8).withUnsafeBytes { try ExactJSON.parse($0, name: "grammar spec") }
        switch kind {
        case .jsonSchema, .compactJSONSchema:
            return try JSONSchemaGrammar.compile(schema: value, compact: kind == .compactJSONSchema)
        case .markedOrText:
            guard case .object(let m) = value, case .string(let marker)? = m.first(where: { $0.key == "marker" })?.value,
                  let schema = m.first(where: { $0.key == "schema" })?.value else {
                throw GrammarError("a marked spec must be {\"marker\", \"schema\"}")
            }
            return try JSONSchemaGrammar.markedOrText(schema: schema, marker: marker)
        case .regex:
            guard case .string(let pattern) = value else { throw GrammarError("a regex spec must be a string") }
            return try RegexGrammar.compile(pattern)
        case .choice:
            guard case .array(let items) = value else { throw GrammarError("a choice spec must be an array of strings") }
            return try JSONSchemaGrammar.choice(items.map { item in
                guard case .string(let s) = item else { throw GrammarError("a choice spec must be an array of strings") }
                return s
            })
        }
    }
}
