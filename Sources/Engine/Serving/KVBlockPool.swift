/// Owns the KV cache's blocks: which are free, who holds each, and which full blocks can be reused by later
/// requests with the same token prefix (automatic prefix caching).
///
/// A full block is keyed by a hash chain over its tokens (the hash of the block before it, its own tokens, and the
/// attention kernels that computed its rows, which change the KV's bits: `AttentionKernelChoice`), and the block
/// remembers its tokens and kernels so that a hash collision can never hand out the wrong KV. Blocks whose last holder
/// let go stay cached, at the tail of a least-recently-freed queue, until a new allocation takes them from the head.
/// Not thread-safe: one engine loop drives it.
public final class KVBlockPool {
    public let blockCount: Int
    public let blockSize: Int
    public let prefixCachingEnabled: Bool
    /// How prompts are cut into micro-batches, which sets the kernels of each row (`PromptBatching`).
    public let batching: PromptBatching

    private var refCount: [Int32]
    private var blockHash: [UInt64?]
    private var blockTokens: [[Int32]]
    private var blockKernels: [UInt64]
    private var cached: [UInt64: Int32] = [:]
    // The free queue: a doubly linked list over block ids (-1 ends it), oldest free at the head.
    private var prev: [Int32]
    private var next: [Int32]
    private var head: Int32 = -1
    private var tail: Int32 = -1
    public private(set) var freeCount: Int

    public init(blockCount: Int, blockSize: Int, prefixCaching: Bool = true, batching: PromptBatching = .plain) {
        precondition(blockCount > 0 && blockSize > 0)
        self.batching = batching
        self.blockCount = blockCount
        self.blockSize = blockSize
        prefixCachingEnabled = prefixCaching
        refCount = [Int32](repeating: 0, count: blockCount)
        blockHash = [UInt64?](repeating: nil, count: blockCount)
        blockTokens = [[Int32]](repeating: [], count: blockCount)
        blockKernels = [UInt64](repeating: 0, count: blockCount)
        prev = [Int32](repeating: -1, count: blockCount)
        next = [Int32](repeating: -1, count: blockCount)
        freeCount = 0
        for b in 0..<Int32(blockCount) { pushTail(b) }
    }

    /// Blocks held by at least one request.
    public var usedCount: Int { blockCount - freeCount }

    /// Fraction of blocks held by requests, 0...1.
    public var usage: Double { Double(usedCount) / Double(blockCount) }

    /// Number of full blocks currently reusable by prefix.
    public var cachedBlockCount: Int { cached.count }

    /// The hash of a full block that follows a block with hash `parent` (nil for the first block), whose rows were
    /// computed by the attention kernels digested in `kernels` (`AttentionKernelChoice.signature`).
    public static func hash(parent: UInt64?, tokens: ArraySlice<Int32>, kernels: UInt64) -> UInt64 {
        // FNV-1a over the parent hash and the token ids, then a final avalanche.
        var f = FNV1a()
        f.mix(word: parent ?? 0x9e37_79b9_7f4a_7c15)
        for t in tokens { f.mix(word: UInt64(UInt32(bitPattern: t))) }
        if kernels != 0 { f.mix(word: kernels) }
        var h = f.value
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        return h
    }

    /// The attention kernels of block `index` of a request whose prompt has `promptLength` tokens.
    public func kernels(ofBlock index: Int, promptLength: Int) -> UInt64 {
        AttentionKernelChoice.signature(
            start: index * blockSize, count: blockSize, promptLength: promptLength, batching: batching)
            ^ KQuantOrderChoice.signature(
                start: index * blockSize, count: blockSize, promptLength: promptLength, batching: batching) << 1
    }

    /// Hashes of the full blocks of `tokens` (a request's tokens, the first `promptLength` its prompt), at most `limit`.
    public func blockHashes(of tokens: [Int32], promptLength: Int, limit: Int) -> [UInt64] {
        var hashes: [UInt64] = []
        var parent: UInt64? = nil
        var i = 0
        while hashes.count < limit, (i + 1) * blockSize <= tokens.count {
            let h = Self.hash(
                parent: parent, tokens: tokens[i * blockSize..<(i + 1) * blockSize],
                kernels: kernels(ofBlock: i, promptLength: promptLength))
            hashes.append(h)
            parent = h
            i += 1
        }
        return hashes
    }

