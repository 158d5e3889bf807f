import Foundation
import Testing
import TestSupport
@testable import Tokenizers

/// `tools/gen_jinja_goldens.py`'s output: real chat templates and semantic snippets as transformers renders them.
struct JinjaGoldens: Decodable {
    struct Case: Decodable {
        let messages: [ChatMessage]
        let addGenerationPrompt: Bool
        /// Rendered with continue_final_message (transformers' apply_chat_template, as vLLM runs it).
        let continueFinalMessage: Bool?
        let rendered: String?
        let error: String?
    }
    struct Template: Decodable {
        let name: String
        let file: String
        let bosToken: String
        let eosToken: String
        let cases: [Case]
    }
    struct Snippet: Decodable {
        let template: String
        let messages: [ChatMessage]
        /// More variables for the template (vLLM's chat_template_kwargs), as a JSON text.
        let kwargs: String?
        let rendered: String?
        let error: String?
    }
    struct Hostile: Decodable {
        let template: String
    }
    let templates: [Template]
    let snippets: [Snippet]
    let hostile: [Hostile]

    static let directory = FixtureFiles.tokenizers.appendingPathComponent("jinja")
    static func load() throws -> JinjaGoldens {
        try FixtureFiles.decodeGolden(JinjaGoldens.self, at: directory.appendingPathComponent("goldens.json"))
    }
    /// The date the goldens pinned `strftime_now` to (2025-02-03 04:05:06, local time as Python's naive datetime).
    static let now: Date = {
        var c = DateComponents()
        (c.year, c.month, c.day, c.hour, c.minute, c.second) = (2025, 2, 3, 4, 5, 6)
        return Calendar(identifier: .gregorian).date(from: c)!
    }()
}

@Suite struct JinjaTemplateTests {
    /// The message a refused render carries: the template's own, after the "chat template: " prefix.
    static func message(_ error: any Error) -> String {
        let d = "\(error)"
        return d.hasPrefix("chat template: ") ? String(d.dropFirst("chat template: ".count)) : d
    }

    /// Every real template renders every conversation exactly as transformers does, or refuses it with the template's
    /// own message.
    @Test func realTemplatesRenderLikeTransformers() throws {
        let goldens = try JinjaGoldens.load()
        #expect(goldens.templates.count >= 12)
        var passed = 0
        for entry in goldens.templates {
            let text = try String(contentsOf: JinjaGoldens.directory.appendingPathComponent(entry.file), encoding: .utf8)
            let template = ChatTemplate(template: text, bosToken: entry.bosToken, eosToken: entry.eosToken)
            #expect(template.kind == .jinja, "\(entry.name): \(template.parseError ?? "")")
            for c in entry.cases {
                let continued = c.continueFinalMessage ?? false
                let context = "\(entry.name) \(c.messages.map(\.role)) gen=\(c.addGenerationPrompt) continue=\(continued)"
                if let rendered = c.rendered {
                    let got = try? template.renderMarked(messages: c.messages, addGenerationPrompt: c.addGenerationPrompt,
                                                         continueFinalMessage: continued, now: JinjaGoldens.now)
                    #expect(got?.text == rendered, "\(context)")
                    if got?.text == rendered { passed += 1 }
                } else {
                    do {
                        _ = try template.renderMarked(messages: c.messages, addGenerationPrompt: c.addGenerationPrompt,
                                                      continueFinalMessage: continued, now: JinjaGoldens.now)
                        Issue.record("\(context) should fail: \(c.error ?? "")")
                    } catch {
                        #expect(error is TokenizerError)
                        #expect(Self.message(error) == c.error, "\(context)")
                        passed += 1
                    }
                }
            }
        }
        #expect(passed == goldens.templates.map(\.cases.count).reduce(0, +))
    }

    /// Each message's content lands in the content ranges (marked), so control tokens typed in a message stay text.
    @Test func contentIsMarkedThroughRealTemplates() throws {
        let goldens = try JinjaGoldens.load()
        for entry in goldens.templates {
            let text = try String(contentsOf: JinjaGoldens.directory.appendingPathComponent(entry.file), encoding: .utf8)
            let template = ChatTemplate(template: text, bosToken: entry.bosToken, eosToken: entry.eosToken)
            for c in entry.cases where c.rendered != nil {
                let marked = try template.renderMarked(messages: c.messages, addGenerationPrompt: c.addGenerationPrompt, now: JinjaGoldens.now)
                let scalars = Array(marked.text.unicodeScalars)
                let content = marked.contentRanges.map { String(String.UnicodeScalarView(scalars[$0])) }.joined()
                // No template markup is marked: the marked text is made only of the messages' scalars.
                let all = Set(c.messages.flatMap { $0.content.unicodeScalars })
                #expect(content.unicodeScalars.allSatisfy { all.contains($0) }, "\(entry.name)")
                for m in c.messages where m.content.contains("<|im_end|>") && marked.text.contains(m.content) {
                    #expect(content.contains("<|im_end|>"), "\(entry.name): the forged marker is not marked as content")
                }
            }
        }
    }

