/// `Authorization: Bearer <key>` checking (RFC 9110 §11.4, RFC 6750 §2.1).
public enum BearerKey {
    /// Whether `header` carries `key`: the scheme is matched case-insensitively (`bearer`, `BEARER`), one or
    /// more spaces may follow it, and the key is compared in time that depends only on the lengths (every
    /// byte is compared, no early exit), so a timing probe cannot find the key byte by byte.
    public static func matches(header: String, key: String) -> Bool {
        let h = Array(header.utf8)
        let scheme = Array("bearer".utf8)
        guard h.count > scheme.count, h[scheme.count] == UInt8(ascii: " ") else { return false }
        for i in 0..<scheme.count where h[i] | 0x20 != scheme[i] { return false }
        var start = scheme.count
        while start < h.count && h[start] == UInt8(ascii: " ") { start += 1 }
        let given = h[start...]
        let expected = Array(key.utf8)
        var diff = given.count == expected.count ? 0 : 1
        for i in 0..<expected.count {
            let g = i < given.count ? given[given.startIndex + i] : 0
            diff |= Int(g ^ expected[i])
        }
        return diff == 0
    }
}
