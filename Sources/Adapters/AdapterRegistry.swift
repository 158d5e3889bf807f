import Foundation
import Models

/// Adapters by name under one root directory: `<root>/<name>/` (PEFT) or `<root>/<name>.gguf` (GGUF LoRA).
/// Loaded on demand into host memory — in the background, so the step loop never waits on the disk —
/// and kept in a host cache bounded in bytes (least recently used evicted first).
public final class AdapterRegistry: @unchecked Sendable {
    public let root: URL
    public let base: ModelConfig
    /// Host-memory budget for loaded adapters.
    public let hostBudgetBytes: Int

    private let lock = NSLock()
    private var loaded: [String: (weights: LoRAWeights, lastUse: UInt64)] = [:]
    private var loading: Set<String> = []
    private var failures: [String: AdapterError] = [:]
    private var clock: UInt64 = 0
    private let queue = DispatchQueue(label: "dlora.adapter-loader", qos: .utility)

    public init(root: String, base: ModelConfig, hostBudgetBytes: Int = 4 << 30) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw AdapterError(adapter: root, problem: "adapter root is not a directory")
        }
        self.root = URL(fileURLWithPath: root)
        self.base = base
        self.hostBudgetBytes = hostBudgetBytes
    }

    /// Checks that `name` is a plain name (no path separators, no leading dot) and finds its files.
    public func path(for name: String) throws -> String {
        guard !name.isEmpty, name.count <= 255, !name.contains("/"), !name.contains("\\"), !name.hasPrefix("."),
              !name.contains("\0") else {
            throw AdapterError(adapter: name, problem: "invalid adapter name (a plain file or directory name under the adapter root)")
        }
        let fm = FileManager.default
        let dir = root.appendingPathComponent(name)
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: dir.path, isDirectory: &isDirectory) {
            if isDirectory.boolValue || name.hasSuffix(".gguf") { return dir.path }
        }
        let gguf = root.appendingPathComponent(name + ".gguf")
        if fm.fileExists(atPath: gguf.path) { return gguf.path }
        throw AdapterError(adapter: name, problem: "not found under \(root.path)")
    }

    /// Names of the adapters under the root.
    public func available() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return entries.filter { !$0.hasPrefix(".") }.compactMap { entry -> String? in
            var isDirectory: ObjCBool = false
            let p = root.appendingPathComponent(entry).path
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory) else { return nil }
            if isDirectory.boolValue { return FileManager.default.fileExists(atPath: p + "/adapter_config.json") ? entry : nil }
            return entry.hasSuffix(".gguf") ? String(entry.dropLast(5)) : nil
        }.sorted()
    }

    /// The adapter if it is in host memory (marks it recently used); nil otherwise.
    public func cached(_ name: String) -> LoRAWeights? {
        lock.lock()
        defer { lock.unlock() }
        guard let entry = loaded[name] else { return nil }
        clock += 1
        loaded[name] = (entry.weights, clock)
        return entry.weights
    }

    /// Loads synchronously (or returns the cached copy).
    public func load(_ name: String) throws -> LoRAWeights {
        if let w = cached(name) { return w }
        let weights = try AdapterLoader.load(path: path(for: name), name: name, base: base)
        insert(name, weights)
        return weights
    }

    /// The state of a background load started with `prefetch`.
    public enum Status: Equatable {
        case ready(LoRAWeights)
        case loading
        case failed(AdapterError)

        public static func == (a: Status, b: Status) -> Bool {
            switch (a, b) {
            case (.ready(let x), .ready(let y)): x === y
            case (.loading, .loading): true
            case (.failed(let x), .failed(let y)): x == y
            default: false
            }
        }
    }

    /// Starts loading `name` in the background if needed and says where it stands; the step loop polls this
    /// and schedules the adapter's requests once it is `.ready`.
    public func prefetch(_ name: String) -> Status {
        if let w = cached(name) { return .ready(w) }
        lock.lock()
        if let e = failures[name] {
            lock.unlock()
            return .failed(e)
        }
        if loading.contains(name) {
            lock.unlock()
            return .loading
        }
        loading.insert(name)
        lock.unlock()
        queue.async { [self] in
            do {
                let weights = try AdapterLoader.load(path: path(for: name), name: name, base: base)
                insert(name, weights)
            } catch {
                let e = error as? AdapterError ?? AdapterError(adapter: name, problem: "\(error)")
                lock.lock()
                failures[name] = e
                lock.unlock()
            }
            lock.lock()
            loading.remove(name)
            lock.unlock()
        }
        return .loading
    }

    /// Forgets a failed load so that a fixed adapter can be tried again.
    public func clearFailure(_ name: String) {
        lock.lock()
        failures[name] = nil
        lock.unlock()
    }

    /// Drops an adapter from host memory (in-flight users keep their reference).
    public func evict(_ name: String) {
        lock.lock()
        loaded[name] = nil
        lock.unlock()
    }

    public var hostBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return loaded.values.reduce(0) { $0 + $1.weights.byteCount }
    }

    private func insert(_ name: String, _ weights: LoRAWeights) {
        lock.lock()
        defer { lock.unlock() }
        clock += 1
        loaded[name] = (weights, clock)
        var total = loaded.values.reduce(0) { $0 + $1.weights.byteCount }
        while total > hostBudgetBytes, loaded.count > 1,
              let victim = loaded.filter({ $0.key != name }).min(by: { $0.value.lastUse < $1.value.lastUse }) {
            total -= victim.value.weights.byteCount
            loaded[victim.key] = nil
        }
    }
}
