import Foundation

/// Loading an HF tokenizer directory: `tokenizer.json` (the `tokenizers` serialization), plus the optional
/// `tokenizer_config.json` (chat template, BOS/EOS names, `add_bos_token`), `generation_config.json` (extra EOS ids) and
/// the chat template's own file, `chat_template.jinja` (or `chat_template.json`), where transformers 4.43 and later save
/// it; as transformers loads them, that file's template takes precedence over tokenizer_config.json's.
extension Tokenizer {
    /// The largest chat template file read (a template is a few KB; the file is untrusted).
    static let maxChatTemplateBytes = 1 << 20

    /// Loads `tokenizer.json` (required), `tokenizer_config.json`, `generation_config.json` and `chat_template.jinja` or
    /// `chat_template.json` from a directory.
    public convenience init(directory: URL) throws {
        func read(_ name: String, required: Bool) throws -> Data? {
            let url = directory.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: url.path) else {
                if required { throw TokenizerError.unreadableFile(url.path) }
                return nil
            }
            if let problem = FileKind(path: url.path).problem { throw TokenizerError.unreadableFile("\(url.path): it \(problem)") }
            do { return try Data(contentsOf: url) } catch { throw TokenizerError.unreadableFile("\(url.path): \(error.localizedDescription)") }
        }
        func template(_ name: String) throws -> Data? {
            let url = directory.appendingPathComponent(name)
            guard let size = (try? FileManager.default.attributesOfItem(atPath: url.path))?[.size] as? Int else { return nil }
            guard size <= Tokenizer.maxChatTemplateBytes else {
                throw TokenizerError.invalidJSON("\(name) is \(size) bytes (a chat template of at most \(Tokenizer.maxChatTemplateBytes))")
            }
            return try read(name, required: false)
        }
        var chatTemplate: String?
        if let jinja = try template("chat_template.jinja") {
            guard let text = String(data: jinja, encoding: .utf8) else { throw TokenizerError.invalidJSON("chat_template.jinja is not UTF-8 text") }
            chatTemplate = text
        } else if let json = try template("chat_template.json") {
            guard let text = try TokenizerJSONLoader.chatTemplate(ExactJSONObject.parse(json, name: "chat_template.json")) else {
                throw TokenizerError.invalidJSON("chat_template.json has no chat_template")
            }
            chatTemplate = text
        }
        try self.init(
            tokenizerJSON: read("tokenizer.json", required: true)!,
            config: read("tokenizer_config.json", required: false),
            generationConfig: read("generation_config.json", required: false),
            modelConfig: read("config.json", required: false),
            chatTemplate: chatTemplate)
    }

    /// Builds a tokenizer from the contents of `tokenizer.json` and, optionally, `tokenizer_config.json` and
    /// `generation_config.json`; `chatTemplate` (a template file's) replaces the config's.
    ///
    /// Without a `generation_config.json`, transformers generates with the model config's own (`GenerationConfig
    /// .from_model_config`): `modelConfig`'s (config.json's) `eos_token_id`, one id or a list, stops generation then
    /// (entries that are not integers ignored, as the model config's reader ignores them; ids outside the vocabulary
    /// dropped, not refused: the model config is the model's file). The probe's model with `eos_token_id: [1, 258]`
    /// in config.json alone ran on to max_tokens past 258.
    public convenience init(tokenizerJSON: Data, config: Data? = nil, generationConfig: Data? = nil, modelConfig: Data? = nil,
                            chatTemplate: String? = nil) throws {
        let root = try ExactJSONObject.parse(tokenizerJSON, name: "tokenizer.json")
        let configObject = try config.map { try ExactJSONObject.parse($0, name: "tokenizer_config.json") }
        let generation = try generationConfig.map { try ExactJSONObject.parse($0, name: "generation_config.json") }
        var spec = try TokenizerJSONLoader.spec(root: root, config: configObject, generation: generation)
        if generation == nil, let model = modelConfig.flatMap({ try? ExactJSONObject.parse($0, name: "config.json") }) {
            var ids: [Int] = []
            if let one = try? model.int("eos_token_id") {
                ids = [one]
            } else if let list = try? model.array("eos_token_id") {
                ids = list.compactMap(ExactJSONObject.integer)
            }
            spec.eosIDs += ids.filter { spec.tokens.indices.contains($0) }
        }
        if let chatTemplate { spec.chatTemplate = chatTemplate }
        try self.init(spec: spec)
    }
}

/// A JSON object with typed accessors that throw one-line errors naming the key path. Keys match exactly.
struct ExactJSONObject {
    let members: [(key: String, value: ExactJSON)]
    let path: String

