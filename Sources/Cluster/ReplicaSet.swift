import AsyncHTTPClient
import Foundation
import NIOCore
import ServingAPI

#if canImport(Glibc)
import Glibc
#endif

/// The replicas behind the router and what the router last learned of each: health from polling their
/// status (a failed poll or a broken stream takes one out; a successful poll puts it back, so a restarted
/// replica rejoins), and the status values the policies read. Replicas are identified by their index, which
/// never changes; a replica found through DNS keeps its index while its address stays.
public final class ReplicaSet: @unchecked Sendable {
    public struct Entry: Sendable {
        public let url: String
        public let client: ReplicaClient
        public var status: ReplicaStatus?
        public var healthy = false
        /// Consecutive failed polls.
        public var failures = 0
        /// Requests dispatched here since the last status (per model), so that a burst between two polls
        /// does not all go to the replica that looked idlest.
        public var dispatchedSinceStatus: [String: Int] = [:]
        /// Dropped from DNS: kept (for its index) but never chosen.
        public var gone = false
    }

    private let lock = NSLock()
    private var entries: [Entry] = []
    let http: HTTPClient
    let adminKey: String?
    /// Polls that must fail in a row before a replica counts as down (a broken stream takes it out at once).
    public var failuresToMarkDown = 2

    public init(urls: [String], http: HTTPClient, adminKey: String?) {
        self.http = http
        self.adminKey = adminKey
        entries = urls.map { Entry(url: $0, client: ReplicaClient(base: $0, http: http, adminKey: adminKey)) }
    }

    public var snapshot: [Entry] {
        lock.lock()
        defer { lock.unlock() }
        return entries
    }

    public func client(_ i: Int) -> ReplicaClient {
        lock.lock()
        defer { lock.unlock() }
        return entries[i].client
    }

    public var healthyCount: Int { healthyIndices.count }

    /// The replicas that answer now (healthy, not gone), by index.
    public var healthyIndices: [Int] { snapshot.enumerated().filter { $0.element.healthy && !$0.element.gone }.map(\.offset) }

    /// Closes the HTTP client's connections (call once, when the router stops).
    public func shutdown() async {
        try? await http.shutdown()
    }

    /// A transport failure on a stream or call: out until a poll succeeds again.
    /// Whether replica i is down for failing (its polls, or a call): not a draining replica, which still answers.
    public func isUnreachable(_ i: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return entries.indices.contains(i) && entries[i].failures >= failuresToMarkDown
    }

    public func markDown(_ i: Int) {
        lock.lock()
        entries[i].healthy = false
        entries[i].failures = max(entries[i].failures, failuresToMarkDown)
        lock.unlock()
    }

    func noteDispatch(_ i: Int, model: String) {
        lock.lock()
        entries[i].dispatchedSinceStatus[model, default: 0] += 1
        lock.unlock()
    }

    /// Called after a poll for each replica that answered healthy after not being so (its first answer, or back from
    /// down: restarted, or reachable again), or that answered as another process than the poll before (restarted
    /// between two polls: `ReplicaStatus.instance`), with that status, before the next poll. The router replays the
    /// adapter loads and unloads made through it that the replica's catalog lacks. Set once, before polling starts.
    public var onRejoin: (@Sendable (Int, ReplicaStatus) async -> Void)?
    /// Called after a poll with each other replica that answered healthy, and its status: the router retries there the
    /// adapter changes a replay could not make. Must return at once (it starts any slow work on its own). Set once,
    /// before polling starts.
    public var onHealthy: (@Sendable (Int, ReplicaStatus) -> Void)?
    /// Called after every poll with each replica down for failing (its polls, or a call): the router moves the requests
    /// still streaming from it, which a hung replica would otherwise hold for as long as it hangs. Every poll, not only
    /// the one that marked it down: a replica marked down by a failed call never makes that transition in a poll, and a
    /// request that attached to it after it did would wait on it (a probe's SIGSTOPped replica held its streams 45 s).
    /// Set once, before polling starts.
    public var onDown: (@Sendable (Int) async -> Void)?

