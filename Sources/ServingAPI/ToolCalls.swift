import Foundation

// Chat tool calls as OpenAI returns them, how a request's answer is one (`ToolCallMode`), and the raw-JSON reading
// that takes a generated list of calls apart; `CompletionRenderer` renders them for the replica server and the router.

/// One function call in an answer (`message.tool_calls[]`); in a stream's delta it also carries its `index`.
public struct ToolCall: Encodable, Equatable, Sendable {
    public struct Function: Encodable, Equatable, Sendable {
        public let name: String
        /// The arguments as JSON text (OpenAI's shape: a string).
        public let arguments: String
    }
    public var index: Int?
    public let id: String
    public var type = "function"
    public let function: Function

    public init(index: Int? = nil, id: String, name: String, arguments: String) {
        self.index = index
        self.id = id
        function = Function(name: name, arguments: arguments)
    }
}

/// How a chat request's answer is a tool call: the named function's arguments (`tool_choice` naming it), or a
/// JSON array of `{"name", "parameters"}` calls (`tool_choice: "required"`). The server constrains the output to
/// that shape; the renderer turns it into `tool_calls`.
public enum ToolCallMode: Sendable, Equatable {
    case named(String)
    case required
    /// The model chooses: a plain answer, or `marker` followed by the same array of calls as `required`.
    case auto

    /// What starts a call in `auto` mode (Hermes' and Qwen's tag, which many models were trained on).
    public static let marker = "<tool_call>"

    /// The mode a chat body asks for, read leniently from Foundation's JSON objects (the router's view: the
    /// replica checks the body strictly before anything is generated).
    public static func from(body: [String: Any]) -> ToolCallMode? {
        guard let tools = body["tools"] as? [Any], !tools.isEmpty else { return nil }
        if body["tool_choice"] == nil || body["tool_choice"] is NSNull { return .auto }
        if let choice = body["tool_choice"] as? String {
            switch choice {
            case "required": return .required
            case "auto": return .auto
            default: return nil
            }
        }
        if let choice = body["tool_choice"] as? [String: Any], let f = choice["function"] as? [String: Any], let name = f["name"] as? String {
            return .named(name)
        }
        return nil
    }

    /// The calls in a complete answer: (name, arguments as JSON text); nil when the text is not the shape.
    public func calls(in text: String) -> [(name: String, arguments: String)]? {
        switch self {
        case .named(let name):
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            return trimmed.hasPrefix("{") ? [(name, trimmed)] : nil
        case .required:
            return RawJSON.calls(Array(text.utf8))
        case .auto:
            guard text.hasPrefix(Self.marker) else { return nil }
            return RawJSON.calls(Array(text.utf8.dropFirst(Self.marker.utf8.count)))
        }
    }

    /// In `auto` mode, whether a stream's text so far may still be (or is) a call: held back until it is not.
    public func mayBeCall(_ text: String) -> Bool {
        guard case .auto = self else { return true }
        return text.hasPrefix(Self.marker) || Self.marker.hasPrefix(text)
    }

    /// The finish reason OpenAI gives such an answer: a forced function's is "stop", a model's choice "tool_calls".
    public var finishReason: String {
        if case .named = self { return "stop" }
        return "tool_calls"
    }
}

/// Spans of raw JSON text: enough to take `[{"name": …, "parameters": …}, …]` apart while keeping each
/// `parameters` value exactly as generated, and an object's members apart in their order with each value's text as
/// written (what a `/v1/responses` body passes on to the chat request: a schema's property order is the order its
/// properties are generated in).
enum RawJSON {
    /// A cursor over JSON text that skips whole values without building them.
    struct Scanner {
        let b: [UInt8]
        var p = 0

        init(_ b: [UInt8]) { self.b = b }

        mutating func ws() { while p < b.count, [0x20, 0x0A, 0x0D, 0x09].contains(b[p]) { p += 1 } }

