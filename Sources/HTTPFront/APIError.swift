import Foundation
import Hummingbird
import ServingAPI

/// An error the API reports in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with its
/// HTTP status. Thrown anywhere in a handler; Hummingbird renders it through `response(from:context:)`.
public struct APIError: Error, HTTPResponseError, Equatable, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let message: String
    public let type: String
    public let param: String?
    public let code: String?
    /// Seconds a client should wait before retrying (429/503).
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ message: String, type: String? = nil, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type ?? Self.defaultType(status)
    }

    public var description: String { "\(status.code) \(type): \(message)" }

    public static func defaultType(_ status: HTTPResponse.Status) -> String {
        switch status.code {
        case 401: "authentication_error"
        case 404: "not_found_error"
        case 429: "rate_limit_error"
        case 500...: status.code == 503 ? "service_unavailable_error" : "server_error"
        default: "invalid_request_error"
        }
    }

    /// A 400 about one request parameter.
    public static func invalid(_ param: String?, _ message: String, code: String? = nil) -> APIError {
        APIError(.badRequest, message, param: param, code: code)
    }

    /// The same error about a `/v1/responses` request run as chat: the chat parameter it names (and its message)
    /// in the Responses body's words (`max_tokens` → `max_output_tokens`, …).
    public var inResponsesTerms: APIError {
        let (param, message) = ResponsesRequest.rename(param: param, message: message)
        var e = APIError(status, message, type: type, param: param, code: code)
        e.retryAfter = retryAfter
        return e
    }

    /// A 400 for a `/v1/responses` body that cannot be served.
    public init(_ e: ResponsesRequestError) {
        self.init(.badRequest, e.message, param: e.param, code: e.code)
    }

    /// The JSON body (also sent as an SSE event when a stream fails after it started).
    public var json: String { OpenAIWire.encode(ErrorBody(error: detail)) }
    /// The error's body's `error` member.
    public var detail: ErrorBody.Detail { .init(message: message, type: type, param: param, code: code) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}
