import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// Connection-level limits of the HTTP server (docs/design/server.md, "Connections").
public struct HTTPLimits: Sendable {
    /// A request head must be complete within this long of the connection opening or of its first byte.
    public var headerTimeout: Duration = .seconds(10)
    /// A request body must be complete within this long of its head (else 408).
    public var bodyTimeout: Duration = .seconds(60)
    /// A kept-alive connection with nothing in flight is closed after this long.
    public var idleTimeout: Duration = .seconds(30)
    /// Open connections at most. At the cap a new connection replaces the oldest one that has no request in
    /// progress (silent, trickling its head, or idle between requests); if every connection is busy it is
    /// closed at once.
    public var maxConnections = 512
    /// After a response sent before its request was read (413, a refusal), input is discarded this long
    /// before the connection closes, so that the client reads the response rather than a reset.
    public var lingerTimeout: Duration = .seconds(2)

    /// Path prefixes whose requests may carry up to `largeBodyBytes` (the replica's K/V staging endpoint,
    /// behind the admin key: frames of many megabytes); every other request keeps the server's body limit.
    public var largeBodyPaths: [String] = []
    public var largeBodyBytes = 0

    public init() {}
}

/// The client connection a request arrived on, for the request's handler (a task-local set per connection).
/// It reports the channel closing (a disconnect: generation is cancelled) and can arm the half-close probe.
public final class ClientConnection: Sendable {
    @TaskLocal public static var current: ClientConnection?

    private struct State {
        var closed = false
        var inputClosed = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var cancelled: Set<UInt64> = []
        var nextWaiter: UInt64 = 0
    }

    private let state = Locked(State())
    private let armProbe: @Sendable () -> Void
    let serial: UInt64

    init(serial: UInt64, armProbe: @escaping @Sendable () -> Void) {
        self.serial = serial
        self.armProbe = armProbe
    }

    /// The channel closed (client gone, reset, or the server closed it).
    public var isClosed: Bool { state.withLock { $0.closed } }
    /// The client sent FIN: it may have half-closed (and still read) or be gone.
    public var isInputClosed: Bool { state.withLock { $0.inputClosed } }

    func markInputClosed() { state.withLock { $0.inputClosed = true } }

    func markClosed() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.closed = true
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in waiters { w.resume() }
    }

    /// Returns when the channel closes, or when the calling task is cancelled.
    func waitUntilClosed() async {
        let id = state.withLock { s -> UInt64 in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.closed || s.cancelled.remove(id) != nil { return true }
                    s.waiters[id] = c
                    return false
                }
                if resumeNow { c.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                if let w = s.waiters.removeValue(forKey: id) { return w }
                s.cancelled.insert(id)
                return nil
            }
            waiter?.resume()
        }
    }

    /// The response now being produced (a non-streamed generation) may be started early: if the client
    /// half-closes before it is ready, its head (200, chunked) is sent at once, so that a client that is gone
    /// answers with a reset and the request is cancelled, while one that only half-closed gets its response.
    /// If the request then fails, the body ends without its last chunk (a failed response, not a 200).
    public func armHalfCloseProbe() { armProbe() }

    /// Runs `operation`, cancelling it when the current connection closes (without touching the request
    /// stream, so pipelined requests and a half-close are unaffected). Without a current connection (the
    /// router test framework) it just runs `operation`.
    public static func cancellingOnDisconnect<T: Sendable>(_ operation: () async throws -> T) async throws -> T {
        guard let connection = current else { return try await operation() }
        return try await withoutActuallyEscaping(operation) { escaping in
            let op = UncheckedSendable(escaping)
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await op.value() }
                group.addTask {
                    await connection.waitUntilClosed()
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else { throw CancellationError() }
                return value
            }
        }
    }
}

/// A value moved into a child task that the caller awaits before it returns (the non-escaping closure of
/// `cancellingOnDisconnect`, which may capture an `inout` response writer).
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Open connections, for the connection cap: which are idle (evictable) and which are busy.
final class ConnectionTracker: Sendable {
    private struct Entry {
        let channel: any Channel
        var evictable: Bool
    }

    let maxConnections: Int
    private let state = Locked((entries: [UInt64: Entry](), serial: UInt64(0)))

    init(maxConnections: Int) { self.maxConnections = maxConnections }

    var count: Int { state.withLock { $0.entries.count } }

    func nextSerial() -> UInt64 {
        state.withLock { s in
            s.serial += 1
            return s.serial
        }
    }

    /// Registers a new connection. At the cap, the oldest idle connection is closed to make room; if none is
    /// idle the new one is refused (false).
    func admit(_ channel: any Channel, serial: UInt64) -> Bool {
        let (admitted, victim) = state.withLock { s -> (Bool, (any Channel)?) in
            var victim: (any Channel)?
            if s.entries.count >= maxConnections {
                guard let oldest = s.entries.filter({ $0.value.evictable }).min(by: { $0.key < $1.key }) else { return (false, nil) }
                s.entries[oldest.key] = nil
                victim = oldest.value.channel
            }
            s.entries[serial] = Entry(channel: channel, evictable: true)
            return (true, victim)
        }
        victim?.close(promise: nil)
        return admitted
    }

    func setEvictable(_ connection: ClientConnection, _ evictable: Bool) {
        state.withLock { $0.entries[connection.serial]?.evictable = evictable }
    }

