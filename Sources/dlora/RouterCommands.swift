import ArgumentParser
import AsyncHTTPClient
import Cluster
import ClusterPolicy
import Engine
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// dLoRA dispatch's settings (`DLoRAProactive`), shared by `router`, `cluster` and `simulate`
/// (docs/design/cluster-policy.md); the defaults are the router's.
struct DLoRADispatchFlags: ParsableArguments {
    @Flag(inversion: .prefixedNo,
          help: "dLoRA dispatch: price a replica's mixed batches at no fewer steps than its distinct queued adapters over its adapter slots.")
    var dispatchSlotBound = false
    @Option(help: "dLoRA dispatch: decode steps a placed replica may cost above the cheapest before a request goes elsewhere (a large value keeps requests on their adapter's placed replicas).")
    var placementSlackSteps: Double = 1
    @Option(help: "dLoRA dispatch: keep the adapter placement while the adapters' shares of arrivals move by at most this (total variation, 0-1; 0: re-place at every placement).")
    var placementHysteresis: Double = 0
    @Option(help: "dLoRA dispatch: weight of the previous estimate in the adapters' smoothed arrival rates, per placement (0-0.99; 0.5 remembers about two placements).")
    var placementRateMemory: Double = 0.5

    func validate() throws {
        guard placementSlackSteps >= 0, placementSlackSteps.isFinite else { throw ValidationError("--placement-slack-steps must be a finite number >= 0") }
        guard (0...1).contains(placementHysteresis) else { throw ValidationError("--placement-hysteresis must be in 0...1") }
        guard (0...0.99).contains(placementRateMemory) else { throw ValidationError("--placement-rate-memory must be in 0...0.99") }
    }

    func apply(to d: inout DLoRAProactive) {
        d.adapterSlotBound = dispatchSlotBound
        d.placementSlackSteps = placementSlackSteps
        d.placementHysteresis = placementHysteresis
        d.rateMemory = placementRateMemory
    }
}

