/// Splits a Jinja template into text, `{{ … }}` and `{% … %}` pieces, applying whitespace control as transformers'
/// environment does: jinja2 with `trim_blocks=True` (the newline right after a block or comment tag is dropped),
/// `lstrip_blocks=True` (spaces and tabs before a block or comment tag on its own line are dropped), `-` on either side
/// of a tag (all whitespace on that side is dropped), `+` (neither applies), and `keep_trailing_newline=False`.
struct JinjaLexer {
    enum Token: Equatable {
        case name(String)
        case string(String)
        case int(Int)
        case double(Double)
        case op(String)
    }

    enum Piece {
        case text(String)
        case output([Token], line: Int)
        case statement([Token], line: Int)
    }

    static func lex(_ template: String) throws -> [Piece] {
        // jinja2 normalises \r\n and \r to \n and drops one trailing newline.
        var source = template.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
        if source.hasSuffix("\n") { source.removeLast() }
        let s = Array(source.unicodeScalars)
        var pieces: [Piece] = []
        var pos = 0
        var lineStarting = true
        var line = 1
        func at(_ i: Int, _ text: String) -> Bool {
            var k = i
            for c in text.unicodeScalars {
                guard k < s.count, s[k] == c else { return false }
                k += 1
            }
            return true
        }
        while pos < s.count {
            // The next tag opening.
            var open = pos
            while open < s.count, !(s[open] == "{" && open + 1 < s.count && "{%#".unicodeScalars.contains(s[open + 1])) { open += 1 }
            var text = Array(s[pos..<open])
            guard open < s.count else {
                pieces.append(.text(String(String.UnicodeScalarView(text))))
                break
            }
            let kind = s[open + 1]
            var bodyStart = open + 2
            let sign: Unicode.Scalar? = bodyStart < s.count && (s[bodyStart] == "-" || s[bodyStart] == "+") ? s[bodyStart] : nil
            if sign != nil { bodyStart += 1 }
            if sign == "-" {
                while let last = text.last, ChatTemplate.isSpace(last) { text.removeLast() }
            } else if sign != "+" && kind != "{" {
                let lineStart = (text.lastIndex(of: "\n").map { $0 + 1 }) ?? 0
                if (lineStart > 0 || lineStarting) && text[lineStart...].allSatisfy({ $0 != "\n" && ChatTemplate.isSpace($0) }) {
                    text.removeSubrange(lineStart...)
                }
            }
            if !text.isEmpty { pieces.append(.text(String(String.UnicodeScalarView(text)))) }
            line += s[pos..<open].filter { $0 == "\n" }.count
            let tagLine = line
            var end: Int
            var endSign: Unicode.Scalar?
            if kind == "#" {
                end = bodyStart
                while end + 1 < s.count, !(s[end] == "#" && s[end + 1] == "}") { end += 1 }
                guard end + 1 < s.count else { throw JinjaError("line \(tagLine): unterminated comment") }
                if end > bodyStart, s[end - 1] == "-" || s[end - 1] == "+" { endSign = s[end - 1] }
                line += s[open..<end].filter { $0 == "\n" }.count
                end += 2
            } else {
                let close: String = kind == "{" ? "}}" : "%}"
                let (tokens, stop, sign) = try tokenize(s, from: bodyStart, close: close, line: tagLine)
                endSign = sign
                line += s[open..<stop].filter { $0 == "\n" }.count
                end = stop + 2
                if kind == "{" {
                    pieces.append(.output(tokens, line: tagLine))
                } else if tokens.first == .name("raw") && tokens.count == 1 {
                    // {% raw %}…{% endraw %}: the text verbatim.
                    var k = end
                    var found: (Int, Int)?
                    while k < s.count {
                        if at(k, "{%") {
                            var j = k + 2
                            if j < s.count, s[j] == "-" || s[j] == "+" { j += 1 }
                            while j < s.count, s[j] == " " { j += 1 }
                            if at(j, "endraw") {
                                var e = j + 6
                                while e < s.count, s[e] == " " { e += 1 }
                                if e < s.count, s[e] == "-" || s[e] == "+" { e += 1 }
                                if at(e, "%}") { found = (k, e + 2); break }
                            }
                        }
                        k += 1
                    }
                    guard let (rawEnd, after) = found else { throw JinjaError("line \(tagLine): missing endraw") }
                    pieces.append(.text(String(String.UnicodeScalarView(s[end..<rawEnd]))))
                    line += s[end..<after].filter { $0 == "\n" }.count
                    end = after
                } else {
                    pieces.append(.statement(tokens, line: tagLine))
                }
            }
            pos = end
            lineStarting = false
            if endSign == "-" {
                while pos < s.count, ChatTemplate.isSpace(s[pos]) {
                    if s[pos] == "\n" { line += 1 }
                    pos += 1
                }
                lineStarting = pos > end && s[pos - 1] == "\n"
            } else if endSign != "+" && kind != "{" && pos < s.count && s[pos] == "\n" {
                pos += 1
                line += 1
                lineStarting = true
            }
        }
        return pieces
    }

