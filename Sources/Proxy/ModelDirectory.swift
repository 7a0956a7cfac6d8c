import AsyncHTTPClient
import Discovery
import Foundation
import JSON
import Logging
import NIOCore
import ServiceLifecycle

/// Learns which models each registered instance serves: asks every instance whose models are not yet known for its
/// `/v1/models` (2 s deadline each), twice a second, so that the proxy can route by a request's `model` field and
/// list every model at its own `/v1/models`.
struct ModelDirectory: Service {
    let registry: InstanceRegistry
    let client: HTTPClient
    let logger: Logger
    /// Sent as the instances' `Authorization` header (`--api-key` of the fleet), when set.
    let authorization: String?

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                // Asked side by side, so one instance that does not answer delays no other.
                await withTaskGroup(of: Void.self) { group in
                    for instance in registry.all where instance.models == nil {
                        group.addTask {
                            guard
                                let models = await Self.models(
                                    of: instance, client: client, authorization: authorization)
                            else { return }
                            registry.setModels(models.map(\.id), role: instance.role, http: instance.http)
                            logger.info("\(instance.role.rawValue) \(instance.label) serves \(models.map(\.id))")
                        }
                    }
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// The `data` entries of an instance's `/v1/models`, with their ids; nil when it does not answer in time.
    static func models(of instance: KnownInstance, client: HTTPClient, authorization: String?) async -> [(
        id: String, entry: JSONValue
    )]? {
        let host = instance.http.isIPv6 ? "[\(instance.http.host)]" : instance.http.host
        var request = HTTPClientRequest(url: "http://\(host):\(instance.http.port)/v1/models")
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        guard let reply = try? await client.execute(request, timeout: .seconds(2)), reply.status == .ok,
            let body = try? await reply.body.collect(upTo: 1 << 20),
            let json = JSONValue.parse(body.readableBytesView), case .array(let data)? = json["data"]
        else { return nil }
        return data.compactMap { entry in
            guard case .string(let id)? = entry["id"] else { return nil }
            return (id, entry)
        }
    }
}