    static func parse(_ data: Data, name: String) throws -> ExactJSONObject {
        let value = try data.withUnsafeBytes { try ExactJSON.parse($0, name: name) }
        guard case .object(let members) = value else { throw TokenizerError.invalidJSON("\(name) is not a JSON object") }
        return ExactJSONObject(members: members, path: name)
    }

    /// The value for `key`; JSON null counts as absent.
    func value(_ key: String) -> ExactJSON? {
        guard let v = members.first(where: { $0.key.utf8.elementsEqual(key.utf8) })?.value else { return nil }
        if case .null = v { return nil }
        return v
    }

    func has(_ key: String) -> Bool { value(key) != nil }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard case .string(let s) = v else { throw TokenizerError.invalidJSON("\(path).\(key) is not a string") }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard case .bool(let b) = v else { throw TokenizerError.invalidJSON("\(path).\(key) is not a boolean") }
        return b
    }

    func int(_ key: String) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard let i = ExactJSONObject.integer(v) else { throw TokenizerError.invalidJSON("\(path).\(key) is not an integer") }
        return i
    }

    func double(_ key: String) throws -> Double? {
        switch value(key) {
        case nil: return nil
        case .int(let i)?: return Double(i)
        case .double(let d)?: return d
        default: throw TokenizerError.invalidJSON("\(path).\(key) is not a number")
        }
    }

    func object(_ key: String) throws -> ExactJSONObject? {
        guard let v = value(key) else { return nil }
        guard case .object(let m) = v else { throw TokenizerError.invalidJSON("\(path).\(key) is not an object") }
        return ExactJSONObject(members: m, path: "\(path).\(key)")
    }

    func array(_ key: String) throws -> [ExactJSON]? {
        guard let v = value(key) else { return nil }
        guard case .array(let a) = v else { throw TokenizerError.invalidJSON("\(path).\(key) is not an array") }
        return a
    }

    func objects(_ key: String) throws -> [ExactJSONObject]? {
        guard let a = try array(key) else { return nil }
        return try a.enumerated().map { i, v in
            guard case .object(let m) = v else { throw TokenizerError.invalidJSON("\(path).\(key)[\(i)] is not an object") }
            return ExactJSONObject(members: m, path: "\(path).\(key)[\(i)]")
        }
    }

    func requiredString(_ key: String) throws -> String {
        guard let s = try string(key) else { throw TokenizerError.missingField("\(path).\(key)") }
        return s
    }

    /// A token name as tokenizer_config.json writes it: a string or an AddedToken object `{"content": ...}`.
    func tokenName(_ key: String) throws -> String? {
        switch value(key) {
        case nil: return nil
        case .string(let s)?: return s
        case .object(let m)?: return try ExactJSONObject(members: m, path: "\(path).\(key)").requiredString("content")
        default: throw TokenizerError.invalidJSON("\(path).\(key) is neither a string nor a token object")
        }
    }

    /// An integer from a JSON number (rejecting fractions and values outside Int32).
    static func integer(_ v: ExactJSON) -> Int? {
        switch v {
        case .int(let i): return abs(i) <= Int(Int32.max) ? i : nil
        case .double(let d): return d.rounded() == d && abs(d) <= Double(Int32.max) ? Int(d) : nil
        default: return nil
        }
    }
}

