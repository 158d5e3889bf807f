/// Reading an adapter's files into a replica's host memory: what `AdapterRegistry` does on the real server when a
/// request names an adapter it has not loaded (`OpenAIServer.resolveModel` → `loadAsync`), before the request
/// reaches the engine's queue, and what a migration's reservation does on the destination before the copy starts.
/// The registry loads on one serial queue per process and keeps what it loaded in a host cache bounded in bytes,
/// least recently used evicted first. Off (`SimulationConfig.adapterFiles == nil`), every adapter's files are in
/// host memory from the start, as dLoRA assumes and as the simulator did before.
public struct AdapterFileModel: Sendable, Equatable {
    /// Per load: opening the files, parsing and validating the safetensors header and config, building the weights.
    public var fixedSeconds: Double
    /// Reading and converting the weights; `.infinity`: the fixed part only.
    public var bytesPerSecond: Double
    /// The host cache per replica (`dlora serve`'s adapter host budget); `Int.max`: unbounded.
    public var cacheBytes: Int

    public init(fixedSeconds: Double, bytesPerSecond: Double = .infinity, cacheBytes: Int = .max) {
        self.fixedSeconds = fixedSeconds
        self.bytesPerSecond = bytesPerSecond
        self.cacheBytes = cacheBytes
    }

    /// Seconds to load an adapter of `bytes`.
    public func seconds(bytes: Int) -> Double { fixedSeconds + Double(bytes) / bytesPerSecond }

    public var problem: String? {
        if !(fixedSeconds >= 0) || !fixedSeconds.isFinite { return "the adapter file load time must be a finite number >= 0" }
        if !(bytesPerSecond > 0) { return "the adapter file read rate must be positive" }
        if cacheBytes < 1 { return "the adapter host cache must be at least 1 byte" }
        return nil
    }
}

/// One replica's registry as the simulator sees it: which adapters' files are in host memory (or being read, and
/// until when), least recently used first out, and its single loader.
struct AdapterFileCache {
    private struct Entry {
        var ready: Double
        var bytes: Int
        var lastUse: Int
    }
    private var entries: [Int: Entry] = [:]
    private var bytes = 0
    private var clock = 0
    /// When the loader finishes what is queued on it.
    private(set) var loaderFreeAt = 0.0
    /// Loads started (first loads and reloads after an eviction).
    private(set) var loads = 0
    private(set) var evictions = 0

    /// When a request for adapter `key` (`size` bytes) that reaches the replica at `t` is past the registry. Loaded
    /// already: at once. Otherwise the request's load job joins the serial queue: it reads the files if nobody
    /// queued them before it, and ends when they are in (a job for an adapter already being read ends at once when
    /// its turn comes, after that read, as `loadAsync` finds the cached copy).
    mutating func ready(key: Int, size: Int, at t: Double, model: AdapterFileModel) -> Double {
        clock += 1
        if let e = entries[key], e.ready <= t {
            entries[key]!.lastUse = clock
            return t
        }
        let start = max(t, loaderFreeAt)
        var done = start
        if entries[key] == nil {
            done = start + model.seconds(bytes: size)
            loads += 1
            entries[key] = Entry(ready: done, bytes: size, lastUse: clock)
            bytes += size
            trim(keeping: key, budget: model.cacheBytes)
        } else {
            entries[key]!.lastUse = clock
        }
        loaderFreeAt = done
        return done
    }

    /// Whether `key`'s files are in host memory (or queued) here.
    func holds(_ key: Int) -> Bool { entries[key] != nil }

    private mutating func trim(keeping key: Int, budget: Int) {
        while bytes > budget, entries.count > 1 {
            var victim = -1
            var oldest = Int.max
            for (k, e) in entries where k != key && e.lastUse < oldest {
                oldest = e.lastUse
                victim = k
            }
            guard victim >= 0, let e = entries.removeValue(forKey: victim) else { return }
            bytes -= e.bytes
            evictions += 1
        }
    }
}
