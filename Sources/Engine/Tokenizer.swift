import GGUF

/// Text ↔ token ids from a GGUF vocabulary: byte-level BPE (`gpt2`) or SentencePiece-style BPE (`llama`), with
/// special tokens recognised in text.
public final class Tokenizer: Sendable {
    public enum Kind: Sendable { case byteLevelBPE(PreTokenizer), sentencePiece }

    public let kind: Kind
    public let tokens: [String]
    /// ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    public let tokenTypes: [Int32]
    public let bosId: Int32?
    public let eosId: Int32?
    /// End-of-generation ids: EOS, EOT and the chat end markers found in the vocabulary.
    public let endOfGenerationIds: Set<Int32>
    public let addBOS: Bool
    public let addEOS: Bool
    public let addSpacePrefix: Bool
    private let ids: [String: Int32]
    /// (left, right) → (rank, merged id) for byte-level BPE.
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let scores: [Float]
    /// Special token texts (control and user-defined) by first byte, longest first in each bucket.
    private let specials: [[(text: [UInt8], id: Int32, control: Bool)]]
    private let byteToChar: [Character]
    private let charToByte: [Character: UInt8]
    private let byteTokens: [Int32]

    public var vocabularySize: Int { tokens.count }

    public init(file: GGUFFile) throws {
        let meta = file.metadata
        guard let tokenValues = meta["tokenizer.ggml.tokens"]?.arrayValue, !tokenValues.isEmpty else {
            throw ModelError.badTokenizer("metadata lacks tokenizer.ggml.tokens")
        }
        tokens = tokenValues.map { $0.stringValue ?? "" }
        tokenTypes =
            meta["tokenizer.ggml.token_type"]?.arrayValue?.map { Int32($0.intValue ?? 1) }
            ?? [Int32](repeating: 1, count: tokens.count)
        scores = meta["tokenizer.ggml.scores"]?.arrayValue?.map { Float($0.doubleValue ?? 0) } ?? []
        var ids: [String: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = Int32(i) }
        self.ids = ids
        let model = meta["tokenizer.ggml.model"]?.stringValue ?? "gpt2"
        let isSPM = model == "llama"
        guard model == "gpt2" || isSPM else {
            throw ModelError.badTokenizer("unsupported tokenizer model '\(model)' (supported: gpt2, llama)")
        }
        kind = isSPM ? .sentencePiece : .byteLevelBPE(PreTokenizer(ggufName: meta["tokenizer.ggml.pre"]?.stringValue))
        func optionalId(_ key: String) -> Int32? {
            guard let v = meta[key]?.intValue, v >= 0, v < tokenValues.count else { return nil }
            return Int32(v)
        }
        bosId = optionalId("tokenizer.ggml.bos_token_id")
        eosId = optionalId("tokenizer.ggml.eos_token_id")
        addBOS = meta["tokenizer.ggml.add_bos_token"]?.boolValue ?? isSPM
        addEOS = meta["tokenizer.ggml.add_eos_token"]?.boolValue ?? false
        addSpacePrefix = meta["tokenizer.ggml.add_space_prefix"]?.boolValue ?? isSPM
        var ends = Set<Int32>()
        if let e = eosId { ends.insert(e) }
        if let e = optionalId("tokenizer.ggml.eot_token_id") { ends.insert(e) }
        for marker in [
            "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<|end|>", "<end_of_turn>",
        ] {
            if let id = ids[marker], tokenTypes[Int(id)] == 3 { ends.insert(id) }
        }
        endOfGenerationIds = ends
        let types = tokenTypes
        var buckets = [[(text: [UInt8], id: Int32, control: Bool)]](repeating: [], count: 256)
        for (i, t) in tokens.enumerated() where (types[i] == 3 || types[i] == 4) && !t.isEmpty {
            let text = Array(t.utf8)
            buckets[Int(text[0])].append((text, Int32(i), types[i] == 3))
        }
        specials = buckets.map { $0.sorted { $0.text.count > $1.text.count } }
        let (b2c, c2b) = Self.byteLevelTables()
        byteToChar = b2c
        charToByte = c2b
        if isSPM {
            merges = [:]
            byteTokens = (0..<256).map { ids[String(format: "<0x%02X>", $0)] ?? -1 }
        } else {
            var table: [UInt64: (rank: Int32, id: Int32)] = [:]
            let mergeValues = meta["tokenizer.ggml.merges"]?.arrayValue ?? []
            table.reserveCapacity(mergeValues.count)
            for (rank, value) in mergeValues.enumerated() {
                guard let line = value.stringValue, let space = line.firstIndex(of: " ") else { continue }
                let left = String(line[..<space])
                let right = String(line[line.index(after: space)...])
                guard let l = ids[left], let r = ids[right], let m = ids[left + right] else { continue }
                let key = UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
                if table[key] == nil { table[key] = (Int32(rank), m) }
            }
            merges = table
            byteTokens = (0..<256).map { ids[String(b2c[$0])] ?? -1 }
        }
    }

