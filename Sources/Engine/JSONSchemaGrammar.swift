import Tokenizers

/// Compiles a JSON Schema (the subset structured outputs use: OpenAI's `response_format: json_schema`, vLLM's
/// `guided_json`) to a `Grammar` whose sentences are JSON texts valid against it; and a list of strings to the
/// grammar of exactly those (vLLM's `guided_choice`).
///
/// What the grammar generates is a subset of what the schema allows, never more:
/// - An object's properties come in the order `properties` lists them; required ones always, optional ones may be
///   left out. Without `properties`, `additionalProperties` (a schema, or true / absent: any value) types the values
///   of keys the model chooses; with `properties`, no other key is generated (as OpenAI's strict mode and xgrammar's
///   default do), whatever `additionalProperties` says. `minProperties`/`maxProperties` count the members written
///   (with `properties`, optional ones are written or left out as the bounds allow; a map of the model's keys takes
///   a minimum of 0 or 1 only, since its keys could repeat and a repeated key counts once). `uniqueItems` holds for
///   items from a finite set (each value at most once, in the schema's order); over other items it is refused.
/// - `enum` and `const` values are written compactly (no whitespace, strings with JSON's shortest escapes).
/// - Whitespace between tokens: at most `maxWhitespace` bytes per run; numbers: at most `maxDigits` digits per part.
/// - Strings are UTF-8 (validated byte by byte); `minLength`/`maxLength` count characters (an escape is one;
///   surrogates cannot be escaped, so each counts as Python's `len` counts it).
/// Keywords that constrain what this cannot express (`pattern`, `minimum`, `not`, …) are refused with an error
/// naming them, never ignored; annotations (`title`, `description`, `default`, `format`, …) are ignored, as JSON
/// Schema 2020-12 treats `format` by default.
public struct JSONSchemaGrammar {
    public static let maxWhitespace = 20
    /// Digits per number part: an integer fits Int64 (and JavaScript's doubles to 15 digits).
    public static let maxDigits = 16
    /// Bounds on what a schema may ask for (each costs rules).
    public static let maxLengthBound = 4096
    public static let maxItemsBound = 1024
    public static let maxRules = 200_000
    public static let maxSchemaDepth = 64

    /// Validation keywords this compiler cannot honour: a schema using them is refused.
    static let refused: Set<String> = [
        "patternProperties",
        "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies", "propertyNames",
        "unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
        "$dynamicRef", "$recursiveRef", "additionalItems",
    ]
    /// Keywords that constrain what this compiler handles.
    static let handled: Set<String> = [
        "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
        "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minProperties", "maxProperties",
        "uniqueItems",
    ]

    /// The rules built so far (`JSONGrammarRules.swift` builds JSON text's own), and the shared ones by name.
    var rules: [[[Grammar.Item]]] = []
    var memo: [String: Int] = [:]
    let root: ExactJSON
    private var refRules: [String: Int] = [:]
    /// References being resolved without a byte consumed in between (a cycle there is left recursion).
    var bareRefs: Set<String> = []

    /// Whitespace allowed per run between tokens (0: compact JSON, vLLM's `disable_any_whitespace`).
    let whitespace: Int

    init(root: ExactJSON, whitespace: Int = maxWhitespace) {
        self.root = root
        self.whitespace = whitespace
    }

    /// The grammar of JSON texts valid against `schema` (an object or a boolean schema), with whitespace around;
    /// `compact`: no whitespace outside strings.
    public static func compile(schema: ExactJSON, compact: Bool = false) throws -> Grammar {
        var c = JSONSchemaGrammar(root: schema, whitespace: compact ? 0 : maxWhitespace)
        let value = try c.value(schema, path: "#", depth: 0)
        let ws = try c.ws()
        let root = try c.rule([[ws, .rule(value), ws]])
        return try Grammar(rules: c.rules, root: root)
    }

    /// OpenAI's JSON mode (`response_format: json_object`): any JSON object.
    public static let objectSchema = ExactJSON.object([("type", .string("object"))])

