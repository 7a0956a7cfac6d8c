import Discovery
import Foundation
import Testing

/// A ZMQ ROUTER, as the proxy runs, receives the exact map vLLM's P2P engine sends, from a DEALER whose identity is
/// the instance's zmq_address.
@Suite struct RegistrationTests {
    static func freePort() -> Int { Int.random(in: 40_000..<60_000) }

    @Test(arguments: ["127.0.0.1", "::1"])
    func routerReceivesTheRegistrationMap(host: String) throws {
        let router = try ZMQSocket(.router)
        var port = 0
        for _ in 0..<20 {
            port = Self.freePort()
            if (try? router.bind(HostPort(host: host, port: port))) != nil { break }
        }
        let ping = RegistrationPing(
            role: .decode, httpAddress: HostPort(host: host, port: 8083), zmqAddress: HostPort(host: host, port: 8084))
        let registration = InstanceRegistration(ping: ping, proxy: HostPort(host: host, port: port), interval: 0.05)
        try registration.start()
        defer { registration.stop() }
        let frames = try #require(try router.receive(timeoutMs: 5000))
        #expect(frames.count == 2)
        #expect(frames[0] == Array(ping.zmqAddress.description.utf8), "identity = zmq_address")
        let map = try MessagePackValue.decode(frames[1])
        let bracketed = host.contains(":") ? "[\(host)]" : host
        #expect(
            map
                == .stringMap([
                    ("type", "D"), ("http_address", "\(bracketed):8083"), ("zmq_address", "\(bracketed):8084"),
                ]))
        #expect(RegistrationPing(map) == ping)
        // It keeps pinging.
        #expect(try router.receive(timeoutMs: 5000) != nil)
    }
}
