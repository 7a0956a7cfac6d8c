import CZMQ
import Foundation

/// Why a ZMQ call failed, with libzmq's message.
public struct ZMQError: Error, CustomStringConvertible {
    public let operation: String
    public let code: Int32
    public var description: String { "zmq \(operation): \(String(cString: zmq_strerror(code)))" }

    static func last(_ operation: String) -> ZMQError { ZMQError(operation: operation, code: zmq_errno()) }
}

/// A libzmq socket (DEALER or ROUTER) with its own context. Not thread-safe: use it from one thread at a time.
public final class ZMQSocket: @unchecked Sendable {
    public enum Kind { case dealer, router }

    private let context: UnsafeMutableRawPointer
    private let socket: UnsafeMutableRawPointer

    public init(_ kind: Kind) throws {
        guard let ctx = zmq_ctx_new() else { throw ZMQError.last("ctx_new") }
        guard let s = zmq_socket(ctx, kind == .dealer ? ZMQ_DEALER : ZMQ_ROUTER) else {
            zmq_ctx_term(ctx)
            throw ZMQError.last("socket")
        }
        context = ctx
        socket = s
        try set(ZMQ_LINGER, 0)
    }

    deinit {
        zmq_close(socket)
        zmq_ctx_term(context)
    }

    public func set(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(socket, option, &v, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError.last("setsockopt \(option)")
        }
    }

    /// The identity a ROUTER peer sees for this socket (vLLM's instances use their `zmq_address`).
    public func setIdentity(_ identity: [UInt8]) throws {
        guard zmq_setsockopt(socket, ZMQ_ROUTING_ID, identity, identity.count) == 0 else {
            throw ZMQError.last("setsockopt identity")
        }
    }

    /// Connects to `endpoint`, turning on IPv6 for bracketed IPv6 endpoints.
    public func connect(_ endpoint: HostPort) throws {
        if endpoint.isIPv6 { try set(ZMQ_IPV6, 1) }
        guard zmq_connect(socket, endpoint.zmqEndpoint) == 0 else { throw ZMQError.last("connect \(endpoint)") }
    }

    /// Binds to `endpoint` (`*` or `::` for every address; IPv6 also accepts IPv4 there).
    public func bind(_ endpoint: HostPort) throws {
        let wildcard = endpoint.host == "*" || endpoint.host == "0.0.0.0" || endpoint.host == "::"
        if endpoint.isIPv6 { try set(ZMQ_IPV6, 1) }
        let text = wildcard ? "tcp://*:\(endpoint.port)" : endpoint.zmqEndpoint
        guard zmq_bind(socket, text) == 0 else { throw ZMQError.last("bind \(text)") }
    }

    /// Sends one message of `frames` without blocking; false when it would block (no peer, queue full).
    @discardableResult
    public func send(_ frames: [[UInt8]]) throws -> Bool {
        for (i, frame) in frames.enumerated() {
            let flags = ZMQ_DONTWAIT | (i < frames.count - 1 ? ZMQ_SNDMORE : 0)
            if zmq_send(socket, frame, frame.count, flags) < 0 {
                if zmq_errno() == EAGAIN { return false }
                throw ZMQError.last("send")
            }
        }
        return true
    }

    /// Receives one multipart message, waiting at most `timeoutMs`; nil on timeout.
    public func receive(timeoutMs: Int32) throws -> [[UInt8]]? {
        try set(ZMQ_RCVTIMEO, timeoutMs)
        var frames: [[UInt8]] = []
        while true {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            if zmq_msg_recv(&msg, socket, 0) < 0 {
                if zmq_errno() == EAGAIN && frames.isEmpty { return nil }
                throw ZMQError.last("recv")
            }
            let size = zmq_msg_size(&msg)
            let data = zmq_msg_data(&msg)!
            frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            if zmq_msg_more(&msg) == 0 { return frames }
        }
    }
}
