import Discovery
import Foundation
import Logging

/// The proxy's side of registration: a ZMQ ROUTER on the discovery port that reads the msgpack pings vLLM's and
/// Tandem's instances send, keeps the registry current, and expires silent instances. A malformed or unknown
/// message is logged and ignored; the listener runs until `stop()`.
public final class DiscoveryListener: @unchecked Sendable {
    public let registry: InstanceRegistry
    private let socket: ZMQSocket
    private let logger: Logger
    private let onChange: @Sendable (_ added: Bool) -> Void
    private let state = NSCondition()
    private var stopping = false
    private var finished = false
    /// With the cluster secret, only signed pings register (plain ones too when `allowUnsigned`).
    private let secret: [UInt8]?
    private let allowUnsigned: Bool
    /// Senders refused so far (each logged once).
    private var refusedSenders: Set<[UInt8]> = []

    /// Binds the ROUTER (`::` listens on IPv6 and IPv4); errors surface here.
    public init(
        bind: HostPort, registry: InstanceRegistry, logger: Logger, secret: [UInt8]? = nil,
        allowUnsigned: Bool = false, onChange: @escaping @Sendable (_ added: Bool) -> Void = { _ in }
    ) throws {
        socket = try ZMQSocket(.router)
        try socket.bind(bind)
        self.registry = registry
        self.logger = logger
        self.secret = secret
        self.allowUnsigned = allowUnsigned
        self.onChange = onChange
    }

    public func start() {
        Thread { [self] in
            while !isStopping {
                do {
                    if let frames = try socket.receive(timeoutMs: 200) { handle(frames) }
                } catch {
                    logger.warning("discovery: \(error)")
                }
                for gone in registry.expire() {
                    logger.info("Remove \(gone.role == .prefill ? "prefill" : "decode") \(gone.label)")
                    onChange(false)
                }
            }
            state.lock()
            finished = true
            state.broadcast()
            state.unlock()
        }.start()
    }

    private var isStopping: Bool {
        state.lock()
        defer { state.unlock() }
        return stopping
    }

    private func handle(_ frames: [[UInt8]]) {
        guard let payload = frames.last, frames.count >= 2 else {
            logger.warning("discovery: ignored a message of \(frames.count) frame(s)")
            return
        }
        let ping: RegistrationPing
        do {
            let value = try MessagePackValue.decode(payload)
            guard let p = RegistrationPing(value) else {
                logger.warning("discovery: ignored a message without type P/D, http_address and zmq_address")
                return
            }
            if let secret, let refusal = RegistrationSignature.check(value, identity: frames[0], secret: secret),
                !(refusal == .unsigned && allowUnsigned)
            {
                if refusedSenders.count < 10_000, refusedSenders.insert(frames[0]).inserted {
                    logger.warning(
                        "discovery: refused a registration from \(String(decoding: frames[0], as: UTF8.self)) as \(p.role == .prefill ? "prefill" : "decode") \(p.httpAddress): \(refusal.rawValue) (logged once per sender)"
                    )
                }
                return
            }
            ping = p
        } catch {
            logger.warning("discovery: ignored a message that is not msgpack: \(error)")
            return
        }
        if let added = registry.record(ping) {
            logger.info("Add \(added.role == .prefill ? "prefill" : "decode") \(added.label)")
            onChange(true)
        }
    }

    /// Stops listening and closes the socket.
    public func stop() {
        state.lock()
        stopping = true
        while !finished { state.wait() }
        state.unlock()
    }
}
