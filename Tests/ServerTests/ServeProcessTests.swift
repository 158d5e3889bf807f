import Foundation
import TestSupport
import Testing

@testable import HTTPFront
@testable import Server

#if canImport(Glibc)
import Glibc
#endif

/// `dlora serve` as a process, where the operating system's limits apply.
@Suite(.serialized) struct ServeProcessTests {
    /// The `dlora` executable `swift build --build-tests` puts beside the test bundle.
    static var binary: URL? { BuiltExecutables.dlora }

    /// A running `dlora serve` on the tiny model under a file-descriptor limit; stopped (SIGTERM, then SIGKILL)
    /// by `stop`.
    struct StartFailure: Error, CustomStringConvertible {
        let log: String
        var description: String { "dlora serve did not start:\n\(log)" }
    }

    final class ServeProcess: @unchecked Sendable {
        let process = Process()
        let port: Int
        private let stderr = PipeLog()

        init(binary: URL, fileLimit: Int, extra: [String]) throws {
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            let args = ["serve", "--model", ServerFixtures.modelPath, "--port", "0", "--kv-cache-mb", "16",
                        "--served-model-name", "tiny-llama", "--threads", "1"] + extra
            process.arguments = ["-c", "ulimit -n \(fileLimit) && exec \"$0\" \"$@\"", binary.path] + args
            process.standardError = stderr.pipe
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            stderr.startReading()
            var found: Int?
            for _ in 0..<600 where found == nil && process.isRunning {
                Thread.sleep(forTimeInterval: 0.1)
                let text = stderr.text
                if let r = text.range(of: #"on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                    found = Int(text[r].split(separator: ":").last!)
                }
            }
            guard let found else {
                let text = stderr.text
                process.terminate()
                throw StartFailure(log: text)
            }
            port = found
        }

        var log: String { stderr.text }

        /// CPU seconds (user + system) the process has used, from /proc/PID/stat.
        var cpuSeconds: Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return -1 }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return -1 }
            return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }

        func stop() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGTERM)
            for _ in 0..<100 where process.isRunning { Thread.sleep(forTimeInterval: 0.1) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    /// Under `ulimit -n 64`, 80 silent connections exhaust the server's descriptors: accepting fails with
    /// EMFILE. The accept loop must back off (not spin a core: 0.0 s of CPU in 2 s with the back-off, 0.95 s
    /// without it on a loaded 2-core machine) and survive: once the clients go, /health and a completion are
    /// answered again.
    @Test func fileDescriptorExhaustion() async throws {
        let binary = try #require(Self.binary, "the dlora executable is not built (swift build --build-tests)")
        let server = try await blocking { Result { try ServeProcess(binary: binary, fileLimit: 64, extra: []) } }.get()
        let port = server.port
        let (cpu, health, completion) = await blocking { () -> (Double, RawHTTPClient.Response?, RawHTTPClient.Response?) in
            var silent: [RawHTTPClient] = []
            for _ in 0..<80 {
                guard let c = try? RawHTTPClient(port: port) else { break }
                silent.append(c)
            }
            Thread.sleep(forTimeInterval: 0.5)
            let before = server.cpuSeconds
            Thread.sleep(forTimeInterval: 2)
            let cpu = server.cpuSeconds - before
            silent.removeAll()  // closes them
            let c = try? RawHTTPClient(port: port)
            c?.send(RawHTTPClient.request("GET", "/health"))
            let health = c?.readResponse(timeout: .seconds(6))
            c?.send(RawHTTPClient.request("POST", "/v1/completions", body: HTTPHardeningTests.ask))
            return (cpu, health, c?.readResponse(timeout: .seconds(10)))
        }
        #expect(cpu >= 0 && cpu < 0.3, "server CPU \(cpu) s in 2 s under EMFILE")
        #expect(health?.status == 200, "no /health answer after the connections closed; log:\n\(server.log.suffix(2000))")
        #expect(completion?.status == 200)
        #expect(((try? jsonObject(completion?.body ?? "")) ?? [:]).keys.contains("choices"))
        #expect(server.log.contains("backing off"), "\(server.log.suffix(2000))")
        await blocking { server.stop() }  // off the cooperative pool: stopping waits for the process
    }
}