    /// Semantics checked one construct at a time against jinja2 (filters, tests, loops, whitespace control, undefined).
    @Test func snippetsRenderLikeJinja2() throws {
        let goldens = try JinjaGoldens.load()
        #expect(goldens.snippets.count >= 40)
        for s in goldens.snippets {
            let template = ChatTemplate(template: s.template, bosToken: "<s>", eosToken: "</s>")
            var arguments: [(key: String, value: ExactJSON)] = []
            if let kwargs = s.kwargs {
                guard case .object(let members) = try Array(kwargs.utf8).withUnsafeBytes({ try ExactJSON.parse($0, name: "kwargs") }) else {
                    Issue.record("kwargs \(kwargs) is not an object")
                    continue
                }
                arguments = members
            }
            let result = Result {
                try template.renderMarked(messages: s.messages, addGenerationPrompt: true, arguments: arguments, now: JinjaGoldens.now).text
            }
            if let rendered = s.rendered {
                #expect(template.kind == .jinja, "\(s.template): \(template.parseError ?? "")")
                #expect((try? result.get()) == rendered, "\(s.template) -> \(result)")
            } else if template.kind == .jinja {
                // A render-time error: the template's message.
                if case .failure(let e) = result {
                    if s.error?.hasPrefix("Refused") == true { #expect(Self.message(e) == s.error) }
                } else {
                    Issue.record("\(s.template) should fail: \(s.error ?? "")")
                }
            } else {
                #expect(template.parseError != nil, "\(s.template)")
            }
        }
    }

    /// A hostile template fails quickly with an error (bounded loops, recursion, output, nesting), never hangs or traps.
    @Test func hostileTemplatesAreBounded() throws {
        for h in try JinjaGoldens.load().hostile {
            let start = Date()
            let template = ChatTemplate(template: h.template)
            #expect(throws: (any Error).self, "\(h.template.prefix(60))") {
                guard template.kind == .jinja else { throw TokenizerError.invalidConversation(template.parseError ?? "") }
                _ = try template.render(messages: [ChatMessage(role: "user", content: "x")], addGenerationPrompt: true)
            }
            #expect(Date().timeIntervalSince(start) < 20, "\(h.template.prefix(60)) took too long")
        }
    }

