import Foundation
import Models
import Testing
import Tokenizers
import TestSupport

@testable import Engine

/// Structured outputs: the JSON-schema grammar against Python's jsonschema (goldens), the lazily built automaton
/// against the grammar itself, and the engine's output under a schema and a choice.
@Suite struct StructuredOutputTests {
    struct Golden {
        struct Text {
            let text: String
            let valid: Bool
            let canonical: Bool
        }
        struct Case {
            let schema: ExactJSON
            let texts: [Text]
            var description: String { JSONSchemaGrammar.text(schema) }
        }
        let cases: [Case]
        let refused: [ExactJSON]
    }

    /// Tests/Fixtures/json/schemas.json, read with `ExactJSON` (schemas' key order matters: it is the order properties
    /// are generated in).
    static func golden() throws -> Golden {
        let data = try Data(contentsOf: FixtureFiles.root.appendingPathComponent("json/schemas.json"))
        let root = try data.withUnsafeBytes { try ExactJSON.parse($0, name: "schemas.json") }
        func field(_ v: ExactJSON, _ key: String) throws -> ExactJSON {
            guard case .object(let m) = v, let f = m.first(where: { $0.key == key })?.value else { throw GrammarError("golden: no '\(key)'") }
            return f
        }
        guard case .array(let cases) = try field(root, "cases"), case .array(let refused) = try field(root, "refused") else {
            throw GrammarError("golden: malformed")
        }
        return Golden(cases: try cases.map { c in
            guard case .array(let texts) = try field(c, "texts") else { throw GrammarError("golden: malformed texts") }
            return Golden.Case(schema: try field(c, "schema"), texts: try texts.map { t in
                guard case .string(let text) = try field(t, "text"), case .bool(let valid) = try field(t, "valid"),
                      case .bool(let canonical) = try field(t, "canonical") else { throw GrammarError("golden: malformed text") }
                return Golden.Text(text: text, valid: valid, canonical: canonical)
            })
        }, refused: refused)
    }

    static func grammar(_ schema: String) throws -> Grammar {
        try JSONSchemaGrammar.compile(schema: try Array(schema.utf8).withUnsafeBytes { try ExactJSON.parse($0, name: "schema") })
    }

    /// Sound: every text the grammar completes is valid against its schema by Python's jsonschema. Complete on the
    /// grammar's own order: every canonical instance (properties in schema order, compact enums) is completed, and
    /// each of its proper prefixes kept alive.
    @Test func grammarAgreesWithJSONSchema() throws {
        let golden = try Self.golden()
        #expect(golden.cases.count >= 12)
        var accepted = 0, total = 0
        for c in golden.cases {
            let grammar = try JSONSchemaGrammar.compile(schema: c.schema)
            for t in c.texts {
                total += 1
                let bytes = Array(t.text.utf8)
                let complete = grammar.after(bytes)?.isComplete == true
                if complete { accepted += 1 }
                #expect(!complete || t.valid, "accepted an invalid text for \(c.description): \(t.text.debugDescription)")
                guard t.canonical else { continue }
                #expect(complete, "refused a canonical instance of \(c.description): \(t.text.debugDescription)")
                var state: Grammar.State? = grammar.start
                for (i, b) in bytes.enumerated() {
                    state = state.flatMap { grammar.advance($0, b) }
                    if state == nil {
                        Issue.record("prefix of \(i + 1) bytes refused for \(c.description): \(t.text.debugDescription)")
                        break
                    }
                }
            }
        }
        #expect(accepted > total / 5, "only \(accepted) of \(total) texts accepted")
    }

    /// Schemas with keywords the grammar cannot honour (or that allow nothing, or loop) are refused, not ignored.
    @Test func unsupportedSchemasAreRefused() throws {
        for s in try Self.golden().refused {
            #expect(throws: GrammarError.self, "\(JSONSchemaGrammar.text(s))") { try JSONSchemaGrammar.compile(schema: s) }
        }
    }

