import Foundation

// A stream's server-sent events for every endpoint, and the Responses API's shapes. Completions and chat send each
// payload as `data: {json}` and end with `data: [DONE]`; a Responses stream sends typed events (`event: <type>` and a
// payload with that `type` and a `sequence_number`) and ends with `response.completed` (or `response.incomplete`):
//   response.created, response.in_progress,
//   per message: response.output_item.added, response.content_part.added, response.output_text.delta…,
//                response.output_text.done, response.content_part.done, response.output_item.done;
//   per function call: response.output_item.added, response.function_call_arguments.delta and .done,
//                response.output_item.done;
//   response.completed | response.incomplete (the whole response object, usage included).
// A Responses request has one choice (no `n`). A finished answer (completed or incomplete, not failed) is stored
// before it is sent when the request asked for that (`ResponsesEcho.record`), so a client that reads the final
// event or body can continue it at once.

extension CompletionRenderer {
    /// The frames that open a stream of `count` choices: chat's role chunks, or a Responses stream's
    /// `response.created` and `response.in_progress`.
    public func openingFrames(_ count: Int, states: inout [ChoiceRenderState]) -> [String] {
        if let responses {
            let object = responseJSON(responses, status: "in_progress", output: [], usage: nil)
            return [event("response.created", ["response": object], &states[0]), event("response.in_progress", ["response": object], &states[0])]
        }
        return chat ? (0..<count).map { Self.data(roleChunk($0)) } : []
    }

    /// The frames of choice `index` for a piece of text, or (text nil) for its finish.
    public func frames(_ index: Int, text: String?, finish: String?, state: inout ChoiceRenderState) -> [String] {
        guard responses != nil else { return chunk(index, text: text, finish: finish, logprobs: &state).map(Self.data) }
        if let text {
            if let tools, !state.plainText {
                switch state.toolPiece(text, tools: tools) {
                case .text(let released): return textFrames(released, &state)
                case .calls(let events): return events.flatMap { callFrames($0, &state) }
                }
            }
            return textFrames(text, &state)
        }
        state.finish = finish
        var out: [String] = []
        if tools != nil, !state.plainText {
            let held = state.heldText
            state.heldText = ""
            let calls = message(0, text: held, finish: finish ?? "").0.toolCalls
            if let (rest, complete) = state.remainingCalls(calls) {
                // Calls were streamed: the rest of their arguments (and any call not begun), then each call done — as the
                // whole answer holds it, or (cut short) as far as it was sent.
                state.text = held
                for d in rest {
                    if let name = d.function.name { out += callFrames(.begin(d.index, name), &state) }
                    if !d.function.arguments.isEmpty { out += callFrames(.arguments(d.index, d.function.arguments), &state) }
                }
                for (k, item) in (complete ? callItems(calls!) : streamedItems(state)).enumerated() { out += doneFrames(k, item, &state) }
                return out
            }
            if let calls {
                // Nothing streamed: each call whole, added, its arguments in one piece, done.
                state.text = held
                for (k, item) in callItems(calls).enumerated() {
                    out += callFrames(.begin(k, calls[k].function.name), &state) + callFrames(.arguments(k, calls[k].function.arguments), &state)
                    out += doneFrames(k, item, &state)
                }
                return out
            }
            out += textFrames(held, &state)
        }
        if !state.messageOpen { out += openMessage(&state) }
        let part: [String: Any] = ["type": "output_text", "text": state.text, "annotations": [Any]()]
        out.append(event("response.output_text.done", ["item_id": messageID, "output_index": 0, "content_index": 0, "text": state.text,
                                                       "logprobs": [Any]()], &state))
        out.append(event("response.content_part.done", ["item_id": messageID, "output_index": 0, "content_index": 0, "part": part], &state))
        out.append(event("response.output_item.done", ["output_index": 0, "item": messageItem(state.text, finish: finish ?? "")], &state))
        return out
    }