    /// Expressions at the edges of Swift's integers and Python's semantics render or throw; none traps (the process
    /// would die: this test passing at all is the check). Those that render give jinja2's text (checked in Python).
    @Test func edgeExpressionsRenderOrThrowNeverTrap() throws {
        let cases: [(String, String?)] = [
            ("{{ 1e300|int }}", nil), ("{{ '9e99'|int }}", nil), ("{{ -1e300|int }}", nil), ("{{ 2.9|int }}", "2"), ("{{ '-3.7'|int }}", "-3"),
            ("{{ 9223372036854775807 + 1 }}", nil), ("{{ -9223372036854775807 - 2 }}", nil), ("{{ 2 ** 100 }}", nil),
            ("{{ 99999999999999999999 }}", nil), ("{{ (-9223372036854775807 - 1) // -1 }}", nil), ("{{ 1 % 0 }}", nil), ("{{ 1 // 0 }}", nil),
            ("{{ 1 / 0 }}", nil), ("{{ 'a' * 100000000000 }}", nil), ("{{ 'ab' * -1 }}", ""), ("{{ [1] * 100000000000 }}", nil),
            ("{{ [1, 2, 3][9223372036854775807] }}", ""), ("{{ 'abc'[-9223372036854775807] }}", ""), ("{{ 'abc'[::-1] }}", "cba"),
            ("{{ 'abc'[::0] }}", nil), ("{{ 'abc'[1::9223372036854775807] }}", "b"), ("{{ 'abc'[::-9223372036854775807] }}", "c"), ("{{ 'abcdef'[1:9223372036854775807:2] }}", "bdf"), ("{{ 'abc'[-9223372036854775807:] }}", "abc"),
            ("{{ range(9223372036854775807)|length }}", nil), ("{{ range(0, 10, 0)|list }}", nil), ("{{ 'x'|indent(100000000000) }}", nil),
            ("{{ 'a b'.split('') }}", nil), ("{{ 'abc'.replace('', '-') }}", "-a-b-c-"), ("{{ 'abc'.count('') }}", "4"),
            ("{{ 'abc'.find('', 100) }}", "-1"), ("{{ 'abcabc'.find('b', 2) }}", "4"), ("{{ 'abcabc'.find('b', -2) }}", "4"),
            ("{{ 'abcabc'.count('b', 0, 4) }}", "1"), ("{{ 'abcabc'.rfind('c', 0, -1) }}", "2"), ("{{ 'abc'.find('', 3) }}", "3"),
            ("{{ (-9223372036854775807 - 1)|abs }}", nil), ("{{ 'x'|indent(-5) }}", "x"), ("{{ range() }}", nil),
            // Found by a differential fuzz against jinja2: chains 2,000 long crashed the process on its stack (refused
            // now, past 256 operations in a tag), ten million list items took seconds, and these rendered otherwise.
            ("{{ " + String(repeating: "-", count: 2000) + "1 }}", nil), ("{{ 1" + String(repeating: " + 1", count: 2000) + " }}", nil),
            ("{{ 'x'" + String(repeating: "|trim", count: 2000) + " }}", nil), ("{{ x" + String(repeating: ".x", count: 2000) + " }}", nil),
            ("{{ " + String(repeating: "not ", count: 2000) + "1 }}", nil), ("{{ 'a'" + String(repeating: "[0]", count: 2000) + " }}", nil),
            ("{{ ' '|join(['x'] * 10000000) }}", nil), ("{{ 1" + String(repeating: " + 1", count: 100) + " }}", "101"),
            ("{{ 3|round }}", "3"), ("{{ 123|round(-2) }}", "100"), ("{{ 1.5|round(400) }}", "1.5"), ("{{ 123|round(-400) }}", "0"),
            ("{{ 2.5|round }}", "2.0"), ("{{ 7|round(1) }}", "7"), ("{{ true is integer }}", "False"), ("{{ 3 is integer }}", "True"),
            ("{{ [1,2,3]|sum }}", "6"), ("{{ [{'a':1},{'a':2}]|sum(attribute='a') }}", "3"), ("{{ [1,2]|sum(start=10) }}", "13"),
            ("{{ ['b','A','a']|max }}", "b"), ("{{ ['b','A','a']|min }}", "A"), ("{{ ['a','A']|max }}", "a"),
            ("{{ ['a','B']|max(case_sensitive=true) }}", "a"), ("{{ []|max }}", ""), ("{{ [{'n':3},{'n':1}]|min(attribute='n') }}", "{'n': 1}"),
            ("{{ '<a href=\"x\">&\\'</a>'|e }}", "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt;"), ("{{ {'a':1}|attr('a') }}", ""),
            ("{{ [1.5, 2]|sum }}", "3.5"),
            ("{{ none[0:1] }}", ""), ("{{ 1.5[0:1] }}", ""), ("{{ +'a' }}", nil), ("{{ 0 ** -1 }}", nil), ("{{ +true }}", "1"), ("{{ [1, 2]|tojson(indent=100000000000) }}", nil), ("{{ {}|dictsort }}", "[]"),
            ("{{ 1.5|round(400) }}", nil), ("{{ 1|string * 3 }}", "111"), ("{{ x.__class__ }}", ""),
        ]
        for (text, want) in cases {
            let template = ChatTemplate(template: text)
            guard template.kind == .jinja else { continue }  // refused at parse: fine
            let start = Date()
            let out = try? template.render(messages: [ChatMessage(role: "user", content: "x")], addGenerationPrompt: false)
            #expect(Date().timeIntervalSince(start) < 5, "\(text.prefix(60)) took \(Date().timeIntervalSince(start)) s")
            if let want { #expect(out == want, "\(text.prefix(60)): \(out ?? "an error")") }
            if want == nil, text.count > 1000 { #expect(out == nil, "\(text.prefix(60)) rendered") }
        }
    }

    /// Malformed templates throw at parse (never trap) and fall back to the family's native rendering.
    @Test func malformedTemplatesFallBack() throws {
        for text in ["{% if %}", "{{ 'open", "{% for x in y %}", "{{ (((( }}", "{% endif %}", "{{ }}", "{%", "{{ a.}}", "{{ x[ }}",
                     "{{ 1 + }}", "{% set %}", "{% macro %}", "{{ 'a' | }}", "{{ x is }}", "<|im_start|>{% if x %}"] {
            let t = ChatTemplate(template: text)
            #expect(t.kind != .jinja && t.parseError != nil, "\(text)")
        }
        let chatml = ChatTemplate(template: "<|im_start|>{% if x %}")
        #expect(chatml.kind == .chatML)
        #expect(try chatml.render(messages: [ChatMessage(role: "user", content: "Hi")], addGenerationPrompt: true)
                == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    /// Turn-ending tokens: the family's marker, the EOS, and Gemma's `<end_of_turn>`.
    @Test func endOfTurnTokens() throws {
        let gemma = try String(contentsOf: JinjaGoldens.directory.appendingPathComponent("gemma.jinja"), encoding: .utf8)
        let t = ChatTemplate(template: gemma, bosToken: "<bos>", eosToken: "<eos>")
        #expect(t.endOfTurnTokens == ["<|im_end|>", "<eos>", "<end_of_turn>"])
        let llama = try String(contentsOf: JinjaGoldens.directory.appendingPathComponent("llama31.jinja"), encoding: .utf8)
        #expect(ChatTemplate(template: llama, eosToken: "<|eot_id|>").endOfTurnTokens == ["<|eot_id|>"])
    }
}
