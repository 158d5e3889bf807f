/// One chat turn.
public struct ChatMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A chat prompt format, recognised from the model's own Jinja template text and rendered natively.
///
/// There is no Jinja interpreter: the template text is classified by its marker tokens, and each known family is
/// rendered exactly as HF `apply_chat_template` renders the published template (checked against transformers in
/// `Tests/Fixtures/tokenizers/chat_templates.json`). A ChatML template that writes a fixed system message when the
/// conversation has none (SmolLM2, Qwen2) has that message read from the template.
public struct ChatTemplate: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
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

    public let kind: Kind
    /// The model's template text, if it has one.
    public let source: String?
    /// The system message a ChatML template inserts when the conversation does not start with one.
    public let defaultSystemPrompt: String?
    public let bosToken: String
    public let eosToken: String

    public static let roles: Set<String> = ["system", "user", "assistant"]

    public init(template: String?, bosToken: String = "", eosToken: String = "") {
        self.source = template
        self.bosToken = bosToken
        self.eosToken = eosToken
        guard let template, !template.isEmpty else {
            kind = .defaultChatML
            defaultSystemPrompt = nil
            return
        }
        if template.contains("<|im_start|>") {
            kind = .chatML
        } else if template.contains("<|start_header_id|>") {
            kind = .llama3
        } else if template.contains("[INST]") {
            kind = .llama2
        } else if template.contains("<|user|>") {
            kind = .zephyr
        } else {
            kind = .unrecognizedChatML
        }
        defaultSystemPrompt = kind == .chatML ? Self.defaultSystemPrompt(in: template) : nil
    }

    /// Tokens that end an assistant turn in this format (generation should stop at them).
    public var endOfTurnTokens: [String] {
        switch kind {
        case .chatML, .defaultChatML, .unrecognizedChatML: ["<|im_end|>"]
        case .llama3: ["<|eot_id|>"]
        case .llama2, .zephyr: eosToken.isEmpty ? [] : [eosToken]
        }
    }

    /// The prompt text for a conversation. With `addGenerationPrompt` the text ends where the assistant's reply
    /// begins. The text already contains the BOS where the format has one: encode it with `addSpecial: false`.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        guard !messages.isEmpty else { throw TokenizerError.invalidConversation("no messages") }
        for m in messages where !Self.roles.contains(m.role) { throw TokenizerError.unknownRole(m.role) }
        var out = ""
        switch kind {
        case .chatML, .defaultChatML, .unrecognizedChatML:
            if let system = defaultSystemPrompt, messages[0].role != "system" {
                out += "<|im_start|>system\n\(system)<|im_end|>\n"
            }
            for m in messages { out += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n" }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        case .llama3:
            for (i, m) in messages.enumerated() {
                if i == 0 { out += bosToken }
                out += "<|start_header_id|>\(m.role)<|end_header_id|>\n\n\(Self.strip(m.content))<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
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
                var content = m.content
                if i == 0, let system { content = "<<SYS>>\n\(system)\n<</SYS>>\n\n" + content }
                if m.role == "user" {
                    out += bosToken + "[INST] " + Self.strip(content) + " [/INST]"
                } else {
                    out += " " + Self.strip(content) + " " + eosToken
                }
            }
        case .zephyr:
            for m in messages { out += "<|\(m.role)|>\n\(m.content)\(eosToken)\n" }
            if addGenerationPrompt { out += "<|assistant|>\n" }
        }
        return out
    }

    /// Python's `str.strip()` (Jinja's `trim`): Unicode whitespace plus the ASCII separators U+001C…U+001F.
    static func strip(_ s: String) -> String {
        func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }
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
