/// Loading a tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), as llama.cpp's
/// `convert_hf_to_gguf.py` writes it.
extension Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    ///
    /// `tokenizer.ggml.model` `gpt2` is byte-level BPE with ranked `merges` and a `pre` pre-tokenizer name;
    /// `llama` is SentencePiece BPE, where a pair merges when the concatenation is a token and the highest
    /// `scores` entry goes first. `token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    public convenience init(metadata: any MetadataSource) throws {
        try self.init(spec: GGUFTokenizerLoader.spec(metadata))
    }
}

enum GGUFTokenizerLoader {
    static let prefix = "tokenizer.ggml."

    static func spec(_ m: any MetadataSource) throws -> TokenizerSpec {
        guard let modelName = m.string(prefix + "model") else { throw TokenizerError.missingField(prefix + "model") }
        let model: Tokenizer.Model
        switch modelName {
        case "gpt2": model = .byteLevelBPE
        case "llama": model = .sentencePieceBPE
        default: throw TokenizerError.unsupported("\(prefix)model '\(modelName)' (gpt2 or llama)")
        }
        guard let tokens = m.strings(prefix + "tokens") else { throw TokenizerError.missingField(prefix + "tokens") }
        let count = tokens.count
        guard count > 0 else { throw TokenizerError.invalidVocabulary("\(prefix)tokens is empty") }

        var kinds = [TokenKind](repeating: .normal, count: count)
        if let types = m.ints(prefix + "token_type") {
            guard types.count == count else {
                throw TokenizerError.invalidVocabulary("\(prefix)token_type has \(types.count) entries for \(count) tokens")
            }
            for (id, t) in types.enumerated() {
                guard let kind = TokenKind(rawValue: UInt8(clamping: max(0, t))), t >= 1 else {
                    throw TokenizerError.invalidVocabulary("\(prefix)token_type[\(id)] = \(t) is not 1...6")
                }
                kinds[id] = kind
            }
        }
        func tokenID(_ key: String) throws -> Int? {
            guard let id = m.int(prefix + key) else { return nil }
            guard (0..<count).contains(id) else {
                throw TokenizerError.invalidVocabulary("\(prefix)\(key) \(id) out of range 0..<\(count)")
            }
            return id
        }

        var spec = TokenizerSpec(model: model, tokens: tokens, kinds: kinds)
        spec.bosID = try tokenID("bos_token_id")
        spec.unknownID = try tokenID("unknown_token_id")
        if let eos = try tokenID("eos_token_id") { spec.eosIDs.append(eos) }
        for key in ["eot_token_id", "eom_token_id"] {
            if let id = try tokenID(key), !spec.eosIDs.contains(id) { spec.eosIDs.append(id) }
        }
        if let unk = spec.unknownID, spec.kinds[unk] == .normal { spec.kinds[unk] = .unknown }
        spec.chatTemplate = m.string("tokenizer.chat_template")

        // Control, user-defined and unknown tokens are cut out of the text before BPE (llama.cpp
        // `tokenizer_st_partition`); user-defined ones always, the others only when parsing special tokens.
        for (id, kind) in spec.kinds.enumerated() where kind == .control || kind == .userDefined || kind == .unknown {
            spec.added.append(AddedToken(content: tokens[id], id: id, special: kind != .userDefined))
        }

        var addBOS: Bool
        switch model {
        case .byteLevelBPE:
            let pre = m.string(prefix + "pre") ?? "default"
            let (steps, ignoreMerges, llama3) = try preTokenizer(pre)
            spec.preTokenizer = steps
            spec.ignoreMerges = ignoreMerges
            spec.decoder.byteLevel = true
            addBOS = llama3
            spec.merges = try rankedMerges(m.strings(prefix + "merges") ?? [], tokens: tokens)
        case .sentencePieceBPE:
            let scores = m.floats(prefix + "scores") ?? [Float](repeating: 0, count: count)
            guard scores.count == count else {
                throw TokenizerError.invalidVocabulary("\(prefix)scores has \(scores.count) entries for \(count) tokens")
            }
            if m.bool(prefix + "add_space_prefix") ?? true { spec.normalizers.append(.prepend("\u{2581}")) }
            spec.normalizers.append(.replace(" ", with: "\u{2581}"))
            spec.byteFallback = true
            spec.decoder = DecoderStyle(replaceMetaspace: true, byteFallback: true,
                                        stripLeadingSpaces: (m.bool(prefix + "add_space_prefix") ?? true) ? 1 : 0)
            spec.merges = scoredMerges(tokens: tokens, kinds: spec.kinds, scores: scores)
            addBOS = true
        }
        addBOS = m.bool(prefix + "add_bos_token") ?? addBOS
        if addBOS, let bos = spec.bosID { spec.prefixIDs = [bos] }
        if m.bool(prefix + "add_eos_token") ?? false, let eos = spec.eosIDs.first { spec.suffixIDs = [eos] }
        return spec
    }

