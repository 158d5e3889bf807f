import Foundation
import Testing
import TestSupport

@testable import Models

/// `MappedFile` maps or copies; a copy no longer depends on the file (`--no-mmap`).
@Suite struct MappedFileTests {
    static func bytes(_ f: MappedFile) -> [UInt8] { Array(UnsafeRawBufferPointer(start: f.base, count: f.count)) }

    @Test func copyEqualsMapAndOutlivesTheFile() throws {
        let dir = try TemporaryDirectory()
        let url = dir.file("model.bin")
        let content = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try Data(content).write(to: url)
        let mapped = try MappedFile(path: url.path, loading: .map)
        let copied = try MappedFile(path: url.path, loading: .copy)
        #expect(Self.bytes(mapped) == content && Self.bytes(copied) == content)
        #expect(Int(bitPattern: copied.base) % 64 == 0)
        // Truncate the file in place: the copy still reads all its bytes (a mapping would SIGBUS past the end).
        let handle = try FileHandle(forWritingTo: url)
        try handle.truncate(atOffset: 0)
        try handle.close()
        #expect(Self.bytes(copied) == content)
        // The default follows `defaultLoading`.
        #expect(MappedFile.defaultLoading == .map)
        #expect(try MappedFile(path: url.path).count == 0)
    }

    @Test func sizeLimitAndNonRegularFilesAreRefused() throws {
        let dir = try TemporaryDirectory()
        let url = dir.file("big.bin")
        try Data(repeating: 1, count: 4096).write(to: url)
        let fd = open(url.path, O_RDONLY)
        defer { close(fd) }
        #expect(throws: CheckpointError.self) { try MappedFile(descriptor: fd, path: url.path, loading: .copy, maxBytes: 4095) }
        do { _ = try MappedFile(descriptor: fd, path: url.path, loading: .copy, maxBytes: 4095) } catch let e as CheckpointError {
            #expect(e.problem.contains("4096 bytes, more than the 4095 allowed"))
        }
        #expect(try MappedFile(descriptor: fd, path: url.path, loading: .copy, maxBytes: 4096).count == 4096)
        #expect(throws: CheckpointError.self) { try MappedFile(path: dir.url.path, loading: .copy) }
    }
}
