import Foundation
import Hummingbird
import HummingbirdTesting
import Models
import Testing

@testable import Server

/// vLLM's `/tokenize` and `/detokenize`: the tokens a prompt or a conversation becomes are the ones a generation
/// request counts (its `usage.prompt_tokens`), detokenizing gives the text back, and bad input is a 400 or 404.
@Suite struct TokenizeTests {
    @Test func tokensAreTheGenerationPrompts() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let completion = try jsonObject(try await client.post("/v1/completions", #"{"model":"tiny-llama","prompt":"hello world","max_tokens":1}"#).1)
            let t = try await client.post("/tokenize", #"{"model":"tiny-llama","prompt":"hello world","return_token_strs":true}"#)
            #expect(t.0 == 200, "\(t.1)")
            let tokens = try jsonObject(t.1)
            let ids = try #require(tokens["tokens"] as? [Int])
            #expect(tokens["count"] as? Int == ids.count && ids.count == (completion["usage"] as? [String: Any])?["prompt_tokens"] as? Int)
            #expect(tokens["max_model_len"] as? Int == server.contextLimit && (tokens["token_strs"] as? [String])?.count == ids.count)

            let messages = #"[{"role":"system","content":"Be brief."},{"role":"user","content":"hi <|im_start|>"}]"#
            let chat = try jsonObject(try await client.post("/v1/chat/completions", #"{"model":"tiny-llama","max_tokens":1,"messages":\#(messages)}"#).1)
            let m = try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages)}"#).1)
            #expect(m["count"] as? Int == (chat["usage"] as? [String: Any])?["prompt_tokens"] as? Int, "\(m)")
            let open = try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages),"add_generation_prompt":false}"#).1)
            #expect((open["count"] as? Int ?? 0) < (m["count"] as? Int ?? 0))

            // Round trip without the special tokens.
            let plain = try jsonObject(try await client.post("/tokenize", #"{"prompt":"héllo, wörld!","add_special_tokens":false}"#).1)
            let back = try await client.post("/detokenize", "{\"tokens\":\(try #require(plain["tokens"] as? [Int]))}")
            let text = try jsonObject(back.1)["prompt"] as? String
            #expect(back.0 == 200 && text == "héllo, wörld!", "\(back.1)")

            for (uri, body, status, param) in [
                ("/tokenize", #"{"model":"nope","prompt":"x"}"#, 404, "model"),
                ("/tokenize", #"{"prompt":"x","messages":[]}"#, 400, "messages"),
                ("/tokenize", #"{"prompt":7}"#, 400, "prompt"),
                ("/tokenize", #"{}"#, 400, "prompt"),
                ("/tokenize", #"{"prompt":"x","add_special_tokens":1}"#, 400, "add_special_tokens"),
                ("/tokenize", #"{"prompt":"x","extra":1}"#, 400, "extra"),
                ("/tokenize", #"{"prompt":"x","tools":[]}"#, 400, "tools"),
                ("/tokenize", #"{"messages":[{"role":"user","content":"x"}],"tools":5}"#, 400, "tools"),
                ("/tokenize", #"{"messages":[{"role":"robot","content":"x"}]}"#, 400, "messages[0].role"),
                ("/detokenize", #"{"tokens":[1, 99999999]}"#, 400, "tokens"),
                ("/detokenize", #"{"tokens":[true]}"#, 400, "tokens"),
                ("/detokenize", #"{"tokens":[1.5]}"#, 400, "tokens"),
            ] {
                try expectError(try await client.post(uri, body), status: status, param: param)
            }
        }
    }

    /// vLLM's chat-template controls. `continue_final_message` ends the prompt inside the final message (a prefilled
    /// answer the model continues): the closed conversation's tokens with the turn's end left off, the tokens a chat
    /// request with it counts. `chat_template_kwargs` are the template's own variables (JinjaTemplateTests checks their
    /// values against transformers); the variables the template is given cannot be rebound. `skip_special_tokens` is
    /// accepted at its default only.
    @Test func chatTemplateControls() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let messages = #"[{"role":"user","content":"Hi"},{"role":"assistant","content":"The answer is"}]"#
            let closed = try #require(try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages),"add_generation_prompt":false}"#).1)["tokens"] as? [Int])
            let continued = try #require(try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages),"continue_final_message":true}"#).1)["tokens"] as? [Int])
            #expect(continued.count < closed.count && closed.starts(with: continued), "\(continued) against \(closed)")
            let text = try jsonObject(try await client.post("/detokenize", "{\"tokens\":\(continued)}").1)["prompt"] as? String
            #expect(text?.hasSuffix("The answer is") == true, "\(text ?? "")")
            let chat = try await client.post("/v1/chat/completions", #"{"model":"tiny-llama","max_tokens":2,"continue_final_message":true,"messages":\#(messages)}"#)
            let usage = try jsonObject(chat.1)["usage"] as? [String: Any]
            #expect(chat.0 == 200 && usage?["prompt_tokens"] as? Int == continued.count, "\(chat.1)")
            for body in [#"{"model":"tiny-llama","max_tokens":2,"chat_template_kwargs":{"enable_thinking":false,"x":[1,{"y":null}]},"messages":\#(messages)}"#,
                         #"{"model":"tiny-llama","max_tokens":2,"skip_special_tokens":true,"add_generation_prompt":true,"messages":\#(messages)}"#] {
                let r = try await client.post("/v1/chat/completions", body)
                #expect(r.0 == 200, "\(body): \(r.1)")
            }
            for (uri, body, param) in [
                ("/v1/chat/completions", #"{"model":"tiny-llama","continue_final_message":true,"add_generation_prompt":true,"messages":\#(messages)}"#, "continue_final_message"),
                ("/tokenize", #"{"continue_final_message":true,"add_generation_prompt":true,"messages":\#(messages)}"#, "continue_final_message"),
                ("/v1/chat/completions", #"{"model":"tiny-llama","continue_final_message":1,"messages":\#(messages)}"#, "continue_final_message"),
                ("/v1/chat/completions", #"{"model":"tiny-llama","chat_template_kwargs":5,"messages":\#(messages)}"#, "chat_template_kwargs"),
                ("/v1/chat/completions", #"{"model":"tiny-llama","chat_template_kwargs":{"messages":[]},"messages":\#(messages)}"#, "chat_template_kwargs"),
                ("/tokenize", #"{"chat_template_kwargs":{"add_generation_prompt":true},"messages":\#(messages)}"#, "chat_template_kwargs"),
                ("/v1/chat/completions", #"{"model":"tiny-llama","skip_special_tokens":false,"messages":\#(messages)}"#, "skip_special_tokens"),
                ("/v1/completions", #"{"model":"tiny-llama","continue_final_message":true,"prompt":"x"}"#, "continue_final_message"),
            ] {
                try expectError(try await client.post(uri, body), status: 400, param: param)
            }
        }
    }

    /// With tools, a conversation counts the functions' description as chat writes it into the system message (vLLM's
    /// /tokenize takes `tools` too; here it was refused). On SmolLM2, whose context holds the description.
    @Test func toolsAreCountedAsChatWritesThem() async throws {
        let server = try ServerFixtures.server(adapterRoot: nil, kvBlocks: 512, model: try DefaultModel.require())
        try await ServerFixtures.withServer(server) { client in
            let messages = #"[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather in Oslo?"}]"#
            let tools = #""tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]"#
            let plain = try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages)}"#).1)
            for choice in ["", #","tool_choice":"required""#] {
                let chat = try jsonObject(try await client.post("/v1/chat/completions",
                                                                #"{"model":"model","max_tokens":1,"messages":\#(messages),\#(tools)\#(choice)}"#).1)
                let counted = try jsonObject(try await client.post("/tokenize", #"{"messages":\#(messages),\#(tools)\#(choice)}"#).1)
                let prompt = (chat["usage"] as? [String: Any])?["prompt_tokens"] as? Int
                #expect(prompt != nil && counted["count"] as? Int == prompt, "\(counted["count"] ?? "none") \(chat)")
                #expect((prompt ?? 0) > (plain["count"] as? Int ?? 0))
            }
        }
    }
}
