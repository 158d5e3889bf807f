import AsyncHTTPClient
import ClusterPolicy
import Testing

@testable import Cluster

/// The router's dLoRA dispatch takes its placement hysteresis and adapter-slot bound from `RoutingOptions.dloraDispatch`
/// (`dlora router --placement-hysteresis --dispatch-slot-bound`); both off by default.
@Suite struct RouterOptionsTests {
    func policy(_ options: RoutingOptions) async throws -> DLoRAProactive? {
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let router = ClusterRouter(replicas: ReplicaSet(urls: ["http://127.0.0.1:9"], http: http, adminKey: nil), options: options)
        let d = router.policy.withLock { $0 as? DLoRAProactive }
        try await http.shutdown()
        return d
    }

    @Test func dispatchSettingsReachThePolicy() async throws {
        let plain = try #require(try await policy(RoutingOptions()))
        #expect(plain.placementHysteresis == 0)
        #expect(!plain.adapterSlotBound)
        #expect(plain.fractionalLeftovers)
        #expect(plain.rateMemory == 0.5)
        var o = RoutingOptions()
        o.dloraDispatch.placementHysteresis = 0.2
        o.dloraDispatch.adapterSlotBound = true
        o.dloraDispatch.rateMemory = 0.9
        let tuned = try #require(try await policy(o))
        #expect(tuned.placementHysteresis == 0.2)
        #expect(tuned.adapterSlotBound)
        #expect(tuned.rateMemory == 0.9)
    }
}
