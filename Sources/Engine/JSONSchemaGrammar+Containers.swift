import Tokenizers

// JSONSchemaGrammar's containers: objects (properties in order, counted members, maps of the model's keys) and arrays
// (items, prefixItems, bounded lengths, uniqueItems over finite sets). Values, strings and references are in
// JSONSchemaGrammar.swift.
extension JSONSchemaGrammar {
    // MARK: containers

    /// Compiles a container's contents: a value inside brackets or braces comes after a byte, so references met
    /// there are no longer bare (a cycle through them is recursion, not left recursion).
    mutating func inContainer(_ body: (inout JSONSchemaGrammar) throws -> Int) throws -> Int {
        let saved = bareRefs
        bareRefs = []
        defer { bareRefs = saved }
        return try body(&self)
    }

    mutating func object(_ fields: [String: ExactJSON], path: String, depth: Int) throws -> Int {
        try inContainer { try $0.objectBody(fields, path: path, depth: depth) }
    }

    mutating func objectBody(_ fields: [String: ExactJSON], path: String, depth: Int) throws -> Int {
        let ws = try ws()
        var required: [String] = []
        if let r = fields["required"] {
            guard case .array(let list) = r else { throw Self.fail(path, "'required' must be an array of strings") }
            required = try list.map { item in
                guard case .string(let s) = item else { throw Self.fail(path, "'required' must be an array of strings") }
                return s
            }
        }
        var properties: [(key: String, value: ExactJSON)] = []
        if let p = fields["properties"] {
            guard case .object(let m) = p else { throw Self.fail(path, "'properties' must be an object") }
            properties = m
        }
        let minProperties = try Self.intValue(fields["minProperties"], "minProperties", path: path) ?? 0
        let maxProperties = try Self.intValue(fields["maxProperties"], "maxProperties", path: path)
        if let maxProperties, maxProperties < minProperties { throw Self.fail(path, "the object's property bounds allow no object") }
        guard Swift.max(minProperties, maxProperties ?? 0) <= Self.maxItemsBound else {
            throw Self.fail(path, "minProperties/maxProperties above \(Self.maxItemsBound) are not supported")
        }
        if properties.isEmpty && required.isEmpty {
            // A map: keys of the model's choosing, values valid against additionalProperties.
            let valueSchema = fields["additionalProperties"] ?? .bool(true)
            if valueSchema == .bool(false) || maxProperties == 0 {
                guard minProperties == 0 else { throw Self.fail(path, "the object's property bounds allow no object") }
                return try emptyObject(ws)
            }
            // Keys the model writes could repeat, and a repeated key counts once: only a minimum of 0 or 1 holds for
            // every text.
            guard minProperties <= 1 else {
                throw Self.fail(path, "'minProperties' above 1 needs the properties listed in 'properties' (keys of the model's choosing could repeat)")
            }
            let value = try value(valueSchema, path: path + "/additionalProperties", depth: depth + 1)
            let member = [Grammar.Item.rule(try string(min: 0, max: nil)), ws, .byte(0x3A), ws, .rule(value)]
            if minProperties == 0 && maxProperties == nil { return try container(open: 0x7B, close: 0x7D, item: member) }
            return try boundedList(open: 0x7B, close: 0x7D, item: member, min: minProperties, max: maxProperties, ws: ws)
        }
        guard Set(properties.map(\.key)).count == properties.count else { throw Self.fail(path, "'properties' names a property twice") }
        for name in required where !properties.contains(where: { $0.key == name }) {
            throw Self.fail(path, "'required' names '\(name)', which 'properties' does not define")
        }
        if minProperties > 0 || maxProperties != nil {
            return try countedMembers(properties, required: required, min: minProperties, max: maxProperties, path: path, depth: depth, ws: ws)
        }
        // Properties in order; after(i, any) are the members from property i on, `any` whether one was written.
        var tail = [try rule([[]]), try rule([[]])]  // [nothing written yet, something written]
        for (name, schema) in properties.reversed() {
            let value = try value(schema, path: path + "/properties/" + name, depth: depth + 1)
            let member = Grammar.Item.literal(Self.text(.string(name))) + [ws, .byte(0x3A), ws, .rule(value)]
            let isRequired = required.contains(name)
            var next: [Int] = []
            for written in [false, true] {
                let with: [Grammar.Item] = (written ? [ws, .byte(0x2C), ws] : []) + member + [.rule(tail[1])]
                next.append(try rule(isRequired ? [with] : [with, [.rule(tail[written ? 1 : 0])]]))
            }
            tail = next
        }
        return try rule([[.byte(0x7B), ws, .rule(tail[0]), ws, .byte(0x7D)]])
    }

