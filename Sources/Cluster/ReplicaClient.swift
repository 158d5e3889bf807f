import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import ServingAPI

/// A replica's HTTP endpoints as the router calls them (ServingAPI/ClusterWire.swift): one shared HTTP client,
/// the replica's admin key on every control call, bounded bodies and deadlines everywhere except a generation
/// stream (which lasts as long as its request; a replica that dies closes it).
public struct ReplicaClient: Sendable {
    public let base: String
    let http: HTTPClient
    let adminKey: String?

    /// The largest body read from a replica outside a stream: a whole KV cache's frame fits.
    static let maxBody = 1 << 31

    public init(base: String, http: HTTPClient, adminKey: String?) {
        self.base = base.hasSuffix("/") ? String(base.dropLast()) : base
        self.http = http
        self.adminKey = adminKey
    }

    /// A reply that was not a success: its status and body (an OpenAI-style error from the replica).
    public struct Rejected: Error, CustomStringConvertible, Sendable {
        public let status: Int
        public let body: Data
        /// The reply's `Retry-After` seconds (a full queue's 429, a draining replica's 503).
        public var retryAfter: Int? = nil
        public var description: String { "replica answered \(status): \(String(decoding: body.prefix(300), as: UTF8.self))" }
    }

    func request(_ path: String, method: HTTPMethod, body: Data? = nil, contentType: String = "application/json",
                 key: String? = nil) -> HTTPClientRequest {
        var r = HTTPClientRequest(url: base + path)
        r.method = method
        if let k = key ?? adminKey { r.headers.add(name: "Authorization", value: "Bearer \(k)") }
        if let body {
            r.headers.add(name: "Content-Type", value: contentType)
            r.body = .bytes(ByteBuffer(bytes: body))
        }
        return r
    }

    /// Sends a request and reads the whole reply; a non-2xx reply throws `Rejected`.
    func call(_ path: String, method: HTTPMethod, body: Data? = nil, contentType: String = "application/json", key: String? = nil,
              timeout: TimeAmount = .seconds(10), limit: Int = 1 << 24) async throws -> Data {
        let response = try await http.execute(request(path, method: method, body: body, contentType: contentType, key: key), timeout: timeout)
        let bytes = try await response.body.collect(upTo: limit)
        let data = Data(buffer: bytes)
        guard (200..<300).contains(Int(response.status.code)) else {
            throw Rejected(status: Int(response.status.code), body: data, retryAfter: Self.retryAfter(response))
        }
        return data
    }

    static func retryAfter(_ response: HTTPClientResponse) -> Int? {
        response.headers.first(name: "Retry-After").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
    }

    public func status(timeout: TimeAmount = .seconds(2)) async throws -> ReplicaStatus {
        try ClusterWire.decode(ReplicaStatus.self, from: try await call("/internal/status", method: .GET, timeout: timeout))
    }

    /// Starts a generation. Returns the event stream, or throws `Rejected` with the replica's answer when it
    /// refused the request (4xx: the request's fault; 429/503: this replica's state), or a transport error.
    public func generate(_ g: ReplicaGenerate) async throws -> AsyncThrowingStream<ReplicaEvent, any Error> {
        let response = try await http.execute(request("/internal/generate", method: .POST, body: ClusterWire.encode(g)),
                                              timeout: .hours(24))
        guard response.status == .ok else {
            let body = try await response.body.collect(upTo: 1 << 20)
            throw Rejected(status: Int(response.status.code), body: Data(buffer: body), retryAfter: Self.retryAfter(response))
        }
        let (stream, continuation) = AsyncThrowingStream<ReplicaEvent, any Error>.makeStream()
        let reader = Task {
            var pending = Data()
            do {
                for try await chunk in response.body {
                    pending.append(contentsOf: chunk.readableBytesView)
                    while let nl = pending.firstIndex(of: 0x0A) {
                        let line = pending[pending.startIndex..<nl]
                        pending = Data(pending[(nl + 1)...])
                        guard !line.isEmpty else { continue }
                        continuation.yield(try ClusterWire.decode(ReplicaEvent.self, from: Data(line)))
                    }
                    guard pending.count <= 1 << 20 else { throw Rejected(status: 502, body: Data("an event line over 1 MiB".utf8)) }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in reader.cancel() }
        return stream
    }

    /// A pre-copy stage: the request's full K/V blocks from `from` on (a K/V frame).
    public func kvStage(id: String, from: Int) async throws -> Data {
        try await call("/internal/requests/\(Self.escape(id))/kv?from=\(from)", method: .GET, timeout: .seconds(30), limit: Self.maxBody)
    }

    /// Stops the request and returns its tokens and (with `kvFrom`) the K/V of its blocks from there on.
    public func export(id: String, kvFrom: Int?) async throws -> Data {
        let query = kvFrom.map { "?kv_from=\($0)" } ?? ""
        return try await call("/internal/requests/\(Self.escape(id))/export\(query)", method: .POST, timeout: .seconds(30), limit: Self.maxBody)
    }

    public func reserve(model: String, tokens: Int) async throws -> MigrationReserved {
        try ClusterWire.decode(MigrationReserved.self, from: try await call(
            "/internal/migrations", method: .POST, body: ClusterWire.encode(MigrationReserve(model: model, tokens: tokens)), timeout: .seconds(60)))
    }

    public func stage(migration: String, frame: Data) async throws {
        _ = try await call("/internal/migrations/\(Self.escape(migration))/blocks", method: .PUT, body: frame,
                           contentType: "application/octet-stream", timeout: .seconds(30))
    }

    public func abort(migration: String) async {
        _ = try? await call("/internal/migrations/\(Self.escape(migration))", method: .DELETE, timeout: .seconds(5))
    }

    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? s
    }
}
