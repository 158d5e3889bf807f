import Foundation
import Testing

@testable import Scheduling

/// The step log's line (`dlora serve --step-log`, `dlora simulate --step-log`): an iteration's shape counted by hand.
@Suite struct StepSummaryTests {
    @Test func shapeOfAMixedIteration() throws {
        let bytes = 4096
        var s = Scheduler(config: SchedulerConfig(numBlocks: 64, blockSize: 16, bytesPerBlock: bytes, contextLimit: 1024,
                                                  policy: BatchPolicyConfig(kind: .unmergedOnly)))
        for a in 0..<2 { s.addAdapter(AdapterProfile(key: a, bytes: bytes, loraParameters: 1000, mergeElements: 1000)) }
        try s.add(RequestID(0), adapter: 0, promptCount: 20, maxNewTokens: 4)
        try s.add(RequestID(1), adapter: Request.base, promptCount: 7, maxNewTokens: 4)
        let first = s.schedule()
        let p = StepSummary(first)
        // Both prompts whole: 27 tokens of prefill, positions 20 + 7 attended, one LoRA slot, 20 adapter tokens.
        #expect(p.mergedAdapter == nil && p.sequences == 2 && p.tokens == 27 && p.prefillTokens == 27)
        #expect(p.contextTokens == 27 && p.decodeContextTokens == 0 && p.distinctAdapters == 1 && p.adapterTokens == 20)
        _ = s.update(first, sampled: first.runs.filter(\.samples).map { SampledToken(request: $0.request) },
                     report: ExecutionReport(forwardSeconds: 0.01))
        try s.add(RequestID(2), adapter: 1, promptCount: 5, maxNewTokens: 4)
        let second = s.schedule()
        let d = StepSummary(second)
        // Two decodes (at positions 20 and 7, attending 21 and 8) beside request 2's 5-token prompt on adapter 1.
        #expect(d.sequences == 3 && d.tokens == 7 && d.prefillTokens == 5)
        #expect(d.contextTokens == 21 + 8 + 5 && d.decodeContextTokens == 21 + 8)
        #expect(d.distinctAdapters == 2 && d.adapterTokens == 1 + 5)

        let line = d.jsonLine(replica: 3, start: 1.5, actionSeconds: 0.25, forwardSeconds: 0.125, stepSeconds: 0.5)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(o["mode"] as? String == "unmerged" && o["adapter"] == nil)
        for (key, value) in [("replica", 3), ("sequences", 3), ("tokens", 7), ("prefill_tokens", 5), ("context_tokens", 34),
                             ("decode_context_tokens", 29), ("distinct_adapters", 2), ("adapter_tokens", 6)] {
            #expect(o[key] as? Int == value, "\(key)")
        }
        for (key, value) in [("start", 1.5), ("action_seconds", 0.25), ("forward_seconds", 0.125), ("step_seconds", 0.5)] {
            #expect(o[key] as? Double == value, "\(key)")
        }
        #expect(!line.contains("\n"))
        var merged = d
        merged.mergedAdapter = 7
        let m = try #require(try JSONSerialization.jsonObject(with: Data(merged.jsonLine(replica: 0, start: 0, actionSeconds: 0, forwardSeconds: 0).utf8))
                             as? [String: Any])
        #expect(m["mode"] as? String == "merged" && m["adapter"] as? Int == 7 && m["step_seconds"] == nil)
    }
}
