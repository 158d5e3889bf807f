import Engine
import HTTPFront
import ServingAPI
import Tokenizers

/// Structured outputs and tool calls in a request body: `response_format`, vLLM's `structured_outputs` and
/// `guided_*`, chat's `tools` and `tool_choice`, and the tool calls of earlier answers sent back as history — each
/// compiled to the grammar that constrains the output (`GrammarSpec`) and checked as it is parsed.
extension GenerationRequest {
    /// The most strings `guided_choice` may list, and the largest schema text accepted.
    static let maxGuidedChoices = 1024
    static let maxSchemaBytes = 256 * 1024

    /// What constrains the output: `response_format` — `{"type": "text"}` (the default), `{"type": "json_object"}`
    /// (JSON mode: the grammar of `{"type": "object"}`), `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}` — or
    /// vLLM's `guided_json` (a schema, or its text) and `guided_choice` (strings); at most one of them. A schema is
    /// compiled here, so one this server cannot honour is a 400 naming what it uses.
    static func structuredOutput(_ f: JSONFields) throws -> GrammarSpec? {
        var given: [String] = []
        for key in ["guided_json", "guided_choice", "guided_regex"] where f.fields[key] != nil && f.fields[key] != .null { given.append(key) }
        var grammar: GrammarSpec?
        if let value = f.fields["response_format"], value != .null {
            guard case .object(let members) = value, let typeValue = members.first(where: { $0.key == "type" })?.value,
                  case .string(let type) = typeValue else {
                throw APIError.invalid("response_format", "response_format must be an object with a 'type' (text, json_object or json_schema)")
            }
            let allowedKeys: Set<String> = type == "json_schema" ? ["type", "json_schema"] : ["type"]
            for (key, _) in members where !allowedKeys.contains(key) {
                throw APIError.invalid("response_format", "unrecognized response_format field '\(JSONFields.printable(key))'")
            }
            switch type {
            case "text": break
            case "json_object":
                grammar = .jsonObject()
                given.append("response_format")
            case "json_schema":
                guard case .object(let spec)? = members.first(where: { $0.key == "json_schema" })?.value else {
                    throw APIError.invalid("response_format", "response_format json_schema needs a 'json_schema' object")
                }
                let g = try JSONFields(members: spec)
                for (key, _) in spec where !["name", "schema", "strict", "description"].contains(key) {
                    throw APIError.invalid("response_format", "unrecognized json_schema field '\(JSONFields.printable(key))'")
                }
                guard let name = try? g.string("name"), isName(name) else {
                    throw APIError.invalid("response_format", "json_schema.name must be 1 to 64 letters, digits, '_' or '-'")
                }
                guard (try? g.bool("strict")) != nil || g.fields["strict"] == nil || g.fields["strict"] == .null else {
                    throw APIError.invalid("response_format", "json_schema.strict must be a boolean")
                }
                guard (try? g.string("description")) != nil || g.fields["description"] == nil else {
                    throw APIError.invalid("response_format", "json_schema.description must be a string")
                }
                grammar = try compile(.jsonSchema(g.fields["schema"] ?? .bool(true)), param: "response_format")
                given.append("response_format")
            default:
                throw APIError.invalid("response_format", "response_format type '\(JSONFields.printable(type))' is not supported (text, json_object, json_schema)")
            }
        }
        if let value = f.fields["guided_json"], value != .null {
            grammar = try compile(.jsonSchema(try schemaValue(value, param: "guided_json")), param: "guided_json")
        }
        if let value = f.fields["guided_choice"], value != .null {
            grammar = try compile(.choice(try choices(value, param: "guided_choice")), param: "guided_choice")
        }
        if let value = f.fields["guided_regex"], value != .null {
            grammar = try compile(.regex(try pattern(value, param: "guided_regex")), param: "guided_regex")
        }
        // vLLM's current spelling (guided_* were removed in its v0.12): {"json" | "choice" | "json_object", options}.
        if let value = f.fields["structured_outputs"], value != .null {
            given.append("structured_outputs")
            let param = "structured_outputs"
            guard case .object(let members) = value, (try? JSONFields(members: members)) != nil else {
                throw APIError.invalid(param, "structured_outputs must be an object (no key twice)")
            }
            var kinds: [String] = []
            // No whitespace outside strings in JSON (the choice's and regex's texts are as given).
            let compact = members.first(where: { $0.key == "disable_any_whitespace" })?.value == .bool(true)
            for (key, v) in members {
                switch key {
                case "json" where v != .null:
                    kinds.append(key)
                    grammar = try compile(.jsonSchema(try schemaValue(v, param: "\(param).json"), compact: compact), param: param)
                case "choice" where v != .null:
                    kinds.append(key)
                    grammar = try compile(.choice(try choices(v, param: "\(param).choice")), param: param)
                case "regex" where v != .null:
                    kinds.append(key)
                    grammar = try compile(.regex(try pattern(v, param: "\(param).regex")), param: param)
                case "json_object" where v != .null:
                    guard case .bool(let on) = v else { throw APIError.invalid(param, "structured_outputs.json_object must be a boolean") }
                    if on {
                        kinds.append(key)
                        grammar = .jsonObject(compact: compact)
                    }
                // Options: compact JSON (above), what this server does anyway (no undeclared keys when properties
                // are given; no fallback to unconstrained decoding).
                case "disable_additional_properties", "disable_fallback", "disable_any_whitespace":
                    switch v {
                    case .bool, .null: break
                    default: throw APIError.invalid(param, "structured_outputs.\(key) must be a boolean")
                    }
                case "json", "choice", "json_object", "regex",
                     "grammar" where v == .null, "structural_tag" where v == .null, "whitespace_pattern" where v == .null:
                    break
                default:
                    throw APIError.invalid(param, "structured_outputs.\(JSONFields.printable(key)) is not supported (json, regex, choice, json_object)")
                }
            }
            guard kinds.count == 1 else {
                throw APIError.invalid(param, "structured_outputs must give exactly one of json, regex, choice and json_object")
            }
        }
        guard given.count <= 1 else {
            throw APIError.invalid(given[1], "only one of response_format (json_object, json_schema), guided_json, guided_choice, guided_regex and structured_outputs may be given")
        }
        return grammar
    }

