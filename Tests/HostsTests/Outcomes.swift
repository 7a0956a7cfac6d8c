import AsyncHTTPClient
import Foundation
import NIOCore

/// How one request through the proxy ended, as the fault tests count them.
enum Outcome: String, Sendable, CaseIterable {
    case ok
    /// A non-200 status with an OpenAI error body.
    case errorStatus = "error status"
    /// A 200 stream that ended with an error event.
    case errorEvent = "error event"
    /// Nothing ended it before the client's deadline.
    case hung
    /// A 200 with no text at all.
    case empty200 = "empty 200"
}

/// Counts of outcomes, printed as the fault's figures.
struct Tally: CustomStringConvertible, Sendable {
    private(set) var counts: [Outcome: Int] = [:]
    mutating func add(_ o: Outcome) { counts[o, default: 0] += 1 }
    subscript(_ o: Outcome) -> Int { counts[o] ?? 0 }
    var total: Int { counts.values.reduce(0, +) }
    var description: String { Outcome.allCases.map { "\($0.rawValue) \(self[$0])" }.joined(separator: ", ") }
}

/// A streamed completion as the client saw it.
struct StreamResult {
    var status = 0
    var events: [[String: Any]] = []
    var sawDone = false
    var errorEvent = false
    var secondsToFirstEvent: Double?
    var secondsToEnd: Double = 0
    var hung = false

    var text: String { events.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }.joined() }
    var id: String? { events.first?["id"] as? String }

    var outcome: Outcome {
        if hung { return .hung }
        if status != 200 { return .errorStatus }
        if errorEvent { return .errorEvent }
        return text.isEmpty ? .empty200 : .ok
    }
}

extension StreamResult: @unchecked Sendable {}

/// Streams `body` to `url`, calling `onEvent` with each event and the count so far; gives up (hung) after
/// `deadline` seconds.
func stream(
    _ url: String, _ body: String, deadline: Double = 60,
    onEvent: @escaping @Sendable (_ event: [String: Any], _ count: Int) async -> Void = { _, _ in }
) async -> StreamResult {
    let start = Date()
    let work = Task { () -> StreamResult in
        var result = StreamResult()
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(Int64(deadline) + 5))
            result.status = Int(response.status.code)
            var pending = ""
            for try await chunk in response.body {
                pending += String(buffer: chunk)
                while let end = pending.range(of: "\n\n") {
                    let block = String(pending[..<end.lowerBound])
                    pending = String(pending[end.upperBound...])
                    guard block.hasPrefix("data: ") else { continue }
                    let payload = block.dropFirst(6)
                    if payload == "[DONE]" {
                        result.sawDone = true
                        continue
                    }
                    guard let event = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any]
                    else { continue }
                    if event["error"] != nil {
                        result.errorEvent = true
                        continue
                    }
                    if result.secondsToFirstEvent == nil {
                        result.secondsToFirstEvent = Date().timeIntervalSince(start)
                    }
                    result.events.append(event)
                    await onEvent(event, result.events.count)
                }
            }
            if result.status != 200, !pending.isEmpty { result.errorEvent = pending.contains("\"error\"") }
        } catch {
            // A transport error ends the stream without [DONE]: the client sees a broken stream.
            if result.status == 0 { result.status = -1 } else { result.errorEvent = true }
        }
        result.secondsToEnd = Date().timeIntervalSince(start)
        return result
    }
    let watchdog = Task {
        try? await Task.sleep(for: .seconds(deadline))
        work.cancel()
    }
    var result = await work.value
    watchdog.cancel()
    if result.secondsToEnd >= deadline - 0.05 { result.hung = true }
    return result
}

/// A non-streamed completion, classified; hung when nothing answers within `deadline` seconds.
func classify(_ url: String, _ body: String, deadline: Double = 60) async -> (Outcome, Reply?) {
    do {
        let reply = try await httpPost(url, body, timeout: Int64(deadline))
        if reply.status != 200 { return (.errorStatus, reply) }
        return ((reply.text ?? "").isEmpty ? .empty200 : .ok, reply)
    } catch let error as HTTPClientError where error == .deadlineExceeded {
        return (.hung, nil)
    } catch {
        return (.errorStatus, nil)
    }
}
