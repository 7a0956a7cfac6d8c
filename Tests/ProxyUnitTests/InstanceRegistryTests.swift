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

    @Test func aFleetOfTwoModelsRoutesEachRequestToItsModel() {
        let registry = InstanceRegistry(ttl: 5)
        for port in [8083, 8085] { registry.record(ping(.decode, port)) }
        #expect(registry.accepts(model: "anything"), "models not known yet: nothing is refused")
        registry.setModels(["default"], role: .decode, http: HostPort(host: "10.0.0.1", port: 8083))
        #expect(registry.accepts(model: "anything"), "one model known, one instance still unknown")
        registry.setModels(["gemma3-270m"], role: .decode, http: HostPort(host: "10.0.0.1", port: 8085))
        #expect(registry.servedModels == ["default", "gemma3-270m"])
        #expect(!registry.accepts(model: "llama"), "two models served, neither is llama")
        #expect(registry.accepts(model: nil), "no model field: any instance")
        for (model, port) in [("default", 8083), ("gemma3-270m", 8085)] {
            let picks = (0..<3).compactMap { _ in
                InstanceRegistry.$requestedModel.withValue(model) {
                    registry.acquire(.decode, policy: .roundRobin)?.http.port
                }
            }
            #expect(picks == [port, port, port], "\(model)")
        }
    }

    @Test func aFleetOfOneModelTakesAnyName() {
        let registry = InstanceRegistry(ttl: 5)
        registry.record(ping(.decode, 8083))
        registry.setModels(["default"], role: .decode, http: HostPort(host: "10.0.0.1", port: 8083))
        #expect(registry.accepts(model: "gpt-4o"), "as vLLM's proxy: one model, any name goes")
        let pick = InstanceRegistry.$requestedModel.withValue("gpt-4o") {
            registry.acquire(.decode, policy: .roundRobin)
        }
        #expect(pick?.http.port == 8083)
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
