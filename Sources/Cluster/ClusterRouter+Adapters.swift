import Foundation
import HTTPFront
import HTTPTypes
import Hummingbird
import NIOCore
import ServingAPI

// Adapter loads and unloads through the router: fanned out to every healthy replica all or nothing, recorded, and
// replayed on a replica whose catalog contradicts them (restarted, or down at the time), retried with back-off.
extension ClusterRouter {
    static let loadPath = "/v1/load_lora_adapter"
    static let unloadPath = "/v1/unload_lora_adapter"

    /// Adapter loading and unloading reach every healthy replica and leave them alike. A load is all or nothing: at the
    /// first replica that refuses it, the replicas that took it unload it again and the refusal is the answer (before,
    /// a load one replica refused stayed on those that took it — listed and served while the client was told it failed,
    /// and every retry refused as `adapter_exists`). An unload succeeds when it removed the adapter from some replica
    /// (those that did not have it answer 404); it fails, with the first refusal, only when it removed it nowhere. A
    /// replica that cannot be reached is marked down; a change that succeeded is replayed on it when it rejoins.
    func fanOut(_ request: Request, path: String) async throws -> Response {
        try authorizeAdmin(request)
        // While a change is under way, the replicas' catalogs run ahead of `adapterChanges`: no retry may act on them.
        replays.withLock { $0.adminInFlight += 1 }
        defer { replays.withLock { $0.adminInFlight -= 1 } }
        var request = request
        let body = Data(buffer: try await collect(&request))
        let targets = replicas.healthyIndices
        guard !targets.isEmpty else { throw APIError(.serviceUnavailable, "no replica is healthy") }
        let isLoad = path == Self.loadPath
        var done: [(replica: Int, answer: Data)] = []
        var refusal: ReplicaClient.Rejected?
        for i in targets {
            do {
                done.append((i, try await replicas.client(i).call(path, method: .POST, body: body, timeout: .seconds(120))))
            } catch let e as ReplicaClient.Rejected {
                refusal = refusal ?? e
                if isLoad { break }
            } catch {
                replicas.markDown(i)
            }
        }
        if isLoad, let refusal {
            await rollBack(load: body, on: done.map(\.replica))
            await replicas.pollOnce()
            return Self.rejection(refusal)
        }
        guard let first = done.first else {
            await replicas.pollOnce()
            if let refusal { return Self.rejection(refusal) }
            throw APIError(.serviceUnavailable, "no replica answered")
        }
        if let name = Self.adapterName(body) {
            adapterChanges.withLock { $0[name] = (path: path, body: body) }
        }
        await replicas.pollOnce()
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: first.answer)))
    }

    /// Unloads a load's adapter again from the replicas that took it (another replica refused the load). One that
    /// cannot be reached for it is marked down.
    private func rollBack(load body: Data, on targets: [Int]) async {
        guard let name = Self.adapterName(body), !targets.isEmpty,
              let unload = try? JSONSerialization.data(withJSONObject: ["lora_name": name]) else { return }
        for i in targets {
            do {
                _ = try await replicas.client(i).call(Self.unloadPath, method: .POST, body: unload, timeout: .seconds(120))
            } catch is ReplicaClient.Rejected {
                continue  // gone already
            } catch {
                replicas.markDown(i)
            }
        }
    }

    /// A replica's refusal, answered to the client as the replica gave it.
    static func rejection(_ e: ReplicaClient.Rejected) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter = e.retryAfter { headers[.retryAfter] = String(retryAfter) }
        return Response(status: .init(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: e.body)))
    }

    static func adapterName(_ body: Data) -> String? {
        (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["lora_name"] as? String
    }

    /// Per replica, the replay's retry state: whether one is running, how many have failed in a row, and when the next
    /// may start; and how many adapter loads or unloads through the router are under way.
    struct ReplayState {
        var running: Set<Int> = []
        var failures: [Int: Int] = [:]
        var notBefore: [Int: ContinuousClock.Instant] = [:]
        var adminInFlight = 0
    }

    /// The changes of `changes` that a replica whose catalog is `adapters` contradicts, by name.
    static func contradicted(_ changes: [String: (path: String, body: Data)], by adapters: [String]) -> [(name: String, path: String, body: Data)] {
        let serving = Set(adapters)
        return changes.sorted(by: { $0.key < $1.key }).compactMap { name, change in
            (change.path == loadPath) != serving.contains(name) ? (name, change.path, change.body) : nil
        }
    }

    /// Replays on replica i what its catalog (`status.adapters`) contradicts: loads of adapters it lacks, unloads of
    /// adapters it serves. One that fails (the replica refused it, or did not answer) is tried again at the polls that
    /// follow, after `replayRetry`, doubled at each failure (`retryReplay`); before, only the replica's next rejoin did.
    /// A load it refuses as `adapter_exists`, or an unload as not found (its status was older than the change), made
    /// no difference and counts as done.
    func replayAdapterChanges(on i: Int, status: ReplicaStatus) async {
        guard replays.withLock({ $0.running.insert(i).inserted }) else { return }
        defer { replays.withLock { _ = $0.running.remove(i) } }
        await replay(on: i, status: status)
    }

    /// The replay itself (the caller holds replica i's place in `running`).
    private func replay(on i: Int, status: ReplicaStatus) async {
        let work = Self.contradicted(adapterChanges.withLock { $0 }, by: status.adapters)
        guard !work.isEmpty else {
            replays.withLock { $0.failures[i] = nil; $0.notBefore[i] = nil }
            return
        }
        var failed = false
        for change in work {
            do {
                _ = try await replicas.client(i).call(change.path, method: .POST, body: change.body, timeout: .seconds(120))
            } catch let e as ReplicaClient.Rejected {
                let code = (try? JSONSerialization.jsonObject(with: e.body) as? [String: Any])
                    .flatMap { $0["error"] as? [String: Any] }?["code"] as? String
                let moot = change.path == Self.loadPath ? code == "adapter_exists" : e.status == 404
                if !moot { failed = true }
            } catch {
                failed = true
            }
        }
        let delay = options.replayRetry
        replays.withLock { s in
            if failed {
                let n = (s.failures[i] ?? 0) + 1
                s.failures[i] = n
                s.notBefore[i] = .now + delay * (1 << min(n - 1, 6))
            } else {
                s.failures[i] = nil
                s.notBefore[i] = nil
            }
        }
        await replicas.pollOnce()
    }

    /// After a poll that found replica i healthy: when its catalog still contradicts the changes made through this
    /// router, no replay is running there, no change is under way, and the last failure's wait is over, replays them
    /// (in a task of its own, so that polling goes on).
    func retryReplay(on i: Int, status: ReplicaStatus) {
        let changes = adapterChanges.withLock { $0 }
        guard !changes.isEmpty, !Self.contradicted(changes, by: status.adapters).isEmpty else { return }
        let start = replays.withLock { s -> Bool in
            guard s.adminInFlight == 0, !s.running.contains(i), s.notBefore[i].map({ ContinuousClock.now >= $0 }) ?? true else { return false }
            s.running.insert(i)
            return true
        }
        guard start else { return }
        Task {
            // Read again: the status that showed the contradiction may be older than a change made since.
            if let fresh = try? await replicas.client(i).status(timeout: .seconds(2)), !fresh.draining,
               replays.withLock({ $0.adminInFlight == 0 }) {
                await replay(on: i, status: fresh)
            }
            replays.withLock { _ = $0.running.remove(i) }
        }
    }
}
