import Foundation

/// Runs `body` on a thread of its own and awaits its result.
///
/// Swift Testing runs synchronous tests on the cooperative pool, which has one thread per core (two in CI):
/// two tests that block — waiting on a child process, or a long f64 gradient check — stall every other suite,
/// and timing bounds under test (a drain deadline, a timeout) then fail for want of a thread, not of a bug.
/// Do the blocking part here and keep the expectations on the test's own task (`#expect` reports to the test
/// through a task-local, which a plain thread does not have).
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.stackSize = 8 << 20
        thread.start()
    }
}

/// Runs `executable ARGS` to its end on a thread of its own (stdout discarded) and returns its exit status and
/// standard error — for tests of a command's output files and one-line errors.
public func runCommand(_ executable: URL, _ args: [String]) async throws -> (status: Int32, stderr: String) {
    try await onOwnThread {
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }
}
