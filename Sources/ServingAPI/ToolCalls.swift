import Foundation

// Chat tool calls as OpenAI returns them (whole, and a stream's pieces), how a request's answer is one
// (`ToolCallMode`), the raw-JSON reading that takes a generated list of calls apart (whole, and as it streams:
// `ToolCallStream`), and a stream's render state for them; `CompletionRenderer` renders them for the replica server and
// the router.

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

/// A stream's piece of a tool call (`delta.tool_calls[]`): the first names the call (`id`, `type`, `function.name`,
/// arguments so far), the others carry only the next piece of its arguments, as OpenAI streams them.
public struct ToolCallDelta: Encodable, Equatable, Sendable {
    public struct Function: Encodable, Equatable, Sendable {
        public var name: String?
        public var arguments: String
    }
    public let index: Int
    public var id: String?
    public var type: String?
    public var function: Function

    /// The call's first piece.
    public init(index: Int, id: String, name: String, arguments: String) {
        self.index = index
        self.id = id
        type = "function"
        function = Function(name: name, arguments: arguments)
    }

    /// A later piece of call `index`'s arguments.
    public init(index: Int, arguments: String) {
        self.index = index
        function = Function(name: nil, arguments: arguments)
    }

    /// The same piece with `more` arguments after its own.
    func appending(_ more: String) -> ToolCallDelta {
        var d = self
        d.function.arguments += more
        return d
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
    /// JSON's whitespace (space, line feed, carriage return, tab).
    static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }

    /// A byte that ends a bare value (number, true, false, null): a comma, a closing bracket or brace, whitespace.
    static func endsScalar(_ c: UInt8) -> Bool { c == 0x2C || c == 0x7D || c == 0x5D || isSpace(c) }

    /// A cursor over JSON text that skips whole values without building them.
    struct Scanner {
        let b: [UInt8]
        var p = 0

        init(_ b: [UInt8]) { self.b = b }

        mutating func ws() { while p < b.count, isSpace(b[p]) { p += 1 } }

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
                while p < b.count, !endsScalar(b[p]) { p += 1 }
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

/// A tool-call answer read as it is generated, so a stream can send each call's name as soon as it is known and its
/// arguments piece by piece (as OpenAI streams them) instead of holding the whole answer back. Fed the answer's text
/// in pieces (for `auto`, the text after the marker); yields, in order, `begin(k, name)` for call k and
/// `arguments(k, piece)`, the pieces of call k's arguments: their concatenation is exactly the arguments text that
/// `ToolCallMode.calls(in:)` finds in the whole answer (the `parameters` value as generated; for a named function the
/// answer trimmed). A call whose `parameters` come before its `name` is sent whole once its object closes. Malformed
/// text stops the events (`failed`); the renderer then ends the stream with what was sent.
public struct ToolCallStream: Sendable {
    public enum Event: Equatable, Sendable {
        case begin(Int, String)
        case arguments(Int, String)
    }

    private enum Phase: Sendable, Equatable {
        case open, elementStart, key, colon, value, afterMember, afterElement, done
    }

    /// The named function's (nil: an array of calls).
    let named: String?
    private var b: [UInt8] = []
    private var p = 0
    private var phase = Phase.open
    public private(set) var failed = false
    /// Calls begun, with the arguments sent so far.
    public private(set) var sent: [(name: String, arguments: String)] = []

    // The element being read: its key, name, and the `parameters` value's bounds.
    private var key: [UInt8] = []
    private var keyStart = -1
    private var name: String?
    private var paramsStart = -1, paramsEnd = -1
    /// Whether the current element's call was begun (its name came before its parameters).
    private var begun = false
    // The value being scanned: nesting depth, inside a string, after a backslash, a bare scalar.
    private var depth = 0, inString = false, escaped = false, scalar = false, valueStart = -1
    // A named function's arguments: where they start, and how far they were sent.
    private var argsStart = -1
    private var emitted = 0

    public init(named: String?) { self.named = named }

