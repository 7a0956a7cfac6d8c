import Discovery
import Foundation
import Testing

/// A signed registration: accepted with the secret, and refused when unsigned, signed with another secret, sent
/// under another identity, rewritten, or replayed after the window.
@Suite struct RegistrationSignatureTests {
    let secret = Array("a cluster secret of some length".utf8)
    let ping = RegistrationPing(
        role: .decode, httpAddress: HostPort(host: "10.0.0.5", port: 8083),
        zmqAddress: HostPort(host: "10.0.0.5", port: 8084))
    var identity: [UInt8] { Array(ping.zmqAddress.description.utf8) }

    @Test func onlyAFreshPingSignedWithTheSecretPasses() throws {
        let signed = RegistrationSignature.signed(ping, secret: secret)
        #expect(RegistrationSignature.check(signed, identity: identity, secret: secret) == nil)
        #expect(RegistrationPing(signed) == ping, "a signed ping is still a vLLM ping")
        // Through msgpack and back.
        let decoded = try MessagePackValue.decode(signed.encoded())
        #expect(RegistrationSignature.check(decoded, identity: identity, secret: secret) == nil)
        #expect(RegistrationSignature.check(ping.message, identity: identity, secret: secret) == .unsigned)
        let other = RegistrationSignature.signed(ping, secret: Array("not the cluster secret at all".utf8))
        #expect(RegistrationSignature.check(other, identity: identity, secret: secret) == .badMAC)
        #expect(RegistrationSignature.check(signed, identity: Array("x:1".utf8), secret: secret) == .badMAC)
        guard case .map(var pairs) = signed else { throw TestFailure("not a map") }
        pairs[1] = MessagePackPair(.string("http_address"), .string("10.6.6.6:8083"))
        #expect(RegistrationSignature.check(.map(pairs), identity: identity, secret: secret) == .badMAC)
        let old = RegistrationSignature.signed(ping, secret: secret, now: Date().addingTimeInterval(-60))
        #expect(RegistrationSignature.check(old, identity: identity, secret: secret) == .stale)
    }

    @Test func theFeaturesAreSignedToo() throws {
        var resumable = ping
        resumable.resumable = true
        let signed = RegistrationSignature.signed(resumable, secret: secret)
        #expect(RegistrationSignature.check(signed, identity: identity, secret: secret) == nil)
        #expect(RegistrationPing(signed)?.resumable == true)
        // Adding, dropping or rewriting tandem_features breaks the MAC.
        guard case .map(let pairs) = signed else { throw TestFailure("not a map") }
        let dropped = pairs.filter { $0.key != .string("tandem_features") }
        #expect(RegistrationSignature.check(.map(dropped), identity: identity, secret: secret) == .badMAC)
        guard case .map(var plain) = RegistrationSignature.signed(ping, secret: secret) else {
            throw TestFailure("not a map")
        }
        plain.append(MessagePackPair(.string("tandem_features"), .string("resume")))
        #expect(RegistrationSignature.check(.map(plain), identity: identity, secret: secret) == .badMAC)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
