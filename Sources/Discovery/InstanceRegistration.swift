import CZMQ
import Foundation

/// What an instance tells the proxy about itself, as vLLM's P2P engine does.
public struct RegistrationPing: Sendable, Equatable {
    public enum Role: String, Sendable { case prefill = "P", decode = "D" }

    public var role: Role
    /// Where the proxy sends HTTP requests: `host:http_port`.
    public var httpAddress: HostPort
    /// Where peers send KV: `host:kv_port` (also the ZMQ identity).
    public var zmqAddress: HostPort
    /// The instance is Tandem's and takes `tandem_handoff` and `tandem_resume` (`"tandem_features": "resume"`), so
    /// the proxy may overlap its prefill and decode and migrate its streams; vLLM's instances send no such key.
    public var resumable: Bool

    public init(role: Role, httpAddress: HostPort, zmqAddress: HostPort, resumable: Bool = false) {
        self.role = role
        self.httpAddress = httpAddress
        self.zmqAddress = zmqAddress
        self.resumable = resumable
    }

    /// The msgpack map `{"type", "http_address", "zmq_address"}` (and Tandem's `tandem_features`).
    public var message: MessagePackValue {
        var pairs = [
            ("type", role.rawValue), ("http_address", httpAddress.description),
            ("zmq_address", zmqAddress.description),
        ]
        if resumable { pairs.append(("tandem_features", "resume")) }
        return .stringMap(pairs)
    }

    /// Reads a ping; nil when the message is not a well-formed one.
    public init?(_ value: MessagePackValue) {
        guard let type = value["type"]?.stringValue, let role = Role(rawValue: type),
            let http = value["http_address"]?.stringValue.flatMap(HostPort.init),
            let zmq = value["zmq_address"]?.stringValue.flatMap(HostPort.init)
        else { return nil }
        let features = value["tandem_features"]?.stringValue?.split(separator: ",") ?? []
        self.init(role: role, httpAddress: http, zmqAddress: zmq, resumable: features.contains("resume"))
    }
}

/// Pings the proxy every `interval` from a background thread: a ZMQ DEALER whose identity is the instance's
/// `zmq_address`, connected to `tcp://proxy_ip:proxy_port`, sending one msgpack map per ping. Sends never block;
/// a proxy that is down just misses pings until it comes back.
public final class InstanceRegistration: @unchecked Sendable {
    public let ping: RegistrationPing
    public let proxy: HostPort
    private let interval: Double
    private let stopped = NSCondition()
    private var stopping = false
    private var finished = false
    public private(set) var sentCount = 0

    /// With the cluster secret, every ping is signed (`RegistrationSignature`).
    private let secret: [UInt8]?

    public init(ping: RegistrationPing, proxy: HostPort, interval: Double = 3, secret: [UInt8]? = nil) {
        self.ping = ping
        self.proxy = proxy
        self.interval = interval
        self.secret = secret
    }

    /// Opens the socket (errors surface here) and starts pinging.
    public func start() throws {
        let socket = try ZMQSocket(.dealer)
        try socket.setIdentity(Array(ping.zmqAddress.description.utf8))
        try socket.connect(proxy)
        let plain = ping.message.encoded()
        Thread { [self] in
            stopped.lock()
            while !stopping {
                stopped.unlock()
                // A signed ping carries its time, so each is signed as it goes.
                let payload = secret.map { RegistrationSignature.signed(ping, secret: $0).encoded() } ?? plain
                if (try? socket.send([payload])) == true { sentCount += 1 }
                stopped.lock()
                _ = stopped.wait(until: Date().addingTimeInterval(interval))
            }
            finished = true
            stopped.broadcast()
            stopped.unlock()
            _ = socket  // closed when the thread lets go of it
        }.start()
    }

    /// Stops pinging and closes the socket.
    public func stop() {
        stopped.lock()
        stopping = true
        stopped.broadcast()
        while !finished { stopped.wait() }
        stopped.unlock()
    }
}