    public mutating func feed(_ text: String) -> [Event] {
        guard !failed, !text.isEmpty else { return [] }
        b += Array(text.utf8)
        if let named { return feedNamed(named) }
        return feedCalls()
    }

    /// A named function: the answer trimmed is its arguments; trailing whitespace is held until more text follows.
    private mutating func feedNamed(_ name: String) -> [Event] {
        var out: [Event] = []
        if argsStart < 0 {
            while p < b.count, RawJSON.isSpace(b[p]) { p += 1 }
            guard p < b.count else { return [] }
            guard b[p] == 0x7B else { failed = true; return [] }
            argsStart = p
            emitted = p
            sent.append((name, ""))
            out.append(.begin(0, name))
        }
        var end = b.count
        while end > emitted, RawJSON.isSpace(b[end - 1]) { end -= 1 }
        if end > emitted {
            let piece = String(decoding: b[emitted..<end], as: UTF8.self)
            sent[0].arguments += piece
            emitted = end
            out.append(.arguments(0, piece))
        }
        return out
    }

    /// An array of `{"name": …, "parameters": …}` objects, scanned byte by byte from where the last piece ended.
    private mutating func feedCalls() -> [Event] {
        var out: [Event] = []
        func fail() { failed = true }
        scan: while p < b.count, !failed {
            let c = b[p]
            switch phase {
            case .open:
                if RawJSON.isSpace(c) { p += 1 } else if c == 0x5B { p += 1; phase = .elementStart } else { fail() }
            case .elementStart:
                if RawJSON.isSpace(c) { p += 1 } else if c == 0x7B {
                    p += 1
                    phase = .key
                    (name, paramsStart, paramsEnd) = (nil, -1, -1)
                } else { fail() }
            case .key:
                if keyStart < 0 {
                    if RawJSON.isSpace(c) { p += 1; continue scan }
                    guard c == 0x22 else { fail(); break scan }
                    keyStart = p
                    p += 1
                    escaped = false
                    continue scan
                }
                // Inside the key string.
                p += 1
                if escaped { escaped = false } else if c == 0x5C { escaped = true } else if c == 0x22 {
                    key = Array(b[keyStart..<p])
                    keyStart = -1
                    phase = .colon
                }
            case .colon:
                if RawJSON.isSpace(c) { p += 1 } else if c == 0x3A { p += 1; phase = .value; valueStart = -1 } else { fail() }
            case .value:
                if valueStart < 0 {
                    if RawJSON.isSpace(c) { p += 1; continue scan }
                    valueStart = p
                    (depth, inString, escaped, scalar) = (0, false, false, false)
                    if isParameters {
                        paramsStart = p
                        emitted = p
                    }
                    switch c {
                    case 0x7B, 0x5B: depth = 1
                    case 0x22: inString = true
                    default: scalar = true
                    }
                    p += 1
                    continue scan
                }
                if scalar {
                    if RawJSON.endsScalar(c) { valueDone(); continue scan }
                    p += 1
                    continue scan
                }
                p += 1
                if inString {
                    if escaped { escaped = false } else if c == 0x5C { escaped = true } else if c == 0x22 {
                        inString = false
                        if depth == 0 { valueDone() }
                    }
                } else if c == 0x22 {
                    inString = true
                } else if c == 0x7B || c == 0x5B {
                    depth += 1
                } else if c == 0x7D || c == 0x5D {
                    depth -= 1
                    if depth == 0 { valueDone() }
                }
            case .afterMember:
                if RawJSON.isSpace(c) { p += 1 } else if c == 0x2C { p += 1; phase = .key } else if c == 0x7D {
                    p += 1
                    guard let name, paramsEnd >= 0 else { fail(); break scan }
                    let k = sent.count - (begun ? 1 : 0)
                    if !begun {
                        sent.append((name, ""))
                        out.append(.begin(k, name))
                    }
                    let rest = String(decoding: b[emitted..<paramsEnd], as: UTF8.self)
                    if !rest.isEmpty {
                        sent[k].arguments += rest
                        out.append(.arguments(k, rest))
                    }
                    begun = false
                    (self.name, paramsStart, paramsEnd) = (nil, -1, -1)  // this call is whole
                    phase = .afterElement
                } else { fail() }
            case .afterElement:
                if RawJSON.isSpace(c) { p += 1 } else if c == 0x2C { p += 1; phase = .elementStart } else if c == 0x5D { p += 1; phase = .done } else { fail() }
            case .done:
                if RawJSON.isSpace(c) { p += 1 } else { fail() }
            }
        }
        // The current call's arguments so far, once its name is known: the parameters value up to here while it is
        // being read, or whole once it is.
        let reading = phase == .value && valueStart >= 0 && isParameters
        if !failed, let name, paramsStart >= 0, reading || paramsEnd >= 0 {
            if !begun {
                sent.append((name, ""))
                out.append(.begin(sent.count - 1, name))
                begun = true
            }
            let end = reading ? p : paramsEnd
            if end > emitted {
                let piece = String(decoding: b[emitted..<end], as: UTF8.self)
                sent[sent.count - 1].arguments += piece
                emitted = end
                out.append(.arguments(sent.count - 1, piece))
            }
        }
        return out
    }