    // MARK: Encoding

    /// Token ids for `text`. `addSpecial` adds BOS/EOS as the vocabulary asks; `parseSpecial` turns control token
    /// texts such as `<|im_start|>` into their ids instead of spelling them out. User-defined tokens (Gemma's runs of
    /// spaces and newlines) are always taken whole, as llama.cpp does.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        if addSpecial, addBOS, let bos = bosId { out.append(bos) }
        let bytes = Array(text.utf8)
        var start = 0
        var i = 0
        // SentencePiece adds its space prefix at the start and after each special token (llama.cpp).
        var afterSpecial = true
        func flush(_ end: Int) {
            if end > start {
                encodeFragment(Array(bytes[start..<end]), leadingSpace: afterSpecial, into: &out)
                afterSpecial = false
            }
        }
        while i < bytes.count {
            if let match = specialMatch(bytes, at: i, control: parseSpecial) {
                flush(i)
                out.append(match.id)
                afterSpecial = true
                i += match.length
                start = i
            } else {
                i += 1
            }
        }
        flush(bytes.count)
        if addSpecial, addEOS, let eos = eosId { out.append(eos) }
        return out
    }

    private func specialMatch(_ bytes: [UInt8], at i: Int, control: Bool) -> (id: Int32, length: Int)? {
        for special in specials[Int(bytes[i])]
        where i + special.text.count <= bytes.count && (control || !special.control) {
            if bytes[i..<(i + special.text.count)].elementsEqual(special.text) {
                return (special.id, special.text.count)
            }
        }
        return nil
    }

    private func encodeFragment(_ bytes: [UInt8], leadingSpace: Bool, into out: inout [Int32]) {
        let text = String(decoding: bytes, as: UTF8.self)
        switch kind {
        case .byteLevelBPE(let pre):
            for word in pre.split(text) { bytePairEncode(Array(word.utf8), into: &out) }
        case .sentencePiece:
            var normalized = text.replacingOccurrences(of: " ", with: "▁")
            if leadingSpace && addSpacePrefix { normalized = "▁" + normalized }
            sentencePieceEncode(normalized, into: &out)
        }
    }

    /// Byte-level BPE of one pre-tokenized word: start from single bytes, repeatedly merge the best-ranked pair.
    private func bytePairEncode(_ word: [UInt8], into out: inout [Int32]) {
        if word.isEmpty { return }
        let whole = String(word.map { byteToChar[Int($0)] })
        if let id = ids[whole] {
            out.append(id)
            return
        }
        var symbols = word.map { byteTokens[Int($0)] }
        while symbols.count > 1 {
            var bestRank = Int32.max
            var bestIndex = -1
            var bestId: Int32 = 0
            for k in 0..<(symbols.count - 1) {
                let key = UInt64(UInt32(bitPattern: symbols[k])) << 32 | UInt64(UInt32(bitPattern: symbols[k + 1]))
                if let m = merges[key], m.rank < bestRank {
                    bestRank = m.rank
                    bestIndex = k
                    bestId = m.id
                }
            }
            if bestIndex < 0 { break }
            symbols[bestIndex] = bestId
            symbols.remove(at: bestIndex + 1)
        }
        out.append(contentsOf: symbols.filter { $0 >= 0 })
    }

    /// SentencePiece BPE: start from UTF-8 characters, repeatedly merge the adjacent pair whose joined piece has the
    /// best score (the leftmost on ties), as llama.cpp does with a queue of candidate pairs; characters without a
    /// piece fall back to byte tokens.
    private func sentencePieceEncode(_ text: String, into out: inout [Int32]) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return }
        // Symbols as a linked list of byte ranges.
        var start: [Int] = []
        var length: [Int] = []
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            let n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
            start.append(i)
            length.append(min(n, bytes.count - i))
            i += n
        }
        let count = start.count
        var next = Array(1...count)
        next[count - 1] = -1
        var prev = Array(-1..<(count - 1))
        var queue = PairQueue()
        func piece(_ from: Int, _ n: Int) -> Int32? {
            bytes.withUnsafeBufferPointer {
                ids[String(decoding: UnsafeBufferPointer(rebasing: $0[from..<(from + n)]), as: UTF8.self)]
            }
        }
        func consider(_ left: Int, _ right: Int) {
            guard left >= 0, right >= 0 else { return }
            let size = length[left] + length[right]
            guard let id = piece(start[left], size) else { return }
            queue.push(.init(score: Int(id) < scores.count ? scores[Int(id)] : 0, left: left, right: right, size: size))
        }
        for k in 0..<(count - 1) { consider(k, k + 1) }
        while let pair = queue.pop() {
            // Stale when either side has been merged away or grown since the pair was queued.
            guard length[pair.left] > 0, length[pair.right] > 0, length[pair.left] + length[pair.right] == pair.size
            else { continue }
            length[pair.left] += length[pair.right]
            length[pair.right] = 0
            next[pair.left] = next[pair.right]
            if next[pair.right] >= 0 { prev[next[pair.right]] = pair.left }
            consider(prev[pair.left], pair.left)
            consider(pair.left, next[pair.left])
        }
        var k = 0
        while k >= 0 {
            if let id = piece(start[k], length[k]) {
                out.append(id)
            } else {
                for byte in bytes[start[k]..<(start[k] + length[k])] where byteTokens[Int(byte)] >= 0 {
                    out.append(byteTokens[Int(byte)])
                }
            }
            k = next[k]
        }
    }

    // MARK: Decoding

    /// The bytes token `id` stands for. Control tokens give nothing unless `renderSpecial`.
    public func bytes(of id: Int32, renderSpecial: Bool = false) -> [UInt8] {
        guard id >= 0, Int(id) < tokens.count else { return [] }
        let type = tokenTypes[Int(id)]
        let text = tokens[Int(id)]
        if type == 3 || type == 5 { return renderSpecial ? Array(text.utf8) : [] }
        if type == 4 { return Array(text.utf8) }
        switch kind {
        case .byteLevelBPE:
            return text.compactMap { charToByte[$0] }
        case .sentencePiece:
            if type == 6, text.hasPrefix("<0x"), let b = UInt8(text.dropFirst(3).dropLast(), radix: 16) { return [b] }
            return Array(text.replacingOccurrences(of: "▁", with: " ").utf8)
        }
    }

    /// Decodes ids to text (invalid UTF-8 replaced); SentencePiece's added leading space is removed.
    public func decode(_ ids: [Int32], renderSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids { bytes += self.bytes(of: id, renderSpecial: renderSpecial) }
        if case .sentencePiece = kind, addSpacePrefix, bytes.first == UInt8(ascii: " ") { bytes.removeFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The id of a token text, if the vocabulary has it.
    public func id(of token: String) -> Int32? { ids[token] }

    /// GPT-2's reversible map between bytes and printable characters.
    static func byteLevelTables() -> ([Character], [Character: UInt8]) {
        var direct: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
        var mapped = direct
        var extra = 0
        for b in 0..<256 where !direct.contains(b) {
            direct.append(b)
            mapped.append(256 + extra)
            extra += 1
        }
        var b2c = [Character](repeating: " ", count: 256)
        var c2b: [Character: UInt8] = [:]
        for (b, c) in zip(direct, mapped) {
            let ch = Character(Unicode.Scalar(UInt32(c))!)
            b2c[b] = ch
            c2b[ch] = UInt8(b)
        }
        return (b2c, c2b)
    }
}

/// Candidate merges of SentencePiece encoding, best first: the highest score, then the leftmost.
struct PairQueue {
    struct Pair {
        let score: Float
        let left: Int
        let right: Int
        let size: Int

        func precedes(_ other: Pair) -> Bool { score > other.score || (score == other.score && left < other.left) }
    }

    private var heap: [Pair] = []

    mutating func push(_ pair: Pair) {
        heap.append(pair)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i].precedes(heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Pair? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1
                let r = l + 1
                var best = i
                if l < heap.count, heap[l].precedes(heap[best]) { best = l }
                if r < heap.count, heap[r].precedes(heap[best]) { best = r }
                if best == i { break }
                heap.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}

/// Turns a stream of token ids into text pieces without splitting UTF-8 characters: bytes of an incomplete
/// character are held back until the character is complete.
public struct IncrementalDecoder: Sendable {
    private var pending: [UInt8] = []
    public init() {}

    /// Adds a token's bytes and returns the text that is now complete.
    public mutating func append(_ bytes: [UInt8]) -> String {
        pending += bytes
        let complete = Self.completePrefixLength(pending)
        guard complete > 0 else { return "" }
        let text = String(decoding: pending[0..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is held back, with invalid bytes replaced (call at the end of a stream).
    public mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix that does not end inside an incomplete (but possibly valid) UTF-8 sequence.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var i = n - 1
        var back = 0
        while i >= 0, back < 4, bytes[i] & 0xC0 == 0x80 {
            i -= 1
            back += 1
        }
        guard i >= 0 else { return n }
        let lead = bytes[i]
        let needed: Int
        if lead & 0x80 == 0 {
            needed = 1
        } else if lead & 0xE0 == 0xC0 {
            needed = 2
        } else if lead & 0xF0 == 0xE0 {
            needed = 3
        } else if lead & 0xF8 == 0xF0 {
            needed = 4
        } else {
            return n
        }
        return n - i < needed ? i : n
    }
}
