import Engine
import ServingAPI
import Tokenizers

extension Tokenizer {
    /// A token's text and bytes as `logprobs` report them (the text is the bytes as UTF-8, U+FFFD where they end
    /// inside a character).
    func logprobText(_ id: Int) -> (text: String, bytes: [Int]) {
        let bytes = tokenBytes(id)
        return (String(decoding: bytes, as: UTF8.self), bytes.map(Int.init))
    }

    /// The engine's log-probabilities of a token as the API reports them.
    func render(_ lp: TokenLogprobs) -> TokenLogprob {
        let (text, bytes) = logprobText(lp.token)
        let top = zip(lp.topTokens, lp.topLogprobs).map { id, value in
            let (t, b) = logprobText(id)
            return TopLogprob(token: t, logprob: TokenLogprob.finite(Double(value)), bytes: b)
        }
        return TokenLogprob(token: text, logprob: TokenLogprob.finite(Double(lp.logprob)), bytes: bytes, topLogprobs: top)
    }
}

extension OpenAIServer {
    /// What completions' `echo` sends back: the prompt's text (as the client wrote it, or its token ids decoded),
    /// and with prompt log-probabilities the first token's text and the others' records.
    func promptEcho(text: String, firstToken: Int, logprobs: [TokenLogprobs]?) -> PromptEcho {
        guard let logprobs else { return PromptEcho(text: text) }
        return PromptEcho(text: text, firstToken: tokenizer.logprobText(firstToken).text, logprobs: logprobs.map(tokenizer.render))
    }

    /// The prompt as `echo` returns it.
    func echoText(_ input: GenerationRequest.Input, prompt: [Int]) -> String {
        if case .text(let text) = input { return text }
        return tokenizer.decode(prompt, skipSpecial: false)
    }
}
