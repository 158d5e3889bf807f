import Foundation
import Models
#if canImport(Glibc)
import Glibc
#endif

/// Where an adapter's files are read from, and how: each file is opened, then the real path of what was
/// opened (not of the name, which could be swapped for a symbolic link between a check and the open) must
/// lie under the adapter root, and it is read into memory (`MappedFile.Loading.copy`) — an adapter file
/// truncated while it loads is an error, never a SIGBUS.
struct AdapterFiles {
    /// The adapter's directory (PEFT) or file (GGUF LoRA).
    let path: String
    let name: String
    /// The adapter root with symbolic links resolved; nil: not confined (a path given on the command line).
    let rootRealPath: String?

    /// Opens `path/component` (or `path` itself when `component` is nil); nil when it does not exist.
    /// Throws when it resolves outside the root, is not a regular file, or has more than `maxBytes` bytes.
    /// `precheck(fd, size, path)` runs on a regular file within `maxBytes` before it is read (a safetensors header
    /// checked against the file's size: `SafetensorsFile.checkHeader`).
    func open(_ component: String?, maxBytes: Int, precheck: ((Int32, Int, String) throws -> Void)? = nil) throws -> MappedFile? {
        let full = component.map { path + "/" + $0 } ?? path
        let shown = component ?? (path as NSString).lastPathComponent
        // O_NONBLOCK: opening a FIFO must not hang; MappedFile refuses it as not a regular file.
        let fd = Glibc.open(full, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw AdapterError(adapter: name, problem: "\(shown): cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        if let root = rootRealPath {
            guard let real = Self.realPath(of: fd), real.hasPrefix(root + "/") else {
                throw AdapterError(adapter: name, problem: "\(shown) resolves outside the adapter root")
            }
        }
        if let precheck {
            var st = stat()
            if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) <= maxBytes {
                try precheck(fd, Int(st.st_size), full)
            }
        }
        return try MappedFile(descriptor: fd, path: full, loading: .copy, maxBytes: maxBytes)
    }

    /// Whether `path/component` exists (for messages only; nothing is read from it).
    func exists(_ component: String) -> Bool {
        var st = stat()
        return stat(path + "/" + component, &st) == 0
    }

    /// The path the kernel has for an open file: symbolic links resolved, as it is now.
    static func realPath(of fd: Int32) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        #if os(Linux)
        let n = buffer.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { readlink("/proc/self/fd/\(fd)", $0, p.count - 1) }
        }
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n), as: UTF8.self)
        #else
        let ok = buffer.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { fcntl(fd, F_GETPATH, $0) != -1 }
        }
        guard ok else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        #endif
    }

    /// A path with every symbolic link resolved (realpath(3)); nil when it does not exist.
    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The identity of what a load of `path` reads: its own files (`identity(of:)`), and for a composition (a
    /// `composition.json` or `mole_config.json` directory without an `adapter_config.json`) also its parts' — a failed
    /// composition whose expert is fixed must load again. A manifest that does not parse names no parts (its own stamp
    /// covers it).
    static func identity(of path: String, base: ModelConfig) -> [FileStamp] {
        identity(of: path) + partsIdentity(of: path, base: base)
    }

    /// The identity of the parts' files of the composition at `path` (none for a plain adapter).
    static func partsIdentity(of path: String, base: ModelConfig) -> [FileStamp] {
        let parent = (path as NSString).deletingLastPathComponent
        return compositionParts(at: path, base: base).flatMap { identity(of: parent + "/" + $0) }
    }

    /// The sibling adapters the composition at `path` names (none for a plain adapter or an unreadable manifest).
    static func compositionParts(at path: String, base: ModelConfig) -> [String] {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: path + "/adapter_config.json") else { return [] }
        func read(_ file: String) -> Data? {
            guard let a = try? fm.attributesOfItem(atPath: path + "/" + file), let size = a[.size] as? Int, size <= 1 << 20 else { return nil }
            return fm.contents(atPath: path + "/" + file)
        }
        if let data = read(LoRAComposition.manifestFile),
           let m = try? data.withUnsafeBytes({ try LoRAComposition.parse($0, adapter: "") }) {
            return m.parts.map(\.name).filter(LoRAComposition.isPlainName)
        }
        if let data = read(MoLEComposition.configFile),
           let c = try? data.withUnsafeBytes({ try MoLEComposition.parse($0, adapter: "", base: base) }) {
            return c.experts.filter(LoRAComposition.isPlainName)
        }
        return []
    }

    /// The identity of every file the loader may read for the adapter at `path` — device, inode, size,
    /// modification and change times, or the error that stat(2) gives — so that a failed load is retried only
    /// once something changed, and a reload after a host-cache eviction can tell whether it reads the same files.
    static func identity(of path: String) -> [FileStamp] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [FileStamp(errno: errno)] }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return [FileStamp(st)] }
        return [FileStamp(st)] + (AdapterLoader.peftFiles + AdapterLoader.compositionManifests + [MoLEComposition.gatesFile]).map { file in
            var s = stat()
            return stat(path + "/" + file, &s) == 0 ? FileStamp(s) : FileStamp(errno: errno)
        }
    }
}

/// One file's identity as stat(2) reports it (or the errno when there is no such file).
struct FileStamp: Equatable, Sendable {
    var device: UInt64 = 0
    var inode: UInt64 = 0
    var size: Int64 = 0
    var modified: (Int, Int) = (0, 0)
    var changed: (Int, Int) = (0, 0)
    var mode: UInt32 = 0
    var errno: Int32 = 0

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        size = Int64(st.st_size)
        modified = (Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec))
        changed = (Int(st.st_ctim.tv_sec), Int(st.st_ctim.tv_nsec))
        mode = UInt32(st.st_mode)
    }

    init(errno: Int32) { self.errno = errno }

    static func == (a: FileStamp, b: FileStamp) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size && a.modified == b.modified && a.changed == b.changed
            && a.mode == b.mode && a.errno == b.errno
    }
}
