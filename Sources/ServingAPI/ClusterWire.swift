import Foundation

// The router ↔ replica control protocol (docs/design/cluster.md): typed values both sides encode and decode
// with `ClusterWire`, so the replica (`Server`) and the router (`Cluster`) cannot disagree on a field. All of
// it sits under /internal/* on a replica, behind its admin key.
//
//   GET  /internal/status                         → ReplicaStatus
//   POST /internal/generate     ReplicaGenerate   → NDJSON stream of ReplicaEvent (first: `accepted`)
//   GET  /internal/requests/ID/kv?from=K           → KV frame: full blocks K… (pre-copy stage, request keeps running)
//   POST /internal/requests/ID/export?kv_from=K    → KV frame with the tokens: stops the request (final stage)
//   POST /internal/migrations   MigrationReserve  → MigrationReserved (destination: adapter loaded, room checked)
//   PUT  /internal/migrations/MID/blocks           KV frame → 204 (blocks staged for the import)
//   DELETE /internal/migrations/MID                → 204 (abort: the staged blocks are dropped)
// The import of a request is a `ReplicaGenerate` with `generated` (and `migration` when blocks were staged).

public enum ClusterWire {
    public static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }()

    public static func encode(_ value: some Encodable) -> Data {
        do {
            return try encoder.encode(value)
        } catch {
            preconditionFailure("a cluster message did not encode: \(error)")
        }
    }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        try decoder.decode(type, from: data)
    }
}

/// What a replica is doing: the router's dispatch and migration policies read this (and nothing else).
public struct ReplicaStatus: Codable, Sendable, Equatable {
    /// The base model's served name, and the adapters this replica can serve (its catalog).
    public var model: String
    public var adapters: [String]
    /// The longest sequence one request may reach here.
    public var maxModelLen: Int
    public var waiting: Int
    public var running: Int
    public var swapped: Int
    public var kvBlocksTotal: Int
    public var kvBlocksFree: Int
    public var blockSize: Int
    /// Adapters the engine may keep resident at once, and those resident now (by name).
    public var adapterSlots: Int
    public var residentAdapters: [String]
    /// Waiting and running requests per model name ("" is the base model).
    public var perAdapter: [String: AdapterCounts]
    /// The cost model's estimates: one decode step at the current batch, prefill per token, merged vs unmerged
    /// step-time factor, seconds to make an adapter resident.
    public var decodeStepSeconds: Double
    public var prefillTokenSeconds: Double
    public var mergedFactor: Double
    public var adapterLoadSeconds: Double
    public var maxBatch: Int
    /// The requests the router placed here that are live, by the router's id.
    public var requests: [LiveRequest]
    /// Shutting down: admits nothing new.
    public var draining: Bool
    /// This replica process's identity, random at every start (nil from a replica that predates it). The router
    /// compares it poll to poll: a replica restarted between two polls (a supervisor brings one back within a
    /// second) answers healthy both times, and only its new identity says its adapter catalog is its adapter root
    /// again, so the loads and unloads made through the router must be replayed on it.
    public var instance: String?

    public struct AdapterCounts: Codable, Sendable, Equatable {
        public var waiting: Int
        public var running: Int
        public init(waiting: Int, running: Int) {
            self.waiting = waiting
            self.running = running
        }
    }

    public struct LiveRequest: Codable, Sendable, Equatable {
        public var id: String
        public var model: String
        /// Prompt + generated so far, and positions whose K/V is computed.
        public var tokens: Int
        public var computed: Int
        public var generated: Int
        public var maxTokens: Int
        public var running: Bool
        public init(id: String, model: String, tokens: Int, computed: Int, generated: Int, maxTokens: Int, running: Bool) {
            self.id = id
            self.model = model
            self.tokens = tokens
            self.computed = computed
            self.generated = generated
            self.maxTokens = maxTokens
            self.running = running
        }
    }