/// The router's flags, shared by `router` and `cluster`.
struct RouterFlags: ParsableArguments {
    @Option(help: "Dispatch policy: \(DispatchKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var dispatch: String = DispatchKind.dlora.rawValue
    @Option(help: "Reactive migration of running requests: off, recompute (dLoRA's), kv (live, K/V copied in stages).")
    var migration: String = "off"
    @Option(help: "Seconds between checks of the migration trigger (dLoRA: 10).")
    var migrationInterval: Double = 10
    @Option(help: "KV use (0–1) of the fullest replica that triggers a migration (dLoRA: 0.9).")
    var migrationKvThreshold: Double = 0.9
    @Option(help: "Requests above the average that trigger a migration (dLoRA: 16).")
    var migrationRequestExcess: Int = 16
    @Option(help: "Milliseconds between reads of the replicas' status.")
    var pollMs: Int = 200
    @OptionGroup var dloraDispatch: DLoRADispatchFlags
    @OptionGroup var keys: KeyOptions
    @Option(help: "Largest request body, bytes.")
    var maxBodyBytes: Int = 1 << 20
    @Option(help: "MiB of Responses API answers the router keeps in memory for previous_response_id and GET /v1/responses/{id} (least recently used forgotten first; 0: store none).")
    var responsesStoreMb: Int = 64
    @Option(help: "Seconds a request whose replica failed waits for one that can resume it when none can now (every replica down at once); 0: fail it at once.")
    var resumeWait: Double = 30

    func validate() throws {
        guard DispatchKind(rawValue: dispatch) != nil else {
            throw ValidationError("unknown --dispatch '\(dispatch)' (\(DispatchKind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard ["off", "recompute", "kv"].contains(migration) else { throw ValidationError("--migration must be off, recompute or kv") }
        guard migrationInterval > 0, migrationInterval <= 86_400 else { throw ValidationError("--migration-interval must be in (0, 86400] seconds") }
        guard migrationKvThreshold > 0, migrationKvThreshold <= 1 else { throw ValidationError("--migration-kv-threshold must be in (0, 1]") }
        guard migrationRequestExcess >= 1 else { throw ValidationError("--migration-request-excess must be positive") }
        guard pollMs >= 10, pollMs <= 60_000 else { throw ValidationError("--poll-ms must be between 10 and 60000") }
        guard maxBodyBytes >= 1024 else { throw ValidationError("--max-body-bytes must be at least 1024") }
        guard (0...65_536).contains(responsesStoreMb) else { throw ValidationError("--responses-store-mb must be between 0 and 65536") }
        guard resumeWait >= 0, resumeWait <= 3600 else { throw ValidationError("--resume-wait must be between 0 and 3600 seconds") }
    }

    func options(adminKey resolvedAdmin: String?) -> RoutingOptions {
        var o = RoutingOptions()
        o.apiKey = keys.resolvedAPIKey
        o.adminKey = resolvedAdmin
        o.dispatch = DispatchKind(rawValue: dispatch) ?? .dlora
        o.migration = MigrationMode(rawValue: migration)
        o.pollInterval = .milliseconds(Int64(pollMs))
        dloraDispatch.apply(to: &o.dloraDispatch)
        o.migrationConfig = MigrationConfiguration(periodSeconds: migrationInterval, kvUsageThreshold: migrationKvThreshold,
                                                   requestExcess: migrationRequestExcess)
        o.maxBodyBytes = maxBodyBytes
        o.responsesStoreBytes = responsesStoreMb << 20
        o.resumeWait = .milliseconds(Int64(resumeWait * 1000))
        return o
    }

    var resolvedAdminKey: String? { keys.resolvedAdminKey }
}

/// Runs a router until SIGTERM/SIGINT.
/// A second signal ends the process at once (the router holds no work of its own; streams in flight resume on a
/// client's retry), after `beforeExit`.
func runRouter(_ router: ClusterRouter, host: String, port: Int, label: String, beforeExit: @escaping @Sendable () -> Void = {},
               onReady: @escaping @Sendable (Int) -> Void) async throws {
    var logger = Logger(label: "dlora.router")
    logger.logLevel = .info
    let app = router.makeApplication(configuration: .init(address: .hostname(host, port: port), serverName: "dlora-router"), logger: logger,
                                     onServerRunning: { channel in
                                         let bound = channel.localAddress?.port ?? 0
                                         StandardError.write("dlora: router on http://\(host):\(bound) — \(label)\n")
                                         onReady(bound)
                                     })
    let background = Task { await router.replicas.pollOnce(); await router.runBackground() }
    defer { background.cancel() }
    let group = ServiceGroup(configuration: .init(services: [.init(service: app)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    let second = SecondSignal(grace: 0, beforeExit: beforeExit)
    do {
        defer { withExtendedLifetime(second) {} }
        try await group.run()
    } catch {
        background.cancel()
        await router.replicas.shutdown()
        throw error
    }
    background.cancel()
    await router.replicas.shutdown()
}

/// `dlora router`: the OpenAI API in front of running replicas.
struct RouterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "router",
        abstract: "Route OpenAI requests across dlora replicas: dLoRA dispatch, live migration with K/V, failover.")

    @Option(help: "Replica base URLs, comma-separated (e.g. http://127.0.0.1:8001,http://127.0.0.1:8002).")
    var replicas: String?
    @Option(help: "Discover replicas through DNS: HOST:PORT of a headless Service, re-resolved every 5 s.")
    var replicasDns: String?
    @Option(help: "Address to bind (default: loopback only).")
    var host: String = "127.0.0.1"
    @Option(help: "Port (0: any free port, printed at start).")
    var port: Int = 8000
    @OptionGroup var flags: RouterFlags

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
        guard (replicas != nil) != (replicasDns != nil) else { throw ValidationError("give exactly one of --replicas and --replicas-dns") }
        for u in urls {
            guard let url = URL(string: u), url.host != nil, u.hasPrefix("http://") else { throw ValidationError("'\(u)' is not an http:// URL") }
            // A port past 65535 trapped in the HTTP client at the first poll.
            if let port = url.port, !(1...65535).contains(port) { throw ValidationError("'\(u)': port \(port) is not in 1...65535") }
        }
        if replicas != nil {
            guard !urls.isEmpty else { throw ValidationError("--replicas names no replica (comma-separated http:// URLs)") }
            // One replica twice would count as two: twice its share of the traffic, and its failure taken for two.
            let normalized = urls.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
            if let twice = normalized.first(where: { u in normalized.filter { $0 == u }.count > 1 }) {
                throw ValidationError("--replicas names \(twice) twice")
            }
        }
        if let d = replicasDns, d.lastIndex(of: ":").flatMap({ Int(d[d.index(after: $0)...]) }).map({ (1...65535).contains($0) }) != true {
            throw ValidationError("--replicas-dns must be HOST:PORT (port 1...65535)")
        }
    }

    var urls: [String] { (replicas ?? "").split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }

    func run() async throws {
        // The router reaches its replicas' control API (/internal/*) with the admin key; without one it started and then
        // answered every request "no replica is healthy".
        guard let admin = flags.resolvedAdminKey else {
            throw CLIError("router needs --admin-key (or DLORA_ADMIN_KEY): the key its replicas were started with, which it reaches their control API with")
        }
        let set = ReplicaSet(urls: urls, http: makeRouterHTTPClient(), adminKey: admin)
        let router = ClusterRouter(replicas: set, options: flags.options(adminKey: admin))
        let dnsTask = replicasDns.map { name in Task { await set.discover(dns: name, every: .seconds(5)) } }
        defer { dnsTask?.cancel() }
        try await runRouter(router, host: host, port: port, label: "\(urls.count) replicas, dispatch \(flags.dispatch), migration \(flags.migration)") { _ in }
    }
}

/// One HTTP client for all replica calls: many concurrent streams per replica, no redirects.
func makeRouterHTTPClient() -> HTTPClient {
    var c = HTTPClient.Configuration()
    c.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 1024)
    c.redirectConfiguration = .disallow
    c.timeout = .init(connect: .seconds(2), read: nil)
    return HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
}

/// `dlora cluster`: N local replicas and a router in one command; a replica that dies is started again.
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster",
        abstract: "Start N local replicas (threads split between them) and a router; restart replicas that die.")