    /// A streamed call's frames: `output_item.added` when it begins (arguments empty, in progress), then each piece of
    /// its arguments as `function_call_arguments.delta`.
    private func callFrames(_ e: ToolCallStream.Event, _ state: inout ChoiceRenderState) -> [String] {
        switch e {
        case .begin(let k, let name):
            return [event("response.output_item.added", ["output_index": k, "item": callItem(k, name: name, arguments: "", status: "in_progress")], &state)]
        case .arguments(let k, let piece):
            return [event("response.function_call_arguments.delta", ["item_id": "fc_\(idSuffix)_\(k)", "output_index": k, "delta": piece], &state)]
        }
    }

    /// Call k's `function_call_arguments.done` and `output_item.done` (`item`: the call as it ends).
    private func doneFrames(_ k: Int, _ item: [String: Any], _ state: inout ChoiceRenderState) -> [String] {
        [event("response.function_call_arguments.done", ["item_id": item["id"]!, "output_index": k, "arguments": item["arguments"]!, "name": item["name"]!],
               &state),
         event("response.output_item.done", ["output_index": k, "item": item], &state)]
    }

    /// The calls a stream sent, as far as it sent them (an answer cut short after its calls began): incomplete items.
    private func streamedItems(_ state: ChoiceRenderState) -> [[String: Any]] {
        (state.callStream?.sent ?? []).enumerated().map { k, c in callItem(k, name: c.name, arguments: c.arguments, status: "incomplete") }
    }

    /// The frames that end a failed stream: the error, then (completions and chat) `data: [DONE]`.
    public func errorFrames(_ error: ErrorBody.Detail, state: inout ChoiceRenderState) -> [String] {
        if responses != nil {
            return [event("error", ["code": error.code ?? error.type, "message": error.message, "param": error.param ?? NSNull()], &state)]
        }
        return [Self.data(OpenAIWire.encode(ErrorBody(error: error))), "data: [DONE]\n\n"]
    }

    /// The frames that end a finished stream: the usage chunk when asked for and `data: [DONE]`, or a Responses
    /// stream's whole response (usage always included).
    public func closingFrames(usage: Usage, includeUsage: Bool, states: inout [ChoiceRenderState]) -> [String] {
        if let responses {
            let finish = states[0].finish ?? "stop"
            // An answer whose calls were streamed and then cut short lists them as sent.
            let streamed = states[0].callStream.map { !$0.sent.isEmpty } == true && callItems(text: states[0].text, finish: finish) == nil
            let object = responseJSON(responses, status: finish == "length" ? "incomplete" : "completed",
                                      output: streamed ? streamedItems(states[0]) : outputItems(text: states[0].text, finish: finish), usage: usage)
            responses.record?.save(object, idSuffix: idSuffix)
            return [event(finish == "length" ? "response.incomplete" : "response.completed", ["response": object], &states[0])]
        }
        return (includeUsage ? [Self.data(usageChunk(usage))] : []) + ["data: [DONE]\n\n"]
    }

    /// A non-streamed Responses answer: the response object.
    /// Stored first when the request asked for it (`ResponsesEcho.record`).
    func responseObject(_ echo: ResponsesEcho, text: String, finish: String, usage: Usage) -> String {
        let object = responseJSON(echo, status: finish == "length" ? "incomplete" : "completed", output: outputItems(text: text, finish: finish), usage: usage)
        echo.record?.save(object, idSuffix: idSuffix)
        return OpenAIWire.text(object)
    }

    // MARK: the Responses shapes

    private static func data(_ json: String) -> String { "data: \(json)\n\n" }


    /// One typed event: `event: <type>` and its payload with `type` and the next `sequence_number`.
    private func event(_ type: String, _ fields: [String: Any], _ state: inout ChoiceRenderState) -> String {
        var payload = fields
        payload["type"] = type
        payload["sequence_number"] = state.sequence
        state.sequence += 1
        return "event: \(type)\ndata: \(OpenAIWire.text(payload))\n\n"
    }

