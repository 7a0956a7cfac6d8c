/// Splits text into the words byte-level BPE merges within, following the regex of each vocabulary's
/// `tokenizer.ggml.pre` (written out by hand over Unicode scalars; no regex engine).
public enum PreTokenizer: String, Sendable, CaseIterable {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    case gpt2 = "gpt-2"
    /// SmolLM / StarCoder: every digit alone (`\p{N}`), then GPT-2's rules on what is between.
    case smollm
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`, punctuation with
    /// trailing newlines, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    case llama3 = "llama-bpe"
    /// Qwen2: as Llama 3 but digits one at a time.
    case qwen2

    /// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value (unknown or missing names fall back to GPT-2).
    public init(ggufName: String?) {
        switch ggufName {
        case "smollm", "starcoder", "refact", "codeshell": self = .smollm
        case "llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral": self = .llama3
        case "qwen2", "deepseek-r1-qwen": self = .qwen2
        default: self = .gpt2
        }
    }

    /// Splits `text` into words.
    public func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        var words: [String] = []
        func emit(_ range: Range<Int>) {
            var s = String.UnicodeScalarView()
            s.append(contentsOf: scalars[range])
            words.append(String(s))
        }
        switch self {
        case .gpt2:
            for r in Self.gpt2Ranges(scalars, 0..<scalars.count) { emit(r) }
        case .smollm:
            var start = 0
            for i in 0..<scalars.count where scalars[i].isNumber {
                for r in Self.gpt2Ranges(scalars, start..<i) { emit(r) }
                emit(i..<(i + 1))
                start = i + 1
            }
            for r in Self.gpt2Ranges(scalars, start..<scalars.count) { emit(r) }
        case .llama3, .qwen2:
            for r in Self.llama3Ranges(scalars, maxDigits: self == .llama3 ? 3 : 1) { emit(r) }
        }
        return words
    }

    // MARK: GPT-2

    static func gpt2Ranges(_ s: [Unicode.Scalar], _ bounds: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = bounds.lowerBound
        let end = bounds.upperBound
        while i < end {
            let j = gpt2Match(s, i, end)
            out.append(i..<j)
            i = j
        }
        return out
    }

    private static func gpt2Match(_ s: [Unicode.Scalar], _ i: Int, _ end: Int) -> Int {
        if let j = contraction(s, i, end, caseInsensitive: false) { return j }
        let afterSpace = s[i] == " " && i + 1 < end ? i + 1 : i
        if s[afterSpace].isLetter { return run(s, afterSpace, end) { $0.isLetter } }
        if s[afterSpace].isNumber { return run(s, afterSpace, end) { $0.isNumber } }
        if s[afterSpace].isOther { return run(s, afterSpace, end) { $0.isOther } }
        return whitespace(s, i, end)
    }

    // MARK: Llama 3 / Qwen2

    static func llama3Ranges(_ s: [Unicode.Scalar], maxDigits: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = 0
        let end = s.count
        while i < end {
            let j = llama3Match(s, i, end, maxDigits: maxDigits)
            out.append(i..<j)
            i = j
        }
        return out
    }

    private static func llama3Match(_ s: [Unicode.Scalar], _ i: Int, _ end: Int, maxDigits: Int) -> Int {
        if let j = contraction(s, i, end, caseInsensitive: true) { return j }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if s[i].isLetter { return run(s, i, end) { $0.isLetter } }
        if !s[i].isNewline, !s[i].isNumber, i + 1 < end, s[i + 1].isLetter {
            return run(s, i + 1, end) { $0.isLetter }
        }
        // \p{N}{1,3}
        if s[i].isNumber {
            var j = i
            while j < end, j - i < maxDigits, s[j].isNumber { j += 1 }
            return j
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let afterSpace = s[i] == " " && i + 1 < end ? i + 1 : i
        if s[afterSpace].isOther {
            var j = run(s, afterSpace, end) { $0.isOther }
            while j < end, s[j].isNewline { j += 1 }
            return j
        }
        // \s*[\r\n]+ : the whitespace run up to and including its last newline.
        let wsEnd = run(s, i, end) { $0.isSpace }
        var lastNewline = -1
        for k in i..<wsEnd where s[k].isNewline { lastNewline = k }
        if lastNewline >= 0 {
            var j = lastNewline + 1
            while j < wsEnd, s[j].isNewline { j += 1 }
            return j
        }
        return whitespace(s, i, end)
    }

    // MARK: Shared pieces

    /// `'s|'t|'re|'ve|'m|'ll|'d`.
    private static func contraction(_ s: [Unicode.Scalar], _ i: Int, _ end: Int, caseInsensitive: Bool) -> Int? {
        guard s[i] == "'", i + 1 < end else { return nil }
        func lower(_ k: Int) -> Unicode.Scalar? {
            guard k < end else { return nil }
            let c = s[k]
            if caseInsensitive, c.value >= 65, c.value <= 90 { return Unicode.Scalar(c.value + 32) }
            return c
        }
        switch lower(i + 1) {
        case "s", "t", "m", "d": return i + 2
        case "r": return lower(i + 2) == "e" ? i + 3 : nil
        case "v": return lower(i + 2) == "e" ? i + 3 : nil
        case "l": return lower(i + 2) == "l" ? i + 3 : nil
        default: return nil
        }
    }

    /// `\s+(?!\S)|\s+` at a whitespace character (or any leftover character, taken alone).
    private static func whitespace(_ s: [Unicode.Scalar], _ i: Int, _ end: Int) -> Int {
        guard s[i].isSpace else { return i + 1 }
        let j = run(s, i, end) { $0.isSpace }
        if j == end || j - i == 1 { return j }
        return j - 1
    }

    @inline(__always)
    private static func run(_ s: [Unicode.Scalar], _ i: Int, _ end: Int, _ predicate: (Unicode.Scalar) -> Bool)
        -> Int
    {
        var j = i
        while j < end, predicate(s[j]) { j += 1 }
        return j
    }
}

extension Unicode.Scalar {
    var isLetter: Bool {
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
    var isNumber: Bool {
        switch properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
    var isSpace: Bool { properties.isWhitespace }
    var isNewline: Bool { self == "\n" || self == "\r" }
    /// `[^\s\p{L}\p{N}]`.
    var isOther: Bool { !isSpace && !isLetter && !isNumber }
}
