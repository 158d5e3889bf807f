import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A problem with a checkpoint file, named precisely: which file, which tensor (when it is about one),
/// and what is wrong. Its description is one line.
public struct CheckpointError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let tensor: String?
    public let problem: String

    public init(file: String, tensor: String? = nil, problem: String) {
        self.file = file
        self.tensor = tensor
        self.problem = problem
    }

    public var description: String {
        if let tensor { return "\(file): tensor '\(tensor)': \(problem)" }
        return "\(file): \(problem)"
    }
}

/// A whole file in memory, read-only: mapped (the default) or copied. Tensors borrow from it (see
/// `Buffer(borrowing:)`), which keeps it alive.
///
/// A mapping borrows the file's pages: if the file is truncated or rewritten in place while it is mapped,
/// reading the lost pages raises SIGBUS and the process dies (replacing the file by a rename is safe — the
/// mapping keeps the old inode). `Loading.copy` (`dlora serve --no-mmap`) reads the file into private memory
/// at open instead: the process then never depends on the file again, for the price of the file's size in
/// resident memory and the read at start-up.
public final class MappedFile: @unchecked Sendable {
    public enum Loading: Sendable, Equatable {
        /// mmap(2) the file (pages are read on first use and shared with the page cache).
        case map
        /// read(2) the whole file into an allocation at open.
        case copy
    }

    /// How `init(path:)` loads files when not told otherwise; the CLI sets it once at start-up (`--no-mmap`).
    public static var defaultLoading: Loading {
        get { defaultLoadingStore.withLock { $0 } }
        set { defaultLoadingStore.withLock { $0 = newValue } }
    }
    private static let defaultLoadingStore = Mutex(Loading.map)

    public let path: String
    public let base: UnsafeRawPointer
    public let count: Int
    private let mapped: Bool

    public convenience init(path: String) throws {
        try self.init(path: path, loading: Self.defaultLoading)
    }

    public convenience init(path: String, loading: Loading) throws {
        // O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw CheckpointError(file: path, problem: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try self.init(descriptor: fd, path: path, loading: loading)
    }

    /// Loads the file open on `fd` (which stays the caller's to close); `path` names it in errors.
    /// `maxBytes`: a larger file is refused before anything is read or mapped.
    public init(descriptor fd: Int32, path: String, loading: Loading, maxBytes: Int = .max) throws {
        self.path = path
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CheckpointError(file: path, problem: "cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CheckpointError(file: path, problem: "not a regular file") }
        let size = Int(st.st_size)
        guard size <= maxBytes else {
            throw CheckpointError(file: path, problem: "the file has \(size) bytes, more than the \(maxBytes) allowed")
        }
        count = size
        if count == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64))
            mapped = false
            return
        }
        switch loading {
        case .map:
            guard let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
                throw CheckpointError(file: path, problem: "cannot memory-map: \(String(cString: strerror(errno)))")
            }
            base = UnsafeRawPointer(p)
            mapped = true
        case .copy:
            let memory = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
            do {
                try Self.readFully(fd, into: memory, count: count, at: 0, path: path)
            } catch {
                memory.deallocate()
                throw error
            }
            base = UnsafeRawPointer(memory)
            mapped = false
        }
    }

    deinit {
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), count) } else { base.deallocate() }
    }

    /// `count` bytes of the file open on `fd` from byte `offset` into `buffer` (pread, retried on EINTR); a file that
    /// ends first (truncated while reading) or a failed read is a CheckpointError naming `path`.
    static func readFully(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int, path: String) throws {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let why = n < 0 ? String(cString: strerror(errno))
                    : "the file ended at byte \(offset + done) of \(offset + count) (truncated while reading?)"
                throw CheckpointError(file: path, problem: "cannot read: \(why)")
            }
            done += n
        }
    }
}

/// Bounds-checked little-endian reads over a mapped file: every read past the end is a CheckpointError.
struct ByteReader {
    let file: MappedFile
    var offset: Int
    var remaining: Int { file.count - offset }

    init(_ file: MappedFile, offset: Int = 0) {
        self.file = file
        self.offset = offset
    }

    func error(_ problem: String, tensor: String? = nil) -> CheckpointError {
        CheckpointError(file: file.path, tensor: tensor, problem: problem)
    }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n >= 0, n <= remaining else {
            throw error("\(what()) at byte \(offset) needs \(n) bytes but the file ends at \(file.count) (truncated?)")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = file.base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func bytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try need(n, what())
        defer { offset += n }
        return UnsafeRawBufferPointer(start: file.base + offset, count: n)
    }
}
