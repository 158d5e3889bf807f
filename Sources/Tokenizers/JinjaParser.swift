/// A Jinja expression.
indirect enum JinjaExpr {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case `subscript`(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
    case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
    case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
    case not(JinjaExpr)
    case negate(JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case conditional(JinjaExpr, then: JinjaExpr, else: JinjaExpr?)
}

/// A Jinja statement.
indirect enum JinjaNode {
    case text(String)
    case output(JinjaExpr)
    case ifChain([(JinjaExpr, [JinjaNode])], else: [JinjaNode])
    case forLoop(targets: [String], iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode], else: [JinjaNode])
    case set(targets: [String], value: JinjaExpr)
    case setAttribute(object: String, attribute: String, value: JinjaExpr)
    case setBlock(name: String, filters: [(String, [JinjaExpr], [(String, JinjaExpr)])], body: [JinjaNode])
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case callBlock(call: JinjaExpr, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case filterBlock(filters: [(String, [JinjaExpr], [(String, JinjaExpr)])], body: [JinjaNode])
    case with(assignments: [(String, JinjaExpr)], body: [JinjaNode])
    case breakLoop
    case continueLoop
}

/// Parses a template into statements, with jinja2's grammar and operator precedence (`or` < `and` < `not` <
/// comparisons < `+ -` < `~` < `* / // %` < `**` < unary minus < filters, tests and calls).
struct JinjaParser {
    private var pieces: [JinjaLexer.Piece]
    private var index = 0
    private var tokens: [JinjaLexer.Token] = []
    private var pos = 0
    private var line = 0
    private var depth = 0
    /// Nesting of expressions and blocks a template may use (a parse of deeply nested brackets must not exhaust the stack).
    static let maxDepth = 200
    /// Operations (unary, binary, filters, tests, attributes, subscripts, calls) in one tag's expressions. A chain of them
    /// nests as deep as it is long, in the parse and in the evaluation: 2,000 `-` signs or `|trim`s crashed the process
    /// on its stack (a fuzz against jinja2 found it); no real template comes near this.
    static let maxLinks = 256
    private var links = 0

    private mutating func link() throws {
        links += 1
        guard links <= Self.maxLinks else { throw fail("expression too long (over \(Self.maxLinks) operations in one tag)") }
    }

    static func parse(_ template: String) throws -> [JinjaNode] {
        var parser = JinjaParser(pieces: try JinjaLexer.lex(template))
        let (body, end) = try parser.parseBody(until: [])
        if let end { throw JinjaError("line \(parser.line): unexpected '\(end)'") }
        return body
    }

    private init(pieces: [JinjaLexer.Piece]) { self.pieces = pieces }

    private func fail(_ message: String) -> JinjaError { JinjaError("line \(line): \(message)") }

    /// Statements up to one of the `ends` tags (whose name is returned, with its tokens loaded), or to the end.
    private mutating func parseBody(until ends: Set<String>) throws -> ([JinjaNode], String?) {
        depth += 1
        defer { depth -= 1 }
        guard depth < Self.maxDepth else { throw fail("blocks nested too deeply") }
        var nodes: [JinjaNode] = []
        while index < pieces.count {
            let piece = pieces[index]
            index += 1
            switch piece {
            case .text(let t): nodes.append(.text(t))
            case .output(let toks, let l):
                load(toks, l)
                nodes.append(.output(try expression()))
                try expectEnd()
            case .statement(let toks, let l):
                load(toks, l)
                guard case .name(let keyword) = toks.first else { throw fail("expected a statement") }
                if ends.contains(keyword) {
                    pos = 1
                    return (nodes, keyword)
                }
                pos = 1
                nodes.append(try statement(keyword))
            }
        }
        guard ends.isEmpty else { throw fail("missing '\(ends.sorted().joined(separator: "' or '"))'") }
        return (nodes, nil)
    }

    private mutating func load(_ toks: [JinjaLexer.Token], _ l: Int) {
        tokens = toks
        pos = 0
        links = 0
        line = l
    }

    private mutating func block(until ends: Set<String>) throws -> ([JinjaNode], String) {
        let (body, end) = try parseBody(until: ends)
        return (body, end!)
    }

    private mutating func statement(_ keyword: String) throws -> JinjaNode {
        switch keyword {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try expression()
            try expectEnd()
            while true {
                let (body, end) = try block(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" {
                    condition = try expression()
                    try expectEnd()
                    continue
                }
                try expectEnd()
                var elseBody: [JinjaNode] = []
                if end == "else" {
                    (elseBody, _) = try block(until: ["endif"])
                    try expectEnd()
                }
                return .ifChain(branches, else: elseBody)
            }
        case "for":
            var targets = [try name()]
            while accept(",") { targets.append(try name()) }
            guard acceptName("in") else { throw fail("expected 'in'") }
            let iterable = try ternaryFree()
            var condition: JinjaExpr?
            if acceptName("if") { condition = try expression() }
            if acceptName("recursive") { throw fail("recursive loops are not supported") }
            try expectEnd()
            let (body, end) = try block(until: ["else", "endfor"])
            try expectEnd()
            var elseBody: [JinjaNode] = []
            if end == "else" {
                (elseBody, _) = try block(until: ["endfor"])
                try expectEnd()
            }
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, else: elseBody)
        case "set":
            let first = try name()
            if accept(".") {
                let attribute = try name()
                guard accept("=") else { throw fail("expected '='") }
                let value = try expression()
                try expectEnd()
                return .setAttribute(object: first, attribute: attribute, value: value)
            }
            var targets = [first]
            while accept(",") { targets.append(try name()) }
            if accept("=") {
                let value = try tupleExpression()
                try expectEnd()
                return .set(targets: targets, value: value)
            }
            guard targets.count == 1 else { throw fail("expected '='") }
            var filters: [(String, [JinjaExpr], [(String, JinjaExpr)])] = []
            while accept("|") { filters.append(try filterCall()) }
            try expectEnd()
            let (body, _) = try block(until: ["endset"])
            try expectEnd()
            return .setBlock(name: first, filters: filters, body: body)
        case "macro":
            let macroName = try name()
            let parameters = try parameterList()
            try expectEnd()
            let (body, _) = try block(until: ["endmacro"])
            if case .name = peek { pos += 1 }  // {% endmacro name %}
            try expectEnd()
            return .macro(name: macroName, parameters: parameters, body: body)
        case "call":
            var parameters: [(String, JinjaExpr?)] = []
            if peek == .op("(") { parameters = try parameterList() }
            let call = try expression()
            guard case .call = call else { throw fail("expected a macro call") }
            try expectEnd()
            let (body, _) = try block(until: ["endcall"])
            try expectEnd()
            return .callBlock(call: call, parameters: parameters, body: body)
        case "filter":
            var filters = [try filterCall()]
            while accept("|") { filters.append(try filterCall()) }
            try expectEnd()
            let (body, _) = try block(until: ["endfilter"])
            try expectEnd()
            return .filterBlock(filters: filters, body: body)
        case "with":
            var assignments: [(String, JinjaExpr)] = []
            while case .name = peek {
                let n = try name()
                guard accept("=") else { throw fail("expected '='") }
                assignments.append((n, try expression()))
                if !accept(",") { break }
            }
            try expectEnd()
            let (body, _) = try block(until: ["endwith"])
            try expectEnd()
            return .with(assignments: assignments, body: body)
        case "generation":
            // transformers' AssistantTracker tag: renders its body (it only records where the body went).
            try expectEnd()
            let (body, _) = try block(until: ["endgeneration"])
            try expectEnd()
            return .with(assignments: [], body: body)
        case "break":
            try expectEnd()
            return .breakLoop
        case "continue":
            try expectEnd()
            return .continueLoop
        default:
            throw fail("unknown tag '\(keyword)'")
        }
    }

    private mutating func parameterList() throws -> [(String, JinjaExpr?)] {
        guard accept("(") else { throw fail("expected '('") }
        var parameters: [(String, JinjaExpr?)] = []
        while !accept(")") {
            let n = try name()
            parameters.append((n, accept("=") ? try expression() : nil))
            if !accept(",") {
                guard accept(")") else { throw fail("expected ')'") }
                break
            }
        }
        return parameters
    }

    // MARK: Tokens

    private var peek: JinjaLexer.Token? { pos < tokens.count ? tokens[pos] : nil }

    private mutating func accept(_ op: String) -> Bool {
        if peek == .op(op) { pos += 1; return true }
        return false
    }

    private mutating func acceptName(_ n: String) -> Bool {
        if peek == .name(n) { pos += 1; return true }
        return false
    }

    private mutating func expect(_ op: String) throws {
        guard accept(op) else { throw fail("expected '\(op)'") }
    }

    private mutating func name() throws -> String {
        guard case .name(let n) = peek else { throw fail("expected a name") }
        pos += 1
        return n
    }

    private func expectEnd() throws {
        guard pos == tokens.count else { throw fail("unexpected \(tokens[pos]) in tag") }
    }

    // MARK: Expressions

    /// An expression, or a bare tuple `a, b` (as `set` allows).
    private mutating func tupleExpression() throws -> JinjaExpr {
        let first = try expression()
        guard peek == .op(",") else { return first }
        var items = [first]
        while accept(",") {
            if pos == tokens.count { break }
            items.append(try expression())
        }
        return .tuple(items)
    }

    mutating func expression() throws -> JinjaExpr {
        depth += 1
        defer { depth -= 1 }
        guard depth < Self.maxDepth else { throw fail("expression nested too deeply") }
        let value = try or()
        if acceptName("if") {
            let condition = try or()
            let otherwise = acceptName("else") ? try expression() : nil
            return .conditional(condition, then: value, else: otherwise)
        }
        return value
    }

    /// A `for` loop's iterable: no conditional expression (its `if` filters the loop).
    private mutating func ternaryFree() throws -> JinjaExpr { try or() }

    private mutating func or() throws -> JinjaExpr {
        var left = try and()
        while acceptName("or") { try link(); left = .or(left, try and()) }
        return left
    }

    private mutating func and() throws -> JinjaExpr {
        var left = try not()
        while acceptName("and") { try link(); left = .and(left, try not()) }
        return left
    }

    private mutating func not() throws -> JinjaExpr {
        if acceptName("not") { try link(); return .not(try not()) }
        return try compare()
    }

    private mutating func compare() throws -> JinjaExpr {
        let left = try math1()
        var operands = [left]
        var ops: [String] = []
        while true {
            if case .op(let o) = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                pos += 1
                ops.append(o)
            } else if acceptName("in") {
                ops.append("in")
            } else if peek == .name("not"), pos + 1 < tokens.count, tokens[pos + 1] == .name("in") {
                pos += 2
                ops.append("not in")
            } else {
                break
            }
            try link()
            operands.append(try math1())
        }
        guard !ops.isEmpty else { return left }
        var result: JinjaExpr = .binary(ops[0], operands[0], operands[1])
        for k in 1..<ops.count { result = .and(result, .binary(ops[k], operands[k], operands[k + 1])) }
        return result
    }

    private mutating func math1() throws -> JinjaExpr {
        var left = try concat()
        while case .op(let o) = peek, o == "+" || o == "-" {
            pos += 1
            try link()
            left = .binary(o, left, try concat())
        }
        return left
    }

    private mutating func concat() throws -> JinjaExpr {
        var left = try math2()
        while accept("~") { try link(); left = .binary("~", left, try math2()) }
        return left
    }

    private mutating func math2() throws -> JinjaExpr {
        var left = try power()
        while case .op(let o) = peek, ["*", "/", "//", "%"].contains(o) {
            pos += 1
            try link()
            left = .binary(o, left, try power())
        }
        return left
    }

    private mutating func power() throws -> JinjaExpr {
        var left = try unary(withFilter: true)
        while accept("**") { try link(); left = .binary("**", left, try unary(withFilter: true)) }
        return left
    }

    private mutating func unary(withFilter: Bool) throws -> JinjaExpr {
        var node: JinjaExpr
        if accept("-") {
            try link()
            node = .negate(try unary(withFilter: false))
        } else if accept("+") {
            try link()
            // Python's unary plus: numbers only (`+'a'` is a TypeError), as 0 + x computes it.
            node = .binary("+", .literal(.int(0)), try unary(withFilter: false))
        } else {
            node = try postfix(try primary())
        }
        return withFilter ? try filterChain(node) : node
    }

    private mutating func filterChain(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if accept("|") {
                try link()
                let (n, args, kwargs) = try filterCall()
                node = .filter(node, n, args, kwargs)
            } else if acceptName("is") {
                try link()
                let negated = acceptName("not")
                let testName = try name()
                var args: [JinjaExpr] = []
                if accept("(") {
                    (args, _) = try callArguments()
                } else if let p = peek, Self.startsArgument(p) {
                    args = [try postfix(try primary())]
                }
                node = .test(node, testName, args, negated: negated)
            } else if accept("(") {
                node = try call(node)
            } else {
                return node
            }
        }
    }

    /// `node(...)`, after its opening `(`.
    private mutating func call(_ node: JinjaExpr) throws -> JinjaExpr {
        try link()
        let (args, kwargs) = try callArguments()
        return .call(node, args, kwargs)
    }

    private static func startsArgument(_ t: JinjaLexer.Token) -> Bool {
        switch t {
        case .name(let n): !["else", "or", "and", "if", "in", "not", "is"].contains(n)
        case .string, .int, .double: true
        case .op(let o): o == "[" || o == "{"
        }
    }

    private mutating func filterCall() throws -> (String, [JinjaExpr], [(String, JinjaExpr)]) {
        let n = try name()
        if accept("(") {
            let (args, kwargs) = try callArguments()
            return (n, args, kwargs)
        }
        return (n, [], [])
    }

    /// Arguments after an opening `(`, through the closing `)`.
    private mutating func callArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var args: [JinjaExpr] = []
        var kwargs: [(String, JinjaExpr)] = []
        while !accept(")") {
            if case .name(let n) = peek, pos + 1 < tokens.count, tokens[pos + 1] == .op("=") {
                pos += 2
                kwargs.append((n, try expression()))
            } else {
                guard kwargs.isEmpty else { throw fail("positional argument after a keyword argument") }
                args.append(try expression())
            }
            if !accept(",") {
                try expect(")")
                break
            }
        }
        return (args, kwargs)
    }

    private mutating func primary() throws -> JinjaExpr {
        guard let t = peek else { throw fail("unexpected end of tag") }
        pos += 1
        switch t {
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .string(var s):
            while case .string(let more) = peek {  // adjacent literals concatenate
                s += more
                pos += 1
            }
            return .literal(.str(s))
        case .int(let i): return .literal(.int(i))
        case .double(let d): return .literal(.double(d))
        case .op("("):
            if accept(")") { return .tuple([]) }
            let first = try expression()
            if accept(")") { return first }
            var items = [first]
            while accept(",") {
                if peek == .op(")") { break }
                items.append(try expression())
            }
            try expect(")")
            return .tuple(items)
        case .op("["):
            var items: [JinjaExpr] = []
            while !accept("]") {
                items.append(try expression())
                if !accept(",") {
                    try expect("]")
                    break
                }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !accept("}") {
                let key = try expression()
                try expect(":")
                pairs.append((key, try expression()))
                if !accept(",") {
                    try expect("}")
                    break
                }
            }
            return .dict(pairs)
        default:
            throw fail("unexpected \(t)")
        }
    }

    private mutating func postfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if accept(".") {
                try link()
                guard let t = peek else { throw fail("expected an attribute") }
                pos += 1
                switch t {
                case .name(let n): node = .attribute(node, n)
                case .int(let i): node = .subscript(node, .literal(.int(i)))
                default: throw fail("expected an attribute")
                }
            } else if accept("[") {
                try link()
                node = try subscriptOrSlice(node)
            } else if accept("(") {
                node = try call(node)
            } else {
                return node
            }
        }
    }

    private mutating func subscriptOrSlice(_ object: JinjaExpr) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = [nil]
        var colons = 0
        while !accept("]") {
            if accept(":") {
                colons += 1
                guard colons <= 2 else { throw fail("bad slice") }
                parts.append(nil)
                continue
            }
            guard parts[parts.count - 1] == nil else { throw fail("expected ']'") }
            parts[parts.count - 1] = try expression()
        }
        if colons == 0 {
            guard let index = parts[0] else { throw fail("empty subscript") }
            return .subscript(object, index)
        }
        while parts.count < 3 { parts.append(nil) }
        return .slice(object, parts[0], parts[1], parts[2])
    }
}
