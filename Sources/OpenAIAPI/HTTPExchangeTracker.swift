import HTTPTypes
import HummingbirdCore
import JSON
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Follows the requests and responses of one HTTP/1 connection, after the HTTP codec: it tells the
/// `RequestDeadlineHandler` when a request arrived whole and when a response starts and ends, and answers a
/// request that cannot be parsed at all (a malformed request line or header) with a 400 carrying an OpenAI error
/// object instead of a bare one, then closes the connection. A parse error inside a body is left to the route,
/// which answers it as a 400 of its own.
final class HTTPExchangeTracker: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var inRequest = false
    private var answering = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: inRequest = true
        case .body: break
        case .end:
            inRequest = false
            context.triggerUserOutboundEvent(HTTPExchangeEvent.requestReceived, promise: nil)
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.kind != .informational:
            answering = true
            context.triggerUserOutboundEvent(HTTPExchangeEvent.responseStarted, promise: nil)
        case .end:
            answering = false
            context.triggerUserOutboundEvent(HTTPExchangeEvent.responseEnded, promise: nil)
        default: break
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError, !inRequest, !answering else { return context.fireErrorCaught(error) }
        let body = APIError.badRequest("the request could not be parsed as HTTP/1.1 (\(error))").json.serialized
        var head = HTTPResponse(status: .badRequest)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = "\(body.utf8.count)"
        head.headerFields[.connection] = "close"
        answering = true
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(string: body))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
    }
}
