/// Typed key/value metadata, as GGUF files carry it (and as tokenizers and configs read it).
/// The GGUF reader conforms; tokenizer and model-config builders read through this protocol only.
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
