import AsyncHTTPClient
import Discovery
import Foundation
import Hummingbird
import JSON
import Logging
import NIOCore
import OpenAIAPI
import ServiceLifecycle

/// How the proxy is configured (`tandem proxy` flags; defaults from the runbook).
public struct ProxyOptions: Sendable {
    public var host = "::"
    public var port = 10002
    public var discoveryHost = "::"
    public var discoveryPort = 30002
    public var policy = RoutingPolicy.roundRobin
    public var apiKey: String?
    /// Seconds a client connection may stay silent before its request is complete, or between requests.
    public var clientTimeout = 30.0
    /// The most HTTP connections open at once; more are closed as soon as they are accepted.
    public var maxConnections = 1024
    /// With the cluster secret, only signed registrations are accepted (plain vLLM pings too when
    /// `allowUnauthenticatedDiscovery`).
    public var clusterSecret: [UInt8]?
    public var allowUnauthenticatedDiscovery = false
    /// A fleet's etcd to watch as well as the ZMQ pings (`--discovery etcd://…`).
    public var etcd: EtcdEndpoints?
    /// Seconds an instance may stay silent before it is removed.
    public var instanceTTL = 5.0
    public var connectTimeout = 5.0
    /// Longest a prefill request may take.
    public var prefillTimeout = 300.0
    /// Longest a decode request may take, stream included.
    public var decodeTimeout = 1800.0
    /// Longest silence from an instance while it answers.
    public var readTimeout = 120.0
    /// Seconds requests in flight may still run after SIGTERM before they are cut.
    public var shutdownGrace = 1.0
    /// Overlapped prefill and decode with stream migration (between Tandem instances), or vLLM's order.
    public var flow = PDFlow.overlap
    /// How many times one stream may move to another decode instance when its own fails.
    public var maxMigrations = 2

    public init() {}
}

/// The proxy's request context: Hummingbird's, plus the client's channel, so that a client who leaves while the
/// prefill runs cancels it.

/// Runs the discovery listener while the proxy runs.
struct DiscoveryService: Service {
    let listener: DiscoveryListener

    func run() async throws {
        listener.start()
        try? await gracefulShutdown()
        await onThread { listener.stop() }
    }
}

