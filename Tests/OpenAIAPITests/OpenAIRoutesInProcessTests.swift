import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSON
import OpenAIAPI
import Testing

/// The OpenAI surface's shared layer, in process with Hummingbird's router test framework: every error is OpenAI's
/// error object with the right status, the access check runs before any route, and bodies are read within bounds.
@Suite struct OpenAIRoutesInProcessTests {
    /// A router as instances and proxy build theirs: the error middleware, the access check, a JSON echo route.
    func app(key: String?) -> some ApplicationProtocol {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: APIErrorMiddleware())
        router.add(middleware: AccessMiddleware(key: key))
        router.post("/v1/echo") { request, _ -> Response in
            var request = request
            let body = try await request.collectRequestBody()
            guard let value = JSONValue.parse(body.readableBytesView), case .object = value else {
                throw APIError.badRequest("the request body must be a JSON object", param: "body")
            }
            return Response.json(value)
        }
        router.get("/health") { _, _ in Response.json(.object([("status", .string("ok"))])) }
        return Application(router: router)
    }

    /// The status and the error object of a reply.
    func error(_ response: TestResponse) -> (status: Int, type: String?, param: String?, message: String?) {
        let object = (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any]
        let error = object?["error"] as? [String: Any]
        return (
            Int(response.status.code), error?["type"] as? String, error?["param"] as? String,
            error?["message"] as? String
        )
    }

    @Test func errorsAreOpenAIErrorObjectsWithTheirStatus() async throws {
        try await app(key: nil).test(.router) { client in
            let unknown = try await client.execute(uri: "/v1/nothing", method: .get)
            #expect(error(unknown).status == 404 && error(unknown).type == "not_found_error")
            let method = try await client.execute(uri: "/v1/echo", method: .get)
            // Hummingbird routes by method and path together: another method on a known path is a 404 too.
            #expect(error(method).status == 404 && error(method).message == "no route for GET /v1/echo")
            let bad = try await client.execute(uri: "/v1/echo", method: .post, body: ByteBuffer(string: "[1]"))
            #expect(
                error(bad).status == 400 && error(bad).type == "invalid_request_error" && error(bad).param == "body")
            let big = ByteBuffer(repeating: UInt8(ascii: " "), count: maxBodyBytes + 1)
            let large = try await client.execute(uri: "/v1/echo", method: .post, body: big)
            #expect(error(large).status == 413 && error(large).message?.contains("larger than the limit") == true)
            let fine = try await client.execute(
                uri: "/v1/echo", method: .post, body: ByteBuffer(string: #"{"b":[1,2.5,"x"],"a":null}"#))
            #expect(fine.status == .ok && fine.headers[.contentType] == "application/json")
            #expect(String(buffer: fine.body) == #"{"b":[1,2.5,"x"],"a":null}"#, "members keep their order")
        }
    }

    @Test func theAccessCheckRunsBeforeAnyRoute() async throws {
        try await app(key: "sk-test").test(.router) { client in
            let missing = try await client.execute(uri: "/v1/echo", method: .post, body: ByteBuffer(string: "{}"))
            #expect(error(missing).status == 401 && missing.headers[.wwwAuthenticate] == "Bearer")
            let wrong = try await client.execute(
                uri: "/v1/echo", method: .post, headers: [.authorization: "Bearer sk-other"],
                body: ByteBuffer(string: "{}"))
            #expect(error(wrong).status == 401 && error(wrong).message == "invalid API key")
            let right = try await client.execute(
                uri: "/v1/echo", method: .post, headers: [.authorization: "Bearer sk-test"],
                body: ByteBuffer(string: "{}"))
            #expect(right.status == .ok)
            let open = try await client.execute(uri: "/health", method: .get)
            #expect(open.status == .ok, "/health stays open, as in vLLM")
            for path in ["//v1/echo", "/v1//echo", "/./v1/echo", "/v1/../v1/echo", "/v1/%65cho", "/v1/echo/"] {
                let sneaky = try await client.execute(
                    uri: path, method: .post, headers: [.authorization: "Bearer sk-test"],
                    body: ByteBuffer(string: "{}"))
                #expect(error(sneaky).status == 404, "\(path) is refused even with the key")
            }
        }
    }
}
