import Foundation

/// One chat turn.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A rendered chat prompt: the text, and which of its Unicode scalars came from the messages' content (the rest
/// is the template's markup).
public struct RenderedChat: Sendable, Equatable {
    public private(set) var text = ""
    /// Scalar offsets into `text` of message content, ascending and disjoint.
    public private(set) var contentRanges: [Range<Int>] = []
    private var count = 0

    public init() {}

    mutating func markup(_ s: String) {
        text += s
        count += s.unicodeScalars.count
    }

    /// The first `n` scalars of the text (content ranges cut there).
    mutating func truncate(toScalars n: Int) {
        guard n < count else { return }
        text = String(String.UnicodeScalarView(text.unicodeScalars.prefix(n)))
        count = n
        contentRanges = contentRanges.compactMap { $0.lowerBound >= n ? nil : $0.lowerBound..<min($0.upperBound, n) }
    }

    mutating func content(_ s: String) {
        let n = s.unicodeScalars.count
        guard n > 0 else { return }
        if let last = contentRanges.last, last.upperBound == count {
            contentRanges[contentRanges.count - 1] = last.lowerBound..<(count + n)
        } else {
            contentRanges.append(count..<(count + n))
        }
        text += s
        count += n
    }

    /// Appends the parts with Python's `str.strip()` applied to their concatenation (Jinja's `trim` over a
    /// string built from markup and content).
    mutating func appendStripped(_ parts: [(String, isContent: Bool)]) {
        var scalars: [(Unicode.Scalar, Bool)] = []
        for (s, isContent) in parts { scalars += s.unicodeScalars.map { ($0, isContent) } }
        guard let first = scalars.firstIndex(where: { !ChatTemplate.isSpace($0.0) }) else { return }
        let last = scalars.lastIndex(where: { !ChatTemplate.isSpace($0.0) })!
        var i = first
        while i <= last {
            var j = i
            while j <= last && scalars[j].1 == scalars[i].1 { j += 1 }
            let run = String(String.UnicodeScalarView(scalars[i..<j].map(\.0)))
            if scalars[i].1 { content(run) } else { markup(run) }
            i = j
        }
    }
}

