import Discovery
import Foundation
import Proxy
import Testing

@Suite struct InstanceRegistryTests {
    func ping(_ role: RegistrationPing.Role, _ port: Int) -> RegistrationPing {
        RegistrationPing(
            role: role, httpAddress: HostPort(host: "10.0.0.1", port: port),
            zmqAddress: HostPort(host: "10.0.0.1", port: port + 1))
    }

    @Test func addsOnFirstPingRefreshesAndExpiresEachOnItsOwnClock() {
        let registry = InstanceRegistry(ttl: 5)
        let t0 = Date(timeIntervalSince1970: 1000)
        #expect(registry.record(ping(.prefill, 8081), now: t0) != nil, "new")
        #expect(registry.record(ping(.decode, 8083), now: t0) != nil)
        #expect(registry.record(ping(.prefill, 8081), now: t0 + 4) == nil, "a refresh is not an add")
        #expect(registry.expire(now: t0 + 5.5).map(\.http.port) == [8083], "only the silent one goes")
        #expect(registry.all.map(\.http.port) == [8081])
        #expect(registry.expire(now: t0 + 9.5).map(\.http.port) == [8081])
        #expect(registry.all.isEmpty)
    }

    @Test func roundRobinRotatesAndSkipsExcluded() {
        let registry = InstanceRegistry(ttl: 5)
        for port in [8083, 8085, 8087] { registry.record(ping(.decode, port)) }
        let picks = (0..<6).compactMap { _ in registry.acquire(.decode, policy: .roundRobin)?.http.port }
        #expect(picks == [8083, 8085, 8087, 8083, 8085, 8087])
        let excluded: Set = [HostPort(host: "10.0.0.1", port: 8083), HostPort(host: "10.0.0.1", port: 8085)]
        #expect(registry.acquire(.decode, policy: .roundRobin, excluding: excluded)?.http.port == 8087)
        #expect(registry.acquire(.prefill, policy: .roundRobin) == nil, "no prefill instance")
    }

    @Test func leastLoadedPicksTheFewestInFlight() {
        let registry = InstanceRegistry(ttl: 5)
        for port in [8083, 8085] { registry.record(ping(.decode, port)) }
        let a = registry.acquire(.decode, policy: .leastLoaded)!
        let b = registry.acquire(.decode, policy: .leastLoaded)!
        #expect(a.http != b.http, "the second goes to the idle one")
        let c = registry.acquire(.decode, policy: .leastLoaded)!
        registry.release(a)
        registry.release(c)
        // Now one holds b only, the other nothing: the idle one wins.
        let d = registry.acquire(.decode, policy: .leastLoaded)!
        #expect(d.http != b.http)
        #expect(registry.all.map(\.inFlight).reduce(0, +) == 2)
    }
}
