import Foundation
import JSON

/// A value in the Jinja-subset interpreter used for chat templates.
public indirect enum JinjaValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    /// Ordered key/value pairs (insertion order kept, as Python dicts do).
    case dict([String: JinjaValue], keys: [String])
    case namespace(JinjaNamespace)

    /// Builds a dict value from pairs.
    public static func object(_ pairs: [(String, JinjaValue)]) -> JinjaValue {
        var d: [String: JinjaValue] = [:]
        var keys: [String] = []
        for (k, v) in pairs {
            if d[k] == nil { keys.append(k) }
            d[k] = v
        }
        return .dict(d, keys: keys)
    }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .dict(let d, _): return !d.isEmpty
        case .namespace: return true
        }
    }

    /// The value as Jinja prints it.
    var rendered: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .string(let s): return s
        case .array(let a): return "[" + a.map(\.pythonRepr).joined(separator: ", ") + "]"
        case .dict(let d, let keys):
            return "{" + keys.map { "'\($0)': \(d[$0]!.pythonRepr)" }.joined(separator: ", ") + "}"
        case .namespace: return "<namespace>"
        }
    }

    var pythonRepr: String {
        if case .string(let s) = self { return "'" + s.replacingOccurrences(of: "'", with: "\\'") + "'" }
        return rendered
    }

    /// JSON text, as the `tojson` filter gives it.
    var json: String {
        switch self {
        case .undefined, .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .string(let s): return JSONString.quoted(s)
        case .array(let a): return "[" + a.map(\.json).joined(separator: ", ") + "]"
        case .dict(let d, let keys):
            return "{" + keys.map { "\(JSONString.quoted($0)): \(d[$0]!.json)" }.joined(separator: ", ") + "}"
        case .namespace(let ns):
            return JinjaValue.object(ns.values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }).json
        }
    }

    /// The Jinja form of a JSON value (objects keep their member order).
    public init(_ json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .float(let f): self = .double(Double(f))
        case .string(let s): self = .string(s)
        case .array(let items): self = .array(items.map(JinjaValue.init))
        case .object(let pairs): self = .object(pairs.map { ($0.0, JinjaValue($0.1)) })
        }
    }

    /// Converts JSON-like Foundation values (from JSONSerialization) to Jinja values.
    public static func from(json: Any) -> JinjaValue {
        switch json {
        case let s as String: return .string(s)
        case let b as Bool where type(of: json) == Bool.self: return .bool(b)
        case let n as NSNumber:
            if String(cString: n.objCType) == "c" { return .bool(n.boolValue) }
            if n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e15,
                !String(describing: n).contains(".")
            {
                return .int(n.intValue)
            }
            return .double(n.doubleValue)
        case let a as [Any]: return .array(a.map { from(json: $0) })
        case let d as [String: Any]: return .object(d.keys.sorted().map { ($0, from(json: d[$0]!)) })
        case is NSNull: return .none
        default: return .undefined
        }
    }
}

/// The mutable object `namespace(...)` makes, so `{% set ns.x = ... %}` can escape loop scopes.
public final class JinjaNamespace: @unchecked Sendable, Equatable {
    var values: [String: JinjaValue]
    init(_ values: [String: JinjaValue]) { self.values = values }
    public static func == (a: JinjaNamespace, b: JinjaNamespace) -> Bool { a === b }
}

/// A template that could not be parsed or rendered.
public struct JinjaError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
    init(_ message: String) { self.message = message }
}
