import Engine
import Foundation
import Kernels
import Models
import Scheduling
import Testing
import Tokenizers
import TestSupport

@testable import Adapters

/// One batch across many adapters: requests for 4 different adapters (mixed ranks and targets, one with a
/// per-request scale) plus base-model requests, all submitted together, give per request exactly the tokens
/// of that request run alone. Unmerged execution (the policy never merges here) is bit-exact; "smollm2-int8" runs
/// the default model as serve does on a CPU with AVX-512 VNNI: int8 products and int8 (Q8_0) adapters; "smollm2-int4"
/// the same with `--adapter-precision int4` (Q4_0 adapters).
@Suite struct MixedBatchTests {
    @Test(arguments: ["tiny", "smollm2", "smollm2-int8", "smollm2-int4"])
    func mixedBatchEqualsEachAlone(_ which: String) throws {
        let quantized = which.hasSuffix("int8") || which.hasSuffix("int4")
        if quantized && !Kernels.hasInt8Dot { return }
        let path = which == "tiny" ? Fixtures.model("tiny-llama", "Q4_1") : Fixtures.smolPath
        try #require(FileManager.default.fileExists(atPath: path), "default model missing: run scripts/fetch-model.sh")
        let checkpoint = try openCheckpoint(path: path)
        let model = try LlamaModel(checkpoint: checkpoint)
        if quantized { model.setInt8Products(true) }
        let precision: AdapterPrecision = which.hasSuffix("int4") ? .int4 : .matching(model)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config
        let dir = try TempDir()
        let specs: [(Int, Double, [LoRATarget])] = [(4, 8, [.q, .v]), (8, 16, [.q, .k, .v, .o]), (16, 16, [.gate, .up, .down]), (2, 4, LoRATarget.allCases)]
        var adapters: [LoRAWeights] = []
        for (i, (rank, alpha, targets)) in specs.enumerated() {
            try TestAdapter(config: c, rank: rank, alpha: which == "tiny" ? alpha : alpha * 8, targets: targets, seed: UInt64(20 + i)).writePEFT(to: dir.path("a\(i)"), config: c)
            adapters.append(try AdapterLoader.load(path: dir.path("a\(i)"), base: c).held(as: precision))
            if quantized {
                #expect(adapters[i].modules.joined().compactMap { $0 }.allSatisfy { $0.dtype == (which.hasSuffix("int4") ? .q4_0 : .q8_0) })
            }
        }
        let texts = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Once upon a time", "The quick brown fox", "Water boils at"]
        // (prompt, adapter index or nil for base, scale)
        let requests: [(String, Int?, Float)] = [(texts[0], 0, 1), (texts[1], 1, 1), (texts[2], nil, 1), (texts[3], 2, 1),
                                                 (texts[4], 3, 1), (texts[5], 0, 0.5), (texts[0], nil, 1), (texts[1], 2, 1)]
        let params = SamplingParams(temperature: 0, maxTokens: 10, ignoreEOS: true)

        var alone: [[Int]] = []
        for (text, a, scale) in requests {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64, policy: BatchPolicyConfig(kind: .unmergedOnly))
            let id = try g.submit(prompt: tokenizer.encode(text, addSpecial: true), params: params, adapter: a.map { adapters[$0] }, adapterScale: scale)
            alone.append(g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token))
        }
        // The adapters must matter: at least the requests that share a prompt with a base request differ from it.
        #expect(alone[0] != alone[6] || alone[1] != alone[7] || which == "tiny")

        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 64, maxBatchTokens: 40, adapterSlots: 4,
                          policy: BatchPolicyConfig(kind: .unmergedOnly))
        let ids = try requests.map { text, a, scale in
            try g.submit(prompt: tokenizer.encode(text, addSpecial: true), params: params, adapter: a.map { adapters[$0] }, adapterScale: scale)
        }
        let events = g.runToCompletion()
        for (i, id) in ids.enumerated() {
            #expect(events.filter { $0.requestID == id }.compactMap(\.token) == alone[i], "request \(i)")
        }
    }

    /// The dLoRA policy on the engine: 100 requests over 10 adapters with a skewed popularity (one hot
    /// adapter), a cost profile under which merging pays (GPU-like) and a scripted clock so that mode
    /// decisions are reproducible. The engine switches modes, every request finishes, each with the tokens
    /// of its solo run, and the model is left unmerged.
    @Test func dloraPolicyOnTheEngine() throws {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config
        let dir = try TempDir()
        var adapters: [LoRAWeights] = []
        for i in 0..<10 {
            try TestAdapter(config: c, rank: 4 + 2 * (i % 3), alpha: 8, targets: i % 2 == 0 ? [.q, .v] : [.o, .down], seed: UInt64(40 + i))
                .writePEFT(to: dir.path("a\(i)"), config: c)
            adapters.append(try AdapterLoader.load(path: dir.path("a\(i)"), base: c))
        }
        var state: UInt64 = 99
        func rand(_ n: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(n))
        }
        let requests: [(prompt: [Int], adapter: Int?)] = (0..<100).map { _ in
            let prompt = (0..<(1 + rand(12))).map { _ in rand(c.vocabSize) }
            let a = rand(10) < 6 ? 0 : rand(11) - 1  // adapter 0 hot; -1 = base model
            return (prompt, a < 0 ? nil : a)
        }
        let params = SamplingParams(temperature: 0, maxTokens: 6, ignoreEOS: true)
        var gpuLike = BatchPolicyConfig(kind: .dlora)
        gpuLike.costs = StepCostModel(fixedSeconds: 0.010, perTokenSeconds: 0.0006, perLoRATokenSeconds: 0.0012,
                                      perAdapterSeconds: 0.0005, switchSeconds: 0.020)

        var alone: [[Int]] = []
        for r in requests {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16, policy: BatchPolicyConfig(kind: .unmergedOnly))
            let id = try g.submit(prompt: r.prompt, params: params, adapter: r.adapter.map { adapters[$0] })
            alone.append(g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token))
        }

        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 200, maxBatchTokens: 64, maxSequences: 16, adapterSlots: 4,
                          policy: gpuLike)
        let ticks = ManagedAtomicCounter()
        g.clock = { ticks.next() }
        var seen: [(step: StepSummary, action: Double, forward: Double, whole: Double)] = []
        g.stepObserver = { seen.append(($0, $1, $2, $3)) }
        let ids = try requests.map { try g.submit(prompt: $0.prompt, params: params, adapter: $0.adapter.map { adapters[$0] }) }
        let events = g.runToCompletion()
        #expect(g.stats.modeSwitches > 0, "the hot adapter should be merged at times")
        #expect(model.merged == nil)
        // Every merge was undone, and each was timed once by the scripted clock (5 ms a reading).
        let s = g.stats
        #expect(s.merges > 0 && s.unmerges == s.merges, "merges \(s.merges), unmerges \(s.unmerges)")
        #expect(abs(s.mergeSeconds - 0.005 * Double(s.merges)) < 1e-9 && abs(s.unmergeSeconds - 0.005 * Double(s.unmerges)) < 1e-9,
                "\(s.mergeSeconds) s for \(s.merges) merges, \(s.unmergeSeconds) s for \(s.unmerges) unmerges")
        var mismatches = 0
        for (i, id) in ids.enumerated() {
            let got = events.filter { $0.requestID == id }
            #expect(got.last?.finish == .length)
            if got.compactMap(\.token) != alone[i] { mismatches += 1 }
        }
        #expect(mismatches == 0, "\(mismatches) of 100 requests differ from their solo runs")
        // The step observer (`dlora serve --step-log`) saw every iteration that ran: as many, merged as often, and
        // every token computed — each prompt once and five decodes per request (six tokens, the last never fed back),
        // unless a preemption made some recompute. Its timings come from the scripted clock, so they nest.
        #expect(seen.count == s.mergedSteps + s.unmergedSteps)
        #expect(seen.filter { $0.step.mergedAdapter != nil }.count == s.mergedSteps)
        let computed = seen.reduce(0) { $0 + $1.step.tokens }, minimum = requests.reduce(0) { $0 + $1.prompt.count } + 100 * 5
        #expect(s.preemptions > 0 ? computed > minimum : computed == minimum, "\(computed) tokens computed, \(s.preemptions) preemptions")
        #expect(seen.allSatisfy { $0.forward > 0 && $0.whole >= $0.action + $0.forward })
        #expect(seen.allSatisfy { $0.step.mergedAdapter == nil || ($0.step.distinctAdapters == 0 && $0.step.adapterTokens == $0.step.tokens) })
        // A merge in the iteration's actions was timed inside it: two clock readings of 5 ms beyond the bracket's own.
        #expect(seen.contains { $0.action >= 0.015 - 1e-9 })
    }
}

