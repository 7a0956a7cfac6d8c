import Hummingbird
import HummingbirdCore
import NIOConcurrencyHelpers
import NIOCore

/// The most HTTP connections a process keeps open at once (`--max-connections`); one more is closed as soon as it
/// is accepted, so that idle or slow clients cannot hold every socket and thread of the process.
public final class ConnectionLimit: Sendable {
    public let limit: Int
    private let open = NIOLockedValueBox(0)

    public init(limit: Int) { self.limit = limit }

    /// Connections open now.
    public var count: Int { open.withLockedValue { $0 } }

    /// A handler for one new connection (for `HTTP1Channel.Configuration.additionalChannelHandlers`).
    public func handler() -> any RemovableChannelHandler { ConnectionLimitHandler(self) }

    fileprivate func admit() -> Bool {
        open.withLockedValue {
            $0 += 1
            return $0 <= limit
        }
    }

    fileprivate func release() { open.withLockedValue { $0 -= 1 } }
}

/// Counts its connection while it is open, and closes it at once when the process is at its limit.
final class ConnectionLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Any
    private let limit: ConnectionLimit
    private var counted = false
    private var refused = false

    init(_ limit: ConnectionLimit) { self.limit = limit }

    func handlerAdded(context: ChannelHandlerContext) {
        counted = true
        refused = !limit.admit()
        if refused, context.channel.isActive { context.close(promise: nil) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if refused { return context.close(promise: nil) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refused { return }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if counted { limit.release() }
        counted = false
    }
}

extension HTTP1Channel.Configuration {
    /// Tandem's HTTP/1 settings: close a connection silent for `clientTimeout` seconds mid-request or between
    /// requests, and keep at most `maxConnections` open.
    public static func tandem(clientTimeout: Double, maxConnections: Int) -> Self {
        let limit = ConnectionLimit(limit: maxConnections)
        return .init(
            additionalChannelHandlers: [limit.handler()], idleTimeout: .milliseconds(Int64(clientTimeout * 1000)))
    }
}
