import Adapters
import Engine
import Foundation
import Hummingbird
import HummingbirdTesting
import Models
import Scheduling
import Testing

@testable import HTTPFront
@testable import Server

#if canImport(Glibc)
import Glibc
import Tokenizers
import TestSupport
#endif

/// Fixtures: the tiny Llama (F32 GGUF, the base of the PEFT goldens) and its adapters.
enum ServerFixtures {
    static let fixtures = FixtureFiles.root
    static let modelPath = fixtures.appendingPathComponent("models/tiny-llama/tiny-llama.F32.gguf").path
    static let adapterRoot = fixtures.appendingPathComponent("lora/tiny-llama").path

    struct LoRAGolden: Decodable {
        struct Case: Decodable {
            let promptIds: [Int]
            let greedyIds: [Int]
            let greedyMargins: [Float]
        }
        let cases: [Case]
    }

    static func loraGolden(_ name: String) throws -> LoRAGolden {
        try FixtureFiles.decodeGolden(LoRAGolden.self, at: FixtureFiles.lora.appendingPathComponent("goldens/\(name).json"))
    }

    /// A server over a fresh engine on the tiny model.
    /// `slow`: every sampled token takes 20 ms more, so that requests stay in flight long enough to be
    /// cancelled, to fill the queue, or to be cut off by a shutdown.
    /// `logitsObserver`: sees (and may overwrite) every row of logits before it is sampled.
    /// `maxSequences`: sequences per iteration (1 makes a second request wait for the first).
    /// `model`: another checkpoint (then served as "model").
    static func server(adapterRoot: String? = ServerFixtures.adapterRoot, kvBlocks: Int = 256, maxSequences: Int = 16, slow: Bool = false,
                       model path: String? = nil, policy: BatchPolicyConfig = BatchPolicyConfig(),
                       configure: (inout ServerOptions) -> Void = { _ in },
                       logitsObserver: ((Scheduling.RequestID, UnsafeBufferPointer<Float>) -> Void)? = nil) throws -> OpenAIServer {
        let checkpoint = try openCheckpoint(path: path ?? modelPath)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        let generator = EngineCore(model: model, tokenizer: tokenizer, kvBlocks: kvBlocks, maxBatchTokens: 64, maxSequences: maxSequences,
                                   policy: policy)
        if slow { generator.logitsObserver = { _, _ in usleep(20_000) } }
        if let logitsObserver { generator.logitsObserver = logitsObserver }
        var options = ServerOptions(modelName: path == nil ? "tiny-llama" : "model")
        configure(&options)
        let registry = try adapterRoot.map { try AdapterRegistry(root: $0, base: model.config) }
        return OpenAIServer(engine: EngineLoop(engine: generator), tokenizer: tokenizer, adapters: registry, options: options)
    }

    /// Runs `body` against the server on a loopback port (AsyncHTTPClient: a new connection when the server
    /// closes one), then shuts the engine down.
    static func withServer<T: Sendable>(_ server: OpenAIServer, _ body: @Sendable (any TestClientProtocol) async throws -> T) async throws -> T {
        defer { server.engine.shutdown() }
        let app = server.makeApplication()
        return try await app.test(.ahc(.http), body)
    }

    /// Waits (up to 10 s) until the engine holds no request, no KV block and no queue place.
    static func waitIdle(_ server: OpenAIServer) async throws -> Bool {
        for _ in 0..<500 {
            let s = server.engine.snapshot
            if s.running == 0 && s.waiting == 0 && s.kvBlocksFree + s.adapterBlocks == s.kvBlocksTotal && server.inFlight == 0 {
                return true
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }
}

extension TestClientProtocol {
    /// POSTs a JSON text and returns (status, body text, headers).
    func post(_ uri: String, _ json: String, key: String? = nil) async throws -> (Int, String, HTTPFields) {
        try await send(uri, .post, body: ByteBuffer(string: json), key: key)
    }

    func send(_ uri: String, _ method: HTTPRequest.Method, body: ByteBuffer? = nil, key: String? = nil,
              contentType: String = "application/json") async throws -> (Int, String, HTTPFields) {
        var headers: HTTPFields = [.contentType: contentType]
        if let key { headers[.authorization] = "Bearer \(key)" }
        return try await execute(uri: uri, method: method, headers: headers, body: body) { r in
            (r.status.code, String(buffer: r.body), r.headers)
        }
    }
}

/// A JSON object from a response body.
func jsonObject(_ text: String) throws -> [String: Any] {
    try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

/// The `data:` payloads of an SSE body, in order.
func sseEvents(_ text: String) -> [String] {
    text.components(separatedBy: "\n\n").compactMap { block -> String? in
        let line = block.trimmingCharacters(in: .whitespacesAndNewlines)
        return line.hasPrefix("data: ") ? String(line.dropFirst(6)) : nil
    }
}

/// Checks an OpenAI error body: status, type, and the parameter it names.
func expectError(_ r: (Int, String, HTTPFields), status: Int, param: String? = nil, code: String? = nil,
                 sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(r.0 == status, "status \(r.0), body \(r.1)", sourceLocation: sourceLocation)
    let object = try jsonObject(r.1)
    let error = try #require(object["error"] as? [String: Any], sourceLocation: sourceLocation)
    #expect((error["message"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect(error["type"] is String, sourceLocation: sourceLocation)
    if let param { #expect(error["param"] as? String == param, "\(r.1)", sourceLocation: sourceLocation) }
    if let code { #expect(error["code"] as? String == code, "\(r.1)", sourceLocation: sourceLocation) }
    #expect(r.2[.contentType] == "application/json", sourceLocation: sourceLocation)
}

/// A raw loopback HTTP connection (for a client that leaves mid-request).
final class RawConnection {
    let fd: Int32

    init(port: Int) throws { fd = try connectLoopback(port: port) }

    func send(_ text: String) {
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            off += n
        }
    }

    /// Reads until `marker` appears (or the peer closes); returns what was read.
    func read(until marker: String) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !String(decoding: out, as: UTF8.self).contains(marker) {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, 4096) }
            guard n > 0 else { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    private var closed = false

    /// Closes the socket, once: a second close could close a descriptor number the server in this process
    /// has reused since.
    func closeNow() {
        guard !closed else { return }
        closed = true
        close(fd)
    }

    static func post(_ uri: String, _ json: String) -> String {
        "POST \(uri) HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
    }
}

/// A TCP socket connected to 127.0.0.1:`port` (the raw test clients' one way to connect).
func connectLoopback(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        close(fd)
        throw POSIXError(.ECONNREFUSED)
    }
    return fd
}