    /// The grammar of a chat answer that is either `marker` followed by a JSON text valid against `schema` (a tool
    /// call), or any other UTF-8 text — one that does not start with `marker` (a plain answer).
    public static func markedOrText(schema: ExactJSON, marker: String) throws -> Grammar {
        let m = Array(marker.utf8)
        guard !m.isEmpty, m.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { throw GrammarError("the marker must be printable ASCII") }
        var c = JSONSchemaGrammar(root: schema)
        let json = try c.value(schema, path: "#", depth: 0)
        let ws = try c.ws()
        let text = try c.text()
        var alternatives: [[Grammar.Item]] = [m.map(Grammar.Item.byte) + [ws, .rule(json)]]
        for i in 0..<m.count {
            let prefix = m[..<i].map(Grammar.Item.byte)
            // The text stops inside the marker, or leaves it at byte i.
            alternatives.append(prefix)
            alternatives.append(prefix + [.rule(try c.utf8Char(except: m[i])), .rule(text)])
        }
        let root = try c.rule(alternatives)
        return try Grammar(rules: c.rules, root: root)
    }

    /// The grammar whose sentences are exactly `choices`' texts (vLLM's `guided_choice`).
    public static func choice(_ choices: [String]) throws -> Grammar {
        guard !choices.isEmpty else { throw GrammarError("guided_choice must list at least one string") }
        guard choices.allSatisfy({ !$0.isEmpty }) else { throw GrammarError("guided_choice strings must not be empty") }
        var c = JSONSchemaGrammar(root: .null)
        let root = try c.literals(choices.map { Array($0.utf8) })
        return try Grammar(rules: c.rules, root: root)
    }

    // MARK: schemas

    static func fail(_ path: String, _ what: String) -> GrammarError { GrammarError("\(path): \(what)") }

    /// `multipleOf`: a whole number from 1 to `maxMultipleOf`. A fractional step is refused: JSON Schema validators
    /// compare it in floating point (Python's jsonschema finds 0.07 no multiple of 0.01), so its multiples are not
    /// well defined.
    static let maxMultipleOf = 1000
    static func multipleOf(_ v: ExactJSON?, path: String) throws -> Int? {
        guard let v, v != .null else { return nil }
        guard let d = NumericBounds.Decimal(v), !d.negative, !d.isZero else { throw fail(path, "'multipleOf' must be a positive number") }
        guard d.fraction.isEmpty else {
            throw fail(path, "'multipleOf' must be a whole number here: a fractional step is compared in floating point by JSON Schema validators")
        }
        guard let w = d.writableWhole, w <= UInt64(maxMultipleOf) else { throw fail(path, "'multipleOf' above \(maxMultipleOf) is not supported") }
        return Int(w)
    }

    static func intValue(_ v: ExactJSON?, _ name: String, path: String) throws -> Int? {
        switch v {
        case nil, .null?: return nil
        case .int(let i)? where i >= 0: return i
        case .double(let d)? where d >= 0 && d.rounded() == d && d < 1e15: return Int(d)
        default: throw fail(path, "'\(name)' must be a non-negative integer")
        }
    }

