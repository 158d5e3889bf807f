import Foundation
import ServingAPI
import Testing

/// `ToolCallStream`: however an answer's text is cut into pieces, the events it yields name the calls `ToolCallMode`
/// finds in the whole answer, in order, and their argument pieces add up to exactly those arguments.
@Suite struct ToolCallStreamTests {
    /// (calls as (name, arguments)) from the events of one stream fed `pieces`.
    static func replay(_ pieces: [String], named: String? = nil) -> (calls: [(String, String)], failed: Bool, begunBeforeEnd: Bool) {
        var s = ToolCallStream(named: named)
        var calls: [(String, String)] = []
        var begunEarly = false
        for (i, piece) in pieces.enumerated() {
            for e in s.feed(piece) {
                switch e {
                case .begin(let k, let name):
                    #expect(k == calls.count)
                    calls.append((name, ""))
                    if i < pieces.count - 1 { begunEarly = true }
                case .arguments(let k, let text):
                    #expect(k == calls.count - 1 && !text.isEmpty)
                    calls[k].1 += text
                }
            }
        }
        return (calls, s.failed, begunEarly)
    }

    /// Every way of cutting the text in two or three, and byte by byte (on character boundaries).
    static func cuts(_ text: String) -> [[String]] {
        let chars = Array(text)
        var out: [[String]] = [[text], chars.map { String($0) }]
        for i in 1..<chars.count {
            out.append([String(chars[..<i]), String(chars[i...])])
            let j = (i + chars.count) / 2
            if j > i { out.append([String(chars[..<i]), String(chars[i..<j]), String(chars[j...])]) }
        }
        return out
    }

    @Test func piecesAddUpToTheCalls() throws {
        let texts = [
            #"[ {"name":"f", "parameters": {"b":[1,"]"], "a":"x\"y}"}} ,{"name":"g","parameters":{}}]"#,
            #"[{"parameters": {"k": "v"}, "name": "late"}, {"name": "é", "parameters": {"s": "日本語 \\ \u0001"}} ]"#,
            "[\n {\"name\": \"n\", \"parameters\": 12.5e3 }\n]\n",
        ]
        for text in texts {
            let expected = try #require(ToolCallMode.required.calls(in: text), "\(text)")
            for pieces in Self.cuts(text) {
                let r = Self.replay(pieces)
                #expect(!r.failed && r.calls.map(\.0) == expected.map(\.name) && r.calls.map(\.1) == expected.map(\.arguments), "\(pieces) → \(r.calls) failed \(r.failed)")
            }
        }
        // Named: the answer trimmed, trailing whitespace held until more text follows.
        let named = "  {\"city\": \"Paris\" ,\n \"unit\":\"c\"}  \n"
        for pieces in Self.cuts(named) {
            let r = Self.replay(pieces, named: "get")
            #expect(!r.failed && r.calls.count == 1 && r.calls[0].0 == "get" && r.calls[0].1 == named.trimmingCharacters(in: .whitespacesAndNewlines), "\(pieces)")
        }
        // A name before its parameters is sent before the answer ends.
        #expect(Self.replay(Self.cuts(texts[0])[1]).begunBeforeEnd)
    }

    /// Text that is not the shape stops the events: what was sent is a prefix of nothing the whole answer holds.
    @Test func malformedTextFails() {
        for text in [#"{"name":"f"}"#, #"[{"name":"f","parameters":{}} x"#, #"[{"name":3,"parameters":{}}]"#, #"[{}]"#] {
            #expect(Self.replay(Self.cuts(text)[1]).failed, "\(text)")
        }
        #expect(Self.replay(["  x{"], named: "f").failed)
    }
}
