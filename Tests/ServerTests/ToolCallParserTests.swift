import Server
import Testing

/// Reading function calls out of model text: whole and streamed alike, and nothing the model wrote is lost.
@Suite struct ToolCallParserTests {
    let twoCalls = """
        Let me look.
        <tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
        </tool_call>
        <tool_call>
        {"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}
        </tool_call>

        """

    @Test func readsCallsAndTheTextAroundThem() {
        let (content, calls) = ToolCallParser.parse(twoCalls)
        #expect(content == "Let me look.")
        #expect(
            calls == [
                ParsedToolCall(name: "get_weather", arguments: #"{"city":"Paris","unit":"celsius"}"#),
                ParsedToolCall(name: "get_time", arguments: #"{"zone":"CET"}"#),
            ])
    }

    @Test func aBlockThatIsNotACallStaysText() {
        let text = "<tool_call>\nnot json\n</tool_call> and <tool_call>{\"name\": 3}</tool_call>"
        let (content, calls) = ToolCallParser.parse(text)
        #expect(calls.isEmpty)
        #expect(content == text)
    }

    @Test func anUnclosedCallAtTheEndCountsOnlyWhenItParses() {
        #expect(ToolCallParser.parse("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}").calls.count == 1)
        let cut = "<tool_call>\n{\"name\": \"f\", \"argu"
        #expect(ToolCallParser.parse(cut) == ("" + cut, []))
    }

    @Test func streamedPieceByPieceGivesTheWholeParse() {
        for size in [1, 2, 3, 7, 1000] {
            var streamer = ToolCallStreamer()
            var content = ""
            var calls: [ParsedToolCall] = []
            var rest = Substring(twoCalls)
            while !rest.isEmpty {
                let piece = rest.prefix(size)
                rest = rest.dropFirst(size)
                let out = streamer.feed(String(piece))
                content += out.content
                calls += out.calls
            }
            let end = streamer.finish()
            content += end.content
            calls += end.calls
            #expect(content == "Let me look.\n", "pieces of \(size)")
            #expect(calls == ToolCallParser.parse(twoCalls).calls, "pieces of \(size)")
            #expect(streamer.callCount == 2)
        }
    }

    @Test func plainTextPassesThroughAndOnlyATagsStartIsHeld() {
        var streamer = ToolCallStreamer()
        #expect(streamer.feed("Paris is <").content == "Paris is ")
        #expect(streamer.feed("b>big</b> <tool").content == "<b>big</b> ")
        #expect(streamer.feed("box").content == "<toolbox")
        #expect(streamer.finish() == ("", []))
    }
}
