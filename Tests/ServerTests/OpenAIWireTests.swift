import Foundation
import Hummingbird
import ServingAPI
import Testing

@testable import HTTPFront
@testable import Server

/// The response types through the one encoder: OpenAI's snake_case names, explicit nulls where OpenAI sends
/// null, sorted keys (the same bytes every time), text escaped as JSON needs and nothing more.
@Suite struct OpenAIWireTests {
    @Test func completionChunksCarryNullFinishReasonAndLogprobs() {
        let running = OpenAIWire.encode(TextCompletion(id: "cmpl-1", object: "text_completion", created: 7, model: "m",
                                                       choices: [TextChoice(text: "a\"b\\c\n/é\u{01}", finishReason: nil)]))
        #expect(running == #"{"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"a\"b\\c\n/é\u0001"}],"created":7,"id":"cmpl-1","model":"m","object":"text_completion"}"#)
        let done = OpenAIWire.encode(TextCompletion(id: "cmpl-1", object: "text_completion", created: 7, model: "m",
                                                    choices: [TextChoice(text: "x", finishReason: "length")],
                                                    usage: Usage(prompt: 3, completion: 1)))
        #expect(done == #"{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":"x"}],"created":7,"id":"cmpl-1","model":"m","object":"text_completion","usage":{"completion_tokens":1,"prompt_tokens":3,"total_tokens":4}}"#)
    }

    @Test func chatCompletionAndChunks() {
        let whole = OpenAIWire.encode(ChatCompletion(id: "chatcmpl-1", object: "chat.completion", created: 7, model: "m",
                                                     choices: [ChatChoice(message: AssistantMessage(content: "hi"), finishReason: "stop")],
                                                     usage: Usage(prompt: 2, completion: 5)))
        #expect(whole == #"{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"hi","role":"assistant"}}],"created":7,"id":"chatcmpl-1","model":"m","object":"chat.completion","usage":{"completion_tokens":5,"prompt_tokens":2,"total_tokens":7}}"#)
        func chunk(_ choice: ChatChunkChoice) -> String {
            OpenAIWire.encode(ChatCompletionChunk(id: "c", object: "chat.completion.chunk", created: 1, model: "m", choices: [choice]))
        }
        #expect(chunk(ChatChunkChoice(delta: ChatDelta(role: "assistant", content: ""), finishReason: nil))
                == #"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"c","model":"m","object":"chat.completion.chunk"}"#)
        #expect(chunk(ChatChunkChoice(delta: ChatDelta(content: "x"), finishReason: nil)).contains(#""delta":{"content":"x"},"finish_reason":null"#))
        #expect(chunk(ChatChunkChoice(delta: ChatDelta(), finishReason: "stop")).contains(#""delta":{},"finish_reason":"stop""#))
        let usage = OpenAIWire.encode(ChatCompletionChunk(id: "c", object: "chat.completion.chunk", created: 1, model: "m", choices: [],
                                                          usage: Usage(prompt: 1, completion: 2)))
        #expect(usage == #"{"choices":[],"created":1,"id":"c","model":"m","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":1,"total_tokens":3}}"#)
    }

