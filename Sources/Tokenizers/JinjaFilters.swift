import Foundation

/// jinja2's built-in filters and tests that chat templates use, HF's `tojson`, and the Python `str`/`dict`
/// methods a sandboxed template may call. Slicing-like string operations (strip, split, trim) keep each scalar's
/// content mark; other transformations of a string holding content return all-content strings.
extension JinjaEvaluator {
    static let stringMethods: Set<String> = ["strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper", "lower",
                                             "replace", "title", "capitalize", "find", "count", "join", "splitlines",
                                             "isdigit", "isalpha", "isspace", "isupper", "islower", "rfind", "index"]
    static let dictMethods: Set<String> = ["items", "keys", "values", "get"]
    static let listMethods: Set<String> = ["index", "count"]

    private func keyword(_ kwargs: [(String, JinjaValue)], _ name: String) -> JinjaValue? {
        kwargs.first { $0.0 == name }?.1
    }

    private func argument(_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], _ i: Int, _ name: String) -> JinjaValue? {
        i < args.count ? args[i] : keyword(kwargs, name)
    }

    private func string(_ v: JinjaValue, _ what: String) throws -> JinjaString {
        guard case .string(let s) = v else { throw JinjaError("\(what) expects a string, not \(v.typeName)") }
        return s
    }

    /// Python's `str.strip(chars)`: whitespace by default.
    func strip(_ s: JinjaString, _ chars: JinjaValue?, left: Bool, right: Bool) throws -> JinjaString {
        var set: Set<Unicode.Scalar>?
        if let chars, case .string(let c) = chars { set = Set(c.scalars) }
        let strips = { (c: Unicode.Scalar) in set.map { $0.contains(c) } ?? ChatTemplate.isSpace(c) }
        var lo = 0, hi = s.count
        if left { while lo < hi, strips(s.scalars[lo]) { lo += 1 } }
        if right { while hi > lo, strips(s.scalars[hi - 1]) { hi -= 1 } }
        return s.slice(lo..<hi)
    }

    /// Python's `str.split(sep=None, maxsplit=-1)`.
    func split(_ s: JinjaString, _ sep: JinjaValue?, _ maxSplit: Int) throws -> [JinjaValue] {
        var parts: [JinjaValue] = []
        if let sep, case .string(let d) = sep {
            guard d.count > 0 else { throw JinjaError("empty separator") }
            var start = 0
            while maxSplit < 0 || parts.count < maxSplit, let i = Self.find(d.scalars, in: s.scalars, from: start) {
                parts.append(.string(s.slice(start..<i)))
                start = i + d.count
            }
            parts.append(.string(s.slice(start..<s.count)))
            return parts
        }
        var i = 0
        let n = s.count
        while i < n {
            while i < n, ChatTemplate.isSpace(s.scalars[i]) { i += 1 }
            guard i < n else { break }
            if maxSplit >= 0 && parts.count == maxSplit {
                var hi = n
                while hi > i, ChatTemplate.isSpace(s.scalars[hi - 1]) { hi -= 1 }
                parts.append(.string(s.slice(i..<hi)))
                break
            }
            var j = i
            while j < n, !ChatTemplate.isSpace(s.scalars[j]) { j += 1 }
            parts.append(.string(s.slice(i..<j)))
            i = j
        }
        return parts
    }

    func replace(_ s: JinjaString, _ old: JinjaString, _ new: JinjaString, _ count: Int) throws -> JinjaString {
        var out = JinjaString("")
        var start = 0, done = 0
        if old.count == 0 {
            // Python inserts `new` between every character.
            for i in 0...s.count {
                if count >= 0 && done >= count { out.append(s.slice(i..<s.count)); break }
                out.append(new)
                done += 1
                if i < s.count { out.append(s.slice(i..<(i + 1))) }
                try checkSize(out.count)
            }
        } else {
            while count < 0 || done < count, let i = Self.find(old.scalars, in: s.scalars, from: start) {
                out.append(s.slice(start..<i))
                out.append(new)
                start = i + old.count
                done += 1
                try checkSize(out.count)
            }
            out.append(s.slice(start..<s.count))
        }
        let content = s.hasContent || new.hasContent
        return content ? JinjaString(out.string, content: true) : out
    }

    func pyTitle(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s {
            let cased = c.isLetter
            out += cased ? (previousCased ? c.lowercased() : c.uppercased()) : String(c)
            previousCased = cased
        }
        return out
    }

    func capitalize(_ s: String) -> String {
        guard let f = s.first else { return s }
        return f.uppercased() + s.dropFirst().lowercased()
    }

    /// A `str`, `dict` or `list` method call, or nil when `object` has no such method.
    func callMethod(_ object: JinjaValue, _ name: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue? {
        switch object {
        case .string(let s):
            switch name {
            case "strip": return .string(try strip(s, args.first, left: true, right: true))
            case "lstrip": return .string(try strip(s, args.first, left: true, right: false))
            case "rstrip": return .string(try strip(s, args.first, left: false, right: true))
            case "split": return .list(try split(s, argument(args, kwargs, 0, "sep"), argument(args, kwargs, 1, "maxsplit")?.intValue ?? -1))
            case "splitlines":
                return .list(try split(s, .str("\n"), -1).dropLast(s.scalars.last == "\n" ? 1 : 0).map { $0 })
            case "startswith", "endswith":
                guard let p = args.first else { throw JinjaError("\(name) takes at least 1 argument") }
                let prefixes: [JinjaValue] = if case .tuple(let l) = p { l } else { [p] }
                for prefix in prefixes {
                    let q = try string(prefix, name)
                    if name == "startswith" ? s.scalars.starts(with: q.scalars) : s.scalars.reversed().starts(with: q.scalars.reversed()) {
                        return .bool(true)
                    }
                }
                return .bool(false)
            case "upper": return .string(s.derived(s.string.uppercased()))
            case "lower": return .string(s.derived(s.string.lowercased()))
            case "title": return .string(s.derived(pyTitle(s.string)))
            case "capitalize": return .string(s.derived(capitalize(s.string)))
            case "replace":
                guard args.count >= 2 else { throw JinjaError("replace takes 2 arguments") }
                return .string(try replace(s, try string(args[0], "replace"), try string(args[1], "replace"), args.count > 2 ? args[2].intValue ?? -1 : -1))
            case "find", "rfind", "index", "count":
                guard let a = args.first else { throw JinjaError("\(name) takes an argument") }
                let needle = try string(a, name).scalars
                // Python's optional start and end, negative from the end, clamped; a start past the end finds nothing.
                func bound(_ i: Int, _ fallback: Int) throws -> Int {
                    guard args.count > i else { return fallback }
                    if case .none = args[i] { return fallback }
                    guard let v = args[i].intValue else { throw JinjaError("slice indices must be integers") }
                    return v < 0 ? max(0, s.count + max(v, -s.count)) : min(v, s.count + 1)
                }
                let lo = try bound(1, 0), hi = min(try bound(2, s.count), s.count)
                let haystack = lo <= hi ? Array(s.scalars[min(lo, s.count)..<hi]) : []
                var hits: [Int] = []
                var start = 0
                while lo <= hi, let i = Self.find(needle, in: haystack, from: start) {
                    hits.append(lo + i)
                    start = i + max(needle.count, 1)
                    if name == "find" || name == "index" || start > haystack.count { break }
                }
                if name == "count" { return .int(hits.count) }
                if name == "index" && hits.isEmpty { throw JinjaError("substring not found") }
                return .int((name == "rfind" ? hits.last : hits.first) ?? -1)
            case "join":
                guard let a = args.first else { throw JinjaError("join takes an argument") }
                var out = JinjaString("")
                for (i, item) in try iterate(a).enumerated() {
                    if i > 0 { out.append(s) }
                    out.append(try string(item, "join"))
                    try checkSize(out.count)
                }
                return .string(out)
            case "isdigit": return .bool(!s.scalars.isEmpty && s.scalars.allSatisfy { $0.properties.numericType == .decimal })
            case "isalpha": return .bool(!s.scalars.isEmpty && s.scalars.allSatisfy { $0.properties.isAlphabetic })
            case "isspace": return .bool(!s.scalars.isEmpty && s.scalars.allSatisfy(ChatTemplate.isSpace))
            case "isupper": return .bool(s.string.contains { $0.isLetter } && s.string == s.string.uppercased())
            case "islower": return .bool(s.string.contains { $0.isLetter } && s.string == s.string.lowercased())
            default: return nil
            }
        case .dict(let d):
            switch name {
            case "items": return .list(d.pairs.map { .tuple([.str($0.0), $0.1]) })
            case "keys": return .list(d.keys.map { .str($0) })
            case "values": return .list(d.pairs.map(\.1))
            case "get":
                guard let k = args.first else { throw JinjaError("get expected at least 1 argument") }
                return d[k.pyStr.string] ?? (args.count > 1 ? args[1] : .none)
            default: return nil
            }
        case .list(let l):
            switch name {
            case "index":
                guard let a = args.first, let i = l.firstIndex(where: { JinjaValue.equal($0, a) }) else { throw JinjaError("value is not in list") }
                return .int(i)
            case "count": return .int(l.filter { JinjaValue.equal($0, args.first ?? .none) }.count)
            default: return nil
            }
        default:
            return nil
        }
    }

    // MARK: Filters

    func applyFilter(_ name: String, _ value: JinjaValue, _ argExprs: [JinjaExpr], _ kwargExprs: [(String, JinjaExpr)],
                     _ scope: Scope) throws -> JinjaValue {
        let args = try argExprs.map { try evaluate($0, scope) }
        let kwargs = try kwargExprs.map { ($0.0, try evaluate($0.1, scope)) }
        return try filter(name, value, args, kwargs)
    }

    func filter(_ name: String, _ value: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        func arg(_ i: Int, _ n: String) -> JinjaValue? { argument(args, kwargs, i, n) }
        switch name {
        case "default", "d":
            let boolean = arg(1, "boolean")?.truthy ?? false
            if value.isUndefined || (boolean && !value.truthy) { return arg(0, "default_value") ?? .str("") }
            return value
        case "string": return .string(value.pyStr)
        case "trim":
            guard case .string(let s) = value else { return .string(try strip(value.pyStr, arg(0, "chars"), left: true, right: true)) }
            return .string(try strip(s, arg(0, "chars"), left: true, right: true))
        case "upper", "lower", "capitalize", "title":
            let s = value.pyStr
            let r = name == "upper" ? s.string.uppercased() : name == "lower" ? s.string.lowercased()
                : name == "capitalize" ? capitalize(s.string) : jinjaTitle(s.string)
            return .string(s.derived(r))
        case "replace":
            guard args.count >= 2 else { throw JinjaError("replace takes 2 arguments") }
            return .string(try replace(value.pyStr, args[0].pyStr, args[1].pyStr, arg(2, "count")?.intValue ?? -1))
        case "length", "count":
            switch value {
            case .string(let s): return .int(s.count)
            case .list(let l), .tuple(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw JinjaError("object of type '\(value.typeName)' has no len()")
            }
        case "first":
            return try iterate(value).first ?? .undefined("No first item, sequence was empty.")
        case "last":
            guard case .list(let l) = value else { return try iterate(value).last ?? .undefined("No last item, sequence was empty.") }
            return l.last ?? .undefined("No last item, sequence was empty.")
        case "join":
            var out = JinjaString("")
            let separator = arg(0, "d")?.pyStr ?? JinjaString("")
            let attributeName = keyword(kwargs, "attribute")
            for (i, item) in try iterate(value).enumerated() {
                if i > 0 { out.append(separator) }
                out.append((try attributeName.map { try self.item(item, $0) } ?? item).pyStr)
                try checkSize(out.count)
            }
            return .string(out)
        case "list": return .list(try iterate(value))
        case "items":
            guard case .dict(let d) = value else {
                if value.isUndefined { return .list([]) }
                throw JinjaError("Can only get item pairs from a mapping.")
            }
            return .list(d.pairs.map { .tuple([.str($0.0), $0.1]) })
        case "dictsort":
            guard case .dict(let d) = value else { throw JinjaError("dictsort expects a mapping") }
            let byValue = arg(2, "by")?.pyStr.string == "value", reverse = arg(1, "reverse")?.truthy ?? false
            let caseSensitive = arg(0, "case_sensitive")?.truthy ?? false
            var pairs = d.pairs.map { JinjaValue.tuple([.str($0.0), $0.1]) }
            try sortValues(&pairs, key: { v in try self.item(v, .int(byValue ? 1 : 0)) }, caseSensitive: caseSensitive)
            return .list(reverse ? pairs.reversed() : pairs)
        case "selectattr", "rejectattr", "select", "reject":
            let byAttribute = name.hasSuffix("attr")
            let rest = byAttribute ? Array(args.dropFirst()) : args
            let testName = rest.first.map { $0.pyStr.string }
            let testArgs = Array(rest.dropFirst())
            let keep = name.hasPrefix("select")
            return .list(try iterate(value).filter { item in
                let subject = byAttribute ? try attributePath(item, args.first ?? .none) : item
                let passed = try testName.map { try applyTest($0, subject, testArgs) } ?? subject.truthy
                return passed == keep
            })
        case "map":
            let items = try iterate(value)
            if let attribute = keyword(kwargs, "attribute") {
                let fallback = keyword(kwargs, "default")
                return .list(try items.map { item in
                    let v = try attributePath(item, attribute)
                    if v.isUndefined, let fallback { return fallback }
                    return v
                })
            }
            guard let f = args.first else { return .list(items) }
            return .list(try items.map { try filter(f.pyStr.string, $0, Array(args.dropFirst()), kwargs) })
        case "unique":
            let caseSensitive = arg(0, "case_sensitive")?.truthy ?? false
            var seen: [JinjaValue] = []
            var out: [JinjaValue] = []
            for item in try iterate(value) {
                let key = caseSensitive ? item : folded(item)
                if !seen.contains(where: { JinjaValue.equal($0, key) }) {
                    seen.append(key)
                    out.append(item)
                }
            }
            return .list(out)
        case "reverse":
            if case .string(let s) = value { return .string(s.pick(Array((0..<s.count).reversed()))) }
            return .list(try iterate(value).reversed())
        case "sort":
            var items = try iterate(value)
            let attribute = keyword(kwargs, "attribute")
            try sortValues(&items, key: { v in try attribute.map { try self.attributePath(v, $0) } ?? v },
                           caseSensitive: arg(1, "case_sensitive")?.truthy ?? false)
            return .list((arg(0, "reverse")?.truthy ?? false) ? items.reversed() : items)
        case "safe": return value
        case "sum":
            // sum(iterable, attribute=None, start=0)
            let attribute = arg(0, "attribute")
            var total = arg(1, "start") ?? .int(0)
            for item in try iterate(value) {
                total = try binary("+", total, try attribute.map { try attributePath(item, $0) } ?? item)
            }
            return total
        case "min", "max":
            let items = try iterate(value)
            guard var best = items.first else { return .undefined("No aggregated item, sequence was empty.") }
            let attribute = keyword(kwargs, "attribute") ?? arg(1, "attribute")
            let caseSensitive = arg(0, "case_sensitive")?.truthy ?? false
            func key(_ v: JinjaValue) throws -> JinjaValue {
                let k = try attribute.map { try attributePath(v, $0) } ?? v
                return caseSensitive ? k : folded(k)
            }
            // Python's min and max: the first of equal items.
            for item in items.dropFirst() {
                let (a, b) = (try key(item), try key(best))
                if name == "min" ? try JinjaValue.less(a, b) : try JinjaValue.less(b, a) { best = item }
            }
            return best
        case "attr":
            // The sandbox's getattr: an object's attribute, never a dict's key (jinja2 gives undefined for those).
            guard let n = arg(0, "name") else { throw JinjaError("attr takes a name") }
            if case .dict = value { return .undefined("'dict object' has no attribute '\(n.pyStr.string)'") }
            return try attribute(value, n.pyStr.string)
        case "e", "escape":
            // HTML escaping (MarkupSafe): & < > ' " as entities.
            var out = ""
            for c in value.pyStr.string.unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "'": out += "&#39;"
                case "\"": out += "&#34;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(value.pyStr.derived(out))
        case "tojson":
            var indent: String?
            if let i = arg(1, "indent") ?? arg(0, "indent_pos") {
                if case .string(let s) = i { indent = s.string } else if let n = i.intValue { indent = String(repeating: " ", count: try spaces(n)) }
            }
            var itemSeparator = indent == nil ? ", " : ",", keySeparator = ": "
            if let separators = keyword(kwargs, "separators"), let seps = try? iterate(separators), seps.count == 2 {
                itemSeparator = seps[0].pyStr.string
                keySeparator = seps[1].pyStr.string
            }
            let text = try value.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator,
                                      sortKeys: keyword(kwargs, "sort_keys")?.truthy ?? false)
            try checkSize(text.unicodeScalars.count)
            return .string(JinjaString(text, content: value.containsContent))
        case "indent":
            let width = arg(0, "width") ?? .int(4)
            let pad: String = if case .string(let w) = width { w.string } else { String(repeating: " ", count: try spaces(width.intValue ?? 4)) }
            let first = arg(1, "first")?.truthy ?? false, blank = arg(2, "blank")?.truthy ?? false
            let s = value.pyStr
            var lines = s.string.components(separatedBy: "\n")
            for i in lines.indices where (i > 0 || first) && (blank || !lines[i].allSatisfy { $0.isWhitespace }) {
                lines[i] = pad + lines[i]
            }
            return .string(s.derived(lines.joined(separator: "\n")))
        case "abs":
            switch value {
            case .int(let i):
                guard i != .min else { throw JinjaError("integer overflow in abs()") }
                return .int(abs(i))
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return .double(abs(d))
            default: throw JinjaError("bad operand type for abs(): '\(value.typeName)'")
            }
        case "round":
            guard let x = value.number else { throw JinjaError("round expects a number") }
            let precision = arg(0, "precision")?.intValue ?? 0, method = arg(1, "method")?.pyStr.string ?? "common"
            let rule: FloatingPointRoundingRule = method == "ceil" ? .up : method == "floor" ? .down : .toNearestOrEven
            // Python's round of an int is an int; digits past a double's range leave the value as it is, or make it 0.
            let isInt: Bool = if case .int = value, method == "common" { true } else { false }
            if precision > 308 || (isInt && precision >= 0) { return isInt ? value : .double(x) }
            if precision < -308 { return isInt ? .int(0) : .double(0) }
            let scale = pow(10, Double(precision))
            let rounded = (x * scale).rounded(rule) / scale
            if isInt, let i = Int(exactly: rounded) { return .int(i) }
            return .double(rounded)
        case "int":
            let fallback = arg(0, "default") ?? .int(0)
            switch value {
            case .int, .bool: return .int(value.intValue!)
            case .double(let d): return Int(exactly: d.rounded(.towardZero)).map { .int($0) } ?? fallback  // past Int's range too
            case .string(let s):
                let t = s.string.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "")
                if let i = Int(t) { return .int(i) }
                if let d = Double(t), let i = Int(exactly: d.rounded(.towardZero)) { return .int(i) }
                return fallback
            default: return fallback
            }
        case "float":
            let fallback = arg(0, "default") ?? .double(0)
            if let n = value.number { return .double(n) }
            if case .string(let s) = value, let d = Double(s.string.trimmingCharacters(in: .whitespaces)) { return .double(d) }
            return fallback
        case "wordcount":
            return .int(value.pyStr.string.split { !($0.isLetter || $0.isNumber || $0 == "_") }.count)
        case "batch":
            guard let n = arg(0, "linecount")?.intValue, n > 0 else { throw JinjaError("batch expects a positive size") }
            let items = try iterate(value)
            return .list(stride(from: 0, to: items.count, by: n).map { .list(Array(items[$0..<min($0 + n, items.count)])) })
        default:
            throw JinjaError("No filter named '\(name)'.")
        }
    }

    /// jinja2's `title` filter: each run after a space, dash or bracket capitalised.
    private func jinjaTitle(_ s: String) -> String {
        var out = ""
        var atStart = true
        for c in s {
            let separator = c.isWhitespace || "-({[<".contains(c)
            out += separator ? String(c) : atStart ? c.uppercased() : c.lowercased()
            atStart = separator
        }
        return out
    }

    private func folded(_ v: JinjaValue) -> JinjaValue {
        if case .string(let s) = v { return .str(s.string.lowercased()) }
        return v
    }

    private func sortValues(_ items: inout [JinjaValue], key: (JinjaValue) throws -> JinjaValue, caseSensitive: Bool) throws {
        let keyed = try items.map { (caseSensitive ? try key($0) : folded(try key($0)), $0) }
        var failure: (any Error)?
        let sorted = keyed.enumerated().sorted { a, b in
            do {
                if try JinjaValue.less(a.element.0, b.element.0) { return true }
                if try JinjaValue.less(b.element.0, a.element.0) { return false }
            } catch { failure = error }
            return a.offset < b.offset
        }
        if let failure { throw failure }
        items = sorted.map(\.element.1)
    }

    /// `attribute='a.b'` as jinja2's attribute getters read it (dotted paths, integer parts as indices).
    func attributePath(_ value: JinjaValue, _ path: JinjaValue) throws -> JinjaValue {
        guard case .string(let p) = path else { return try item(value, path) }
        var v = value
        for part in p.string.split(separator: ".", omittingEmptySubsequences: false) {
            if v.isUndefined { return v }
            v = try item(v, Int(part).map { .int($0) } ?? .str(String(part)))
        }
        return v
    }

    // MARK: Tests

    func applyTest(_ name: String, _ value: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        switch name {
        case "defined": return !value.isUndefined
        case "undefined": return value.isUndefined
        case "none": if case .none = value { return true } else { return false }
        case "string": if case .string = value { return true } else { return false }
        case "number": switch value { case .int, .double, .bool: return true default: return false }
        case "integer": switch value { case .int: return true default: return false }  // jinja2: True and False are not
        case "float": if case .double = value { return true } else { return false }
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": if case .bool(true) = value { return true } else { return false }
        case "false": if case .bool(false) = value { return true } else { return false }
        case "mapping": if case .dict = value { return true } else { return false }
        case "sequence": switch value { case .list, .tuple, .string, .dict: return true default: return false }
        case "iterable": switch value { case .list, .tuple, .string, .dict, .undefined: return true default: return false }
        case "callable": if case .callable = value { return true } else { return false }
        case "odd", "even":
            guard let i = value.intValue else { throw JinjaError("\(name) expects an integer") }
            return (abs(i) % 2 == 1) == (name == "odd")
        case "divisibleby":
            guard let i = value.intValue, let n = args.first?.intValue, n != 0 else { throw JinjaError("divisibleby expects integers") }
            return i % n == 0
        case "equalto", "eq", "==", "sameas": return JinjaValue.equal(value, args.first ?? .none)
        case "ne", "!=": return !JinjaValue.equal(value, args.first ?? .none)
        case "lt", "<": return try JinjaValue.less(value, args.first ?? .none)
        case "gt", ">": return try JinjaValue.less(args.first ?? .none, value)
        case "le", "<=": return try !JinjaValue.less(args.first ?? .none, value)
        case "ge", ">=": return try !JinjaValue.less(value, args.first ?? .none)
        case "in": return try contains(args.first ?? .none, value)
        case "lower": return value.pyStr.string == value.pyStr.string.lowercased()
        case "upper": return value.pyStr.string == value.pyStr.string.uppercased()
        default: throw JinjaError("No test named '\(name)'.")
        }
    }

    // MARK: Globals

    /// The globals transformers' environment adds to jinja2's (`raise_exception`, `strftime_now`, `namespace`, `dict`,
    /// `range`).
    static func globals(now: @escaping @Sendable () -> Date) -> [String: JinjaValue] {
        [
            "raise_exception": .callable(JinjaCallable("raise_exception") { args, _ in
                throw JinjaError(args.first?.pyStr.string ?? "")
            }),
            "strftime_now": .callable(JinjaCallable("strftime_now") { args, _ in
                .str(strftime(args.first?.pyStr.string ?? "", now()))
            }),
            "namespace": .callable(JinjaCallable("namespace") { args, kwargs in
                var d = JinjaDict()
                if case .dict(let initial)? = args.first { d = initial }
                for (k, v) in kwargs { d[k] = v }
                return .namespace(JinjaNamespace(d))
            }),
            "dict": .callable(JinjaCallable("dict") { _, kwargs in .dict(JinjaDict(kwargs)) }),
            "range": .callable(JinjaCallable("range") { args, _ in
                let ints = try args.map { a -> Int in
                    guard let i = a.intValue else { throw JinjaError("range() expects integers") }
                    return i
                }
                guard (1...3).contains(ints.count) else { throw JinjaError("range expected 1 to 3 arguments, got \(ints.count)") }
                let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count > 2 ? ints[2] : 1)
                guard step != 0 else { throw JinjaError("range() arg 3 must not be zero") }
                // Stepped with overflow checks (the ends may be anywhere in Int), at most 100,000 values.
                var out: [JinjaValue] = []
                var v = start
                while step > 0 ? v < stop : v > stop {
                    guard out.count < 100_000 else { throw JinjaError("range too big") }
                    out.append(.int(v))
                    let (next, overflow) = v.addingReportingOverflow(step)
                    if overflow { break }
                    v = next
                }
                return .list(out)
            }),
        ]
    }

    /// Python's `datetime.strftime` for the common directives (in UTC... as the server's local time).
    static func strftime(_ format: String, _ date: Date) -> String {
        let calendar = Calendar(identifier: .gregorian)
        let c = calendar.dateComponents(in: TimeZone.current, from: date)
        let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
        let days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
        var out = ""
        var chars = format.makeIterator()
        while let ch = chars.next() {
            guard ch == "%", let d = chars.next() else { out.append(ch); continue }
            let two = { (n: Int) in String(format: "%02d", n) }
            switch d {
            case "d": out += two(c.day!)
            case "m": out += two(c.month!)
            case "Y": out += String(c.year!)
            case "y": out += two(c.year! % 100)
            case "B": out += months[c.month! - 1]
            case "b": out += String(months[c.month! - 1].prefix(3))
            case "A": out += days[c.weekday! - 1]
            case "a": out += String(days[c.weekday! - 1].prefix(3))
            case "H": out += two(c.hour!)
            case "I": out += two((c.hour! + 11) % 12 + 1)
            case "M": out += two(c.minute!)
            case "S": out += two(c.second!)
            case "p": out += c.hour! < 12 ? "AM" : "PM"
            case "j": out += String(format: "%03d", calendar.ordinality(of: .day, in: .year, for: date) ?? 0)
            case "-":
                if let e = chars.next() {
                    switch e {
                    case "d": out += String(c.day!)
                    case "m": out += String(c.month!)
                    case "H": out += String(c.hour!)
                    default: out += "%-" + String(e)
                    }
                }
            case "%": out += "%"
            default: out += "%" + String(d)
            }
        }
        return out
    }
}
