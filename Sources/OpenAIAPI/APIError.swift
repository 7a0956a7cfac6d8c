import Discovery
import Foundation
import Hummingbird
import JSON

/// An error answered to an HTTP client as OpenAI's error object
/// `{"error": {"message", "type", "param", "code"}}` with a matching status.
public struct APIError: Error, Sendable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public init(
        _ status: HTTPResponse.Status, _ message: String, type: String? = nil, param: String? = nil,
        code: String? = nil
    ) {
        self.status = status
        self.message = message
        self.type = type ?? Self.defaultType(status)
        self.param = param
        self.code = code
    }

    public var description: String { "\(status.code) \(type): \(message)" }

    public static func badRequest(_ message: String, param: String? = nil) -> APIError {
        APIError(.badRequest, message, param: param)
    }

    /// The error object as JSON.
    public var json: JSONValue {
        .object([
            (
                "error",
                .object([
                    ("message", .string(message)), ("type", .string(type)), ("param", JSONValue(param)),
                    ("code", code.map { .string($0) } ?? .int(Int(status.code))),
                ])
            )
        ])
    }

    /// The HTTP response carrying this error.
    public var response: Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        return Response(
            status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: json.serialized)))
    }

    private static func defaultType(_ status: HTTPResponse.Status) -> String {
        switch status.code {
        case 401: return "authentication_error"
        case 404: return "not_found_error"
        case 400..<500: return "invalid_request_error"
        case 503: return "service_unavailable_error"
        default: return "server_error"
        }
    }
}

/// Turns every error a route throws (ours, Hummingbird's, a body that is too large) into an OpenAI error response,
/// and answers unknown paths with one too.
public struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return error.response
        } catch let error as any HTTPResponseError {
            let message: String
            switch error.status {
            case .notFound: message = "no route for \(request.method) \(request.uri.path)"
            case .contentTooLarge: message = "the request body is larger than the limit of \(maxBodyBytes) bytes"
            case .methodNotAllowed: message = "method \(request.method) is not allowed on \(request.uri.path)"
            default: message = "\(error)"
            }
            return APIError(error.status, message).response
        } catch {
            return APIError(.internalServerError, "internal error: \(error)").response
        }
    }
}

/// Requests bodies larger than this are answered with 413.
public let maxBodyBytes = 8 << 20

extension Request {
    /// The whole body, at most `maxBodyBytes` (else 413); a body that cannot be read (malformed chunked encoding,
    /// cut short by the client) is a 400, never a 500.
    public mutating func collectRequestBody() async throws -> ByteBuffer {
        do {
            return try await collectBody(upTo: maxBodyBytes)
        } catch let error as any HTTPResponseError {
            throw error
        } catch {
            throw APIError.badRequest("the request body could not be read (\(error))", param: nil)
        }
    }
}

/// The one access check of instances and the proxy, before any route: a path that is not in canonical form (an
/// empty, `.` or `..` segment, any percent-encoding, a trailing slash) is refused with 404 whatever the key, so that
/// `//v1/completions` or `/%761/models` can never reach a route around the key check; then, when the server has an
/// API key, `Authorization: Bearer KEY` is required on `/v1` paths, as vLLM does (`/health`, `/metrics`, `/version`,
/// `/tokenize`, `/detokenize` stay open).
public struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: [UInt8]?

    public init(key: String?) { self.key = key.map { Array("Bearer \($0)".utf8) } }

    /// Whether `path` is canonical: `/`, or `/`-separated segments that are non-empty, not `.` or `..`, and free of
    /// `%` and backslashes.
    public static func isCanonical(_ path: String) -> Bool {
        guard path.hasPrefix("/") else { return false }
        if path == "/" { return true }
        guard !path.contains("%"), !path.contains("\\") else { return false }
        return path.dropFirst().split(separator: "/", omittingEmptySubsequences: false).allSatisfy {
            !$0.isEmpty && $0 != "." && $0 != ".."
        }
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        let path = request.uri.path
        guard Self.isCanonical(path) else {
            throw APIError(.notFound, "no route for this path: send it in canonical form (no '//', '.', '..' or '%')")
        }
        guard let key, path == "/v1" || path.hasPrefix("/v1/") else { return try await next(request, context) }
        guard let header = request.headers[.authorization] else {
            throw APIError(.unauthorized, "missing API key: send the header 'Authorization: Bearer KEY'")
        }
        guard constantTimeEqual(Array(header.utf8), key) else { throw APIError(.unauthorized, "invalid API key") }
        return try await next(request, context)
    }
}
