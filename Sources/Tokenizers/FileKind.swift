#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a path names, links followed, for readers of small untrusted files (configs, tokenizers, schemas): a read of a
/// FIFO blocks, a device never ends, and Foundation's refusal of either read as "You don't have permission".
public enum FileKind: Equatable, Sendable {
    case regular, directory, other, missing

    public init(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { self = .missing; return }
        switch st.st_mode & S_IFMT {
        case S_IFREG: self = .regular
        case S_IFDIR: self = .directory
        default: self = .other
        }
    }

    /// Why the path cannot be read as a file's contents ("is a directory", "is not a regular file (a FIFO, socket or
    /// device)"), nil for a regular file or a path that does not exist.
    public var problem: String? {
        switch self {
        case .regular, .missing: nil
        case .directory: "is a directory"
        case .other: "is not a regular file (a FIFO, socket or device)"
        }
    }
}
