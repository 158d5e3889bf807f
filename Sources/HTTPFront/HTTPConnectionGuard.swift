import Foundation
import NIOCore
import NIOHTTP1

/// One HTTP/1.1 connection's framing, limits and timers, between NIO's HTTP codec and Hummingbird.
///
/// It sees every request head before the application does and every response part on its way out, so it
/// knows how many responses are owed (`outstanding`) and whether a request is still being read. From that:
/// - **Framing**: a `Transfer-Encoding` other than a lone `chunked` is refused (501 for an unknown coding,
///   400 for a repeated or misplaced one, or one beside `Content-Length`, RFC 9112 §6); a malformed head or
///   chunked body is a 400 (431 for oversized headers), never an "internal error". A declared
///   `Content-Length` above the body limit is a 413 at once, without waiting for the body. Refused requests
///   are answered in order, after the responses already owed, and the connection then closes (the parser's
///   state after a framing error cannot be trusted).
/// - **Timers** (one at a time, total deadlines so that trickling does not extend them): the head must be
///   complete within `headerTimeout` of the connection opening or of its first byte; the body within
///   `bodyTimeout` of the head (else 408); a kept-alive connection with nothing owed closes after
///   `idleTimeout`. While the application works on an earlier request the reading timers are paused and
///   restart when it catches up (a pipelining client gains one timeout per request it sent).
/// - **Closing**: after the response to a `Connection: close` or HTTP/1.0 request, or to a body that grew
///   past the limit (413; a body within it that was answered early, e.g. 401, is drained); the output is shut first and input discarded until the client closes
///   or `lingerTimeout` passes, so that the client reads the response instead of a reset. At once when the
///   client has half-closed and nothing is owed.
///   A half-close alone is not a disconnect: owed responses are still written.
/// - **Disconnects**: `ClientConnection` learns when the channel closes (generation is then cancelled) and
///   can ask for a half-close probe (see `ClientConnection.armHalfCloseProbe`).
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let limits: HTTPLimits
    let maxBodyBytes: Int
    /// The body limit of the request being read (`maxBodyBytes`, or `limits.largeBodyBytes` on its paths).
    private var bodyLimit: Int
    let connection: ClientConnection
    let tracker: ConnectionTracker?

    /// Responses owed: request heads passed on less responses finished.
    private var outstanding = 0
    /// Whether each request owed a response is HTTP/1.0, oldest first: its response is HTTP/1.0 too, never chunked
    /// (RFC 9112 §6.1: a 1.0 client cannot read chunked framing; the body ends when the connection closes).
    private var owedHTTP10: [Bool] = []
    /// A request head was passed on and its end has not arrived yet.
    private var readingRequest = false
    /// Body bytes of the request being read.
    private var bodyBytes = 0
    /// Bytes of a request head may be waiting (also true on a fresh connection: its first head is due).
    private var awaitingHead = true
    /// When the current reading phase (head, body or idle) started, or restarted after the application caught up.
    private var phaseStart = NIODeadline.now()
    /// Inbound parts are dropped (after a refusal, a read error, or `Connection: close`).
    private var discarding = false
    /// Close once nothing is owed.
    private var closeWhenDone = false
    /// A refusal to send once nothing else is owed.
    private var pendingRefusal: APIError?
    private var inputClosed = false
    private var lingering = false
    private var timer: Scheduled<Void>?

    // The response being produced (the oldest owed).
    private var headWritten = false
    private var probeArmed = false
    /// The response being written is a server-sent-event stream.
    private var eventStream = false
    private var probeSent = false
    private var droppedHeadStatus: HTTPResponseStatus?

    init(limits: HTTPLimits, maxBodyBytes: Int, connection: ClientConnection, tracker: ConnectionTracker?) {
        self.limits = limits
        self.maxBodyBytes = maxBodyBytes
        bodyLimit = maxBodyBytes
        self.connection = connection
        self.tracker = tracker
    }

    // MARK: Inbound

    func handlerAdded(context: ChannelHandlerContext) {
        phaseStart = .now()
        if context.channel.isActive { rearm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        phaseStart = .now()
        rearm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        connection.markClosed()
        context.fireChannelInactive()
    }

    /// Raw bytes arrived (from `ByteActivityHandler`, before the decoder sees them).
    func bytesArrived(context: ChannelHandlerContext) {
        guard !readingRequest, !awaitingHead, !discarding else { return }
        awaitingHead = true
        if outstanding == 0 {
            phaseStart = .now()
            rearm(context)
        }
        updateEvictable()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !discarding else { return }
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let head):
            awaitingHead = false
            bodyLimit = limits.largeBodyPaths.contains(where: { head.uri.hasPrefix($0) }) ? max(maxBodyBytes, limits.largeBodyBytes) : maxBodyBytes
            if let refusal = check(head) {
                refuse(context, refusal)
                return
            }
            outstanding += 1
            owedHTTP10.append(head.version.major == 1 && head.version.minor == 0)
            readingRequest = true
            bodyBytes = 0
            // HTTP/1.0 closes after its response even when it asks for keep-alive: its clients cannot read
            // chunked bodies (streams) and expect an explicit `Connection: keep-alive` otherwise.
            if !head.isKeepAlive || head.version == .http1_0 { closeWhenDone = true }
            phaseStart = .now()
            rearm(context)
            updateEvictable()
            // `Expect: 100-continue` (curl sends it with bodies over 1 KiB and waits a second for it): the
            // body is acceptable by its declared length, so ask for it, unless earlier responses are owed.
            if outstanding == 1, head.version == .http1_1,
               head.headers["expect"].contains(where: { $0.lowercased().contains("100-continue") }) {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .continue))), promise: nil)
            }
            context.fireChannelRead(data)
        case .body(let chunk):
            bodyBytes += chunk.readableBytes
            if outstanding == 0 && bodyBytes > bodyLimit {
                // Already answered (413) and still coming: stop reading it.
                lingerClose(context)
                return
            }
            context.fireChannelRead(data)
        case .end:
            readingRequest = false
            // Nothing more is read from a connection that will close after this request.
            if closeWhenDone { discarding = true }
            context.fireChannelRead(data)
            if outstanding == 0 { finishIfDone(context) }
            phaseStart = .now()
            rearm(context)
            updateEvictable()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            inputClosed = true
            connection.markInputClosed()
            if lingering {
                context.close(promise: nil)
                return
            }
            context.fireUserInboundEventTriggered(event)
            if outstanding > 0 {
                sendProbeIfArmed(context)
            } else if !readingRequest {
                finishIfDone(context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if discarding && (error is HTTPParserError || error is ByteToMessageDecoderError) { return }
        if let parse = error as? HTTPParserError {
            if readingRequest {
                // The application is (or will be) reading this body: it gets the error and answers 400.
                readingRequest = false
                discarding = true
                closeWhenDone = true
                if outstanding == 0 {
                    context.close(promise: nil)
                    return
                }
                context.fireErrorCaught(APIError(.badRequest, "malformed request body (\(Self.describe(parse)))"))
                return
            }
            let refusal = parse == .headerOverflow
                ? APIError(.init(code: 431, reasonPhrase: "Request Header Fields Too Large"), "the request's header fields are too large")
                : APIError(.badRequest, "malformed HTTP request (\(Self.describe(parse)))")
            refuse(context, refusal)
            return
        }
        context.fireErrorCaught(error)
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head):
            if probeSent {
                // The probe already sent a 200 head; the body follows it (see `sendProbeIfArmed`).
                droppedHeadStatus = head.status
                promise?.succeed(())
                return
            }
            headWritten = true
            eventStream = head.headers.first(name: "content-type")?.hasPrefix("text/event-stream") ?? false
            if owedHTTP10.first == true {
                head.version = .http1_0
                head.headers.remove(name: "transfer-encoding")
            }
            if outstanding <= 1 && (closeWhenDone || inputClosed || pendingRefusal != nil) {
                head.headers.replaceOrAdd(name: "connection", value: "close")
            }
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            if probeSent, let status = droppedHeadStatus, status != .ok {
                // The committed 200 cannot become an error: end the body abnormally (no last chunk), after
                // the error JSON already written, so that the client sees a failed response.
                promise?.succeed(())
                context.flush()
                context.close(promise: nil)
                return
            }
            context.write(data, promise: promise)
            outstanding -= 1
            if !owedHTTP10.isEmpty { owedHTTP10.removeFirst() }
            headWritten = false
            probeArmed = false
            eventStream = false
            probeSent = false
            droppedHeadStatus = nil
            if outstanding == 0 {
                // Answered before its body was read: a body within the limit is drained (the connection stays
                // usable; the body timer bounds it), one past the limit (a 413) is not read further.
                if readingRequest && bodyBytes > bodyLimit { closeWhenDone = true }
                if pendingRefusal != nil || closeWhenDone || inputClosed {
                    context.flush()
                    finishIfDone(context)
                } else {
                    phaseStart = .now()
                    rearm(context)
                }
            }
            updateEvictable()
        }
    }

    // MARK: Half-close probe

    /// The response now being produced may start early if the client half-closes (`ClientConnection`).
    func armProbe(context: ChannelHandlerContext) {
        guard outstanding > 0, !headWritten else { return }
        probeArmed = true
        if inputClosed { sendProbeIfArmed(context) }
    }

    /// A FIN cannot tell a client that only half-closed from one that is gone; a write can (a closed socket
    /// answers data with a reset, which closes the channel and cancels the request). A non-streamed
    /// generation opts in to have its head (200, chunked) sent at once; an event stream whose head is out
    /// gets an SSE comment line (`:`, ignored by SSE clients), so a client gone during a long prefill is
    /// found before the first token.
    private func sendProbeIfArmed(_ context: ChannelHandlerContext) {
        if eventStream && headWritten {
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: ":\n\n")))), promise: nil)
            return
        }
        guard probeArmed, !probeSent, !headWritten else { return }
        probeSent = true
        headWritten = true
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        let http10 = owedHTTP10.first == true
        if !http10 { headers.add(name: "transfer-encoding", value: "chunked") }
        headers.add(name: "connection", value: "close")
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: http10 ? .http1_0 : .http1_1, status: .ok, headers: headers))),
                              promise: nil)
    }

    // MARK: Refusals and closing

    /// What is wrong with a head, if anything (answered before the application sees the request).
    private func check(_ head: HTTPRequestHead) -> APIError? {
        let codings = head.headers["transfer-encoding"].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let lengths = head.headers["content-length"]
        if !codings.isEmpty {
            if head.version.major == 1 && head.version.minor == 0 {
                return APIError(.badRequest, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
            }
            if let unknown = codings.first(where: { $0 != "chunked" }) {
                return APIError(.notImplemented, "Transfer-Encoding '\(String(unknown.prefix(64)))' is not supported (only chunked)",
                                code: "unsupported_transfer_encoding")
            }
            if codings.count > 1 { return APIError(.badRequest, "chunked is applied more than once in Transfer-Encoding") }
            if !lengths.isEmpty { return APIError(.badRequest, "a request cannot carry both Transfer-Encoding and Content-Length") }
        }
        for value in lengths {
            guard let n = UInt64(value.trimmingCharacters(in: .whitespaces)) else {
                return APIError(.badRequest, "invalid Content-Length")
            }
            if n > UInt64(bodyLimit) {
                return APIError(.contentTooLarge, "the request body (\(n) bytes declared) is larger than \(bodyLimit) bytes")
            }
        }
        return nil
    }

    /// Stops reading and answers `error` once the responses already owed are written, then closes.
    private func refuse(_ context: ChannelHandlerContext, _ error: APIError) {
        discarding = true
        readingRequest = false
        timer?.cancel()
        timer = nil
        guard pendingRefusal == nil else { return }
        pendingRefusal = error
        updateEvictable()
        if outstanding == 0 { finishIfDone(context) }
    }

    /// Nothing is owed: write a pending refusal and close if the connection is done.
    private func finishIfDone(_ context: ChannelHandlerContext) {
        guard outstanding == 0 else { return }
        if let refusal = pendingRefusal {
            pendingRefusal = nil
            let body = ByteBuffer(string: refusal.json)
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.readableBytes))
            headers.add(name: "connection", value: "close")
            let status = HTTPResponseStatus(statusCode: refusal.status.code, reasonPhrase: refusal.status.reasonPhrase)
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            lingerClose(context)
            return
        }
        guard closeWhenDone || inputClosed else { return }
        lingerClose(context)
    }

    /// Shuts the output (the client reads the response, then EOF) and discards input until the client closes
    /// or `lingerTimeout` passes: closing with unread input would reset the connection and could destroy the
    /// response before the client read it.
    private func lingerClose(_ context: ChannelHandlerContext) {
        discarding = true
        readingRequest = false
        guard !lingering else { return }
        lingering = true
        updateEvictable()
        if inputClosed {
            context.close(promise: nil)
            return
        }
        context.close(mode: .output, promise: nil)
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(Self.nanoseconds(limits.lingerTimeout))) {
            channel.close(promise: nil)
        }
    }

    // MARK: Timers

    private enum Phase { case head, body, idle }

    /// The phase whose timer runs now (nil: the application owes an earlier response, or nothing to time).
    private var phase: Phase? {
        if lingering || discarding { return nil }
        if readingRequest { return outstanding <= 1 ? .body : nil }
        if outstanding > 0 { return nil }
        return awaitingHead ? .head : .idle
    }

    private func rearm(_ context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        guard let phase else { return }
        let limit = switch phase {
        case .head: limits.headerTimeout
        case .body: limits.bodyTimeout
        case .idle: limits.idleTimeout
        }
        let deadline = phaseStart + .nanoseconds(Self.nanoseconds(limit))
        let handler = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (guardHandler, context) = handler.value
            guardHandler.timerFired(context, phase: phase)
        }
    }

    private func timerFired(_ context: ChannelHandlerContext, phase expected: Phase) {
        timer = nil
        guard let now = phase, now == expected else { return }
        switch now {
        case .head, .idle:
            context.close(promise: nil)
        case .body:
            readingRequest = false
            discarding = true
            closeWhenDone = true
            updateEvictable()
            if outstanding == 0 {
                context.close(promise: nil)
            } else {
                let seconds = Double(Self.nanoseconds(limits.bodyTimeout)) / 1e9
                context.fireErrorCaught(APIError(.requestTimeout, "the request body did not arrive within \(seconds) s"))
            }
        }
    }

    private func updateEvictable() {
        tracker?.setEvictable(connection, outstanding == 0 && !readingRequest && !lingering)
    }

    static func nanoseconds(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        return s.multipliedReportingOverflow(by: 1_000_000_000).overflow ? .max : s * 1_000_000_000 + atto / 1_000_000_000
    }

    private static func describe(_ e: HTTPParserError) -> String {
        String(describing: e)
    }
}

/// Tells the connection guard that raw bytes arrived, before the HTTP decoder turns them into parts (a
/// trickled head produces no part until it is complete, yet its first byte starts the header timer).
final class ByteActivityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connectionGuard: ConnectionGuard
    private var guardContext: ChannelHandlerContext?

    init(_ connectionGuard: ConnectionGuard) { self.connectionGuard = connectionGuard }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if guardContext == nil { guardContext = try? context.pipeline.syncOperations.context(handler: connectionGuard) }
        if let guardContext { connectionGuard.bytesArrived(context: guardContext) }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) { guardContext = nil }
}