    @Option(help: "Number of replicas.")
    var replicas: Int = 2
    @Option(help: "Adapter root served by every replica.")
    var adapters: String?
    @Option(help: "A GGUF file or a Hugging Face model directory (default: the SmolLM2-135M-Instruct Q4_1 in the user cache).")
    var model: String?
    @Option(help: "Kernel threads in all (split between the replicas; default: all cores).")
    var threads: Int?
    @Option(help: "Distinct adapters each replica may hold resident (its LoRA slots).")
    var adapterSlots: Int?
    @Option(name: .customLong("kv-cache-mb"), help: "Each replica's KV + adapter budget, MiB.")
    var kvCacheMb: Int?
    @Option(help: "Each replica's batching policy.")
    var policy: String?
    @Option(help: "Router address (default: loopback only).")
    var host: String = "127.0.0.1"
    @Option(help: "Router port (0: any free port).")
    var port: Int = 8000
    @OptionGroup var flags: RouterFlags
    @Argument(parsing: .postTerminator, help: "After --: more `dlora serve` flags for every replica (e.g. -- --served-model-name m --max-queue 64).")
    var serveArguments: [String] = []

    func validate() throws {
        guard replicas >= 1, replicas <= 64 else { throw ValidationError("--replicas must be between 1 and 64") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
        if let threads, threads < 1 { throw ValidationError("--threads must be positive") }
        // Every replica holds its own budget: each one's below the memory, all of them not, had the replicas fail at
        // start and restart in a loop.
        let perReplica = kvCacheMb ?? EngineConfiguration.defaultKVCacheMegabytes
        let memoryMb = Int(ProcessInfo.processInfo.physicalMemory >> 20)
        guard perReplica >= 1, perReplica <= 1 << 30, perReplica * replicas < memoryMb else {
            throw ValidationError("--replicas \(replicas) × --kv-cache-mb \(perReplica) is not less than this machine's memory (\(memoryMb) MiB)")
        }
    }

    func run() async throws {
        // The replicas' control API needs a key: the one given, else a random one only this process knows.
        let admin = flags.resolvedAdminKey ?? (0..<4).map { _ in String(UInt64.random(in: .min ... .max), radix: 16) }.joined()
        let total = threads ?? ProcessInfo.processInfo.activeProcessorCount
        let perReplica = max(1, total / replicas)
        var replicaArgs: [String] = ["serve", "--host", "127.0.0.1", "--threads", String(perReplica), "--exit-with-parent"]
        if let model { replicaArgs += ["--model", model] }
        if let adapters { replicaArgs += ["--adapters", adapters] }
        if let adapterSlots { replicaArgs += ["--adapter-slots", String(adapterSlots)] }
        if let kvCacheMb { replicaArgs += ["--kv-cache-mb", String(kvCacheMb)] }
        if let policy { replicaArgs += ["--policy", policy] }
        replicaArgs += serveArguments
        let ports = try (0..<replicas).map { _ in try freeLoopbackPort() }
        let supervisor = ReplicaSupervisor(executable: try executablePath(), arguments: replicaArgs, ports: ports, adminKey: admin,
                                           apiKey: flags.options(adminKey: admin).apiKey)
        supervisor.startAll()
        defer { supervisor.stopAll() }
        let supervise = Task.detached { await supervisor.superviseUntilCancelled() }
        defer { supervise.cancel() }
        // Wait (bounded) for the replicas to come up before the router says it is ready.
        let set = ReplicaSet(urls: ports.map { "http://127.0.0.1:\($0)" }, http: makeRouterHTTPClient(), adminKey: admin)
        let deadline = Date().addingTimeInterval(300)
        while Date() < deadline {
            await set.pollOnce()
            if set.healthyCount == replicas { break }
            guard supervisor.anyAlive else {
                await set.shutdown()
                throw CLIError("the replicas exited at start (see their messages above)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        guard set.healthyCount > 0 else {
            await set.shutdown()
            throw CLIError("no replica came up within 300 s")
        }
        let router = ClusterRouter(replicas: set, options: flags.options(adminKey: admin))
        try await runRouter(router, host: host, port: port,
                            label: "\(replicas) replicas × \(perReplica) threads, dispatch \(flags.dispatch), migration \(flags.migration)",
                            beforeExit: { supervisor.killAll() }) { _ in }
    }

    private func executablePath() throws -> String {
        if let p = Bundle.main.executablePath { return p }
        throw CLIError("cannot find this executable's path to start replicas")
    }
}

/// A free TCP port on loopback (bound and released; the replica binds it right after).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CLIError("socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw CLIError("could not find a free loopback port") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Child replica processes: started with the admin key in their environment (never on a command line),
/// restarted with back-off when one exits, stopped by PID (SIGTERM, then SIGKILL) when the cluster stops.
final class ReplicaSupervisor: @unchecked Sendable {
    let executable: String
    let arguments: [String]
    let ports: [Int]
    let environment: [String: String]
    private let lock = NSLock()
    private var processes: [Process?]
    private var stopping = false
    private var restarts: [Int]

    init(executable: String, arguments: [String], ports: [Int], adminKey: String, apiKey: String?) {
        self.executable = executable
        self.arguments = arguments
        self.ports = ports
        var env = ProcessInfo.processInfo.environment
        env["DLORA_ADMIN_KEY"] = adminKey
        if let apiKey { env["DLORA_API_KEY"] = apiKey } else { env["DLORA_API_KEY"] = nil }
        environment = env
        processes = Array(repeating: nil, count: ports.count)
        restarts = Array(repeating: 0, count: ports.count)
    }

    func start(_ i: Int) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments + ["--port", String(ports[i])]
        p.environment = environment
        do {
            try p.run()
            StandardError.write("dlora: replica \(i) started (pid \(p.processIdentifier), port \(ports[i]))\n")
        } catch {
            StandardError.write("dlora: replica \(i) failed to start: \(error)\n")
        }
        lock.lock()
        processes[i] = p
        lock.unlock()
    }

    func startAll() { for i in ports.indices { start(i) } }

    var anyAlive: Bool {
        lock.lock()
        defer { lock.unlock() }
        return processes.contains { $0?.isRunning == true }
    }

    /// Restarts replicas that exited (1 s, doubling to 30 s between restarts of the same replica).
    func superviseUntilCancelled() async {
        var nextTry = [Date](repeating: .distantPast, count: ports.count)
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            for i in ports.indices {
                let (dead, isStopping) = locked { (processes[i].map { !$0.isRunning } ?? true, stopping) }
                guard dead, !isStopping, Date() >= nextTry[i] else { continue }
                let n = locked { () -> Int in
                    restarts[i] += 1
                    return restarts[i]
                }
                StandardError.write("dlora: replica \(i) exited; restarting (restart \(n))\n")
                start(i)
                nextTry[i] = Date().addingTimeInterval(min(30, pow(2, Double(min(n, 5)) - 1)))
            }
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// SIGKILL to every replica (a second signal to the cluster: stop now).
    func killAll() {
        let all = locked { () -> [Process] in
            stopping = true
            return processes.compactMap { $0 }
        }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }

    /// SIGTERM to every replica, up to 10 s for them to drain, then SIGKILL.
    func stopAll() {
        let all = locked { () -> [Process] in
            stopping = true
            return processes.compactMap { $0 }
        }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let end = Date().addingTimeInterval(10)
        while Date() < end && all.contains(where: \.isRunning) { usleep(50_000) }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in all { p.waitUntilExit() }
    }
}
