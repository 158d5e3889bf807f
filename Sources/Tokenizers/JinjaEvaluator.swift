import Foundation

/// Runs a parsed template as transformers' `ImmutableSandboxedEnvironment` would: jinja2 semantics for scoping
/// (a `for` body and a macro body have their own scope, `if` does not), default `Undefined`, and Python's
/// operators. Every render is bounded (output size, loop iterations, call depth) so a hostile template fails
/// with an error instead of hanging or exhausting memory.
final class JinjaEvaluator {
    struct Limits {
        var maxOutputScalars = 16 << 20
        var maxLoopIterations = 100_000
        var maxCallDepth = 64
    }

    final class Scope {
        var variables: [String: JinjaValue] = [:]
        let parent: Scope?
        init(parent: Scope?) { self.parent = parent }

        func lookup(_ name: String) -> JinjaValue? {
            var s: Scope? = self
            while let scope = s {
                if let v = scope.variables[name] { return v }
                s = scope.parent
            }
            return nil
        }
    }

    private enum Flow { case normal, breakLoop, continueLoop }

    let limits: Limits
    private var iterations = 0
    private var callDepth = 0
    private(set) var produced = 0

    init(limits: Limits = Limits()) { self.limits = limits }

    func render(_ nodes: [JinjaNode], globals: [String: JinjaValue]) throws -> JinjaString {
        let root = Scope(parent: nil)
        root.variables = globals
        var out = JinjaString("")
        _ = try execute(nodes, scope: root, into: &out)
        return out
    }

    /// Refuses a string that would grow past the output bound (a template doubling a string in a loop).
    func checkSize(_ n: Int) throws {
        guard n <= limits.maxOutputScalars else {
            throw JinjaError("the template's output exceeds \(limits.maxOutputScalars) characters")
        }
    }

    /// An indentation of n spaces (none for n ≤ 0), within the size bound.
    func spaces(_ n: Int) throws -> Int {
        try checkSize(n)
        return max(n, 0)
    }

    /// How many copies `x * n` makes of a string or list of `length` (Python: none for n ≤ 0), within the size bound:
    /// an empty one repeated 10^18 times is empty at once, not a loop of 10^18 steps; a product past Int throws.
    /// A list is bounded at a million items (ten million took a debug build past 12 s to build and join).
    func repetitions(_ n: Int, of length: Int, isList: Bool = false) throws -> Int {
        guard n > 0, length > 0 else { return 0 }
        let (total, overflow) = length.multipliedReportingOverflow(by: n)
        if isList, overflow || total > 1_000_000 { throw JinjaError("a list of more than 1,000,000 items") }
        try checkSize(overflow ? .max : total)
        return n
    }

    private func emit(_ s: JinjaString, into out: inout JinjaString) throws {
        produced += s.count
        try checkSize(produced)
        out.append(s)
    }

    private func tick() throws {
        iterations += 1
        guard iterations <= limits.maxLoopIterations else {
            throw JinjaError("the template ran more than \(limits.maxLoopIterations) loop iterations")
        }
    }