    /// `properties` in order with `minProperties`/`maxProperties`: the state after property i is how many members are
    /// written so far (0 up to the maximum); a state from which the minimum cannot be reached has no rule, and an
    /// optional property is skipped or written as the count allows.
    mutating func countedMembers(_ properties: [(key: String, value: ExactJSON)], required: [String], min: Int, max: Int?,
                                         path: String, depth: Int, ws: Grammar.Item) throws -> Int {
        guard required.count <= Swift.min(max ?? properties.count, properties.count), min <= properties.count else {
            throw Self.fail(path, "the object's property bounds allow no object")
        }
        let members = try properties.map { name, schema in
            let value = try value(schema, path: path + "/properties/" + name, depth: depth + 1)
            return (items: Grammar.Item.literal(Self.text(.string(name))) + [ws, .byte(0x3A), ws, .rule(value)], required: required.contains(name))
        }
        guard let r = try countedChain(open: 0x7B, close: 0x7D, members, min: min, max: max, ws: ws) else {
            throw Self.fail(path, "the object's property bounds allow no object")
        }
        return r
    }

    /// `open`, then `elements` in order, each written or (if not required) left out, commas between, as long as from
    /// `min` to `max` (nil: all) are written, then `close`; nil when no choice meets the bounds. The state after an
    /// element is how many were written so far; a state from which `min` cannot be reached has no rule.
    mutating func countedChain(open: UInt8, close: UInt8, _ elements: [(items: [Grammar.Item], required: Bool)], min: Int, max: Int?,
                                       ws: Grammar.Item) throws -> Int? {
        let cap = Swift.min(max ?? elements.count, elements.count)
        guard min <= cap else { return nil }
        // tail[c]: the elements from the current one on, c written before.
        var tail: [Int?] = try (0...cap).map { c in c >= min ? try rule([[]]) : nil }
        for e in elements.reversed() {
            tail = try (0...cap).map { c in
                var alternatives: [[Grammar.Item]] = []
                if c < cap, let next = tail[c + 1] { alternatives.append((c > 0 ? [ws, .byte(0x2C), ws] : []) + e.items + [.rule(next)]) }
                if !e.required, let same = tail[c] { alternatives.append([.rule(same)]) }
                return alternatives.isEmpty ? nil : try rule(alternatives)
            }
        }
        guard let first = tail[0] else { return nil }
        return try rule([[.byte(open), ws, .rule(first), ws, .byte(close)]])
    }

    /// `open` items… `close` with min to max items (nil: no maximum), comma-separated.
    mutating func boundedList(open: UInt8, close: UInt8, item: [Grammar.Item], min: Int, max: Int?, ws: Grammar.Item) throws -> Int {
        let limit = max ?? Swift.max(min, 1)
        var tail: Int
        if max == nil {
            tail = try reserve()
            rules[tail] = [[], [ws, .byte(0x2C), ws] + item + [.rule(tail)]]
        } else {
            tail = try rule([[]])
        }
        var k = limit
        while k > 0 {
            k -= 1
            let write: [Grammar.Item] = (k > 0 ? [ws, .byte(0x2C), ws] : []) + item + [.rule(tail)]
            tail = try rule(k >= min ? [[], write] : [write])
        }
        return try rule([[.byte(open), ws, .rule(tail), ws, .byte(close)]])
    }

    mutating func emptyObject(_ ws: Grammar.Item) throws -> Int {
        try rule([[.byte(0x7B), ws, .byte(0x7D)]])
    }

    mutating func array(_ fields: [String: ExactJSON], path: String, depth: Int) throws -> Int {
        try inContainer { try $0.arrayBody(fields, path: path, depth: depth) }
    }

    mutating func arrayBody(_ fields: [String: ExactJSON], path: String, depth: Int) throws -> Int {
        let ws = try ws()
        switch fields["uniqueItems"] {
        case nil, .bool(false)?, .null?: break
        case .bool(true)?: return try uniqueArray(fields, path: path, depth: depth, ws: ws)
        default: throw Self.fail(path, "'uniqueItems' must be a boolean")
        }
        var prefix: [Int] = []
        if let p = fields["prefixItems"] {
            guard case .array(let list) = p else { throw Self.fail(path, "'prefixItems' must be an array of schemas") }
            for (i, s) in list.enumerated() { prefix.append(try value(s, path: path + "/prefixItems/\(i)", depth: depth + 1)) }
        }
        var item: Int?
        switch fields["items"] {
        case nil: item = try anyValue()
        case .bool(false)?: item = nil
        case let s?: item = try value(s, path: path + "/items", depth: depth + 1)
        }
        let minItems = try Self.intValue(fields["minItems"], "minItems", path: path) ?? 0
        var maxItems = try Self.intValue(fields["maxItems"], "maxItems", path: path)
        if item == nil { maxItems = Swift.min(maxItems ?? prefix.count, prefix.count) }
        if let maxItems, maxItems < minItems { throw Self.fail(path, "the array's item bounds allow no length") }
        guard Swift.max(minItems, maxItems ?? 0) <= Self.maxItemsBound else {
            throw Self.fail(path, "minItems/maxItems above \(Self.maxItemsBound) are not supported")
        }
        // The elements from index k on, after k written (k > 0: a comma first), built from the end.
        func element(_ k: Int) -> Int { k < prefix.count ? prefix[k] : item! }
        let limit = maxItems ?? Swift.max(minItems, prefix.count, 1)
        var tail: Int
        if maxItems == nil {
            guard let item else { return try emptyArrayOrFail(minItems == 0, path: path) }
            tail = try reserve()
            rules[tail] = [[], [ws, .byte(0x2C), ws, .rule(item), .rule(tail)]]
        } else {
            tail = try rule([[]])
        }
        var k = limit
        while k > 0 {
            k -= 1
            let write: [Grammar.Item] = (k > 0 ? [ws, .byte(0x2C), ws] : []) + [.rule(element(k)), .rule(tail)]
            tail = try rule(k >= minItems ? [[], write] : [write])
        }
        return try rule([[.byte(0x5B), ws, .rule(tail), ws, .byte(0x5D)]])
    }

