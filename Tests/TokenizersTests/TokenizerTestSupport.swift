import Foundation
import Models
import Testing
import TestSupport
@testable import Tokenizers

/// Fixtures from `tools/gen_tokenizer_goldens.py` (see Tests/Fixtures/tokenizers/README.md).
enum TokenizerFixtures {
    static let root = FixtureFiles.tokenizers

    static func directory(_ name: String) -> URL { root.appendingPathComponent(name) }

    static func goldens(_ name: String) throws -> TokenizerGoldens {
        try FixtureFiles.decodeGolden(TokenizerGoldens.self, at: directory(name).appendingPathComponent("goldens.json"))
    }

    static func ggufMetadata(_ name: String) throws -> TokenizerTestMetadata {
        try TokenizerTestMetadata(json: Data(contentsOf: directory(name).appendingPathComponent("gguf_metadata.json")))
    }

    static func chatTemplates() throws -> ChatTemplateGoldens {
        try FixtureFiles.decodeGolden(ChatTemplateGoldens.self, at: root.appendingPathComponent("chat_templates.json"))
    }

    /// SmolLM2's tokenizer metadata from the default model (not in the repository: `scripts/fetch-model.sh`
    /// puts it where `DefaultModel` finds it), read once (the file's metadata section is ~2 MB). Absent, `get()`
    /// throws `DefaultModel.Missing`, which names the path and the script: the test fails, it is not skipped.
    static let smolLM2Metadata: Result<TokenizerTestMetadata, any Error> = Result {
        try TokenizerTestGGUFReader.read(path: DefaultModel.require())
    }
}

struct TokenizerGoldens: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
        let idsAddSpecial: [Int]
        let decoded: String
        let decodedSkipSpecial: String
        /// sentencepiece's own ids (tiny-spm*), present where they are the reference for the GGUF path.
        let spmIds: [Int]?
        /// transformers' GGUF tokenizer ids where they deviate (SmolLM2).
        let transformersGgufIds: [Int]?
    }
    struct Chat: Decodable {
        let messages: [ChatMessage]
        let addGenerationPrompt: Bool
        let rendered: String
        let ids: [Int]
    }
    let tokenizer: String
    let vocabSize: Int
    let bosId: Int
    let eosId: Int
    let cases: [Case]
    let chat: [Chat]?
}

struct ChatTemplateGoldens: Decodable {
    struct Case: Decodable {
        let messages: [ChatMessage]
        let addGenerationPrompt: Bool
        let rendered: String?
        let error: String?
    }
    struct Entry: Decodable {
        let name: String
        let kind: String
        let template: String
        let bosToken: String
        let eosToken: String
        let cases: [Case]
    }
    let templates: [Entry]
}

/// A `MetadataSource` over plain values: what tests use instead of a GGUF file.
struct TokenizerTestMetadata: MetadataSource {
    enum Value: Decodable {
        case bool(Bool), int(Int), float(Double), string(String)
        case ints([Int]), floats([Double]), strings([String])

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let v = try? c.decode(Bool.self) { self = .bool(v) }
            else if let v = try? c.decode(Int.self) { self = .int(v) }
            else if let v = try? c.decode(Double.self) { self = .float(v) }
            else if let v = try? c.decode(String.self) { self = .string(v) }
            else if let v = try? c.decode([Int].self) { self = .ints(v) }
            else if let v = try? c.decode([Double].self) { self = .floats(v) }
            else { self = .strings(try c.decode([String].self)) }
        }
    }

    var values: [String: Value]

    init(_ values: [String: Value]) { self.values = values }

    init(json: Data) throws { values = try JSONDecoder().decode([String: Value].self, from: json) }

    func string(_ key: String) -> String? { if case .string(let v)? = values[key] { v } else { nil } }
    func int(_ key: String) -> Int? { if case .int(let v)? = values[key] { v } else { nil } }
    func float(_ key: String) -> Double? {
        switch values[key] {
        case .float(let v)?: v
        case .int(let v)?: Double(v)
        default: nil
        }
    }
    func bool(_ key: String) -> Bool? { if case .bool(let v)? = values[key] { v } else { nil } }
    func strings(_ key: String) -> [String]? { if case .strings(let v)? = values[key] { v } else { nil } }
    func ints(_ key: String) -> [Int]? { if case .ints(let v)? = values[key] { v } else { nil } }
    func floats(_ key: String) -> [Float]? {
        switch values[key] {
        case .floats(let v)?: v.map(Float.init)
        case .ints(let v)?: v.map(Float.init)
        default: nil
        }
    }
    func hasKey(_ key: String) -> Bool { values[key] != nil }
}

