import Engine
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing
import TestSupport

@testable import HTTPFront
@testable import Server

/// The vLLM-named series of the inference routers' model-server protocol on /metrics (PAPERS.md, "The
/// model-server protocol of Kubernetes inference routers"), read back with a strict text-format parser.
@Suite struct VLLMMetricsTests {
    static let gauges = ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                         "vllm:cache_config_info", "vllm:lora_requests_info"]

    /// After a request on an adapter whose name needs escaping: every series is there once, typed gauge with
    /// help; the values are the engine's (KV use = used ÷ total blocks, the block size and count, the LoRA
    /// slots); the adapter is listed as running (resident); the report's time is now.
    @Test func seriesAfterAnAdapterRequest() async throws {
        let server = try ServerFixtures.server { $0.adminKey = "admin" }
        let name = "q\"uote é"
        try await ServerFixtures.withServer(server) { client in
            let load = try await client.post("/v1/load_lora_adapter", "{\"lora_name\":\"q\\\"uote é\",\"lora_path\":\"a-qv-r4\"}", key: "admin")
            #expect(load.0 == 200, "\(load.1)")
            let ask = "{\"model\":\"q\\\"uote é\",\"prompt\":[5,6,7],\"max_tokens\":8,\"ignore_eos\":true}"
            let done = try await client.post("/v1/completions", ask)
            #expect(done.0 == 200, "\(done.1)")
            #expect(try await ServerFixtures.waitIdle(server))

            let r = try await client.send("/metrics", .get)
            let scrapedAt = Date().timeIntervalSince1970
            let m = try PrometheusText(r.1)
            let s = server.engine.snapshot
            let (blockSize, kvBlocks, slots, dtype) = server.engine.inspect {
                ($0.configuration.blockSize, $0.configuration.kvBlocks, $0.configuration.adapterSlots, $0.configuration.kvCacheDType)
            }

            for g in Self.gauges {
                #expect(m.types[g] == "gauge", "\(g)")
                #expect(m.help[g]?.isEmpty == false, "\(g) has no help")
                #expect(m.samples(g).count == 1, "\(g)")
                #expect(m.sample(g)?.labels["model_name"] == server.options.modelName, "\(g): vLLM's model_name label")
            }
            #expect(m.sample("vllm:num_requests_waiting")?.value == 0)
            #expect(m.sample("vllm:num_requests_running")?.value == 0)
            let usage = try #require(m.sample("vllm:kv_cache_usage_perc")?.value)
            #expect(usage >= 0 && usage <= 1)
            // Idle: the resident adapter's blocks are evictable on demand, so they count as free here (a router reads
            // an idle replica as idle), and as held in dlora's own occupancy gauge.
            #expect(s.idleAdapterBlocks > 0 && s.idleAdapterBlocks == s.adapterBlocks)
            #expect(usage == Double(s.kvBlocksTotal - s.kvBlocksFree - s.idleAdapterBlocks) / Double(s.kvBlocksTotal))
            #expect(usage == 0, "an idle replica's usage")
            #expect((m.sample("dlora_kv_cache_usage_ratio")?.value ?? 0) > 0, "dlora's occupancy counts the resident adapter")
            #expect(m.sample("vllm:gpu_cache_usage_perc")?.value == usage)

            let cache = try #require(m.sample("vllm:cache_config_info"))
            #expect(cache.value == 1)
            #expect(cache.labels == ["model_name": server.options.modelName, "block_size": String(blockSize), "num_gpu_blocks": String(kvBlocks),
                                     "cache_dtype": dtype.rawValue])
            #expect(s.kvBlocksTotal == kvBlocks)

            let lora = try #require(m.sample("vllm:lora_requests_info"))
            #expect(Set(lora.labels.keys) == ["model_name", "max_lora", "running_lora_adapters", "waiting_lora_adapters"])
            #expect(lora.labels["max_lora"] == String(slots))
            #expect(lora.labels["running_lora_adapters"]?.split(separator: ",").map(String.init) == [name])
            #expect(lora.labels["waiting_lora_adapters"] == "")
            #expect(abs(lora.value - scrapedAt) < 5, "report time \(lora.value), scraped at \(scrapedAt)")
            #expect(s.residentAdapterNames == [name])
        }
    }

    /// One sequence per iteration: while a request on one adapter runs, a request on another waits, and
    /// the second adapter is reported as waiting (the picker's 0.6 "adapter waiting there" score). The first
    /// request samples a token every 200 ms until the test has seen what it looks for (≥ 40 s for its 200
    /// tokens), so a loaded machine (the suites share two cooperative threads and one tokenization queue)
    /// only makes the test wait longer, never ends the first request before the second arrives. Both go
    /// over raw connections and are cancelled by closing them. dLoRA's credits would let the waiting adapter go first
    /// after `creditBound` iterations (8: about 1.6 s at this pace), a window a loaded machine's scrapes could miss (one
    /// CI run did); a credit bound past the test's length keeps it waiting until it has been seen.
    @Test func waitingAdapter() async throws {
        let holding = Locked(true)
        var policy = BatchPolicyConfig()
        policy.creditBound = 1_000_000
        let server = try ServerFixtures.server(maxSequences: 1, policy: policy,
                                               logitsObserver: { _, _ in usleep(holding.withLock { $0 } ? 200_000 : 1_000) })
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let first = try RawConnection(port: port)
            defer { first.closeNow() }
            first.send(RawConnection.post("/v1/completions", "{\"model\":\"a-qv-r4\",\"prompt\":[5,6,7],\"max_tokens\":200,\"ignore_eos\":true}"))
            let deadline = ContinuousClock.now + .seconds(35)
            while server.engine.snapshot.running == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            let second = try RawConnection(port: port)
            defer { second.closeNow() }
            second.send(RawConnection.post("/v1/completions", "{\"model\":\"b-all-r8-rslora\",\"prompt\":[5,6],\"max_tokens\":2,\"ignore_eos\":true}"))
            var seen: PrometheusText?
            var last = ""
            while seen == nil && ContinuousClock.now < deadline {
                last = try await client.send("/metrics", .get).1
                let m = try PrometheusText(last)
                if m.sample("vllm:lora_requests_info")?.labels["waiting_lora_adapters"] == "b-all-r8-rslora" { seen = m }
                try await Task.sleep(for: .milliseconds(10))
            }
            holding.withLock { $0 = false }
            let m = try #require(seen, "the second adapter was never reported waiting; last: \(last.split(separator: "\n").filter { $0.hasPrefix("vllm:") })")
            #expect(m.sample("vllm:num_requests_waiting")?.value == 1)
            #expect(m.sample("vllm:num_requests_running")?.value == 1)
            #expect((m.sample("vllm:kv_cache_usage_perc")?.value ?? 0) > 0, "a running request and its adapter's blocks count as used")
            #expect(m.sample("vllm:lora_requests_info")?.labels["running_lora_adapters"]?.split(separator: ",").contains("a-qv-r4") == true)
            first.closeNow()
            second.closeNow()
            #expect(try await ServerFixtures.waitIdle(server))
        }
    }

    /// A request admitted while the engine is inside a long step is reported waiting at once, not when the step ends
    /// (the engine's snapshot is taken between steps; the server's count of admitted sequences is current). Steps take
    /// 3 s here; the second request is sent just after a step began, and must show within 1.5 s.
    @Test func admittedDuringALongStepIsWaiting() async throws {
        let stepStarted = Locked(ContinuousClock.now - .seconds(100))
        let holding = Locked(true)
        let server = try ServerFixtures.server(maxSequences: 1, logitsObserver: { _, _ in
            stepStarted.withLock { $0 = ContinuousClock.now }
            usleep(holding.withLock { $0 } ? 3_000_000 : 1_000)
        })
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let first = try RawConnection(port: port)
            defer { first.closeNow() }
            first.send(RawConnection.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[5,6,7],\"max_tokens\":20,\"ignore_eos\":true}"))
            let deadline = ContinuousClock.now + .seconds(30)
            // Wait until the first request runs (after its first step), then for a step that has just begun (its
            // observer ran less than 0.2 s ago).
            while ContinuousClock.now < deadline && server.engine.snapshot.running != 1 { try await Task.sleep(for: .milliseconds(5)) }
            while ContinuousClock.now < deadline && ContinuousClock.now - stepStarted.withLock({ $0 }) > .milliseconds(200) {
                try await Task.sleep(for: .milliseconds(5))
            }
            let second = try RawConnection(port: port)
            defer { second.closeNow() }
            second.send(RawConnection.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":[5,6],\"max_tokens\":2,\"ignore_eos\":true}"))
            let sent = ContinuousClock.now
            var waiting: Double?
            while waiting != 1 && ContinuousClock.now - sent < .milliseconds(1500) {
                waiting = try PrometheusText(try await client.send("/metrics", .get).1).sample("vllm:num_requests_waiting")?.value
                if waiting != 1 { try await Task.sleep(for: .milliseconds(20)) }
            }
            holding.withLock { $0 = false }
            #expect(waiting == 1, "the second request was not reported waiting within 1.5 s of its admission")
            first.closeNow()
            second.closeNow()
            #expect(try await ServerFixtures.waitIdle(server))
        }
    }

    /// Label values are escaped (backslash, quote, line feed) and read back intact; a name with a comma,
    /// which the comma-separated list cannot carry, is left out.
    @Test func labelEscaping() throws {
        let server = try ServerFixtures.server()
        defer { server.engine.shutdown() }
        var s = server.engine.snapshot
        s.residentAdapterNames = ["back\\slash", "com,ma", "new\nline", "plain", "quo\"te"]
        s.waitingAdapterNames = ["w"]
        let text = VLLMMetrics.render(s, waiting: s.waiting, now: 1_764_700_000.25, modelName: "m")
        #expect(text.contains(#"running_lora_adapters="back\\slash,new\nline,plain,quo\"te""#), "\(text)")
        let lora = try #require(try PrometheusText(text).sample("vllm:lora_requests_info"))
        #expect(lora.labels["running_lora_adapters"] == "back\\slash,new\nline,plain,quo\"te")
        #expect(lora.labels["waiting_lora_adapters"] == "w")
        #expect(lora.value == 1_764_700_000.25)
    }

    /// The parser is strict: what the format does not allow throws.
    @Test func parserRejectsMalformedText() {
        for bad in [
            "m{a=\"x\\ty\"} 1",        // unknown escape
            "m{a=\"x} 1",              // unterminated value
            "m{a=x} 1",                // unquoted value
            "m{a=\"1\",a=\"2\"} 1",    // label twice
            "m 1 2 3",                 // too many fields
            "m one",                   // not a number
            "9m 1",                    // bad name
            "# TYPE m gauge\n# TYPE m gauge\nm 1",
            "m 1\n# TYPE m gauge",
        ] {
            #expect(throws: PrometheusText.ParseError.self, "\(bad)") { try PrometheusText(bad) }
        }
        #expect(throws: Never.self) { try PrometheusText("# TYPE m gauge\nm{a=\"\\\\\\\"\\n\",} 1.5e3 1700000000\nn +Inf\n") }
    }
}
