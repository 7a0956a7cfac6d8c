import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat

/// The few calls of etcd's v3 API that discovery needs, through etcd's JSON gateway over HTTP (AsyncHTTPClient):
/// leases (grant, keep-alive, revoke), put, a prefix range and a prefix watch. Keys and values travel base64 as the
/// gateway wants, 64-bit numbers as strings. Each call tries the members in turn, each within `timeout` seconds.
public struct EtcdClient: Sendable {
    public let endpoints: EtcdEndpoints
    let timeout: Double
    let http: HTTPClient

    public init(endpoints: EtcdEndpoints, timeout: Double = 2, http: HTTPClient = .shared) {
        self.endpoints = endpoints
        self.timeout = timeout
        self.http = http
    }

    /// One key and its value.
    public struct KeyValue: Sendable, Equatable {
        public var key: String
        public var value: [UInt8]
    }

    /// A change under a watched prefix.
    public enum Event: Sendable, Equatable {
        case put(KeyValue)
        case delete(key: String)
    }

    // MARK: - Calls

    /// A lease of `ttl` seconds; its id.
    public func grant(ttl: Int) async throws -> String {
        let reply: LeaseReply = try await call("/v3/lease/grant", ["TTL": "\(ttl)"])
        guard let id = reply.ID else { throw EtcdError("etcd granted no lease: \(reply.error ?? "no ID")") }
        return id
    }

    /// Keeps lease `id` alive; the seconds it now has left, 0 when etcd no longer knows it.
    public func keepAlive(_ id: String) async throws -> Int {
        let reply: KeepAliveReply = try await call("/v3/lease/keepalive", ["ID": id])
        return Int(reply.result?.TTL ?? "0") ?? 0
    }

    /// Ends lease `id`: every key attached to it goes at once.
    public func revoke(_ id: String) async throws {
        let _: Header = try await call("/v3/lease/revoke", ["ID": id])
    }

    public func put(_ key: String, _ value: [UInt8], lease: String) async throws {
        let _: Header = try await call(
            "/v3/kv/put", ["key": Self.base64(key), "value": Data(value).base64EncodedString(), "lease": lease])
    }

    /// Every key under `prefix`, and the revision the answer is from.
    public func range(prefix: String) async throws -> (kvs: [KeyValue], revision: Int64) {
        let reply: RangeReply = try await call(
            "/v3/kv/range", ["key": Self.base64(prefix), "range_end": Self.base64(Self.rangeEnd(prefix))])
        let kvs = (reply.kvs ?? []).compactMap { $0.decoded }
        return (kvs, Int64(reply.header?.revision ?? "0") ?? 0)
    }

    /// The changes under `prefix` after `revision`, as etcd streams them, until the stream breaks (an error) or the
    /// task is cancelled. The first member that accepts the watch serves it.
    public func watch(prefix: String, after revision: Int64) -> AsyncThrowingStream<Event, any Error> {
        let body = WatchRequest(
            create_request: .init(
                key: Self.base64(prefix), range_end: Self.base64(Self.rangeEnd(prefix)),
                start_revision: "\(revision + 1)"))
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let response = try await open("/v3/watch", try JSONEncoder().encode(body))
                    var pending = [UInt8]()
                    for try await chunk in response.body {
                        pending += chunk.readableBytesView
                        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = Array(pending[..<newline])
                            pending.removeSubrange(...newline)
                            for event in try Self.events(inWatchLine: line) { continuation.yield(event) }
                        }
                    }
                    // The stream must end with an error: the watch never ends on its own.
                    if !pending.isEmpty {
                        for event in try Self.events(inWatchLine: pending) { continuation.yield(event) }
                    }
                    continuation.finish(throwing: EtcdError("etcd closed the watch"))
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    // MARK: - Transport

    private func call<Reply: Decodable>(_ path: String, _ fields: [String: String]) async throws -> Reply {
        let response = try await open(path, try JSONEncoder().encode(fields), deadline: timeout)
        let body = try await response.body.collect(upTo: 16 << 20)
        guard response.status == .ok else {
            throw EtcdError("etcd answered \(response.status.code) to \(path): \(String(buffer: body))")
        }
        return try JSONDecoder().decode(Reply.self, from: body)
    }

    /// POSTs `body` to `path` on the first member that answers.
    private func open(_ path: String, _ body: Data, deadline: Double? = nil) async throws -> HTTPClientResponse {
        var failures: [String] = []
        for member in endpoints.members {
            var request = HTTPClientRequest(url: "http://\(member)\(path)")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: body))
            do {
                // A watch runs as long as the fleet does; only its connection has the call's deadline.
                let limit: TimeAmount = deadline.map { .milliseconds(Int64($0 * 1000)) } ?? .hours(24 * 365)
                return try await http.execute(request, timeout: limit)
            } catch {
                failures.append("\(member): \(error)")
            }
        }
        throw EtcdError("no etcd member answered \(path) (\(failures.joined(separator: "; ")))")
    }

    // MARK: - Encoding

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// The end of the range of every key that starts with `prefix` (its last byte incremented).
    static func rangeEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last, last == 0xFF { bytes.removeLast() }
        guard !bytes.isEmpty else { return "\0" }
        bytes[bytes.count - 1] += 1
        return String(decoding: bytes, as: UTF8.self)
    }

    static func events(inWatchLine line: [UInt8]) throws -> [Event] {
        guard line.contains(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\r") }) else { return [] }
        let message = try JSONDecoder().decode(WatchMessage.self, from: Data(line))
        if let error = message.error { throw EtcdError("etcd ended the watch: \(error.message ?? "error")") }
        if message.result?.canceled == true {
            throw EtcdError("etcd cancelled the watch: \(message.result?.cancel_reason ?? "no reason given")")
        }
        return (message.result?.events ?? []).compactMap { event in
            guard let kv = event.kv, let key = kv.key.flatMap({ Data(base64Encoded: $0) }) else { return nil }
            let name = String(decoding: key, as: UTF8.self)
            if event.type == "DELETE" { return .delete(key: name) }
            return kv.decoded.map { .put($0) }
        }
    }

    // MARK: - The gateway's JSON

    private struct Header: Decodable {
        struct Fields: Decodable { var revision: String? }
        var header: Fields?
    }
    private struct LeaseReply: Decodable {
        var ID: String?
        var error: String?
    }
    private struct KeepAliveReply: Decodable {
        struct Result: Decodable { var TTL: String? }
        var result: Result?
    }
    private struct WireKeyValue: Decodable {
        var key: String?
        var value: String?
        var decoded: KeyValue? {
            guard let key = key.flatMap({ Data(base64Encoded: $0) }) else { return nil }
            let value = value.flatMap { Data(base64Encoded: $0) } ?? Data()
            return KeyValue(key: String(decoding: key, as: UTF8.self), value: Array(value))
        }
    }
    private struct RangeReply: Decodable {
        var header: Header.Fields?
        var kvs: [WireKeyValue]?
    }
    private struct WatchRequest: Encodable {
        struct Create: Encodable {
            var key: String
            var range_end: String
            var start_revision: String
        }
        var create_request: Create
    }
    private struct WatchMessage: Decodable {
        struct Result: Decodable {
            struct WireEvent: Decodable {
                var type: String?
                var kv: WireKeyValue?
            }
            var events: [WireEvent]?
            var canceled: Bool?
            var cancel_reason: String?
        }
        struct Failure: Decodable { var message: String? }
        var result: Result?
        var error: Failure?
    }
}