    /// Polls every replica once, concurrently.
    public func pollOnce(timeout: TimeAmount = .seconds(2)) async {
        let targets = snapshot.enumerated().filter { !$0.element.gone }.map { ($0.offset, $0.element.client) }
        var rejoined: [(Int, ReplicaStatus)] = []
        var healthy: [(Int, ReplicaStatus)] = []
        await withTaskGroup(of: (Int, ReplicaStatus?).self) { group in
            for (i, c) in targets {
                group.addTask { (i, try? await c.status(timeout: timeout)) }
            }
            for await (i, status) in group {
                if record(i, status) {
                    rejoined.append((i, status!))
                } else if let status, !status.draining {
                    healthy.append((i, status))
                }
            }
        }
        if let onHealthy { for (i, status) in healthy { onHealthy(i, status) } }
        if let onDown {
            let now = snapshot
            for i in now.indices where !now[i].gone && now[i].failures >= failuresToMarkDown { await onDown(i) }
        }
        if let onRejoin { for (i, status) in rejoined { await onRejoin(i, status) } }
    }

    /// Records a poll's answer; true when it made the replica healthy again (or showed it restarted).
    /// A restart is told by the replica's instance identity, not by failed polls: a replica restarted within a poll
    /// interval, or whose failed polls were fewer than `failuresToMarkDown`, never looks down, yet it came back with its
    /// startup adapter set (a probe's `dlora cluster` restarted a killed replica in about a second, and the adapters
    /// loaded and unloaded through the router were never replayed on it).
    private func record(_ i: Int, _ status: ReplicaStatus?) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let was = entries[i].healthy
        guard let status else {
            entries[i].failures += 1
            if entries[i].failures >= failuresToMarkDown { entries[i].healthy = false }
            return false
        }
        let previous = entries[i].status?.instance
        let restarted = previous != nil && status.instance != nil && previous != status.instance
        entries[i].status = status
        entries[i].healthy = !status.draining
        entries[i].failures = 0
        entries[i].dispatchedSinceStatus = [:]
        return (!was || restarted) && entries[i].healthy
    }

    /// Polls until cancelled.
    public func poll(every interval: Duration) async {
        while !Task.isCancelled {
            await pollOnce()
            try? await Task.sleep(for: interval)
        }
    }

    /// Replaces the DNS-discovered set: new addresses are added, vanished ones marked gone, returning ones revived.
    public func setDiscovered(_ urls: [String]) {
        lock.lock()
        defer { lock.unlock() }
        let wanted = Set(urls)
        for i in entries.indices { entries[i].gone = !wanted.contains(entries[i].url) }
        for u in urls where !entries.contains(where: { $0.url == u }) {
            entries.append(Entry(url: u, client: ReplicaClient(base: u, http: http, adminKey: adminKey)))
        }
    }

    /// Resolves `host:port` (a headless Service's name) to one URL per address, every `interval`, until cancelled.
    public func discover(dns: String, every interval: Duration) async {
        while !Task.isCancelled {
            if let urls = Self.resolve(dns) { setDiscovered(urls) }
            try? await Task.sleep(for: interval)
        }
    }

    /// `host:port` → ["http://a.b.c.d:port", …] (IPv4 and IPv6), sorted; nil when the name does not resolve.
    public static func resolve(_ hostPort: String) -> [String]? {
        guard let colon = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: colon)...]) else { return nil }
        let host = String(hostPort[..<colon])
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(result) }
        var urls = Set<String>()
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let a = p {
            var buf = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(a.pointee.ai_addr, a.pointee.ai_addrlen, &buf, socklen_t(buf.count), nil, 0, NI_NUMERICHOST) == 0 {
                let ip = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                urls.insert(a.pointee.ai_family == AF_INET6 ? "http://[\(ip)]:\(port)" : "http://\(ip):\(port)")
            }
            p = a.pointee.ai_next
        }
        return urls.sorted()
    }
}
