import Foundation

// Stored responses for OpenAI's Responses API: `store` (true unless the request says false), `previous_response_id`
// (a request continues a stored response's conversation), `GET`/`DELETE /v1/responses/{id}` and
// `GET /v1/responses/{id}/input_items`. The process that renders a Responses answer keeps it: the replica server
// when clients talk to it, the router in a cluster (its replicas see only the chat requests it translates to).
//
// In memory only, as vLLM's store: a restart forgets every response. Bounded by bytes (`--responses-store-mb`):
// when a new response does not fit, the least recently used ones (stored, read or continued) are forgotten first,
// so a conversation in use stays while abandoned ones go. Each entry holds its whole conversation (the chat
// messages the next turn continues from), so forgetting or deleting an earlier turn never breaks a later one.

/// What a stored response keeps: the response object as it was answered, its conversation so far (chat messages,
/// without the request's `instructions`, which OpenAI does not carry over to the next turn), and the request's
/// input items (ids added) for `input_items`.
public struct StoredResponse: Sendable {
    public let object: Data
    public let conversation: Data
    public let inputItems: Data

    public init(object: Data, conversation: Data, inputItems: Data) {
        self.object = object
        self.conversation = conversation
        self.inputItems = inputItems
    }

    var bytes: Int { object.count + conversation.count + inputItems.count + 128 }
}

/// The store: thread-safe, bounded by `capacityBytes`, least recently used entries evicted first.
public final class ResponseStore: @unchecked Sendable {
    public let capacityBytes: Int
    private let lock = NSLock()
    private var entries: [String: (response: StoredResponse, used: UInt64)] = [:]
    /// Every use as (id, tick), oldest first from `head`: an entry's last use is the one whose tick it holds, so
    /// eviction walks from the front past the stale ones (amortized O(1) per use; compacted as it grows).
    private var uses: [(id: String, tick: UInt64)] = []
    private var head = 0
    private var tick: UInt64 = 0
    private var bytes = 0

    public init(capacityBytes: Int) {
        precondition(capacityBytes > 0, "a response store needs a positive capacity")
        self.capacityBytes = capacityBytes
    }

    /// What a response id adds to the process's serial number: 64 random bits for `resp_` ids, which name stored
    /// conversations (an id must not lead to another client's), nothing for the others.
    public static func unguessable(_ prefix: String) -> String {
        guard prefix == "resp_" else { return "" }
        let hex = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Responses held now, and their bytes.
    public var count: Int { lock.withLock { entries.count } }
    public var storedBytes: Int { lock.withLock { bytes } }

    /// Keeps `response` under `id` (replacing one there), forgetting the least recently used others until it fits.
    /// Returns false when it is larger than the whole store, which then keeps nothing of it.
    @discardableResult
    public func put(_ id: String, _ response: StoredResponse) -> Bool {
        lock.withLock {
            if let old = entries.removeValue(forKey: id) { bytes -= old.response.bytes }
            guard response.bytes <= capacityBytes else { return false }
            while bytes + response.bytes > capacityBytes, head < uses.count {
                let use = uses[head]
                head += 1
                guard let e = entries[use.id], e.used == use.tick else { continue }  // used again since, or gone
                bytes -= e.response.bytes
                entries.removeValue(forKey: use.id)
            }
            entries[id] = (response, use(id))
            bytes += response.bytes
            return true
        }
    }

    /// Records a use of `id` now and returns its tick (the lock held).
    private func use(_ id: String) -> UInt64 {
        tick += 1
        uses.append((id, tick))
        if head > 1024 && head * 2 > uses.count {  // drop the walked-past front
            uses.removeFirst(head)
            head = 0
        }
        if uses.count - head > 4 * entries.count + 1024 {  // mostly stale: keep each entry's last use only
            uses = uses[head...].filter { entries[$0.id]?.used == $0.tick || $0.id == id && $0.tick == tick }
            head = 0
        }
        return tick
    }

    /// The response stored under `id` (nil: none, or forgotten), marked as used.
    public func get(_ id: String) -> StoredResponse? {
        lock.withLock {
            guard var e = entries[id] else { return nil }
            e.used = use(id)
            entries[id] = e
            return e.response
        }
    }

    /// Forgets `id`; false when nothing was stored under it.
    @discardableResult
    public func delete(_ id: String) -> Bool {
        lock.withLock {
            guard let old = entries.removeValue(forKey: id) else { return false }
            bytes -= old.response.bytes
            return true
        }
    }
}

/// A Responses request's part in the store: where to keep its answer, the conversation the answer extends (chat
/// messages: a continued response's conversation, then this request's input), and its input items.
public final class ResponseRecord: @unchecked Sendable {
    let store: ResponseStore
    let conversation: [[String: Any]]
    let inputItems: [[String: Any]]

