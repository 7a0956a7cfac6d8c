import Foundation

/// A discovery message (what arrives on the proxy's ZMQ port) run through the msgpack decoder, the registration
/// reader and the signature check, for the libFuzzer harness (`tandem-fuzz msgpack`) and the test that replays its
/// corpus. Whatever the bytes, it must not crash, and what decodes must encode back to bytes that decode the same.
public enum RegistrationFuzzing {
    public static let secret = Array("fuzzing-secret-0123456789".utf8)

    public static func receive(_ bytes: [UInt8]) {
        guard let value = try? MessagePackValue.decode(bytes) else { return }
        _ = RegistrationPing(value)
        _ = RegistrationSignature.check(
            value, identity: Array(bytes.prefix(8)), secret: secret, now: Date(timeIntervalSince1970: 1_800_000_000))
        let again = value.encoded()
        guard let reread = try? MessagePackValue.decode(again) else {
            preconditionFailure("msgpack the encoder wrote does not decode (\(again.count) bytes)")
        }
        precondition(reread.encoded() == again, "msgpack changed on a round trip")  // bytes: NaN is not == NaN
    }
}
