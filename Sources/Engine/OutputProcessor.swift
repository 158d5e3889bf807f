import Models
import Tokenizers
import Scheduling

/// What the engine emits for a request per iteration: token ids only. Text is made on the consumer's side.
public struct EngineEvent: Sendable, Equatable {
    public let requestID: RequestID
    /// The sampled token (nil when the request failed).
    public let token: Int?
    /// Set on the request's last event: `.stop` (end-of-sequence token), `.length`, or `.error`.
    public let finish: FinishReason?
    /// Why it failed, with `.error`.
    public let message: String?
    /// The sampled token's log-probabilities, when the request asked for them.
    public var logprobs: TokenLogprobs? = nil
    /// On the request's first event, when it asked for them (`SamplingParams.promptLogprobs`): the prompt's tokens'
    /// log-probabilities, positions 1 ..< prompt length in order.
    public var promptLogprobs: [TokenLogprobs]? = nil
}

/// One piece of a request's output as a client sees it.
public struct GenerationEvent: Sendable, Equatable {
    public let requestID: RequestID
    /// The sampled token (nil on a failure).
    public let token: Int?
    /// Text that is now safe to show (may be empty: a partial UTF-8 character or a possible stop string).
    public let text: String
    public let finish: FinishReason?
    /// Why the request failed, with `.error`.
    public var message: String? = nil
    /// The token's log-probabilities, when the request asked for them and the token is part of the output (not
    /// the end-of-sequence token that finished it).
    public var logprobs: TokenLogprobs? = nil
    /// The prompt's log-probabilities, on the first event (see `EngineEvent.promptLogprobs`).
    public var promptLogprobs: [TokenLogprobs]? = nil
}

/// Turns a request's token events into text, per request and off the engine thread: streaming
/// detokenization and stop strings. A stop string ends the output here; the caller then finishes the
/// request in the engine.
public struct OutputProcessor: Sendable {
    private var detokenizer: StreamingDetokenizer
    private var stopMatcher: StopMatcher
    public private(set) var done = false
    /// `SamplingParams.stopExemptPrefix`, while undecided: the output so far, a proper prefix of it.
    private var exemptPrefix: String?
    private var held = ""
    /// The output began with the exempt prefix: stop strings no longer apply.
    private var exempt = false

    public init(tokenizer: Tokenizer, stop: [String], stopExemptPrefix: String? = nil) {
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer, skipSpecial: true, startsSequence: false)
        stopMatcher = StopMatcher(stops: stop)
        exemptPrefix = stop.isEmpty || stopExemptPrefix?.isEmpty != false ? nil : stopExemptPrefix
    }

    /// Replays tokens generated before (an imported request), so streaming resumes where it stopped; the
    /// text they make is not emitted again.
    public mutating func prime(_ generated: some Sequence<Int>) {
        for t in generated { _ = matched(detokenizer.append(t)) }
    }

    /// New output text through the stop strings, unless the output begins with the exempt prefix: held while it
    /// may still, passed as it is once it does, through the stop matcher (what was held first) once it cannot.
    private mutating func matched(_ text: String) -> (emit: String, stopped: Bool) {
        if exempt { return (text, false) }
        guard let prefix = exemptPrefix else { return stopMatcher.append(text) }
        held += text
        if held.hasPrefix(prefix) {
            exempt = true
            exemptPrefix = nil
            defer { held = "" }
            return (held, false)
        }
        if prefix.hasPrefix(held) { return ("", false) }
        exemptPrefix = nil
        defer { held = "" }
        return stopMatcher.append(held)
    }

    /// What the output still holds when it ends, through the stop strings: the detokenizer's tail, text held as a
    /// possible exempt prefix (a proper prefix of it is text like any other), then what the stop matcher held back.
    private mutating func remainder() -> (text: String, stopped: Bool) {
        var rest = matched(detokenizer.finish())
        if !rest.stopped, exemptPrefix != nil, !held.isEmpty {
            exemptPrefix = nil
            let last = stopMatcher.append(held)
            held = ""
            rest = (rest.emit + last.emit, last.stopped)
        }
        return rest.stopped ? (rest.emit, true) : (rest.emit + stopMatcher.finish(), false)
    }

    /// The text event for an engine event. After a finishing event, `done` is true.
    public mutating func process(_ e: EngineEvent) -> GenerationEvent {
        var g = text(e)
        g.promptLogprobs = e.promptLogprobs
        return g
    }

    private mutating func text(_ e: EngineEvent) -> GenerationEvent {
        precondition(!done, "event after the request finished")
        guard let token = e.token else {
            done = true
            return GenerationEvent(requestID: e.requestID, token: nil, text: "", finish: e.finish ?? .error, message: e.message)
        }
        if e.finish == .stop {
            // The end-of-sequence token itself is not text; what the output still holds goes through the stop strings.
            done = true
            return GenerationEvent(requestID: e.requestID, token: token, text: remainder().text, finish: .stop)
        }
        let (text, stopped) = matched(detokenizer.append(token))
        if stopped {
            done = true
            return GenerationEvent(requestID: e.requestID, token: token, text: text, finish: .stop, logprobs: e.logprobs)
        }
        if let f = e.finish {
            done = true
            let rest = remainder()
            return GenerationEvent(requestID: e.requestID, token: token, text: text + rest.text, finish: rest.stopped ? .stop : f,
                                   message: e.message, logprobs: e.logprobs)
        }
        return GenerationEvent(requestID: e.requestID, token: token, text: text, finish: nil, logprobs: e.logprobs)
    }
}
