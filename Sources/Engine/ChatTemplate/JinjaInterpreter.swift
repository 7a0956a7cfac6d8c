import Foundation

/// Evaluates parsed templates: scopes, loops, filters, tests and the few globals chat templates call.
struct JinjaInterpreter {
    var scopes: [[String: JinjaValue]]
    static let maxIterations = 1_000_000

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined
    }

    mutating func run(_ nodes: [JinjaNode], into out: inout String) throws {
        for node in nodes {
            switch node {
            case .text(let t): out += t
            case .output(let e): out += try eval(e).rendered
            case .ifBlock(let branches, let otherwise):
                var done = false
                for (condition, body) in branches where try eval(condition).truthy {
                    try run(body, into: &out)
                    done = true
                    break
                }
                if !done { try run(otherwise, into: &out) }
            case .forBlock(let targets, let iterable, let filter, let body, let otherwise):
                var items = try iterate(try eval(iterable))
                if let filter {
                    items = try items.filter { item in
                        scopes.append(bind(targets, item))
                        defer { scopes.removeLast() }
                        return try eval(filter).truthy
                    }
                }
                if items.isEmpty {
                    try run(otherwise, into: &out)
                    continue
                }
                for (index, item) in items.enumerated() {
                    var scope = bind(targets, item)
                    scope["loop"] = .object([
                        ("index", .int(index + 1)), ("index0", .int(index)), ("first", .bool(index == 0)),
                        ("last", .bool(index == items.count - 1)), ("length", .int(items.count)),
                        ("revindex", .int(items.count - index)), ("revindex0", .int(items.count - index - 1)),
                        ("previtem", index > 0 ? items[index - 1] : .undefined),
                        ("nextitem", index + 1 < items.count ? items[index + 1] : .undefined),
                    ])
                    scopes.append(scope)
                    defer { scopes.removeLast() }
                    try run(body, into: &out)
                }
            case .set(let target, let value):
                let v = try eval(value)
                if target.count == 1 {
                    scopes[scopes.count - 1][target[0]] = v
                } else if case .namespace(let ns) = lookup(target[0]) {
                    ns.values[target[1]] = v
                } else {
                    throw JinjaError("cannot set attribute of '\(target[0])': not a namespace")
                }
            case .setBlock(let name, let body):
                var captured = ""
                try run(body, into: &captured)
                scopes[scopes.count - 1][name] = .string(captured)
            }
        }
    }

    private func bind(_ targets: [String], _ item: JinjaValue) -> [String: JinjaValue] {
        if targets.count == 1 { return [targets[0]: item] }
        guard case .array(let parts) = item else { return [:] }
        var scope: [String: JinjaValue] = [:]
        for (i, t) in targets.enumerated() { scope[t] = i < parts.count ? parts[i] : .undefined }
        return scope
    }

    private func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .array(let a): return a
        case .dict(_, let keys): return keys.map { .string($0) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined, .none: return []
        default: throw JinjaError("cannot iterate over \(v.rendered)")
        }
    }

    // MARK: Expressions

    mutating func eval(_ e: JinjaExpr) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .array(try items.map { try eval($0) })
        case .dict(let pairs): return .object(try pairs.map { (try eval($0.0).rendered, try eval($0.1)) })
        case .attribute(let base, let name): return member(try eval(base), name)
        case .index(let base, let index): return try subscriptValue(try eval(base), try eval(index))
        case .slice(let base, let lower, let upper):
            let b = try eval(base)
            let lo = try lower.map { try eval($0) }
            let hi = try upper.map { try eval($0) }
            func bounds(_ count: Int) -> Range<Int> {
                func clamp(_ v: JinjaValue?, _ d: Int) -> Int {
                    guard case .int(let i)? = v else { return d }
                    return max(0, min(count, i < 0 ? count + i : i))
                }
                let l = clamp(lo, 0)
                return l..<max(l, clamp(hi, count))
            }
            switch b {
            case .array(let a): return .array(Array(a[bounds(a.count)]))
            case .string(let s):
                let chars = Array(s)
                return .string(String(chars[bounds(chars.count)]))
            default: return .undefined
            }
        case .call(let callee, let args, let kwargs):
            return try call(callee, try args.map { try eval($0) }, try kwargs.map { ($0.0, try eval($0.1)) })
        case .filter(let base, let name, let args, let kwargs):
            return try filter(name, try eval(base), try args.map { try eval($0) }, kwargs.map(\.0))
        case .test(let base, let name, let args, let negated):
            let r = try test(name, try eval(base), try args.map { try eval($0) })
            return .bool(negated ? !r : r)
        case .unary(let op, let operand):
            let v = try eval(operand)
            if op == "not" { return .bool(!v.truthy) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw JinjaError("cannot negate \(v.rendered)")
            }
        case .binary(let op, let l, let r):
            if op == "and" {
                let left = try eval(l)
                return left.truthy ? try eval(r) : left
            }
            if op == "or" {
                let left = try eval(l)
                return left.truthy ? left : try eval(r)
            }
            return try binary(op, try eval(l), try eval(r))
        case .conditional(let value, let condition, let otherwise):
            if try eval(condition).truthy { return try eval(value) }
            return try otherwise.map { try eval($0) } ?? .undefined
        }
    }

    private func member(_ base: JinjaValue, _ name: String) -> JinjaValue {
        switch base {
        case .dict(let d, _): return d[name] ?? .undefined
        case .namespace(let ns): return ns.values[name] ?? .undefined
        default: return .undefined
        }
    }

    private func subscriptValue(_ base: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        switch (base, index) {
        case (.array(let a), .int(let i)):
            let k = i < 0 ? a.count + i : i
            return k >= 0 && k < a.count ? a[k] : .undefined
        case (.string(let s), .int(let i)):
            let chars = Array(s)
            let k = i < 0 ? chars.count + i : i
            return k >= 0 && k < chars.count ? .string(String(chars[k])) : .undefined
        case (.dict, .string(let key)), (.namespace, .string(let key)): return member(base, key)
        default: return .undefined
        }
    }

    private func number(_ v: JinjaValue) -> Double? {
        switch v {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    private func binary(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> JinjaValue {
        switch op {
        case "~": return .string(l.rendered + r.rendered)
        case "==": return .bool(equal(l, r))
        case "!=": return .bool(!equal(l, r))
        case "in":
            switch r {
            case .array(let a): return .bool(a.contains { equal($0, l) })
            case .string(let s): return .bool(s.contains(l.rendered))
            case .dict(let d, _): return .bool(d[l.rendered] != nil)
            default: return .bool(false)
            }
        case "+":
            switch (l, r) {
            case (.string(let a), .string(let b)): return .string(a + b)
            case (.array(let a), .array(let b)): return .array(a + b)
            case (.int(let a), .int(let b)): return .int(a + b)
            default: break
            }
        case "*":
            if case .string(let s) = l, case .int(let n) = r { return .string(String(repeating: s, count: max(0, n))) }
            if case .int(let a) = l, case .int(let b) = r { return .int(a * b) }
        case "-": if case .int(let a) = l, case .int(let b) = r { return .int(a - b) }
        case "//": if case .int(let a) = l, case .int(let b) = r, b != 0 { return .int(a / b) }
        case "%": if case .int(let a) = l, case .int(let b) = r, b != 0 { return .int(((a % b) + b) % b) }
        default: break
        }
        if ["<", ">", "<=", ">="].contains(op) {
            let ordered: Bool
            if let a = number(l), let b = number(r) {
                ordered = op == "<" ? a < b : op == ">" ? a > b : op == "<=" ? a <= b : a >= b
            } else if case .string(let a) = l, case .string(let b) = r {
                ordered = op == "<" ? a < b : op == ">" ? a > b : op == "<=" ? a <= b : a >= b
            } else {
                throw JinjaError("cannot compare \(l.rendered) and \(r.rendered)")
            }
            return .bool(ordered)
        }
        guard let a = number(l), let b = number(r) else {
            throw JinjaError("unsupported operands for '\(op)': \(l.pythonRepr) and \(r.pythonRepr)")
        }
        switch op {
        case "+": return .double(a + b)
        case "-": return .double(a - b)
        case "*": return .double(a * b)
        case "/":
            guard b != 0 else { throw JinjaError("division by zero") }
            return .double(a / b)
        default: throw JinjaError("unsupported operator '\(op)'")
        }
    }

    private func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
        if let x = number(a), let y = number(b), !(a.isBool != b.isBool) { return x == y }
        return a == b
    }

    // MARK: Calls, filters, tests

    private mutating func call(_ callee: JinjaExpr, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws
        -> JinjaValue
    {
        if case .attribute(let baseExpr, let method) = callee {
            let base = try eval(baseExpr)
            return try callMethod(base, method, args)
        }
        guard case .name(let fn) = callee else { throw JinjaError("cannot call this expression") }
        switch fn {
        case "raise_exception": throw JinjaError(args.first?.rendered ?? "template raised an exception")
        case "range":
            let ints = args.compactMap { v -> Int? in if case .int(let i) = v { return i } else { return nil } }
            let (start, stop, step) =
                ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count > 2 ? ints[2] : 1)
            guard step != 0, abs((stop - start) / step) < Self.maxIterations else { throw JinjaError("bad range") }
            return .array(stride(from: start, to: stop, by: step).map { .int($0) })
        case "namespace":
            var values: [String: JinjaValue] = [:]
            for (k, v) in kwargs { values[k] = v }
            return .namespace(JinjaNamespace(values))
        case "strftime_now":
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.dateFormat = (args.first?.rendered ?? "%Y-%m-%d")
                .replacingOccurrences(of: "%Y", with: "yyyy").replacingOccurrences(of: "%m", with: "MM")
                .replacingOccurrences(of: "%d", with: "dd").replacingOccurrences(of: "%B", with: "MMMM")
                .replacingOccurrences(of: "%b", with: "MMM")
            return .string(formatter.string(from: Date()))
        default:
            throw JinjaError("unknown function '\(fn)'")
        }
    }

    private func callMethod(_ base: JinjaValue, _ method: String, _ args: [JinjaValue]) throws -> JinjaValue {
        switch (base, method) {
        case (.string(let s), "strip"): return .string(s.trimmingCharacters(in: Self.strip(args)))
        case (.string(let s), "lstrip"):
            return .string(String(s.drop { Self.strip(args).contains($0.unicodeScalars.first!) }))
        case (.string(let s), "rstrip"):
            return .string(
                String(String(s.reversed().drop { Self.strip(args).contains($0.unicodeScalars.first!) }).reversed()))
        case (.string(let s), "upper"): return .string(s.uppercased())
        case (.string(let s), "lower"): return .string(s.lowercased())
        case (.string(let s), "title"): return .string(s.capitalized)
        case (.string(let s), "startswith"): return .bool(s.hasPrefix(args.first?.rendered ?? ""))
        case (.string(let s), "endswith"): return .bool(s.hasSuffix(args.first?.rendered ?? ""))
        case (.string(let s), "replace"):
            return .string(
                s.replacingOccurrences(of: args.first?.rendered ?? "", with: args.dropFirst().first?.rendered ?? ""))
        case (.string(let s), "split"):
            if let sep = args.first?.rendered {
                return .array(s.components(separatedBy: sep).map { .string($0) })
            }
            return .array(s.split(whereSeparator: \.isWhitespace).map { .string(String($0)) })
        case (.dict(let d, let keys), "items"): return .array(keys.map { .array([.string($0), d[$0]!]) })
        case (.dict(_, let keys), "keys"): return .array(keys.map { .string($0) })
        case (.dict(let d, let keys), "values"): return .array(keys.map { d[$0]! })
        case (.dict(let d, _), "get"): return d[args.first?.rendered ?? ""] ?? (args.dropFirst().first ?? .none)
        default: throw JinjaError("unknown method '\(method)' on \(base.pythonRepr)")
        }
    }

    private static func strip(_ args: [JinjaValue]) -> CharacterSet {
        if let chars = args.first, case .string(let s) = chars { return CharacterSet(charactersIn: s) }
        return .whitespacesAndNewlines
    }

    private func filter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargNames: [String]) throws
        -> JinjaValue
    {
        switch name {
        case "length", "count":
            switch v {
            case .array(let a): return .int(a.count)
            case .string(let s): return .int(s.count)
            case .dict(let d, _): return .int(d.count)
            default: return .int(0)
            }
        case "trim": return .string(v.rendered.trimmingCharacters(in: .whitespacesAndNewlines))
        case "upper": return .string(v.rendered.uppercased())
        case "lower": return .string(v.rendered.lowercased())
        case "title": return .string(v.rendered.capitalized)
        case "capitalize":
            let s = v.rendered
            return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "string": return .string(v.rendered)
        case "int": return .int(Int(number(v) ?? Double(v.rendered) ?? 0))
        case "float": return .double(number(v) ?? Double(v.rendered) ?? 0)
        case "default", "d":
            let useForFalsy = args.count > 1 && args[1].truthy
            if case .undefined = v { return args.first ?? .string("") }
            if useForFalsy && !v.truthy { return args.first ?? .string("") }
            return v
        case "first":
            if case .array(let a) = v { return a.first ?? .undefined }
            return v.rendered.first.map { .string(String($0)) } ?? .undefined
        case "last":
            if case .array(let a) = v { return a.last ?? .undefined }
            return v.rendered.last.map { .string(String($0)) } ?? .undefined
        case "join":
            let sep = args.first?.rendered ?? ""
            return .string(try iterate(v).map(\.rendered).joined(separator: sep))
        case "replace":
            return .string(
                v.rendered.replacingOccurrences(
                    of: args.first?.rendered ?? "", with: args.dropFirst().first?.rendered ?? ""))
        case "tojson": return .string(v.json)
        case "list": return .array(try iterate(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(s.reversed())) }
            return .array(try iterate(v).reversed())
        case "items":
            if case .dict(let d, let keys) = v { return .array(keys.map { .array([.string($0), d[$0]!]) }) }
            return .array([])
        case "safe", "e", "escape": return v
        case "abs": return number(v).map { .double(abs($0)) } ?? v
        case "selectattr", "rejectattr":
            let attr = args.first?.rendered ?? ""
            let keep = try iterate(v).filter { item in
                let a = member(item, attr)
                let passes =
                    args.count > 1 ? (try? test(args[1].rendered, a, Array(args.dropFirst(2)))) ?? false : a.truthy
                return name == "selectattr" ? passes : !passes
            }
            return .array(keep)
        case "map":
            if kwargNames.contains("attribute") || !args.isEmpty {
                let attr = args.first?.rendered ?? ""
                return .array(try iterate(v).map { member($0, attr) })
            }
            return v
        default:
            throw JinjaError("unknown filter '\(name)'")
        }
    }

    private func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        switch name {
        case "defined": if case .undefined = v { return false } else { return true }
        case "undefined": if case .undefined = v { return true } else { return false }
        case "none": return v == .none
        case "string": if case .string = v { return true } else { return false }
        case "number": return number(v) != nil && !v.isBool
        case "integer": if case .int = v { return true } else { return false }
        case "boolean": return v.isBool
        case "true": return v == .bool(true)
        case "false": return v == .bool(false)
        case "mapping": if case .dict = v { return true } else { return false }
        case "sequence", "iterable":
            switch v {
            case .array, .string, .dict: return true
            default: return false
            }
        case "equalto", "eq", "sameas": return equal(v, args.first ?? .undefined)
        case "odd": if case .int(let i) = v { return i % 2 != 0 } else { return false }
        case "even": if case .int(let i) = v { return i % 2 == 0 } else { return false }
        default: throw JinjaError("unknown test '\(name)'")
        }
    }
}

extension JinjaValue {
    var isBool: Bool { if case .bool = self { return true } else { return false } }
}