    /// A JSON schema given as an object, or as its JSON text.
    private static func schemaValue(_ value: ExactJSON, param: String) throws -> ExactJSON {
        guard case .string(let text) = value else { return value }
        guard text.utf8.count <= maxSchemaBytes,
              let parsed = try? Array(text.utf8).withUnsafeBytes({ try ExactJSON.parse($0, name: param, strict: true) }) else {
            throw APIError.invalid(param.split(separator: ".").first.map(String.init) ?? param, "\(param) must be a JSON schema (an object, or its JSON text)")
        }
        return parsed
    }

    /// A regular expression (a string of at most 4,096 bytes).
    private static func pattern(_ value: ExactJSON, param: String) throws -> String {
        guard case .string(let p) = value, p.utf8.count <= 4096 else {
            throw APIError.invalid(param.split(separator: ".").first.map(String.init) ?? param, "\(param) must be a regular expression (a string of at most 4096 bytes)")
        }
        return p
    }

    /// The strings of a choice (1 to `maxGuidedChoices`, each 1 to 4,096 bytes).
    private static func choices(_ value: ExactJSON, param: String) throws -> [String] {
        let top = param.split(separator: ".").first.map(String.init) ?? param
        guard case .array(let items) = value, (1...maxGuidedChoices).contains(items.count) else {
            throw APIError.invalid(top, "\(param) must be an array of 1 to \(maxGuidedChoices) strings")
        }
        return try items.map { item in
            guard case .string(let s) = item, !s.isEmpty, s.utf8.count <= 4096 else {
                throw APIError.invalid(top, "\(param) must hold strings of 1 to 4096 bytes")
            }
            return s
        }
    }