    /// Takes the longest run of cached blocks that holds a prefix of `tokens`, leaving at least one token to
    /// compute. Returns the blocks, now held by the caller, and their chain hashes.
    public func takeCachedPrefix(of tokens: [Int32], promptLength: Int) -> (blocks: [Int32], hashes: [UInt64]) {
        guard prefixCachingEnabled, tokens.count > 1 else { return ([], []) }
        let limit = (tokens.count - 1) / blockSize
        var taken: [Int32] = []
        var hashes: [UInt64] = []
        for (i, h) in blockHashes(of: tokens, promptLength: promptLength, limit: limit).enumerated() {
            guard
                let block = cachedBlock(
                    hash: h, tokens: tokens[i * blockSize..<(i + 1) * blockSize],
                    kernels: kernels(ofBlock: i, promptLength: promptLength))
            else { break }
            take(block)
            taken.append(block)
            hashes.append(h)
        }
        return (taken, hashes)
    }

    /// The cached block with chain hash `hash` when it holds `tokens` computed by `kernels`; nothing is taken.
    public func cachedBlock(hash: UInt64, tokens: ArraySlice<Int32>, kernels: UInt64) -> Int32? {
        guard prefixCachingEnabled, let block = cached[hash], blockTokens[Int(block)].elementsEqual(tokens),
            blockKernels[Int(block)] == kernels
        else { return nil }
        return block
    }

    /// Holds `block` (a cached one, free or not) for one more user.
    public func take(_ block: Int32) {
        if refCount[Int(block)] == 0 { unlink(block) }
        refCount[Int(block)] += 1
    }

    /// Allocates `count` fresh blocks, evicting the least recently freed cached blocks; nil (and nothing taken) when
    /// too few are free.
    public func allocate(_ count: Int) -> [Int32]? {
        guard count <= freeCount else { return nil }
        var blocks: [Int32] = []
        blocks.reserveCapacity(count)
        for _ in 0..<count {
            let b = head
            unlink(b)
            if let h = blockHash[Int(b)] {
                if cached[h] == b { cached[h] = nil }
                blockHash[Int(b)] = nil
                blockTokens[Int(b)] = []
            }
            refCount[Int(b)] = 1
            blocks.append(b)
        }
        return blocks
    }

    /// Records that `block` holds the full block of `tokens` whose chain hash is `hash`, so later requests can reuse
    /// it. A block whose content is already cached elsewhere stays private.
    public func register(block: Int32, hash: UInt64, tokens: ArraySlice<Int32>, kernels: UInt64) {
        guard prefixCachingEnabled, blockHash[Int(block)] == nil, cached[hash] == nil else { return }
        cached[hash] = block
        blockHash[Int(block)] = hash
        blockTokens[Int(block)] = Array(tokens)
        blockKernels[Int(block)] = kernels
    }

    /// Lets go of `blocks` (a request's table); the last ones go first so that a shared prefix stays cached longest.
    public func release(_ blocks: [Int32]) {
        for b in blocks.reversed() {
            refCount[Int(b)] -= 1
            precondition(refCount[Int(b)] >= 0, "block \(b) released twice")
            if refCount[Int(b)] == 0 {
                if blockHash[Int(b)] == nil {
                    pushHead(b)  // Nothing to reuse: hand it out first.
                } else {
                    pushTail(b)
                }
            }
        }
    }

    /// Drops every cached prefix (the blocks stay free).
    public func resetPrefixCache() {
        for (_, b) in cached {
            blockHash[Int(b)] = nil
            blockTokens[Int(b)] = []
        }
        cached = [:]
    }

    private func pushTail(_ b: Int32) {
        prev[Int(b)] = tail
        next[Int(b)] = -1
        if tail >= 0 { next[Int(tail)] = b } else { head = b }
        tail = b
        freeCount += 1
    }

    private func pushHead(_ b: Int32) {
        next[Int(b)] = head
        prev[Int(b)] = -1
        if head >= 0 { prev[Int(head)] = b } else { tail = b }
        head = b
        freeCount += 1
    }

    private func unlink(_ b: Int32) {
        let p = prev[Int(b)]
        let n = next[Int(b)]
        if p >= 0 { next[Int(p)] = n } else { head = n }
        if n >= 0 { prev[Int(n)] = p } else { tail = p }
        prev[Int(b)] = -1
        next[Int(b)] = -1
        freeCount -= 1
    }
}