    public init(model: String, adapters: [String], maxModelLen: Int, waiting: Int, running: Int, swapped: Int, kvBlocksTotal: Int, kvBlocksFree: Int,
                blockSize: Int, adapterSlots: Int, residentAdapters: [String], perAdapter: [String: AdapterCounts],
                decodeStepSeconds: Double, prefillTokenSeconds: Double, mergedFactor: Double, adapterLoadSeconds: Double,
                maxBatch: Int, requests: [LiveRequest], draining: Bool, instance: String? = nil) {
        self.model = model
        self.adapters = adapters
        self.maxModelLen = maxModelLen
        self.waiting = waiting
        self.running = running
        self.swapped = swapped
        self.kvBlocksTotal = kvBlocksTotal
        self.kvBlocksFree = kvBlocksFree
        self.blockSize = blockSize
        self.adapterSlots = adapterSlots
        self.residentAdapters = residentAdapters
        self.perAdapter = perAdapter
        self.decodeStepSeconds = decodeStepSeconds
        self.prefillTokenSeconds = prefillTokenSeconds
        self.mergedFactor = mergedFactor
        self.adapterLoadSeconds = adapterLoadSeconds
        self.maxBatch = maxBatch
        self.requests = requests
        self.draining = draining
        self.instance = instance
    }
}

/// A generation the router hands a replica: the client's OpenAI request as it came (the replica parses and
/// validates it exactly as its own /v1 endpoints do), and, to resume a request that ran elsewhere, the tokens
/// it generated so far and its seed; `migration` names blocks staged here for it.
public struct ReplicaGenerate: Codable, Sendable, Equatable {
    /// The router's id of the request (how export and status name it).
    public var id: String
    /// "completions" or "chat".
    public var endpoint: String
    /// The client's JSON body, verbatim.
    public var body: String
    public var generated: [Int]
    /// The seed to sample with (the router keeps the one the first replica drew for an unseeded request).
    public var seed: UInt64?
    public var migration: String?
    /// For a request with `n` > 1, which choice this generation is (the router runs each as a request of its own):
    /// without `seed`, a seeded body's choice i samples with its seed + i.
    public var choice: Int?
    /// For a completions batch (an array of prompts), which prompt this generation runs.
    public var prompt: Int?

    public init(id: String, endpoint: String, body: String, generated: [Int] = [], seed: UInt64? = nil, migration: String? = nil,
                choice: Int? = nil, prompt: Int? = nil) {
        self.prompt = prompt
        self.id = id
        self.endpoint = endpoint
        self.body = body
        self.generated = generated
        self.seed = seed
        self.migration = migration
        self.choice = choice
    }
}

/// One line of a replica's generation stream (NDJSON). The first line is `accepted`; then one line per
/// token (`token` and the text it completed, possibly empty); the last carries `finish`. `error` ends a
/// stream that failed after it began.
public struct ReplicaEvent: Codable, Sendable, Equatable {
    public var accepted: Accepted?
    public var token: Int?
    public var text: String?
    public var finish: String?
    public var error: String?
    /// The token's log-probabilities, when the request asked for them (`Accepted.logprobs`) and the token is part
    /// of the output.
    public var logprobs: TokenLogprob?
    /// With the first token of a completion that asked for `echo` (never on a resumed request's stream).
    public var echo: PromptEcho?

    public struct Accepted: Codable, Sendable, Equatable {
        public var promptTokens: Int
        public var seed: UInt64
        /// Tokens adopted from staged K/V (0: recomputed).
        public var adoptedPositions: Int
        /// The request asked for log-probabilities (its body as the replica parsed it): the router renders
        /// `logprobs` from the tokens' records, and an empty list when there are none.
        public var logprobs: Bool?
        public init(promptTokens: Int, seed: UInt64, adoptedPositions: Int, logprobs: Bool? = nil) {
            self.promptTokens = promptTokens
            self.seed = seed
            self.adoptedPositions = adoptedPositions
            self.logprobs = logprobs
        }
    }

    public init(accepted: Accepted? = nil, token: Int? = nil, text: String? = nil, finish: String? = nil, error: String? = nil,
                logprobs: TokenLogprob? = nil) {
        self.accepted = accepted
        self.token = token
        self.text = text
        self.finish = finish
        self.error = error
        self.logprobs = logprobs
    }
}