/// The proxy: discovery on a ZMQ ROUTER and the OpenAI front door over HTTP, until SIGINT or SIGTERM.
public enum ProxyServer {
    public static func run(_ options: ProxyOptions, logger: Logger) async throws {
        let registry = InstanceRegistry(ttl: options.instanceTTL)
        let metrics = ProxyMetrics()
        let listener = try DiscoveryListener(
            bind: HostPort(host: options.discoveryHost, port: options.discoveryPort), registry: registry,
            logger: logger, secret: options.clusterSecret, allowUnsigned: options.allowUnauthenticatedDiscovery,
            onChange: { metrics.discovery(added: $0, source: .zmq) })
        if options.clusterSecret == nil {
            logger.warning(
                "Discovery is OPEN: no cluster secret, anyone who reaches the discovery port can register an instance (set TANDEM_CLUSTER_SECRET)"
            )
        } else if options.allowUnauthenticatedDiscovery {
            logger.warning("Discovery accepts unsigned (vLLM) registrations: --allow-unauthenticated-discovery")
        }
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(
            connect: .milliseconds(Int64(options.connectTimeout * 1000)),
            read: .milliseconds(Int64(options.readTimeout * 1000)))
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        // A refused connection fails the request at once; the router retries on another instance itself.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        let router = RequestRouter(
            registry: registry, policy: options.policy, client: client, metrics: metrics, logger: logger,
            prefillTimeout: .milliseconds(Int64(options.prefillTimeout * 1000)),
            decodeTimeout: .milliseconds(Int64(options.decodeTimeout * 1000)), flow: options.flow,
            maxMigrations: options.maxMigrations)
        let routes = Router(context: ClientRequestContext.self)
        routes.add(middleware: APIErrorMiddleware())
        routes.add(middleware: AccessMiddleware(key: options.apiKey))
        routes.post("/v1/completions") { request, context in
            try await router.handle(path: "/v1/completions", request: request, client: context.channel)
        }
        routes.post("/v1/chat/completions") { request, context in
            try await router.handle(path: "/v1/chat/completions", request: request, client: context.channel)
        }
        routes.get("/v1/models") { request, _ in try await models(registry: registry, client: client, request: request)
        }
        let etcd = options.etcd.map {
            EtcdDiscovery(
                client: EtcdClient(endpoints: $0), registry: registry, logger: logger, secret: options.clusterSecret,
                onChange: { metrics.discovery(added: $0, source: .etcd) })
        }
        await etcd?.prime(timeout: 2)
        routes.get("/health") { _, _ in health(registry, etcd: etcd) }
        routes.get("/metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(
                status: .ok, headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render(instances: registry.all))))
        }
        let app = Application(
            router: routes,
            server: .tandem(clientTimeout: options.clientTimeout, maxConnections: options.maxConnections),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "tandem-proxy"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.port
                logger.info(
                    "Tandem proxy listening on http://\(HostPort(host: options.host, port: port)), discovery on tcp://\(HostPort(host: options.discoveryHost, port: options.discoveryPort)), policy \(options.policy.rawValue), instance TTL \(options.instanceTTL) s"
                )
            },
            logger: logger)
        var groupConfiguration = ServiceGroupConfiguration(
            services: [DiscoveryService(listener: listener)] + (etcd.map { [$0] } ?? []) + [
                ModelDirectory(
                    registry: registry, client: client, logger: logger,
                    authorization: options.apiKey.map { "Bearer \($0)" }),
                app,
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // On SIGTERM the proxy stops taking requests and gives those in flight `shutdownGrace` seconds; then it
        // cuts them (their clients see the stream end), so that it exits and frees its ports promptly.
        groupConfiguration.maximumGracefulShutdownDuration = .milliseconds(Int64(options.shutdownGrace * 1000))
        groupConfiguration.maximumCancellationDuration = .milliseconds(500)
        let group = ServiceGroup(configuration: groupConfiguration)
        do {
            try await group.run()
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    /// Proxy health: the known instances with role, addresses, seconds since their last ping, in-flight count and
    /// where the proxy learned of them; with etcd, whether it is being watched.
    static func health(_ registry: InstanceRegistry, etcd: EtcdDiscovery?) -> Response {
        let now = Date()
        let all = registry.all
        let entries: [JSONValue] = all.map { i in
            .object([
                ("role", .string(i.role == .prefill ? "prefill" : "decode")),
                ("http_address", .string(i.http.description)),
                ("zmq_address", .string(i.zmq.description)),
                ("last_seen_seconds_ago", .double((now.timeIntervalSince(i.lastSeen) * 1000).rounded() / 1000)),
                ("in_flight", .int(i.inFlight)),
                ("discovery", .array(i.sources.map(\.rawValue).sorted().map { .string($0) })),
            ])
        }
        let ready = all.contains { $0.role == .prefill } && all.contains { $0.role == .decode }
        var fields: [(String, JSONValue)] = [
            ("status", .string(ready ? "ok" : "waiting_for_instances")), ("instances", .array(entries)),
        ]
        if let etcd {
            let s = etcd.status
            fields.append(
                (
                    "etcd",
                    .object([
                        ("endpoints", .string(etcd.client.endpoints.description)),
                        ("state", .string(s.watching ? "watching" : "unreachable")),
                        ("since_seconds_ago", .double((now.timeIntervalSince(s.since) * 1000).rounded() / 1000)),
                        ("error", s.lastError.map { .string($0) } ?? .null),
                    ])
                ))
        }
        return Response.json(.object(fields))
    }

    /// `/v1/models`: every model the live instances serve, each listed once (decode instances' entries first).
    static func models(registry: InstanceRegistry, client: HTTPClient, request: Request) async throws -> Response {
        let candidates = registry.all.sorted { $0.role == .decode && $1.role != .decode }
        var entries: [(id: String, entry: JSONValue)] = []
        var answered = false
        for i in candidates {
            guard
                let models = await ModelDirectory.models(
                    of: i, client: client, authorization: RequestRouter.authorization(request))
            else { continue }
            answered = true
            for m in models where !entries.contains(where: { $0.id == m.id }) { entries.append(m) }
        }
        guard answered else { throw APIError(.serviceUnavailable, "no live instance is registered with the proxy") }
        return Response.json(.object([("object", .string("list")), ("data", .array(entries.map(\.entry)))]))
    }
}
