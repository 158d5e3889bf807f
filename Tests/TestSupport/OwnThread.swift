import Foundation
import Synchronization

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

/// What a finished command printed, and its exit status.
public struct CommandRun: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
}

/// Runs `executable ARGS` (with `environment` added to this process's) to its end on a thread of its own, not
/// the test pool's, and returns its exit status and output. Both pipes are drained at once, so a command that
/// writes a lot to either cannot block on the other; with `timeout`, a command still running after that many
/// seconds is terminated (the test then sees its signal status).
public func runCommand(_ executable: URL, _ args: [String], environment: [String: String] = [:],
                       timeout: Double? = nil) async throws -> CommandRun {
    try await onOwnThread {
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // The timeout and the stderr reader are threads of their own, not dispatch's global queue: that queue's
        // threads are the ones Swift concurrency runs tests on (two in CI), and with them busy a timer there never
        // fired, so a command that hung held its test forever (found by a mutant of `dlora simulate`'s workload
        // bound: the child ran on for minutes past its 60 s).
        let finished = DispatchSemaphore(value: 0)
        if let timeout {
            let pid = p.processIdentifier
            Thread {
                guard finished.wait(timeout: .now() + timeout) == .timedOut else { return }
                kill(pid, SIGTERM)
                if finished.wait(timeout: .now() + 10) == .timedOut { kill(pid, SIGKILL) }
            }.start()
        }
        let errText = Mutex(Data())
        let drained = DispatchSemaphore(value: 0)
        Thread {
            let d = err.fileHandleForReading.readDataToEndOfFile()
            errText.withLock { $0 = d }
            drained.signal()
        }.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        drained.wait()
        p.waitUntilExit()
        finished.signal()
        return CommandRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                          stderr: String(decoding: errText.withLock { $0 }, as: UTF8.self))
    }
}

/// Everything a child process writes to one pipe, collected by blocking reads on a thread of its own.
///
/// Not `FileHandle.readabilityHandler`: on Linux that installs a libdispatch read source, and tearing the source
/// down at end of stream races the descriptor's close (swift-corelibs-libdispatch #949); the suite's process
/// crashed with SIGSEGV in libdispatch that way in CI. A blocking read never registers the descriptor with
/// dispatch. Set `pipe` as the process's output, run the process, then call `startReading()`; the thread ends
/// at end of stream, when the child (and every child it passed the descriptor to) has exited.
public final class PipeLog: Sendable {
    public let pipe = Pipe()
    private let collected = Mutex("")

    public init() {}

    public var text: String { collected.withLock { $0 } }

    public func startReading() {
        let handle = pipe.fileHandleForReading
        let thread = Thread { [self] in
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                self.collected.withLock { $0 += String(decoding: data, as: UTF8.self) }
            }
        }
        thread.start()
    }
}
