import JSON
import NIOCore

/// What `HTTPExchangeTracker` tells the `RequestDeadlineHandler` at the head of the pipeline (as outbound user
/// events, which travel towards the socket).
enum HTTPExchangeEvent: Sendable {
    /// The request being read arrived whole (its end part was decoded).
    case requestReceived
    /// A response head went out: the connection is answering.
    case responseStarted
    /// A response's end went out.
    case responseEnded
}

/// Closes a connection whose request does not arrive whole within its deadline (`--client-timeout`): from the
/// request's first byte to its last, header and body together, however the bytes are spaced, so a client
/// trickling a byte at a time cannot hold a connection. It sits at the head of the pipeline, before the HTTP
/// decoder, so it sees the first byte of a half-sent header; the deadline does not run while the connection is
/// answering (a long stream is never cut). On expiry the client gets a 408 with an OpenAI error object, then the
/// connection closes.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let timeout: TimeAmount
    private var receiving = false
    private var answering = false
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !receiving {
            receiving = true
            update(context: context)
        }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let event = event as? HTTPExchangeEvent else {
            return context.triggerUserOutboundEvent(event, promise: promise)
        }
        switch event {
        case .requestReceived: receiving = false
        case .responseStarted: answering = true
        case .responseEnded: answering = false
        }
        update(context: context)
        promise?.succeed()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { cancel() }

    private func update(context: ChannelHandlerContext) {
        guard receiving, !answering else { return cancel() }
        guard timer == nil else { return }
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) { bound.value.handler.expire(context: bound.value.context) }
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
    }

    private func expire(context: ChannelHandlerContext) {
        timer = nil
        guard receiving, !answering, context.channel.isActive else { return }
        let seconds = Double(timeout.nanoseconds) / 1e9
        let body = APIError(
            .requestTimeout, "the request did not arrive whole within the client timeout of \(seconds) s"
        ).json.serialized
        let head =
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        let buffer = context.channel.allocator.buffer(string: head + body)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in bound.value.close(promise: nil) }
    }
}