/// Reads the key/value section of a GGUF file (header, then `kv_count` typed entries; GGUF v2/v3, little-endian).
/// A test-only stand-in until the Models GGUF reader exists; tensors are not read.
enum TokenizerTestGGUFReader {
    struct FormatError: Error, CustomStringConvertible { let description: String }

    static func read(path: String) throws -> TokenizerTestMetadata {
        let data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        return try data.withUnsafeBytes { raw -> TokenizerTestMetadata in
            var p = 0
            func take<T: FixedWidthInteger>(_: T.Type) throws -> T {
                guard p + MemoryLayout<T>.size <= raw.count else { throw FormatError(description: "truncated at \(p)") }
                let v = raw.loadUnaligned(fromByteOffset: p, as: T.self)
                p += MemoryLayout<T>.size
                return T(littleEndian: v)
            }
            func string() throws -> String {
                let n = Int(try take(UInt64.self))
                guard n >= 0, p + n <= raw.count else { throw FormatError(description: "bad string length at \(p)") }
                let s = String(decoding: raw[p..<(p + n)], as: UTF8.self)
                p += n
                return s
            }
            func scalar(_ type: UInt32) throws -> TokenizerTestMetadata.Value {
                switch type {
                case 0: .int(Int(try take(UInt8.self)))
                case 1: .int(Int(try take(Int8.self)))
                case 2: .int(Int(try take(UInt16.self)))
                case 3: .int(Int(try take(Int16.self)))
                case 4: .int(Int(try take(UInt32.self)))
                case 5: .int(Int(try take(Int32.self)))
                case 6: .float(Double(Float(bitPattern: try take(UInt32.self))))
                case 7: .bool(try take(UInt8.self) != 0)
                case 8: .string(try string())
                case 10: .int(Int(try take(UInt64.self)))
                case 11: .int(Int(try take(Int64.self)))
                case 12: .float(Double(bitPattern: try take(UInt64.self)))
                default: throw FormatError(description: "unknown GGUF value type \(type)")
                }
            }
            guard try take(UInt32.self) == 0x4655_4747 else { throw FormatError(description: "not a GGUF file") }
            let version = try take(UInt32.self)
            guard version == 2 || version == 3 else { throw FormatError(description: "GGUF version \(version)") }
            _ = try take(UInt64.self)  // tensor count
            let kvCount = try take(UInt64.self)
            var values: [String: TokenizerTestMetadata.Value] = [:]
            for _ in 0..<kvCount {
                let key = try string()
                let type = try take(UInt32.self)
                if type == 9 {
                    let elementType = try take(UInt32.self)
                    let n = Int(try take(UInt64.self))
                    var ints: [Int] = [], floats: [Double] = [], strings: [String] = []
                    for _ in 0..<n {
                        switch try scalar(elementType) {
                        case .int(let v): ints.append(v)
                        case .bool(let v): ints.append(v ? 1 : 0)
                        case .float(let v): floats.append(v)
                        case .string(let v): strings.append(v)
                        default: throw FormatError(description: "nested array in \(key)")
                        }
                    }
                    values[key] = elementType == 8 ? .strings(strings) : (elementType == 6 || elementType == 12) ? .floats(floats) : .ints(ints)
                } else {
                    values[key] = try scalar(type)
                }
            }
            return TokenizerTestMetadata(values)
        }
    }
}

extension TokenizerFixtures {
    /// Feeds `ids` one at a time; returns the pieces (the last one from `finish()`).
    static func streamPieces(_ tokenizer: Tokenizer, _ ids: [Int], skipSpecial: Bool) -> [String] {
        var stream = StreamingDetokenizer(tokenizer: tokenizer, skipSpecial: skipSpecial)
        var pieces = ids.map { stream.append($0) }
        pieces.append(stream.finish())
        return pieces
    }
}
