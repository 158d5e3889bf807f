/// One iteration's shape as a step log records it. The served engine (`dlora serve --step-log`) and the simulator
/// (`dlora simulate --step-log`) write the same line for an iteration, so a simulated run can be compared with a
/// real one step by step and a cost model fitted on the steps a server actually ran (bench/step_log.py).
public struct StepSummary: Equatable, Sendable {
    /// The adapter folded into the weights, or nil for an unmerged iteration.
    public var mergedAdapter: Int?
    public var sequences = 0
    /// Tokens computed (a decode counts one).
    public var tokens = 0
    /// Tokens of runs longer than one token (prompt chunks, recomputation).
    public var prefillTokens = 0
    /// Σ over runs of the positions attended (start + tokens).
    public var contextTokens = 0
    /// The same sum over one-token runs only: the K/V a decode step's attention reads.
    public var decodeContextTokens = 0
    /// LoRA slots of an unmerged iteration.
    public var distinctAdapters = 0
    /// Tokens of runs that carry an adapter (in an unmerged iteration, the tokens its LoRA paths are added to).
    public var adapterTokens = 0

    public init(_ out: SchedulerOutput) {
        if case .merged(let a) = out.mode { mergedAdapter = a }
        sequences = out.runs.count
        distinctAdapters = out.loraSlots.count
        for run in out.runs {
            tokens += run.tokens
            if run.tokens > 1 { prefillTokens += run.tokens } else { decodeContextTokens += run.start + run.tokens }
            contextTokens += run.start + run.tokens
            if run.adapter != Request.base { adapterTokens += run.tokens }
        }
    }

    /// One JSON object on one line: `replica`, `start` (seconds: Unix time in a served log, simulated time in a
    /// simulated one), the shape, `action_seconds` (merges, unmerges,
    /// loads and swaps carried out before the pass), `forward_seconds` and, where measured, `step_seconds` (the
    /// whole iteration: scheduling, actions, forward pass and sampling).
    public func jsonLine(replica: Int, start: Double, actionSeconds: Double, forwardSeconds: Double, stepSeconds: Double? = nil) -> String {
        let mode = mergedAdapter.map { "\"merged\",\"adapter\":\($0)" } ?? "\"unmerged\""
        return "{\"replica\":\(replica),\"start\":\(start),\"mode\":\(mode),\"sequences\":\(sequences),\"tokens\":\(tokens),"
            + "\"prefill_tokens\":\(prefillTokens),\"context_tokens\":\(contextTokens),\"decode_context_tokens\":\(decodeContextTokens),"
            + "\"distinct_adapters\":\(distinctAdapters),\"adapter_tokens\":\(adapterTokens),"
            + "\"action_seconds\":\(actionSeconds),\"forward_seconds\":\(forwardSeconds)"
            + (stepSeconds.map { ",\"step_seconds\":\($0)}" } ?? "}")
    }
}