    /// The rule for values valid against `schema`.
    mutating func value(_ schema: ExactJSON, path: String, depth: Int) throws -> Int {
        guard depth < Self.maxSchemaDepth else { throw Self.fail(path, "the schema nests deeper than \(Self.maxSchemaDepth)") }
        let members: [(key: String, value: ExactJSON)]
        switch schema {
        case .bool(true): return try anyValue()
        case .bool(false): throw Self.fail(path, "the schema 'false' allows no value")
        case .object(let m): members = m
        default: throw Self.fail(path, "a schema must be an object or a boolean")
        }
        var fields: [String: ExactJSON] = [:]
        for (key, value) in members {
            guard fields.updateValue(value, forKey: key) == nil else { throw Self.fail(path, "duplicate key '\(key)'") }
            if Self.refused.contains(key) { throw Self.fail(path, "the keyword '\(key)' is not supported in structured outputs") }
        }
        let constraining = Set(fields.keys).intersection(Self.handled)
        if let p = fields["pattern"], !(p == .null || { if case .string = p { true } else { false } }()) {
            throw Self.fail(path, "'pattern' must be a string")
        }

        if let ref = fields["$ref"] {
            guard constraining == ["$ref"] else {
                throw Self.fail(path, "'$ref' beside other constraining keywords (\(constraining.subtracting(["$ref"]).sorted().joined(separator: ", "))) is not supported")
            }
            guard case .string(let target) = ref else { throw Self.fail(path, "'$ref' must be a string") }
            return try reference(target, path: path, depth: depth)
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            guard let list = fields[key] else { continue }
            guard constraining == [key] else {
                throw Self.fail(path, "'\(key)' beside other constraining keywords (\(constraining.subtracting([key]).sorted().joined(separator: ", "))) is not supported")
            }
            guard case .array(let schemas) = list, !schemas.isEmpty else { throw Self.fail(path, "'\(key)' must be a non-empty array of schemas") }
            if key == "allOf" {
                guard schemas.count == 1 else { throw Self.fail(path, "'allOf' with more than one schema is not supported") }
                return try value(schemas[0], path: path + "/allOf/0", depth: depth + 1)
            }
            // oneOf is generated as anyOf: an output may match more than one of them.
            var alternatives: [[Grammar.Item]] = []
            for (i, s) in schemas.enumerated() {
                alternatives.append([.rule(try value(s, path: path + "/\(key)/\(i)", depth: depth + 1))])
            }
            return try rule(alternatives)
        }

        // The JSON types this schema allows (nil: any).
        var types: [String]?
        switch fields["type"] {
        case nil: types = nil
        case .string(let t)?: types = [t]
        case .array(let list)?:
            types = try list.map { item in
                guard case .string(let t) = item else { throw Self.fail(path, "'type' must be a string or an array of strings") }
                return t
            }
            guard !types!.isEmpty else { throw Self.fail(path, "'type' must not be an empty array") }
        default: throw Self.fail(path, "'type' must be a string or an array of strings")
        }
        let known = ["object", "array", "string", "number", "integer", "boolean", "null"]
        for t in types ?? [] where !known.contains(t) { throw Self.fail(path, "unknown type '\(t)'") }
        if types == nil && fields["enum"] == nil && fields["const"] == nil {
            // Untyped, with one type's keywords: generate that type (the others are valid too, but not what was meant).
            if !constraining.isDisjoint(with: ["properties", "required", "additionalProperties", "minProperties", "maxProperties"]) {
                types = ["object"]
            } else if !constraining.isDisjoint(with: ["items", "prefixItems", "minItems", "maxItems", "uniqueItems"]) {
                types = ["array"]
            } else if !constraining.isDisjoint(with: ["minLength", "maxLength", "pattern"]) {
                types = ["string"]
            } else if !constraining.isDisjoint(with: NumericBounds.keywords) {
                types = ["number"]
            }
        }
        let bounds = try NumericBounds.parse(fields, path: path)
        let multiple = try Self.multipleOf(fields["multipleOf"], path: path)

        if fields["enum"] != nil || fields["const"] != nil {
            var values: [ExactJSON]
            if let c = fields["const"] {
                values = [c]
                if let e = fields["enum"] {
                    guard case .array(let list) = e else { throw Self.fail(path, "'enum' must be an array") }
                    values = values.filter { list.contains($0) }
                }
            } else {
                guard case .array(let list)? = fields["enum"], !list.isEmpty else { throw Self.fail(path, "'enum' must be a non-empty array") }
                values = list
            }
            if let types { values = values.filter { Self.matches($0, types: types) } }
            let (min, max) = (try Self.intValue(fields["minLength"], "minLength", path: path), try Self.intValue(fields["maxLength"], "maxLength", path: path))
            values = values.filter { v in
                guard case .string(let s) = v else { return true }
                return s.unicodeScalars.count >= min ?? 0 && s.unicodeScalars.count <= max ?? .max
            }
            // A string value must also match the pattern (or format) beside the enum: tested on its own grammar.
            if fields["pattern"] != nil || fields["format"] != nil {
                let string = ExactJSON.object([("type", .string("string"))] + ["pattern", "format"].compactMap { k in fields[k].map { (k, $0) } })
                let check = try Self.compile(schema: string)
                values = values.filter { v in
                    guard case .string = v else { return true }
                    return check.after(Array(Self.text(v).utf8))?.isComplete == true
                }
            }
            if let bounds {
                values = values.filter { v in NumericBounds.Decimal(v).map(bounds.contains) ?? true }
            }
            // Objects by their number of (distinct) keys, arrays by their length.
            let (minP, maxP) = (try Self.intValue(fields["minProperties"], "minProperties", path: path),
                                try Self.intValue(fields["maxProperties"], "maxProperties", path: path))
            let (minI, maxI) = (try Self.intValue(fields["minItems"], "minItems", path: path), try Self.intValue(fields["maxItems"], "maxItems", path: path))
            values = values.filter { v in
                switch v {
                case .object(let m): let n = Set(m.map(\.key)).count; return n >= minP ?? 0 && n <= maxP ?? .max
                case .array(let a):
                    let distinct = fields["uniqueItems"] != .bool(true)
                        || a.indices.allSatisfy { i in !a[..<i].contains { Self.equalAsJSON($0, a[i]) } }
                    return a.count >= minI ?? 0 && a.count <= maxI ?? .max && distinct
                default: return true
                }
            }
            if let multiple {
                values = values.filter { v in
                    guard let d = NumericBounds.Decimal(v) else { return true }
                    return d.fraction.isEmpty && d.whole.reduce(0) { ($0 * 10 + Int($1)) % multiple } == 0
                }
            }
            guard !values.isEmpty else { throw Self.fail(path, "no value of 'enum'/'const' satisfies the schema's other keywords") }
            return try literals(values.map { Array(Self.text($0).utf8) })
        }

        let all = types ?? known
        var alternatives: [[Grammar.Item]] = []
        for t in all {
            switch t {
            case "object":
                // Without a type, object keywords apply only to objects: an untyped schema with them is an object.
                alternatives.append([.rule(try object(fields, path: path, depth: depth))])
            case "array": alternatives.append([.rule(try array(fields, path: path, depth: depth))])
            case "string":
                if let pattern = try Self.pattern(fields, path: path) {
                    alternatives.append([.rule(try patternString(pattern, path: path))])
                    continue
                }
                let min = try Self.intValue(fields["minLength"], "minLength", path: path) ?? 0
                let max = try Self.intValue(fields["maxLength"], "maxLength", path: path)
                if let max, max < min { throw Self.fail(path, "maxLength is less than minLength") }
                guard Swift.max(min, max ?? 0) <= Self.maxLengthBound else {
                    throw Self.fail(path, "minLength/maxLength above \(Self.maxLengthBound) are not supported")
                }
                alternatives.append([.rule(try string(min: min, max: max))])
            case "number" where multiple != nil, "integer" where bounds != nil || multiple != nil:
                // A whole-number step makes every valid number an integer: generated as one.
                guard let range = (bounds ?? NumericBounds()).integerRange(),
                      let r = try boundedInteger(range, multipleOf: multiple ?? 1) else {
                    throw Self.fail(path, "no integer of at most \(Self.maxDigits) digits satisfies the schema's minimum/maximum/multipleOf")
                }
                alternatives.append([.rule(r)])
            case "number":
                guard let bounds else {
                    alternatives.append([.rule(try number())])
                    continue
                }
                // Empty bounds (minimum above maximum, or equal with one exclusive) leave no number to write either.
                guard let r = try boundedNumber(bounds) else {
                    throw Self.fail(path, "no number of at most \(Self.maxDigits) digits before and after the point satisfies the schema's minimum/maximum")
                }
                alternatives.append([.rule(r)])
            case "integer": alternatives.append([.rule(try integer())])
            case "boolean": alternatives += [Grammar.Item.literal("true"), Grammar.Item.literal("false")]
            default: alternatives.append(Grammar.Item.literal("null"))
            }
        }
        if alternatives.count == 1, case .rule(let r) = alternatives[0][0], alternatives[0].count == 1 { return r }
        return try rule(alternatives)
    }

