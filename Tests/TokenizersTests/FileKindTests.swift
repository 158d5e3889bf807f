import Foundation
import Testing
import TestSupport
import Tokenizers

/// `FileKind`: what a path names, links followed, so readers of small untrusted files refuse a directory, a FIFO or a
/// device by name (a FIFO blocked a read; Foundation called both "You don't have permission"). And a tokenizer
/// directory whose tokenizer.json is a FIFO is refused with that, not read.
@Suite struct FileKindTests {
    @Test func kinds() throws {
        let dir = try TemporaryDirectory(prefix: "dlora-filekind")
        let file = dir.file("a.json"), fifo = dir.file("fifo"), link = dir.file("link")
        try Data("{}".utf8).write(to: file)
        #expect(mkfifo(fifo.path, 0o600) == 0)
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: file.path)
        #expect(FileKind(path: file.path) == .regular && FileKind(path: file.path).problem == nil)
        #expect(FileKind(path: link.path) == .regular)
        #expect(FileKind(path: dir.url.path) == .directory && FileKind(path: dir.url.path).problem == "is a directory")
        #expect(FileKind(path: fifo.path) == .other && FileKind(path: "/dev/zero") == .other)
        #expect(FileKind(path: dir.file("none").path) == .missing && FileKind(path: dir.file("none").path).problem == nil)

        // A tokenizer directory whose tokenizer.json is a FIFO: refused at once, naming it.
        let tokenizerDir = dir.file("tok")
        try FileManager.default.createDirectory(at: tokenizerDir, withIntermediateDirectories: false)
        #expect(mkfifo(tokenizerDir.appendingPathComponent("tokenizer.json").path, 0o600) == 0)
        do {
            _ = try Tokenizer(directory: tokenizerDir)
            Issue.record("a FIFO was read as tokenizer.json")
        } catch {
            #expect("\(error)".contains("tokenizer.json: it is not a regular file"), "\(error)")
        }
    }
}
