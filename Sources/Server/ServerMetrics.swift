import HTTPFront
import CoreMetrics
import Engine
import Foundation
import Prometheus

/// The server's metrics, through swift-metrics into one Prometheus registry of its own (so tests can run
/// several servers in one process). Per-request series carry the served model (base or adapter) as `model`;
/// engine-wide series are refreshed from the engine loop's snapshot at every scrape.
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory

    // Engine-wide gauges.
    private let waiting: CoreMetrics.Gauge
    private let running: CoreMetrics.Gauge
    private let kvUsage: CoreMetrics.Gauge
    private let kvBlocks: CoreMetrics.Gauge
    private let adapterBlocks: CoreMetrics.Gauge
    private let residentAdapters: CoreMetrics.Gauge
    private let heldAdapters: CoreMetrics.Gauge
    private let hostCacheBytes: CoreMetrics.Gauge
    private let hostSwapBytes: CoreMetrics.Gauge
    private let inFlight: CoreMetrics.Gauge
    private let storedResponses: CoreMetrics.Gauge
    private let storedResponseBytes: CoreMetrics.Gauge
    // Engine-wide counters, advanced by the difference since the last scrape.
    private let mergedIterations: CoreMetrics.Counter
    private let unmergedIterations: CoreMetrics.Counter
    private let modeSwitches: CoreMetrics.Counter
    private let swapOuts: CoreMetrics.Counter
    private let swapIns: CoreMetrics.Counter
    private let preemptions: CoreMetrics.Counter
    private let adapterLoads: CoreMetrics.Counter
    private let adapterEvictions: CoreMetrics.Counter
    private let merges: CoreMetrics.Counter
    private let mergeSeconds: CoreMetrics.FloatingPointCounter
    private let unmerges: CoreMetrics.Counter
    private let unmergeSeconds: CoreMetrics.FloatingPointCounter
    // The adapter registry's file loads (reads of PEFT/GGUF files into host memory) and their seconds.
    private let fileLoads: CoreMetrics.Counter
    private let fileLoadSeconds: CoreMetrics.FloatingPointCounter
    private let last = Locked(GenerationStats())
    private let lastFiles = Locked((loads: 0, seconds: 0.0))

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let latency: [Duration] = [.milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                   .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
                                   .seconds(60), .seconds(120)]
        let token: [Duration] = [.milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(40), .milliseconds(80),
                                 .milliseconds(160), .milliseconds(320), .milliseconds(640), .milliseconds(1280), .milliseconds(2560)]
        factory.durationHistogramBuckets = [
            "dlora_time_to_first_token_seconds": latency,
            "dlora_e2e_request_latency_seconds": latency,
            "dlora_inter_token_latency_seconds": token,
        ]
        self.factory = factory
        func gauge(_ name: String) -> CoreMetrics.Gauge { CoreMetrics.Gauge(label: name, factory: factory) }
        func counter(_ name: String, _ dims: [(String, String)] = []) -> CoreMetrics.Counter { CoreMetrics.Counter(label: name, dimensions: dims, factory: factory) }
        waiting = gauge("dlora_requests_waiting")
        running = gauge("dlora_requests_running")
        kvUsage = gauge("dlora_kv_cache_usage_ratio")
        kvBlocks = gauge("dlora_kv_cache_blocks")
        adapterBlocks = gauge("dlora_adapter_pool_blocks")
        residentAdapters = gauge("dlora_adapters_resident")
        heldAdapters = gauge("dlora_adapters_held")
        hostCacheBytes = gauge("dlora_adapter_host_cache_bytes")
        hostSwapBytes = gauge("dlora_host_swap_bytes")
        inFlight = gauge("dlora_requests_in_flight")
        storedResponses = gauge("dlora_responses_stored")
        storedResponseBytes = gauge("dlora_responses_stored_bytes")
        mergedIterations = counter("dlora_iterations_total", [("mode", "merged")])
        unmergedIterations = counter("dlora_iterations_total", [("mode", "unmerged")])
        modeSwitches = counter("dlora_mode_switches_total")
        swapOuts = counter("dlora_swaps_total", [("direction", "out")])
        swapIns = counter("dlora_swaps_total", [("direction", "in")])
        preemptions = counter("dlora_preemptions_total")
        adapterLoads = counter("dlora_adapter_loads_total")
        adapterEvictions = counter("dlora_adapter_evictions_total")
        // What switching between merged and unmerged execution costs: merges and unmerges, and their seconds.
        merges = counter("dlora_adapter_merges_total")
        mergeSeconds = CoreMetrics.FloatingPointCounter(label: "dlora_adapter_merge_seconds_total", factory: factory)
        unmerges = counter("dlora_adapter_unmerges_total")
        unmergeSeconds = CoreMetrics.FloatingPointCounter(label: "dlora_adapter_unmerge_seconds_total", factory: factory)
        fileLoads = counter("dlora_adapter_file_loads_total")
        fileLoadSeconds = CoreMetrics.FloatingPointCounter(label: "dlora_adapter_file_load_seconds_total", factory: factory)
    }

    /// One request's outcome: `status` is "ok", or the error's HTTP status.
    func request(model: String, status: String) {
        CoreMetrics.Counter(label: "dlora_requests_total", dimensions: [("model", model), ("status", status)], factory: factory).increment()
    }

    /// A sequence (one choice) that ended: `reason` is vLLM's `finished_reason` — "stop", "length", or "abort" for one
    /// cancelled before its finish (client gone, shutdown).
    func finished(model: String, reason: String) {
        CoreMetrics.Counter(label: "dlora_request_success_total", dimensions: [("model", model), ("finished_reason", reason)], factory: factory).increment()
    }

    func tokens(model: String, prompt: Int, generated: Int) {
        CoreMetrics.Counter(label: "dlora_prompt_tokens_total", dimensions: [("model", model)], factory: factory).increment(by: prompt)
        CoreMetrics.Counter(label: "dlora_generation_tokens_total", dimensions: [("model", model)], factory: factory).increment(by: generated)
    }

    func timeToFirstToken(model: String, nanoseconds: UInt64) {
        CoreMetrics.Timer(label: "dlora_time_to_first_token_seconds", dimensions: [("model", model)], factory: factory).recordNanoseconds(nanoseconds)
    }

    func interToken(model: String, nanoseconds: UInt64) {
        CoreMetrics.Timer(label: "dlora_inter_token_latency_seconds", dimensions: [("model", model)], factory: factory).recordNanoseconds(nanoseconds)
    }

    /// Requests (choices) under way per model, and the models whose series wait for theirs to end before they go.
    private let live = Locked((counts: [String: Int](), forgetting: Set<String>()))

    /// A choice of `model` started (`Call`'s life, a replica generation's relay).
    func began(model: String) {
        live.withLock {
            $0.counts[model, default: 0] += 1
            $0.forgetting.remove(model)  // served again (reloaded under the name): its series go on
        }
    }

    /// A choice of `model` ended, after its metrics were recorded: the last one of an unloaded adapter removes its series.
    func ended(model: String) {
        let forgetNow = live.withLock { s -> Bool in
            let n = (s.counts[model] ?? 1) - 1
            guard n <= 0 else { s.counts[model] = n; return false }
            s.counts[model] = nil
            return s.forgetting.remove(model) != nil
        }
        if forgetNow { destroySeries(model: model) }
    }

    /// Removes an unloaded adapter's per-model series, so a server that loads and unloads adapters for months
    /// does not keep a histogram family for every name it ever served (its counts restart if it comes back) — once its
    /// requests under way have ended: removed while they ran, their counts came back from zero and the series went
    /// backwards (a probe's requests_total 3 → 1).
    func forget(model: String) {
        let now = live.withLock { s -> Bool in
            guard (s.counts[model] ?? 0) > 0 else { return true }
            s.forgetting.insert(model)
            return false
        }
        if now { destroySeries(model: model) }
    }

    private func destroySeries(model: String) {
        let dims = [("model", model)]
        for label in ["dlora_time_to_first_token_seconds", "dlora_inter_token_latency_seconds", "dlora_e2e_request_latency_seconds"] {
            CoreMetrics.Timer(label: label, dimensions: dims, factory: factory).destroy()
        }
        for label in ["dlora_prompt_tokens_total", "dlora_generation_tokens_total"] {
            CoreMetrics.Counter(label: label, dimensions: dims, factory: factory).destroy()
        }
        for reason in ["stop", "length", "abort"] {
            CoreMetrics.Counter(label: "dlora_request_success_total", dimensions: [("model", model), ("finished_reason", reason)], factory: factory).destroy()
        }
        // Every status a request can end with (ok, cancelled, and the HTTP codes of errors).
        for status in ["ok", "cancelled"] + (400...599).map(String.init) {
            let c = CoreMetrics.Counter(label: "dlora_requests_total", dimensions: [("model", model), ("status", status)], factory: factory)
            c.destroy()
        }
    }

    func endToEnd(model: String, nanoseconds: UInt64) {
        CoreMetrics.Timer(label: "dlora_e2e_request_latency_seconds", dimensions: [("model", model)], factory: factory).recordNanoseconds(nanoseconds)
    }

    /// Refreshes the engine-wide series and renders the registry in Prometheus text format, followed by the
    /// vLLM-named series of the inference routers' model-server protocol (`VLLMMetrics`).
    /// `hostCache`: bytes of adapters the registry keeps in host memory; `fileLoads`: the registry's loads so far
    /// and their seconds (`AdapterRegistry.loadAttempts`, `loadSeconds`).
    /// `stored`: the Responses answers this server keeps, and their bytes (`ResponseStore`).
    /// `modelName`: the served base model's name, the `model_name` label of the vLLM-named engine gauges.
    func render(_ s: EngineSnapshot, modelName: String, inFlight active: Int, hostCache: Int = 0, fileLoads files: (loads: Int, seconds: Double) = (0, 0),
                stored: (count: Int, bytes: Int) = (0, 0)) -> String {
        storedResponses.record(stored.count)
        storedResponseBytes.record(stored.bytes)
        // The snapshot is taken between steps, so during a long step (a chunked prefill: 1-2 s here) it misses requests
        // admitted since; the server's own count of admitted sequences does not. Waiting is whichever is larger.
        let waitingNow = max(s.waiting, active - s.running)
        waiting.record(waitingNow)
        running.record(s.running)
        kvBlocks.record(s.kvBlocksTotal)
        kvUsage.record(s.kvBlocksTotal > 0 ? Double(s.kvBlocksTotal - s.kvBlocksFree) / Double(s.kvBlocksTotal) : 0)
        adapterBlocks.record(s.adapterBlocks)
        residentAdapters.record(s.residentAdapters)
        heldAdapters.record(s.heldAdapters)
        hostCacheBytes.record(hostCache)
        hostSwapBytes.record(s.hostSwapBytes)
        inFlight.record(active)
        last.withLock { prev in
            let now = s.stats
            func advance(_ c: CoreMetrics.Counter, _ new: Int, _ old: Int) { if new > old { c.increment(by: new - old) } }
            advance(mergedIterations, now.mergedSteps, prev.mergedSteps)
            advance(unmergedIterations, now.unmergedSteps, prev.unmergedSteps)
            advance(modeSwitches, now.modeSwitches, prev.modeSwitches)
            advance(swapOuts, now.swapOuts, prev.swapOuts)
            advance(swapIns, now.swapIns, prev.swapIns)
            advance(preemptions, now.preemptions, prev.preemptions)
            advance(adapterLoads, now.adapterLoads, prev.adapterLoads)
            advance(adapterEvictions, now.adapterEvictions, prev.adapterEvictions)
            advance(merges, now.merges, prev.merges)
            advance(unmerges, now.unmerges, prev.unmerges)
            if now.mergeSeconds > prev.mergeSeconds { mergeSeconds.increment(by: now.mergeSeconds - prev.mergeSeconds) }
            if now.unmergeSeconds > prev.unmergeSeconds { unmergeSeconds.increment(by: now.unmergeSeconds - prev.unmergeSeconds) }
            // MoLE compositions: gates evaluated, and the mean entropy of a gate (nats; ln N when every expert
            // weighs the same, 0 when one takes all).
            for (name, tally) in now.gates {
                advance(CoreMetrics.Counter(label: "dlora_mole_gates_total", dimensions: [("model", name)], factory: factory),
                        tally.count, prev.gates[name]?.count ?? 0)
                CoreMetrics.Gauge(label: "dlora_mole_gate_entropy_mean", dimensions: [("model", name)], factory: factory).record(tally.meanEntropy)
            }
            prev = now
        }
        lastFiles.withLock { prev in
            if files.loads > prev.loads { fileLoads.increment(by: files.loads - prev.loads) }
            if files.seconds > prev.seconds { fileLoadSeconds.increment(by: files.seconds - prev.seconds) }
            prev = (max(prev.loads, files.loads), max(prev.seconds, files.seconds))
        }
        var text = registry.emitToString()
        if !text.isEmpty && !text.hasSuffix("\n") { text += "\n" }
        return text + VLLMMetrics.render(s, waiting: waitingNow, now: Date().timeIntervalSince1970, modelName: modelName)
            + VLLMMetrics.aliases(of: text)
    }
}