enum TokenizerJSONLoader {
    static func spec(root: ExactJSONObject, config: ExactJSONObject?, generation: ExactJSONObject?) throws -> TokenizerSpec {
        guard let modelObject = try root.object("model") else { throw TokenizerError.missingField("tokenizer.json model") }
        let modelType = try modelObject.string("type") ?? "BPE"
        guard modelType == "BPE" else { throw TokenizerError.unsupported("tokenizer model type '\(modelType)' (only BPE)") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = try modelObject.string(key), !s.isEmpty { throw TokenizerError.unsupported("BPE \(key) '\(s)'") }
        }
        if let dropout = try modelObject.double("dropout"), dropout > 0 {
            throw TokenizerError.unsupported("BPE dropout \(dropout)")
        }

        // Vocabulary and added tokens → one id-indexed table.
        guard let vocab = try modelObject.object("vocab") else { throw TokenizerError.missingField("tokenizer.json model.vocab") }
        let addedObjects = try root.objects("added_tokens") ?? []
        let limit = vocab.members.count + addedObjects.count + 1024
        var byID: [Int: String] = [:]
        byID.reserveCapacity(vocab.members.count)
        for (token, value) in vocab.members {
            guard let id = ExactJSONObject.integer(value), id >= 0, id < limit else {
                throw TokenizerError.invalidVocabulary("model.vocab['\(token)'] has an invalid id")
            }
            if let other = byID[id] { throw TokenizerError.invalidVocabulary("id \(id) is both '\(other)' and '\(token)'") }
            byID[id] = token
        }
        var added: [AddedToken] = []
        for object in addedObjects {
            guard let id = try object.int("id"), id >= 0, id < limit else {
                throw TokenizerError.invalidVocabulary("\(object.path).id is missing or out of range")
            }
            let content = try object.requiredString("content")
            added.append(AddedToken(
                content: content, id: id, special: try object.bool("special") ?? false,
                lstrip: try object.bool("lstrip") ?? false, rstrip: try object.bool("rstrip") ?? false,
                singleWord: try object.bool("single_word") ?? false))
        }
        let size = max((byID.keys.max() ?? -1), (added.map(\.id).max() ?? -1)) + 1
        var tokens = [String](repeating: "", count: size)
        var kinds = [TokenKind](repeating: .unused, count: size)
        for (id, token) in byID {
            tokens[id] = token
            kinds[id] = .normal
        }

        var spec = TokenizerSpec(model: .byteLevelBPE, tokens: [], kinds: [])

        // Pipeline stages.
        if let normalizer = try root.object("normalizer") { spec.normalizers = try normalizers(normalizer) }
        var sawByteLevel = false
        if let pre = try root.object("pre_tokenizer") { try preTokenizer(pre, into: &spec, sawByteLevel: &sawByteLevel) }
        guard let decoderObject = try root.object("decoder") else { throw TokenizerError.unsupported("tokenizer.json without a decoder") }
        var fused = false
        try decoder(decoderObject, into: &spec.decoder, fused: &fused)

        spec.byteFallback = try modelObject.bool("byte_fallback") ?? false
        spec.fuseUnknown = try modelObject.bool("fuse_unk") ?? false
        spec.ignoreMerges = try modelObject.bool("ignore_merges") ?? false
        if sawByteLevel || spec.decoder.byteLevel {
            guard spec.decoder.byteLevel else { throw TokenizerError.unsupported("ByteLevel pre-tokenizer without a ByteLevel decoder") }
            spec.model = .byteLevelBPE
        } else if spec.byteFallback || spec.metaspace != nil || spec.decoder.replaceMetaspace {
            spec.model = .sentencePieceBPE
        } else {
            throw TokenizerError.unsupported("BPE tokenizer that is neither byte-level nor SentencePiece-style")
        }
        if spec.model == .sentencePieceBPE && spec.byteFallback {
            for (id, token) in byID where Tokenizer.fallbackByte(token) != nil { kinds[id] = .byte }
        }
        var tokenToID: [ExactString: Int] = [:]
        tokenToID.reserveCapacity(byID.count)
        for (id, token) in byID { tokenToID[ExactString(token)] = id }
        let nameToID: (String) -> Int? = { name in
            added.first(where: { $0.content.utf8.elementsEqual(name.utf8) })?.id ?? tokenToID[ExactString(name)]
        }
        if let unk = try modelObject.string("unk_token") {
            guard let id = nameToID(unk) else {
                throw TokenizerError.invalidVocabulary("unk_token '\(unk)' is not in the vocabulary")
            }
            spec.unknownID = id
        }
        for token in added {
            tokens[token.id] = token.content
            kinds[token.id] = token.special ? .control : .userDefined
        }
        if let unk = spec.unknownID { kinds[unk] = .unknown }
        spec.tokens = tokens
        spec.kinds = kinds
        spec.added = added

        // Merges: "a b" strings (classic) or ["a", "b"] pairs (tokenizers ≥ 0.20).
        let mergeList = try modelObject.array("merges") ?? []
        for (rank, entry) in mergeList.enumerated() {
            var pair: [String] = []
            switch entry {
            case .string(let s):
                pair = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            case .array(let elements):
                for e in elements {
                    if case .string(let s) = e { pair.append(s) } else { pair = []; break }
                }
            default:
                break
            }
            guard pair.count == 2 else {
                throw TokenizerError.invalidVocabulary("model.merges[\(rank)] is neither \"a b\" nor [\"a\", \"b\"]")
            }
            guard let left = tokenToID[ExactString(pair[0])], let right = tokenToID[ExactString(pair[1])] else {
                throw TokenizerError.invalidVocabulary("model.merges[\(rank)] '\(pair[0]) \(pair[1])' names a token not in the vocabulary")
            }
            guard let merged = tokenToID[ExactString(pair[0] + pair[1])] else {
                throw TokenizerError.invalidVocabulary("model.merges[\(rank)] result '\(pair[0] + pair[1])' is not in the vocabulary")
            }
            spec.merges.add(left: Int32(left), right: Int32(right), rank: Int32(rank), merged: Int32(merged))
        }

        // Special ids: post-processor, then tokenizer_config.json / generation_config.json.
        if let post = try root.object("post_processor") {
            try postProcessor(post, into: &spec, tokens: tokens)
        }
        if let config {
            if let template = try chatTemplate(config) { spec.chatTemplate = template }
            if let bos = try config.tokenName("bos_token") {
                guard let id = nameToID(bos) else { throw TokenizerError.invalidVocabulary("bos_token '\(bos)' is not in the vocabulary") }
                spec.bosID = id
            }
            if let eos = try config.tokenName("eos_token") {
                guard let id = nameToID(eos) else { throw TokenizerError.invalidVocabulary("eos_token '\(eos)' is not in the vocabulary") }
                spec.eosIDs = [id]
            }
            if let addBOS = try config.bool("add_bos_token"), let bos = spec.bosID {
                spec.prefixIDs.removeAll { $0 == bos }
                if addBOS { spec.prefixIDs.insert(bos, at: 0) }
            }
            if let addEOS = try config.bool("add_eos_token"), let eos = spec.eosIDs.first {
                spec.suffixIDs.removeAll { $0 == eos }
                if addEOS { spec.suffixIDs.append(eos) }
            }
        }
        if spec.bosID == nil, spec.prefixIDs.count == 1 { spec.bosID = spec.prefixIDs[0] }
        if let generation {
            if let one = try? generation.int("eos_token_id") {
                spec.eosIDs.append(one)
            } else if let many = try generation.array("eos_token_id") {
                for v in many {
                    guard let id = ExactJSONObject.integer(v) else { throw TokenizerError.invalidJSON("generation_config.json eos_token_id") }
                    spec.eosIDs.append(id)
                }
            }
        }
        return spec
    }

