import Hummingbird
import JSON
import NIOCore

/// A request context that keeps the client's connection, so that a handler can notice the client leaving.
public struct ClientRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Runs `body` and cancels it as soon as the client's side of `client` closes (half-close or full close), until
/// `body` returns its response: Hummingbird does not cancel a handler whose client leaves, so a non-streamed
/// request would otherwise run to its end for nobody. The work cancelled aborts the engine request (instance) or
/// the upstream requests (proxy).
public func cancellingWhenClientLeaves(
    _ client: any Channel, _ body: @escaping @Sendable () async throws -> Response
) async throws -> Response {
    let work = Task { try await body() }
    let name = "tandem-client-watch-\(UInt64.random(in: 0...UInt64.max))"
    try? await client.eventLoop.submit {
        try client.pipeline.syncOperations.addHandler(
            ClientGoneWatcher { work.cancel() }, name: name, position: .first)
    }.get()
    defer { client.pipeline.removeHandler(name: name, promise: nil) }
    return try await withTaskCancellationHandler {
        try await work.value
    } onCancel: {
        work.cancel()
    }
}

/// Calls `gone` when the client's side of the connection closes (half-close or full close).
final class ClientGoneWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let gone: @Sendable () -> Void

    init(_ gone: @escaping @Sendable () -> Void) { self.gone = gone }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { gone() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        gone()
        context.fireChannelInactive()
    }
}
