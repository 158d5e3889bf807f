import Foundation
import Hummingbird
import HummingbirdTesting
import ServingAPI
import Testing

@testable import HTTPFront
@testable import Server

/// `/v1/responses`: translated into the chat request it stands for (ResponsesRequest) and answered in the Responses
/// API's shapes. The official SDK's side (whole, streamed, tools, `responses.parse`, replica and router) is
/// Tests/python/test_openai_client.py's `check_responses`; here, the translation's exact text, the events' exact
/// order, and the tiny model's answers against the chat endpoint's.
@Suite struct ResponsesAPITests {
    /// The chat body a Responses body becomes: instructions first, input items as messages (a function call and its
    /// output as chat's tool call and tool message), flat tools nested, `text.format` as `response_format`, and the
    /// members whose order matters (a schema's properties, the tools' fields) copied as written.
    @Test func translatesIntoTheChatBody() throws {
        let body = #"""
        {"model":"m","instructions":"Be brief.","max_output_tokens":7,"temperature":0.5,
         "input":[{"role":"developer","content":"Rules."},{"type":"message","role":"user","content":[{"type":"input_text","text":"Hi "},{"type":"input_text","text":"there"}]},
                  {"type":"function_call","call_id":"c1","name":"f","arguments":"{\"z\":1}"},{"type":"function_call","call_id":"c2","name":"g","arguments":"{}"},
                  {"type":"function_call_output","call_id":"c1","output":"ok"}],
         "tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"string"}}},"strict":true}],
         "tool_choice":{"type":"function","name":"f"},
         "text":{"format":{"type":"json_schema","name":"out","schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}}}}
        """#
        let t = try ResponsesRequest.translate(Data(body.utf8))
        let chat = String(decoding: t.chatBody, as: UTF8.self)
        #expect(chat.contains(#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"string"}}},"strict":true}}]"#), "\(chat)")
        #expect(chat.contains(#""response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}}}"#), "\(chat)")
        #expect(chat.contains(#""max_tokens":7"#) && chat.contains(#""temperature":0.5"#) && !chat.contains("max_output_tokens"), "\(chat)")
        let chatObject = try jsonObject(chat)
        let messages = try #require(chatObject["messages"] as? [[String: Any]])
        #expect(messages.map { $0["role"] as? String } == ["system", "system", "user", "assistant", "tool"])
        #expect(messages[0]["content"] as? String == "Be brief." && messages[1]["content"] as? String == "Rules.")
        #expect(messages[2]["content"] as? String == "Hi there")
        let calls = try #require(messages[3]["tool_calls"] as? [[String: Any]])
        #expect(calls.map { $0["id"] as? String } == ["c1", "c2"] && (calls[0]["function"] as? [String: Any])?["arguments"] as? String == #"{"z":1}"#)
        #expect(messages[4]["tool_call_id"] as? String == "c1" && messages[4]["content"] as? String == "ok")
        #expect((chatObject["tool_choice"] as? [String: Any]).flatMap { ($0["function"] as? [String: Any])?["name"] as? String } == "f")
        #expect(!t.stream && t.echo.fields["instructions"] as? String == "Be brief." && t.echo.fields["max_output_tokens"] as? Int == 7)
    }

    /// What cannot be served is refused before anything runs, naming the parameter.
    @Test func refusesWhatItCannotServe() {
        let cases: [(String, String?)] = [
            (#"{"model":"m"}"#, "input"),
            (#"{"model":"m","input":"x","store":true}"#, "store"),
            (#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#, "previous_response_id"),
            (#"{"model":"m","input":"x","background":true}"#, "background"),
            (#"{"model":"m","input":"x","reasoning":{"effort":"high"}}"#, "reasoning"),
            (#"{"model":"m","input":"x","include":["reasoning.encrypted_content"]}"#, "include"),
            (#"{"model":"m","input":"x","truncation":"auto"}"#, "truncation"),
            (#"{"model":"m","input":"x","best_of":2}"#, "best_of"),
            (#"{"model":"m","input":"x","input":"y"}"#, "input"),
            (#"{"model":"m","input":[]}"#, "input"),
            (#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#, "input[0].role"),
            (#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"http://x"}]}]}"#, "input[0].content[0].type"),
            (#"{"model":"m","input":[{"type":"reasoning","summary":[]}]}"#, "input[0].type"),
            (#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#, "input[0]"),
            // The output of a call the conversation never made (OpenAI: "No tool call found ..."); and one before its call.
            (#"{"model":"m","input":[{"type":"function_call_output","call_id":"c1","output":"42"}]}"#, "input[0].call_id"),
            (#"{"model":"m","input":[{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c2","output":"4"}]}"#,
             "input[1].call_id"),
            (#"{"model":"m","input":[{"type":"function_call_output","call_id":"c1","output":"4"},{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"}]}"#,
             "input[0].call_id"),
            (#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#, "tools[0].type"),
            (#"{"model":"m","input":"x","tools":[{"type":"function","name":"f","extra":1}]}"#, "tools[0].extra"),
            (#"{"model":"m","input":"x","tool_choice":{"type":"allowed_tools"}}"#, "tool_choice"),
            (#"{"model":"m","input":"x","text":{"format":{"type":"grammar"}}}"#, "text.format.type"),
            (#"{"model":"m","input":"x","text":{"format":"json"}}"#, "text.format"),
            (#"{"model":"m","input":"x","temperature":1e999}"#, "temperature"),
            (#"[1]"#, nil),
            (#"{"model":"m","input":"x","conversation":"conv_1"}"#, "conversation"),
            (#"{"model":"m","input":"x","prompt":{"id":"pmpt_1"}}"#, "prompt"),
        ]
        for (body, param) in cases {
            #expect(throws: ResponsesRequestError.self, "\(body)") { try ResponsesRequest.translate(Data(body.utf8)) }
            do {
                _ = try ResponsesRequest.translate(Data(body.utf8))
            } catch {
                #expect(error.param == param, "\(body): \(error)")
            }
        }
        // The two that need state this server does not keep say what to send instead.
        for (body, advice) in [(#"{"model":"m","input":"x","conversation":"conv_1"}"#, "previous_response_id"),
                               (#"{"model":"m","input":"x","prompt":{"id":"pmpt_1"}}"#, "the prompt's text")] {
            do {
                _ = try ResponsesRequest.translate(Data(body.utf8))
            } catch {
                #expect(error.message.contains(advice), "\(body): \(error.message)")
            }
        }
    }

    /// A stream's frames: typed events numbered from 0, the message opened at its first text, a tool-call answer as
    /// function_call items (each added when its name is known, its arguments in pieces), the whole response last, and
    /// no `[DONE]`.
    @Test func streamsTypedEvents() throws {
        let echo = ResponsesEcho(fields: ["instructions": "Be brief."])
        let text = CompletionRenderer(id: "resp_ab", created: 5, model: "m", chat: true, responses: echo)
        var states = [ChoiceRenderState(enabled: false)]
        var frames = text.openingFrames(1, states: &states)
        frames += text.frames(0, text: "Hel", finish: nil, state: &states[0])
        frames += text.frames(0, text: "lo", finish: nil, state: &states[0])
        frames += text.frames(0, text: nil, finish: "length", state: &states[0])
        frames += text.closingFrames(usage: Usage(prompt: 4, completion: 2), includeUsage: false, states: &states)
        let events = try frames.map(Self.event)
        #expect(events.map(\.type) == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                                       "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
                                       "response.content_part.done", "response.output_item.done", "response.incomplete"])
        #expect(events.map { $0.payload["sequence_number"] as? Int } == Array(0..<10))
        #expect(events[4].payload["delta"] as? String == "Hel" && events[6].payload["text"] as? String == "Hello")
        #expect(events[2].payload["item"].flatMap { ($0 as? [String: Any])?["id"] as? String } == "msg_ab")
        let final = try #require(events[9].payload["response"] as? [String: Any])
        #expect(final["status"] as? String == "incomplete" && (final["incomplete_details"] as? [String: Any])?["reason"] as? String == "max_output_tokens")
        #expect(final["instructions"] as? String == "Be brief." && (final["usage"] as? [String: Any])?["total_tokens"] as? Int == 6)
        let whole = try jsonObject(text.whole([.init(text: "Hello", finish: "length", logprobs: ChoiceRenderState(enabled: false))], usage: Usage(prompt: 4, completion: 2)))
        #expect(whole["output"] as? NSArray == final["output"] as? NSArray && whole["object"] as? String == "response")

        let tool = CompletionRenderer(id: "resp_cd", created: 5, model: "m", chat: true, tools: .named("f"), responses: echo)
        var s = [ChoiceRenderState(enabled: false)]
        var t = tool.openingFrames(1, states: &s)
        t += tool.frames(0, text: "{\"a\":", finish: nil, state: &s[0])
        t += tool.frames(0, text: " 1}", finish: nil, state: &s[0])
        t += tool.frames(0, text: nil, finish: "stop", state: &s[0])
        t += tool.closingFrames(usage: Usage(prompt: 1, completion: 3), includeUsage: true, states: &s)
        let te = try t.map(Self.event)
        #expect(te.map(\.type) == ["response.created", "response.in_progress", "response.output_item.added", "response.function_call_arguments.delta",
                                   "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
                                   "response.completed"])
        #expect(te[3].payload["delta"] as? String == "{\"a\":" && te[4].payload["delta"] as? String == " 1}" && te[3].payload["item_id"] as? String == "fc_cd_0")
        #expect((te[2].payload["item"] as? [String: Any])?["status"] as? String == "in_progress")
        #expect(te[5].payload["arguments"] as? String == "{\"a\": 1}" && (te[6].payload["item"] as? [String: Any])?["status"] as? String == "completed")
        let item = try #require(((te[7].payload["response"] as? [String: Any])?["output"] as? [[String: Any]])?.first)
        #expect(item["type"] as? String == "function_call" && item["name"] as? String == "f" && item["arguments"] as? String == "{\"a\": 1}")
        #expect(item["call_id"] as? String == "call_cd_0_0" && item["id"] as? String == "fc_cd_0")
        #expect(!t.joined().contains("[DONE]"))

        // Cut short after the call began: done as far as it was sent, the response incomplete with that item.
        let req = CompletionRenderer(id: "resp_ef", created: 5, model: "m", chat: true, tools: .required, responses: echo)
        var r = [ChoiceRenderState(enabled: false)]
        var u = req.openingFrames(1, states: &r)
        u += req.frames(0, text: #"[{"name":"g","parameters":{"q":"#, finish: nil, state: &r[0])
        u += req.frames(0, text: nil, finish: "length", state: &r[0])
        u += req.closingFrames(usage: Usage(prompt: 1, completion: 9), includeUsage: false, states: &r)
        let ue = try u.map(Self.event)
        #expect(ue.map(\.type) == ["response.created", "response.in_progress", "response.output_item.added", "response.function_call_arguments.delta",
                                   "response.function_call_arguments.done", "response.output_item.done", "response.incomplete"])
        let cut = try #require(((ue[6].payload["response"] as? [String: Any])?["output"] as? [[String: Any]])?.first)
        #expect(cut["type"] as? String == "function_call" && cut["arguments"] as? String == #"{"q":"# && cut["status"] as? String == "incomplete")

        // A call the incremental scan could not follow (a leading no-break space, which the whole answer's trim takes)
        // is sent whole at the end: added, its arguments in one piece, done.
        var w = [ChoiceRenderState(enabled: false)]
        var v = tool.openingFrames(1, states: &w)
        v += tool.frames(0, text: "\u{00A0}{\"a\": 1}", finish: nil, state: &w[0])
        #expect(v.count == 2)
        v += tool.frames(0, text: nil, finish: "stop", state: &w[0])
        let ve = try v.map(Self.event)
        #expect(ve.map(\.type) == ["response.created", "response.in_progress", "response.output_item.added", "response.function_call_arguments.delta",
                                   "response.function_call_arguments.done", "response.output_item.done"])
        #expect(ve[3].payload["delta"] as? String == "{\"a\": 1}" && (ve[5].payload["item"] as? [String: Any])?["status"] as? String == "completed")
        #expect((ve[2].payload["item"] as? [String: Any])?["arguments"] as? String == "" && ve[4].payload["name"] as? String == "f")
    }

    /// The store keeps responses up to its bytes, forgetting the least recently used first (a read counts as a use),
    /// refuses one larger than itself, and deletes.
    @Test func storeEvictsLeastRecentlyUsed() {
        func entry(_ n: Int) -> StoredResponse {
            StoredResponse(object: Data(repeating: 0x61, count: n), conversation: Data(), inputItems: Data())
        }
        let store = ResponseStore(capacityBytes: 1000)  // each entry below: 300 bytes + 128 of bookkeeping
        #expect(store.put("a", entry(300)) && store.put("b", entry(300)))
        #expect(store.get("a") != nil)  // a is now more recent than b
        #expect(store.put("c", entry(300)))
        #expect(store.get("b") == nil && store.get("a") != nil && store.get("c") != nil && store.count == 2)
        #expect(store.storedBytes == 2 * 428)
        #expect(!store.put("huge", entry(2000)) && store.get("huge") == nil && store.count == 2)
        #expect(store.delete("a") && !store.delete("a") && store.get("a") == nil && store.storedBytes == 428)
        #expect(store.put("c", entry(100)) && store.storedBytes == 228)  // replaced, not added

        // Churn: 20,000 puts into room for 10 entries, one kept in use throughout; the accounting stays exact and
        // the entry in use is never the one forgotten.
        let churn = ResponseStore(capacityBytes: 10 * 228)
        churn.put("kept", entry(100))
        for i in 0..<20_000 {
            #expect(churn.put("r\(i)", entry(100)))
            if i % 7 == 0 { #expect(churn.get("kept") != nil, "\(i)") }
        }
        #expect(churn.count == 10 && churn.storedBytes == 10 * 228 && churn.get("kept") != nil && churn.get("r19999") != nil && churn.get("r0") == nil)
    }

    /// With a store, a finished answer is kept (`store` true unless false) with its conversation, and
    /// `previous_response_id` continues it: the new instructions first (the old ones not carried over, as OpenAI
    /// does), then the stored conversation (its input and the answer, a tool call as chat's tool call), then the
    /// new input. An unknown id is OpenAI's `previous_response_not_found`; `store` must be a Boolean.
    @Test func continuesAStoredResponse() throws {
        let store = ResponseStore(capacityBytes: 1 << 20)
        let first = try ResponsesRequest.translate(Data(#"{"model":"m","instructions":"Old rules.","input":"What is 2+2?"}"#.utf8), store: store)
        #expect(first.echo.fields["store"] as? Bool == true && first.echo.record != nil)
        let r1 = CompletionRenderer(id: "resp_one", created: 5, model: "m", chat: true, responses: first.echo)
        let whole = try jsonObject(r1.whole([.init(text: "4", finish: "stop", logprobs: ChoiceRenderState(enabled: false))], usage: Usage(prompt: 9, completion: 1)))
        #expect(whole["store"] as? Bool == true)
        let kept = try #require(store.get("resp_one"))
        #expect(try jsonObject(String(decoding: kept.object, as: UTF8.self))["id"] as? String == "resp_one")

        let second = try ResponsesRequest.translate(Data(#"{"model":"m","instructions":"New rules.","previous_response_id":"resp_one","input":[{"role":"user","content":"And 3+3?"}],"tools":[{"type":"function","name":"add"}]}"#.utf8), store: store)
        #expect(second.echo.fields["previous_response_id"] as? String == "resp_one")
        let messages = try #require(try jsonObject(String(decoding: second.chatBody, as: UTF8.self))["messages"] as? [[String: Any]])
        #expect(messages.map { $0["role"] as? String } == ["system", "user", "assistant", "user"])
        #expect(messages.map { $0["content"] as? String } == ["New rules.", "What is 2+2?", "4", "And 3+3?"])
        // Streamed this time, and answered with a tool call: stored as the assistant's tool call.
        let r2 = CompletionRenderer(id: "resp_two", created: 6, model: "m", chat: true, tools: .named("add"), responses: second.echo)
        var states = [ChoiceRenderState(enabled: false)]
        _ = r2.openingFrames(1, states: &states)
        _ = r2.frames(0, text: #"{"a": 3, "b": 3}"#, finish: nil, state: &states[0])
        _ = r2.frames(0, text: nil, finish: "stop", state: &states[0])
        #expect(store.get("resp_two") == nil)  // not before the response is finished
        _ = r2.closingFrames(usage: Usage(prompt: 20, completion: 8), includeUsage: false, states: &states)
        let third = try ResponsesRequest.translate(Data(#"{"model":"m","previous_response_id":"resp_two","store":false,"input":[{"type":"function_call_output","call_id":"call_two_0_0","output":"6"}]}"#.utf8), store: store)
        #expect(third.echo.record == nil && third.echo.fields["store"] as? Bool == false)
        let m3 = try #require(try jsonObject(String(decoding: third.chatBody, as: UTF8.self))["messages"] as? [[String: Any]])
        #expect(m3.map { $0["role"] as? String } == ["user", "assistant", "user", "assistant", "tool"])
        let call = try #require((m3[3]["tool_calls"] as? [[String: Any]])?.first)
        #expect(call["id"] as? String == "call_two_0_0" && (call["function"] as? [String: Any])?["name"] as? String == "add")
        #expect(m3[4]["tool_call_id"] as? String == "call_two_0_0" && m3[4]["content"] as? String == "6")
        // input_items: the request's own items, ids added, newest first by default.
        let page = try jsonObject(String(decoding: try #require(try store.inputItemsPage("resp_two", order: nil, limit: nil, after: nil)), as: UTF8.self))
        let items = try #require(page["data"] as? [[String: Any]])
        #expect(items.count == 1 && items[0]["id"] as? String == "msg_two_in0" && page["has_more"] as? Bool == false)
        #expect(((items[0]["content"] as? [[String: Any]])?.first)?["type"] as? String == "input_text")

        for (body, param, code) in [(#"{"model":"m","input":"x","previous_response_id":"resp_gone"}"#, "previous_response_id", "previous_response_not_found"),
                                    (#"{"model":"m","input":"x","store":1}"#, "store", nil), (#"{"model":"m","input":"x","previous_response_id":7}"#, "previous_response_id", nil)] {
            do {
                _ = try ResponsesRequest.translate(Data(body.utf8), store: store)
                Issue.record("accepted \(body)")
            } catch {
                #expect(error.param == param && error.code == code, "\(body): \(error)")
            }
        }
    }

    /// One frame as (its `event:` name, its payload), the name checked against the payload's `type`.
    static func event(_ frame: String) throws -> (type: String, payload: [String: Any]) {
        let lines = frame.split(separator: "\n")
        #expect(frame.hasSuffix("\n\n") && lines.count == 2 && lines[0].hasPrefix("event: ") && lines[1].hasPrefix("data: "), "\(frame)")
        let payload = try jsonObject(String(lines[1].dropFirst(6)))
        #expect(payload["type"] as? String == String(lines[0].dropFirst(7)), "\(frame)")
        return (String(lines[0].dropFirst(7)), payload)
    }

    /// Through the server, on the tiny model: the answer is the chat endpoint's (text, usage, finish), streamed as its
    /// deltas; a schema's properties come in the order the Responses body lists them; errors name Responses
    /// parameters (a chat parser's `max_tokens` as `max_output_tokens`).
    @Test func servesTheChatAnswer() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let chat = try await client.post("/v1/chat/completions", #"{"model":"tiny-llama","max_tokens":9,"temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hello"}]}"#)
            let c = try jsonObject(chat.1)
            let choice = try #require((c["choices"] as? [[String: Any]])?.first)
            let body = #"{"model":"tiny-llama","max_output_tokens":9,"temperature":0,"instructions":"Be brief.","input":"hello""#
            let r = try await client.post("/v1/responses", body + "}")
            #expect(r.0 == 200, "\(r.1)")
            let o = try jsonObject(r.1)
            let output = try #require((o["output"] as? [[String: Any]])?.first)
            let text = ((output["content"] as? [[String: Any]])?.first?["text"] as? String)
            #expect(text != nil && text == (choice["message"] as? [String: Any])?["content"] as? String, "\(r.1)")
            #expect((o["id"] as? String)?.hasPrefix("resp_") == true && o["status"] as? String == (choice["finish_reason"] as? String == "length" ? "incomplete" : "completed"))
            let usage = try #require(o["usage"] as? [String: Any]), chatUsage = try #require(c["usage"] as? [String: Any])
            #expect(usage["input_tokens"] as? Int == chatUsage["prompt_tokens"] as? Int && usage["output_tokens"] as? Int == chatUsage["completion_tokens"] as? Int)
            // Streamed: the same text as deltas, the whole response last.
            let s = try await client.post("/v1/responses", body + #","stream":true}"#)
            #expect(s.0 == 200 && !s.1.contains("[DONE]"))
            let events = try s.1.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { try Self.event($0 + "\n\n") }
            #expect(events.map { $0.payload["sequence_number"] as? Int } == Array(0..<events.count))
            let deltas = events.filter { $0.type == "response.output_text.delta" }.compactMap { $0.payload["delta"] as? String }.joined()
            #expect(deltas == text && ["response.completed", "response.incomplete"].contains(events.last?.type), "\(s.1)")
            // A schema's properties in the body's order (the grammar writes them in schema order): "zz" before "aa".
            let blanks = try ServerTests.blankBias()
            var completed = 0
            for seed in 0..<4 {
                let j = try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"json","max_output_tokens":120,"temperature":1,"seed":\#(seed),"logit_bias":{\#(blanks)},"text":{"format":{"type":"json_schema","name":"t","schema":{"type":"object","properties":{"zz":{"type":"integer"},"aa":{"type":"integer"}},"required":["zz","aa"]}}}}"#)
                #expect(j.0 == 200, "\(j.1)")
                let out = try jsonObject(j.1)
                guard out["status"] as? String == "completed" else { continue }
                completed += 1
                let answer = try #require(((out["output"] as? [[String: Any]])?.first?["content"] as? [[String: Any]])?.first?["text"] as? String)
                let zz = try #require(answer.range(of: "\"zz\"")), aa = try #require(answer.range(of: "\"aa\""))
                #expect(zz.lowerBound < aa.lowerBound, "\(answer)")
            }
            #expect(completed >= 2, "only \(completed) of 4 answers completed")
            // Refusals name the Responses parameter, the chat parser's included.
            try expectError(try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","max_output_tokens":0}"#), status: 400, param: "max_output_tokens")
            let zero = try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","max_output_tokens":0}"#)
            #expect(zero.1.contains("max_output_tokens") && !zero.1.contains("max_tokens"), "\(zero.1)")
            try expectError(try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","text":{"format":{"type":"json_schema","name":"t","schema":{"not":{}}}}}"#),
                            status: 400, param: "text.format")
            try expectError(try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","previous_response_id":"resp_none"}"#),
                            status: 400, param: "previous_response_id")
            try expectError(try await client.post("/v1/responses", #"{"model":"nope","input":"x"}"#), status: 404, param: "model")
            try expectError(try await client.post("/v1/responses", "{\"model\":\"tiny-llama\",\"input\":\"\(String(repeating: "word ", count: 400))\"}"),
                            status: 400, param: "input")
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// Through the server: an answer is stored (whole or streamed) and read back as it was answered; a request that
    /// continues it sees the same prompt as one that sends the whole conversation itself (the same input tokens and
    /// the same greedy answer); `input_items` lists a request's items; a deleted or unknown id is a 404; with the store
    /// off (`responsesStoreBytes` 0) `store: true` is refused and nothing is kept.
    @Test func storesAndContinuesResponses() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let r1 = try await client.post("/v1/responses", #"{"model":"tiny-llama","max_output_tokens":6,"temperature":0,"instructions":"Be brief.","input":"hello"}"#)
            #expect(r1.0 == 200, "\(r1.1)")
            let o1 = try jsonObject(r1.1)
            let id1 = try #require(o1["id"] as? String)
            #expect(o1["store"] as? Bool == true)
            let got = try await client.send("/v1/responses/\(id1)", .get)
            let read = try jsonObject(got.1)
            #expect(got.0 == 200 && NSDictionary(dictionary: read) == NSDictionary(dictionary: o1), "\(got.1)")
            let answer = try #require(((o1["output"] as? [[String: Any]])?.first?["content"] as? [[String: Any]])?.first?["text"] as? String)
            // The store's size in the metrics: one answer, its bytes.
            let metrics = try await client.send("/metrics", .get).1
            #expect(AdapterLifetimeTests.metric(metrics, "dlora_responses_stored") == 1, "\(metrics)")
            #expect((AdapterLifetimeTests.metric(metrics, "dlora_responses_stored_bytes") ?? 0) > Double(r1.1.utf8.count), "\(metrics)")

            // Continued, streamed: the same prompt as the conversation sent whole.
            let chained = try await client.post("/v1/responses", #"{"model":"tiny-llama","max_output_tokens":6,"temperature":0,"stream":true,"previous_response_id":"\#(id1)","input":"again"}"#)
            #expect(chained.0 == 200, "\(chained.1)")
            let events = try chained.1.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { try Self.event($0 + "\n\n") }
            let final = try #require(events.last?.payload["response"] as? [String: Any])
            #expect(final["previous_response_id"] as? String == id1)
            let history = try String(decoding: JSONSerialization.data(withJSONObject: [
                ["role": "user", "content": "hello"], ["role": "assistant", "content": answer], ["role": "user", "content": "again"]]), as: UTF8.self)
            let whole = try jsonObject(try await client.post("/v1/responses", #"{"model":"tiny-llama","max_output_tokens":6,"temperature":0,"store":false,"input":\#(history)}"#).1)
            #expect((final["usage"] as? [String: Any])?["input_tokens"] as? Int == (whole["usage"] as? [String: Any])?["input_tokens"] as? Int)
            #expect(final["output"] as? NSArray != nil && ((final["output"] as? [[String: Any]])?.first?["content"] as? NSArray)?.firstObject.flatMap { ($0 as? [String: Any])?["text"] as? String }
                    == ((whole["output"] as? [[String: Any]])?.first?["content"] as? [[String: Any]])?.first?["text"] as? String)
            let id2 = try #require(final["id"] as? String)
            #expect(try await client.send("/v1/responses/\(id2)", .get).0 == 200)
            // store: false keeps nothing.
            #expect(try await client.send("/v1/responses/\(try #require(whole["id"] as? String))", .get).0 == 404)

            let items = try jsonObject(try await client.send("/v1/responses/\(id2)/input_items?order=asc&limit=5", .get).1)
            let data = try #require(items["data"] as? [[String: Any]])
            #expect(data.count == 1 && ((data[0]["content"] as? [[String: Any]])?.first)?["text"] as? String == "again", "\(items)")
            try expectError(try await client.send("/v1/responses/\(id2)/input_items?limit=0", .get), status: 400, param: "limit")

            let deleted = try await client.send("/v1/responses/\(id1)", .delete)
            let gone = try jsonObject(deleted.1)
            #expect(deleted.0 == 200 && gone["deleted"] as? Bool == true && gone["id"] as? String == id1)
            #expect(try await client.send("/v1/responses/\(id1)", .get).0 == 404)
            #expect(try await client.send("/v1/responses/\(id1)", .delete).0 == 404)
            try expectError(try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","previous_response_id":"\#(id1)"}"#),
                            status: 400, param: "previous_response_id")
            // The later turn holds its whole conversation: deleting the first does not break it.
            #expect(try await client.post("/v1/responses", #"{"model":"tiny-llama","max_output_tokens":2,"previous_response_id":"\#(id2)","input":"more"}"#).0 == 200)
        }
        #expect(try await ServerFixtures.waitIdle(server))

        let off = try ServerFixtures.server(configure: { $0.responsesStoreBytes = 0 })
        try await ServerFixtures.withServer(off) { client in
            try expectError(try await client.post("/v1/responses", #"{"model":"tiny-llama","input":"x","store":true}"#), status: 400, param: "store")
            let r = try await client.post("/v1/responses", #"{"model":"tiny-llama","max_output_tokens":2,"input":"x"}"#)
            let o = try jsonObject(r.1)
            #expect(r.0 == 200 && o["store"] as? Bool == false)
            #expect(try await client.send("/v1/responses/\(try #require(o["id"] as? String))", .get).0 == 404)
        }
    }
}
