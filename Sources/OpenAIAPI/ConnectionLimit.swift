import Hummingbird
import HummingbirdCore
import JSON
import Logging
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

/// Tandem's HTTP/1 child channel: Hummingbird's `HTTP1Channel` with a `RequestDeadlineHandler` in front of its
/// HTTP decoder, an `HTTPExchangeTracker` and the process's `ConnectionLimit` behind it.
struct GuardedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel
    let clientTimeout: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(RequestDeadlineHandler(timeout: clientTimeout))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return inner.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async { await inner.handle(value: value, logger: logger) }
}

extension HTTPServerBuilder {
    /// Tandem's HTTP/1 server: a request must arrive whole within `clientTimeout` seconds of its first byte (else
    /// 408), a connection silent that long between requests is closed, an unparseable request gets an OpenAI
    /// error, and at most `maxConnections` connections are open at once.
    public static func tandem(clientTimeout: Double, maxConnections: Int) -> HTTPServerBuilder {
        let limit = ConnectionLimit(limit: maxConnections)
        let timeout = TimeAmount.milliseconds(Int64(clientTimeout * 1000))
        return .init { responder in
            GuardedHTTP1Channel(
                inner: HTTP1Channel(
                    responder: responder,
                    configuration: .init(
                        additionalChannelHandlers: [limit.handler(), HTTPExchangeTracker()],
                        idleTimeout: .milliseconds(Int64(clientTimeout * 1000)))),
                clientTimeout: timeout)
        }
    }
}
