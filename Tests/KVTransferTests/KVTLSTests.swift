import Discovery
import Foundation
import KVTransfer
import NIOCore
import Testing

/// A self-signed certificate and its key, made with the openssl command line in a fresh folder (removed with it);
/// used as its own CA, so the nodes holding it form one cluster.
final class TestCertificate {
    let cert: String
    let key: String
    private let dir: URL

    init(name: String) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        cert = dir.appendingPathComponent("cert.pem").path
        key = dir.appendingPathComponent("key.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
            "-out", cert, "-days", "2", "-subj", "/CN=\(name)",
        ]
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        guard openssl.terminationStatus == 0 else { throw CertificateError() }
    }

    func tls() throws -> KVTLS { try KVTLS(certificateFile: cert, keyFile: key, caFile: cert) }

    /// The folder goes with the certificate, however the test ended.
    deinit { try? FileManager.default.removeItem(at: dir) }
}

struct CertificateError: Error {}

/// TLS on the KV plane (`kv_tls_*_file`): nodes with the cluster's certificates move KV encrypted; a node with a
/// certificate from another CA, or none, gets none and puts none in.
@Suite struct KVTLSTests {
    @Test func nodesWithTheClustersCertificatesMoveKVEncrypted() async throws {
        let cluster = try TestCertificate(name: "tandem-cluster")
        let producer = try await makeNode(timeout: 30, tls: try cluster.tls())
        let consumer = try await makeNode(timeout: 30, tls: try cluster.tls())
        // Through a relay that records the link: the request id and the values never appear on it in clear.
        let relay = TamperingRelay(to: consumer.port, flipAt: nil)
        let payload = samplePayload(tokens: 64, layers: 4, kvDim: 64)
        try await producer.send(
            payload, requestId: "visible-request-id", to: HostPort(host: "127.0.0.1", port: relay.port))
        expectPayload(await consumer.inbox.wait(for: "visible-request-id", timeout: 5), payload)
        let wire = relay.captured
        #expect(wire.count > payload.byteCount, "the KV crossed the relay (\(wire.count) bytes)")
        let id = Array("visible-request-id".utf8)
        let values = payload.values[0..<16].withUnsafeBytes { Array($0) }
        #expect(!contains(wire, id), "the request id is not readable on the link")
        #expect(!contains(wire, values), "the KV values are not readable on the link")
        // GET works the same, the consumer dialing the producer.
        #expect(producer.offer(samplePayload(), requestId: "get"))
        expectPayload(
            await consumer.pull("get", from: HostPort(host: "127.0.0.1", port: producer.port)), samplePayload())
        await producer.close()
        await consumer.close()
    }

    @Test func aNodeOutsideTheClusterGetsNoKVAndPutsNoneIn() async throws {
        let cluster = try TestCertificate(name: "tandem-cluster")
        let other = try TestCertificate(name: "someone-else")
        // The cluster's own nodes get a deadline a loaded machine meets; the one probing a silent listener a short one
        // (it waits that long for a handshake that never comes).
        let consumer = try await makeNode(timeout: 30, tls: try cluster.tls())
        let producer = try await makeNode(timeout: 30, tls: try cluster.tls())
        let prober = try await makeNode(timeout: 5, tls: try cluster.tls())
        let peer = HostPort(host: "127.0.0.1", port: consumer.port)
        // Another CA's certificate, and no TLS at all: the sends fail, nothing is filed or reserved.
        let stranger = try await makeNode(timeout: 5, tls: try other.tls())
        let plain = try await makeNode(timeout: 5)
        for node in [stranger, plain] {
            await #expect(throws: KVSendError.self) {
                try await node.send(samplePayload(tokens: 64), requestId: "intruder", to: peer)
            }
        }
        #expect(consumer.inbox.bytesInUse == 0, "nothing was reserved or filed")
        // The cluster's producer sends nothing to a listener that cannot prove the CA: a plain one sees only a
        // TLS ClientHello.
        let listener = CountingListener()
        await #expect(throws: KVSendError.self) {
            try await prober.send(
                samplePayload(tokens: 64), requestId: "exfil", to: HostPort(host: "127.0.0.1", port: listener.port))
        }
        #expect(listener.bytes < 4096, "\(listener.bytes) bytes reached the listener")
        // And the cluster's own transfer still goes through.
        try await producer.send(samplePayload(tokens: 64), requestId: "ok", to: peer)
        expectPayload(await consumer.inbox.wait(for: "ok", timeout: 5), samplePayload(tokens: 64))
        for node in [consumer, producer, prober, stranger, plain] { await node.close() }
    }

    private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains {
            haystack[$0..<($0 + needle.count)].elementsEqual(needle)
        }
    }
}
