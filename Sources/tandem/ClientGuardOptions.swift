import ArgumentParser

/// The options `serve` and `proxy` share for guarding their HTTP port against slow clients and their cluster planes
/// against strangers.
struct ClientGuardOptions: ParsableArguments {
    @Option(
        name: .customLong("client-timeout"),
        help: "Seconds a client connection may stay silent mid-request (a half-sent header) or between requests.")
    var clientTimeout = 30.0
    @Option(name: .customLong("max-connections"), help: "The most HTTP connections open at once.")
    var maxConnections = 1024
    @Option(
        name: .customLong("cluster-secret-file"),
        help:
            "A file holding the cluster secret (else $TANDEM_CLUSTER_SECRET): KV and registrations only between processes that prove it."
    )
    var clusterSecretFile: String?

    func validate() throws {
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard clientTimeout > 0, clientTimeout <= 86_400 else {
            throw ValidationError("--client-timeout must be between 0 and 86400 seconds")
        }
    }
}
