import Foundation
import Models
import Testing
import Tokenizers

@testable import Engine

/// The consumer's side of a request's tokens (`OutputProcessor`): stop strings, and the prefix that exempts an output
/// from them (`SamplingParams.stopExemptPrefix`, an "auto" tool choice's tag: a call is its grammar's to end).
@Suite struct OutputProcessorTests {
    static let tokenizer: Tokenizer = {
        let checkpoint = try! openCheckpoint(path: ModelFixtures.checkpointPath(model: "tiny-llama", variant: "Q4_1"))
        return try! Tokenizer(metadata: checkpoint.metadata!)
    }()

    /// The text events of `text`'s tokens, one token at a time, then (when `eos`) an end-of-sequence event.
    static func run(_ text: String, stop: [String], exempt: String?, eos: Bool = true) throws -> (text: String, finish: FinishReason?) {
        let tokens = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
        #expect(tokenizer.decode(tokens, skipSpecial: false) == text, "the fixture's tokenizer round-trips \(text)")
        var p = OutputProcessor(tokenizer: tokenizer, stop: stop, stopExemptPrefix: exempt)
        var out = "", finish: FinishReason?
        let id = RequestID(1)
        for (i, t) in tokens.enumerated() where !p.done {
            let last = !eos && i == tokens.count - 1
            let g = p.process(EngineEvent(requestID: id, token: t, finish: last ? .length : nil, message: nil))
            out += g.text
            finish = g.finish
        }
        if eos && !p.done {
            let g = p.process(EngineEvent(requestID: id, token: 2, finish: .stop, message: nil))
            out += g.text
            finish = g.finish
        }
        return (out, finish)
    }

    @Test func stopStringsSkipAnOutputThatBeginsWithTheExemptPrefix() throws {
        let call = "<tool_call>[{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Paris\"}}]"
        // A call: nothing cut, whatever the stop strings match inside it (with or without an end token).
        for stop in [["\"}"], ["weather"], ["<tool_call>"], ["<"], ["]"]] {
            #expect(try Self.run(call, stop: stop, exempt: "<tool_call>") == (call, .stop), "\(stop)")
            #expect(try Self.run(call, stop: stop, exempt: "<tool_call>", eos: false) == (call, .length), "\(stop)")
        }
        // Without the exemption the same stop cuts the call (what a tool call with `stop` returned before).
        #expect(try Self.run(call, stop: ["\"}"], exempt: nil) == ("<tool_call>[{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Paris", .stop))
        // Text: the stop strings apply as always, also to text held while it could still have become the prefix.
        #expect(try Self.run("It is \"}sunny", stop: ["\"}"], exempt: "<tool_call>") == ("It is ", .stop))
        #expect(try Self.run("<to\"}ol", stop: ["\"}"], exempt: "<tool_call>") == ("<to", .stop))
        #expect(try Self.run("<tool", stop: ["ol"], exempt: "<tool_call>") == ("<to", .stop))
        #expect(try Self.run("<tool", stop: ["x"], exempt: "<tool_call>") == ("<tool", .stop))
        #expect(try Self.run("<tool", stop: ["x"], exempt: "<tool_call>", eos: false) == ("<tool", .length))
        #expect(try Self.run("Sunny <tool_call> later", stop: ["<tool_call>"], exempt: "<tool_call>") == ("Sunny ", .stop))
    }
}
