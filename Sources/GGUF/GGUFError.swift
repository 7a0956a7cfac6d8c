/// Why a GGUF file could not be read.
public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    case badMagic(found: UInt32)
    case unsupportedVersion(UInt32)
    case truncated(what: String, offset: Int)
    case absurdCount(what: String, count: UInt64)
    case unknownValueType(UInt32, key: String)
    case unknownTensorType(UInt32, tensor: String)
    case invalidString(offset: Int)
    case tensorOutOfBounds(tensor: String)
    case badTensorShape(tensor: String, reason: String)
    case badAlignment(Int)
    case duplicateKey(String)
    case duplicateTensor(String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): return "cannot open GGUF file \(path): \(reason)"
        case .badMagic(let found):
            return "not a GGUF file: bad magic 0x\(String(found, radix: 16)) (expected 0x46554747, \"GGUF\")"
        case .unsupportedVersion(let v): return "unsupported GGUF version \(v) (supported: 2, 3)"
        case .truncated(let what, let offset): return "GGUF file truncated while reading \(what) at byte \(offset)"
        case .absurdCount(let what, let count): return "GGUF header declares an absurd \(what): \(count)"
        case .unknownValueType(let t, let key): return "unknown metadata value type \(t) for key '\(key)'"
        case .unknownTensorType(let t, let tensor): return "unknown tensor type \(t) for tensor '\(tensor)'"
        case .invalidString(let offset): return "invalid UTF-8 string at byte \(offset)"
        case .tensorOutOfBounds(let tensor): return "tensor '\(tensor)' extends past the end of the file"
        case .badTensorShape(let tensor, let reason): return "tensor '\(tensor)' has a bad shape: \(reason)"
        case .badAlignment(let a): return "general.alignment must be a positive power of two, got \(a)"
        case .duplicateKey(let k): return "duplicate metadata key '\(k)'"
        case .duplicateTensor(let t): return "duplicate tensor '\(t)'"
        }
    }
}
