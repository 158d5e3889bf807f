import Foundation
import NIOCore
import Tokenizers

/// A request body read as one JSON object, by the replica server and the router alike, so both refuse a malformed
/// body with the same words: not empty, UTF-8 (RFC 8259: anything else is refused rather than repaired), parsed
/// strictly by the project's parser (`ExactJSON`: depth 256, integers kept apart from doubles, no key repeated in an
/// object, however deep, the outermost one's named as the parameter; no lone surrogate escape).
public enum RequestJSON {
    public static func object(_ body: ByteBuffer) throws -> [(key: String, value: ExactJSON)] {
        let bytes = body.readableBytesView
        guard !bytes.isEmpty else { throw APIError.invalid(nil, "the request body is empty; expected a JSON object") }
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw APIError.invalid(nil, "the request body is not valid UTF-8")
        }
        let root: ExactJSON
        do {
            root = try body.withUnsafeReadableBytes { try ExactJSON.parse($0, name: "request body", strict: true) }
        } catch let error as TokenizerError {
            throw APIError.invalid(nil, error.description)  // "invalid JSON: request body: ... at byte n"
        } catch {
            throw APIError.invalid(nil, "invalid JSON: \(error)")
        }
        guard case .object(let members) = root else { throw APIError.invalid(nil, "the request body must be a JSON object") }
        var keys = Set<String>()
        for (key, _) in members where !keys.insert(key).inserted {
            throw APIError.invalid(printable(key, limit: 64), "duplicate key '\(printable(key, limit: 64))'")
        }
        return members
    }
}
