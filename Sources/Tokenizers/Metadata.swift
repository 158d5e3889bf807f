/// Typed key/value metadata, as GGUF files carry it (and as tokenizers and configs read it).
/// Tokenizers reads GGUF metadata through this protocol only, so it needs no checkpoint code: Models' GGUF
/// reader conforms (and its model-config builder reads through it too); tests use plain values.
public protocol MetadataSource {
    func string(_ key: String) -> String?
    func int(_ key: String) -> Int?
    func float(_ key: String) -> Double?
    func bool(_ key: String) -> Bool?
    func strings(_ key: String) -> [String]?
    func ints(_ key: String) -> [Int]?
    func floats(_ key: String) -> [Float]?
    func hasKey(_ key: String) -> Bool
}
