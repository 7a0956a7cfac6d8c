import CZMQ

/// Facts about the linked libzmq (registration with the proxy is built on it).
public enum ZMQLibrary {
    /// The libzmq version as "major.minor.patch".
    public static var version: String {
        var major: Int32 = 0
        var minor: Int32 = 0
        var patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}