    /// Log-probabilities in both shapes: chat's records (with `refusal` null) and completions' parallel lists, whose
    /// offsets run on from the characters before them and whose alternatives include the sampled token; −∞ as −9999.
    @Test func logprobsShapes() {
        let a = TokenLogprob(token: "Hé", logprob: -0.25, bytes: [72, 195, 169],
                             topLogprobs: [TopLogprob(token: "Hé", logprob: -0.25, bytes: [72, 195, 169]),
                                           TopLogprob(token: "x", logprob: -1.5, bytes: [120])])
        let b = TokenLogprob(token: "!", logprob: TokenLogprob.finite(-.infinity), bytes: [33],
                             topLogprobs: [TopLogprob(token: "?", logprob: -0.5, bytes: [63])])
        let chat = OpenAIWire.encode(ChatChunkChoice(delta: ChatDelta(content: "Hé!"), finishReason: nil, logprobs: ChatLogprobs(content: [a, b])))
        #expect(chat == #"{"delta":{"content":"Hé!"},"finish_reason":null,"index":0,"logprobs":{"content":[{"bytes":[72,195,169],"logprob":-0.25,"token":"Hé","top_logprobs":[{"bytes":[72,195,169],"logprob":-0.25,"token":"Hé"},{"bytes":[120],"logprob":-1.5,"token":"x"}]},{"bytes":[33],"logprob":-9999,"token":"!","top_logprobs":[{"bytes":[63],"logprob":-0.5,"token":"?"}]}],"refusal":null}}"#)
        let text = OpenAIWire.encode(TextChoice(text: "Hé!", finishReason: "length", logprobs: CompletionLogprobs([a, b], offset: 4)))
        #expect(text == #"{"finish_reason":"length","index":0,"logprobs":{"text_offset":[4,6],"token_logprobs":[-0.25,-9999],"tokens":["Hé","!"],"top_logprobs":[{"Hé":-0.25,"x":-1.5},{"!":-9999,"?":-0.5}]},"text":"Hé!"}"#)
        // The collector: a stream's chunks take what came since the last one, offsets running on.
        var c = ChoiceRenderState(enabled: true)
        c.add(a)
        let first = c.takeCompletion()
        c.add(b)
        #expect(first?.textOffset == [0] && c.takeCompletion()?.textOffset == [2])
        var off = ChoiceRenderState(enabled: false)
        off.add(a)
        #expect(off.takeChat() == nil && off.takeCompletion() == nil)
    }