    private static let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "(", ")", "[", "]", "{", "}",
                                    ",", ".", ":", "|", "=", "<", ">"]

    /// The tokens of one tag body, up to its closing `}}` / `%}` (outside brackets); returns where the close starts
    /// and the whitespace sign before it.
    private static func tokenize(_ s: [Unicode.Scalar], from start: Int, close: String, line: Int) throws
        -> ([Token], Int, Unicode.Scalar?) {
        var tokens: [Token] = []
        var i = start
        var depth = 0
        let closeScalars = Array(close.unicodeScalars)
        func isClose(_ k: Int) -> Bool { k + 1 < s.count && s[k] == closeScalars[0] && s[k + 1] == closeScalars[1] }
        while i < s.count {
            let c = s[i]
            if c == " " || c == "\t" || c == "\n" || c == "\r" { i += 1; continue }
            if depth == 0 {
                if isClose(i) { return (tokens, i, nil) }
                if (c == "-" || c == "+") && isClose(i + 1) { return (tokens, i + 1, c) }
            }
            if c == "'" || c == "\"" {
                var value = ""
                var k = i + 1
                while k < s.count && s[k] != c {
                    if s[k] == "\\", k + 1 < s.count {
                        let e = s[k + 1]
                        switch e {
                        case "n": value += "\n"
                        case "t": value += "\t"
                        case "r": value += "\r"
                        case "\\": value += "\\"
                        case "'": value += "'"
                        case "\"": value += "\""
                        case "0": value += "\0"
                        case "a": value += "\u{07}"
                        case "b": value += "\u{08}"
                        case "f": value += "\u{0C}"
                        case "v": value += "\u{0B}"
                        case "\n": break
                        case "x", "u", "U":
                            let n = e == "x" ? 2 : e == "u" ? 4 : 8
                            let hex = String(String.UnicodeScalarView(s[min(k + 2, s.count)..<min(k + 2 + n, s.count)]))
                            guard hex.count == n, let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else {
                                throw JinjaError("line \(line): bad escape in a string literal")
                            }
                            value.unicodeScalars.append(u)
                            k += n
                        default: value += "\\"; value.unicodeScalars.append(e)
                        }
                        k += 2
                    } else {
                        value.unicodeScalars.append(s[k])
                        k += 1
                    }
                }
                guard k < s.count else { throw JinjaError("line \(line): unterminated string") }
                tokens.append(.string(value))
                i = k + 1
                continue
            }
            if c.properties.numericType != nil && ("0"..."9").contains(c) {
                var k = i
                while k < s.count, ("0"..."9").contains(s[k]) || s[k] == "_" { k += 1 }
                var isFloat = false
                if k + 1 < s.count, s[k] == ".", ("0"..."9").contains(s[k + 1]) {
                    isFloat = true
                    k += 1
                    while k < s.count, ("0"..."9").contains(s[k]) || s[k] == "_" { k += 1 }
                }
                if k < s.count, s[k] == "e" || s[k] == "E" {
                    var j = k + 1
                    if j < s.count, s[j] == "+" || s[j] == "-" { j += 1 }
                    if j < s.count, ("0"..."9").contains(s[j]) {
                        isFloat = true
                        k = j
                        while k < s.count, ("0"..."9").contains(s[k]) { k += 1 }
                    }
                }
                let text = String(String.UnicodeScalarView(s[i..<k])).replacingOccurrences(of: "_", with: "")
                if isFloat {
                    guard let d = Double(text) else { throw JinjaError("line \(line): bad number \(text)") }
                    tokens.append(.double(d))
                } else {
                    guard let n = Int(text) else { throw JinjaError("line \(line): integer \(text) is too large") }
                    tokens.append(.int(n))
                }
                i = k
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var k = i
                while k < s.count, s[k] == "_" || s[k].properties.isAlphabetic || ("0"..."9").contains(s[k]) { k += 1 }
                tokens.append(.name(String(String.UnicodeScalarView(s[i..<k]))))
                i = k
                continue
            }
            guard let op = operators.first(where: { op in
                op.unicodeScalars.enumerated().allSatisfy { i + $0.offset < s.count && s[i + $0.offset] == $0.element }
            }) else {
                throw JinjaError("line \(line): unexpected character '\(Character(c))'")
            }
            if op == "(" || op == "[" || op == "{" { depth += 1 }
            if op == ")" || op == "]" || op == "}" { depth -= 1 }
            if depth < 0 { throw JinjaError("line \(line): unbalanced '\(op)'") }
            tokens.append(.op(op))
            i += op.unicodeScalars.count
        }
        throw JinjaError("line \(line): missing '\(close)'")
    }
}
