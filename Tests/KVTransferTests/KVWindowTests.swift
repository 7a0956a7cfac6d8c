import Discovery
import Engine
import Foundation
import KVTransfer
import Testing

/// Sliding-window layers over the wire: a transfer carries every position of a global layer and only the window of a
/// sliding one, whole (PUT) or pulled (GET); a receiver refuses a transfer that leaves out positions a layer needs.
@Suite struct KVWindowTests {
    static let windows = KVTransferWindows(windows: [64, nil, 64])

    /// `payload` with its sliding layers cut to their windows.
    static func windowed(tokens: Int = 200) -> KVPayload {
        var p = samplePayload(tokens: tokens, layers: 3, kvDim: 16)
        p.layerStarts = windows.starts(tokens: tokens)
        return p
    }

    /// Whether `got` carries what `want` carries: the same starts, and the same values from each layer's start.
    static func expectCarried(_ arrival: KVArrival, _ want: KVPayload) {
        guard case .payload(let got) = arrival else {
            Issue.record("got \(arrival)")
            return
        }
        #expect(got.layerStarts == want.layerStarts && got.tokens == want.tokens)
        #expect(got.carriedBytes == want.carriedBytes)
        for layer in 0..<want.layerCount {
            for part in [false, true] {
                let from = want.offset(layer: layer, value: part) + want.layerStarts[layer] * want.kvDim
                let to = want.offset(layer: layer, value: part) + want.valuesPerPart
                #expect(got.values[from..<to] == want.values[from..<to], "layer \(layer)")
            }
        }
    }

    @Test func aSlidingLayerTravelsAsItsWindowPushedOrPulled() async throws {
        // The transfer deadline of a loaded machine (the whole suite on two cores), not of a quiet one.
        let producer = try await makeNode(timeout: 30)
        let consumer = try await makeNode(timeout: 30, windows: Self.windows)
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        let p = Self.windowed()
        #expect(p.layerStarts == [136, 0, 136])
        #expect(p.carriedBytes == (64 + 200 + 64) * 2 * 16 * 2)
        try await producer.send(p, requestId: "put", to: peer)
        Self.expectCarried(await consumer.inbox.wait(for: "put", timeout: 30), p)

        #expect(producer.outbox.deliver(p, for: "get"))
        Self.expectCarried(
            await consumer.pull("get", from: HostPort(host: "127.0.0.1", port: producer.port), before: 0), p)

        // Every position is accepted too (a sender that does not cut windows).
        let whole = samplePayload(tokens: 200, layers: 3, kvDim: 16)
        try await producer.send(whole, requestId: "whole", to: peer)
        Self.expectCarried(await consumer.inbox.wait(for: "whole", timeout: 30), whole)
    }

    @Test func aTransferMissingPositionsALayerNeedsIsRefused() async throws {
        // The transfer deadline of a loaded machine (the whole suite on two cores), not of a quiet one.
        let producer = try await makeNode(timeout: 30)
        let consumer = try await makeNode(timeout: 30, windows: Self.windows)
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        var global = Self.windowed()
        global.layerStarts[1] = 10  // the global layer without its first 10 positions
        await #expect(throws: (any Error).self) { try await producer.send(global, requestId: "g", to: peer) }
        expectRejected(await consumer.inbox.wait(for: "g", timeout: 30), containing: "do not fit")
        var sliding = Self.windowed()
        sliding.layerStarts[0] = 137  // one position short of the window
        await #expect(throws: (any Error).self) { try await producer.send(sliding, requestId: "s", to: peer) }
        expectRejected(await consumer.inbox.wait(for: "s", timeout: 30), containing: "do not fit")
    }
}
