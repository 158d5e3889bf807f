import Engine
import Foundation

/// The model-server protocol of Kubernetes inference routers (Gateway API Inference Extension, llm-d):
/// their endpoint picker scrapes every pod's /metrics and, with its built-in vLLM mapping, reads these
/// series by vLLM's names. Rendered by hand beside the registry's own series: two of them are info-style
/// gauges whose information is in their labels (changing label values would leave a stale series behind in
/// a registry), and the names carry a colon, which vLLM uses and our `dlora_` series do not.
///
/// | series | value |
/// |---|---|
/// | `vllm:num_requests_waiting` | requests holding no KV blocks (queued, preempted, swapped), and those admitted since the engine's last step (the server's count of admitted sequences less the running ones, when larger) |
/// | `vllm:num_requests_running` | requests holding KV blocks |
/// | `vllm:kv_cache_usage_perc`, `vllm:gpu_cache_usage_perc` | used ÷ total KV blocks, 0…1: requests' blocks and the blocks of adapters live requests need (one budget); an idle resident adapter's blocks count as free, since the scheduler evicts it for room on demand (an idle replica holding 62 adapters read 0.33 before, and a router reading it took the idle replica for a loaded one) |
/// | `vllm:cache_config_info{block_size, num_gpu_blocks, cache_dtype}` | 1 (cache_dtype: f32 or f16) |
/// | `vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}` | the current Unix time, s |
/// | `vllm:num_preemptions_total` | requests preempted so far (a counter) |
///
/// Each carries vLLM's `model_name` label: the served base model (`--served-model-name`).
/// "running" LoRA adapters are the *resident* ones (what the protocol means: loaded and ready to serve);
/// lists are comma-separated names. A name containing a comma is left out of them: the list has no
/// escape for it, and it would read as two other adapters.
enum VLLMMetrics {
    /// `waiting`: the requests waiting now (the snapshot's, or more: those admitted since it was taken).
    /// `modelName`: the served base model, every series' `model_name` label (as vLLM's).
    static func render(_ s: EngineSnapshot, waiting: Int, now: Double, modelName: String) -> String {
        let used = s.kvBlocksTotal > 0 ? Double(s.kvBlocksTotal - s.kvBlocksFree - s.idleAdapterBlocks) / Double(s.kvBlocksTotal) : 0
        var out = ""
        func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: Double) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name)"
            out += "{" + ([("model_name", modelName)] + labels).map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
            out += " \(format(value))\n"
        }
        gauge("vllm:num_requests_waiting", "Requests waiting to be processed (queued, preempted or swapped out).", [], Double(waiting))
        gauge("vllm:num_requests_running", "Requests holding KV-cache blocks (being processed).", [], Double(s.running))
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent of the blocks in use.", [], used)
        gauge("vllm:gpu_cache_usage_perc", "KV-cache usage: 1 means 100 percent of the blocks in use (vLLM's older name for vllm:kv_cache_usage_perc).", [], used)
        gauge("vllm:cache_config_info", "Information of the KV cache configuration.",
              [("block_size", String(s.blockSize)), ("num_gpu_blocks", String(s.kvBlocksTotal)), ("cache_dtype", s.kvCacheDType.rawValue)], 1)
        gauge("vllm:lora_requests_info", "Running (resident) and waiting LoRA adapters; the value is the time of this report (Unix seconds).",
              [("max_lora", String(s.adapterSlots)), ("running_lora_adapters", list(s.residentAdapterNames)),
               ("waiting_lora_adapters", list(s.waitingAdapterNames))], now)
        out += "# HELP vllm:num_preemptions_total Cumulative number of preemptions (requests that gave up their KV blocks).\n"
            + "# TYPE vllm:num_preemptions_total counter\n"
            + "vllm:num_preemptions_total{model_name=\"\(escape(modelName))\"} \(s.stats.preemptions)\n"
        return out
    }

    /// The per-model latency histograms and token counters vLLM's dashboards read, as copies of our own families under
    /// vLLM's names, the `model` label named `model_name` as vLLM's is (same buckets, same values).
    static let aliased = [("dlora_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
                          ("dlora_inter_token_latency_seconds", "vllm:inter_token_latency_seconds"),
                          // vLLM's older name for the same histogram, which its published dashboards still read.
                          ("dlora_inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
                          ("dlora_e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds"),
                          ("dlora_prompt_tokens_total", "vllm:prompt_tokens_total"),
                          ("dlora_generation_tokens_total", "vllm:generation_tokens_total"),
                          ("dlora_request_success_total", "vllm:request_success_total")]

    /// `aliased`'s families out of `text` (Prometheus text format), renamed; each family's lines kept together.
    static func aliases(of text: String) -> String {
        var families = [[Substring]](repeating: [], count: aliased.count)
        for line in text.split(separator: "\n") {
            let head = line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") ? line.prefix(7) : ""
            let name = line.dropFirst(head.count).prefix { $0 != "{" && $0 != " " }
            for (i, (ours, theirs)) in aliased.enumerated()
            where name == ours || name == ours + "_bucket" || name == ours + "_sum" || name == ours + "_count" {
                // A label value cannot hold an unescaped quote, so `{model="` and `,model="` only start the label.
                let renamed = (head + theirs + line.dropFirst(head.count + ours.count))
                    .replacingOccurrences(of: "{model=\"", with: "{model_name=\"")
                    .replacingOccurrences(of: ",model=\"", with: ",model_name=\"")
                families[i].append(Substring(renamed))
            }
        }
        return families.joined().map { $0 + "\n" }.joined()
    }

    /// Comma-separated, names with a comma left out.
    static func list(_ names: [String]) -> String { names.filter { !$0.contains(",") }.joined(separator: ",") }

    /// A label value in Prometheus text format: backslash, double quote and line feed escaped.
    static func escape(_ value: String) -> String {
        guard value.unicodeScalars.contains(where: { $0 == "\\" || $0 == "\"" || $0 == "\n" }) else { return value }
        var out = String.UnicodeScalarView()
        for c in value.unicodeScalars {
            switch c {
            case "\\": out.append(contentsOf: #"\\"#.unicodeScalars)
            case "\"": out.append(contentsOf: #"\""#.unicodeScalars)
            case "\n": out.append(contentsOf: #"\n"#.unicodeScalars)
            default: out.append(c)
            }
        }
        return String(out)
    }

    /// A sample value: integers without a fraction, others in Swift's shortest round-trip form (which Go's
    /// ParseFloat and Python's float() read back exactly).
    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}
