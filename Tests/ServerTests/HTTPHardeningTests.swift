import Engine
import Foundation
import Tokenizers
import Hummingbird
import HummingbirdTesting
import Models
import Testing

@testable import HTTPFront
@testable import Server

#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking socket work on a thread of its own, so that a test waiting on a socket never holds one of
/// the few cooperative threads the server's handlers need (nor one of libdispatch's, which on Linux are as
/// many as the cores and would queue the test's probes behind each other).
func blocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in Thread { c.resume(returning: body()) }.start() }
}

extension RawHTTPClient: @unchecked Sendable {}

/// The HTTP layer against hostile and unusual clients (issue 16, items 4 and 5), over real loopback sockets.
/// After each test the server answers /health and a normal completion, and the engine is idle.
@Suite(.serialized) struct HTTPHardeningTests {
    static let ask = "{\"model\":\"tiny-llama\",\"prompt\":[5,6,7],\"max_tokens\":3,\"temperature\":0,\"ignore_eos\":true}"

    static func expectHealthy(_ server: OpenAIServer, port: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let c = try RawHTTPClient(port: port)
        let (h, r) = await blocking {
            c.send(RawHTTPClient.request("GET", "/health"))
            let h = c.readResponse()
            c.send(RawHTTPClient.request("POST", "/v1/completions", body: ask))
            return (h, c.readResponse())
        }
        #expect(h?.status == 200 && h?.body == "{\"status\":\"ok\"}", sourceLocation: sourceLocation)
        let response = try #require(r, sourceLocation: sourceLocation)
        #expect(response.status == 200, "\(response.body)", sourceLocation: sourceLocation)
        let usage = (try jsonObject(response.body))["usage"] as? [String: Any]
        #expect(usage?["completion_tokens"] as? Int == 3, sourceLocation: sourceLocation)
        #expect(try await ServerFixtures.waitIdle(server), sourceLocation: sourceLocation)
    }