    func remove(serial: UInt64) { _ = state.withLock { $0.entries.removeValue(forKey: serial) } }
}

/// Hummingbird's HTTP/1.1 child channel with the connection guard, the byte-activity hook and the
/// connection cap added; each connection's requests run with `ClientConnection.current` set.
struct HardenedHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    struct Value: ServerChildChannelValue {
        let asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
        let connection: ClientConnection
        var channel: any Channel { asyncChannel.channel }
    }

    let responder: HTTPChannelHandler.Responder
    let limits: HTTPLimits
    let maxBodyBytes: Int
    let tracker: ConnectionTracker

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let serial = tracker.nextSerial()
            let sync = channel.pipeline.syncOperations
            try sync.configureHTTPServerPipeline(
                withPipeliningAssistance: false,  // Hummingbird answers requests in order itself
                withErrorHandling: false,  // the guard answers framing errors
                withOutboundHeaderValidation: false,
                withEncoderConfiguration: .init(),
                withDecoderLimitConfiguration: .init()
            )
            let eventLoop = channel.eventLoop
            let guardBox = Locked<NIOLoopBound<ConnectionGuard>?>(nil)
            let connection = ClientConnection(serial: serial) {
                eventLoop.execute {
                    guard let handler = guardBox.withLock({ $0 })?.value,
                          let context = try? channel.pipeline.syncOperations.context(handler: handler) else { return }
                    handler.armProbe(context: context)
                }
            }
            let connectionGuard = ConnectionGuard(limits: limits, maxBodyBytes: maxBodyBytes, connection: connection, tracker: tracker)
            guardBox.withLock { $0 = NIOLoopBound(connectionGuard, eventLoop: eventLoop) }
            try sync.addHandler(ByteActivityHandler(connectionGuard), position: .first)
            try sync.addHandler(connectionGuard)
            try sync.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try sync.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
            channel.closeFuture.whenComplete { _ in
                tracker.remove(serial: serial)
                guardBox.withLock { $0 = nil }
            }
            if !tracker.admit(channel, serial: serial) {
                channel.close(promise: nil)
            }
            return Value(asyncChannel: asyncChannel, connection: connection)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await ClientConnection.$current.withValue(value.connection) {
            await handleHTTP(asyncChannel: value.asyncChannel, logger: logger)
        }
    }
}

/// Backs off when accepting fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM): NIO reports the
/// error but stays registered for readability (its read stays pending until an accept succeeds), so under a
/// file-descriptor limit the accept loop would spin at 100 % CPU; and the error reaching the server's
/// connection stream would end that stream for good. The error is kept here, reading is paused (turning
/// `autoRead` off is what makes NIO drop its pending read and its epoll interest), and resumed after 10 ms,
/// doubling to 1 s while failures continue (reset by a successful accept). Pending connections wait in the
/// backlog meanwhile; the connection timers free descriptors held by silent clients.
final class AcceptBackoffHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel
    typealias OutboundIn = Never
    typealias OutboundOut = Never

    static let initialDelay: Int64 = 10_000_000
    static let maximumDelay: Int64 = 1_000_000_000

    private let logger: Logger
    private var delay = initialDelay
    private var pausedUntil: NIODeadline?
    private var failures = 0

    init(logger: Logger) { self.logger = logger }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if failures > 0 {
            logger.notice("accepting connections again after \(failures) failed accepts")
            failures = 0
        }
        delay = Self.initialDelay
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let io = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED].contains(io.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        if io.errnoCode == ECONNABORTED { return }  // the client gave up before the accept: nothing to wait for
        if failures == 0 { logger.warning("accept failed (\(io)); backing off") }
        failures += 1
        guard pausedUntil == nil else { return }
        pausedUntil = .now() + .nanoseconds(delay)
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        let handler = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .nanoseconds(delay)) {
            let (backoff, context) = handler.value
            backoff.pausedUntil = nil
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
        delay = min(delay * 2, Self.maximumDelay)
    }

    func read(context: ChannelHandlerContext) {
        // Paused: a read now would register for readability again (autoRead on resumes reading).
        guard pausedUntil == nil else { return }
        context.read()
    }
}

/// The HTTP server for an API: Hummingbird's HTTP/1.1 with the connection guard (timeouts, framing, limits),
/// the connection cap and accept back-off. `onServerRunning` gets the listening channel.
public func makeHardenedApplication(router: Router<BasicRequestContext>, limits: HTTPLimits, maxBodyBytes: Int,
                                    configuration: ApplicationConfiguration = .init(), logger: Logger? = nil,
                                    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
    -> some ApplicationProtocol {
    let tracker = ConnectionTracker(maxConnections: limits.maxConnections)
    let log = logger ?? Logger(label: "dlora.http")
    let server = HTTPServerBuilder { responder in
        HardenedHTTP1Channel(responder: responder, limits: limits, maxBodyBytes: maxBodyBytes, tracker: tracker)
    }
    return Application(
        responder: MethodResponder(HeadResponder(router.buildResponder()), routes: router.routes), server: server, configuration: configuration,
        onServerRunning: { channel in
            try? await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler(logger: log), position: .first)
            }.get()
            await onServerRunning(channel)
        },
        logger: log
    )
}