    private var isParameters: Bool { key == Array(#""parameters""#.utf8) }

    /// The value just scanned ends at p.
    private mutating func valueDone() {
        if key == Array(#""name""#.utf8) {
            name = (try? JSONSerialization.jsonObject(with: Data(b[valueStart..<p]), options: .fragmentsAllowed)) as? String
            if name == nil { failed = true }
        } else if isParameters {
            paramsEnd = p
        }
        valueStart = -1
        phase = .afterMember
    }
}

/// A stream's tool-call answer as it is rendered (`CompletionRenderer.chunk` and the Responses frames).
extension ChoiceRenderState {
    /// What a piece of a tool-call answer's text in a stream sends.
    enum ToolPiece {
        /// Content: everything held so far once an `auto` answer turns out to be text (`plainText` from then).
        case text(String)
        /// The calls' names and argument pieces it completes (none while an `auto` answer may still be either).
        case calls([ToolCallStream.Event])
    }

    mutating func toolPiece(_ text: String, tools: ToolCallMode) -> ToolPiece {
        heldText += text
        if callStream == nil {
            guard tools.mayBeCall(heldText) else {
                plainText = true
                defer { heldText = "" }
                return .text(heldText)
            }
            switch tools {
            case .named(let name): callStream = ToolCallStream(named: name)
            case .required: callStream = ToolCallStream(named: nil)
            case .auto:
                // The marker whole: the calls start after it.
                guard heldText.hasPrefix(ToolCallMode.marker) else { return .calls([]) }
                callStream = ToolCallStream(named: nil)
                return .calls(callStream!.feed(String(heldText.dropFirst(ToolCallMode.marker.count))))
            }
            return .calls(callStream!.feed(heldText))
        }
        return .calls(callStream!.feed(text))
    }

    /// A finished tool-call answer against what its stream sent (nil: nothing was sent, so it is rendered whole): the
    /// argument pieces still to send and the calls not begun, in order, when `calls` (the whole answer's) continue what
    /// was sent; empty when they do not (cut short or malformed: the stream ends with what it sent).
    func remainingCalls(_ calls: [ToolCall]?) -> (rest: [ToolCallDelta], complete: Bool)? {
        guard let sent = callStream?.sent, !sent.isEmpty else { return nil }
        guard let calls, calls.count >= sent.count,
              zip(sent, calls).allSatisfy({ $0.name == $1.function.name && $1.function.arguments.utf8.starts(with: $0.arguments.utf8) }) else {
            return ([], false)
        }
        return (calls.enumerated().compactMap { k, c in
            guard k < sent.count else { return ToolCallDelta(index: k, id: c.id, name: c.function.name, arguments: c.function.arguments) }
            let rest = String(decoding: c.function.arguments.utf8.dropFirst(sent[k].arguments.utf8.count), as: UTF8.self)
            return rest.isEmpty ? nil : ToolCallDelta(index: k, arguments: rest)
        }, true)
    }
}
