/// Accumulates generated text, finds stop strings, and releases only text that cannot be the start of one.
public struct StopStringMatcher: Sendable {
    public let stops: [String]
    private let holdBack: Int
    public private(set) var text = ""
    private var emitted = 0

    public init(stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }
        holdBack = (self.stops.map(\.count).max() ?? 1) - 1
    }

    /// Adds a piece; returns the newly releasable text and whether a stop string was found (the text is then cut
    /// just before it, and everything up to the cut is released).
    public mutating func append(_ piece: String) -> (delta: String, stopped: Bool) {
        text += piece
        for stop in stops {
            if let range = text.range(of: stop) {
                text = String(text[..<range.lowerBound])
                return (releaseAll(), true)
            }
        }
        let safeEnd = max(emitted, text.count - holdBack)
        guard safeEnd > emitted else { return ("", false) }
        let start = text.index(text.startIndex, offsetBy: emitted)
        let end = text.index(text.startIndex, offsetBy: safeEnd)
        emitted = safeEnd
        return (String(text[start..<end]), false)
    }

    /// Releases whatever is still held back (at the end of generation).
    public mutating func releaseAll() -> String {
        let start = text.index(text.startIndex, offsetBy: min(emitted, text.count))
        emitted = text.count
        return String(text[start...])
    }
}
