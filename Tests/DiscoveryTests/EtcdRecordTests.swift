import Discovery
import Foundation
import Testing

/// The etcd record's MAC and the `etcd://` URL.
@Suite struct EtcdRecordTests {
    let ping = RegistrationPing(
        role: .prefill, httpAddress: HostPort(host: "fd00::2", port: 8081),
        zmqAddress: HostPort(host: "fd00::2", port: 8082),
        resumable: true)
    let secret = Array("a secret of the cluster".utf8)

    @Test func aSignedRecordProvesTheSecretAndAnyRewriteBreaksIt() throws {
        let record = EtcdInstanceRecord(
            ping: ping, model: "default", fingerprint: 0xabc, started: Date(), secret: secret)
        #expect(record.isSigned(by: secret))
        #expect(!record.isSigned(by: Array("another secret".utf8)))
        #expect(record.ping == ping)
        #expect(record.key(prefix: "/tandem/instances") == "/tandem/instances/P/[fd00::2]:8082")
        var rewritten = record
        rewritten.http_address = "[fd00::9]:8081"
        #expect(!rewritten.isSigned(by: secret), "a rewritten address breaks the MAC")
        var unsigned = record
        unsigned.mac = nil
        #expect(!unsigned.isSigned(by: secret))
        // What the proxy reads back from etcd is what the instance wrote.
        let decoded = try JSONDecoder().decode(EtcdInstanceRecord.self, from: JSONEncoder().encode(record))
        #expect(decoded == record && decoded.isSigned(by: secret))
    }

    @Test func urlsNameMembersAndAPrefix() throws {
        let one = try EtcdEndpoints(url: "etcd://127.0.0.1:2379")
        #expect(one.members == [HostPort(host: "127.0.0.1", port: 2379)] && one.prefix == "/tandem/instances")
        let many = try EtcdEndpoints(url: "etcd://[fd00::5]:2379,10.0.0.6:2379/prod/tandem/")
        #expect(many.members.count == 2 && many.members[0].host == "fd00::5" && many.prefix == "/prod/tandem")
        for bad in ["http://x:1", "etcd://", "etcd://host", "etcd://h:1/", "etcd://h:99999"] {
            #expect(throws: EtcdError.self, "\(bad)") { try EtcdEndpoints(url: bad) }
        }
    }
}
