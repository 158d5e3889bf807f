import Engine
import Foundation
import Hummingbird
import HummingbirdTesting
import Models
import ServingAPI
import Testing
import Tokenizers
import TestSupport

@testable import HTTPFront
@testable import Server

/// The OpenAI-compatible API over HTTP on loopback, every endpoint streamed and not, and its errors.
@Suite struct ServerTests {
    /// An adapter request through the API generates what PEFT generates (the committed goldens), and a base
    /// request what transformers generates; streamed and non-streamed responses carry the same text.
    @Test func completionsMatchReferenceGoldens() async throws {
        let server = try ServerFixtures.server()
        let golden = try ServerFixtures.loraGolden("tiny-llama__a-qv-r4")
        // A case whose greedy margins are all far from a tie.
        let c = try #require(golden.cases.first { $0.greedyMargins.allSatisfy { $0 > 0.1 } })
        let expected = server.tokenizer.decode(c.greedyIds, skipSpecial: false)
        let base = try ModelGolden.load()
        let b = try #require(base.cases.first { $0.greedyMargins.prefix(8).allSatisfy { $0 > 0.05 } })
        let expectedBase = server.tokenizer.decode(Array(b.greedyIds.prefix(8)), skipSpecial: false)
        try await ServerFixtures.withServer(server) { client in
            let ids = c.promptIds.map(String.init).joined(separator: ",")
            let body = "{\"model\":\"a-qv-r4\",\"prompt\":[\(ids)],\"max_tokens\":\(c.greedyIds.count),\"temperature\":0,\"ignore_eos\":true}"
            let r = try await client.post("/v1/completions", body)
            #expect(r.0 == 200, "\(r.1)")
            let o = try jsonObject(r.1)
            #expect(o["object"] as? String == "text_completion")
            #expect(o["model"] as? String == "a-qv-r4")
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == expected)
            #expect(choice["finish_reason"] as? String == "length")
            let usage = try #require(o["usage"] as? [String: Any])
            #expect(usage["prompt_tokens"] as? Int == c.promptIds.count)
            #expect(usage["completion_tokens"] as? Int == c.greedyIds.count)
            #expect(usage["total_tokens"] as? Int == c.promptIds.count + c.greedyIds.count)

            // Streamed: the same text in pieces, a finish chunk, the usage chunk, [DONE].
            let streamBody = String(body.dropLast()) + ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
            let s = try await client.post("/v1/completions", streamBody)
            #expect(s.0 == 200)
            #expect(s.2[.contentType] == "text/event-stream")
            let events = sseEvents(s.1)
            #expect(events.last == "[DONE]")
            let chunks = try events.dropLast().map(jsonObject)
            let texts = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
            #expect(texts.joined() == expected)
            #expect(chunks.allSatisfy { $0["object"] as? String == "text_completion" && $0["id"] as? String == chunks[0]["id"] as? String })
            let finishes = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
            #expect(finishes == ["length"])
            let usageChunk = try #require(chunks.last)
            #expect((usageChunk["choices"] as? [Any])?.isEmpty == true)
            #expect((usageChunk["usage"] as? [String: Any])?["completion_tokens"] as? Int == c.greedyIds.count)
            // OpenAI's: the chunks before the usage chunk say `"usage": null`; a stream that did not ask has no usage key.
            #expect(chunks.dropLast().allSatisfy { $0["usage"] is NSNull })
            let plain = try await client.post("/v1/completions", String(body.dropLast()) + ",\"stream\":true}")
            let plainChunks = try sseEvents(plain.1).dropLast().map(jsonObject)
            #expect(!plainChunks.isEmpty && plainChunks.allSatisfy { $0.keys.contains("usage") == false })
            // vLLM's continuous_usage_stats: every chunk carries the usage so far (the prompt's tokens, the completion's
            // so far, never decreasing, each text chunk counting its tokens), the last one the whole answer's.
            for endpoint in ["/v1/completions", "/v1/chat/completions"] {
                let request = endpoint == "/v1/completions" ? String(body.dropLast())
                    : "{\"model\":\"a-qv-r4\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true"
                let running = try await client.post(endpoint, request + ",\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}}")
                let runningChunks = try sseEvents(running.1).dropLast().map(jsonObject)
                let usages = runningChunks.compactMap { $0["usage"] as? [String: Any] }
                #expect(usages.count == runningChunks.count && usages.count >= 3, "\(endpoint): \(running.1)")
                let completions = usages.compactMap { $0["completion_tokens"] as? Int }
                let prompts = Set(usages.compactMap { $0["prompt_tokens"] as? Int })
                #expect(completions.count == usages.count && zip(completions, completions.dropFirst()).allSatisfy { $0 <= $1 }, "\(completions)")
                #expect(prompts.count == 1 && usages.allSatisfy { ($0["total_tokens"] as? Int) == ($0["prompt_tokens"] as? Int ?? 0) + ($0["completion_tokens"] as? Int ?? -1) })
                #expect(completions.last == (endpoint == "/v1/completions" ? c.greedyIds.count : 6), "\(endpoint): \(completions)")
                // Without include_usage it changes nothing (as vLLM's).
                let alone = try await client.post(endpoint, request + ",\"stream\":true,\"stream_options\":{\"continuous_usage_stats\":true}}")
                #expect(try sseEvents(alone.1).dropLast().map(jsonObject).allSatisfy { $0.keys.contains("usage") == false }, "\(alone.1)")
            }

            // The base model (transformers' greedy continuation).
            let bids = b.promptIds.map(String.init).joined(separator: ",")
            let rb = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\(bids)],\"max_tokens\":8,\"temperature\":0,\"ignore_eos\":true}")
            #expect(rb.0 == 200)
            #expect(((try jsonObject(rb.1))["choices"] as? [[String: Any]])?.first?["text"] as? String == expectedBase)
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// Chat completions render the template, stream role/content/finish chunks, and agree with a completion
    /// of the same rendered prompt.
    @Test func chatCompletions() async throws {
        let server = try ServerFixtures.server()
        let rendered = try server.tokenizer.chatTemplate.render(messages: [ChatMessage(role: "system", content: "Be brief."),
                                                                          ChatMessage(role: "user", content: "hello there")],
                                                                addGenerationPrompt: true)
        let promptIDs = server.tokenizer.encode(rendered, addSpecial: false)
        try await ServerFixtures.withServer(server) { client in
            let messages = "[{\"role\":\"developer\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hello \"},{\"type\":\"text\",\"text\":\"there\"}]}]"
            let body = "{\"model\":\"b-all-r8-rslora\",\"messages\":\(messages),\"max_completion_tokens\":12,\"temperature\":0,\"ignore_eos\":true,\"user\":\"u1\"}"
            let r = try await client.post("/v1/chat/completions", body)
            #expect(r.0 == 200, "\(r.1)")
            let o = try jsonObject(r.1)
            #expect(o["object"] as? String == "chat.completion")
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            let message = try #require(choice["message"] as? [String: Any])
            #expect(message["role"] as? String == "assistant")
            let content = try #require(message["content"] as? String)
            #expect((o["usage"] as? [String: Any])?["prompt_tokens"] as? Int == promptIDs.count)

            let ids = promptIDs.map(String.init).joined(separator: ",")
            let same = try await client.post("/v1/completions", "{\"model\":\"b-all-r8-rslora\",\"prompt\":[\(ids)],\"max_tokens\":12,\"temperature\":0,\"ignore_eos\":true}")
            #expect(((try jsonObject(same.1))["choices"] as? [[String: Any]])?.first?["text"] as? String == content)

            let s = try await client.post("/v1/chat/completions", String(body.dropLast()) + ",\"stream\":true}")
            let events = sseEvents(s.1)
            #expect(events.last == "[DONE]")
            let chunks = try events.dropLast().map(jsonObject)
            #expect(chunks.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
            let deltas = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any] }
            #expect(deltas.first?["role"] as? String == "assistant")
            #expect(deltas.compactMap { $0["content"] as? String }.joined() == content)
            #expect((chunks.last?["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String == "length")
        }
    }

    /// Log-probabilities, penalties and logit bias through the API, against transformers (the sampling goldens):
    /// completions' legacy shape and chat's, whole and streamed (the streamed records add up to the whole), and a
    /// bias that bans the greedy token.
    @Test func logprobsPenaltiesAndBias() async throws {
        let server = try ServerFixtures.server()
        let goldens = try SamplingGoldens.load()
        let plain = try #require(goldens.cases.first { $0.name == "plain" })
        let biased = try #require(goldens.cases.first { $0.name == "bias" })
        let penalised = try #require(goldens.cases.first { $0.name == "penalties" })
        let tokenizer = server.tokenizer
        let text: @Sendable (Int) -> String = { String(decoding: tokenizer.tokenBytes($0), as: UTF8.self) }
        try await ServerFixtures.withServer(server) { client in
            // Completions, 3 greedy tokens (the golden's first steps are far from ties), 5 alternatives each.
            let prompt = plain.promptIds.map(String.init).joined(separator: ",")
            let body = "{\"model\":\"tiny-llama\",\"prompt\":[\(prompt)],\"max_tokens\":3,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":5}"
            let r = try await client.post("/v1/completions", body)
            #expect(r.0 == 200, "\(r.1)")
            let choice = try #require(((try jsonObject(r.1))["choices"] as? [[String: Any]])?.first)
            let lp = try #require(choice["logprobs"] as? [String: Any])
            let tokens = try #require(lp["tokens"] as? [String])
            let values = try #require(lp["token_logprobs"] as? [Double])
            let tops = try #require(lp["top_logprobs"] as? [[String: Double]])
            let offsets = try #require(lp["text_offset"] as? [Int])
            #expect(tokens == plain.steps.prefix(3).map { text($0.token) })
            #expect(tokens.joined() == choice["text"] as? String)
            #expect(offsets == [0, tokens[0].unicodeScalars.count, tokens[0].unicodeScalars.count + tokens[1].unicodeScalars.count])
            for (i, step) in plain.steps.prefix(3).enumerated() {
                #expect(abs(values[i] - step.logprob) < 2e-3, "step \(i): \(values[i]) vs \(step.logprob)")
                // The five most likely, by text (the sampled token is among them here); tokens whose texts collide
                // (bytes that are part of a character all read U+FFFD) share one key, as in OpenAI's shape.
                let texts = step.topTokens.map(text)
                for (id, ref) in zip(step.topTokens, step.topLogprobs) where texts.filter({ $0 == text(id) }).count == 1 {
                    #expect(abs((tops[i][text(id)] ?? 0) - ref) < 2e-3, "step \(i) token \(id)")
                }
            }
            // Streamed: the chunks' records are the whole response's, offsets running on.
            let s = try await client.post("/v1/completions", String(body.dropLast()) + ",\"stream\":true}")
            let chunks = try sseEvents(s.1).dropLast().map(jsonObject)
            let pieces = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any] }
            #expect(pieces.flatMap { $0["tokens"] as? [String] ?? [] } == tokens)
            #expect(pieces.flatMap { $0["text_offset"] as? [Int] ?? [] } == offsets)
            #expect(pieces.flatMap { $0["token_logprobs"] as? [Double] ?? [] } == values)

            // Chat: logprobs.content, each with its bytes and 2 alternatives; streamed, the same records.
            let chat = "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":true,\"top_logprobs\":2}"
            let c = try await client.post("/v1/chat/completions", chat)
            #expect(c.0 == 200, "\(c.1)")
            let cchoice = try #require(((try jsonObject(c.1))["choices"] as? [[String: Any]])?.first)
            let content = try #require((cchoice["logprobs"] as? [String: Any])?["content"] as? [[String: Any]])
            #expect(content.count == 6)
            // The tokens' bytes make the message (their texts alone may not: a character split over two tokens).
            let allBytes = content.flatMap { ($0["bytes"] as? [Int] ?? []).map(UInt8.init) }
            #expect(String(decoding: allBytes, as: UTF8.self) == (cchoice["message"] as? [String: Any])?["content"] as? String)
            for e in content {
                let bytes = try #require(e["bytes"] as? [Int])
                #expect(String(decoding: bytes.map(UInt8.init), as: UTF8.self) == e["token"] as? String)
                let top = try #require(e["top_logprobs"] as? [[String: Any]])
                #expect(top.count == 2)
                // Greedy: the sampled token is the most likely one.
                let v = try #require(e["logprob"] as? Double)
                let best = try #require(top.first?["logprob"] as? Double)
                #expect(v <= 0 && v == best && best >= (top.last?["logprob"] as? Double ?? 0))
            }
            let cs = try await client.post("/v1/chat/completions", String(chat.dropLast()) + ",\"stream\":true}")
            let cchunks = try sseEvents(cs.1).dropLast().map(jsonObject)
            let streamed = cchunks.flatMap { (($0["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any])?["content"] as? [[String: Any]] ?? [] }
            #expect(streamed.compactMap { $0["token"] as? String } == content.compactMap { $0["token"] as? String })
            #expect(streamed.compactMap { $0["logprob"] as? Double } == content.compactMap { $0["logprob"] as? Double })
            // Without logprobs the field stays null.
            let none = try await client.post("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":2}")
            #expect(((try jsonObject(none.1))["choices"] as? [[String: Any]])?.first?["logprobs"] is NSNull)

            // Echo with log-probabilities (how evaluation harnesses score a continuation): the prompt's tokens come
            // first, the first without a value, the others' as transformers gives them; streamed, the same records.
            let scoredPrompt = goldens.prompt
            let eprompt = scoredPrompt.promptIds.map(String.init).joined(separator: ",")
            let echoBody = "{\"model\":\"tiny-llama\",\"prompt\":[\(eprompt)],\"max_tokens\":1,\"temperature\":0,\"ignore_eos\":true,\"echo\":true,\"logprobs\":2}"
            let er = try await client.post("/v1/completions", echoBody)
            #expect(er.0 == 200, "\(er.1)")
            let echoObject = try jsonObject(er.1)
            let echoChoice = try #require((echoObject["choices"] as? [[String: Any]])?.first)
            let elp = try #require(echoChoice["logprobs"] as? [String: Any])
            let etokens = try #require(elp["tokens"] as? [String])
            let evalues = try #require(elp["token_logprobs"] as? [Any])
            let etops = try #require(elp["top_logprobs"] as? [Any])
            let promptLength = scoredPrompt.promptIds.count
            #expect(etokens.count == promptLength + 1 && evalues.count == promptLength + 1 && etops.count == promptLength + 1)
            #expect(etokens.prefix(promptLength) == ArraySlice(scoredPrompt.promptIds.map(text)))
            #expect(evalues.first is NSNull && etops.first is NSNull)
            for (i, want) in scoredPrompt.positions.enumerated() {
                let got = try #require(evalues[i + 1] as? Double)
                #expect(abs(got - want.logprob) < 2e-3, "prompt position \(i + 1): \(got) vs \(want.logprob)")
            }
            let echoText = try #require(echoChoice["text"] as? String)
            #expect(echoText.hasPrefix(server.tokenizer.decode(scoredPrompt.promptIds, skipSpecial: false)))
            #expect((echoObject["usage"] as? [String: Any])?["completion_tokens"] as? Int == 1)
            let es = try await client.post("/v1/completions", String(echoBody.dropLast()) + ",\"stream\":true}")
            let echunks = try sseEvents(es.1).dropLast().map(jsonObject)
            let epieces = echunks.compactMap { ($0["choices"] as? [[String: Any]])?.first }
            #expect(epieces.compactMap { $0["text"] as? String }.joined() == echoText)
            #expect(epieces.flatMap { ($0["logprobs"] as? [String: Any])?["tokens"] as? [String] ?? [] } == etokens)
            // The echo is a chunk of its own: the prompt's text and exactly the prompt's records.
            #expect((epieces.first?["logprobs"] as? [String: Any])?["tokens"] as? [String] == Array(etokens.prefix(promptLength)))
            #expect(epieces.flatMap { ($0["logprobs"] as? [String: Any])?["text_offset"] as? [Int] ?? [] } == elp["text_offset"] as? [Int])
            // Echo alone: the prompt text as sent, then the completion.
            let plainEcho = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hello there\",\"max_tokens\":3,\"echo\":true}")
            let plainText = try #require(((try jsonObject(plainEcho.1))["choices"] as? [[String: Any]])?.first?["text"] as? String)
            #expect(plainText.hasPrefix("hello there") && plainText.count > "hello there".count)

            // Bias: the golden's -100 on the plain run's first token and +3.5 on its third, frequency 0.4.
            let bias = biased.logitBias.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
            let comparable = biased.steps.prefix { $0.margin > 1e-2 }.count
            let bprompt = biased.promptIds.map(String.init).joined(separator: ",")
            if comparable > 0 {
                let b = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\(bprompt)],\"max_tokens\":\(comparable),\"temperature\":0,\"ignore_eos\":true,\"frequency_penalty\":\(biased.frequencyPenalty),\"logit_bias\":{\(bias)}}")
                #expect(b.0 == 200, "\(b.1)")
                #expect(((try jsonObject(b.1))["choices"] as? [[String: Any]])?.first?["text"] as? String
                        == server.tokenizer.decode(biased.steps.prefix(comparable).map(\.token), skipSpecial: false))
            }
            // vLLM's repetition penalty (transformers' processor in the golden), prompt included.
            let repeated = try #require(goldens.cases.first { $0.name == "repetition" })
            let rn = repeated.steps.prefix { $0.margin > 1e-2 }.count
            let rprompt = repeated.promptIds.map(String.init).joined(separator: ",")
            let rr = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\(rprompt)],\"max_tokens\":\(rn),\"temperature\":0,\"ignore_eos\":true,\"repetition_penalty\":\(repeated.repetitionPenalty)}")
            #expect(((try jsonObject(rr.1))["choices"] as? [[String: Any]])?.first?["text"] as? String
                    == server.tokenizer.decode(repeated.steps.prefix(rn).map(\.token), skipSpecial: false), "\(rr.1)")
            // Penalties: the golden's greedy continuation up to its first near-tie.
            let n = penalised.steps.prefix { $0.margin > 1e-2 }.count
            let pprompt = penalised.promptIds.map(String.init).joined(separator: ",")
            let p = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\(pprompt)],\"max_tokens\":\(n),\"temperature\":0,\"ignore_eos\":true,\"presence_penalty\":\(penalised.presencePenalty),\"frequency_penalty\":\(penalised.frequencyPenalty)}")
            #expect(p.0 == 200, "\(p.1)")
            #expect(((try jsonObject(p.1))["choices"] as? [[String: Any]])?.first?["text"] as? String
                    == server.tokenizer.decode(penalised.steps.prefix(n).map(\.token), skipSpecial: false))
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// `n` choices: each its own engine request; a seeded request's choice i is the single request with seed + i
    /// (choice 0 is what n = 1 gives); streamed, every chunk names its choice and each choice ends with its own
    /// finish chunk; usage counts the prompt once and every choice's tokens. More choices than the queue could ever
    /// hold: 400 naming n (not a 429: retrying could never succeed), and nothing is left running.
    @Test func severalChoices() async throws {
        let server = try ServerFixtures.server { $0.maxQueue = 4 }
        try await ServerFixtures.withServer(server) { client in
            let body = "{\"model\":\"a-qv-r4\",\"prompt\":\"hello there\",\"max_tokens\":7,\"temperature\":0.9,\"seed\":17,\"ignore_eos\":true"
            let r = try await client.post("/v1/completions", body + ",\"n\":3}")
            #expect(r.0 == 200, "\(r.1)")
            let o = try jsonObject(r.1)
            let choices = try #require(o["choices"] as? [[String: Any]])
            #expect(choices.map { $0["index"] as? Int } == [0, 1, 2])
            #expect((o["usage"] as? [String: Any])?["completion_tokens"] as? Int == 21)
            var singles: [String] = []
            for i in 0..<3 {
                let one = try await client.post("/v1/completions", body.replacingOccurrences(of: "\"seed\":17", with: "\"seed\":\(17 + i)") + "}")
                singles.append(try #require(((try jsonObject(one.1))["choices"] as? [[String: Any]])?.first?["text"] as? String))
            }
            #expect(choices.map { $0["text"] as? String } == singles)
            #expect(Set(singles).count > 1, "three seeds gave the same text: the choices are not independent")

            let s = try await client.post("/v1/completions", body + ",\"n\":3,\"stream\":true,\"stream_options\":{\"include_usage\":true}}")
            let chunks = try sseEvents(s.1).dropLast().map(jsonObject)
            var texts = ["", "", ""]
            var finishes = [0, 0, 0]
            for c in chunks {
                for choice in c["choices"] as? [[String: Any]] ?? [] {
                    let i = try #require(choice["index"] as? Int)
                    texts[i] += choice["text"] as? String ?? ""
                    if choice["finish_reason"] as? String == "length" { finishes[i] += 1 }
                }
            }
            #expect(texts == singles && finishes == [1, 1, 1])
            #expect((chunks.last?["usage"] as? [String: Any])?["completion_tokens"] as? Int == 21)

            // Chat: a role chunk per choice.
            let chat = try await client.post("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3,\"n\":2,\"stream\":true}")
            let roles = try sseEvents(chat.1).dropLast().map(jsonObject).compactMap {
                (($0["choices"] as? [[String: Any]])?.first).flatMap { c in (c["delta"] as? [String: Any])?["role"] != nil ? c["index"] as? Int : nil }
            }
            #expect(roles == [0, 1])

            // Five choices, four queue places; two prompts of n = 3 likewise.
            try expectError(try await client.post("/v1/completions", body + ",\"n\":5}"), status: 400, param: "n")
            try expectError(try await client.post("/v1/completions", body.replacingOccurrences(of: "\"hello there\"", with: "[\"a\",\"b\"]") + ",\"n\":3}"),
                            status: 400, param: "n")
            // Exactly the queue's size is admitted.
            #expect(try await client.post("/v1/completions", body + ",\"n\":4}").0 == 200)
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// Structured outputs through the API: a JSON schema (`response_format` json_schema, and vLLM's `guided_json` as
    /// an object or as text, which give the same output for a seed), streamed as whole, and `guided_choice`.
    @Test func structuredOutputs() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let schema = "{\"type\":\"object\",\"properties\":{\"word\":{\"type\":\"string\",\"maxLength\":3},\"n\":{\"type\":\"integer\",\"minimum\":-5,\"exclusiveMaximum\":40},"
                + "\"mood\":{\"enum\":[\"up\",\"down\"]}},\"required\":[\"word\",\"n\",\"mood\"]}"
            let blanks = try Self.blankBias()
            let chat = "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"json\"}],\"max_tokens\":150,\"temperature\":1,"
                + "\"logit_bias\":{\(blanks)},\"seed\":"
            var completed = 0
            for seed in 0..<4 {
                let body = chat + "\(seed),\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"t\",\"strict\":true,\"schema\":\(schema)}}"
                let r = try await client.post("/v1/chat/completions", body + "}")
                #expect(r.0 == 200, "\(r.1)")
                let choice = try #require((try jsonObject(r.1))["choices"] as? [[String: Any]]).first
                let content = try #require((choice?["message"] as? [String: Any])?["content"] as? String)
                // The same request streamed gives the same text.
                let s = try await client.post("/v1/chat/completions", body + ",\"stream\":true}")
                let streamed = try sseEvents(s.1).dropLast().map(jsonObject).compactMap {
                    (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["content"] as? String
                }.joined()
                #expect(streamed == content)
                guard choice?["finish_reason"] as? String == "stop" else { continue }
                completed += 1
                let object = try #require(try JSONSerialization.jsonObject(with: Data(content.utf8)) as? [String: Any], "\(content)")
                #expect(Set(object.keys) == ["word", "n", "mood"], "\(content)")
                #expect(((object["word"] as? String)?.count ?? 99) <= 3 && (-5..<40).contains(object["n"] as? Int ?? 99), "\(content)")
                #expect(["up", "down"].contains(object["mood"] as? String ?? ""), "\(content)")
            }
            #expect(completed >= 2, "only \(completed) of 4 answers completed")

            // guided_json as an object and as text: the same grammar, so the same output for a seed.
            let prompt = "{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":60,\"temperature\":1,\"seed\":3,\"guided_json\":"
            let a = try await client.post("/v1/completions", prompt + schema + "}")
            let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [schema], options: [.fragmentsAllowed]), as: UTF8.self).dropFirst().dropLast()
            let b = try await client.post("/v1/completions", prompt + quoted + "}")
            #expect(a.0 == 200 && b.0 == 200, "\(a.1) \(b.1)")
            let text = { (r: (Int, String, HTTPFields)) in ((try? jsonObject(r.1))?["choices"] as? [[String: Any]])?.first?["text"] as? String }
            #expect(text(a) != nil && text(a) == text(b))
            // vLLM's current spelling, structured_outputs: the same grammar, the same output.
            let c = try await client.post("/v1/completions", prompt.replacingOccurrences(of: "\"guided_json\":", with: "\"structured_outputs\":{\"json\":") + schema + "}}")
            #expect(c.0 == 200 && text(c) == text(a), "\(c.1)")
            // disable_any_whitespace: the tiny model, which writes little but whitespace when it may, writes none.
            let d = try await client.post("/v1/completions", prompt.replacingOccurrences(of: "\"guided_json\":", with: "\"structured_outputs\":{\"json\":")
                + schema + ",\"disable_any_whitespace\":true}}")
            let compact = try #require(text(d), "\(d.1)")
            #expect(compact.hasPrefix("{\"") && !compact.contains("\n") && !compact.contains("\t"), "\(compact.debugDescription)")
            #expect(text(a).map { $0.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix("{") } == true, "\(a.1)")

            // guided_choice: exactly one of the strings.
            for seed in 0..<3 {
                let r = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":30,\"temperature\":1,\"seed\":\(seed),"
                    + "\"guided_choice\":[\"yes\",\"no\",\"maybe so\"]}")
                #expect(["yes", "no", "maybe so"].contains(text(r) ?? ""), "\(r.1)")
                let v = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":30,\"temperature\":1,\"seed\":\(seed),"
                    + "\"structured_outputs\":{\"choice\":[\"yes\",\"no\",\"maybe so\"],\"disable_fallback\":true}}")
                #expect(text(v) == text(r), "\(v.1)")
                // A regex: the whole output matches it (the same check as Python's re.fullmatch, by NSRegularExpression).
                let x = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"max_tokens\":40,\"temperature\":1,\"seed\":\(seed),"
                    + "\"structured_outputs\":{\"regex\":\"[A-Z]{2}-\\\\d{3}( ok| no)?\"}}")
                let out = try #require(text(x), "\(x.1)")
                let regex = try NSRegularExpression(pattern: "^[A-Z]{2}-\\d{3}( ok| no)?$")
                #expect(regex.firstMatch(in: out, range: NSRange(out.startIndex..., in: out)) != nil, "\(out.debugDescription)")
            }
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// `logit_bias` members (JSON) that ban the tiny model's whitespace tokens: left alone, the random model writes
    /// little else inside structured output (runs of it are bounded, so answers would mostly run out of tokens).
    static func blankBias() throws -> String {
        let checkpoint = try openCheckpoint(path: FixtureFiles.models.appendingPathComponent("tiny-llama/tiny-llama.F32.gguf").path)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        return (0..<tokenizer.vocabSize).filter { id in
            let b = tokenizer.isSpecial(id) ? [] : tokenizer.tokenBytes(id)
            return !b.isEmpty && b.allSatisfy { [0x20, 0x0A, 0x0D, 0x09].contains($0) }
        }.map { "\"\($0)\":-100" }.joined(separator: ",")
    }

    /// Tool calls, on the default model (SmolLM2; the functions go into the prompt, which the tiny model's 256-token
    /// context cannot hold): a named function's answer is its arguments, valid against its parameters, finish
    /// "stop"; "required" a list of calls to known functions, finish "tool_calls" (one with parallel_tool_calls
    /// false); streamed as one chunk of calls with the same arguments; an earlier answer's calls and a tool's result go
    /// back in as history; "auto" (the default) answers in text or with calls, streamed the same; malformed tools are
    /// 400s naming the parameter.
    @Test func toolCalls() async throws {
        let server = try ServerFixtures.server(adapterRoot: nil, kvBlocks: 512, model: try DefaultModel.require())
        try await ServerFixtures.withServer(server) { client in
            let tools = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Current weather in a city\",\"parameters\":"
                + "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"maxLength\":40},\"unit\":{\"enum\":[\"celsius\",\"fahrenheit\"]}},"
                + "\"required\":[\"city\",\"unit\"]}}},{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"description\":\"Current time\"}}]"
            let base = "{\"model\":\"model\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the weather in Paris?\"}],\"max_tokens\":80,"
                + "\"tools\":\(tools)"
            for sampling in ["\"temperature\":0", "\"temperature\":0.8,\"seed\":1", "\"temperature\":0.8,\"seed\":2"] {
                // Named: the arguments object, finish "stop"; the stream carries the same call.
                let body = base + ",\(sampling),\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}"
                let r = try await client.post("/v1/chat/completions", body + "}")
                #expect(r.0 == 200, "\(r.1)")
                let choice = try #require((try jsonObject(r.1))["choices"] as? [[String: Any]]).first
                #expect(choice?["finish_reason"] as? String == "stop", "\(r.1)")
                let message = try #require(choice?["message"] as? [String: Any])
                #expect(message["content"] is NSNull, "\(r.1)")
                let call = try #require((message["tool_calls"] as? [[String: Any]])?.first, "\(r.1)")
                let function = try #require(call["function"] as? [String: Any])
                #expect(function["name"] as? String == "get_weather" && call["type"] as? String == "function")
                #expect((call["id"] as? String)?.hasPrefix("call_") == true)
                let arguments = try #require(function["arguments"] as? String)
                let parsed = try #require(try JSONSerialization.jsonObject(with: Data(arguments.utf8)) as? [String: Any], "\(arguments)")
                #expect(Set(parsed.keys) == ["city", "unit"] && ["celsius", "fahrenheit"].contains(parsed["unit"] as? String ?? ""), "\(arguments)")
                #expect(((parsed["city"] as? String)?.count ?? 99) <= 40, "\(arguments)")
                let s = try await client.post("/v1/chat/completions", body + ",\"stream\":true}")
                let chunks = try sseEvents(s.1).dropLast().map(jsonObject)
                let deltas = chunks.compactMap { (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["tool_calls"] as? [[String: Any]] }
                // The call named in its first piece, its arguments in pieces that add up to the whole answer's.
                let pieces = deltas.joined()
                let streamed = pieces.compactMap { ($0["function"] as? [String: Any])?["arguments"] as? String }.joined()
                #expect(streamed == arguments && pieces.allSatisfy { $0["index"] as? Int == 0 }, "\(s.1)")
                #expect((pieces.first?["id"] as? String)?.hasPrefix("call_") == true && (pieces.first?["function"] as? [String: Any])?["name"] as? String == "get_weather")
                #expect(pieces.dropFirst().allSatisfy { $0["id"] == nil }, "\(s.1)")
                #expect((chunks.last?["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String == "stop")

                // Required: finish "tool_calls", known functions (get_time takes no arguments: {}); one call at most
                // without parallel calls.
                for parallel in [true, false] {
                    let req = try await client.post("/v1/chat/completions", base + ",\(sampling),\"tool_choice\":\"required\",\"parallel_tool_calls\":\(parallel)}")
                    let c = try #require((try jsonObject(req.1))["choices"] as? [[String: Any]]).first
                    #expect(c?["finish_reason"] as? String == "tool_calls", "\(req.1)")
                    let calls = try #require((c?["message"] as? [String: Any])?["tool_calls"] as? [[String: Any]], "\(req.1)")
                    #expect(!calls.isEmpty && (parallel || calls.count == 1), "\(req.1)")
                    #expect(Set(calls.compactMap { $0["id"] as? String }).count == calls.count)
                    for call in calls {
                        let f = call["function"] as? [String: Any]
                        let args = try #require(try JSONSerialization.jsonObject(with: Data((f?["arguments"] as? String ?? "").utf8)) as? [String: Any])
                        switch f?["name"] as? String {
                        case "get_weather"?: #expect(Set(args.keys) == ["city", "unit"], "\(req.1)")
                        case "get_time"?: #expect(args.isEmpty, "\(req.1)")
                        default: Issue.record("unknown function: \(req.1)")
                        }
                    }
                }
            }

            // Required, cut short by max_tokens: the calls the stream sends (each begun call's arguments so far), finish
            // "length", never the call syntax as content.
            for maxTokens in [6, 14, 30] {
                let cut = base.replacingOccurrences(of: "\"max_tokens\":80", with: "\"max_tokens\":\(maxTokens)") + ",\"temperature\":0,\"tool_choice\":\"required\""
                let whole = try await client.post("/v1/chat/completions", cut + "}")
                let c = try #require((try jsonObject(whole.1))["choices"] as? [[String: Any]]).first
                #expect(c?["finish_reason"] as? String == "length", "\(whole.1)")
                let message = try #require(c?["message"] as? [String: Any])
                #expect(message["content"] is NSNull, "\(whole.1)")
                let calls = (message["tool_calls"] as? [[String: Any]] ?? []).map {
                    (($0["function"] as? [String: Any])?["name"] as? String ?? "", ($0["function"] as? [String: Any])?["arguments"] as? String ?? "")
                }
                let s = try await client.post("/v1/chat/completions", cut + ",\"stream\":true}")
                let chunks = try sseEvents(s.1).dropLast().map(jsonObject)
                var streamed: [(String, String)] = []
                for piece in chunks.compactMap({ (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["tool_calls"] as? [[String: Any]] }).joined() {
                    let i = try #require(piece["index"] as? Int), f = piece["function"] as? [String: Any]
                    if i == streamed.count { streamed.append((f?["name"] as? String ?? "", "")) }
                    streamed[i].1 += f?["arguments"] as? String ?? ""
                }
                #expect(calls.map(\.0) == streamed.map(\.0) && calls.map(\.1) == streamed.map(\.1), "max_tokens \(maxTokens): \(whole.1) against \(streamed)")
                if maxTokens == 30 { #expect(!calls.isEmpty, "\(whole.1)") }
            }

            // A stop string never cuts a call: named and required answers with stops that match inside the call's syntax
            // are the answers without them, whole and streamed (they returned the call cut short as content).
            func calls(_ body: String) throws -> ([String], String?) {
                let c = try #require((try jsonObject(body))["choices"] as? [[String: Any]]).first
                let message = try #require(c?["message"] as? [String: Any])
                #expect(message["content"] is NSNull, "\(body)")
                let functions = (message["tool_calls"] as? [[String: Any]] ?? []).compactMap { $0["function"] as? [String: Any] }
                return (functions.map { "\($0["name"] as? String ?? "?") \($0["arguments"] as? String ?? "?")" }, c?["finish_reason"] as? String)
            }
            for choice in ["{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}", "\"required\""] {
                let plain = base + ",\"temperature\":0,\"tool_choice\":\(choice)"
                let expected = try calls(try await client.post("/v1/chat/completions", plain + "}").1)
                #expect(!expected.0.isEmpty)
                for stop in ["[\"\\\"}\"]", "[\"weather\",\"city\",\"[\"]"] {
                    let r = try await client.post("/v1/chat/completions", plain + ",\"stop\":\(stop)}")
                    #expect(r.0 == 200, "\(r.1)")
                    let got = try calls(r.1)
                    #expect(got.0 == expected.0 && got.1 == expected.1, "stop \(stop): \(r.1)")
                    let s = try await client.post("/v1/chat/completions", plain + ",\"stop\":\(stop),\"stream\":true}")
                    let chunks = try sseEvents(s.1).dropLast().map(jsonObject)
                    let args = chunks.compactMap { (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["tool_calls"] as? [[String: Any]] }
                        .joined().compactMap { ($0["function"] as? [String: Any])?["arguments"] as? String }.joined()
                    #expect(args == expected.0.map { String($0.drop { $0 != " " }.dropFirst()) }.joined(), "stop \(stop), streamed: \(s.1)")
                }
            }

            // History: an answer's calls and the tool's result, then a plain answer.
            let history = "[{\"role\":\"user\",\"content\":\"weather?\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
                + "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Rome\\\"}\"}}]},"
                + "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"sunny\"}]"
            let h = try await client.post("/v1/chat/completions", "{\"model\":\"model\",\"messages\":\(history),\"max_tokens\":3,\"tools\":\(tools),\"tool_choice\":\"none\"}")
            #expect(h.0 == 200, "\(h.1)")

            let user = "{\"model\":\"model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3"
            // auto (the default with tools): the model answers in text or calls; either way a well-formed answer. One
            // example exchange first (a call, its result, an answer): the 135M model follows the call format from it.
            let shot = "{\"role\":\"user\",\"content\":\"What is the weather in Paris?\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
                + "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\",\\\"unit\\\":\\\"celsius\\\"}\"}}]},"
                + "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18 degrees, sunny\"},{\"role\":\"assistant\",\"content\":\"It is 18 degrees and sunny in Paris.\"},"
            var autoCalls = 0, autoTexts = 0
            for (question, sampling) in [("What is the weather in Rome?", "\"temperature\":0"), ("Hi! Who are you?", "\"temperature\":0"),
                                         ("What is the weather in Berlin?", "\"temperature\":0.7,\"seed\":1")] {
                for choice in ["", ",\"tool_choice\":\"auto\""] {
                    let body = "{\"model\":\"model\",\"messages\":[\(shot){\"role\":\"user\",\"content\":\"\(question)\"}],\"max_tokens\":60,\(sampling),\"tools\":\(tools)\(choice)"
                    let r = try await client.post("/v1/chat/completions", body + "}")
                    #expect(r.0 == 200, "\(r.1)")
                    let c = try #require((try jsonObject(r.1))["choices"] as? [[String: Any]]).first
                    let message = try #require(c?["message"] as? [String: Any])
                    if c?["finish_reason"] as? String == "tool_calls" {
                        autoCalls += 1
                        let calls = try #require(message["tool_calls"] as? [[String: Any]], "\(r.1)")
                        #expect(!calls.isEmpty && message["content"] is NSNull, "\(r.1)")
                        for call in calls { #expect(["get_weather", "get_time"].contains((call["function"] as? [String: Any])?["name"] as? String ?? "")) }
                    } else {
                        autoTexts += 1
                        let text = try #require(message["content"] as? String, "\(r.1)")
                        #expect(!text.hasPrefix(ToolCallMode.marker) && message["tool_calls"] == nil, "\(r.1)")
                    }
                    // Streamed: the same answer (text as it comes once it is not a call; a call named once, then its arguments).
                    let s = try await client.post("/v1/chat/completions", body + ",\"stream\":true}")
                    let deltas = try sseEvents(s.1).dropLast().map(jsonObject).compactMap { ($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any] }
                    let streamedText = deltas.compactMap { $0["content"] as? String }.joined()
                    let streamedCalls = deltas.compactMap { $0["tool_calls"] as? [[String: Any]] }.joined().filter { $0["id"] != nil }
                    #expect(streamedText == (message["content"] as? String ?? "") && streamedCalls.count == (message["tool_calls"] as? [[String: Any]])?.count ?? 0,
                            "\(s.1) vs \(r.1)")
                }
            }
            #expect(autoCalls >= 2 && autoTexts >= 2, "auto: \(autoCalls) calls, \(autoTexts) texts")

            for (body, param) in [
                (user + ",\"tools\":\(tools),\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}}", "tool_choice"),
                (user + ",\"tool_choice\":\"required\"}", "tool_choice"),
                (user + ",\"tools\":\(tools),\"tool_choice\":\"required\",\"logprobs\":true}", "logprobs"),
                (user + ",\"tools\":\(tools),\"tool_choice\":\"required\",\"guided_choice\":[\"a\"]}", "tool_choice"),
                (user + ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}],\"tool_choice\":\"none\"}", "tools[0]"),
                (user + ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"string\",\"pattern\":\"(x)\\\\1\"}}}],\"tool_choice\":\"none\"}", "tools[0]"),
                (user + ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}", "tools[1]"),
                ("{\"model\":\"model\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].tool_call_id"),
                ("{\"model\":\"model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_call_id\":\"c\"}]}", "messages[0].tool_call_id"),
                ("{\"model\":\"model\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}]}", "messages[0].tool_calls"),
            ] {
                try expectError(try await client.post("/v1/chat/completions", body), status: 400, param: param)
            }
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// /v1/models lists the base and every adapter with its parent; /health answers.
    @Test func modelsAndHealth() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let r = try await client.send("/v1/models", .get)
            #expect(r.0 == 200)
            let data = try #require((try jsonObject(r.1))["data"] as? [[String: Any]])
            let ids = data.compactMap { $0["id"] as? String }
            // mix-cat is a static composition (composition.json), mole-abc a MoLE one (mole_config.json): listed and
            // served like adapters.
            #expect(ids == ["tiny-llama", "a-qv-r4", "b-all-r8-rslora", "c-kod-r2", "e-all-r4", "f-pattern", "mix-cat", "mix-dare-linear", "mix-dare-ties", "mix-linear", "mix-ties", "mole-abc", "mole-abc-layer", "mole-abc-net", "mole-ac-matrix"])
            #expect(data[0]["parent"] is NSNull)
            #expect(data.dropFirst().allSatisfy { $0["parent"] as? String == "tiny-llama" && $0["object"] as? String == "model" })
            // One model by name (OpenAI's models.retrieve): the same card; an unknown name is a 404.
            let one = try await client.send("/v1/models/b-all-r8-rslora", .get)
            #expect(one.0 == 200, "\(one.1)")
            let card = try jsonObject(one.1)
            #expect(card["id"] as? String == "b-all-r8-rslora" && card["parent"] as? String == "tiny-llama" && card["object"] as? String == "model")
            #expect((try jsonObject(try await client.send("/v1/models/tiny-llama", .get).1))["parent"] is NSNull)
            try expectError(try await client.send("/v1/models/nope", .get), status: 404, param: "model")
            #expect(try await client.send("/v1/models/b-all-r8%2Drslora", .get).0 == 200, "percent-encoded names are decoded")
            try expectError(try await client.send("/v1/models/%2e%2e%2Fa-qv-r4", .get), status: 404, param: "model")
            try expectError(try await client.send("/v1/models/a-qv-r4/extra", .get), status: 404, param: "model")
            let h = try await client.send("/health", .get)
            #expect(h.0 == 200)
            let mix = try await client.post("/v1/completions", #"{"model": "mix-cat", "prompt": "hello", "max_tokens": 3, "temperature": 0}"#)
            #expect(mix.0 == 200, "\(mix.1)")
        }
    }

    /// A MoLE composition by name, whole and restricted with `mole_experts` (its greedy output then changes);
    /// `mole_experts` on anything else, or naming an expert it does not have, is a 400 that names the
    /// parameter; /metrics reports its gates' mean entropy, within (0, ln 3] for three experts.
    @Test func moleComposition() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            func complete(_ extra: String, model: String = "mole-abc") async throws -> (Int, String, HTTPFields) {
                try await client.post("/v1/completions", #"{"model": "\#(model)", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0\#(extra)}"#)
            }
            let whole = try await complete("")
            #expect(whole.0 == 200, "\(whole.1)")
            let ac = try await complete(#", "mole_experts": ["a-qv-r4", "c-kod-r2"]"#)
            #expect(ac.0 == 200, "\(ac.1)")
            let b = try await complete(#", "mole_experts": ["b-all-r8-rslora"]"#)
            #expect(b.0 == 200, "\(b.1)")
            func text(_ r: (Int, String, HTTPFields)) throws -> String {
                ((try jsonObject(r.1))["choices"] as? [[String: Any]])?.first?["text"] as? String ?? ""
            }
            #expect(try text(whole) != text(b) || text(whole) != text(ac), "masking the experts changes nothing")
            try expectError(try await complete(#", "mole_experts": ["a-qv-r4"]"#, model: "a-qv-r4"), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": ["a-qv-r4"]"#, model: "tiny-llama"), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": ["nope"]"#), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": []"#), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": ["a-qv-r4", "a-qv-r4"]"#), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": "a-qv-r4""#), status: 400, param: "mole_experts")
            try expectError(try await complete(#", "mole_experts": [3]"#), status: 400, param: "mole_experts")
            let m = try await client.send("/metrics", .get)
            let line = m.1.split(separator: "\n").first { $0.hasPrefix("dlora_mole_gate_entropy_mean{model=\"mole-abc\"}") }
            let value = try #require(line.flatMap { Double($0.split(separator: " ").last ?? "") }, "\(m.1.prefix(3000))")
            #expect(value > 0 && value <= Foundation.log(3.0) + 1e-9)
            #expect(m.1.contains("dlora_mole_gates_total{model=\"mole-abc\"}"))
        }
    }

    /// Bearer keys: /v1/* needs the API key, adapter management the admin key; health and metrics are open.
    @Test func authentication() async throws {
        let server = try ServerFixtures.server { $0.apiKey = "sk-test"; $0.adminKey = "admin" }
        try await ServerFixtures.withServer(server) { client in
            let missing = try await client.send("/v1/models", .get)
            try expectError(missing, status: 401, code: "invalid_api_key")
            #expect(missing.2[.wwwAuthenticate] == "Bearer")
            try expectError(try await client.send("/v1/models", .get, key: "sk-wrong"), status: 401)
            try expectError(try await client.send("/v1/models", .get, key: "sk-test-longer"), status: 401)
            #expect(try await client.send("/v1/models", .get, key: "sk-test").0 == 200)
            try expectError(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\"}"), status: 401)
            #expect(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":2}", key: "sk-test").0 == 200)
            // The API key is not the admin key.
            try expectError(try await client.post("/v1/load_lora_adapter", "{\"lora_name\":\"x\",\"lora_path\":\"a-qv-r4\"}", key: "sk-test"), status: 401)
            #expect(try await client.send("/health", .get).0 == 200)
            #expect(try await client.send("/metrics", .get).0 == 200)
        }
    }

    /// vLLM's load/unload endpoints: admin key, paths confined to the adapter root, names served at once.
    @Test func loadAndUnloadAdapters() async throws {
        // A root with one adapter and a symlink that leads out of it.
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-server-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: ServerFixtures.adapterRoot + "/a-qv-r4", toPath: root.appendingPathComponent("sub/qv").path)
        try FileManager.default.createSymbolicLink(atPath: root.appendingPathComponent("escape").path,
                                                   withDestinationPath: ServerFixtures.adapterRoot + "/c-kod-r2")
        let server = try ServerFixtures.server(adapterRoot: root.path) { $0.adminKey = "admin" }
        try await ServerFixtures.withServer(server) { client in
            let load = "{\"lora_name\":\"mine\",\"lora_path\":\"sub/qv\"}"
            try expectError(try await client.post("/v1/load_lora_adapter", load), status: 401)
            try expectError(try await client.post("/v1/load_lora_adapter", load, key: "nope"), status: 401)
            let ok = try await client.post("/v1/load_lora_adapter", load, key: "admin")
            #expect(ok.0 == 200, "\(ok.1)")
            let models = try await client.send("/v1/models", .get)
            #expect(models.1.contains("\"id\":\"mine\""))
            let ask = "{\"model\":\"mine\",\"prompt\":[1,2,3],\"max_tokens\":6,\"temperature\":0,\"ignore_eos\":true}"
            let viaLoaded = try await client.post("/v1/completions", ask)
            #expect(viaLoaded.0 == 200)
            try expectError(try await client.post("/v1/load_lora_adapter", load, key: "admin"), status: 400, param: "lora_name")

            // Traversal, absolute paths, symlink escapes, bad names.
            for (body, param) in [
                ("{\"lora_name\":\"t1\",\"lora_path\":\"../tiny-llama/a-qv-r4\"}", "lora_path"),
                ("{\"lora_name\":\"t2\",\"lora_path\":\"sub/../../x\"}", "lora_path"),
                ("{\"lora_name\":\"t3\",\"lora_path\":\"\(ServerFixtures.adapterRoot)/a-qv-r4\"}", "lora_path"),
                ("{\"lora_name\":\"t4\",\"lora_path\":\"escape\"}", "lora_path"),
                ("{\"lora_name\":\"t5\",\"lora_path\":\"missing\"}", "lora_path"),
                ("{\"lora_name\":\"../t6\",\"lora_path\":\"sub/qv\"}", "lora_name"),
                ("{\"lora_name\":\"t6b\",\"lora_path\":\".\"}", "lora_path"),
                ("{\"lora_name\":\"t7\"}", "lora_path"),
                ("{\"lora_path\":\"sub/qv\"}", "lora_name"),
                ("{\"lora_name\":\"tiny-llama\",\"lora_path\":\"sub/qv\"}", "lora_name"),
                ("{\"lora_name\":\"t8\",\"lora_path\":\"sub/qv\",\"extra\":1}", "extra"),
            ] {
                try expectError(try await client.post("/v1/load_lora_adapter", body, key: "admin"), status: 400, param: param)
            }
            let root = try await client.post("/v1/load_lora_adapter", "{\"lora_name\":\"t9\",\"lora_path\":\"./\"}", key: "admin")
            #expect(root.1.contains("is the adapter root itself"), "\(root.1)")
            // The symlinked directory under the root is not served by its name either.
            try expectError(try await client.post("/v1/completions", "{\"model\":\"escape\",\"prompt\":\"hi\"}"), status: 404, code: "model_not_found")

            #expect(try await client.post("/v1/unload_lora_adapter", "{\"lora_name\":\"mine\"}", key: "admin").0 == 200)
            try expectError(try await client.post("/v1/completions", ask), status: 404, code: "model_not_found")
            try expectError(try await client.post("/v1/unload_lora_adapter", "{\"lora_name\":\"mine\"}", key: "admin"), status: 404)
            #expect(!(try await client.send("/v1/models", .get)).1.contains("\"id\":\"mine\""))
        }
        // No admin key: the endpoints are disabled.
        let closed = try ServerFixtures.server()
        try await ServerFixtures.withServer(closed) { client in
            try expectError(try await client.post("/v1/load_lora_adapter", "{\"lora_name\":\"x\",\"lora_path\":\"a-qv-r4\"}"), status: 404)
            try expectError(try await client.post("/v1/unload_lora_adapter", "{\"lora_name\":\"a-qv-r4\"}"), status: 404)
        }
    }

    /// Every malformed request is a 4xx in OpenAI's shape; the server stays healthy and idle afterwards.
    @Test func malformedInputSweep() async throws {
        let server = try ServerFixtures.server { $0.maxBodyBytes = 64 << 10 }
        let long = String(repeating: "many words make a long prompt ", count: 200)
        let deep = String(repeating: "[", count: 10_000)
        let cases: [(String, String, Int, String?)] = [
            ("/v1/completions", "", 400, nil),
            ("/v1/completions", "{", 400, nil),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\"", 400, nil),
            ("/v1/completions", "[]", 400, nil),
            ("/v1/completions", "null", 400, nil),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\"} trailing", 400, nil),
            // A key repeated in a nested object (a proxy keeping the first would see a user turn where the last is a
            // system turn), and a lone surrogate escape, are refused, not merged or repaired.
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"role\":\"system\",\"content\":\"x\"}]}", 400, nil),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":true,\"include_usage\":false},\"stream\":true}", 400, nil),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"a\\ud800b\"}", 400, nil),
            ("/v1/completions", deep, 400, nil),
            ("/v1/completions", "{\"model\":5,\"prompt\":\"hi\"}", 400, "model"),
            ("/v1/completions", "{\"prompt\":\"hi\"}", 400, "model"),
            ("/v1/completions", "{\"model\":\"tiny-llama\"}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"\"}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\"a\",[1]]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\"a\",\"\"]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[[1],[]]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[\(Array(repeating: "\"a\"", count: 257).joined(separator: ","))]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[1,-3]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[1,99999]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[]}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":{\"a\":1}}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"\(long)\"}", 400, "prompt"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":255}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":\"10\"}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":1e400}", 400, nil),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":99999999999999999999}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":-1}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":0}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":2.5}", 400, "max_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"temperature\":\"hot\"}", 400, "temperature"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"temperature\":5}", 400, "temperature"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"top_p\":0}", 400, "top_p"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"top_k\":-5}", 400, "top_k"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"n\":0}", 400, "n"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"n\":129}", 400, "n"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"n\":1.5}", 400, "n"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stop\":5}", 400, "stop"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stop\":[\"\"]}", 400, "stop"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"seed\":\"x\"}", 400, "seed"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stream\":\"yes\"}", 400, "stream"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":true}}", 400, "stream_options"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logprobs\":21}", 400, "logprobs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logprobs\":true}", 400, "logprobs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logprobs\":-1}", 400, "logprobs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"presence_penalty\":2.5}", 400, "presence_penalty"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"repetition_penalty\":0}", 400, "repetition_penalty"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"yaml\"}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a b\",\"schema\":{}}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"type\":\"string\",\"pattern\":\"a+\",\"maxLength\":3}}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{},\"extra\":1}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"$ref\":\"#/nowhere\"}}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}}}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":{\"type\":\"integer\",\"multipleOf\":0.5}}", 400, "guided_json"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}}", 400, "guided_json"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":\"{not json\"}", 400, "guided_json"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":5}", 400, "guided_json"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":{\"type\":\"array\",\"maxItems\":100000}}", 400, "guided_json"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_choice\":[]}", 400, "guided_choice"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"regex\":\"(a)\\\\1\"}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"grammar\":\"root ::= x\"}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_regex\":\"a(?=b)\"}", 400, "guided_regex"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_regex\":5}", 400, "guided_regex"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"json\":{},\"choice\":[\"a\"]}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"json\":{\"not\":{}}}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"choice\":[\"a\"],\"disable_any_whitespace\":1}}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":{\"json_object\":true},\"guided_choice\":[\"a\"]}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"structured_outputs\":[1]}", 400, "structured_outputs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_choice\":[1]}", 400, "guided_choice"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_choice\":[\"\"]}", 400, "guided_choice"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_choice\":[\"a\"],\"guided_json\":{}}", 400, "guided_choice"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"guided_json\":{},\"response_format\":{\"type\":\"json_object\"}}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"response_format\":\"json\"}", 400, "response_format"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"min_p\":1.5}", 400, "min_p"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"min_tokens\":-1}", 400, "min_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"min_tokens\":5,\"max_tokens\":4}", 400, "min_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"min_tokens\":300}", 400, "min_tokens"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stop_token_ids\":[-1]}", 400, "stop_token_ids"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stop_token_ids\":[320]}", 400, "stop_token_ids"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"stop_token_ids\":5}", 400, "stop_token_ids"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"frequency_penalty\":\"x\"}", 400, "frequency_penalty"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":[1]}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"abc\":1}}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"-1\":1}}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"12\":101}}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"12\":\"1\"}}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"320\":1}}", 400, "logit_bias"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"logit_bias\":{\"99999999999999999999\":1}}", 400, "logit_bias"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", 400, "top_logprobs"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}", 400, "top_logprobs"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":3}", 400, "logprobs"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"echo\":\"yes\"}", 400, "echo"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", 400, "echo"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"foo\":1}", 400, "foo"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"model\":\"tiny-llama\",\"prompt\":\"hi\"}", 400, "model"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"messages\":[]}", 400, "messages"),
            ("/v1/completions", "{\"model\":\"nope\",\"prompt\":\"hi\"}", 404, "model"),
            ("/v1/completions", "{\"model\":\"../../etc/passwd\",\"prompt\":\"hi\"}", 404, "model"),
            ("/v1/completions", "{\"model\":\"/etc/passwd\",\"prompt\":\"hi\"}", 404, "model"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\"}", 400, "messages"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[]}", 400, "messages"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":\"hi\"}", 400, "messages"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages[0].role"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", 400, "messages[0].content"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}", 400, "messages[0].tool_calls"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"refusal\":null}]}", 400, "messages[0].refusal"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"refusal\":\"no\"}]}", 400, "messages[0].refusal"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"tool_calls\":[{}]}]}", 400, "messages[0].tool_calls"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\",\"audio\":{}}]}", 400, "messages[0].audio"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"service_tier\":\"flex\"}", 400, "service_tier"),
            ("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"service_tier\":\"auto\"}", 400, "service_tier"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"prompt\":\"x\"}", 400, "prompt"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", 400, "tools[0]"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3,\"max_completion_tokens\":4}", 400, "max_completion_tokens"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":9000}", 400, "max_completion_tokens"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":9000}", 400, "max_tokens"),
            // OpenAI parameters not implemented: refused with a value (accepted as null: below).
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"low\"}", 400, "reasoning_effort"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"modalities\":[\"text\"]}", 400, "modalities"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"wizardry\":null}", 400, "wizardry"),
            // A refusal part is an assistant's only.
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"refusal\",\"refusal\":\"no\"}]}]}", 400, "messages[0].content"),
            ("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"refusal\",\"text\":\"no\"}]}]}", 400, "messages[0].content"),
        ]
        try await ServerFixtures.withServer(server) { client in
            for (uri, body, status, param) in cases {
                let r = try await client.post(uri, body)
                try expectError(r, status: status, param: param)
            }
            // A limit on max_tokens says context_length_exceeded, as the context's own limit does (clients trim on it).
            try expectError(try await client.post("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":9000}"),
                            status: 400, code: "context_length_exceeded")
            // Accepted: unimplemented OpenAI parameters sent as null; an assistant's refusal part (as text in the history).
            for body in ["{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":2,\"reasoning_effort\":null,\"modalities\":null,\"prediction\":null,\"audio\":null}",
                         "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"refusal\",\"refusal\":\"I cannot.\"}]},{\"role\":\"user\",\"content\":\"y\"}],\"max_tokens\":2}"] {
                let r = try await client.post("/v1/chat/completions", body)
                #expect(r.0 == 200, "\(body): \(r.1)")
            }
            // vLLM's /version and the /ping liveness alias (GET and POST).
            let version = try await client.send("/version", .get)
            let versionJSON = try jsonObject(version.1)
            #expect(version.0 == 200 && versionJSON["version"] as? String == VersionInfo.current, "\(version.1)")
            let pingGet = try await client.send("/ping", .get), pingPost = try await client.post("/ping", "")
            #expect(pingGet.0 == 200 && pingPost.0 == 200)
            // A parse error says what and where, once, in the request's own terms.
            for (body, message) in [(deep, "invalid JSON: request body: nesting too deep at byte 256"),
                                    ("{\"model\":\"tiny-llama\",\"prompt\":\"hi\"", "invalid JSON: request body: unexpected end at byte 35")] {
                let error = try jsonObject(try await client.post("/v1/completions", body).1)["error"] as? [String: Any]
                #expect(error?["message"] as? String == message)
            }
            // Invalid UTF-8, inside a string and outside.
            for bytes: [UInt8] in [[0x7B, 0xFF, 0xFE, 0x7D], Array("{\"model\":\"tiny-llama\",\"prompt\":\"".utf8) + [0xC3, 0x28] + Array("\"}".utf8)] {
                try expectError(try await client.send("/v1/completions", .post, body: ByteBuffer(bytes: bytes)), status: 400)
            }
            // Too large a body; unknown routes and methods.
            let big = "{\"model\":\"tiny-llama\",\"prompt\":\"" + String(repeating: "x", count: 70 << 10) + "\"}"
            try expectError(try await client.post("/v1/completions", big), status: 413)
            try expectError(try await client.send("/v1/nothing", .get), status: 404)
            try expectError(try await client.send("/v1/completions", .get), status: 405)
            try expectError(try await client.send("/v1/models", .delete), status: 405)
            // Still healthy, and still serving.
            #expect(try await client.send("/health", .get).0 == 200)
            #expect(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\",\"max_tokens\":3}").0 == 200)
            // An assistant message as the OpenAI SDK echoes it back (empty fields), and the default service tier.
            let echoed = "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\",\"refusal\":null,"
                + "\"tool_calls\":[],\"function_call\":null,\"audio\":null,\"annotations\":[]},{\"role\":\"user\",\"content\":\"more\"}]"
            for extra in ["", ",\"service_tier\":\"auto\"", ",\"service_tier\":\"default\""] {
                let r = try await client.post("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":\(echoed),\"max_tokens\":3\(extra)}")
                #expect(r.0 == 200, "\(r.1)")
            }
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// A full queue answers 429 with Retry-After; a shutdown stops admitting (503), lets the running request
    /// go on until the deadline, then cancels it cleanly and frees everything.
    @Test func queueLimitAndDrain() async throws {
        // 250 ms per token: the 200-token request needs 50 s, so it is still running when the drain's 300 ms
        // deadline cuts it even if the test's own tasks are held up for tens of seconds by other suites (a
        // 20 ms step let it finish first once, in a full run whose cooperative pool was busy for ~45 s).
        let server = try ServerFixtures.server(configure: { $0.maxQueue = 1; $0.shutdownDeadline = .milliseconds(300) },
                                               logitsObserver: { _, _ in usleep(250_000) })
        try await ServerFixtures.withServer(server) { client in
            async let running = client.post("/v1/completions", "{\"model\":\"a-qv-r4\",\"prompt\":\"hi\",\"max_tokens\":200,\"ignore_eos\":true,\"stream\":true}")
            // Up to 60 s for it to start: prompts share one tokenization queue per process, other suites' long
            // prompts may be on it, and the cluster suite's replicas load both cores (a wait, not a bound under test).
            for _ in 0..<6000 where server.engine.snapshot.running == 0 || server.inFlight == 0 {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(server.inFlight == 1)
            let full = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\"}")
            try expectError(full, status: 429, code: "queue_full")
            #expect(full.2[.retryAfter] != nil)

            let started = ContinuousClock.now
            async let drained: Void = server.drain()
            try await Task.sleep(for: .milliseconds(50))
            try expectError(try await client.send("/health", .get), status: 503)
            try expectError(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"hi\"}"), status: 503)
            await drained
            #expect(ContinuousClock.now - started < .seconds(3))
            let r = try await running
            let events = sseEvents(r.1)
            #expect(events.last == "[DONE]")
            #expect(events.dropLast().last?.contains("\"error\"") == true, "\(events.suffix(2))")
        }
        #expect(try await ServerFixtures.waitIdle(server))
    }

    /// A client that leaves mid-request (streamed or not) cancels it at once: KV blocks, adapter references
    /// and its queue place are freed long before the generation would have ended.
    @Test func disconnectCancels() async throws {
        let server = try ServerFixtures.server(slow: true)
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            for stream in [false, true] {
                let body = "{\"model\":\"a-qv-r4\",\"prompt\":\"hi\",\"max_tokens\":200,\"ignore_eos\":true,\"stream\":\(stream)}"
                let conn = try RawConnection(port: port)
                conn.send(RawConnection.post("/v1/completions", body))
                if stream {
                    #expect(conn.read(until: "data: ").contains("200 OK"))
                }
                for _ in 0..<200 where server.engine.snapshot.running == 0 { try await Task.sleep(for: .milliseconds(10)) }
                #expect(server.engine.snapshot.running == 1)
                let left = ContinuousClock.now
                conn.closeNow()
                #expect(try await ServerFixtures.waitIdle(server))
                // 200 tokens at ≥ 20 ms each would take ≥ 4 s.
                #expect(ContinuousClock.now - left < .seconds(2), "stream: \(stream)")
            }
            let m = try await client.send("/metrics", .get)
            #expect(m.1.contains("dlora_requests_total{model=\"a-qv-r4\",status=\"cancelled\"} 2"), "\(m.1)")
        }
    }

    /// /metrics: per-adapter request counts and latency histograms, engine occupancy and batching counters.
    @Test func prometheusMetrics() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            #expect(try await client.post("/v1/completions", "{\"model\":\"a-qv-r4\",\"prompt\":[5,6,7],\"max_tokens\":16,\"ignore_eos\":true}").0 == 200)
            #expect(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[5,6,7],\"max_tokens\":4,\"ignore_eos\":true}").0 == 200)
            #expect(try await client.post("/v1/completions", "{\"model\":\"nope\",\"prompt\":\"x\"}").0 == 404)
            // Invalid requests count too, under "_unknown" (the model field may be what is wrong), and an invalid
            // mole_experts under the model it names.
            #expect(try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"x\",\"top_p\":0}").0 == 400)
            #expect(try await client.post("/v1/completions", "{\"prompt\":\"x\"}").0 == 400)
            #expect(try await client.post("/v1/completions", "{\"model\":\"a-qv-r4\",\"prompt\":\"x\",\"mole_experts\":[\"e\"]}").0 == 400)
            let r = try await client.send("/metrics", .get)
            #expect(r.0 == 200)
            #expect(r.2[.contentType]?.hasPrefix("text/plain") == true)
            let text = r.1
            for line in [
                "dlora_requests_total{model=\"a-qv-r4\",status=\"ok\"} 1",
                "dlora_requests_total{model=\"tiny-llama\",status=\"ok\"} 1",
                "dlora_requests_total{model=\"_unknown\",status=\"404\"} 1",
                "dlora_requests_total{model=\"_unknown\",status=\"400\"} 2",
                "dlora_requests_total{model=\"a-qv-r4\",status=\"400\"} 1",
                "dlora_generation_tokens_total{model=\"a-qv-r4\"} 16",
                "dlora_prompt_tokens_total{model=\"tiny-llama\"} 3",
                "dlora_time_to_first_token_seconds_count{model=\"a-qv-r4\"} 1",
                "dlora_inter_token_latency_seconds_count{model=\"a-qv-r4\"} 15",
                "dlora_e2e_request_latency_seconds_count{model=\"tiny-llama\"} 1",
                // The same families under vLLM's names and label (its dashboards read these).
                "# TYPE vllm:time_to_first_token_seconds histogram",
                "vllm:time_to_first_token_seconds_count{model_name=\"a-qv-r4\"} 1",
                "vllm:inter_token_latency_seconds_count{model_name=\"a-qv-r4\"} 15",
                // vLLM's older name for it, which its published dashboards read.
                "# TYPE vllm:time_per_output_token_seconds histogram",
                "vllm:time_per_output_token_seconds_count{model_name=\"a-qv-r4\"} 15",
                "vllm:e2e_request_latency_seconds_count{model_name=\"tiny-llama\"} 1",
                "# TYPE vllm:num_preemptions_total counter",
                "vllm:num_preemptions_total{model_name=\"tiny-llama\"} 0",
                "dlora_request_success_total{model=\"a-qv-r4\",finished_reason=\"length\"} 1",
                "vllm:request_success_total{model_name=\"tiny-llama\",finished_reason=\"length\"} 1",
                "vllm:prompt_tokens_total{model_name=\"tiny-llama\"} 3",
                "vllm:generation_tokens_total{model_name=\"a-qv-r4\"} 16",
                "dlora_requests_running 0",
                "dlora_requests_waiting 0",
                "dlora_requests_in_flight 0",
                "dlora_adapters_resident 1",
                "dlora_adapter_loads_total 1",
                "dlora_adapter_file_loads_total 1",
                "dlora_adapter_file_load_seconds_total",
                "dlora_swaps_total{direction=\"out\"} 0",
                "dlora_mode_switches_total",
                "dlora_adapter_merges_total",
                "dlora_adapter_merge_seconds_total",
                "dlora_adapter_unmerges_total",
                "dlora_adapter_unmerge_seconds_total",
                "dlora_iterations_total{mode=\"unmerged\"}",
                "dlora_iterations_total{mode=\"merged\"}",
                "dlora_kv_cache_usage_ratio",
                "dlora_adapter_pool_blocks",
            ] {
                #expect(text.contains(line), "missing: \(line)")
            }
            #expect(text.contains("# TYPE dlora_time_to_first_token_seconds histogram"))
            // The one adapter file load took some time (reading and validating a PEFT adapter is not free).
            let loadSeconds = text.split(separator: "\n").first { $0.hasPrefix("dlora_adapter_file_load_seconds_total ") }
                .flatMap { Double($0.split(separator: " ").last ?? "") }
            #expect((loadSeconds ?? 0) > 0, "\(String(describing: loadSeconds))")
        }
    }
}

/// The tiny Llama's transformers goldens (Tests/Fixtures/models).
enum ModelGolden {
    struct Case: Decodable {
        let promptIds: [Int]
        let greedyIds: [Int]
        let greedyMargins: [Float]
    }
    struct File: Decodable { let cases: [Case] }

    static func load() throws -> File {
        try FixtureFiles.decodeGolden(File.self, at: FixtureFiles.models.appendingPathComponent("tiny-llama/goldens/F32.json"))
    }
}