    /// `uniqueItems: true` over items from a finite set (`enum`, `const`, `boolean`, `null`, through local `$ref`s —
    /// what Pydantic writes for a set of literals or of an Enum): the distinct values the item schema allows, each
    /// written at most once, in the order the schema lists them (a subset of the orders it allows), as many as
    /// `minItems`/`maxItems` say. Items of an unbounded kind (strings, numbers, objects) are refused: no grammar of this
    /// kind keeps them distinct.
    mutating func uniqueArray(_ fields: [String: ExactJSON], path: String, depth: Int, ws: Grammar.Item) throws -> Int {
        guard fields["prefixItems"] == nil else { throw Self.fail(path, "'uniqueItems' beside 'prefixItems' is not supported") }
        guard let item = fields["items"], item != .bool(true) else {
            throw Self.fail(path, "'uniqueItems' needs 'items' from a finite set (enum, const, boolean, null)")
        }
        // The candidates: the item schema's literals, found through its references.
        var node = item
        for _ in 0..<Self.maxSchemaDepth {
            guard case .object(let m) = node, case .string(let target)? = m.first(where: { $0.key == "$ref" })?.value else { break }
            node = try resolve(target, path: path)
        }
        var candidates: [ExactJSON]
        switch node {
        case .object(let m) where m.contains(where: { $0.key == "enum" }):
            guard case .array(let list)? = m.first(where: { $0.key == "enum" })?.value else { throw Self.fail(path, "'enum' must be an array") }
            candidates = list
        case .object(let m) where m.contains(where: { $0.key == "const" }):
            candidates = [m.first(where: { $0.key == "const" })!.value]
        case .object(let m) where m.first(where: { $0.key == "type" })?.value == .string("boolean"): candidates = [.bool(false), .bool(true)]
        case .object(let m) where m.first(where: { $0.key == "type" })?.value == .string("null"): candidates = [.null]
        default: throw Self.fail(path, "'uniqueItems' needs 'items' from a finite set (enum, const, boolean, null)")
        }
        // The ones the item schema allows (its own grammar decides, with every keyword beside the enum), each once.
        var check = JSONSchemaGrammar(root: root, whitespace: 0)
        let itemRule = try check.value(item, path: path + "/items", depth: depth + 1)
        let itemGrammar = try Grammar(rules: check.rules, root: itemRule)
        var values: [ExactJSON] = []
        for v in candidates where itemGrammar.after(Array(Self.text(v).utf8))?.isComplete == true {
            if !values.contains(where: { Self.equalAsJSON($0, v) }) { values.append(v) }
        }
        guard values.count <= Self.maxItemsBound else { throw Self.fail(path, "'uniqueItems' over more than \(Self.maxItemsBound) values is not supported") }
        let minItems = try Self.intValue(fields["minItems"], "minItems", path: path) ?? 0
        let maxItems = try Self.intValue(fields["maxItems"], "maxItems", path: path)
        guard let r = try countedChain(open: 0x5B, close: 0x5D, values.map { (Grammar.Item.literal(Self.text($0)), false) }, min: minItems, max: maxItems, ws: ws) else {
            throw Self.fail(path, "the array's item bounds allow no array of distinct values")
        }
        return r
    }

    /// JSON Schema's equality of two values (as `uniqueItems` compares them): numbers by value (1 and 1.0 are equal),
    /// Booleans apart from numbers, arrays item by item, objects key by key whatever their order.
    static func equalAsJSON(_ a: ExactJSON, _ b: ExactJSON) -> Bool {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(exactly: x).map { $0 == y } ?? false
        case (.double(let x), .double(let y)): return x == y
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equalAsJSON($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { m in y.contains { $0.key == m.key && equalAsJSON($0.value, m.value) } }
        default: return a == b
        }
    }

    mutating func emptyArrayOrFail(_ ok: Bool, path: String) throws -> Int {
        guard ok else { throw Self.fail(path, "the array's item bounds allow no length") }
        return try rule([[.byte(0x5B), try ws(), .byte(0x5D)]])
    }
}