    /// A name as OpenAI allows one for a response format or a function: 1 to 64 ASCII letters, digits, '_' or '-'.
    private static func isName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x5F || $0 == 0x2D }
    }

    /// Compiles a spec to check it (the engine compiles it again, once per spec, when it first samples with it).
    private static func compile(_ spec: GrammarSpec, param: String) throws -> GrammarSpec {
        guard spec.source.utf8.count <= maxSchemaBytes else {
            throw APIError.invalid(param, "the \(param) schema is larger than \(maxSchemaBytes) bytes")
        }
        do {
            _ = try spec.compile()
        } catch {
            throw APIError.invalid(param, "\(param): \(error)")
        }
        return spec
    }

    /// The most functions `tools` may list.
    static let maxTools = 128

    /// `tools` (OpenAI's function definitions) with `tool_choice`: a named function — the answer is its arguments —
    /// or "required" — a JSON array of `{"name", "parameters"}` calls (one at most with `parallel_tool_calls: false`);
    /// either constrains the output to that shape (each function's parameters schema compiled as structured outputs
    /// compile one). "auto" (the default with tools): the model answers in text, or with `ToolCallMode.marker` then
    /// the array of "required" — the output constrained to one or the other, so the answer is parsed without a
    /// model-specific parser. "none" (and no tools) is no call.
    static func toolCalls(_ f: JSONFields) throws -> (mode: ToolCallMode, grammar: GrammarSpec, prompt: String)? {
        var functions: [(name: String, description: String?, parameters: ExactJSON)] = []
        if let value = f.fields["tools"], value != .null {
            guard case .array(let items) = value, items.count <= maxTools else {
                throw APIError.invalid("tools", "tools must be an array of at most \(maxTools) functions")
            }
            for (i, item) in items.enumerated() {
                let param = "tools[\(i)]"
                guard case .object(let m) = item, let t = try? JSONFields(members: m), Set(m.map(\.key)).isSubset(of: ["type", "function"]),
                      t.fields["type"] == .string("function"), case .object(let fm)? = t.fields["function"],
                      let fn = try? JSONFields(members: fm) else {
                    throw APIError.invalid(param, "\(param) must be {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}")
                }
                for (key, _) in fm where !["name", "description", "parameters", "strict"].contains(key) {
                    throw APIError.invalid(param, "unrecognized function field '\(JSONFields.printable(key))'")
                }
                guard case .string(let name)? = fn.fields["name"], isName(name) else {
                    throw APIError.invalid(param, "\(param).function.name must be 1 to 64 letters, digits, '_' or '-'")
                }
                guard !functions.contains(where: { $0.name == name }) else { throw APIError.invalid(param, "two tools are named '\(name)'") }
                var description: String?
                switch fn.fields["description"] {
                case nil, .null?: break
                case .string(let d)?: description = d
                default: throw APIError.invalid(param, "\(param).function.description must be a string")
                }
                if let strict = fn.fields["strict"], strict != .null, !(strict == .bool(true) || strict == .bool(false)) {
                    throw APIError.invalid(param, "\(param).function.strict must be a boolean")
                }
                // No parameters: a function that takes none ({}).
                let parameters = fn.fields["parameters"].flatMap { $0 == .null ? nil : $0 }
                    ?? .object([("type", .string("object")), ("additionalProperties", .bool(false))])
                guard case .object = parameters else { throw APIError.invalid(param, "\(param).function.parameters must be a JSON schema object") }
                do {
                    _ = try JSONSchemaGrammar.compile(schema: parameters)
                } catch {
                    throw APIError.invalid(param, "\(param).function.parameters: \(error)")
                }
                functions.append((name, description, parameters))
            }
        }
        let parallel = try f.bool("parallel_tool_calls") ?? true
        let mode: ToolCallMode
        switch f.fields["tool_choice"] {
        case nil, .null?, .string("auto")?:
            guard !functions.isEmpty else { return nil }
            mode = .auto
        case .string("none")?: return nil
        case .string("required")?:
            guard !functions.isEmpty else { throw APIError.invalid("tool_choice", "tool_choice \"required\" needs tools") }
            mode = .required
        case .object(let m)?:
            guard let c = try? JSONFields(members: m), c.fields["type"] == .string("function"), case .object(let fm)? = c.fields["function"],
                  case .string(let name)? = fm.first(where: { $0.key == "name" })?.value, m.count == 2, fm.count == 1 else {
                throw APIError.invalid("tool_choice", "tool_choice must be \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}")
            }
            guard functions.contains(where: { $0.name == name }) else {
                throw APIError.invalid("tool_choice", "tool_choice names '\(JSONFields.printable(name))', which tools does not define")
            }
            mode = .named(name)
        default:
            throw APIError.invalid("tool_choice", "tool_choice must be \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}")
        }
        let listing = JSONSchemaGrammar.text(.array(functions.map { fn in
            .object([("name", .string(fn.name))] + (fn.description.map { [("description", ExactJSON.string($0))] } ?? []) + [("parameters", fn.parameters)])
        }))
        var prompt = "Functions (parameters as JSON Schema):\n" + listing + "\n"
        let schema: ExactJSON
        switch mode {
        case .named(let name):
            prompt += "Call \"\(name)\": answer with only its arguments as a JSON object."
            schema = functions.first { $0.name == name }!.parameters
        case .required, .auto:
            let array = "a JSON array of calls, each {\"name\": function, \"parameters\": arguments}" + (parallel ? "" : " (one call)")
            prompt += mode == .auto ? "To call functions, answer with only \(ToolCallMode.marker) then \(array); else answer normally."
                                    : "Answer with only \(array)."
            // Each function's own references ("#/$defs/…") re-rooted where its schema now sits.
            let calls: [ExactJSON] = functions.enumerated().map { i, fn in
                .object([("type", .string("object")),
                         ("properties", .object([("name", .object([("const", .string(fn.name))])),
                                                 ("parameters", rerooted(fn.parameters, at: "#/items/anyOf/\(i)/properties/parameters"))])),
                         ("required", .array([.string("name"), .string("parameters")]))])
            }
            schema = .object([("type", .string("array")), ("minItems", .int(1))] + (parallel ? [] : [("maxItems", .int(1))])
                             + [("items", .object([("anyOf", .array(calls))]))])
        }
        let spec: GrammarSpec = mode == .auto ? .markedOrText(marker: ToolCallMode.marker, schema: schema) : .jsonSchema(schema)
        return (mode, try compile(spec, param: "tools"), prompt)
    }

    /// A schema with its local references ("#…") made relative to `root`, where it is embedded.
    private static func rerooted(_ v: ExactJSON, at root: String) -> ExactJSON {
        switch v {
        case .object(let m):
            return .object(m.map { k, x in
                if k == "$ref", case .string(let r) = x, r.hasPrefix("#") { return (k, .string(root + r.dropFirst())) }
                return (k, rerooted(x, at: root))
            })
        case .array(let a): return .array(a.map { rerooted($0, at: root) })
        default: return v
        }
    }

    /// An assistant message's `tool_calls` as an earlier answer returned them: (id, name, arguments as JSON text).
    static func toolCallHistory(_ v: ExactJSON, param: String) throws -> [(id: String, name: String, arguments: String)] {
        guard case .array(let items) = v, items.count <= maxTools else {
            throw APIError.invalid(param, "\(param) must be an array of at most \(maxTools) calls")
        }
        return try items.enumerated().map { k, item in
            let shape = "\(param)[\(k)] must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"
            guard case .object(let m) = item, let c = try? JSONFields(members: m), Set(m.map(\.key)).isSubset(of: ["id", "type", "function", "index"]),
                  case .string(let id)? = c.fields["id"], c.fields["type"] == .string("function"),
                  case .object(let fm)? = c.fields["function"], let fn = try? JSONFields(members: fm),
                  Set(fm.map(\.key)).isSubset(of: ["name", "arguments"]),
                  case .string(let name)? = fn.fields["name"], case .string(let arguments)? = fn.fields["arguments"] else {
                throw APIError.invalid(param, shape)
            }
            // Arguments are JSON text; anything else is kept as a string.
            let parsed = try? Array(arguments.utf8).withUnsafeBytes { try ExactJSON.parse($0, name: "arguments") }
            return (id, name, parsed.map(JSONSchemaGrammar.text) ?? JSONSchemaGrammar.text(.string(arguments)))
        }
    }
}
