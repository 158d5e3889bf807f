import Foundation
import Testing

@testable import HTTPFront
@testable import Server

#if canImport(Glibc)
import Glibc
#endif

/// Adapter lifetimes through the admin API of a real `dlora serve` process: 500 adapters registered,
/// used and unloaded while other requests run. Afterwards the engine holds no adapter weights, no
/// adapter takes KV blocks, the registry's host cache is empty, and the process's resident memory is
/// within 10 % of what it was after the first few cycles (before the engine learned to drop adapters,
/// every unloaded adapter stayed in memory and in the KV budget).
@Suite(.serialized) struct AdapterLifetimeTests {
    static var binary: URL {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        while dir.path != "/" && !FileManager.default.fileExists(atPath: dir.appendingPathComponent("dlora").path) {
            dir.deleteLastPathComponent()
        }
        return dir.appendingPathComponent("dlora")
    }

    /// One request on a fresh connection (the server closes it after the response); nil on a socket error.
    static func http(_ port: Int, _ method: String, _ path: String, _ body: String = "", key: String? = nil) -> String? {
        guard let c = try? RawConnection(port: port) else { return nil }
        defer { c.closeNow() }
        let auth = key.map { "Authorization: Bearer \($0)\r\n" } ?? ""
        c.send("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\(auth)Connection: close\r\n"
               + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
        return c.read(until: "\u{0}")
    }

    static func rssKB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    static func metric(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    /// The test blocks on sockets for ~15 s: it runs on a thread of its own, so it never holds one of the
    /// (two, on this machine) threads that every other suite's async work shares.
    /// What the run observed; checked by the test (expectations are recorded on the test's own task).
    struct Observed: Sendable {
        var port = 0
        var startup = ""
        var loadFailures: [String] = []
        var unloadFailures: [String] = []
        var completed = 0
        var background = 0
        var metrics = ""
        var rssAfterWarmup = 0
        var rssEnd = 0
    }

    @Test func fiveHundredAdaptersLoadedUsedAndUnloadedLeaveNothingBehind() async throws {
        let o = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Observed, any Error>) in
            let t = Thread { c.resume(with: Result { try Self.lifetimes() }) }
            t.stackSize = 8 << 20
            t.start()
        }
        try #require(o.port > 0, "no startup line: \(o.startup)")
        #expect(o.loadFailures.isEmpty, "\(o.loadFailures.prefix(3))")
        #expect(o.unloadFailures.isEmpty, "\(o.unloadFailures.prefix(3))")
        #expect(o.completed == 520, "every request on an adapter unloaded while it ran completes (\(o.completed) of 520)")
        #expect(o.background > 0)
        #expect(Self.metric(o.metrics, "dlora_adapters_held") == 0, "engine still holds adapter weights")
        #expect(Self.metric(o.metrics, "dlora_adapters_resident") == 0)
        #expect(Self.metric(o.metrics, "dlora_adapter_pool_blocks") == 0, "unloaded adapters still take KV blocks")
        #expect(Self.metric(o.metrics, "dlora_adapter_host_cache_bytes") == 0)
        #expect(o.rssAfterWarmup > 0 && Double(o.rssEnd) <= Double(o.rssAfterWarmup) * 1.10,
                "RSS \(o.rssAfterWarmup) KB after 20 cycles, \(o.rssEnd) KB after 520")
        print("adapter lifetimes: RSS \(o.rssAfterWarmup) KB after 20 cycles, \(o.rssEnd) KB after 520; \(o.background) base requests beside")
    }

    /// The scenario, on a plain thread (blocking sockets); returns what it saw.
    static func lifetimes() throws -> Observed {
        var o = Observed()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("dlora-lifetime-\(getpid())")
        try? FileManager.default.removeItem(at: root)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.copyItem(atPath: ServerFixtures.adapterRoot + "/b-all-r8-rslora", toPath: root.appendingPathComponent("all").path)

        let p = Process()
        p.executableURL = Self.binary
        p.arguments = ["serve", "--model", ServerFixtures.modelPath, "--adapters", root.path, "--admin-key", "admin",
                       "--port", "0", "--kv-cache-mb", "16", "--threads", "1"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier
        defer {
            kill(pid, SIGKILL)
            p.waitUntilExit()
        }
        // The port, from the startup line (bounded: 60 s).
        var port = 0
        var seen = ""
        let deadline = Date().addingTimeInterval(60)
        while port == 0 && Date() < deadline {
            let chunk = err.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += String(decoding: chunk, as: UTF8.self)
            if let r = seen.range(of: "http://127.0.0.1:") {
                port = Int(seen[r.upperBound...].prefix { $0.isNumber }) ?? 0
            }
        }
        o.port = port
        o.startup = seen
        guard port > 0 else { return o }
        let serverPort = port

        // Base-model traffic throughout (bounded in count and time).
        let stop = Locked(false)
        let background = Locked(0)
        let traffic = Thread {
            let end = Date().addingTimeInterval(300)
            for _ in 0..<100_000 where !stop.withLock({ $0 }) && Date() < end {
                if let r = Self.http(serverPort, "POST", "/v1/completions", "{\"model\":\"tiny-llama.F32\",\"prompt\":\"hello\",\"max_tokens\":8}"),
                   r.hasPrefix("HTTP/1.1 200") {
                    background.withLock { $0 += 1 }
                }
            }
        }
        traffic.start()
        defer { stop.withLock { $0 = true } }

        for i in 0..<520 {
            let name = "adapter-\(i)"
            let load = Self.http(port, "POST", "/v1/load_lora_adapter", "{\"lora_name\":\"\(name)\",\"lora_path\":\"all\"}", key: "admin") ?? ""
            if !load.hasPrefix("HTTP/1.1 200") { o.loadFailures.append("load \(i): \(load.suffix(200))") }
            // A streamed request on it; unload as soon as it is running, then read it to the end.
            let c = try RawConnection(port: port)
            c.send(RawConnection.post("/v1/completions", "{\"model\":\"\(name)\",\"prompt\":\"one two\",\"max_tokens\":24,\"ignore_eos\":true,\"stream\":true,\"seed\":\(i)}"))
            let head = c.read(until: "data: ")
            let unload = Self.http(port, "POST", "/v1/unload_lora_adapter", "{\"lora_name\":\"\(name)\"}", key: "admin") ?? ""
            if !unload.hasPrefix("HTTP/1.1 200") { o.unloadFailures.append("unload \(i): \(unload.suffix(200))") }
            let all = head.contains("[DONE]") ? head : head + c.read(until: "[DONE]")
            c.closeNow()
            if all.hasPrefix("HTTP/1.1 200") && all.contains("\"finish_reason\":\"length\"") && all.contains("[DONE]") { o.completed += 1 }
            if i == 19 { o.rssAfterWarmup = Self.rssKB(pid) }
        }
        stop.withLock { $0 = true }
        o.background = background.withLock { $0 }

        // The engine lets go of everything once idle (bounded wait: 10 s).
        var metrics = ""
        for _ in 0..<200 {
            metrics = Self.http(port, "GET", "/metrics") ?? ""
            if Self.metric(metrics, "dlora_adapters_held") == 0 && Self.metric(metrics, "dlora_requests_running") == 0 { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        o.metrics = metrics
        o.rssEnd = Self.rssKB(pid)
        return o
    }
}
