import Engine
import Testing

@Suite struct KVBlockPoolTests {
    @Test func allocatesUntilFullThenRefuses() {
        let pool = KVBlockPool(blockCount: 4, blockSize: 2)
        let a = pool.allocate(3)
        #expect(a?.count == 3)
        #expect(Set(a ?? []).count == 3)
        #expect(pool.allocate(2) == nil)
        #expect(pool.freeCount == 1, "a refused allocation takes nothing")
        pool.release(a ?? [])
        #expect(pool.freeCount == 4)
        #expect(pool.usage == 0)
    }

    @Test func fullBlocksAreReusedByPrefixAndHeldByBothUsers() {
        let pool = KVBlockPool(blockCount: 8, blockSize: 4)
        let tokens: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        let blocks = pool.allocate(3)!
        let hashes = pool.blockHashes(of: tokens, promptLength: tokens.count, limit: 10)
        #expect(hashes.count == 2)
        // The kernels of a 10-token prompt's rows (Q4_K's GEMM for positions 1-8): what every lookup below expects.
        pool.register(
            block: blocks[0], hash: hashes[0], tokens: tokens[0..<4],
            kernels: pool.kernels(ofBlock: 0, promptLength: 10))
        pool.register(
            block: blocks[1], hash: hashes[1], tokens: tokens[4..<8],
            kernels: pool.kernels(ofBlock: 1, promptLength: 10))
        // Same first 9 tokens: both full blocks are found.
        let hit = pool.takeCachedPrefix(of: Array(tokens.prefix(9)) + [99], promptLength: 10)
        #expect(hit.blocks == Array(blocks.prefix(2)))
        #expect(hit.hashes == hashes)
        // A different second block: only the first is found.
        let partial = pool.takeCachedPrefix(of: [1, 2, 3, 4, 5, 6, 7, 0, 9], promptLength: 10)
        #expect(partial.blocks == [blocks[0]])
        // Exactly eight tokens: the last one must be computed, so only one block is reused.
        let exact = pool.takeCachedPrefix(of: Array(tokens.prefix(8)), promptLength: 10)
        #expect(exact.blocks == [blocks[0]])
        #expect(pool.usedCount == 3)
        pool.release(blocks)
        #expect(pool.usedCount == 2, "blocks still held by the other users stay in use")
        pool.release(hit.blocks)
        pool.release(partial.blocks)
        pool.release(exact.blocks)
        #expect(pool.usedCount == 0)
        #expect(pool.cachedBlockCount == 2, "freed full blocks stay cached")
        #expect(pool.takeCachedPrefix(of: tokens, promptLength: 10).blocks == Array(blocks.prefix(2)))
    }

    @Test func evictsTheLeastRecentlyFreedCachedBlockFirst() {
        let pool = KVBlockPool(blockCount: 3, blockSize: 2)
        let a = pool.allocate(1)!
        let b = pool.allocate(1)!
        let ha = KVBlockPool.hash(parent: nil, tokens: [1, 2], kernels: 0)
        let hb = KVBlockPool.hash(parent: nil, tokens: [3, 4], kernels: 0)
        pool.register(block: a[0], hash: ha, tokens: [1, 2], kernels: 0)
        pool.register(block: b[0], hash: hb, tokens: [3, 4], kernels: 0)
        pool.release(a)
        pool.release(b)
        // The never-used block goes first, then a (freed before b).
        let first = pool.allocate(2)!
        #expect(first.contains(a[0]) && !first.contains(b[0]))
        // (A 3-token prompt: its rows take the kernels registered, 0.)
        #expect(pool.takeCachedPrefix(of: [1, 2, 9], promptLength: 3).blocks.isEmpty, "a's content was evicted")
        #expect(pool.takeCachedPrefix(of: [3, 4, 9], promptLength: 3).blocks == b)
    }

    @Test func aCollidingHashNeverReturnsOtherTokens() {
        let pool = KVBlockPool(blockCount: 2, blockSize: 2)
        let a = pool.allocate(1)!
        let h = KVBlockPool.hash(parent: nil, tokens: [1, 2], kernels: 0)
        // Register a block under the hash of [1, 2] but holding [7, 7], as a collision would.
        pool.register(block: a[0], hash: h, tokens: [7, 7], kernels: 0)
        #expect(pool.takeCachedPrefix(of: [1, 2, 3], promptLength: 10).blocks.isEmpty)
    }

    @Test func disabledPrefixCachingFindsNothing() {
        let pool = KVBlockPool(blockCount: 2, blockSize: 2, prefixCaching: false)
        let a = pool.allocate(1)!
        pool.register(
            block: a[0], hash: KVBlockPool.hash(parent: nil, tokens: [1, 2], kernels: 0), tokens: [1, 2], kernels: 0
        )
        #expect(pool.takeCachedPrefix(of: [1, 2, 3], promptLength: 10).blocks.isEmpty)
        #expect(pool.cachedBlockCount == 0)
    }

    /// KV computed for a long prompt (rows from the tiled attention kernel) is not reused by a short prompt with the same
    /// tokens, nor the other way round; two long prompts share it.
    @Test func blocksAreSharedOnlyBetweenRowsOfTheSameAttentionKernel() {
        let pool = KVBlockPool(blockCount: 16, blockSize: 16)
        let long = (0..<100).map { Int32($0) }
        let blocks = pool.allocate(6)!
        for (j, h) in pool.blockHashes(of: long, promptLength: 100, limit: 6).enumerated() {
            let kernels = pool.kernels(ofBlock: j, promptLength: 100)
            #expect(kernels != 0 && kernels != pool.kernels(ofBlock: j, promptLength: 40))
            pool.register(block: blocks[j], hash: h, tokens: long[j * 16..<(j + 1) * 16], kernels: kernels)
        }
        let short = Array(long.prefix(40))
        #expect(pool.takeCachedPrefix(of: short, promptLength: 40).blocks.isEmpty)
        let other = Array(long.prefix(80)) + [7, 7, 7]
        let hit = pool.takeCachedPrefix(of: other, promptLength: other.count)
        #expect(hit.blocks == Array(blocks.prefix(5)))
        pool.release(hit.blocks)
    }
}