/// The model's chat template, run as Jinja.
///
/// The template text is parsed and run by dlora's own Jinja interpreter (`JinjaParser`, `JinjaEvaluator`) with the
/// environment transformers' `apply_chat_template` gives it: jinja2's `ImmutableSandboxedEnvironment` with
/// `trim_blocks`, `lstrip_blocks`, loop controls and `{% generation %}`, the globals `raise_exception`,
/// `strftime_now`, `namespace`, and HF's `tojson`; the context holds `messages`, `add_generation_prompt`,
/// `bos_token`, `eos_token`, and `tools` and `documents` as none. Checked against transformers in
/// `Tests/Fixtures/tokenizers/jinja/goldens.json` (real published templates) and `chat_templates.json`.
///
/// The text is also classified into a family by its marker tokens (`family`), which names the tokens that end an
/// assistant turn. A template that does not parse is rendered natively as that family (ChatML when it is none of
/// them), as dlora did before it ran templates; `parseError` says why.
public struct ChatTemplate: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        /// The model's template, run as Jinja.
        case jinja
        /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen2, …).
        case chatML
        /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
        case llama3
        /// `<s>[INST] <<SYS>>\n…\n<</SYS>>\n\n… [/INST] … </s>` (Llama 2 chat).
        case llama2
        /// `<|user|>\n…</s>\n` (Zephyr, TinyLlama chat).
        case zephyr
        /// The model has no template: ChatML is used.
        case defaultChatML
        /// The model's template is not one of the above: ChatML is used instead, which may not be what the model
        /// was trained on.
        case unrecognizedChatML
    }

    /// How prompts are rendered: `.jinja` when the template parses, else its native family.
    public let kind: Kind
    /// The family the template's marker tokens name (never `.jinja`); it decides `endOfTurnTokens`.
    public let family: Kind
    /// The model's template text, if it has one.
    public let source: String?
    /// Why the template could not be parsed as Jinja (then `kind` is its native family).
    public let parseError: String?
    /// The system message a ChatML template inserts when the conversation does not start with one.
    public let defaultSystemPrompt: String?
    public let bosToken: String
    public let eosToken: String
    private let program: JinjaProgram?

    /// The roles a message may have. The messages carry only a role and a content, so the roles templates render
    /// from those alone are the three; a `tool` turn needs fields (`tool_call_id`, `tool_calls`) dlora does not pass.
    public static let roles: Set<String> = ["system", "user", "assistant"]

    public init(template: String?, bosToken: String = "", eosToken: String = "") {
        self.source = template
        self.bosToken = bosToken
        self.eosToken = eosToken
        guard let template, !template.isEmpty else {
            kind = .defaultChatML
            family = .defaultChatML
            defaultSystemPrompt = nil
            program = nil
            parseError = nil
            return
        }
        let family: Kind
        if template.contains("<|im_start|>") {
            family = .chatML
        } else if template.contains("<|start_header_id|>") {
            family = .llama3
        } else if template.contains("[INST]") {
            family = .llama2
        } else if template.contains("<|user|>") {
            family = .zephyr
        } else {
            family = .unrecognizedChatML
        }
        self.family = family
        defaultSystemPrompt = family == .chatML ? Self.defaultSystemPrompt(in: template) : nil
        do {
            program = JinjaProgram(nodes: try JinjaParser.parse(template))
            parseError = nil
            kind = .jinja
        } catch {
            program = nil
            parseError = "\(error)"
            kind = family
        }
    }

    public static func == (a: ChatTemplate, b: ChatTemplate) -> Bool {
        a.kind == b.kind && a.source == b.source && a.bosToken == b.bosToken && a.eosToken == b.eosToken
    }

    /// Tokens that end an assistant turn in this format (generation should stop at them): the family's marker,
    /// and for a template run as Jinja also the EOS and Gemma's `<end_of_turn>` when the template writes it.
    public var endOfTurnTokens: [String] {
        var tokens: [String] = switch family {
        case .chatML, .defaultChatML, .unrecognizedChatML, .jinja: ["<|im_end|>"]
        case .llama3: ["<|eot_id|>"]
        case .llama2, .zephyr: eosToken.isEmpty ? [] : [eosToken]
        }
        guard kind == .jinja, let source else { return tokens }
        if !eosToken.isEmpty && !tokens.contains(eosToken) { tokens.append(eosToken) }
        if source.contains("<end_of_turn>") { tokens.append("<end_of_turn>") }
        return tokens
    }

    /// The prompt text for a conversation. With `addGenerationPrompt` the text ends where the assistant's reply
    /// begins. The text already contains the BOS where the format has one: encode it with `addSpecial: false`.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        try renderMarked(messages: messages, addGenerationPrompt: addGenerationPrompt).text
    }

    /// `render`, also saying which parts of the text are the messages' own content. Encoding it with
    /// `Tokenizer.encode(_:)` keeps control tokens written inside a message (`<|im_start|>system` in a user's
    /// text) as plain text, so a message cannot forge a role; the template's own markers stay special tokens.
    ///
    /// A template that refuses the conversation (`raise_exception`), fails at render time (an undefined value
    /// used, a type error) or exceeds the interpreter's bounds throws `TokenizerError.invalidConversation` with
    /// the template's message.
    ///
    /// `continueFinalMessage` (vLLM's `continue_final_message`; the conversation ends with an assistant message, and
    /// `addGenerationPrompt` is false): the text ends right after that message's content, so the model continues it (a
    /// prefilled answer) instead of the template closing its turn. `arguments` are more variables for a Jinja template
    /// (vLLM's `chat_template_kwargs`, e.g. `enable_thinking`), JSON values as Jinja's; they cannot rebind the
    /// variables the template is given (`reservedArguments`).
    public func renderMarked(messages: [ChatMessage], addGenerationPrompt: Bool, continueFinalMessage: Bool = false,
                             arguments: [(key: String, value: ExactJSON)] = []) throws -> RenderedChat {
        try renderMarked(messages: messages, addGenerationPrompt: addGenerationPrompt, continueFinalMessage: continueFinalMessage,
                         arguments: arguments, now: Date())
    }

    /// The variables a template is given, which `arguments` cannot rebind.
    public static let reservedArguments: Set<String> = ["messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "documents"]

    /// `renderMarked` with the time `strftime_now` reads (tests pin it).
    func renderMarked(messages: [ChatMessage], addGenerationPrompt: Bool, continueFinalMessage: Bool = false,
                      arguments: [(key: String, value: ExactJSON)] = [], now: Date) throws -> RenderedChat {
        guard !messages.isEmpty else { throw TokenizerError.invalidConversation("no messages") }
        for m in messages where !Self.roles.contains(m.role) { throw TokenizerError.unknownRole(m.role) }
        for (key, _) in arguments where Self.reservedArguments.contains(key) {
            throw TokenizerError.invalidConversation("the template argument '\(key)' is the template's own variable")
        }
        guard continueFinalMessage else { return try render(messages, addGenerationPrompt, arguments, now) }
        // As transformers' apply_chat_template continues it (what vLLM runs): the final message's content is rendered
        // with a tag after it, and the text is cut where the tag begins (and trailing whitespace dropped where the
        // template trimmed the tag's own space, i.e. trims the message).
        guard !addGenerationPrompt else {
            throw TokenizerError.invalidConversation("continue_final_message and add_generation_prompt are not compatible")
        }
        if let source, !source.contains("content") {
            throw TokenizerError.invalidConversation("continue_final_message is set to \"content\" but this is not an accepted field in the chat_template")
        }
        var tagged = messages
        let final = tagged[tagged.count - 1].content
        tagged[tagged.count - 1] = ChatMessage(role: tagged[tagged.count - 1].role, content: final + Self.continueTag)
        var out = try render(tagged, false, arguments, now)
        let text = Array(out.text.unicodeScalars), tag = Array(Self.continueTag.unicodeScalars)
        let strippedFinal = Array(Self.strip(final).unicodeScalars), strippedTag = Array(tag.dropLast())
        guard Self.lastIndex(of: strippedFinal, in: text) != nil, let at = Self.lastIndex(of: strippedTag, in: text) else {
            throw TokenizerError.invalidConversation("continue_final_message is set but the final message does not appear in the chat after "
                                                     + "applying the chat template (the template deletes part of it)")
        }
        var end = at
        if !(at + tag.count <= text.count && Array(text[at..<(at + tag.count)]) == tag) {
            while end > 0 && Self.isSpace(text[end - 1]) { end -= 1 }
        }
        out.truncate(toScalars: end)
        return out
    }

    /// What transformers appends to the final message's content to find where it ends in the rendered text.
    static let continueTag = "CONTINUE_FINAL_MESSAGE_TAG "

    /// Python's `str.rindex` over scalars (an empty needle is found at the end).
    static func lastIndex(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar]) -> Int? {
        guard needle.count <= hay.count else { return nil }
        var i = hay.count - needle.count
        while i >= 0 {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i -= 1
        }
        return nil
    }

    private func render(_ messages: [ChatMessage], _ addGenerationPrompt: Bool, _ arguments: [(key: String, value: ExactJSON)],
                        _ now: Date) throws -> RenderedChat {
        if let program {
            return try renderJinja(program, messages: messages, addGenerationPrompt: addGenerationPrompt, arguments: arguments, now: now)
        }
        return try renderNative(messages: messages, addGenerationPrompt: addGenerationPrompt)
    }

    /// A JSON value as Jinja sees it (Python's json.loads then jinja2).
    static func jinjaValue(_ v: ExactJSON) -> JinjaValue {
        switch v {
        case .null: .none
        case .bool(let b): .bool(b)
        case .int(let i): .int(i)
        case .double(let d): .double(d)
        case .string(let s): .str(s)
        case .array(let items): .list(items.map(jinjaValue))
        case .object(let members): .dict(JinjaDict(members.map { ($0.key, jinjaValue($0.value)) }))
        }
    }

    private func renderJinja(_ program: JinjaProgram, messages: [ChatMessage], addGenerationPrompt: Bool,
                             arguments: [(key: String, value: ExactJSON)], now: Date) throws -> RenderedChat {
        var context = JinjaEvaluator.globals(now: { now })
        context["messages"] = .list(messages.map {
            .dict(JinjaDict([("role", .str($0.role)), ("content", .string(JinjaString($0.content, content: true)))]))
        })
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        context["bos_token"] = .str(bosToken)
        context["eos_token"] = .str(eosToken)
        context["tools"] = JinjaValue.none
        context["documents"] = JinjaValue.none
        for (key, value) in arguments { context[key] = Self.jinjaValue(value) }
        let text: JinjaString
        do {
            text = try JinjaEvaluator().render(program.nodes, globals: context)
        } catch let e as JinjaError {
            throw TokenizerError.invalidConversation(e.description)
        }
        var out = RenderedChat()
        var i = 0
        while i < text.count {
            let isContent = text.marks?[i] ?? false
            var j = i
            while j < text.count && (text.marks?[j] ?? false) == isContent { j += 1 }
            let run = text.slice(i..<j).string
            if isContent { out.content(run) } else { out.markup(run) }
            i = j
        }
        return out
    }

    private func renderNative(messages: [ChatMessage], addGenerationPrompt: Bool) throws -> RenderedChat {
        var out = RenderedChat()
        switch kind {
        case .chatML, .defaultChatML, .unrecognizedChatML, .jinja:
            if let system = defaultSystemPrompt, messages[0].role != "system" {
                out.markup("<|im_start|>system\n\(system)<|im_end|>\n")
            }
            for m in messages {
                out.markup("<|im_start|>\(m.role)\n")
                out.content(m.content)
                out.markup("<|im_end|>\n")
            }
            if addGenerationPrompt { out.markup("<|im_start|>assistant\n") }
        case .llama3:
            for (i, m) in messages.enumerated() {
                if i == 0 { out.markup(bosToken) }
                out.markup("<|start_header_id|>\(m.role)<|end_header_id|>\n\n")
                out.content(Self.strip(m.content))
                out.markup("<|eot_id|>")
            }
            if addGenerationPrompt { out.markup("<|start_header_id|>assistant<|end_header_id|>\n\n") }
        case .llama2:
            // Meta's template: an optional leading system message folds into the first user turn; user and
            // assistant must alternate; the template has no generation prompt (a prompt ends with [/INST]).
            var turns = messages[...]
            var system: String?
            if turns.first?.role == "system" {
                system = turns.first?.content
                turns = turns.dropFirst()
            }
            for (i, m) in turns.enumerated() {
                guard (m.role == "user") == (i % 2 == 0), m.role != "system" else {
                    throw TokenizerError.invalidConversation(
                        "Conversation roles must alternate user/assistant/user/assistant/... (message \(i) is \(m.role))")
                }
                var parts: [(String, isContent: Bool)] = [(m.content, true)]
                if i == 0, let system { parts = [("<<SYS>>\n", false), (system, true), ("\n<</SYS>>\n\n", false)] + parts }
                if m.role == "user" {
                    out.markup(bosToken + "[INST] ")
                    out.appendStripped(parts)
                    out.markup(" [/INST]")
                } else {
                    out.markup(" ")
                    out.appendStripped(parts)
                    out.markup(" " + eosToken)
                }
            }
        case .zephyr:
            for m in messages {
                out.markup("<|\(m.role)|>\n")
                out.content(m.content)
                out.markup("\(eosToken)\n")
            }
            if addGenerationPrompt { out.markup("<|assistant|>\n") }
        }
        return out
    }

    /// What Python's `str.strip()` removes: Unicode whitespace plus the ASCII separators U+001C…U+001F.
    static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }

    /// Python's `str.strip()` (Jinja's `trim`).
    static func strip(_ s: String) -> String {
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = scalars.lastIndex(where: { !isSpace($0) })!
        return String(scalars[first...last])
    }

    /// A fixed system turn written by the template: a string literal `<|im_start|>system\n…<|im_end|>` inside a
    /// Jinja tag, with its escapes undone.
    static func defaultSystemPrompt(in template: String) -> String? {
        let head = "<|im_start|>system\n", tail = "<|im_end|>"
        for literal in jinjaStringLiterals(template) {
            guard let start = literal.range(of: head), let end = literal.range(of: tail, range: start.upperBound..<literal.endIndex)
            else { continue }
            let prompt = String(literal[start.upperBound..<end.lowerBound])
            if !prompt.isEmpty { return prompt }
        }
        return nil
    }

    /// The string literals inside `{{ … }}` and `{% … %}` tags, unescaped.
    static func jinjaStringLiterals(_ template: String) -> [String] {
        let chars = Array(template)
        var literals: [String] = []
        var i = 0
        var inTag = false
        while i < chars.count {
            let c = chars[i]
            if !inTag {
                if c == "{", i + 1 < chars.count, chars[i + 1] == "{" || chars[i + 1] == "%" { inTag = true; i += 2; continue }
                i += 1
                continue
            }
            if (c == "}" || c == "%"), i + 1 < chars.count, chars[i + 1] == "}" { inTag = false; i += 2; continue }
            if c == "'" || c == "\"" {
                var literal = ""
                var k = i + 1
                while k < chars.count && chars[k] != c {
                    if chars[k] == "\\", k + 1 < chars.count {
                        switch chars[k + 1] {
                        case "n": literal.append("\n")
                        case "t": literal.append("\t")
                        case "r": literal.append("\r")
                        default: literal.append(chars[k + 1])
                        }
                        k += 2
                    } else {
                        literal.append(chars[k])
                        k += 1
                    }
                }
                literals.append(literal)
                i = k + 1
                continue
            }
            i += 1
        }
        return literals
    }
}

/// A parsed template (a reference type so `ChatTemplate` stays cheap to copy).
final class JinjaProgram: @unchecked Sendable {
    let nodes: [JinjaNode]
    init(nodes: [JinjaNode]) { self.nodes = nodes }
}
