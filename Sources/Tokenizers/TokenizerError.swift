/// Why a tokenizer could not be built or a chat could not be rendered. Each case carries one line that names the
/// file, key or value at fault; `description` is that line.
public enum TokenizerError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A file is missing or unreadable.
    case unreadableFile(String)
    /// The JSON is malformed or a value has the wrong shape.
    case invalidJSON(String)
    /// A required key or field is absent.
    case missingField(String)
    /// The data is well formed but uses a feature this implementation does not have.
    case unsupported(String)
    /// Vocabulary, merges or special-token ids are inconsistent (unknown token, id out of range, ...).
    case invalidVocabulary(String)
    /// A chat message's role is not one the template knows.
    case unknownRole(String)
    /// The conversation breaks the template's rules (empty, roles not alternating, ...).
    case invalidConversation(String)

    public var description: String {
        switch self {
        case .unreadableFile(let m): "tokenizer: cannot read \(m)"
        case .invalidJSON(let m): "invalid JSON: \(m)"  // m names its source (ExactJSON parses more than tokenizer files)
        case .missingField(let m): "tokenizer: missing \(m)"
        case .unsupported(let m): "tokenizer: unsupported \(m)"
        case .invalidVocabulary(let m): "tokenizer: invalid vocabulary: \(m)"
        case .unknownRole(let m): "chat template: unknown role '\(m)'"
        case .invalidConversation(let m): "chat template: \(m)"
        }
    }
}
