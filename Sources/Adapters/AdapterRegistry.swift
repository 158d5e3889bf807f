import Foundation
import Models

/// Adapters by name under one root directory: `<root>/<name>/` (PEFT, or a composition.json of its siblings:
/// `LoRAComposition`) or `<root>/<name>.gguf` (GGUF LoRA),
/// and names registered with `register` for a path under the root.
///
/// - **Identity.** Each name gets one `AdapterID` when it is registered or first found under the root. The
///   weights carry it, and a reload after a host-cache eviction keeps it as long as the files are the same
///   ones; a registration (an in-place reload too), an unregister followed by a new registration, or files
///   changed on disk give a new one.
/// - **Paths.** A name's path is resolved (symbolic links followed) and confined to the root once, when it
///   is registered or found; a request for a loaded adapter touches no file. Every (re)load opens the files
///   again and checks that what it opened lies under the root's real path, so a file swapped for a symbolic
///   link leading out of the root after registration is still refused.
/// - **Memory.** Loaded adapters stay in a host cache bounded in bytes (least recently used evicted first);
///   loads run on a background queue, so the step loop never waits on the disk.
/// - **Failures.** A failed load is remembered with the identity (device, inode, size, times) of the files it
///   read, and answered from memory until one of them changes: a broken adapter costs a few stat calls per
///   request, not a parse.
/// - **Names** are one plain path component (no separators, no leading dot, no control characters, at most
///   255 bytes) in Unicode NFC: they are compared byte for byte, and a name in another normalization form
///   (`e` + U+0301 for `é`) is refused rather than silently matched to, or kept apart from, its NFC twin.
public final class AdapterRegistry: @unchecked Sendable {
    public let root: URL
    /// The root with symbolic links resolved (once, at init): every adapter file must lie under it.
    public let rootRealPath: String
    public let base: ModelConfig
    /// Host-memory budget for loaded adapters; also the largest adapter file the loader reads.
    public let hostBudgetBytes: Int

    private struct Entry {
        let id: AdapterID
        /// Resolved at registration or discovery: a real path under the root.
        let path: String
        /// Registered with `register` (else found under the root by its name).
        let registered: Bool
        var weights: LoRAWeights?
        var lastUse: UInt64 = 0
        /// The identity of the files the weights (of this id) were loaded from.
        var loadedFrom: [FileStamp]?
        /// The last failed load and the identity of the files it read (a composition's parts' too).
        var failure: (error: AdapterError, files: [FileStamp])?
    }

    /// A name compared and hashed by its exact UTF-8 bytes (`String` compares by canonical equivalence).
    private struct Key: Hashable {
        let bytes: [UInt8]
        init(_ name: String) { bytes = Array(name.utf8) }
    }

    private let lock = NSLock()
    private var entries: [Key: Entry] = [:]
    /// Names under the root taken out with `unregister` (not found again until registered).
    private var removed: Set<Key> = []
    private var clock: UInt64 = 0
    private var attempts = 0
    private var readSeconds = 0.0
    /// Loads in flight or waiting (`startLoad`): each name's callers share one load; up to `maxConcurrentLoads` run at
    /// once, the rest wait in arrival order. One serial loader queue let a slow file (a header of 60 MB takes seconds to
    /// parse and refuse) hold up every other adapter's first load behind it.
    private var waiters: [Key: [@Sendable (Result<LoRAWeights, any Error>) -> Void]] = [:]
    private var queued: [String] = []
    private var runningLoads = 0
    public static let maxConcurrentLoads = 4

    /// How loaded adapters are held (`AdapterPrecision`; a server passes what its model's products call for).
    public let precision: AdapterPrecision