    /// The split for a GGUF `tokenizer.ggml.pre` name, whether whole-word vocabulary hits skip the merges
    /// (llama.cpp `ignore_merges`), and whether the family adds a BOS by default.
    ///
    /// "default" and "gpt2" use the GPT-2 regex, as HF's ByteLevel does (llama.cpp's own "default" split differs).
    static func preTokenizer(_ pre: String) throws -> ([PreTokenizerStep], ignoreMerges: Bool, llama3: Bool) {
        switch pre {
        case "default", "gpt2", "gpt-2", "mpt", "olmo", "jais":
            return ([.split(.gpt2)], false, false)
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral":
            return ([.split(.llama3(maxDigits: 3))], true, true)
        case "dbrx", "smaug-bpe":
            return ([.split(.llama3(maxDigits: 3))], false, false)
        case "qwen2", "deepseek-r1-qwen", "stablelm2":
            return ([.split(.llama3(maxDigits: 1))], false, false)
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva":
            // HF: Sequence[Digits(individual_digits), ByteLevel]; llama.cpp: `\p{N}` then the GPT-2 regex.
            return ([.digits(individual: true), .split(.gpt2)], false, false)
        default:
            throw TokenizerError.unsupported("\(prefix)pre '\(pre)'")
        }
    }

    /// GGUF `gpt2` merges: "left right" strings, ranked by position.
    static func rankedMerges(_ merges: [String], tokens: [String]) throws -> MergeTable {
        var ids: [ExactString: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (id, t) in tokens.enumerated() where ids[ExactString(t)] == nil { ids[ExactString(t)] = id }
        var table = MergeTable()
        for (rank, merge) in merges.enumerated() {
            let parts = merge.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw TokenizerError.invalidVocabulary("\(prefix)merges[\(rank)] '\(merge)' is not a pair") }
            let left = String(parts[0]), right = String(parts[1])
            guard let l = ids[ExactString(left)], let r = ids[ExactString(right)] else {
                throw TokenizerError.invalidVocabulary("\(prefix)merges[\(rank)] '\(merge)' names a token not in the vocabulary")
            }
            guard let merged = ids[ExactString(left + right)] else {
                throw TokenizerError.invalidVocabulary("\(prefix)merges[\(rank)] result '\(left + right)' is not in the vocabulary")
            }
            table.add(left: Int32(l), right: Int32(r), rank: Int32(rank), merged: Int32(merged))
        }
        return table
    }

    /// SentencePiece BPE merges from scores: every split of a token into two tokens is a merge whose priority is
    /// the token's score (higher first). Equal scores share a rank; the merge loop then prefers the leftmost pair.
    static func scoredMerges(tokens: [String], kinds: [TokenKind], scores: [Float]) -> MergeTable {
        func mergeable(_ k: TokenKind) -> Bool { k == .normal || k == .userDefined || k == .unused }
        var ids: [ExactString: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (id, t) in tokens.enumerated() where mergeable(kinds[id]) && ids[ExactString(t)] == nil { ids[ExactString(t)] = id }
        var candidates: [(score: Float, left: Int32, right: Int32, merged: Int32)] = []
        for (id, token) in tokens.enumerated() where mergeable(kinds[id]) {
            let scalars = Array(token.unicodeScalars)
            guard scalars.count > 1 else { continue }
            for k in 1..<scalars.count {
                let left = String(scalars: scalars[..<k])
                let right = String(scalars: scalars[k...])
                if let l = ids[ExactString(left)], let r = ids[ExactString(right)] {
                    candidates.append((scores[id].isNaN ? -.infinity : scores[id], Int32(l), Int32(r), Int32(id)))
                }
            }
        }
        candidates.sort { $0.score > $1.score || ($0.score == $1.score && $0.merged < $1.merged) }
        var table = MergeTable()
        var rank: Int32 = -1
        var previous: Float?
        for c in candidates {
            if previous != c.score { rank += 1; previous = c.score }
            table.add(left: c.left, right: c.right, rank: rank, merged: c.merged)
        }
        return table
    }
}
