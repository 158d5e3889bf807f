import Foundation

// OpenAI's Responses API (`POST /v1/responses`) as the chat request it asks for. A Responses body names the same
// generation as a chat body in other words (`input` items for `messages`, `instructions` for a system message,
// `max_output_tokens`, flat function tools, `text.format` for `response_format`), so the replica server and the
// router translate it here and run it as chat: the chat parser then checks every value strictly, and the answer is
// rendered back in the Responses shapes (`CompletionRenderer` with a `ResponsesEcho`). With a `ResponseStore` the answer
// is kept unless the request says `store: false`, and `previous_response_id` continues a kept one (ResponseStore.swift);
// without one (`--responses-store-mb 0`) a request that needs the store is refused, never half-served.

/// A `/v1/responses` body that cannot be served: what `param` names, and why (a 400 in OpenAI's error shape).
public struct ResponsesRequestError: Error, Equatable, Sendable {
    public let param: String?
    public let message: String
    /// OpenAI's error code where it has one (`previous_response_not_found`).
    public let code: String?

    init(_ param: String?, _ message: String, code: String? = nil) {
        self.param = param
        self.message = message
        self.code = code
    }
}

/// What a Responses request repeats in its response object (OpenAI's response echoes its settings), as JSON values.
public struct ResponsesEcho: @unchecked Sendable {
    /// The request's settings as the response object lists them (instructions, max_output_tokens, temperature, top_p,
    /// tools, tool_choice, text, metadata, parallel_tool_calls, user); JSONSerialization values, never mutated.
    public let fields: [String: Any]
    /// Where the finished answer is stored (nil: `store: false`, or no store).
    public let record: ResponseRecord?

    public init(fields: [String: Any], record: ResponseRecord? = nil) {
        self.fields = fields
        self.record = record
    }
}

/// A `/v1/responses` body translated: the chat body to run, whether to stream, and what the response echoes.
public struct ResponsesRequest: @unchecked Sendable {
    /// The equivalent `/v1/chat/completions` body (JSON).
    public let chatBody: Data
    public let stream: Bool
    public let echo: ResponsesEcho

    /// Chat's names of parameters that a Responses body names otherwise: an error the chat parser reports about one
    /// is reported under the Responses name.
    public static let renamedParameters: [(chat: String, responses: String)] = [
        ("max_tokens", "max_output_tokens"), ("response_format", "text.format"), ("messages", "input"),
    ]

    /// A chat parser's error message and parameter, in the Responses body's words.
    public static func rename(param: String?, message: String) -> (String?, String) {
        var param = param, message = message
        for (chat, responses) in renamedParameters {
            if let p = param, p == chat || p.hasPrefix(chat + ".") || p.hasPrefix(chat + "[") {
                param = responses + p.dropFirst(chat.count)
            }
            message = message.replacingOccurrences(of: chat, with: responses)
        }
        return (param, message)
    }

    /// Keys that pass to the chat body unchanged: the sampling settings both APIs share, and vLLM's (and dlora's)
    /// extensions, which the chat parser checks.
    static let passThrough: Set<String> = [
        "model", "temperature", "top_p", "parallel_tool_calls", "user", "service_tier", "metadata", "stream",
        "top_k", "min_p", "repetition_penalty", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "stop",
        "ignore_eos", "min_tokens", "stop_token_ids", "mole_experts",
    ]

    /// At most this many input items (messages and function calls and their outputs).
    public static let maxInputItems = 4096

    /// A value's JSON text decoded (Foundation's objects), for the checks that read it.
    private static func decode(_ text: ArraySlice<UInt8>, _ param: String) throws(ResponsesRequestError) -> Any {
        guard let v = try? JSONSerialization.jsonObject(with: Data(text), options: .fragmentsAllowed) else {
            throw ResponsesRequestError(param, "'\(param)' is not valid JSON")
        }
        return v
    }

