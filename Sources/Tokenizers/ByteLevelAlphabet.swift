/// GPT-2's reversible byte ↔ printable-character mapping (`bytes_to_unicode` in openai/gpt-2 `encoder.py`).
///
/// Byte-level BPE vocabularies spell every byte as one visible character: the printable Latin-1 bytes
/// `!`…`~`, `¡`…`¬`, `®`…`ÿ` stand for themselves, the other 68 bytes (controls, space, soft hyphen, …) are
/// shifted to U+0100 + n in byte order, so a space is `Ġ` (U+0120) and a newline `Ċ` (U+010A).
enum ByteLevelAlphabet {
    /// The character for each byte value.
    static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var shifted: UInt32 = 0
        for byte in 0..<256 {
            if isSelfMapped(byte) {
                table[byte] = Unicode.Scalar(UInt32(byte))!
            } else {
                table[byte] = Unicode.Scalar(256 + shifted)!
                shifted += 1
            }
        }
        return table
    }()

    /// The byte for each character value below `byteForScalar.count`, or -1 (not a byte-level character).
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar.value)] = Int16(byte) }
        return table
    }()

    private static func isSelfMapped(_ byte: Int) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }

    /// The bytes a byte-level token stands for, or nil when some character is outside the alphabet (HF's
    /// ByteLevel decoder then passes the token's own UTF-8 through, which is what added tokens rely on).
    static func bytes(ofToken token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            let v = Int(scalar.value)
            guard v < byteForScalar.count, byteForScalar[v] >= 0 else { return nil }
            out.append(UInt8(byteForScalar[v]))
        }
        return out
    }
}
