import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A raw loopback TCP client for the HTTP-layer tests: it writes exactly the bytes it is given (pipelined
/// requests, trickled heads, broken chunked bodies, half-closes) and parses responses itself. Every read
/// has a deadline, so no test can hang on a server that does not answer.
final class RawHTTPClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var sawEOF = false

    init(port: Int) throws { fd = try connectLoopback(port: port) }

    private var closed = false

    deinit { closeNow() }

    /// Closes the socket (once: the descriptor number may be reused by the server in this process).
    func closeNow() {
        guard !closed else { return }
        closed = true
        close(fd)
    }

    /// Writes all of `bytes`; false if the connection refused them (closed or reset).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return false }
            off += n
        }
        return true
    }

    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    /// `shutdown(SHUT_WR)`: the request is complete, the response is still wanted (`nc -N`).
    func halfClose() { shutdown(fd, Int32(SHUT_WR)) }

    /// Reads what is available within `timeout`; returns false at EOF/reset or when the time is up.
    private func fill(until deadline: ContinuousClock.Instant) -> Bool {
        guard !sawEOF else { return false }
        let left = deadline - .now
        guard left > .zero else { return false }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        guard poll(&p, 1, ms) > 0 else { return false }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 {
            sawEOF = true
            return false
        }
        buffer += chunk[0..<n]
        return true
    }

    /// Waits until the server closes the connection (EOF or reset); the time it took, or nil at the deadline.
    /// Bytes that arrive meanwhile are kept for `readResponse`.
    func waitForClose(timeout: Duration) -> Duration? {
        let start = ContinuousClock.now
        let deadline = start + timeout
        while !sawEOF && ContinuousClock.now < deadline { _ = fill(until: deadline) }
        return sawEOF ? ContinuousClock.now - start : nil
    }

    struct Response {
        /// The status line's protocol ("HTTP/1.1").
        var version = ""
        let status: Int
        let headers: [String: String]
        let body: String
        /// The body's framing completed (content-length reached, last chunk read, or EOF for unframed bodies).
        let complete: Bool
    }

    /// Parses the next response (status line, headers, then a Content-Length, chunked or until-EOF body; none when
    /// `bodyless`: the answer to a HEAD request).
    func readResponse(timeout: Duration = .seconds(10), interim: Bool = false, bodyless: Bool = false) -> Response? {
        let deadline = ContinuousClock.now + timeout
        func find(_ pattern: [UInt8], from: Int) -> Int? {
            guard buffer.count >= pattern.count + from else { return nil }
            for i in from...(buffer.count - pattern.count) where buffer[i..<(i + pattern.count)].elementsEqual(pattern) { return i }
            return nil
        }
        let crlf: [UInt8] = [13, 10]
        var headEnd: Int?
        while true {
            headEnd = find(crlf + crlf, from: 0)
            if headEnd != nil || !fill(until: deadline) { break }
        }
        guard let headEnd else { return nil }
        let headText = String(decoding: buffer[0..<headEnd], as: UTF8.self)
        buffer.removeFirst(headEnd + 4)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        if status / 100 == 1 {
            if interim { return Response(status: status, headers: headers, body: "", complete: true) }
            return readResponse(timeout: deadline - .now)
        }
        var body: [UInt8] = []
        var complete = false
        if bodyless {
            complete = true
        } else if let lengthText = headers["content-length"], let length = Int(lengthText) {
            while buffer.count < length && fill(until: deadline) {}
            let n = min(length, buffer.count)
            body = Array(buffer[0..<n])
            buffer.removeFirst(n)
            complete = n == length
        } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
            chunks: while true {
                var lineEnd = find(crlf, from: 0)
                while lineEnd == nil && fill(until: deadline) { lineEnd = find(crlf, from: 0) }
                guard let le = lineEnd, let size = Int(String(decoding: buffer[0..<le], as: UTF8.self), radix: 16) else { break }
                while buffer.count < le + 2 + size + 2 && fill(until: deadline) {}
                guard buffer.count >= le + 2 + size + 2 else { break }
                body += buffer[(le + 2)..<(le + 2 + size)]
                buffer.removeFirst(le + 2 + size + 2)
                if size == 0 {
                    complete = true
                    break chunks
                }
            }
        } else {
            while fill(until: deadline) {}
            body = buffer
            buffer.removeAll()
            complete = sawEOF
        }
        var response = Response(status: status, headers: headers, body: String(decoding: body, as: UTF8.self), complete: complete)
        response.version = String(statusLine[0])
        return response
    }

    static func request(_ method: String, _ uri: String, body: String? = nil, headers: [String] = []) -> String {
        var text = "\(method) \(uri) HTTP/1.1\r\nHost: localhost\r\n"
        for h in headers { text += h + "\r\n" }
        if let body {
            text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
        } else {
            text += "\r\n"
        }
        return text
    }
}

/// Checks an OpenAI-shaped JSON error from a raw response.
func expectRawError(_ r: RawHTTPClient.Response?, status: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let r = try #require(r, "no response", sourceLocation: sourceLocation)
    #expect(r.status == status, "status \(r.status), body \(r.body)", sourceLocation: sourceLocation)
    #expect(r.headers["content-type"] == "application/json", sourceLocation: sourceLocation)
    let error = try #require((try jsonObject(r.body))["error"] as? [String: Any], sourceLocation: sourceLocation)
    #expect((error["message"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect(error["type"] is String, sourceLocation: sourceLocation)
    #expect(error.keys.contains("param") && error.keys.contains("code"), sourceLocation: sourceLocation)
}
