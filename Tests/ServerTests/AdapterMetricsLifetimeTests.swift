import Foundation
import Hummingbird
import Testing
import TestSupport

@testable import Server

/// An unloaded adapter's per-model series go once its requests under way have ended, not while they run (removed
/// then, the running request brought them back from zero: a probe's requests_total went 3 → 1).
@Suite struct AdapterMetricsLifetimeTests {
    @Test func anUnloadedAdaptersSeriesOutliveItsRequestsUnderWay() async throws {
        let server = try ServerFixtures.server(slow: true, configure: { $0.adminKey = "admin" })
        try await ServerFixtures.withServer(server) { client in
            let quick = "{\"model\":\"a-qv-r4\",\"prompt\":[1,2,3],\"max_tokens\":2,\"temperature\":0}"
            #expect(try await client.post("/v1/completions", quick).0 == 200)
            let okLine = "dlora_requests_total{model=\"a-qv-r4\",status=\"ok\"}"
            func metrics() async throws -> String { try await client.send("/metrics", .get).1 }
            #expect(try await metrics().contains(okLine + " 1"))
            // A slow request (20 ms a token, 40 tokens) under way while the adapter is unloaded.
            let slow = "{\"model\":\"a-qv-r4\",\"prompt\":[1,2,3],\"max_tokens\":40,\"temperature\":0,\"ignore_eos\":true}"
            async let running = client.post("/v1/completions", slow)
            for _ in 0..<200 where server.engine.snapshot.running == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(try await client.post("/v1/unload_lora_adapter", "{\"lora_name\":\"a-qv-r4\"}", key: "admin").0 == 200)
            let during = try await metrics()
            #expect(during.contains(okLine + " 1"), "the series went while a request of the adapter ran")
            #expect(try await running.0 == 200)
            // Gone once it ended, not counted from zero again.
            var after = ""
            for _ in 0..<100 {
                after = try await metrics()
                if !after.contains(okLine) { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(!after.contains("model=\"a-qv-r4\""), "\(after.split(separator: "\n").filter { $0.contains("a-qv-r4") })")
        }
    }
}