    /// Tool-call answers: content null with the calls (arguments exactly as generated), OpenAI's finish reasons; a
    /// stream names each call in its first chunk and sends its arguments in pieces as they come; text that never began
    /// a call stays text.
    @Test func toolCallShapes() {
        let required = CompletionRenderer(id: "chatcmpl-ab12", created: 7, model: "m", chat: true, tools: .required)
        var none = ChoiceRenderState(enabled: false)
        let text = #"[ {"name":"f", "parameters": {"b":[1,"]"], "a":"x\"y"}} ,{"name":"g","parameters":{}}]"#
        let whole = required.whole([.init(text: text, finish: "stop", logprobs: none)], usage: Usage(prompt: 1, completion: 2))
        #expect(whole == #"{"choices":[{"finish_reason":"tool_calls","index":0,"logprobs":null,"message":{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"{\"b\":[1,\"]\"], \"a\":\"x\\\"y\"}","name":"f"},"id":"call_ab12_0_0","type":"function"},{"function":{"arguments":"{}","name":"g"},"id":"call_ab12_0_1","type":"function"}]}}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion","usage":{"completion_tokens":2,"prompt_tokens":1,"total_tokens":3}}"#)
        // Not the shape, though finished: the text, as it is.
        for (t, finish) in [("[{\"name\":\"f\"}]", "stop"), ("[]", "stop"), (text + "x", "stop")] {
            let w = required.whole([.init(text: t, finish: finish, logprobs: none)], usage: Usage(prompt: 1, completion: 1))
            #expect(w.contains("\"content\":") && !w.contains("tool_calls") && w.contains("\"finish_reason\":\"\(finish)\""), "\(w)")
        }
        // Cut short: what a stream of it sends — the calls begun, each with its arguments so far — with its finish reason;
        // never the call syntax as content.
        for (t, calls) in [(text, [#"{"function":{"arguments":"{\"b\":[1,\"]\"], \"a\":\"x\\\"y\"}","name":"f"},"id":"call_ab12_0_0","type":"function"}"#,
                                   #"{"function":{"arguments":"{}","name":"g"},"id":"call_ab12_0_1","type":"function"}"#]),
                           (#"[{"name":"f","parameters":{"b":[1,"#, [#"{"function":{"arguments":"{\"b\":[1,","name":"f"},"id":"call_ab12_0_0","type":"function"}"#]),
                           (#"[{"name":"#, [])] {
            let w = required.whole([.init(text: t, finish: "length", logprobs: none)], usage: Usage(prompt: 1, completion: 1))
            let message = calls.isEmpty ? #""message":{"content":null,"role":"assistant"}"#
                : #""message":{"content":null,"role":"assistant","tool_calls":["# + calls.joined(separator: ",") + "]}"
            #expect(w.contains(message) && w.contains(#""finish_reason":"length""#), "\(w)")
        }
        // Streamed: the call named with its first piece of arguments, then the next pieces (trailing whitespace held
        // until more follows; the named function's arguments are the answer trimmed), then the finish.
        let named = CompletionRenderer(id: "chatcmpl-ab12", created: 7, model: "m", chat: true, tools: .named("f"))
        #expect(named.chunk(0, text: " ", finish: nil, logprobs: &none).isEmpty)
        #expect(named.chunk(0, text: "{\"a\": ", finish: nil, logprobs: &none)
                == [#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":","name":"f"},"id":"call_ab12_0_0","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#])
        #expect(named.chunk(0, text: "1}\n", finish: nil, logprobs: &none)
                == [#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":" 1}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#])
        let end = named.chunk(0, text: nil, finish: "stop", logprobs: &none)
        #expect(end == [#"{"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#])
        #expect(none.heldText.isEmpty)

        // Required, cut into pieces anywhere: the pieces add up to the whole answer's calls, each named first.
        for cut in stride(from: 1, to: text.utf8.count, by: 3) {
            var state = ChoiceRenderState(enabled: false)
            let bytes = Array(text.utf8)
            var chunks = required.chunk(0, text: String(decoding: bytes[..<cut], as: UTF8.self), finish: nil, logprobs: &state)
            chunks += required.chunk(0, text: String(decoding: bytes[cut...], as: UTF8.self), finish: nil, logprobs: &state)
            chunks += required.chunk(0, text: nil, finish: "stop", logprobs: &state)
            var calls: [(id: String, name: String, arguments: String)] = []
            var finishes: [String] = []
            for chunk in chunks {
                let choice = (try? JSONSerialization.jsonObject(with: Data(chunk.utf8)) as? [String: Any]).flatMap { ($0["choices"] as? [[String: Any]])?.first }
                if let f = choice?["finish_reason"] as? String { finishes.append(f) }
                for d in (choice?["delta"] as? [String: Any])?["tool_calls"] as? [[String: Any]] ?? [] {
                    let f = d["function"] as? [String: Any]
                    if let id = d["id"] as? String {
                        #expect(d["index"] as? Int == calls.count)
                        calls.append((id, f?["name"] as? String ?? "?", ""))
                    }
                    calls[calls.count - 1].arguments += f?["arguments"] as? String ?? ""
                }
            }
            #expect(calls.map(\.id) == ["call_ab12_0_0", "call_ab12_0_1"] && calls.map(\.name) == ["f", "g"], "\(chunks)")
            #expect(calls.map(\.arguments) == [#"{"b":[1,"]"], "a":"x\"y"}"#, "{}"] && finishes == ["tool_calls"], "\(chunks)")
        }
        // A call the incremental scan could not follow (a leading no-break space, which the whole answer's trim takes):
        // nothing until the end, then the call whole and the finish.
        var nbsp = ChoiceRenderState(enabled: false)
        #expect(named.chunk(0, text: "\u{00A0}{\"a\": 1}", finish: nil, logprobs: &nbsp).isEmpty)
        #expect(named.chunk(0, text: nil, finish: "stop", logprobs: &nbsp)
                == [#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\": 1}","name":"f"},"id":"call_ab12_0_0","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#,
                    #"{"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#])
        // Cut short after a call began: the stream ends with what it sent and "length".
        var short = ChoiceRenderState(enabled: false)
        let begun = required.chunk(0, text: #"[{"name":"f","parameters":{"b":"#, finish: nil, logprobs: &short)
        #expect(begun.count == 1 && begun[0].contains(#""arguments":"{\"b\":""#), "\(begun)")
        #expect(required.chunk(0, text: nil, finish: "length", logprobs: &short)
                == [#"{"choices":[{"delta":{},"finish_reason":"length","index":0,"logprobs":null}],"created":7,"id":"chatcmpl-ab12","model":"m","object":"chat.completion.chunk"}"#])

        // auto: a call after the marker; text that leaves the marker streams from then on.
        let auto = CompletionRenderer(id: "chatcmpl-ab12", created: 7, model: "m", chat: true, tools: .auto)
        let call = auto.whole([.init(text: ToolCallMode.marker + #"[{"name":"f","parameters":{}}]"#, finish: "stop", logprobs: none)], usage: Usage(prompt: 1, completion: 1))
        #expect(call.contains(#""tool_calls":[{"function":{"arguments":"{}","name":"f"}"#) && call.contains(#""finish_reason":"tool_calls""#), "\(call)")
        var plain = ChoiceRenderState(enabled: false)
        #expect(auto.chunk(0, text: "<tool", finish: nil, logprobs: &plain).isEmpty)
        let out = auto.chunk(0, text: "s are", finish: nil, logprobs: &plain)
        #expect(out.count == 1 && out[0].contains(#""content":"<tools are""#), "\(out)")
        #expect(auto.chunk(0, text: " fun", finish: nil, logprobs: &plain).first?.contains(#""content":" fun""#) == true)
        let fin = auto.chunk(0, text: nil, finish: "stop", logprobs: &plain)
        #expect(fin.count == 1 && fin[0].contains(#""finish_reason":"stop""#) && !fin[0].contains("tool_calls"), "\(fin)")
        // auto, a call: held until the marker is whole, then streamed as required's.
        var marked = ChoiceRenderState(enabled: false)
        #expect(auto.chunk(0, text: "<tool_ca", finish: nil, logprobs: &marked).isEmpty)
        let first = auto.chunk(0, text: #"ll>[{"name":"f","parameters":{"#, finish: nil, logprobs: &marked)
        #expect(first.count == 1 && first[0].contains(#""arguments":"{","name":"f"},"id":"call_ab12_0_0""#), "\(first)")
        let last = auto.chunk(0, text: "}}]", finish: nil, logprobs: &marked) + auto.chunk(0, text: nil, finish: "stop", logprobs: &marked)
        #expect(last.count == 2 && last[0].contains(#""arguments":"}""#) && last[1].contains(#""finish_reason":"tool_calls""#), "\(last)")
    }

    @Test func modelsListAndErrors() {
        let list = OpenAIWire.encode(ModelList(data: [
            ModelCard(id: "base", created: 5, root: "base", parent: nil, maxModelLen: 64),
            ModelCard(id: "a/b", created: 5, root: "a/b", parent: "base", maxModelLen: 64),
        ]))
        #expect(list == #"{"data":[{"created":5,"id":"base","max_model_len":64,"object":"model","owned_by":"dlora","parent":null,"root":"base"},{"created":5,"id":"a/b","max_model_len":64,"object":"model","owned_by":"dlora","parent":"base","root":"a/b"}],"object":"list"}"#)
        #expect(APIError(.notFound, "no such \"model\"").json
                == #"{"error":{"code":null,"message":"no such \"model\"","param":null,"type":"not_found_error"}}"#)
        #expect(APIError.invalid("max_tokens", "too many", code: "context_length_exceeded").json
                == #"{"error":{"code":"context_length_exceeded","message":"too many","param":"max_tokens","type":"invalid_request_error"}}"#)
        #expect(OpenAIWire.encode(HealthStatus()) == #"{"status":"ok"}"#)
    }

    /// Every rendered string is JSON that decodes back to the text it was given (control characters, quotes,
    /// backslashes, non-ASCII, U+2028), whatever the text.
    @Test func textRoundTripsThroughJSON() throws {
        var rng = SystemRandomNumberGenerator()
        let alphabet: [Unicode.Scalar] = ["\"", "\\", "/", "\n", "\r", "\t", "\u{0}", "\u{1F}", "\u{7F}", "é", "\u{2028}", "😀", "a", " "]
        for _ in 0..<200 {
            let text = String(String.UnicodeScalarView((0..<Int.random(in: 0..<24, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }))
            let json = OpenAIWire.encode(TextCompletion(id: "i", object: "text_completion", created: 0, model: text,
                                                        choices: [TextChoice(text: text, finishReason: nil)]))
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            let choice = try #require((object["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == text && object["model"] as? String == text)
            #expect(choice["finish_reason"] is NSNull && choice["logprobs"] is NSNull)
        }
    }
}