        mutating func expect(_ c: UInt8) -> Bool {
            ws()
            guard p < b.count, b[p] == c else { return false }
            p += 1
            return true
        }

        /// Skips one value; false if malformed.
        mutating func skip(_ depth: Int = 0) -> Bool {
            ws()
            guard p < b.count, depth < 256 else { return false }
            switch b[p] {
            case 0x22:
                p += 1
                while p < b.count, b[p] != 0x22 { p += b[p] == 0x5C ? 2 : 1 }
                guard p < b.count else { return false }
                p += 1
                return true
            case 0x7B, 0x5B:
                let close: UInt8 = b[p] == 0x7B ? 0x7D : 0x5D
                p += 1
                if expect(close) { return true }
                repeat {
                    if close == 0x7D { guard skip(depth + 1), expect(0x3A) else { return false } }
                    guard skip(depth + 1) else { return false }
                } while expect(0x2C)
                return expect(close)
            default:
                let start = p
                while p < b.count, !([0x2C, 0x7D, 0x5D, 0x20, 0x0A, 0x0D, 0x09] as [UInt8]).contains(b[p]) { p += 1 }
                return p > start
            }
        }

        /// The JSON string at [from, to), decoded (nil: not a string).
        func string(_ from: Int, _ to: Int) -> String? {
            (try? JSONSerialization.jsonObject(with: Data(b[from..<to]), options: .fragmentsAllowed)) as? String
        }

        /// An object's members from here: each key and its value's text, in order (nil: not an object).
        mutating func members() -> [(key: String, value: ArraySlice<UInt8>)]? {
            guard expect(0x7B) else { return nil }
            var out: [(String, ArraySlice<UInt8>)] = []
            if expect(0x7D) { return out }
            repeat {
                ws()
                let k0 = p
                guard skip(), let key = string(k0, p), expect(0x3A) else { return nil }
                ws()
                let v0 = p
                guard skip() else { return nil }
                out.append((key, b[v0..<p]))
            } while expect(0x2C)
            return expect(0x7D) ? out : nil
        }

        /// An array's elements from here, each value's text (nil: not an array).
        mutating func elements() -> [ArraySlice<UInt8>]? {
            guard expect(0x5B) else { return nil }
            var out: [ArraySlice<UInt8>] = []
            if expect(0x5D) { return out }
            repeat {
                ws()
                let v0 = p
                guard skip() else { return nil }
                out.append(b[v0..<p])
            } while expect(0x2C)
            return expect(0x5D) ? out : nil
        }
    }

    /// A whole text that is one JSON object: its members in order (nil: anything else).
    static func members(_ b: [UInt8]) -> [(key: String, value: ArraySlice<UInt8>)]? {
        var s = Scanner(b)
        guard let out = s.members() else { return nil }
        s.ws()
        return s.p == b.count ? out : nil
    }

    /// A whole text that is one JSON array: its elements' texts (nil: anything else).
    static func elements(_ b: ArraySlice<UInt8>) -> [ArraySlice<UInt8>]? {
        var s = Scanner(Array(b))
        guard let out = s.elements() else { return nil }
        s.ws()
        return s.p == s.b.count ? out.map { ArraySlice($0) } : nil
    }

    static func calls(_ b: [UInt8]) -> [(name: String, arguments: String)]? {
        var s = Scanner(b)
        guard s.expect(0x5B) else { return nil }
        var out: [(String, String)] = []
        repeat {
            guard let members = s.members() else { return nil }
            var name: String?
            var arguments: String?
            for (key, value) in members {
                if key == "name" { name = s.string(value.startIndex, value.endIndex) }
                if key == "parameters" { arguments = String(decoding: value, as: UTF8.self) }
            }
            guard let name, let arguments else { return nil }
            out.append((name, arguments))
        } while s.expect(0x2C)
        guard s.expect(0x5D) else { return nil }
        s.ws()
        return s.p == b.count ? out : nil
    }
}