    init(store: ResponseStore, conversation: [[String: Any]], inputItems: [[String: Any]]) {
        self.store = store
        self.conversation = conversation
        self.inputItems = inputItems
    }

    /// Stores a finished response object (`status` completed or incomplete): the object as answered, the
    /// conversation with its output appended as the assistant's turn, the input items with ids where they had none.
    /// `idSuffix`: the renderer's (`CompletionRenderer.idSuffix`), which the input items' ids are made from.
    func save(_ object: [String: Any], idSuffix suffix: String) {
        guard let id = object["id"] as? String, let output = object["output"] as? [[String: Any]] else { return }
        // The output items read back as the next request's input items would be: the assistant's message, or its calls.
        var messages = conversation
        for (i, item) in output.enumerated() { try? ResponsesRequest.add(item, at: i, to: &messages) }
        let items = inputItems.enumerated().map { i, item -> [String: Any] in
            var item = item
            if item["id"] == nil {
                let prefix = switch item["type"] as? String { case "function_call": "fc"; case "function_call_output": "fco"; default: "msg" }
                item["id"] = "\(prefix)_\(suffix)_in\(i)"
            }
            return item
        }
        store.put(id, StoredResponse(object: OpenAIWire.data(object), conversation: OpenAIWire.data(messages), inputItems: OpenAIWire.data(items)))
    }
}

extension ResponseStore {
    /// `GET /v1/responses/{id}/input_items`: the stored request's input items as OpenAI lists them, `order` asc or
    /// desc (its default), at most `limit` (1-100, default 20) after the item `after` (nil: from the first). nil
    /// when no response is stored under `id`; throws on a bad query value.
    public func inputItemsPage(_ id: String, order: String?, limit: String?, after: String?) throws(ResponsesRequestError) -> Data? {
        let ascending: Bool
        switch order {
        case nil, "desc": ascending = false
        case "asc": ascending = true
        default: throw ResponsesRequestError("order", "order must be 'asc' or 'desc'")
        }
        var count = 20
        if let limit {
            guard let n = Int(limit), (1...100).contains(n) else { throw ResponsesRequestError("limit", "limit must be an integer from 1 to 100") }
            count = n
        }
        guard let stored = get(id) else { return nil }
        var items = (try? JSONSerialization.jsonObject(with: stored.inputItems)) as? [[String: Any]] ?? []
        if !ascending { items.reverse() }
        if let after {
            guard let k = items.firstIndex(where: { $0["id"] as? String == after }) else {
                throw ResponsesRequestError("after", "no input item '\(String(after.prefix(64)))' in response '\(String(id.prefix(64)))'")
            }
            items.removeFirst(k + 1)
        }
        let page = Array(items.prefix(count))
        let list: [String: Any] = ["object": "list", "data": page, "first_id": page.first?["id"] ?? NSNull(),
                                   "last_id": page.last?["id"] ?? NSNull(), "has_more": items.count > page.count]
        return OpenAIWire.data(list)
    }
}
