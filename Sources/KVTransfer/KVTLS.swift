import NIOCore
import NIOSSL

/// TLS on the KV plane, for links between machines that others can read (`kv_connector_extra_config`
/// `kv_tls_cert_file`, `kv_tls_key_file`, `kv_tls_ca_file`, PEM). Mutual and TLS 1.3 only: every instance presents
/// its certificate, and each end accepts only a peer whose certificate chains to the cluster's CA. Host names are
/// not checked (peers are addressed by IP, as registered), so the CA is what defines the cluster. KV is encrypted
/// on the wire; a peer that proved the CA is trusted like one that proved the cluster secret (both can be set).
public struct KVTLS: Sendable {
    let server: NIOSSLContext
    let client: NIOSSLContext

    public init(certificateFile: String, keyFile: String, caFile: String) throws {
        let chain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { NIOSSLCertificateSource.certificate($0) }
        let key = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: key)
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain
        client.privateKey = key
        server.trustRoots = .file(caFile)
        client.trustRoots = .file(caFile)
        server.certificateVerification = .noHostnameVerification
        client.certificateVerification = .noHostnameVerification
        server.minimumTLSVersion = .tlsv13
        client.minimumTLSVersion = .tlsv13
        self.server = try NIOSSLContext(configuration: server)
        self.client = try NIOSSLContext(configuration: client)
    }

    /// The TLS handler for one connection: the server's for an accepted one, the client's for a dialed one.
    func handler(dialed: Bool) throws -> any ChannelHandler {
        dialed ? try NIOSSLClientHandler(context: client, serverHostname: nil) : NIOSSLServerHandler(context: server)
    }
}