    /// The root given is not a directory (said as that, not as an adapter's problem).
    public struct RootError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(root: String, base: ModelConfig, hostBudgetBytes: Int = 4 << 30, precision: AdapterPrecision = .stored) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue,
              let real = AdapterFiles.realPath(root) else {
            throw RootError(description: "the adapter root '\(root)' is not a directory")
        }
        self.root = URL(fileURLWithPath: root)
        rootRealPath = real
        self.base = base
        self.hostBudgetBytes = hostBudgetBytes
        self.precision = precision
    }

    /// Loads started (each reads and parses the adapter's files), failed ones included.
    public var loadAttempts: Int {
        lock.lock()
        defer { lock.unlock() }
        return attempts
    }

    /// Seconds those loads took (reading, parsing and validating the files), failed ones included: with
    /// `loadAttempts`, the mean price of a load (the simulator's adapter file model, `dlora simulate
    /// --adapter-file-load-ms`).
    public var loadSeconds: Double {
        lock.lock()
        defer { lock.unlock() }
        return readSeconds
    }

    // MARK: Names and paths

    /// An adapter name is one plain path component: no separators, no leading dot, no control characters, at
    /// most 255 bytes, in Unicode NFC.
    public static func checkName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 255, !name.contains("/"), !name.contains("\\"), !name.hasPrefix("."),
              !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw AdapterError(adapter: String(name.prefix(64)), problem: "invalid adapter name (a plain file or directory name under the adapter root)")
        }
        guard name.unicodeScalars.elementsEqual(name.precomposedStringWithCanonicalMapping.unicodeScalars) else {
            throw AdapterError(adapter: String(name.prefix(64)),
                               problem: "invalid adapter name: not in Unicode NFC (names are compared byte for byte; write composed characters, e.g. U+00E9 for é)")
        }
    }

    /// The resolved path of `name`'s files: registered, or found under the root as `<name>/` or `<name>.gguf`
    /// (and then remembered). Throws for an invalid name, one not found, or one that resolves outside the root.
    public func path(for name: String) throws -> String {
        try entry(name).path
    }

    /// The identity of `name` (nil when it is neither registered nor found under the root yet).
    public func id(for name: String) -> AdapterID? {
        lock.lock()
        defer { lock.unlock() }
        return entries[Key(name)]?.id
    }

    /// Whether `name` is served (registered, or found under the root and not unregistered). For a name
    /// already known this touches no file.
    public func serves(_ name: String) -> Bool {
        (try? entry(name)) != nil
    }

    /// The entry of `name`, found under the root on first use.
    private func entry(_ name: String) throws -> Entry {
        lock.lock()
        if let e = entries[Key(name)] {
            lock.unlock()
            return e
        }
        let gone = removed.contains(Key(name))
        lock.unlock()
        try Self.checkName(name)
        guard !gone, let path = discover(name) else {
            throw AdapterError(adapter: name, problem: "not found under the adapter root")
        }
        lock.lock()
        defer { lock.unlock() }
        if let e = entries[Key(name)] { return e }  // found meanwhile (or registered)
        guard !removed.contains(Key(name)) else { throw AdapterError(adapter: name, problem: "not found under the adapter root") }
        let e = Entry(id: .next(), path: path, registered: false)
        entries[Key(name)] = e
        return e
    }

    /// `<root>/<name>/`, else `<root>/<name>.gguf`, resolved and confined; nil when neither exists or it resolves
    /// outside the root. A GGUF file is served by its name less `.gguf` only, as listed: its file name as a second name
    /// would load it twice, under a name `/v1/models` does not show.
    private func discover(_ name: String) -> String? {
        let fm = FileManager.default
        let dir = root.appendingPathComponent(name).path
        var isDirectory: ObjCBool = false
        // A directory is the adapter when it holds one (as `available` lists it); a plain directory beside X.gguf
        // does not hide the file (it made X listed but unloadable).
        if fm.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue, Self.holdsAdapter(dir) {
            return confined(dir)
        }
        let gguf = dir + ".gguf"
        return fm.fileExists(atPath: gguf) ? confined(gguf) : nil
    }

    /// Whether a directory holds an adapter: a PEFT config or a composition manifest.
    static func holdsAdapter(_ dir: String) -> Bool {
        (["adapter_config.json"] + AdapterLoader.compositionManifests).contains { FileManager.default.fileExists(atPath: dir + "/" + $0) }
    }

    /// `path` with symbolic links resolved, if that lies under the root.
    private func confined(_ path: String) -> String? {
        guard let real = AdapterFiles.realPath(path), real.hasPrefix(rootRealPath + "/") else { return nil }
        return real
    }

    /// Names of the adapters served, exactly those a request may name: those registered, those under the root (less
    /// any unregistered) whose files resolve inside it, and those found there before and still held in memory (served
    /// even after their files moved). Entries whose names could not be requested (not NFC, invalid), and links that
    /// lead outside the root, are not listed.
    public func available() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        let found = entries.compactMap { entry -> String? in
            var isDirectory: ObjCBool = false
            let p = root.appendingPathComponent(entry).path
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDirectory) else { return nil }
            let name: String
            if isDirectory.boolValue {
                guard Self.holdsAdapter(p) else { return nil }
                name = entry
            } else {
                guard entry.hasSuffix(".gguf") else { return nil }
                name = String(entry.dropLast(5))
            }
            guard (try? Self.checkName(name)) != nil, confined(p) != nil else { return nil }
            return name
        }
        lock.lock()
        defer { lock.unlock() }
        let held = self.entries.filter { $0.value.registered || $0.value.weights != nil }.keys.map { String(decoding: $0.bytes, as: UTF8.self) }
        return Set(found.filter { !removed.contains(Key($0)) } + held).sorted()
    }

    // MARK: Registration

    /// `register` refused a name that is served already (pass `replace: true` to reload in place).
    public struct NameTaken: Error, CustomStringConvertible, Sendable {
        public let name: String
        public var description: String { "the adapter '\(name)' is already loaded" }
    }

    /// Loads the adapter at `relativePath` (relative to the root: no `..`, no absolute path, nothing that
    /// resolves outside the root) and serves it under `name` with a new `AdapterID`. With `replace`, an earlier
    /// version of `name` is replaced — but only once the new files have loaded: on any failure nothing
    /// changes, and the earlier version keeps serving.
    @discardableResult
    public func register(name: String, relativePath: String, replace: Bool = false) throws -> LoRAWeights {
        try Self.checkName(name)
        let parts = relativePath.split(separator: "/", omittingEmptySubsequences: true)
        guard !relativePath.isEmpty, !relativePath.hasPrefix("/"), !relativePath.contains("\0"), !relativePath.contains("\\"),
              !parts.isEmpty, !parts.contains(".."), relativePath.utf8.count <= 4096 else {
            throw AdapterError(adapter: name, problem: "adapter path must be relative to the adapter root, without '..'")
        }
        if !replace, serves(name) { throw NameTaken(name: name) }
        let path = parts.reduce(root) { $0.appendingPathComponent(String($1)) }.path
        guard FileManager.default.fileExists(atPath: path) else {
            throw AdapterError(adapter: name, problem: "path '\(relativePath)' not found under the adapter root")
        }
        guard let real = confined(path) else {
            let problem = AdapterFiles.realPath(path) == rootRealPath ? "path '\(relativePath)' is the adapter root itself, not an adapter directory under it"
                : "resolves outside the adapter root"
            throw AdapterError(adapter: name, problem: problem)
        }
        let id = AdapterID.next()
        let files = AdapterFiles.identity(of: real)
        let weights = try read(path: real, name: name, id: id)
        lock.lock()
        defer { lock.unlock() }
        if !replace, entries[Key(name)] != nil { throw NameTaken(name: name) }
        clock += 1
        entries[Key(name)] = Entry(id: id, path: real, registered: true, weights: weights, lastUse: clock, loadedFrom: files)
        removed.remove(Key(name))
        trimCache(keeping: name)
        return weights
    }

    /// `register` off the caller's thread (an administrator's call: not queued behind request loads).
    @discardableResult
    public func registerAsync(name: String, relativePath: String, replace: Bool = false) async throws -> LoRAWeights {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async { [self] in
                continuation.resume(with: Result { try register(name: name, relativePath: relativePath, replace: replace) })
            }
        }
    }

    /// Stops serving `name` (in-flight requests keep their reference); false when it was not known.
    @discardableResult
    public func unregister(_ name: String) -> Bool {
        let known = serves(name)
        lock.lock()
        defer { lock.unlock() }
        entries[Key(name)] = nil
        removed.insert(Key(name))
        return known
    }

    // MARK: Loading

    /// The adapter if it is in host memory (marks it recently used); nil otherwise.
    public func cached(_ name: String) -> LoRAWeights? {
        lock.lock()
        defer { lock.unlock() }
        guard let weights = entries[Key(name)]?.weights else { return nil }
        clock += 1
        entries[Key(name)]?.lastUse = clock
        return weights
    }

    /// Loads synchronously (or returns the cached copy, or the remembered failure while the files are unchanged).
    public func load(_ name: String) throws -> LoRAWeights {
        if let w = cached(name) { return w }
        let e = try entry(name)
        let files = AdapterFiles.identity(of: e.path)
        // With a composition's parts (the failure memo's key); taken before the read, so a change during it is seen
        // on the next request.
        let stamps = files + AdapterFiles.partsIdentity(of: e.path, base: base)
        if let f = e.failure, f.files == stamps { throw f.error }
        // Same files as the weights this id was loaded from (or the first load): same id. Changed: a new one.
        let id = e.loadedFrom.map { $0 == files } ?? true ? e.id : AdapterID.next()
        do {
            let weights = try read(path: e.path, name: name, id: id)
            lock.lock()
            defer { lock.unlock() }
            // Unregistered or replaced while it loaded: hand the weights to this caller, keep nothing.
            guard entries[Key(name)]?.id == e.id else { return weights }
            clock += 1
            entries[Key(name)] = Entry(id: id, path: e.path, registered: e.registered, weights: weights, lastUse: clock, loadedFrom: files)
            trimCache(keeping: name)
            return weights
        } catch {
            let failure = error as? AdapterError ?? AdapterError(adapter: name, problem: "\(error)")
            lock.lock()
            defer { lock.unlock() }
            if entries[Key(name)]?.id == e.id {
                // A name found under the root whose files are gone is no longer served (404, not a load error).
                if !e.registered, files.first?.errno == ENOENT {
                    entries[Key(name)] = nil
                } else {
                    entries[Key(name)]?.failure = (failure, stamps)
                }
            }
            throw failure
        }
    }

    private func read(path: String, name: String, id: AdapterID) throws -> LoRAWeights {
        lock.lock()
        attempts += 1
        lock.unlock()
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            lock.lock()
            readSeconds += seconds
            lock.unlock()
        }
        return try AdapterLoader.load(path: path, name: name, base: base, id: id, confinedTo: rootRealPath,
                                      maxFileBytes: max(hostBudgetBytes, 1 << 20)).held(as: precision)
    }

    /// Loads on the registry's loader queue (or returns the cached copy) without blocking the caller's thread.
    public func loadAsync(_ name: String) async throws -> LoRAWeights {
        if let w = cached(name) { return w }
        return try await withCheckedThrowingContinuation { continuation in
            startLoad(name) { continuation.resume(with: $0) }
        }
    }

    /// Runs `load(name)` off the caller's thread and hands its result to `done`; a load of the same name already
    /// waiting or running is joined instead of repeated.
    private func startLoad(_ name: String, then done: @escaping @Sendable (Result<LoRAWeights, any Error>) -> Void) {
        lock.lock()
        let key = Key(name)
        if waiters[key] != nil {
            waiters[key]!.append(done)
            lock.unlock()
            return
        }
        waiters[key] = [done]
        queued.append(name)
        let next = nextLoadLocked()
        lock.unlock()
        if let next { runLoad(next) }
    }

    /// The next waiting load, when a slot is free (taken). Lock held.
    private func nextLoadLocked() -> String? {
        guard runningLoads < Self.maxConcurrentLoads, !queued.isEmpty else { return nil }
        runningLoads += 1
        return queued.removeFirst()
    }

    private func runLoad(_ name: String) {
        DispatchQueue.global(qos: .utility).async { [self] in
            let result = Result { try load(name) }
            lock.lock()
            let done = waiters.removeValue(forKey: Key(name)) ?? []
            runningLoads -= 1
            let next = nextLoadLocked()
            lock.unlock()
            if let next { runLoad(next) }
            for d in done { d(result) }
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
    /// and schedules the adapter's requests once it is `.ready`. A failure stands until the files change.
    public func prefetch(_ name: String) -> Status {
        if let w = cached(name) { return .ready(w) }
        let e: Entry
        do { e = try entry(name) } catch { return .failed(error as? AdapterError ?? AdapterError(adapter: name, problem: "\(error)")) }
        if let f = e.failure, f.files == AdapterFiles.identity(of: e.path, base: base) { return .failed(f.error) }
        // A load of it already waiting or running (`waiters`) is left to finish; polls add nothing to it.
        lock.lock()
        let inFlight = waiters[Key(name)] != nil
        lock.unlock()
        if !inFlight { startLoad(name) { _ in } }
        return .loading
    }

    /// Forgets a failed load so that the adapter is read again on the next request even if its files did
    /// not change.
    public func clearFailure(_ name: String) {
        lock.lock()
        entries[Key(name)]?.failure = nil
        lock.unlock()
    }

    /// Drops an adapter from host memory (in-flight users keep their reference); it keeps its id, and the next
    /// request reads it again.
    public func evict(_ name: String) {
        lock.lock()
        entries[Key(name)]?.weights = nil
        lock.unlock()
    }

    public var hostBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return entries.values.reduce(0) { $0 + ($1.weights?.byteCount ?? 0) }
    }

    /// Evicts the least recently used adapters (never `name`) until the cache fits the budget. Lock held.
    private func trimCache(keeping name: String) {
        var total = entries.values.reduce(0) { $0 + ($1.weights?.byteCount ?? 0) }
        while total > hostBudgetBytes,
              let victim = entries.filter({ $0.key != Key(name) && $0.value.weights != nil }).min(by: { $0.value.lastUse < $1.value.lastUse }) {
            total -= victim.value.weights?.byteCount ?? 0
            entries[victim.key]?.weights = nil
        }
    }
}
