import Foundation
import Hummingbird
import ServingAPI

/// The stored-response endpoints of OpenAI's Responses API over a `ResponseStore`, the same on the replica server and
/// the router: `GET /v1/responses/{id}` (the response object as answered), `DELETE /v1/responses/{id}`, and
/// `GET /v1/responses/{id}/input_items` (`order`, `limit`, `after`). An id nothing is stored under (never, forgotten,
/// deleted, or no store at all) is a 404 in OpenAI's shape. `authorize` checks the request's key first.
public func addStoredResponseRoutes(to router: Router<BasicRequestContext>, store: ResponseStore?,
                                    authorize: @escaping @Sendable (Request) throws -> Void) {
    @Sendable func id(_ context: BasicRequestContext) -> String {
        let raw = context.parameters.get("id") ?? ""
        return raw.removingPercentEncoding ?? raw
    }
    @Sendable func missing(_ id: String) -> APIError {
        APIError(.notFound, "Response with id '\(printable(id, limit: 128))' not found.", type: "invalid_request_error")
    }
    @Sendable func json(_ data: Data) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: data)))
    }
    router.get("/v1/responses/:id") { request, context in
        try authorize(request)
        let id = id(context)
        guard let stored = store?.get(id) else { throw missing(id) }
        return json(stored.object)
    }
    router.delete("/v1/responses/:id") { request, context in
        try authorize(request)
        let id = id(context)
        guard store?.delete(id) == true else { throw missing(id) }
        return json(OpenAIWire.data(["id": id, "object": "response", "deleted": true] as [String: Any]))
    }
    router.get("/v1/responses/:id/input_items") { request, context in
        try authorize(request)
        let id = id(context), query = request.uri.queryParameters
        let page: Data?
        do {
            page = try store?.inputItemsPage(id, order: query.get("order"), limit: query.get("limit"), after: query.get("after"))
        } catch let e as ResponsesRequestError {
            throw APIError(e)
        }
        guard let page else { throw missing(id) }
        return json(page)
    }
}
