import AsyncHTTPClient
import NIOCore

/// Reads an instance's server-sent events one `data:` payload at a time, however the bytes were cut: a JSON chunk,
/// or the closing `[DONE]`. Ends (nil) when the stream ends; throws when the connection breaks or goes silent past
/// the client's read timeout.
struct EventStreamReader {
    private var bytes: HTTPClientResponse.Body.AsyncIterator
    private var pending: [UInt8] = []
    private var scanFrom = 0
    private var ready: [String] = []

    init(_ body: HTTPClientResponse.Body) { bytes = body.makeAsyncIterator() }

    /// The next event's payload.
    mutating func next() async throws -> String? {
        while ready.isEmpty {
            guard let buffer = try await bytes.next() else {
                // A last event without its blank line still counts.
                if !pending.isEmpty { split(Array(pending[...])) }
                pending = []
                return ready.isEmpty ? nil : ready.removeFirst()
            }
            pending += buffer.readableBytesView
            extract()
        }
        return ready.removeFirst()
    }

    /// Moves every event that ended (a blank line) from `pending` to `ready`.
    private mutating func extract() {
        var i = max(0, scanFrom - 1)
        var start = 0
        while i + 1 < pending.count {
            if pending[i] == 0x0A, pending[i + 1] == 0x0A {
                split(Array(pending[start..<i]))
                start = i + 2
                i = start
            } else {
                i += 1
            }
        }
        pending.removeFirst(start)
        scanFrom = pending.count
    }

    /// The data lines of one event (several are joined with newlines, as the SSE format says).
    private mutating func split(_ event: [UInt8]) {
        var data: [String] = []
        for line in event.split(separator: 0x0A, omittingEmptySubsequences: false) {
            var text = String(decoding: line, as: UTF8.self)
            if text.hasSuffix("\r") { text.removeLast() }
            guard text.hasPrefix("data:") else { continue }
            text.removeFirst(5)
            if text.hasPrefix(" ") { text.removeFirst() }
            data.append(text)
        }
        if !data.isEmpty { ready.append(data.joined(separator: "\n")) }
    }
}