    /// A head trickled at 5 bytes/s, a silent connection, and an idle keep-alive connection are closed within
    /// their timeouts (1 s here), however long the trickle could go on.
    @Test func headerAndIdleTimeouts() async throws {
        let server = try ServerFixtures.server {
            $0.http.headerTimeout = .seconds(1)
            $0.http.idleTimeout = .milliseconds(800)
        }
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let trickle = try RawHTTPClient(port: port)
            let silent = try RawHTTPClient(port: port)
            let started = ContinuousClock.now
            let head = Array(RawHTTPClient.request("POST", "/v1/completions", body: Self.ask).utf8)
            // 5 bytes/s for up to 4 s (the whole head would take 30 s): the server must cut it off first.
            let trickledFor = await blocking { () -> Duration? in
                for byte in head.prefix(20) {
                    guard trickle.send([byte]) else { break }
                    if let closed = trickle.waitForClose(timeout: .milliseconds(200)) { _ = closed; break }
                }
                return trickle.sawEOF ? ContinuousClock.now - started : nil
            }
            let closedAfter = try #require(trickledFor, "a trickling head was not closed within 4 s")
            // Bounds with slack for a loaded machine: the trickle alone would have lasted 30 s.
            #expect(closedAfter < .milliseconds(2500), "trickle closed after \(closedAfter)")
            #expect(closedAfter > .milliseconds(700))
            let silentClosed = await blocking { silent.waitForClose(timeout: .seconds(3)) }
            #expect(silentClosed != nil, "a silent connection was not closed")

            // Keep-alive: a connection that answered a request is closed after the idle timeout.
            let kept = try RawHTTPClient(port: port)
            let (r, idleClosed) = await blocking {
                kept.send(RawHTTPClient.request("GET", "/health"))
                let r = kept.readResponse()
                return (r, kept.waitForClose(timeout: .seconds(3)))
            }
            #expect(r?.status == 200)
            let idle = try #require(idleClosed, "an idle keep-alive connection was not closed")
            #expect(idle > .milliseconds(600) && idle < .milliseconds(2500), "idle close after \(idle)")
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// A declared Content-Length above the body limit is a 413 at once (no body sent, no timeout waited for);
    /// a chunked body that stops arriving is a 408 after the body timeout; both connections then close.
    @Test func declaredHugeBodyAndTruncatedChunkedBody() async throws {
        let server = try ServerFixtures.server {
            $0.maxBodyBytes = 64 << 10
            $0.http.bodyTimeout = .seconds(1)
        }
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let huge = try RawHTTPClient(port: port)
            let started = ContinuousClock.now
            let (r, closed) = await blocking {
                huge.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
                return (huge.readResponse(timeout: .seconds(5)), huge.waitForClose(timeout: .seconds(5)))
            }
            // Before the 1 s body timeout could have fired (measured: 1 ms).
            #expect(ContinuousClock.now - started < .milliseconds(900), "413 after \(ContinuousClock.now - started)")
            try expectRawError(r, status: 413)
            #expect(r?.headers["connection"] == "close")
            #expect(closed != nil)

            // A chunked body that grows past the limit: 413 once it does, then the connection closes
            // (without reading the rest of the body).
            let growing = try RawHTTPClient(port: port)
            let chunk = String(repeating: "x", count: 16 << 10)
            let (g, gClosed) = await blocking {
                growing.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in 0..<5 { growing.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n") }
                return (growing.readResponse(timeout: .seconds(5)), growing.waitForClose(timeout: .seconds(4)))
            }
            try expectRawError(g, status: 413)
            #expect(gClosed != nil)

            let truncated = try RawHTTPClient(port: port)
            let t0 = ContinuousClock.now
            let (t, tClosed) = await blocking {
                truncated.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mod")
                return (truncated.readResponse(timeout: .seconds(5)), truncated.waitForClose(timeout: .seconds(5)))
            }
            let took = ContinuousClock.now - t0
            try expectRawError(t, status: 408)
            #expect(tClosed != nil)
            #expect(took > .milliseconds(800) && took < .seconds(3), "408 after \(took)")
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// Broken chunked framing and unsupported transfer codings are client errors (400/501) in OpenAI's JSON,
    /// never a 500, and the connection closes after the answer.
    @Test func malformedFramingIsAClientError() async throws {
        let server = try ServerFixtures.server()
        let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        let body = Self.ask
        let cases: [(String, String, Int)] = [
            ("non-hex size", head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n\(body)\r\n0\r\n\r\n", 400),
            ("overflowing size", head + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n\(body)\r\n0\r\n\r\n", 400),
            ("negative size", head + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
            ("missing CRLF after data", head + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcXY\r\n0\r\n\r\n", 400),
            ("identity beside a length", head + "Transfer-Encoding: identity\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)", 400),
            ("identity alone", head + "Transfer-Encoding: identity\r\n\r\n\(body)", 501),
            ("gzip, chunked", head + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
            ("chunked twice", head + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
            ("chunked and length", head + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
            ("bad request line", "GARBAGE\r\n\r\n", 400),
            ("bad header", "GET /health HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
        ]
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            for (name, bytes, status) in cases {
                let c = try RawHTTPClient(port: port)
                let (r, closed) = await blocking { () -> (RawHTTPClient.Response?, Duration?) in
                    c.send(bytes)
                    return (c.readResponse(timeout: .seconds(5)), c.waitForClose(timeout: .seconds(4)))
                }
                try expectRawError(r, status: status)
                #expect(r?.status == status, "\(name)")
                #expect(closed != nil, "\(name): connection left open")
            }
            // A valid chunked body still works.
            let ok = try RawHTTPClient(port: port)
            let chunked = head + "Transfer-Encoding: chunked\r\n\r\n" + String(body.utf8.count, radix: 16) + "\r\n\(body)\r\n0\r\n\r\n"
            let r = await blocking { ok.send(chunked); return ok.readResponse() }
            #expect(r?.status == 200, "\(r?.body ?? "")")
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// `POST, POST, GET` written at once on one connection: three answers, in order, and the connection
    /// stays usable; streamed responses pipeline too. `Connection: close` closes after its response.
    @Test func pipeliningAndConnectionClose() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let c = try RawHTTPClient(port: port)
            let first = "{\"model\":\"tiny-llama\",\"prompt\":[5,6,7],\"max_tokens\":4,\"temperature\":0,\"ignore_eos\":true}"
            let second = "{\"model\":\"a-qv-r4\",\"prompt\":[8,9],\"max_tokens\":2,\"temperature\":0,\"ignore_eos\":true}"
            let streamed = "{\"model\":\"tiny-llama\",\"prompt\":[5],\"max_tokens\":3,\"ignore_eos\":true,\"stream\":true}"
            let responses = await blocking { () -> [RawHTTPClient.Response?] in
                c.send(RawHTTPClient.request("POST", "/v1/completions", body: first)
                    + RawHTTPClient.request("POST", "/v1/completions", body: second)
                    + RawHTTPClient.request("GET", "/health"))
                var out = (0..<3).map { _ in c.readResponse() }
                c.send(RawHTTPClient.request("POST", "/v1/completions", body: streamed) + RawHTTPClient.request("GET", "/health"))
                out += (0..<2).map { _ in c.readResponse() }
                return out
            }
            let r = try responses.map { try #require($0) }
            #expect(r.map(\.status) == [200, 200, 200, 200, 200])
            let o1 = try jsonObject(r[0].body), o2 = try jsonObject(r[1].body)
            #expect(o1["model"] as? String == "tiny-llama" && (o1["usage"] as? [String: Any])?["completion_tokens"] as? Int == 4)
            #expect(o2["model"] as? String == "a-qv-r4" && (o2["usage"] as? [String: Any])?["completion_tokens"] as? Int == 2)
            #expect(r[2].body == "{\"status\":\"ok\"}")
            #expect(r[0].headers["connection"] != "close" && r[1].headers["connection"] != "close")
            #expect(sseEvents(r[3].body).last == "[DONE]" && r[3].complete)
            #expect(r[4].body == "{\"status\":\"ok\"}")
            #expect(!c.sawEOF)

            // Connection: close — the answer, then EOF; a request pipelined after it is not read.
            let closing = try RawHTTPClient(port: port)
            let (a, b, closed) = await blocking {
                closing.send(RawHTTPClient.request("POST", "/v1/completions", body: first, headers: ["Connection: close"])
                    + RawHTTPClient.request("GET", "/health"))
                let a = closing.readResponse()
                return (a, closing.readResponse(timeout: .seconds(2)), closing.waitForClose(timeout: .seconds(3)))
            }
            #expect(a?.status == 200 && a?.headers["connection"] == "close")
            #expect(b == nil)
            #expect(closed != nil)
            // Expect: 100-continue is answered with 100 before the body is sent (curl waits a second otherwise).
            let expecting = try RawHTTPClient(port: port)
            let (interim, final) = await blocking { () -> (RawHTTPClient.Response?, RawHTTPClient.Response?) in
                expecting.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                    + "Content-Length: \(Self.ask.utf8.count)\r\n\r\n")
                let interim = expecting.readResponse(timeout: .milliseconds(800), interim: true)
                expecting.send(Self.ask)
                return (interim, expecting.readResponse())
            }
            #expect(interim?.status == 100)
            #expect(final?.status == 200, "\(final?.body ?? "no final response")")
            // HTTP/1.0 without keep-alive closes too.
            let old = try RawHTTPClient(port: port)
            let (h, oldClosed) = await blocking {
                old.send("GET /health HTTP/1.0\r\n\r\n")
                return (old.readResponse(), old.waitForClose(timeout: .seconds(3)))
            }
            #expect(h?.status == 200 && oldClosed != nil)
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// A client that half-closes after its request (`shutdown(SHUT_WR)`, `nc -N`) still gets its whole
    /// response, streamed or not; one that closes completely is still cancelled (ServerTests.disconnectCancels).
    @Test func halfCloseIsNotADisconnect() async throws {
        let server = try ServerFixtures.server(slow: true)
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            for stream in [false, true] {
                let c = try RawHTTPClient(port: port)
                let body = "{\"model\":\"a-qv-r4\",\"prompt\":[5,6,7],\"max_tokens\":10,\"temperature\":0,\"ignore_eos\":true,\"stream\":\(stream)}"
                let r = await blocking { () -> RawHTTPClient.Response? in
                    c.send(RawHTTPClient.request("POST", "/v1/completions", body: body))
                    c.halfClose()
                    return c.readResponse(timeout: .seconds(20))
                }
                let response = try #require(r)
                #expect(response.status == 200 && response.complete, "stream \(stream): \(response.body)")
                if stream {
                    let events = sseEvents(response.body)
                    #expect(events.last == "[DONE]")
                    #expect(events.count >= 3)
                } else {
                    let o = try jsonObject(response.body)
                    #expect((o["usage"] as? [String: Any])?["completion_tokens"] as? Int == 10, "\(response.body)")
                }
                #expect(await blocking { c.waitForClose(timeout: .seconds(3)) } != nil)
            }
            // A half-close after a stream started: an SSE comment probes the connection, the stream goes on.
            let late = try RawHTTPClient(port: port)
            late.send(RawHTTPClient.request("POST", "/v1/completions",
                                            body: "{\"model\":\"tiny-llama\",\"prompt\":[5],\"max_tokens\":20,\"ignore_eos\":true,\"stream\":true}"))
            for _ in 0..<200 where server.engine.snapshot.running == 0 { try await Task.sleep(for: .milliseconds(10)) }
            try await Task.sleep(for: .milliseconds(60))
            late.halfClose()
            let lateResponse = try #require(await blocking { late.readResponse(timeout: .seconds(20)) })
            #expect(lateResponse.status == 200 && lateResponse.complete && sseEvents(lateResponse.body).last == "[DONE]")
            #expect(lateResponse.body.contains("\n\n:\n\n"), "no probe comment in \(lateResponse.body.prefix(300))")
            // Pipelined requests then a half-close: every one answered, then the server closes.
            let p = try RawHTTPClient(port: port)
            let answers = await blocking { () -> [RawHTTPClient.Response?] in
                p.send(RawHTTPClient.request("POST", "/v1/completions", body: Self.ask) + RawHTTPClient.request("GET", "/health"))
                p.halfClose()
                return [p.readResponse(timeout: .seconds(20)), p.readResponse()]
            }
            #expect(answers.map { $0?.status } == [200, 200])
            // A half-closed client that then goes away is cancelled: the probe's write meets a reset.
            let gone = try RawHTTPClient(port: port)
            gone.send(RawHTTPClient.request("POST", "/v1/completions",
                                            body: "{\"model\":\"a-qv-r4\",\"prompt\":\"hi\",\"max_tokens\":200,\"ignore_eos\":true}"))
            for _ in 0..<200 where server.engine.snapshot.running == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.engine.snapshot.running == 1)
            let left = ContinuousClock.now
            gone.closeNow()
            #expect(try await ServerFixtures.waitIdle(server))
            #expect(ContinuousClock.now - left < .seconds(2))
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// The scheme of `Authorization: Bearer` is case-insensitive (RFC 9110); the key itself is not.
    @Test func bearerSchemeIsCaseInsensitive() async throws {
        let server = try ServerFixtures.server { $0.apiKey = "sk-test" }
        try await ServerFixtures.withServer(server) { client in
            for (header, status) in [("bearer sk-test", 200), ("BEARER  sk-test", 200), ("Bearer sk-test", 200), ("bEaReR sk-test", 200),
                                     ("Bearer sk-tesT", 401), ("Bearer sk-test2", 401), ("Bearersk-test", 401), ("Basic sk-test", 401),
                                     ("Bearer ", 401), ("sk-test", 401)] {
                let r = try await client.execute(uri: "/v1/models", method: .get, headers: [.authorization: header]) { $0.status.code }
                #expect(r == status, "\(header)")
            }
            // A 401 sent before the body arrived: the body is then drained and the connection stays usable.
            let port = try #require(client.port)
            let c = try RawHTTPClient(port: port)
            let (early, next) = await blocking { () -> (RawHTTPClient.Response?, RawHTTPClient.Response?) in
                c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(Self.ask.utf8.count)\r\n\r\n")
                let early = c.readResponse(timeout: .seconds(5))
                c.send(Self.ask)
                c.send(RawHTTPClient.request("POST", "/v1/completions", body: Self.ask, headers: ["Authorization: bearer sk-test"]))
                return (early, c.readResponse(timeout: .seconds(5)))
            }
            try expectRawError(early, status: 401)
            #expect(next?.status == 200, "\(next?.body ?? "no second response")")
            #expect(BearerKey.matches(header: "bearer k", key: "k"))
            #expect(!BearerKey.matches(header: "bearer k", key: "kk"))
            #expect(!BearerKey.matches(header: "bearer kk", key: "k"))
        }
    }

    /// HEAD wherever GET is served: GET's status and headers (its Content-Length too), no body — the next response on
    /// the connection starts right after the head; the API key still applies; on a POST-only path it is a 405.
    /// An HTTP/1.0 request is answered in HTTP/1.0, never chunked (RFC 9112 §6.1; a 1.0 client reads chunk sizes as
    /// body): a stream's events go unframed and the close ends them; a whole answer keeps its Content-Length.
    @Test func http10IsAnsweredWithoutChunks() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let streamed = String(Self.ask.dropLast()) + ",\"stream\":true}"
            let (stream, whole) = await blocking { () -> (RawHTTPClient.Response?, RawHTTPClient.Response?) in
                func ask(_ body: String) -> RawHTTPClient.Response? {
                    guard let c = try? RawHTTPClient(port: port) else { return nil }
                    c.send("POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
                    return c.readResponse(timeout: .seconds(20))
                }
                return (ask(streamed), ask(Self.ask))
            }
            let s = try #require(stream), w = try #require(whole)
            #expect(s.status == 200 && s.version == "HTTP/1.0" && s.headers["transfer-encoding"] == nil, "\(s.version) \(s.headers)")
            #expect(s.complete && s.body.hasPrefix("data: {") && s.body.hasSuffix("data: [DONE]\n\n"), "\(s.body.prefix(200))")
            #expect(w.status == 200 && w.version == "HTTP/1.0" && w.headers["content-length"] == String(w.body.utf8.count), "\(w.version) \(w.headers)")
            #expect(((try? jsonObject(w.body)) ?? [:]).keys.contains("choices"))
        }
    }

    @Test func headAnswersLikeGetWithoutBody() async throws {
        let server = try ServerFixtures.server { $0.apiKey = "sk-test" }
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let c = try RawHTTPClient(port: port)
            let auth = ["Authorization: Bearer sk-test"]
            let answers = await blocking { () -> [(RawHTTPClient.Response?, RawHTTPClient.Response?)] in
                ["/health", "/v1/models", "/v1/models/tiny-llama"].map { path in
                    c.send(RawHTTPClient.request("HEAD", path, headers: auth))
                    let head = c.readResponse(timeout: .seconds(5), bodyless: true)
                    c.send(RawHTTPClient.request("GET", path, headers: auth))
                    return (head, c.readResponse(timeout: .seconds(5)))
                }
            }
            for (head, get) in answers {
                let h = try #require(head), g = try #require(get)
                #expect(h.status == 200 && g.status == 200, "\(h.status) \(g.status) \(g.body)")
                #expect(h.headers["content-length"] == String(g.body.utf8.count) && h.headers["content-type"] == g.headers["content-type"],
                        "HEAD \(h.headers) against GET \(g.headers)")
            }
            let (unauthorized, post) = await blocking { () -> (RawHTTPClient.Response?, RawHTTPClient.Response?) in
                c.send(RawHTTPClient.request("HEAD", "/v1/models"))
                let u = c.readResponse(timeout: .seconds(5), bodyless: true)
                c.send(RawHTTPClient.request("HEAD", "/v1/completions", headers: auth))
                return (u, c.readResponse(timeout: .seconds(5), bodyless: true))
            }
            #expect(unauthorized?.status == 401 && post?.status == 405 && post?.headers["allow"] == "POST",
                    "\(unauthorized?.status ?? 0) \(post?.status ?? 0) \(post?.headers ?? [:])")
            let after = await blocking { () -> RawHTTPClient.Response? in
                c.send(RawHTTPClient.request("GET", "/health"))
                return c.readResponse(timeout: .seconds(5))
            }
            #expect(after?.status == 200 && after?.body == "{\"status\":\"ok\"}", "\(after?.body ?? "no response")")
        }
    }

    /// A known path asked with a method it is not served with: 405, OpenAI's JSON error and `Allow` (RFC 9110); OPTIONS
    /// on it a 204 with `Allow`; an unknown path stays a 404 whatever the method; a served method passes through.
    @Test func otherMethodsOnKnownPathsAre405WithAllow() async throws {
        let server = try ServerFixtures.server()
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let c = try RawHTTPClient(port: port)
            let cases: [(String, String, Int, String?)] = [
                ("GET", "/v1/chat/completions", 405, "POST"), ("PUT", "/v1/completions", 405, "POST"),
                ("DELETE", "/v1/models", 405, "GET, HEAD"), ("POST", "/v1/models/tiny-llama", 405, "GET, HEAD"),
                ("POST", "/v1/responses/resp_1", 405, "DELETE, GET, HEAD"), ("GET", "/health/", 200, nil),
                ("GET", "/v1/nothing", 404, nil), ("DELETE", "/nothing/at/all", 404, nil)]
            let answers = await blocking { () -> [RawHTTPClient.Response?] in
                cases.map { method, path, _, _ in
                    c.send(RawHTTPClient.request(method, path, body: method == "GET" || method == "DELETE" ? nil : "{}"))
                    return c.readResponse(timeout: .seconds(5))
                }
            }
            for ((method, path, status, allow), answer) in zip(cases, answers) {
                let r = try #require(answer, "\(method) \(path): no answer")
                #expect(r.status == status && r.headers["allow"] == allow, "\(method) \(path): \(r.status) \(r.headers)")
                if status == 405 {
                    let error = try #require(try JSONSerialization.jsonObject(with: Data(r.body.utf8)) as? [String: Any])["error"] as? [String: Any]
                    #expect(error?["code"] as? String == "method_not_allowed" && (error?["message"] as? String)?.contains(method) == true, "\(r.body)")
                }
            }
            let options = await blocking { () -> (RawHTTPClient.Response?, RawHTTPClient.Response?) in
                c.send(RawHTTPClient.request("OPTIONS", "/v1/chat/completions"))
                let known = c.readResponse(timeout: .seconds(5), bodyless: true)
                c.send(RawHTTPClient.request("OPTIONS", "/v1/nothing"))
                return (known, c.readResponse(timeout: .seconds(5)))
            }
            #expect(options.0?.status == 204 && options.0?.headers["allow"] == "POST", "\(options.0?.status ?? 0) \(options.0?.headers ?? [:])")
            #expect(options.1?.status == 404, "\(options.1?.status ?? 0)")
        }
    }

    /// At the connection cap a new connection replaces the oldest idle one (silent clients cannot lock out a
    /// normal one); when every connection is busy it is closed at once.
    @Test func connectionCap() async throws {
        let server = try ServerFixtures.server(slow: true) { $0.http.maxConnections = 3 }
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            // Opened 50 ms apart: "oldest" is by the order connections were set up, which for connections opened
            // within microseconds of each other on different event loops is not defined.
            var silent: [RawHTTPClient] = []
            for _ in 0..<3 {
                silent.append(try RawHTTPClient(port: port))
                try await Task.sleep(for: .milliseconds(50))
            }
            let normal = try RawHTTPClient(port: port)
            let h = await blocking { normal.send(RawHTTPClient.request("GET", "/health")); return normal.readResponse(timeout: .seconds(3)) }
            #expect(h?.status == 200)
            let opened = silent
            let closedSilent = await blocking { opened.map { $0.waitForClose(timeout: .milliseconds(700)) != nil } }
            #expect(closedSilent == [true, false, false], "the oldest idle connection was not the one closed")

            // Three busy connections (slow streams): a fourth is refused promptly.
            let busy = try (0..<3).map { _ in try RawHTTPClient(port: port) }
            let body = "{\"model\":\"tiny-llama\",\"prompt\":[5],\"max_tokens\":30,\"ignore_eos\":true,\"stream\":true}"
            for b in busy { b.send(RawHTTPClient.request("POST", "/v1/completions", body: body)) }
            for _ in 0..<300 where server.engine.snapshot.running < 3 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.engine.snapshot.running == 3)
            let extra = try RawHTTPClient(port: port)
            let refused = await blocking { () -> Duration? in
                extra.send(RawHTTPClient.request("GET", "/health"))
                return extra.waitForClose(timeout: .seconds(2))
            }
            #expect(refused != nil, "a connection beyond the cap was not closed")
            let streams = await blocking { busy.map { $0.readResponse(timeout: .seconds(20)) } }
            #expect(streams.allSatisfy { $0?.status == 200 && sseEvents($0?.body ?? "").last == "[DONE]" })
            for b in busy { b.closeNow() }
            try await Task.sleep(for: .milliseconds(100))
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// A prompt whose byte length proves it has more tokens than allowed is refused without tokenizing it;
    /// the bound never exceeds the real count.
    @Test func promptRefusedByByteLength() async throws {
        let server = try ServerFixtures.server()
        let prompts = server.prompts
        let perToken = try #require(prompts.maxBytesPerToken)
        // Sound: over random texts (words, specials, non-ASCII), the bound is at most the true count.
        var rng = SystemRandomNumberGenerator()
        let pieces = ["forest", " tree", " town", "a", "  ", "\n", "<|eos|>", "é", "日本", "🙂", "x y z", "\u{301}"]
        for _ in 0..<300 {
            let text = (0..<Int.random(in: 1...60, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
            let count = server.tokenizer.encode(text, addSpecial: true).count
            #expect(prompts.minimumTokens(bytes: text.utf8.count) <= count, "\(text)")
        }
        let maxPrompt = server.contextLimit - 1
        let word = String(repeating: "a", count: perToken * maxPrompt + 1)
        try await ServerFixtures.withServer(server) { client in
            let r = try await client.post("/v1/completions", "{\"model\":\"tiny-llama\",\"prompt\":\"\(word)\"}")
            try expectError(r, status: 400, param: "prompt", code: "context_length_exceeded")
            #expect(r.1.contains("at least"), "\(r.1)")
            let chat = try await client.post("/v1/chat/completions", "{\"model\":\"tiny-llama\",\"messages\":[{\"role\":\"user\",\"content\":\"\(word)\"}]}")
            try expectError(chat, status: 400, param: "messages", code: "context_length_exceeded")
            #expect(chat.1.contains("at least"))
            let port = try #require(client.port)
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// The byte bound on the default model (SmolLM2: byte-level BPE with a few bytes missing from its
    /// alphabet): defined, and never above the true count — over its longest token repeated (81 bytes:
    /// newline + 80 spaces), its missing control bytes, unassigned-plane characters, and mixed text.
    @Test func promptBoundIsSoundOnTheDefaultModel() throws {
        let env = ProcessInfo.processInfo.environment
        let path = (env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")) + "/dlora/SmolLM2-135M-Instruct.Q4_1.gguf"
        try #require(FileManager.default.fileExists(atPath: path), "default model missing: run scripts/fetch-model.sh")
        let tokenizer = try Tokenizer(metadata: #require(try openCheckpoint(path: path).metadata))
        let prompts = PromptTokenizer(tokenizer)
        let perToken = try #require(prompts.maxBytesPerToken)
        #expect(perToken == 81)
        let longest = "\n" + String(repeating: " ", count: 80)
        let pieces = [longest, "\u{04}", "\u{06}\u{13}\u{14}", "\u{16}\u{1D}", "\u{40000}", "\u{80001}", "hello", " world", "aaaa",
                      "<|im_start|>", "é", "日本語", "🙂", "\u{301}", "    ", "\n\n", "1234567890"]
        var rng = SystemRandomNumberGenerator()
        var texts = [String(repeating: longest, count: 50), String(repeating: "\u{04}", count: 64), String(repeating: "a", count: 5000)]
        for _ in 0..<200 {
            texts.append((0..<Int.random(in: 1...40, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined())
        }
        for text in texts {
            let count = tokenizer.encode(text, addSpecial: true).count
            #expect(prompts.minimumTokens(bytes: text.utf8.count) <= count, "\(text.debugDescription.prefix(200))")
        }
    }

    /// A half-closed non-streamed request whose head went out early (the probe) and which then fails — here
    /// cut off by a shutdown — ends its chunked body without the last chunk: the client sees a failed
    /// response carrying the error JSON, not a complete 200. The engine is left idle (the server drained).
    @Test func halfClosedRequestThatFailsIsTruncated() async throws {
        let server = try ServerFixtures.server(slow: true) { $0.shutdownDeadline = .milliseconds(200) }
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let c = try RawHTTPClient(port: port)
            c.send(RawHTTPClient.request("POST", "/v1/completions",
                                         body: "{\"model\":\"a-qv-r4\",\"prompt\":\"hi\",\"max_tokens\":200,\"ignore_eos\":true}"))
            c.halfClose()
            for _ in 0..<200 where server.engine.snapshot.running == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.engine.snapshot.running == 1)
            await server.drain()
            let r = try #require(await blocking { c.readResponse(timeout: .seconds(5)) })
            #expect(r.status == 200 && r.headers["transfer-encoding"] == "chunked")
            #expect(!r.complete, "a failed response must not end like a complete one")
            #expect(r.body.contains("\"error\""), "\(r.body)")
            #expect(await blocking { c.waitForClose(timeout: .seconds(2)) } != nil)
            #expect(try await ServerFixtures.waitIdle(server))
        }
    }

    /// Random bytes, and valid requests cut or corrupted at random places, each on its own connection and
    /// followed by a half-close: every answer is a 2xx or 4xx (or 501 for a mangled transfer coding, never
    /// another 5xx), in OpenAI's JSON when an error,
    /// and every connection ends; a valid request pipelined before garbage is answered first.
    @Test func garbageNeverCrashesOrHangs() async throws {
        let server = try ServerFixtures.server { $0.http.headerTimeout = .seconds(2) }
        let valid = Array(RawHTTPClient.request("POST", "/v1/completions", body: Self.ask).utf8)
        let chunked = Array(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + String(Self.ask.utf8.count, radix: 16) + "\r\n" + Self.ask + "\r\n0\r\n\r\n").utf8)
        var rng = SystemRandomNumberGenerator()
        var inputs: [[UInt8]] = []
        for i in 0..<60 {
            var bytes = i.isMultiple(of: 2) ? valid : chunked
            switch i % 4 {
            case 0: bytes = (0..<Int.random(in: 1...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1: bytes = Array(bytes.prefix(Int.random(in: 1..<bytes.count, using: &rng)))
            default:
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            inputs.append(bytes)
        }
        let sent = inputs
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let outcomes = await blocking { () -> [(Int?, Bool, Bool)] in
                sent.map { bytes in
                    guard let c = try? RawHTTPClient(port: port) else { return (nil, false, false) }
                    c.send(bytes)
                    c.halfClose()
                    let r = c.readResponse(timeout: .seconds(5))
                    let jsonError = r.map { $0.status < 400 || ((try? jsonObject($0.body))?["error"] != nil) } ?? true
                    return (r?.status, c.waitForClose(timeout: .seconds(5)) != nil, jsonError)
                }
            }
            for (i, (status, closed, json)) in outcomes.enumerated() {
                // 501 is the one 5xx a client can cause: a transfer coding this server does not implement.
                #expect(status.map { $0 < 500 || $0 == 501 } ?? true, "input \(i): status \(status ?? 0)")
                #expect(closed, "input \(i): connection left open")
                #expect(json, "input \(i): error without OpenAI JSON")
            }
            let c = try RawHTTPClient(port: port)
            let (a, b) = await blocking {
                c.send(valid + Array("GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n".utf8))
                return (c.readResponse(), c.readResponse())
            }
            #expect(a?.status == 200)
            try expectRawError(b, status: 400)
            try await Self.expectHealthy(server, port: port)
        }
    }

    /// Long prompts are tokenized off the cooperative threads: while six 100 KB one-word prompts are being
    /// tokenized on the default model (about half a second each in a debug build), /health keeps answering
    /// at once (median 3 ms, slowest 17 ms over 113 probes). Tokenizing on the cooperative pool instead, two
    /// of them hold every thread of a 2-core machine and /health waits for them (slowest 1.84 s).
    @Test func longTokenizationDoesNotDelayHealth() async throws {
        let env = ProcessInfo.processInfo.environment
        let path = (env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")) + "/dlora/SmolLM2-135M-Instruct.Q4_1.gguf"
        try #require(FileManager.default.fileExists(atPath: path), "default model missing: run scripts/fetch-model.sh")
        let checkpoint = try openCheckpoint(path: path)
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(metadata: #require(checkpoint.metadata))
        var options = ServerOptions(modelName: "smol")
        options.maxBodyBytes = 1 << 20
        let server = OpenAIServer(engine: EngineLoop(engine: EngineCore(model: model, tokenizer: tokenizer, kvBlocks: 128,
                                                                           maxBatchTokens: 64, maxSequences: 4)),
                                  tokenizer: tokenizer, adapters: nil, options: options)
        #expect(server.prompts.minimumTokens(bytes: 100_000) < server.contextLimit - 1, "the prompt must pass the byte bound")
        try await ServerFixtures.withServer(server) { client in
            let port = try #require(client.port)
            let body = "{\"model\":\"smol\",\"prompt\":\"" + String(repeating: "a", count: 100_000) + "\"}"
            let clients = try (0..<6).map { _ in try RawHTTPClient(port: port) }
            let started = ContinuousClock.now
            for c in clients { c.send(RawHTTPClient.request("POST", "/v1/completions", body: body)) }
            let answered = Locked(false)
            let answers = Task {
                let r = await blocking { clients.map { $0.readResponse(timeout: .seconds(120)) } }
                answered.withLock { $0 = true }
                return r
            }
            var latencies: [Duration] = []
            let probe = try RawHTTPClient(port: port)
            // Probe every 20 ms until every prompt is answered (at most 1000 probes, 60 s).
            for _ in 0..<1000 where !answered.withLock({ $0 }) && ContinuousClock.now - started < .seconds(60) {
                let t = ContinuousClock.now
                let r = await blocking { probe.send(RawHTTPClient.request("GET", "/health")); return probe.readResponse(timeout: .seconds(10)) }
                #expect(r?.status == 200)
                latencies.append(ContinuousClock.now - t)
                try await Task.sleep(for: .milliseconds(20))
            }
            let results = await answers.value
            let tokenizing = ContinuousClock.now - started
            // The prompts were tokenized (refused by their real count, not by the byte bound).
            #expect(results.allSatisfy { $0?.status == 400 && $0?.body.contains("has 25000 tokens") == true }, "\(results.map { $0?.body ?? "nil" })")
            let sorted = latencies.sorted()
            #expect(sorted[sorted.count / 2] < .milliseconds(250), "median /health \(sorted[sorted.count / 2]) while tokenizing for \(tokenizing)")
            #expect(sorted.last! < .seconds(1), "slowest /health \(sorted.last!) while tokenizing for \(tokenizing)")
        }
    }
}