    private func execute(_ nodes: [JinjaNode], scope: Scope, into out: inout JinjaString) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t):
                try emit(JinjaString(t), into: &out)
            case .output(let e):
                try emit(try evaluate(e, scope).pyStr, into: &out)
            case .ifChain(let branches, let otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition, scope).truthy {
                    taken = true
                    let flow = try execute(body, scope: scope, into: &out)
                    if flow != .normal { return flow }
                    break
                }
                if !taken {
                    let flow = try execute(otherwise, scope: scope, into: &out)
                    if flow != .normal { return flow }
                }
            case .forLoop(let targets, let iterable, let condition, let body, let otherwise):
                try runLoop(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: otherwise,
                            scope: scope, into: &out)
            case .set(let targets, let value):
                let v = try evaluate(value, scope)
                try assign(targets, v, in: scope)
            case .setAttribute(let object, let attribute, let value):
                guard case .namespace(let ns)? = scope.lookup(object) else {
                    throw JinjaError("cannot assign attribute on non-namespace object")
                }
                guard !attribute.hasPrefix("_") else {
                    throw JinjaError("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(attribute)'. Please rename the attribute.")
                }
                ns.attributes[attribute] = try evaluate(value, scope)
            case .setBlock(let name, let filters, let body):
                var captured = JinjaString("")
                _ = try execute(body, scope: scope, into: &captured)
                var v = JinjaValue.string(captured)
                for (f, args, kwargs) in filters { v = try applyFilter(f, v, args, kwargs, scope) }
                scope.variables[name] = v
            case .macro(let name, let parameters, let body):
                scope.variables[name] = .callable(makeMacro(name, parameters, body, definedIn: scope, caller: nil))
            case .callBlock(let call, let parameters, let body):
                guard case .call(let callee, let args, let kwargs) = call else { break }
                let caller = makeMacro("caller", parameters, body, definedIn: scope, caller: nil)
                let f = try evaluate(callee, scope)
                guard case .callable(let c) = f else { throw JinjaError("'\(f.typeName)' object is not callable") }
                var kw = try kwargs.map { ($0.0, try evaluate($0.1, scope)) }
                kw.append(("caller", .callable(caller)))
                try emit(try c.call(try args.map { try evaluate($0, scope) }, kw).pyStr, into: &out)
            case .filterBlock(let filters, let body):
                var captured = JinjaString("")
                let flow = try execute(body, scope: scope, into: &captured)
                var v = JinjaValue.string(captured)
                for (f, args, kwargs) in filters { v = try applyFilter(f, v, args, kwargs, scope) }
                try emit(v.pyStr, into: &out)
                if flow != .normal { return flow }
            case .with(let assignments, let body):
                let inner = Scope(parent: scope)
                for (n, e) in assignments { inner.variables[n] = try evaluate(e, scope) }
                let flow = try execute(body, scope: assignments.isEmpty ? scope : inner, into: &out)
                if flow != .normal { return flow }
            case .breakLoop: return .breakLoop
            case .continueLoop: return .continueLoop
            }
        }
        return .normal
    }

    private func assign(_ targets: [String], _ value: JinjaValue, in scope: Scope) throws {
        if targets.count == 1 {
            scope.variables[targets[0]] = value
            return
        }
        let items = try iterate(value)
        guard items.count == targets.count else {
            throw JinjaError(items.count > targets.count ? "too many values to unpack (expected \(targets.count))"
                             : "not enough values to unpack (expected \(targets.count), got \(items.count))")
        }
        for (t, v) in zip(targets, items) { scope.variables[t] = v }
    }

    private func runLoop(targets: [String], iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode],
                         otherwise: [JinjaNode], scope: Scope, into out: inout JinjaString) throws {
        var items = try iterate(try evaluate(iterable, scope))
        let inner = Scope(parent: scope)
        if let condition {
            items = try items.filter { item in
                try tick()
                try assign(targets, item, in: inner)
                return try evaluate(condition, inner).truthy
            }
        }
        if items.isEmpty {
            _ = try execute(otherwise, scope: scope, into: &out)
            return
        }
        let n = items.count
        for (i, item) in items.enumerated() {
            try tick()
            try assign(targets, item, in: inner)
            var loop = JinjaDict([("index", .int(i + 1)), ("index0", .int(i)), ("first", .bool(i == 0)), ("last", .bool(i == n - 1)),
                                  ("length", .int(n)), ("revindex", .int(n - i)), ("revindex0", .int(n - i - 1)),
                                  ("depth", .int(1)), ("depth0", .int(0))])
            if i > 0 { loop["previtem"] = items[i - 1] }
            if i + 1 < n { loop["nextitem"] = items[i + 1] }
            loop["cycle"] = .callable(JinjaCallable("cycle") { args, _ in
                guard !args.isEmpty else { throw JinjaError("no items for cycling given") }
                return args[i % args.count]
            })
            inner.variables["loop"] = .dict(loop)
            let flow = try execute(body, scope: inner, into: &out)
            if flow == .breakLoop { break }
        }
    }

    private func makeMacro(_ name: String, _ parameters: [(String, JinjaExpr?)], _ body: [JinjaNode], definedIn: Scope,
                           caller: JinjaCallable?) -> JinjaCallable {
        JinjaCallable(name) { [unowned self] args, kwargs in
            self.callDepth += 1
            defer { self.callDepth -= 1 }
            guard self.callDepth <= self.limits.maxCallDepth else {
                throw JinjaError("macro calls nested deeper than \(self.limits.maxCallDepth)")
            }
            let scope = Scope(parent: definedIn)
            var rest = args
            var varargs: [JinjaValue] = []
            for (k, (p, defaultValue)) in parameters.enumerated() {
                if k < args.count {
                    scope.variables[p] = args[k]
                } else if let v = kwargs.first(where: { $0.0 == p })?.1 {
                    scope.variables[p] = v
                } else if let defaultValue {
                    scope.variables[p] = try self.evaluate(defaultValue, scope)
                } else {
                    scope.variables[p] = .undefined("'\(p)' is undefined")
                }
            }
            if args.count > parameters.count { varargs = Array(args[parameters.count...]) }
            rest = varargs
            scope.variables["varargs"] = .list(rest)
            let extra = kwargs.filter { kw in kw.0 != "caller" && !parameters.contains { $0.0 == kw.0 } }
            scope.variables["kwargs"] = .dict(JinjaDict(extra))
            if let c = kwargs.first(where: { $0.0 == "caller" })?.1 { scope.variables["caller"] = c }
            var out = JinjaString("")
            _ = try self.execute(body, scope: scope, into: &out)
            return .string(out)
        }
    }

    // MARK: Expressions

    func evaluate(_ expr: JinjaExpr, _ scope: Scope) throws -> JinjaValue {
        switch expr {
        case .literal(let v): return v
        case .name(let n): return scope.lookup(n) ?? .undefined("'\(n)' is undefined")
        case .list(let items): return .list(try items.map { try evaluate($0, scope) })
        case .tuple(let items): return .tuple(try items.map { try evaluate($0, scope) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                let key = try evaluate(k, scope)
                d[key.pyStr.string] = try evaluate(v, scope)
            }
            return .dict(d)
        case .attribute(let object, let name):
            return try attribute(try evaluate(object, scope), name)
        case .subscript(let object, let index):
            return try item(try evaluate(object, scope), try evaluate(index, scope))
        case .slice(let object, let start, let stop, let step):
            return try slice(try evaluate(object, scope), try start.map { try evaluate($0, scope) },
                             try stop.map { try evaluate($0, scope) }, try step.map { try evaluate($0, scope) })
        case .call(let callee, let args, let kwargs):
            let a = try args.map { try evaluate($0, scope) }
            let kw = try kwargs.map { ($0.0, try evaluate($0.1, scope)) }
            if case .attribute(let objectExpr, let method) = callee {
                let object = try evaluate(objectExpr, scope)
                if let result = try callMethod(object, method, a, kw) { return result }
                return try call(try attribute(object, method), a, kw)
            }
            return try call(try evaluate(callee, scope), a, kw)
        case .filter(let value, let name, let args, let kwargs):
            return try applyFilter(name, try evaluate(value, scope), args, kwargs, scope)
        case .test(let value, let name, let args, let negated):
            let result = try applyTest(name, try evaluate(value, scope), try args.map { try evaluate($0, scope) })
            return .bool(result != negated)
        case .not(let e): return .bool(!(try evaluate(e, scope).truthy))
        case .negate(let e):
            let v = try evaluate(e, scope)
            switch v {
            case .int(let i):
                guard i != .min else { throw JinjaError("integer overflow in unary '-'") }
                return .int(-i)
            case .bool(let b): return .int(b ? -1 : 0)
            case .double(let d): return .double(-d)
            default: throw JinjaError("bad operand type for unary -: '\(v.typeName)'")
            }
        case .and(let a, let b):
            let left = try evaluate(a, scope)
            return left.truthy ? try evaluate(b, scope) : left
        case .or(let a, let b):
            let left = try evaluate(a, scope)
            return left.truthy ? left : try evaluate(b, scope)
        case .conditional(let condition, let then, let otherwise):
            if try evaluate(condition, scope).truthy { return try evaluate(then, scope) }
            return try otherwise.map { try evaluate($0, scope) } ?? .undefined("the inline if-expression evaluated to false and no else section was defined.")
        case .binary(let op, let a, let b):
            return try binary(op, try evaluate(a, scope), try evaluate(b, scope))
        }
    }

    func call(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        switch f {
        case .callable(let c): return try c.call(args, kwargs)
        case .undefined(let hint): throw JinjaError(hint)
        default: throw JinjaError("'\(f.typeName)' object is not callable")
        }
    }

    /// `obj.name`: jinja2 tries the Python attribute, then the item.
    func attribute(_ object: JinjaValue, _ name: String) throws -> JinjaValue {
        // The sandbox: an attribute starting with "_" is unsafe, and reads as undefined (even on an undefined value, whose
        // dunder attributes exist in Python) unless a dict has it as a key.
        if name.hasPrefix("_") {
            if case .dict(let d) = object, let v = d[name] { return v }
            return .undefined("access to attribute '\(name)' is unsafe")
        }
        switch object {
        case .undefined(let hint): throw JinjaError(hint)
        case .dict(let d):
            if Self.dictMethods.contains(name) {
                return .callable(JinjaCallable(name) { [unowned self] a, kw in try self.callMethod(object, name, a, kw)! })
            }
            return d[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        case .namespace(let ns):
            return ns.attributes[name] ?? .undefined("'Namespace' object has no attribute '\(name)'")
        case .string where Self.stringMethods.contains(name), .list where Self.listMethods.contains(name):
            return .callable(JinjaCallable(name) { [unowned self] a, kw in
                guard let r = try self.callMethod(object, name, a, kw) else { throw JinjaError("cannot call \(name)") }
                return r
            })
        default:
            return .undefined("'\(object.typeName) object' has no attribute '\(name)'")
        }
    }

    /// `obj[key]`: the item, then the attribute.
    func item(_ object: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        switch (object, key) {
        case (.undefined(let hint), _): throw JinjaError(hint)
        case (.list(let l), _), (.tuple(let l), _):
            guard let i = key.intValue else { return .undefined("'list object' has no attribute '\(key.pyStr.string)'") }
            let k = i < 0 ? i + l.count : i
            return l.indices.contains(k) ? l[k] : .undefined("list object has no element \(i)")
        case (.string(let s), _):
            guard let i = key.intValue else { return .undefined("'str object' has no attribute '\(key.pyStr.string)'") }
            let k = i < 0 ? i + s.count : i
            return s.scalars.indices.contains(k) ? .string(s.slice(k..<(k + 1))) : .undefined("str object has no element \(i)")
        case (.dict(let d), _):
            if let v = d[key.pyStr.string] { return v }
            if case .string(let name) = key { return try attribute(object, name.string) }
            return .undefined("'dict object' has no attribute '\(key.pyStr.string)'")
        case (.namespace, .string(let name)): return try attribute(object, name.string)
        default: return .undefined("'\(object.typeName) object' has no attribute '\(key.pyStr.string)'")
        }
    }

    /// Python's `seq[start:stop:step]`.
    func slice(_ object: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        func bound(_ v: JinjaValue?) throws -> Int? {
            guard let v, !v.isUndefined else { return nil }
            if case .none = v { return nil }
            guard let i = v.intValue else { throw JinjaError("slice indices must be integers or None") }
            return i
        }
        let step = try bound(step) ?? 1
        guard step != 0 else { throw JinjaError("slice step cannot be zero") }
        let n: Int
        switch object {
        case .list(let l), .tuple(let l): n = l.count
        case .string(let s): n = s.count
        case .undefined(let hint): throw JinjaError(hint)
        // The sandbox's getitem turns Python's TypeError into an undefined value, as it does for `none[0]`.
        default: return .undefined("'\(object.typeName)' object is not subscriptable")
        }
        func clamp(_ i: Int?, _ defaultValue: Int) -> Int {
            guard var i else { return defaultValue }
            if i < 0 { i += n }
            return step > 0 ? min(max(i, 0), n) : min(max(i, -1), n - 1)
        }
        let lo = clamp(try bound(start), step > 0 ? 0 : n - 1), hi = clamp(try bound(stop), step > 0 ? n : -1)
        var indices: [Int] = []
        var i = lo
        while step > 0 ? i < hi : i > hi {
            indices.append(i)
            let (next, overflow) = i.addingReportingOverflow(step)
            if overflow { break }  // a step near Int's limit: past either end
            i = next
        }
        switch object {
        case .list(let l): return .list(indices.map { l[$0] })
        case .tuple(let l): return .tuple(indices.map { l[$0] })
        case .string(let s):
            if step == 1 { return .string(indices.isEmpty ? JinjaString("") : s.slice(lo..<hi)) }
            return .string(s.pick(indices))
        default: return .none
        }
    }

    /// Iteration as a `for` loop sees it (a dict yields its keys, a string its characters, undefined nothing).
    func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .list(let l), .tuple(let l): return l
        case .dict(let d): return d.keys.map { .str($0) }
        case .string(let s): return (0..<s.count).map { .string(s.slice($0..<($0 + 1))) }
        case .undefined: return []
        default: throw JinjaError("'\(v.typeName)' object is not iterable")
        }
    }

    func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        switch op {
        case "==": return .bool(JinjaValue.equal(a, b))
        case "!=": return .bool(!JinjaValue.equal(a, b))
        case "<": return .bool(try JinjaValue.less(a, b))
        case ">": return .bool(try JinjaValue.less(b, a))
        case "<=": return .bool(try !JinjaValue.less(b, a))
        case ">=": return .bool(try !JinjaValue.less(a, b))
        case "in": return .bool(try contains(b, a))
        case "not in": return .bool(!(try contains(b, a)))
        case "~":
            let r = a.pyStr + b.pyStr
            try checkSize(r.count)
            return .string(r)
        default: break
        }
        if case .undefined(let hint) = a { throw JinjaError(hint) }
        if case .undefined(let hint) = b { throw JinjaError(hint) }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)):
            try checkSize(x.count + y.count)
            return .string(x + y)
        case ("+", .list(let x), .list(let y)):
            _ = try repetitions(1, of: x.count + y.count, isList: true)
            return .list(x + y)
        case ("+", .tuple(let x), .tuple(let y)):
            return .tuple(x + y)
        case ("*", .string(let s), _), ("*", _, .string(let s)):
            guard let n = (a.intValue ?? b.intValue) else { break }
            var r = JinjaString("")
            for _ in 0..<(try repetitions(n, of: s.count)) { r.append(s) }
            return .string(r)
        case ("*", .list(let l), _), ("*", _, .list(let l)):
            guard let n = (a.intValue ?? b.intValue) else { break }
            return .list(Array([[JinjaValue]](repeating: l, count: try repetitions(n, of: l.count, isList: true)).joined()))
        default: break
        }
        if let x = a.intValue, let y = b.intValue {
            switch op {
            case "+", "-", "*":
                let (r, overflow) = op == "+" ? x.addingReportingOverflow(y) : op == "-" ? x.subtractingReportingOverflow(y)
                    : x.multipliedReportingOverflow(by: y)
                guard !overflow else { throw JinjaError("integer overflow in '\(op)'") }
                return .int(r)
            case "/":
                guard y != 0 else { throw JinjaError("division by zero") }
                return .double(Double(x) / Double(y))
            case "//", "%":
                guard y != 0 else { throw JinjaError("integer division or modulo by zero") }
                guard !(x == .min && y == -1) else { throw JinjaError("integer overflow in '\(op)'") }
                var q = x / y, r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { q -= 1; r += y }
                return .int(op == "//" ? q : r)
            case "**":
                guard y >= 0 else {
                    guard x != 0 else { throw JinjaError("0.0 cannot be raised to a negative power") }
                    return .double(pow(Double(x), Double(y)))
                }
                var result = 1
                for _ in 0..<min(y, 64) {
                    let (r, overflow) = result.multipliedReportingOverflow(by: x)
                    guard !overflow else { throw JinjaError("integer overflow in '**'") }
                    result = r
                }
                if y > 64 && abs(x) > 1 { throw JinjaError("integer overflow in '**'") }
                return .int(y > 64 ? (x == -1 && y % 2 == 1 ? -1 : (x == 0 ? 0 : 1)) : result)
            default: break
            }
        }
        if let x = a.number, let y = b.number {
            switch op {
            case "+": return .double(x + y)
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/":
                guard y != 0 else { throw JinjaError("float division by zero") }
                return .double(x / y)
            case "//":
                guard y != 0 else { throw JinjaError("float divmod()") }
                return .double((x / y).rounded(.down))
            case "%":
                guard y != 0 else { throw JinjaError("float modulo") }
                let r = x.truncatingRemainder(dividingBy: y)
                return .double(r != 0 && (r < 0) != (y < 0) ? r + y : r)
            case "**": return .double(pow(x, y))
            default: break
            }
        }
        throw JinjaError("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }

    func contains(_ container: JinjaValue, _ element: JinjaValue) throws -> Bool {
        switch container {
        case .list(let l), .tuple(let l): return l.contains { JinjaValue.equal($0, element) }
        case .dict(let d):
            guard case .string(let k) = element else { return false }
            return d[k.string] != nil
        case .string(let s):
            guard case .string(let e) = element else {
                throw JinjaError("'in <string>' requires string as left operand, not \(element.typeName)")
            }
            return e.count == 0 || Self.find(e.scalars, in: s.scalars, from: 0) != nil
        case .namespace(let ns):
            guard case .string(let k) = element else { return false }
            return ns.attributes[k.string] != nil
        case .undefined(let hint): throw JinjaError(hint)
        default: throw JinjaError("argument of type '\(container.typeName)' is not iterable")
        }
    }

    static func find(_ needle: [Unicode.Scalar], in haystack: [Unicode.Scalar], from start: Int) -> Int? {
        guard !needle.isEmpty else { return start <= haystack.count ? start : nil }
        guard haystack.count >= needle.count, start <= haystack.count - needle.count else { return nil }
        for i in start...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
        }
        return nil
    }
}
