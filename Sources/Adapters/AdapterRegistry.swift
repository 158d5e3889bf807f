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
    /// Names registered with `register` (name → path under the root), and names taken out with `unregister`.
    private var aliases: [String: String] = [:]
    private var removed: Set<String> = []
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

    /// Checks that `name` is a plain name (no path separators, no leading dot) and finds its files: a name
    /// registered with `register`, else `<root>/<name>/` or `<root>/<name>.gguf`. The files must lie under the
    /// root once symbolic links are resolved.
    public func path(for name: String) throws -> String {
        try Self.checkName(name)
        lock.lock()
        let registered = aliases[name], gone = removed.contains(name)
        lock.unlock()
        guard !gone else { throw AdapterError(adapter: name, problem: "not found under the adapter root") }
        if let registered {
            try confine(registered, adapter: name)
            return registered
        }
        let fm = FileManager.default
        let dir = root.appendingPathComponent(name)
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: dir.path, isDirectory: &isDirectory) {
            if isDirectory.boolValue || name.hasSuffix(".gguf") {
                try confine(dir.path, adapter: name)
                return dir.path
            }
        }
        let gguf = root.appendingPathComponent(name + ".gguf")
        if fm.fileExists(atPath: gguf.path) {
            try confine(gguf.path, adapter: name)
            return gguf.path
        }
        throw AdapterError(adapter: name, problem: "not found under the adapter root")
    }

    /// An adapter name is one plain path component: no separators, no leading dot, no NUL, at most 255 bytes.
    public static func checkName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains("/"), !name.contains("\\"), !name.hasPrefix("."),
              !name.contains("\0"), !name.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw AdapterError(adapter: String(name.prefix(64)), problem: "invalid adapter name (a plain file or directory name under the adapter root)")
        }
    }

    /// Serves the adapter at `relativePath` (relative to the root, no `..`, no absolute path, no symbolic link
    /// leading out of the root) under `name`, replacing an earlier registration of that name.
    public func register(name: String, relativePath: String) throws {
        try Self.checkName(name)
        let parts = relativePath.split(separator: "/", omittingEmptySubsequences: true)
        guard !relativePath.isEmpty, !relativePath.hasPrefix("/"), !relativePath.contains("\0"), !relativePath.contains("\\"),
              !parts.isEmpty, !parts.contains(".."), relativePath.utf8.count <= 4096 else {
            throw AdapterError(adapter: name, problem: "adapter path must be relative to the adapter root, without '..'")
        }
        let path = parts.reduce(root) { $0.appendingPathComponent(String($1)) }.path
        guard FileManager.default.fileExists(atPath: path) else {
            throw AdapterError(adapter: name, problem: "path '\(relativePath)' not found under the adapter root")
        }
        try confine(path, adapter: name)
        lock.lock()
        aliases[name] = path
        removed.remove(name)
        loaded[name] = nil
        failures[name] = nil
        lock.unlock()
    }

    /// Stops serving `name` (in-flight requests keep their reference); false when it was not known.
    @discardableResult
    public func unregister(_ name: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let known = aliases.removeValue(forKey: name) != nil || loaded[name] != nil
        loaded[name] = nil
        failures[name] = nil
        removed.insert(name)
        return known
    }

    /// Throws unless `path` (and, for a PEFT directory, the files the loader reads) resolve inside the root.
    private func confine(_ path: String, adapter: String) throws {
        let rootReal = root.resolvingSymlinksInPath().path
        var candidates = [path]
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            candidates += (try? FileManager.default.contentsOfDirectory(atPath: path))?.map { path + "/" + $0 } ?? []
        }
        for p in candidates {
            let real = URL(fileURLWithPath: p).resolvingSymlinksInPath().path
            guard real.hasPrefix(rootReal + "/") else {
                throw AdapterError(adapter: adapter, problem: "resolves outside the adapter root")
            }
        }
    }

    /// Names of the adapters served: those registered, and those under the root (less any unregistered).
    public func available() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        let found = entries.filter { !$0.hasPrefix(".") }.compactMap { entry -> String? in
            var isDirectory: ObjCBool = false
            let p = root.appendingPathComponent(entry).path
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory) else { return nil }
            if isDirectory.boolValue { return FileManager.default.fileExists(atPath: p + "/adapter_config.json") ? entry : nil }
            return entry.hasSuffix(".gguf") ? String(entry.dropLast(5)) : nil
        }
        lock.lock()
        defer { lock.unlock() }
        return Set(found.filter { !removed.contains($0) } + aliases.keys).sorted()
    }

    /// Whether `name` is served (registered, or found under the root and not unregistered).
    public func serves(_ name: String) -> Bool {
        (try? path(for: name)) != nil
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

    /// Loads on the registry's loader queue (or returns the cached copy) without blocking the caller's thread.
    public func loadAsync(_ name: String) async throws -> LoRAWeights {
        if let w = cached(name) { return w }
        return try await withCheckedThrowingContinuation { continuation in
            queue.async { [self] in
                continuation.resume(with: Result { try load(name) })
            }
        }
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
        guard !removed.contains(name) else { return }  // unregistered while it loaded
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