    /// The string value of member `key` among an object's members (nil: absent or not a string).
    private static func string(_ members: [(key: String, value: ArraySlice<UInt8>)], _ key: String) -> String? {
        members.first { $0.key == key }.flatMap { try? JSONSerialization.jsonObject(with: Data($0.value), options: .fragmentsAllowed) as? String }
    }

    /// Foundation's JSON text of a value (messages, a tool choice) whose member order does not matter.
    private static func text(_ value: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("null".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// An object's text from members given as text, in order.
    private static func object(_ members: [(key: String, value: String)]) -> String {
        "{" + members.map { text($0.key) + ":" + $0.value }.joined(separator: ",") + "}"
    }

    /// The chat body's values are taken from the Responses body's text, not re-serialized, where their member order
    /// matters: a schema's properties are generated in the order it lists them (tools' parameters, `text.format`'s
    /// schema), and the functions are listed in the prompt as given.
    /// `store`: the responses this process keeps (nil: none), which `previous_response_id` reads and a finished
    /// answer is added to unless the request says `store: false`.
    public static func translate(_ body: Data, store: ResponseStore? = nil) throws(ResponsesRequestError) -> ResponsesRequest {
        guard let members = RawJSON.members(Array(body)) else {
            throw ResponsesRequestError(nil, "the request body must be a JSON object")
        }
        var raw: [String: ArraySlice<UInt8>] = [:]
        var object: [String: Any] = [:]
        for (key, value) in members {
            guard raw.updateValue(value, forKey: key) == nil else {
                throw ResponsesRequestError(String(key.prefix(64)), "'\(String(key.prefix(64)))' is given twice")
            }
            object[key] = try decode(value, String(key.prefix(64)))
        }
        func verbatim(_ key: String) -> String { String(decoding: raw[key]!, as: UTF8.self) }
        var chat: [(key: String, value: String)] = []
        var echo: [String: Any] = [:]
        var storing = store != nil
        var previous: [[String: Any]] = []
        for (key, _) in members {
            let value = object[key]!
            switch key {
            case _ where passThrough.contains(key): chat.append((key, verbatim(key)))
            case "input", "instructions", "max_output_tokens", "tools", "tool_choice", "text": break  // below
            case "store":
                // Read from the text: Foundation would take a number 0 or 1 for a Boolean.
                let literal = verbatim(key).trimmingCharacters(in: .whitespacesAndNewlines)
                guard ["true", "false", "null"].contains(literal) else { throw ResponsesRequestError("store", "store must be true or false") }
                if literal == "true" && store == nil {
                    throw ResponsesRequestError("store", "this server stores no responses (started with --responses-store-mb 0): send store: false or leave it out")
                }
                if literal == "false" { storing = false }
            case "previous_response_id":
                guard !(value is NSNull) else { break }
                guard let id = value as? String else { throw ResponsesRequestError(key, "previous_response_id must be a string") }
                guard let store else {
                    throw ResponsesRequestError(key, "this server stores no responses (started with --responses-store-mb 0): send the whole conversation as input")
                }
                guard let stored = store.get(id),
                      let conversation = (try? JSONSerialization.jsonObject(with: stored.conversation)) as? [[String: Any]] else {
                    throw ResponsesRequestError(key, "Previous response with id '\(String(id.prefix(128)))' not found.", code: "previous_response_not_found")
                }
                previous = conversation
                echo["previous_response_id"] = id
            case "conversation", "prompt":
                guard value is NSNull else {
                    throw ResponsesRequestError(key, key == "conversation"
                        ? "'conversation' names a conversation object, and this server keeps none (no /v1/conversations): send the whole conversation as input, or continue a stored response with 'previous_response_id'"
                        : "'prompt' names a stored prompt template, and this server keeps none: send the prompt's text as input")
                }
            case "include":
                guard value is NSNull || (value as? [Any])?.isEmpty == true else {
                    throw ResponsesRequestError("include", "'include' is not supported by this server (no extra output data)")
                }
            case "reasoning":
                let effortless = (value as? [String: Any]).map { $0.values.allSatisfy { $0 is NSNull } } ?? false
                guard value is NSNull || effortless else {
                    throw ResponsesRequestError("reasoning", "'reasoning' is not supported: this model has no reasoning settings")
                }
            case "truncation":
                guard value is NSNull || (value as? String) == "disabled" else {
                    throw ResponsesRequestError("truncation", "truncation must be 'disabled': a prompt past the context is refused, not cut")
                }
            case "background":
                guard value is NSNull || (value as? Bool) == false else {
                    throw ResponsesRequestError("background", "background responses are not supported (they need a stored response)")
                }
            case "max_tool_calls", "top_logprobs":
                guard value is NSNull || (value as? Int) == 0 && key == "top_logprobs" else {
                    throw ResponsesRequestError(key, "'\(key)' is not supported by this server")
                }
            case "stream_options":
                let plain = (value as? [String: Any]).map { o in o.allSatisfy { $0.key == "include_obfuscation" && ($0.value as? Bool) == false } } ?? false
                guard value is NSNull || plain else {
                    throw ResponsesRequestError("stream_options", "stream_options: only include_obfuscation false is supported")
                }
            case "prompt_cache_key", "safety_identifier":
                // Hints (a cache routing key, an end-user id): strings, checked and otherwise unused.
                guard value is NSNull || (value as? String).map({ $0.utf8.count <= 256 }) == true else {
                    throw ResponsesRequestError(key, "'\(key)' must be a string of at most 256 bytes")
                }
            default:
                throw ResponsesRequestError(String(key.prefix(64)), "unrecognized request argument '\(String(key.prefix(64)))'")
            }
        }

        // The conversation: `instructions` first (a system message), then a continued response's conversation (whose
        // own instructions are not carried over, as OpenAI does), then the input items in order.
        var system: [[String: Any]] = []
        if let instructions = object["instructions"], !(instructions is NSNull) {
            guard let text = instructions as? String else { throw ResponsesRequestError("instructions", "instructions must be a string") }
            system.append(["role": "system", "content": text])
            echo["instructions"] = text
        }
        var messages = previous
        var inputItems: [[String: Any]] = []
        switch object["input"] {
        case let text as String:
            messages.append(["role": "user", "content": text])
            inputItems.append(["type": "message", "role": "user", "content": [["type": "input_text", "text": text]]])
        case let items as [Any]:
            guard !items.isEmpty, items.count <= maxInputItems else {
                throw ResponsesRequestError("input", "input must hold 1 to \(maxInputItems) items")
            }
            guard previous.count + items.count <= 4 * maxInputItems else {
                throw ResponsesRequestError("previous_response_id", "the conversation would hold more than \(4 * maxInputItems) messages")
            }
            for (i, item) in items.enumerated() {
                try add(item, at: i, to: &messages)
                if storing { inputItems.append(Self.listed(item)) }
            }
        case nil, is NSNull:
            throw ResponsesRequestError("input", "'input' is required")
        default:
            throw ResponsesRequestError("input", "input must be a string or an array of items")
        }
        chat.append(("messages", text(system + messages)))
        echo["store"] = storing

        if let max = object["max_output_tokens"], !(max is NSNull) {
            chat.append(("max_tokens", verbatim("max_output_tokens")))
            echo["max_output_tokens"] = max
        }
        if let tools = object["tools"], !(tools is NSNull) {
            guard let list = RawJSON.elements(raw["tools"]!) else { throw ResponsesRequestError("tools", "tools must be an array of function tools") }
            // Each flat function tool as chat's {"type": "function", "function": {…}}, its members' text kept.
            let converted = try list.enumerated().map { i, t throws(ResponsesRequestError) -> String in
                guard let fields = RawJSON.members(Array(t)) else { throw ResponsesRequestError("tools[\(i)]", "a tool must be an object") }
                let type = string(fields, "type")
                guard type == "function" else {
                    throw ResponsesRequestError("tools[\(i)].type", "tool type '\(String((type ?? "?").prefix(64)))' is not supported (function tools only)")
                }
                var function: [(key: String, value: String)] = []
                for (key, value) in fields where key != "type" {
                    guard ["name", "description", "parameters", "strict"].contains(key) else {
                        throw ResponsesRequestError("tools[\(i)].\(String(key.prefix(64)))", "unsupported function tool field '\(String(key.prefix(64)))'")
                    }
                    function.append((key, String(decoding: value, as: UTF8.self)))
                }
                return Self.object([("type", text("function")), ("function", Self.object(function))])
            }
            chat.append(("tools", "[" + converted.joined(separator: ",") + "]"))
            echo["tools"] = tools
        }
        if let choice = object["tool_choice"], !(choice is NSNull) {
            switch choice {
            case let mode as String:
                chat.append(("tool_choice", text(mode)))
            case let named as [String: Any] where named["type"] as? String == "function" && named.count == 2 && named["name"] is String:
                chat.append(("tool_choice", text(["type": "function", "function": ["name": named["name"]!]])))
            default:
                throw ResponsesRequestError("tool_choice", "tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": …}")
            }
            echo["tool_choice"] = choice
        }
        if let t = object["text"], !(t is NSNull) {
            guard let fields = RawJSON.members(Array(raw["text"]!)) else { throw ResponsesRequestError("text", "text must be an object") }
            for (key, value) in fields {
                let v = try decode(value, "text.\(String(key.prefix(64)))")
                switch key {
                case "format": break
                case "verbosity" where v is NSNull || (v as? String) == "medium": break
                default: throw ResponsesRequestError("text.\(String(key.prefix(64)))", "text.\(String(key.prefix(64))) is not supported (format only)")
                }
            }
            if let format = fields.last(where: { $0.key == "format" })?.value, let members = RawJSON.members(Array(format)) {
                let type = string(members, "type")
                switch type {
                case "text": break
                case "json_object": chat.append(("response_format", text(["type": "json_object"])))
                case "json_schema":
                    let schema = members.filter { $0.key != "type" }.map { ($0.key, String(decoding: $0.value, as: UTF8.self)) }
                    chat.append(("response_format", Self.object([("type", text("json_schema")), ("json_schema", Self.object(schema))])))
                default:
                    throw ResponsesRequestError("text.format.type", "text.format type '\(String((type ?? "?").prefix(64)))' is not supported (text, json_object, json_schema)")
                }
            } else if let format = fields.last(where: { $0.key == "format" })?.value, String(decoding: format, as: UTF8.self) != "null" {
                throw ResponsesRequestError("text.format", "text.format must be an object with a type")
            }
            echo["text"] = t
        }
        for key in ["temperature", "top_p", "metadata", "parallel_tool_calls", "user"] {
            if let v = object[key], !(v is NSNull) { echo[key] = v }
        }
        let record = storing ? store.map { ResponseRecord(store: $0, conversation: messages, inputItems: inputItems) } : nil
        return ResponsesRequest(chatBody: Data(Self.object(chat).utf8), stream: (object["stream"] as? Bool) == true,
                                echo: ResponsesEcho(fields: echo, record: record))
    }

    /// An input item as `input_items` lists it: a message's string content as one text part (input_text, or
    /// output_text for the assistant's), anything else as given (`add` has checked it).
    private static func listed(_ item: Any) -> [String: Any] {
        guard var o = item as? [String: Any] else { return [:] }
        let type = o["type"] as? String ?? (o["role"] != nil ? "message" : "")
        o["type"] = type
        if type == "message", let text = o["content"] as? String {
            o["content"] = [["type": o["role"] as? String == "assistant" ? "output_text" : "input_text", "text": text]]
        }
        return o
    }

    /// One input item (or, for a stored answer, an output item) as chat messages: a message (its text parts joined), a
    /// function call (an assistant message's
    /// tool call; consecutive calls share one message, as parallel calls do), or a function call's output (a tool
    /// message).
    static func add(_ item: Any, at i: Int, to messages: inout [[String: Any]]) throws(ResponsesRequestError) {
        let param = "input[\(i)]"
        guard let o = item as? [String: Any] else { throw ResponsesRequestError(param, "an input item must be an object") }
        let type = o["type"] as? String ?? (o["role"] != nil ? "message" : "")
        switch type {
        case "message":
            for key in o.keys where !["type", "role", "content", "id", "status"].contains(key) {
                throw ResponsesRequestError("\(param).\(String(key.prefix(64)))", "unsupported message field '\(String(key.prefix(64)))'")
            }
            guard let role = o["role"] as? String, ["user", "assistant", "system", "developer"].contains(role) else {
                throw ResponsesRequestError("\(param).role", "role must be user, assistant, system or developer")
            }
            let content: String
            switch o["content"] {
            case let s as String: content = s
            case let parts as [Any]:
                content = try parts.enumerated().map { k, p throws(ResponsesRequestError) -> String in
                    guard let part = p as? [String: Any], let kind = part["type"] as? String else {
                        throw ResponsesRequestError("\(param).content[\(k)]", "a content part must be an object with a type")
                    }
                    guard ["input_text", "output_text", "text"].contains(kind), let text = part["text"] as? String else {
                        throw ResponsesRequestError("\(param).content[\(k)].type",
                                                    "content part type '\(String(kind.prefix(64)))' is not supported: this model reads text (input_text, output_text)")
                    }
                    return text
                }.joined()
            default:
                throw ResponsesRequestError("\(param).content", "content must be a string or an array of text parts")
            }
            messages.append(["role": role == "developer" ? "system" : role, "content": content])
        case "function_call":
            guard let callID = o["call_id"] as? String, let name = o["name"] as? String, let arguments = o["arguments"] as? String else {
                throw ResponsesRequestError(param, "a function_call item needs call_id, name and arguments (strings)")
            }
            let call: [String: Any] = ["id": callID, "type": "function", "function": ["name": name, "arguments": arguments]]
            if var last = messages.last, last["role"] as? String == "assistant", var calls = last["tool_calls"] as? [[String: Any]] {
                calls.append(call)
                last["tool_calls"] = calls
                messages[messages.count - 1] = last
            } else {
                messages.append(["role": "assistant", "content": NSNull(), "tool_calls": [call]])
            }
        case "function_call_output":
            guard let callID = o["call_id"] as? String else { throw ResponsesRequestError("\(param).call_id", "a function_call_output item needs a call_id") }
            // The output of a call made earlier in the conversation (this input, or the continued response's), as OpenAI
            // requires: an orphan would put a tool's answer to a question never asked into the prompt.
            guard messages.contains(where: { ($0["tool_calls"] as? [[String: Any]])?.contains { $0["id"] as? String == callID } == true }) else {
                throw ResponsesRequestError("\(param).call_id", "No tool call found for function call output with call_id \(String(callID.prefix(128))).")
            }
            let output: String
            switch o["output"] {
            case let s as String: output = s
            case let parts as [Any]:
                output = try parts.enumerated().map { k, p throws(ResponsesRequestError) -> String in
                    guard let part = p as? [String: Any], part["type"] as? String == "input_text", let text = part["text"] as? String else {
                        throw ResponsesRequestError("\(param).output[\(k)]", "a function_call_output's parts must be input_text")
                    }
                    return text
                }.joined()
            default: throw ResponsesRequestError("\(param).output", "a function_call_output item needs an output (a string)")
            }
            messages.append(["role": "tool", "tool_call_id": callID, "content": output])
        default:
            throw ResponsesRequestError("\(param).type", "input item type '\(String(type.prefix(64)))' is not supported (message, function_call, function_call_output)")
        }
    }
}