/// The destination's side of a migration's first stage: make the adapter ready and check there is room.
public struct MigrationReserve: Codable, Sendable, Equatable {
    /// The request's model (the base model's name or an adapter's).
    public var model: String
    /// Positions whose K/V will arrive.
    public var tokens: Int
    public init(model: String, tokens: Int) {
        self.model = model
        self.tokens = tokens
    }
}

public struct MigrationReserved: Codable, Sendable, Equatable {
    public var migration: String
    public var blocksFree: Int
    public init(migration: String, blocksFree: Int) {
        self.migration = migration
        self.blocksFree = blocksFree
    }
}

/// The JSON head of a K/V frame. A frame is: 4 bytes little-endian head length, the head, then
/// `blockCount × floatsPerBlock` little-endian f32 values.
public struct KVFrameHead: Codable, Sendable, Equatable {
    public var firstBlock: Int
    public var blockCount: Int
    public var blockSize: Int
    public var floatsPerBlock: Int
    /// Positions with K/V on the source when the frame was read.
    public var computed: Int
    /// With an export: the request's tokens (prompt + generated) and prompt length at the stop.
    public var tokens: [Int]?
    public var promptCount: Int?

    public init(firstBlock: Int, blockCount: Int, blockSize: Int, floatsPerBlock: Int, computed: Int, tokens: [Int]? = nil,
                promptCount: Int? = nil) {
        self.firstBlock = firstBlock
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.floatsPerBlock = floatsPerBlock
        self.computed = computed
        self.tokens = tokens
        self.promptCount = promptCount
    }
}

/// K/V frames as bytes: one encoder and one validating decoder for both sides.
public enum KVFrame {
    /// Heads longer than this are refused (a head is a few hundred bytes plus the token list).
    public static let maxHeadBytes = 1 << 22

    public static func encode(head: KVFrameHead, floats: [Float]) -> Data {
        let h = ClusterWire.encode(head)
        var out = Data(capacity: 4 + h.count + floats.count * 4)
        var n = UInt32(h.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(h)
        floats.withUnsafeBytes { raw in
            #if _endian(little)
            out.append(contentsOf: raw)
            #else
            for f in floats { var b = f.bitPattern.littleEndian; withUnsafeBytes(of: &b) { out.append(contentsOf: $0) } }
            #endif
        }
        return out
    }

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// The head of a frame, checked against the frame's size, without decoding the payload.
    public static func head(of data: Data) throws -> KVFrameHead {
        guard data.count >= 4 else { throw Invalid(description: "K/V frame shorter than its length prefix") }
        let n = data.prefix(4).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        guard n > 0, n <= maxHeadBytes, data.count >= 4 + n else { throw Invalid(description: "K/V frame head length \(n) is out of range") }
        let start = data.startIndex
        let head: KVFrameHead
        do {
            head = try ClusterWire.decode(KVFrameHead.self, from: data.subdata(in: (start + 4)..<(start + 4 + n)))
        } catch {
            throw Invalid(description: "K/V frame head is not valid JSON: \(error)")
        }
        guard head.firstBlock >= 0, head.blockCount >= 0, head.blockSize > 0, head.floatsPerBlock > 0, head.computed >= 0,
              head.blockCount <= (Int.max / 8) / head.floatsPerBlock,
              data.count - 4 - n == head.blockCount * head.floatsPerBlock * 4 else {
            throw Invalid(description: "K/V frame head disagrees with the frame's size")
        }
        return head
    }

    /// Parses and checks a frame: head size, sizes that agree, a payload of exactly the announced floats.
    public static func decode(_ data: Data, maxFloats: Int) throws -> (KVFrameHead, [Float]) {
        let head = try head(of: data)
        guard head.blockCount <= maxFloats / head.floatsPerBlock else { throw Invalid(description: "K/V frame is larger than allowed") }
        let floats = head.blockCount * head.floatsPerBlock
        let n = data.count - 4 - floats * 4
        let values = [Float](unsafeUninitializedCapacity: floats) { buf, count in
            data.withUnsafeBytes { all in
                let raw = UnsafeRawBufferPointer(rebasing: all[(4 + n)...])
                #if _endian(little)
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: raw)
                #else
                for i in 0..<floats {
                    buf[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
                }
                #endif
            }
            count = floats
        }
        return (head, values)
    }
}
