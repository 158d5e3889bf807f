import Foundation
import Hummingbird
import NIOHTTP1
import ServingAPI

/// Renders every error as OpenAI's JSON: the API's own, Hummingbird's (404 for unknown routes, 413…), and
/// anything unexpected as a 500 that does not leak internals.
public struct ErrorMiddleware: RouterMiddleware {
    public typealias Context = BasicRequestContext

    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            throw e
        } catch let e as any HTTPResponseError {
            let message = switch e.status.code {
            case 404: "no route for \(request.method) \(String(request.uri.path.prefix(128)))"
            case 413: "the request body is too large"
            default: e.status.reasonPhrase
            }
            throw APIError(e.status, message)
        } catch is CancellationError {
            throw APIError(.serviceUnavailable, "the request was cancelled")
        } catch let e as HTTPParserError {
            throw APIError(.badRequest, "malformed HTTP request (\(e))")
        } catch {
            throw APIError(.internalServerError, "internal error")
        }
    }
}

/// HEAD wherever GET is served (RFC 9110 §9.3.2; load balancers and health checkers probe with it), around a router
/// (routing picks a route by method, so this runs before it): the request runs as a GET, and the answer — an error's
/// too — keeps its status and headers (Content-Length included) without the body.
public struct HeadResponder<Base: HTTPResponder>: HTTPResponder where Base.Context == BasicRequestContext {
    public typealias Context = BasicRequestContext
    let base: Base

    public init(_ base: Base) { self.base = base }

    public func respond(to request: Request, context: Context) async throws -> Response {
        guard request.method == .head else { return try await base.respond(to: request, context: context) }
        var head = request.head
        head.method = .get
        let get = Request(head: head, body: request.body)
        var response: Response
        do {
            response = try await base.respond(to: get, context: context)
        } catch let e as any HTTPResponseError {
            response = try e.response(from: get, context: context)
        }
        // The head says GET's length; nothing of the body is written.
        let length = response.body.contentLength ?? response.headers[.contentLength].flatMap { Int($0) }
        response.body = ResponseBody(contentLength: length) { writer in try await writer.finish(nil) }
        return response
    }
}

/// The methods a path is served with, around a router (RFC 9110 §15.5.6 and §9.3.7): a known path asked with another
/// method is a 405 (OpenAI's JSON, code `method_not_allowed`) with `Allow`, and `OPTIONS` on it a 204 with `Allow`, where
/// the router alone would answer "no route" (404). Unknown paths, and every method a path is served with, pass through.
/// HEAD counts as served wherever GET is (`HeadResponder` answers it).
public struct MethodResponder<Base: HTTPResponder>: HTTPResponder where Base.Context == BasicRequestContext {
    public typealias Context = BasicRequestContext
    let base: Base
    let routes: [(path: [RouterPath.Element], method: HTTPRequest.Method)]

    public init(_ base: Base, routes: [Router<BasicRequestContext>.RouteDescription]) {
        self.base = base
        self.routes = routes.map { ($0.path.components, $0.method) }
    }

    /// The methods served on `path` (sorted; HEAD beside GET), empty for a path no route matches.
    public func allowedMethods(path: String) -> [HTTPRequest.Method] {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        var methods = Set<String>()
        for route in routes where Self.matches(route.path, segments) { methods.insert(route.method.rawValue) }
        if methods.contains(HTTPRequest.Method.get.rawValue) { methods.insert(HTTPRequest.Method.head.rawValue) }
        return methods.sorted().compactMap { HTTPRequest.Method($0) }
    }

    static func matches(_ pattern: [RouterPath.Element], _ segments: [Substring]) -> Bool {
        for (i, element) in pattern.enumerated() {
            if element == .recursiveWildcard { return segments.count > i }
            guard i < segments.count, element ~= segments[i] else { return false }
        }
        return pattern.count == segments.count
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        let allowed = allowedMethods(path: request.uri.path)
        guard !allowed.isEmpty, !allowed.contains(request.method) else { return try await base.respond(to: request, context: context) }
        let allow = allowed.map(\.rawValue).joined(separator: ", ")
        if request.method == .options { return Response(status: .noContent, headers: [.allow: allow]) }
        var response = try APIError(.methodNotAllowed, "\(printable(request.method.rawValue, limit: 32)) is not allowed on \(printable(request.uri.path, limit: 128)) (allowed: \(allow))",
                                    code: "method_not_allowed").response(from: request, context: context)
        response.headers[.allow] = allow
        return response
    }
}

/// `GET /v1/models/{id}` (OpenAI's models.retrieve) over a server's model list: the card named `id` (as it appears
/// in the path, percent-encoding undone), or the 404 a generation request naming an unknown model gets.
public func modelResponse(_ cards: [ModelCard], id rawID: String) throws -> Response {
    let id = rawID.removingPercentEncoding ?? rawID
    guard let card = cards.first(where: { $0.id == id }) else {
        throw APIError(.notFound, "the model '\(printable(id, limit: 256))' does not exist", param: "model", code: "model_not_found")
    }
    return Response(status: .ok, headers: [.contentType: "application/json"],
                    body: .init(byteBuffer: ByteBuffer(string: OpenAIWire.encode(card))))
}

/// Client text as it may appear in an error message: control characters as `?`, at most `limit` characters.
public func printable(_ text: String, limit: Int) -> String {
    String(String(text.unicodeScalars.map { $0.value < 0x20 ? "?" : Character($0) }).prefix(limit))
}

/// A value behind a lock.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    public init(_ value: Value) { self.value = value }

    public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