    /// `chat_template`: a string, or a list of named templates (the one named "default" is used).
    static func chatTemplate(_ config: ExactJSONObject) throws -> String? {
        if let s = try? config.string("chat_template") { return s }
        guard let list = try config.objects("chat_template") else { return nil }
        let named = try list.map { (try $0.string("name"), try $0.string("template")) }
        return (named.first { $0.0 == "default" } ?? named.first)?.1
    }

    static func normalizers(_ object: ExactJSONObject) throws -> [Normalization] {
        let type = try object.requiredString("type")
        switch type {
        case "Sequence":
            return try (object.objects("normalizers") ?? []).flatMap { try normalizers($0) }
        case "NFC": return [.nfc]
        case "NFD": return [.nfd]
        case "NFKC": return [.nfkc]
        case "NFKD": return [.nfkd]
        case "Lowercase": return [.lowercase]
        case "Prepend": return [.prepend(try object.requiredString("prepend"))]
        case "Replace":
            guard let pattern = try object.object("pattern"), let s = try pattern.string("String") else {
                throw TokenizerError.unsupported("Replace normalizer with a regex pattern")
            }
            return [.replace(s, with: try object.requiredString("content"))]
        default:
            throw TokenizerError.unsupported("normalizer '\(type)'")
        }
    }

    static func preTokenizer(_ object: ExactJSONObject, into spec: inout TokenizerSpec, sawByteLevel: inout Bool) throws {
        let type = try object.requiredString("type")
        switch type {
        case "Sequence":
            for step in try object.objects("pretokenizers") ?? [] { try preTokenizer(step, into: &spec, sawByteLevel: &sawByteLevel) }
        case "ByteLevel":
            sawByteLevel = true
            if try object.bool("add_prefix_space") ?? false {
                // HF adds the space to each piece reaching this step: only whole segments are supported.
                guard spec.preTokenizer.isEmpty else { throw TokenizerError.unsupported("ByteLevel add_prefix_space after a split") }
                spec.byteLevelPrefixSpace = true
            }
            if try object.bool("use_regex") ?? true { spec.preTokenizer.append(.split(.gpt2)) }
        case "Split":
            guard let pattern = try object.object("pattern"), let regex = try pattern.string("Regex") else {
                throw TokenizerError.unsupported("Split pre-tokenizer without a Regex pattern")
            }
            guard let split = SplitPattern(regex: regex) else { throw TokenizerError.unsupported("Split regex \(regex)") }
            let behavior = try object.string("behavior") ?? "Isolated"
            guard behavior == "Isolated", !(try object.bool("invert") ?? false) else {
                throw TokenizerError.unsupported("Split behavior '\(behavior)' / invert")
            }
            spec.preTokenizer.append(.split(split))
        case "Digits":
            spec.preTokenizer.append(.digits(individual: try object.bool("individual_digits") ?? false))
        case "Metaspace":
            guard spec.preTokenizer.isEmpty, spec.metaspace == nil else {
                throw TokenizerError.unsupported("Metaspace after another pre-tokenizer step")
            }
            let replacement = try object.string("replacement") ?? "\u{2581}"
            guard replacement.unicodeScalars.count == 1, let scalar = replacement.unicodeScalars.first else {
                throw TokenizerError.unsupported("Metaspace replacement '\(replacement)'")
            }
            var metaspace = Metaspace(replacement: scalar)
            if let scheme = try object.string("prepend_scheme") {
                switch scheme {
                case "always": metaspace.prependScheme = .always
                case "first": metaspace.prependScheme = .first
                case "never": metaspace.prependScheme = .never
                default: throw TokenizerError.unsupported("Metaspace prepend_scheme '\(scheme)'")
                }
            } else {
                metaspace.prependScheme = (try object.bool("add_prefix_space") ?? true) ? .always : .never
            }
            spec.metaspace = metaspace
            if try object.bool("split") ?? true { spec.preTokenizer.append(.splitBefore(scalar)) }
        default:
            throw TokenizerError.unsupported("pre-tokenizer '\(type)'")
        }
    }