    private var messageID: String { "msg_" + idSuffix }

    private func openMessage(_ state: inout ChoiceRenderState) -> [String] {
        state.messageOpen = true
        let item: [String: Any] = ["type": "message", "id": messageID, "status": "in_progress", "role": "assistant", "content": [Any]()]
        return [event("response.output_item.added", ["output_index": 0, "item": item], &state),
                event("response.content_part.added", ["item_id": messageID, "output_index": 0, "content_index": 0,
                                                      "part": ["type": "output_text", "text": "", "annotations": [Any]()]], &state)]
    }

    private func textFrames(_ text: String, _ state: inout ChoiceRenderState) -> [String] {
        guard !text.isEmpty else { return [] }
        var out = state.messageOpen ? [] : openMessage(&state)
        state.text += text
        out.append(event("response.output_text.delta", ["item_id": messageID, "output_index": 0, "content_index": 0, "delta": text,
                                                        "logprobs": [Any]()], &state))
        return out
    }

    private func messageItem(_ text: String, finish: String) -> [String: Any] {
        ["type": "message", "id": messageID, "status": finish == "length" ? "incomplete" : "completed", "role": "assistant",
         "content": [["type": "output_text", "text": text, "annotations": [Any]()]]]
    }

    /// Call k as a `function_call` item (its `call_id` is the one `message` gives the call).
    private func callItem(_ k: Int, name: String, arguments: String, status: String) -> [String: Any] {
        ["type": "function_call", "id": "fc_\(idSuffix)_\(k)", "call_id": callID(0, k), "name": name, "arguments": arguments, "status": status]
    }

    /// A complete tool-call answer's calls as `function_call` items.
    private func callItems(_ calls: [ToolCall], status: String = "completed") -> [[String: Any]] {
        calls.enumerated().map { k, c in callItem(k, name: c.function.name, arguments: c.function.arguments, status: status) }
    }

    /// A tool-call answer as `function_call` items (nil: the answer is text): complete ones, or, cut short, the calls as
    /// far as a stream sends them (`message`), incomplete.
    private func callItems(text: String, finish: String) -> [[String: Any]]? {
        message(0, text: text, finish: finish).0.toolCalls.map { callItems($0, status: finish == "stop" ? "completed" : "incomplete") }
    }

    private func outputItems(text: String, finish: String) -> [[String: Any]] {
        callItems(text: text, finish: finish) ?? [messageItem(text, finish: finish)]
    }

    /// The response object: OpenAI's fields, the request's settings as it gave them (`ResponsesEcho`), its output.
    private func responseJSON(_ echo: ResponsesEcho, status: String, output: [[String: Any]], usage: Usage?) -> [String: Any] {
        var object: [String: Any] = [
            "id": id, "object": "response", "created_at": created, "status": status, "model": model, "output": output,
            "error": NSNull(), "incomplete_details": status == "incomplete" ? ["reason": "max_output_tokens"] : NSNull(),
            "instructions": NSNull(), "max_output_tokens": NSNull(), "max_tool_calls": NSNull(), "previous_response_id": NSNull(),
            "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [Any](),
            "text": ["format": ["type": "text"]], "truncation": "disabled", "store": false, "background": false,
            "reasoning": ["effort": NSNull(), "summary": NSNull()], "metadata": [String: Any](), "user": NSNull(),
            "usage": NSNull(),
        ]
        for (key, value) in echo.fields { object[key] = value }
        if let usage {
            object["usage"] = ["input_tokens": usage.promptTokens, "output_tokens": usage.completionTokens, "total_tokens": usage.totalTokens,
                               "input_tokens_details": ["cached_tokens": 0], "output_tokens_details": ["reasoning_tokens": 0]]
        }
        return object
    }
}
