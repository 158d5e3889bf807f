/// An added (or special/control) token that is recognized in raw text before any normalization.
struct AddedToken: Sendable, Equatable {
    var content: String
    var id: Int
    /// Control/special tokens are skipped by `decode(skipSpecial: true)` and matched only with `parseSpecial`.
    var special: Bool
    /// HF `lstrip` / `rstrip`: whitespace on that side is swallowed by the token.
    var lstrip = false
    var rstrip = false
    /// HF `single_word`: only matched when not inside a word.
    var singleWord = false
}

/// A piece of input after the added tokens have been cut out.
enum TextSegment: Equatable {
    case text(Range<Int>)  // scalar range of the input
    case token(Int)
}

/// Finds added tokens in text: leftmost match, longest at that position (HF `AddedVocabulary`, llama.cpp
/// `tokenizer_st_partition`). A trie over Unicode scalars keeps the scan linear in the text length.
struct AddedTokenMatcher: Sendable {
    private struct Node: Sendable {
        var children: [UInt32: Int32] = [:]
        var token: Int32 = -1  // index into `tokens`
    }

    private var nodes: [Node] = [Node()]
    private(set) var tokens: [AddedToken] = []

    var isEmpty: Bool { tokens.isEmpty }

    init(_ tokens: [AddedToken]) {
        for token in tokens where !token.content.isEmpty {
            var node = 0
            for scalar in token.content.unicodeScalars {
                if let child = nodes[node].children[scalar.value] {
                    node = Int(child)
                } else {
                    nodes.append(Node())
                    nodes[node].children[scalar.value] = Int32(nodes.count - 1)
                    node = nodes.count - 1
                }
            }
            if nodes[node].token < 0 {
                nodes[node].token = Int32(self.tokens.count)
                self.tokens.append(token)
            }
        }
    }

    /// Splits `scalars` into text ranges and token ids. Special tokens are matched only if `parseSpecial`, and
    /// never where a match would overlap a `literal` range (ascending, disjoint scalar ranges: chat content).
    func segment(_ scalars: [Unicode.Scalar], parseSpecial: Bool, literal: [Range<Int>] = [], into out: inout [TextSegment]) {
        out.removeAll(keepingCapacity: true)
        var textStart = 0
        var i = 0
        let n = scalars.count
        var nextLiteral = 0
        while i < n {
            while nextLiteral < literal.count && literal[nextLiteral].upperBound <= i { nextLiteral += 1 }
            // A special token may end at the start of the next literal range at the latest (none inside one).
            let specialEnd = nextLiteral < literal.count ? literal[nextLiteral].lowerBound : n
            var node = 0
            var k = i
            var best: (token: AddedToken, end: Int)?
            while k < n, let child = nodes[node].children[scalars[k].value] {
                node = Int(child)
                k += 1
                let t = nodes[node].token
                if t >= 0 {
                    let token = tokens[Int(t)]
                    if (!token.special || (parseSpecial && k <= specialEnd)) && (!token.singleWord || isWordBoundary(scalars, i, k)) {
                        best = (token, k)
                    }
                }
            }
            guard let (token, end) = best else {
                i += 1
                continue
            }
            var textEnd = i
            if token.lstrip {
                while textEnd > textStart && scalars[textEnd - 1].properties.isWhitespace { textEnd -= 1 }
            }
            if textEnd > textStart { out.append(.text(textStart..<textEnd)) }
            out.append(.token(token.id))
            i = end
            if token.rstrip {
                while i < n && scalars[i].properties.isWhitespace { i += 1 }
            }
            textStart = i
        }
        if textStart < n { out.append(.text(textStart..<n)) }
    }

    private func isWordBoundary(_ scalars: [Unicode.Scalar], _ start: Int, _ end: Int) -> Bool {
        func isWord(_ s: Unicode.Scalar) -> Bool { s == "_" || s.properties.isAlphabetic || s.properties.numericType != nil }
        return (start == 0 || !isWord(scalars[start - 1])) && (end == scalars.count || !isWord(scalars[end]))
    }
}