    static func decoder(_ object: ExactJSONObject, into style: inout DecoderStyle, fused: inout Bool) throws {
        let type = try object.requiredString("type")
        switch type {
        case "Sequence":
            for step in try object.objects("decoders") ?? [] { try decoder(step, into: &style, fused: &fused) }
        case "ByteLevel": style.byteLevel = true
        case "ByteFallback": style.byteFallback = true
        case "Fuse": fused = true
        case "Replace":
            guard let pattern = try object.object("pattern"), try pattern.string("String") == "\u{2581}",
                  try object.string("content") == " " else {
                throw TokenizerError.unsupported("Replace decoder other than '▁' → ' '")
            }
            style.replaceMetaspace = true
        case "Strip":
            guard try object.string("content") == " ", (try object.int("stop") ?? 0) == 0, fused else {
                throw TokenizerError.unsupported("Strip decoder other than leading spaces after Fuse")
            }
            style.stripLeadingSpaces = try object.int("start") ?? 0
        case "Metaspace":
            style.replaceMetaspace = true
            if let scheme = try object.string("prepend_scheme") {
                style.metaspaceFirstToken = scheme != "never"
            } else {
                style.metaspaceFirstToken = try object.bool("add_prefix_space") ?? true
            }
        default:
            throw TokenizerError.unsupported("decoder '\(type)'")
        }
    }

    static func postProcessor(_ object: ExactJSONObject, into spec: inout TokenizerSpec, tokens: [String]) throws {
        let type = try object.requiredString("type")
        switch type {
        case "Sequence":
            for step in try object.objects("processors") ?? [] { try postProcessor(step, into: &spec, tokens: tokens) }
        case "ByteLevel":
            break
        case "TemplateProcessing":
            let specials = try object.object("special_tokens")
            var beforeSequence = true
            for (i, element) in (try object.objects("single") ?? []).enumerated() {
                if element.has("Sequence") {
                    beforeSequence = false
                } else if let special = try element.object("SpecialToken"), let name = try special.string("id") {
                    guard let entry = try specials?.object(name), let ids = try entry.array("ids") else {
                        throw TokenizerError.invalidVocabulary("post_processor special token '\(name)' has no ids")
                    }
                    let list = try ids.map { v -> Int in
                        guard let id = ExactJSONObject.integer(v), tokens.indices.contains(id) else {
                            throw TokenizerError.invalidVocabulary("post_processor special token '\(name)' id out of range")
                        }
                        return id
                    }
                    if beforeSequence { spec.prefixIDs += list } else { spec.suffixIDs += list }
                } else {
                    throw TokenizerError.invalidJSON("post_processor.single[\(i)] is neither Sequence nor SpecialToken")
                }
            }
        case "RobertaProcessing", "BertProcessing":
            func pair(_ key: String) throws -> Int {
                guard let a = try object.array(key), a.count == 2, let id = ExactJSONObject.integer(a[1]), tokens.indices.contains(id) else {
                    throw TokenizerError.invalidJSON("post_processor.\(key)")
                }
                return id
            }
            spec.prefixIDs.append(try pair("cls"))
            spec.suffixIDs.append(try pair("sep"))
        default:
            throw TokenizerError.unsupported("post-processor '\(type)'")
        }
    }
}