    /// Numeric bounds agree with arithmetic on every integer in −30…30 and every decimal in −3…3 written with one to
    /// three fraction digits, for bounds inclusive and exclusive, whole and fractional, one- and two-sided, across zero:
    /// a text completes iff its value lies within the bounds (for `integer`, iff it is also written as an integer).
    @Test func numericBoundsAgreeWithArithmetic() throws {
        var texts: [String] = ["-0", "-0.0", "0.000"]
        for i in -30...30 { texts.append(String(i)) }
        for i in -300...300 {
            let v = Double(i) / 100
            texts += [String(format: "%.2f", v), String(format: "%.3f", v)]
            if i % 10 == 0 { texts.append(String(format: "%.1f", v)) }
        }
        let configs: [(String, (Double) -> Bool)] = [
            (#""minimum": 0, "maximum": 1"#, { $0 >= 0 && $0 <= 1 }),
            (#""exclusiveMinimum": 0, "exclusiveMaximum": 1"#, { $0 > 0 && $0 < 1 }),
            (#""minimum": -1.25, "exclusiveMaximum": 2.5"#, { $0 >= -1.25 && $0 < 2.5 }),
            (#""exclusiveMinimum": -2.05, "maximum": -0.5"#, { $0 > -2.05 && $0 <= -0.5 }),
            (#""minimum": 0.35"#, { $0 >= 0.35 }),
            (#""exclusiveMaximum": -0.07"#, { $0 < -0.07 }),
            (#""maximum": 0"#, { $0 <= 0 }),
            (#""exclusiveMinimum": 0"#, { $0 > 0 }),
            (#""minimum": -12, "maximum": 17, "exclusiveMaximum": 9.5"#, { $0 >= -12 && $0 < 9.5 }),
            (#""minimum": 1.005, "maximum": 1.0051"#, { $0 >= 1.005 && $0 <= 1.0051 }),
            (#""exclusiveMinimum": -3, "maximum": 2"#, { $0 > -3 && $0 <= 2 }),
            (#""minimum": -2, "exclusiveMaximum": -1"#, { $0 >= -2 && $0 < -1 }),
            (#""exclusiveMinimum": 4, "exclusiveMaximum": 7"#, { $0 > 4 && $0 < 7 }),
        ]
        for (bounds, within) in configs {
            for type in ["number", "integer"] {
                guard let grammar = try? Self.grammar(#"{"type": "\#(type)", \#(bounds)}"#) else {
                    // Refused only where nothing of the type lies within the bounds.
                    #expect(type == "integer" && !(-30...30).contains { within(Double($0)) }, "\(type) with \(bounds) refused")
                    continue
                }
                for text in texts {
                    let value = try #require(Double(text))
                    let expected = within(value) && (type == "number" || (!text.contains(".") && text != "-0"))
                    let complete = grammar.after(Array(text.utf8))?.isComplete == true
                    #expect(complete == expected, "\(type) with \(bounds): \(text) \(complete ? "accepted" : "refused")")
                }
            }
        }
    }

    /// Whole-number steps agree with arithmetic: for each step and bounds, every integer in −1,200…1,200 completes iff it
    /// lies within the bounds and the step divides it; a number with a step is written as an integer; a step, bound
    /// or mix that leaves nothing is refused, as are fractional, zero and oversized steps.
    @Test func multipleOfAgreesWithArithmetic() throws {
        let bounds: [(String, (Int) -> Bool)] = [("", { _ in true }), (#", "minimum": -100, "maximum": 100"#, { (-100...100).contains($0) }),
                                                 (#", "exclusiveMinimum": -3.5, "maximum": 50"#, { $0 > -4 && $0 <= 50 })]
        for k in [1, 2, 3, 7, 10, 25, 1000] {
            for (b, within) in bounds {
                for type in ["integer", "number"] {
                    let schema = #"{"type": "\#(type)", "multipleOf": \#(k)\#(b)}"#
                    guard let grammar = try? Self.grammar(schema) else {
                        #expect(!(-1200...1200).contains { within($0) && $0 % k == 0 }, "\(schema) refused")
                        continue
                    }
                    for v in -1200...1200 {
                        let complete = grammar.after(Array(String(v).utf8))?.isComplete == true
                        #expect(complete == (within(v) && v % k == 0), "\(schema): \(v) \(complete ? "accepted" : "refused")")
                    }
                    #expect(grammar.after(Array("\(2 * k).0".utf8))?.isComplete != true, "\(schema): a fraction")
                }
            }
        }
        // No dead ends: every prefix the grammar keeps alive (all of up to three bytes of "-0123456789.") can still be
        // completed, with a few more digits (and a point) at most.
        func completable(_ g: Grammar, _ state: Grammar.State, depth: Int) -> Bool {
            if state.isComplete { return true }
            guard depth > 0 else { return false }
            return Array("0123456789.".utf8).contains { b in g.advance(state, b).map { completable(g, $0, depth: depth - 1) } ?? false }
        }
        let alphabet = Array("-0123456789.".utf8)
        for schema in [#"{"type": "integer", "multipleOf": 1000, "minimum": -100, "maximum": 2500}"#, #"{"type": "number", "multipleOf": 7, "exclusiveMinimum": 5}"#,
                       #"{"type": "integer", "multipleOf": 25, "maximum": -30}"#, #"{"type": "number", "minimum": 0.25, "exclusiveMaximum": 3}"#] {
            let g = try Self.grammar(schema)
            var frontier: [(Grammar.State, String)] = [(g.start, "")]
            for _ in 0..<3 {
                frontier = frontier.flatMap { state, text in alphabet.compactMap { b in g.advance(state, b).map { ($0, text + String(UnicodeScalar(b))) } } }
                for (state, text) in frontier {
                    let ok = completable(g, state, depth: 5)
                    #expect(ok, "\(schema): the live prefix \(text.debugDescription) has no completion")
                }
            }
        }
        for bad in [#"{"type": "integer", "multipleOf": 0.5}"#, #"{"type": "integer", "multipleOf": 0}"#, #"{"type": "integer", "multipleOf": -3}"#,
                    #"{"type": "integer", "multipleOf": 1001}"#, #"{"type": "integer", "multipleOf": 7, "minimum": 8, "maximum": 13}"#,
                    #"{"type": "integer", "multipleOf": "2"}"#] {
            #expect(throws: GrammarError.self, "\(bad)") { try Self.grammar(bad) }
        }
    }

    /// Bounds past what `maxDigits` digits can write leave that side open (or nothing to write); Draft 4's boolean
    /// exclusives make `minimum`/`maximum` strict; `enum` values outside the bounds are dropped.
    @Test func numericBoundsEdges() throws {
        func completes(_ schema: String, _ text: String) throws -> Bool { try Self.grammar(schema).after(Array(text.utf8))?.isComplete == true }
        #expect(try completes(#"{"type": "integer", "maximum": 1e300}"#, "9999999999999999"))
        #expect(try completes(#"{"type": "integer", "minimum": -1e300, "maximum": -3}"#, "-9999999999999999"))
        #expect(throws: GrammarError.self) { try Self.grammar(#"{"type": "integer", "minimum": 1e17}"#) }
        #expect(throws: GrammarError.self) { try Self.grammar(#"{"type": "number", "maximum": -1e17}"#) }
        for empty in [#"{"type": "number", "minimum": 5, "maximum": 3}"#, #"{"type": "number", "minimum": -2.5, "exclusiveMaximum": -2.5}"#,
                      #"{"type": "number", "exclusiveMinimum": 0.25, "maximum": 0.25}"#] {
            #expect(throws: GrammarError.self, "\(empty)") { try Self.grammar(empty) }
        }
        // Numbers exist in the bounds, but none with at most 16 fraction digits: refused, naming where.
        let tiny = #expect(throws: GrammarError.self) { try Self.grammar(#"{"type": "number", "exclusiveMinimum": 0, "maximum": 1e-20}"#) }
        #expect(tiny.map { "\($0)".contains("#: no number") } == true, "\(String(describing: tiny))")
        #expect(try completes(#"{"type": "integer", "minimum": 3, "exclusiveMinimum": true}"#, "4"))
        #expect(try !completes(#"{"type": "integer", "minimum": 3, "exclusiveMinimum": true}"#, "3"))
        #expect(try completes(#"{"type": "number", "maximum": 3, "exclusiveMaximum": false}"#, "3"))
        #expect(throws: GrammarError.self) { try Self.grammar(#"{"type": "number", "exclusiveMaximum": true}"#) }
        #expect(try completes(#"{"type": "number", "minimum": 1e-5, "maximum": 2e-5}"#, "0.000015"))
        #expect(try !completes(#"{"type": "number", "minimum": 1e-5, "maximum": 2e-5}"#, "0.0000201"))
        // Untyped with bounds: a number.
        #expect(try completes(#"{"minimum": 2}"#, "2.5") && !completes(#"{"minimum": 2}"#, "1"))
        #expect(try completes(#"{"enum": [1, 2, 3], "exclusiveMinimum": 1}"#, "2") && !completes(#"{"enum": [1, 2, 3], "exclusiveMinimum": 1}"#, "1"))
    }

    /// `uniqueItems` over a finite set: each value at most once, values JSON Schema finds equal (1 and 1.0) as one,
    /// in the schema's order, counted against minItems/maxItems; Pydantic's set of an Enum (items through `$ref`).
    @Test func uniqueItemsOverAFiniteSet() throws {
        func completes(_ schema: String, _ text: String) throws -> Bool { try Self.grammar(schema).after(Array(text.utf8))?.isComplete == true }
        let numbers = #"{"type": "array", "items": {"enum": [1, 1.0, 2]}, "uniqueItems": true}"#
        #expect(try completes(numbers, "[1,2]") && completes(numbers, "[]") && completes(numbers, "[2]"))
        #expect(try !completes(numbers, "[1,1.0]") && !completes(numbers, "[1,1]") && !completes(numbers, "[1.0]") && !completes(numbers, "[2,1]"))
        let pydantic = ##"{"$defs": {"Color": {"enum": ["red", "green"], "type": "string"}}, "type": "array", "items": {"$ref": "#/$defs/Color"}, "uniqueItems": true, "minItems": 1}"##
        #expect(try completes(pydantic, #"["red", "green"]"#) && !completes(pydantic, #"["red","red"]"#) && !completes(pydantic, "[]"))
        #expect(try completes(#"{"items": {"type": "boolean"}, "uniqueItems": true, "maxItems": 1}"#, "[true]"))
        #expect(try !completes(#"{"items": {"type": "boolean"}, "uniqueItems": true, "maxItems": 1}"#, "[false,true]"))
        for refused in [#"{"type": "array", "items": {"type": "integer"}, "uniqueItems": true}"#, #"{"type": "array", "uniqueItems": true}"#,
                        #"{"type": "array", "items": {"const": 1}, "uniqueItems": true, "minItems": 2}"#, #"{"type": "array", "uniqueItems": 1}"#] {
            #expect(throws: GrammarError.self, "\(refused)") { try Self.grammar(refused) }
        }
    }

    /// Whitespace runs and number parts are bounded, so a model cannot run away in them.
    @Test func runsAreBounded() throws {
        let g = try Self.grammar(#"{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}"#)
        let blanks = String(repeating: " ", count: JSONSchemaGrammar.maxWhitespace)
        #expect(g.after(Array(("{" + blanks).utf8)) != nil)
        #expect(g.after(Array(("{" + blanks + " ").utf8)) == nil)
        let digits = "{\"n\":1" + String(repeating: "0", count: JSONSchemaGrammar.maxDigits - 1)
        #expect(g.after(Array(digits.utf8)) != nil)
        #expect(g.after(Array((digits + "0").utf8)) == nil)
        #expect(g.after(Array("{\"n\":-0}".utf8))?.isComplete == true)
        // Compact (disable_any_whitespace): none between tokens, as much as asked inside strings.
        let compact = try JSONSchemaGrammar.compile(schema: .object([("type", .string("object"))]), compact: true)
        #expect(compact.after(Array(#"{"a":[1,"x y\n"],"b":{}}"#.utf8))?.isComplete == true)
        for spaced in [#" {}"#, #"{ }"#, #"{"a" :1}"#, #"{"a": 1}"#, #"{"a":[1 ]}"#, #"{} "#] {
            #expect(compact.after(Array(spaced.utf8)) == nil || compact.after(Array(spaced.utf8))?.isComplete == false, "\(spaced)")
        }
        // A surrogate cannot be escaped (a pair would count as two characters); other escapes can.
        let s = try Self.grammar(#"{"type": "string"}"#)
        #expect(s.after(Array(#""\ud83d"#.utf8)) == nil)
        #expect(s.after(Array(#""\u00e9\uFFFF""#.utf8))?.isComplete == true)
        // Invalid UTF-8 inside a string is refused at its byte.
        #expect(s.after([0x22, 0xC3]) != nil)
        #expect(s.after([0x22, 0xC3, 0x28]) == nil)
        #expect(s.after([0x22, 0xED, 0xA0]) == nil)
    }

    /// Regular expressions (structured_outputs.regex): the grammar completes exactly the texts Python's
    /// `re.fullmatch` (re.ASCII) matches, keeping every prefix of a match alive; the patterns it cannot express are
    /// refused (Tests/Fixtures/json/regex.json, tools/gen_regex_goldens.py).
    @Test func regexAgreesWithPython() throws {
        let data = try Data(contentsOf: FixtureFiles.root.appendingPathComponent("json/regex.json"))
        let root = try data.withUnsafeBytes { try ExactJSON.parse($0, name: "regex.json") }
        guard case .object(let top) = root, case .array(let cases)? = top.first(where: { $0.key == "cases" })?.value,
              case .array(let refused)? = top.first(where: { $0.key == "refused" })?.value else { throw GrammarError("regex.json: malformed") }
        #expect(cases.count >= 15)
        var matched = 0
        for c in cases {
            guard case .object(let m) = c, case .string(let pattern)? = m.first(where: { $0.key == "pattern" })?.value,
                  case .array(let texts)? = m.first(where: { $0.key == "texts" })?.value else { throw GrammarError("regex.json: malformed case") }
            let g = try RegexGrammar.compile(pattern)
            for t in texts {
                guard case .object(let tm) = t, case .string(let text)? = tm.first(where: { $0.key == "text" })?.value,
                      case .bool(let match)? = tm.first(where: { $0.key == "match" })?.value else { throw GrammarError("regex.json: malformed text") }
                let bytes = Array(text.utf8)
                #expect((g.after(bytes)?.isComplete == true) == match, "\(pattern) on \(text.debugDescription): Python says \(match)")
                guard match else { continue }
                matched += 1
                for cut in 0..<bytes.count where g.after(bytes[..<cut]) == nil {
                    Issue.record("\(pattern): prefix \(cut) of \(text.debugDescription) refused")
                    break
                }
            }
        }
        #expect(matched > 300)
        for r in refused {
            guard case .string(let pattern) = r else { continue }
            #expect(throws: GrammarError.self, "\(pattern)") { try RegexGrammar.compile(pattern) }
        }
    }

    /// Parses are bounded: a schema that starts with more parallel parses than `Grammar.maxStacks` is refused when
    /// compiled, a byte that would need more is refused (never expanded without bound at sampling time), and long
    /// lists of values share prefixes (a trie), so an enum of thousands of strings has one parse per next byte.
    @Test func parsesAreBounded() throws {
        let many = (0..<(Grammar.maxStacks + 1)).map { "{\"type\":\"object\",\"properties\":{\"k\($0)\":{\"type\":\"integer\"}},\"required\":[\"k\($0)\"]}" }
        #expect(throws: GrammarError.self) { try Self.grammar("{\"anyOf\": [" + many.joined(separator: ",") + "]}") }
        // Nested alternatives in non-tail places multiply parses (5 per "[", times the whitespace and item parses of
        // each): refused past the bound, not expanded.
        var nested = #"{"type": "integer"}"#
        for _ in 0..<5 { nested = "{\"anyOf\": [" + Array(repeating: "{\"type\":\"array\",\"maxItems\":1,\"items\":\(nested)}", count: 5).joined(separator: ",") + "]}" }
        let deep = try Self.grammar(nested)
        #expect(deep.after(Array("[[[".utf8)) != nil)
        #expect(deep.after(Array("[[[[[".utf8)) == nil)
        let values = (0..<3000).map { "value-\($0 % 10)-\($0)" }
        let g = try JSONSchemaGrammar.compile(schema: .object([("enum", .array(values.map { .string($0) }))]))
        let state = try #require(g.after(Array("\"value-7-1".utf8)))
        #expect(state.stacks.count <= 11, "\(state.stacks.count) parses")
        for v in values.prefix(50) { #expect(g.after(Array("\"\(v)\"".utf8))?.isComplete == true) }
        #expect(g.after(Array("\"value-7-2\"".utf8)) == nil)
        let choices = try JSONSchemaGrammar.choice(values)
        #expect(choices.start.stacks.count == 1)
        for v in values.suffix(50) { #expect(choices.after(Array(v.utf8))?.isComplete == true) }
        #expect(choices.after(Array("value-1-1".utf8))?.isComplete == true)
        #expect(choices.after(Array("value-1-2".utf8))?.isComplete == false)
    }

    /// A tool call or text (tool_choice "auto"): the marker then JSON valid against the schema, or any UTF-8 text that
    /// does not start with the marker.
    @Test func markedOrText() throws {
        let g = try JSONSchemaGrammar.markedOrText(schema: try Array(#"{"type":"array","items":{"const":1},"minItems":1}"#.utf8).withUnsafeBytes {
            try ExactJSON.parse($0, name: "s")
        }, marker: "<t>")
        for text in ["", "hi", "<", "<t", "<x>", "<<t>", "t>", "日本 <t>", "<t>[1]", "<t> [1,1]", "\n"] {
            #expect(g.after(Array(text.utf8))?.isComplete == true, "\(text.debugDescription)")
        }
        for text in ["<t>", "<t>[", "<t>[1"] {
            let state = g.after(Array(text.utf8))
            #expect(state != nil && state?.isComplete == false, "\(text.debugDescription)")
        }
        for text in ["<t>hi", "<t>[2]", "<t>[]", "<t>[1]x"] {
            #expect(g.after(Array(text.utf8)) == nil, "\(text.debugDescription)")
        }
        #expect(g.after([0x68, 0xFF]) == nil)
        #expect(g.after([0x00]) == nil)
    }

    /// The automaton's masks equal the grammar's own verdict on every token's bytes (the reference twin), in the
    /// states a walk through a valid text passes.
    @Test func automatonMasksMatchTheGrammar() throws {
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let vocab = try LlamaModel(checkpoint: checkpoint).config.vocabSize
        let table = TokenByteTable(tokenizer: tokenizer, vocabSize: vocab)
        let spec = GrammarSpec(kind: .jsonSchema, source: #"{"type":"object","properties":{"a":{"type":"string","maxLength":3},"b":{"enum":[1,"two"]}},"required":["b"]}"#)
        let automaton = GrammarAutomaton(grammar: try spec.compile())
        let grammar = automaton.grammar
        let text = Array(#"{"a": "xé", "b": "two"}"#.utf8)
        let ends: Set<Int> = [vocab - 1]
        var checked = 0
        for cut in [0, 1, 3, 6, 8, 11, 16, 19, text.count] {
            let prefix = text[..<cut]
            guard let reference = grammar.after(prefix) else { Issue.record("prefix \(cut) refused"); continue }
            // The automaton reaches the same state number through bytes as through the table's tokens of them.
            var s: Int32 = 0
            for b in prefix { s = automaton.next(s, b) }
            #expect(s != GrammarAutomaton.dead)
            #expect(automaton.isComplete(s) == reference.isComplete)
            let mask = automaton.mask(s, table: table, endTokens: ends)
            for id in 0..<vocab {
                let expected: Bool
                if ends.contains(id) {
                    expected = reference.isComplete
                } else {
                    let bytes = table.bytes(of: id)
                    expected = !bytes.isEmpty && grammar.after(bytes, from: reference) != nil
                }
                if (mask[id] == 1) != expected { Issue.record("token \(id) at prefix \(cut): mask \(mask[id]), grammar \(expected)") }
                checked += 1
            }
        }
        #expect(checked > 1000)
    }

    /// A request's cursor replays only the tokens since its last step and reaches the state a full replay reaches;
    /// tables that started over (another epoch) void it.
    @Test func cursorReplaysOnlyNewTokens() throws {
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let table = TokenByteTable(tokenizer: tokenizer, vocabSize: try LlamaModel(checkpoint: checkpoint).config.vocabSize)
        let automaton = GrammarAutomaton(grammar: try Self.grammar(#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}}}}"#))
        let tokens = tokenizer.encode(#"{"a": [1, 22, 333, 4444]}"#, addSpecial: false)
        #expect(tokens.count > 8)
        var cursor: GrammarAutomaton.Cursor?
        for n in 0...tokens.count {
            var none: GrammarAutomaton.Cursor?
            let full = automaton.state(after: tokens[..<n], table: table, cursor: &none)
            let step = automaton.state(after: tokens[..<n], table: table, cursor: &cursor)
            #expect(full != nil && full == step && cursor?.tokens == n, "after \(n) tokens")
        }
        #expect(automaton.isComplete(try #require(cursor?.state)))
        // A cursor of other tables is not used (replaying from its state, the start, would end there).
        var stale: GrammarAutomaton.Cursor? = GrammarAutomaton.Cursor(epoch: -1, tokens: tokens.count, state: 0)
        #expect(automaton.state(after: tokens[...], table: table, cursor: &stale) == cursor?.state)
        #expect(stale?.tokens == tokens.count && stale?.state == cursor?.state)
    }

    static func engine() throws -> (EngineCore, Tokenizer) {
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        return (EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 256), tokenizer)
    }

    /// On the tiny model (random weights: left alone it writes no JSON), sampled at temperature 1 under a schema:
    /// every output is a prefix of a sentence of the grammar, and those that end with end-of-sequence are complete
    /// JSON with the schema's required keys, in order, with values of their types.
    @Test func engineOutputFollowsTheSchema() throws {
        let (engine, tokenizer) = try Self.engine()
        let schema = #"{"type":"object","properties":{"name":{"type":"string","maxLength":4},"n":{"type":"integer"},"#
            + #""ok":{"type":"boolean"},"tags":{"type":"array","items":{"enum":["x","y"]},"maxItems":2}},"required":["name","n","ok"]}"#
        let spec = GrammarSpec(kind: .jsonSchema, source: schema)
        let grammar = try spec.compile()
        // Whitespace tokens banned by bias: left alone, the random model writes little else (runs of it are bounded).
        var blanks: [Int: Double] = [:]
        for id in 0..<engine.model.config.vocabSize where !tokenizer.isSpecial(id) {
            let b = tokenizer.tokenBytes(id)
            if !b.isEmpty && b.allSatisfy({ [0x20, 0x0A, 0x0D, 0x09].contains($0) }) { blanks[id] = -100 }
        }
        #expect(!blanks.isEmpty)
        var ids: [RequestID] = []
        for seed in 0..<10 {
            var params = SamplingParams(temperature: 1, seed: UInt64(seed), maxTokens: 300)
            params.logitBias = blanks
            params.grammar = spec
            ids.append(try engine.submit(prompt: tokenizer.encode("data:", addSpecial: true), params: params))
        }
        let events = engine.runToCompletion()
        var complete = 0
        for id in ids {
            let mine = events.filter { $0.requestID == id }
            let bytes = mine.compactMap(\.token).filter { !engine.endTokens.contains($0) }.flatMap { tokenizer.tokenBytes($0) }
            let text = String(decoding: bytes, as: UTF8.self)
            let state = grammar.after(bytes)
            #expect(state != nil, "output leaves the grammar: \(text.debugDescription)")
            guard mine.last?.finish == .stop else { continue }
            complete += 1
            #expect(state?.isComplete == true)
            let parsed = try bytes.withUnsafeBytes { try ExactJSON.parse($0, name: "output") }
            guard case .object(let members) = parsed else { Issue.record("not an object: \(text)"); continue }
            #expect(Array(members.map(\.key).prefix(3)) == ["name", "n", "ok"], "\(text)")
            if members.count == 3 || members.count == 4, case .string(let name) = members[0].value, case .int = members[1].value,
               case .bool = members[2].value {
                #expect(name.unicodeScalars.count <= 4)
            } else {
                Issue.record("values of the wrong types: \(text.debugDescription)")
            }
        }
        #expect(complete >= 8, "only \(complete) of 10 outputs completed within 300 tokens")
    }

    /// A choice: every output is exactly one of the strings.
    @Test func engineOutputIsOneChoice() throws {
        let (engine, tokenizer) = try Self.engine()
        let choices = ["positive", "negative", "neutral 😐"]
        var ids: [RequestID] = []
        for seed in 0..<8 {
            var params = SamplingParams(temperature: 1, seed: UInt64(seed), maxTokens: 40)
            params.grammar = .choice(choices)
            ids.append(try engine.submit(prompt: tokenizer.encode("sentiment:", addSpecial: true), params: params))
        }
        let events = engine.runToCompletion()
        for id in ids {
            let mine = events.filter { $0.requestID == id }
            #expect(mine.last?.finish == .stop)
            let bytes = mine.compactMap(\.token).filter { !engine.endTokens.contains($0) }.flatMap { tokenizer.tokenBytes($0) }
            #expect(choices.contains(String(decoding: bytes, as: UTF8.self)), "\(String(decoding: bytes, as: UTF8.self))")
        }
    }
}