/// A scripted clock: every reading advances 5 ms.
final class ManagedAtomicCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value: UInt64 = 0
    func next() -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        value += 5_000_000
        return value
    }
}

/// One memory budget for KV blocks and resident adapters: with room for only a few adapters and a few
/// sequences at once, idle adapters are evicted and sequences swapped to host memory and back — and every
/// request still produces the tokens of its solo run.
@Suite struct MemoryBudgetTests {
    /// `count` all-layer rank-8 adapters on the tiny model (seeds from `seed`).
    static func adapters(_ count: Int, seed: UInt64, config c: ModelConfig, in dir: TempDir) throws -> [LoRAWeights] {
        try (0..<count).map { i in
            try TestAdapter(config: c, rank: 8, alpha: 8, targets: LoRATarget.allCases, seed: seed + UInt64(i)).writePEFT(to: dir.path("a\(i)"), config: c)
            return try AdapterLoader.load(path: dir.path("a\(i)"), base: c)
        }
    }

    /// Each request's tokens run alone on an engine with room to spare.
    static func soloRuns(_ requests: [([Int], LoRAWeights?)], model: LlamaModel, tokenizer: Tokenizer, params: SamplingParams,
                         kvCacheDType: KVCacheDType = .f32) throws -> [[Int]] {
        try requests.map { p, a in
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 400, blockSize: 4, policy: BatchPolicyConfig(kind: .unmergedOnly),
                               kvCacheDType: kvCacheDType)
            let id = try g.submit(prompt: p, params: params, adapter: a)
            return g.runToCompletion().filter { $0.requestID == id }.compactMap(\.token)
        }
    }

    /// With an f16 cache too: its swaps move the cache's own bytes (half an f32 block's), and the budget in
    /// bytes is the same (twice the blocks).
    @Test(arguments: [1 << 30, 0], KVCacheDType.allCases)
    func pressureEvictsAdaptersAndSwapsKV(hostSwapLimit: Int, kvCacheDType: KVCacheDType) throws {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config
        let dir = try TempDir()
        let adapters = try Self.adapters(6, seed: 60, config: c, in: dir)
        let params = SamplingParams(temperature: 0, maxTokens: 12, ignoreEOS: true)
        let requests: [([Int], Int?)] = (0..<30).map { i in ((0..<(4 + i % 9)).map { (i * 13 + $0 * 5) % 300 }, i % 7 == 6 ? nil : i % 6) }
        let solo = try Self.soloRuns(requests.map { ($0.0, $0.1.map { adapters[$0] }) }, model: model, tokenizer: tokenizer, params: params,
                                     kvCacheDType: kvCacheDType)
        // Block = 2 KB here (f32; 1 KB f16); an adapter takes ~56 blocks (112): 150 blocks (262) hold 2 adapters plus a few
        // sequences (38 blocks of 4 positions).
        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: kvCacheDType == .f32 ? 150 : 262, blockSize: 4, maxBatchTokens: 48,
                           maxSequences: 12, adapterSlots: 6, policy: BatchPolicyConfig(kind: .unmergedOnly), hostSwapLimitBytes: hostSwapLimit,
                           kvCacheDType: kvCacheDType)
        let ids = try requests.map { try g.submit(prompt: $0.0, params: params, adapter: $0.1.map { adapters[$0] }) }
        var events: [EngineEvent] = []
        while g.hasWork {
            events += g.step()
            #expect(g.freeKVBlocks + g.residentAdapterBlocks <= g.totalKVBlocks)
        }
        for (i, id) in ids.enumerated() {
            #expect(events.filter { $0.requestID == id }.compactMap(\.token) == solo[i], "request \(i)")
        }
        #expect(g.stats.adapterEvictions > 0)
        #expect(g.stats.preemptions > 0)
        #expect(hostSwapLimit == 0 ? g.stats.swapOuts == 0 : g.stats.swapOuts > 0 && g.stats.swapIns == g.stats.swapOuts)
        #expect(g.hostSwapBytes == 0)
        #expect(g.freeKVBlocks + g.residentAdapterBlocks == g.totalKVBlocks)
    }

    /// 60 requests over 12 adapters with room for about 3 adapters at once (the scheduler's whole memory path:
    /// residency, eviction, preemption with swap or recompute): every request equals its solo run, and
    /// afterwards the engine holds nothing but the idle adapters it keeps resident.
    @Test(arguments: [1 << 30, 0])
    func sixtyRequestsOverTwelveAdapters(hostSwapLimit: Int) throws {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let c = model.config
        let dir = try TempDir()
        let adapters = try Self.adapters(12, seed: 300, config: c, in: dir)
        let params = SamplingParams(temperature: 0, maxTokens: 10, ignoreEOS: true)
        let requests: [([Int], Int)] = (0..<60).map { i in ((0..<(3 + i % 11)).map { (i * 17 + $0 * 3) % 300 }, (i * 5) % 12) }
        let solo = try Self.soloRuns(requests.map { ($0.0, adapters[$0.1]) }, model: model, tokenizer: tokenizer, params: params)
        // Room for 3 adapters beside a few sequences (48 blocks of 2 KB each here).
        let perAdapter = 2 * c.numLayers * 4 * c.numKVHeads * c.headDim * MemoryLayout<Float>.stride
        let adapterBlocks = (adapters[0].byteCount + perAdapter - 1) / perAdapter
        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 3 * adapterBlocks + 40, blockSize: 4, maxBatchTokens: 48,
                           maxSequences: 16, adapterSlots: 4, policy: BatchPolicyConfig(kind: .unmergedOnly), hostSwapLimitBytes: hostSwapLimit)
        let ids = try requests.map { try g.submit(prompt: $0.0, params: params, adapter: adapters[$0.1]) }
        var events: [EngineEvent] = []
        var steps = 0, mostResident = 0
        while g.hasWork && steps < 5000 {
            events += g.step()
            steps += 1
            mostResident = max(mostResident, g.scheduler.residentAdapters.count)
        }
        #expect(mostResident == 3, "the budget holds 3 adapters at most")
        #expect(!g.hasWork)
        for (i, id) in ids.enumerated() {
            #expect(events.filter { $0.requestID == id }.compactMap(\.token) == solo[i], "request \(i)")
        }
        #expect(g.stats.adapterEvictions >= 9 && g.stats.adapterLoads >= 12)
        #expect(g.hostSwapBytes == 0 && g.runner.hostSwapCount == 0)
        #expect(g.freeKVBlocks + g.residentAdapterBlocks == g.totalKVBlocks)
        #expect(g.heldAdapterCount == g.scheduler.residentAdapters.count, "weights held only for resident adapters once idle")
    }

    /// A request whose adapter cannot fit beside its prompt in the budget is refused at submit, not stuck.
    @Test func adapterTooLargeForTheBudgetIsRefused() throws {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let dir = try TempDir()
        try TestAdapter(config: model.config, rank: 8, alpha: 8, targets: LoRATarget.allCases, seed: 1).writePEFT(to: dir.path("big"), config: model.config)
        let big = try AdapterLoader.load(path: dir.path("big"), base: model.config)
        let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 40, blockSize: 4)
        #expect(throws: EngineError.self) { try g.submit(prompt: [1, 2, 3], params: .greedy, adapter: big) }
        #expect(!g.hasWork)
    }

    /// The tiny Q4_1 model, its tokenizer, and a rank-4 q/v adapter written and loaded as PEFT.
    static func tinyWithAdapter(seed: UInt64) throws -> (LlamaModel, Tokenizer, LoRAWeights) {
        let checkpoint = try openCheckpoint(path: Fixtures.model("tiny-llama", "Q4_1"))
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let dir = try TempDir()
        try TestAdapter(config: model.config, rank: 4, alpha: 8, targets: [.q, .v], seed: seed).writePEFT(to: dir.path("a"), config: model.config)
        return (model, tokenizer, try AdapterLoader.load(path: dir.path("a"), base: model.config))
    }

    /// A request handed an adapter's weights before the adapter was unloaded, and submitted after the engine was told
    /// (the server's race between a lookup and an unload): it is served, token for token as on an engine that never saw
    /// the unload, whether the adapter was unknown to the engine or serving another request at the time; and the
    /// unloaded adapter's weights are dropped once its requests end.
    @Test func requestSubmittedAfterItsAdaptersUnloadIsServed() throws {
        let (model, tokenizer, w) = try Self.tinyWithAdapter(seed: 31)
        let params = SamplingParams(temperature: 0, maxTokens: 6, ignoreEOS: true)
        let prompt = tokenizer.encode("hello world", addSpecial: true)
        let reference = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 16)
        let rid = try reference.submit(prompt: prompt, params: params, adapter: w)
        let want = reference.runToCompletion().filter { $0.requestID == rid }.compactMap(\.token)
        #expect(want.count == 6)
        for runningFirst in [false, true] {
            let g = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 32)
            var ids: [RequestID] = []
            var got: [RequestID: [Int]] = [:]
            if runningFirst {
                ids.append(try g.submit(prompt: prompt, params: params, adapter: w))
                for e in g.step() { if let t = e.token { got[e.requestID, default: []].append(t) } }
            }
            g.retire(adapter: w.id)
            ids.append(try g.submit(prompt: prompt, params: params, adapter: w))
            for e in g.runToCompletion() { if let t = e.token { got[e.requestID, default: []].append(t) } }
            for id in ids { #expect(got[id] == want, "running first: \(runningFirst)") }
            #expect(g.heldAdapterCount == 0, "running first: \(runningFirst): the unloaded adapter's weights outlived its requests")
        }
    }

    /// An unloaded adapter's weights, once dropped, go back to the system: the loop returns the freed heap when it
    /// goes idle (glibc keeps freed small allocations in the process's RSS otherwise), and not before anything was
    /// dropped.
    @Test func aDroppedAdaptersHeapIsReturnedWhenIdle() async throws {
        let (model, tokenizer, w) = try Self.tinyWithAdapter(seed: 32)
        let loop = EngineLoop(engine: EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 32))
        defer { loop.shutdown() }
        let (_, events) = try loop.submit(prompt: [1, 2, 3], params: SamplingParams(temperature: 0, maxTokens: 4, ignoreEOS: true), adapter: w)
        for await _ in events {}
        try await Task.sleep(for: .milliseconds(50))
        #expect(loop.heapReturnCount == 0, "nothing was dropped yet")
        loop.retire(adapter: w.id)
        var returned = 0
        for _ in 0..<500 where returned == 0 {
            try await Task.sleep(for: .milliseconds(10))
            returned = loop.heapReturnCount
        }
        #expect(returned == 1)
        #expect(loop.inspect { $0.heldAdapterCount } == 0)
    }
}
