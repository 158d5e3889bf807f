import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The CLI's output files and standard output, with every failure a one-line error naming the path and the reason.
/// Paths are checked before a long run (a training or an evaluation does not run for minutes to fail at its last
/// write). A regular file (or a new one) is written whole and then renamed into place, so a failed write never
/// leaves a partial file that looks complete; a device or a FIFO (`/dev/stdout`, a pipe) is written straight
/// through, since a rename would replace the device itself.
enum OutputPath {
    /// Fails now when `path` cannot be written: a directory, a file that is not writable, or a new file in a
    /// directory that does not exist or is not writable.
    static func check(_ path: String, option: String) throws {
        var st = stat()
        if stat(path, &st) == 0 {
            guard st.st_mode & S_IFMT != S_IFDIR else { throw CLIError("\(option) \(path): is a directory") }
            guard access(path, W_OK) == 0 else { throw CLIError("\(option) \(path): \(reason(errno))") }
            return
        }
        let parent = (path as NSString).deletingLastPathComponent
        let dir = parent.isEmpty ? "." : parent
        var ds = stat()
        guard stat(dir, &ds) == 0 else { throw CLIError("\(option) \(path): the directory \(dir) does not exist") }
        guard ds.st_mode & S_IFMT == S_IFDIR else { throw CLIError("\(option) \(path): \(dir) is not a directory") }
        guard access(dir, W_OK | X_OK) == 0 else { throw CLIError("\(option) \(path): \(dir) is not writable (\(reason(errno)))") }
    }

    /// Writes `data` to `path` (see the type's note).
    static func write(_ data: Data, to path: String, option: String) throws {
        var st = stat()
        if stat(path, &st) == 0, st.st_mode & S_IFMT != S_IFREG {
            let handle = try openStream(path, option: option)  // (a directory is refused there)
            do {
                try handle.write(contentsOf: data)
            } catch {
                throw CLIError("\(option) \(path): \(reason(error))")
            }
            return
        }
        do {
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw CLIError("\(option) \(path): \(reason(error))")
        }
    }

    /// Opens `path` for writing as a stream (created or truncated; a device or FIFO opened as it is).
    static func openStream(_ path: String, option: String) throws -> FileHandle {
        var st = stat()
        if stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { throw CLIError("\(option) \(path): is a directory") }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("\(option) \(path): \(reason(errno))") }
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }

    /// A directory for output files: created with its parents when missing, and writable.
    static func prepareDirectory(_ path: String, option: String) throws {
        // mkdir -p, component by component, so that the error names the component and the system's reason.
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw CLIError("\(option) \(path): cannot create \(prefix) (\(reason(errno)))")
            }
        }
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw CLIError("\(option) \(path): not a directory") }
        guard access(path, W_OK | X_OK) == 0 else { throw CLIError("\(option) \(path): not writable (\(reason(errno)))") }
    }

    static func reason(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// A Foundation error's POSIX reason where it has one (ENOSPC: "No space left on device"), else its description.
    static func reason(_ error: any Error) -> String {
        let e = error as NSError
        if e.domain == NSPOSIXErrorDomain { return reason(Int32(e.code)) }
        if let underlying = e.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return reason(Int32(underlying.code))
        }
        return e.localizedDescription
    }
}

/// Standard output, checked: a write that fails (a full disk, a closed pipe) is an error, not a crash or a silent loss.
enum StandardOutput {
    static func write(_ data: Data) throws {
        do {
            try FileHandle.standardOutput.write(contentsOf: data)
        } catch {
            throw CLIError("cannot write to standard output: \(OutputPath.reason(error))")
        }
    }
}