    private mutating func reference(_ target: String, path: String, depth: Int) throws -> Int {
        guard !bareRefs.contains(target) else { throw Self.fail(path, "'$ref' '\(target)' refers to itself without a value in between") }
        if let r = refRules[target] { return r }
        let node = try resolve(target, path: path)
        // Reserve the rule first so recursive schemas (a tree's children) refer back to it.
        let r = try reserve()
        refRules[target] = r
        bareRefs.insert(target)
        defer { bareRefs.remove(target) }
        let body = try value(node, path: target, depth: depth + 1)
        rules[r] = [[.rule(body)]]
        return r
    }

    /// The schema a local reference (`#`, `#/…` with JSON Pointer's `~1` and `~0` escapes) names in the root.
    func resolve(_ target: String, path: String) throws -> ExactJSON {
        guard target == "#" || target.hasPrefix("#/") else { throw Self.fail(path, "only local references ('#/...') are supported, got '\(target)'") }
        var node = root
        for raw in target.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) where target != "#" {
            let key = raw.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
            switch node {
            case .object(let m):
                guard let next = m.first(where: { $0.key == key })?.value else { throw Self.fail(path, "'$ref' '\(target)' names nothing") }
                node = next
            case .array(let a):
                guard let i = Int(key), a.indices.contains(i) else { throw Self.fail(path, "'$ref' '\(target)' names nothing") }
                node = a[i]
            default: throw Self.fail(path, "'$ref' '\(target)' names nothing")
            }
        }
        return node
    }

    // MARK: values

    private static func matches(_ v: ExactJSON, types: [String]) -> Bool {
        switch v {
        case .null: return types.contains("null")
        case .bool: return types.contains("boolean")
        case .int: return types.contains("integer") || types.contains("number")
        case .double(let d): return types.contains("number") || (types.contains("integer") && d.rounded() == d)
        case .string: return types.contains("string")
        case .array: return types.contains("array")
        case .object: return types.contains("object")
        }
    }

    /// The regular expressions of the `format`s given a shape here (RFC 3339's date and time — a day is 01–31
    /// whatever the month —, RFC 4122's uuid, dotted IPv4); other formats stay annotations.
    static let formats: [String: String] = {
        let date = #"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"#
        let time = #"([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?"#
        let offset = #"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"#
        let octet = #"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"#
        return ["date": "^\(date)$", "time": "^\(time)\(offset)$", "date-time": "^\(date)T\(time)\(offset)$",
                "uuid": #"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"#,
                "ipv4": "^(\(octet)\\.){3}\(octet)$"]
    }()

    /// A string schema's `pattern` (or the pattern of its `format`); with length bounds beside it, refused.
    private static func pattern(_ fields: [String: ExactJSON], path: String) throws -> String? {
        var pattern: String?
        switch fields["pattern"] {
        case nil, .null?: break
        case .string(let p)?: pattern = p
        default: throw fail(path, "'pattern' must be a string")
        }
        if pattern == nil, case .string(let format)? = fields["format"] { pattern = formats[format] }
        guard let pattern else { return nil }
        guard fields["minLength"] == nil && fields["maxLength"] == nil else {
            throw fail(path, "'pattern' (or 'format') beside minLength/maxLength is not supported")
        }
        return pattern
    }

    /// A JSON string whose value the pattern matches (JSON Schema's search semantics: anywhere, unless anchored).
    private mutating func patternString(_ pattern: String, path: String) throws -> Int {
        if let r = memo["pattern " + pattern] { return r }
        let (match, start, end) = try { () throws -> (Int, Bool, Bool) in
            do {
                return try RegexGrammar.embed(pattern, inJSONString: true, into: &rules)
            } catch let e as GrammarError {
                throw Self.fail(path, "pattern: \(e.description)")
            }
        }()
        let chars = try anyChars()
        var items: [Grammar.Item] = [.byte(0x22)]
        if !start { items.append(.rule(chars)) }
        items.append(.rule(match))
        if !end { items.append(.rule(chars)) }
        let r = try rule([items + [.byte(0x22)]])
        memo["pattern " + pattern] = r
        return r
    }

}
