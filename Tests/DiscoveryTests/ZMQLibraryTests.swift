import Discovery
import Testing

@Suite struct ZMQLibraryTests {
    @Test func linksAgainstLibzmq4() {
        #expect(ZMQLibrary.version.hasPrefix("4."))
    }
}
