import CapstanMLflow
import Foundation
import Testing
@testable import CapstanTestSupport

/// Credentials against MLflow's real basic-auth app: success, 401 and 403, and no secret in any error.
@Suite(.timeLimit(.minutes(5)))
struct MLflowAuthTests {
    @Test func aRightTokenOrPasswordWorksAndAWrongOneIsAnAuthErrorWithoutTheSecret() async throws {
        let server = try await MLflowServer.sharedWithAuth()
        let auth = try #require(server.auth)
        let name = "capstan/" + unique("auth")

        try await withClient(server, credentials: .bearer(token: auth.token)) { client in
            _ = try await client.ensureExperiment(named: name)
        }
        try await withClient(server, credentials: .basic(username: auth.adminUsername, password: auth.adminPassword)) { client in
            let found = try await client.experiment(named: name)
            #expect(found != nil)
        }

        let wrongToken = "wrong-token-" + UUID().uuidString
        let badToken = try await withClient(server, credentials: .bearer(token: wrongToken, variable: "CAPSTAN_MLFLOW_TOKEN")) { client in
            await mlflowError { _ = try await client.experiment(named: name) }
        }
        #expect(badToken?.kind == .unauthenticated)
        #expect(badToken?.isAuthFailure == true)
        #expect(badToken?.isTransient == false)
        #expect(badToken?.httpStatus == 401)
        #expect(badToken?.description.contains("check the token in $CAPSTAN_MLFLOW_TOKEN") == true)
        #expect(badToken?.description.contains("get experiment '\(name)' at \(server.url) failed") == true)
        #expect(badToken.map { "\($0)" }?.contains(wrongToken) == false)

        let wrongPassword = "wrong-password-" + UUID().uuidString
        let badPassword = try await withClient(server, credentials: .basic(username: auth.adminUsername, password: wrongPassword)) { client in
            await mlflowError { _ = try await client.registeredModel(named: "anything") }
        }
        #expect(badPassword?.kind == .unauthenticated)
        #expect(badPassword?.description.contains("$MLFLOW_TRACKING_USERNAME and the password in $MLFLOW_TRACKING_PASSWORD") == true)
        let text = badPassword.map { String(describing: $0) + String(reflecting: $0) } ?? ""
        #expect(!text.contains(wrongPassword))
        #expect(!text.contains(Data("\(auth.adminUsername):\(wrongPassword)".utf8).base64EncodedString()))

        let anonymous = try await withClient(server) { client in await mlflowError { _ = try await client.experiment(named: name) } }
        #expect(anonymous?.kind == .unauthenticated)
        #expect(anonymous?.description.contains("no credentials are configured") == true)

        // The artifact proxy is guarded too.
        let upload = try await withClient(server, credentials: .bearer(token: wrongToken)) { client in
            let temp = try TempDir()
            try writeFiles(["f": [1]], into: temp.url)
            return await mlflowError { try await client.uploadArtifacts(from: temp.path, to: try MLflowArtifactLocation(proxyPath: "0/x/artifacts")) }
        }
        #expect(upload?.kind == .unauthenticated)
        #expect(upload.map { "\($0)" }?.contains(wrongToken) == false)
    }

    @Test func aUserWithoutPermissionGetsAPermissionError() async throws {
        let server = try await MLflowServer.sharedWithAuth()
        let auth = try #require(server.auth)
        let model = unique("guarded")
        let reader = unique("reader")
        let readerPassword = "reader-password-" + UUID().uuidString
        try await withClient(server, credentials: .bearer(token: auth.token)) { client in
            _ = try await client.createRegisteredModel(name: model)
        }
        _ = try await server.python("""
            import sys
            from mlflow.server import get_app_client
            get_app_client("basic-auth", tracking_uri=sys.argv[1]).create_user(username=sys.argv[2], password=sys.argv[3])
            """, [server.url, reader, readerPassword])
        try await withClient(server, credentials: .basic(username: reader, password: readerPassword, usernameVariable: "READER_USER",
                                                         passwordVariable: "READER_PASSWORD")) { client in
            // READ is the default permission: reading works, changing does not.
            let readable = try await client.registeredModel(named: model)
            #expect(readable != nil)
            let denied = await mlflowError { try await client.setRegisteredModelTag(name: model, key: "k", value: "v") }
            #expect(denied?.kind == .permissionDenied)
            #expect(denied?.httpStatus == 403)
            #expect(denied?.isAuthFailure == true)
            #expect(denied?.description.contains("set tag 'k' on registered model '\(model)'") == true)
            #expect(denied?.description.contains("$READER_USER") == true)
            #expect(denied.map { "\($0)" }?.contains(readerPassword) == false)
        }
    }
}

/// What the client says when the server is down, slow, not MLflow, hostile or untrusted.
@Suite(.timeLimit(.minutes(3)))
struct MLflowTransportFailureTests {
    @Test func aStoppedServerIsATransientUnreachableErrorNamingServerAndOperation() async throws {
        // A server that listened and was stopped: nothing accepts on its port any more.
        let listener = try PythonServer(script: PythonServer.silent)
        let url = "http://127.0.0.1:\(listener.port)"
        listener.stop()
        let error = try await withClient(url: url) { client in
            await mlflowError { _ = try await client.createModelVersion(name: "churn", source: "s3://b/k", runID: nil) }
        }
        #expect(error?.kind == .unreachable)
        #expect(error?.isTransient == true)
        #expect(error?.server == url)
        #expect(error?.description.hasPrefix("create model version of 'churn' at \(url) failed: the server cannot be reached (connection refused)") == true)
    }

    @Test func aServerThatClosesTheConnectionIsUnreachable() async throws {
        let closer = try PythonServer(script: """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            print(s.getsockname()[1], flush=True)
            while True:
                c, _ = s.accept()
                c.recv(65536)
                c.close()
            """)
        let error = try await withClient(url: "http://127.0.0.1:\(closer.port)") { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .unreachable)
        #expect(error?.isTransient == true)
    }

    @Test func aServerThatNeverAnswersIsATransientTimeout() async throws {
        let silent = try PythonServer(script: PythonServer.silent)
        let error = try await withClient(url: "http://127.0.0.1:\(silent.port)", timeout: .seconds(1)) { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .timeout)
        #expect(error?.isTransient == true)
        #expect(error?.description.contains("get registered model 'churn' at http://127.0.0.1:\(silent.port) failed: no complete answer within 1s") == true)
    }

    @Test func aLoginPageInPlaceOfMLflowIsABadResponseNotAnAbsentModel() async throws {
        let page = try ScriptedServer.start([
            "/": .init(status: 200, headers: ["Content-Type": "text/html; charset=utf-8"],
                       body: "<!doctype html><html><head><title>Sign in - Corp SSO</title></head><body>login</body></html>"),
        ])
        let error = try await withClient(url: "http://127.0.0.1:\(page.port)") { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .badResponse)
        #expect(error?.httpStatus == 200)
        #expect(error?.message == "the answer is an HTML page titled \"Sign in - Corp SSO\" (text/html), not MLflow's JSON")
        #expect(error?.hint?.contains("login page or proxy") == true)
    }

    @Test func aURLThatIsNotTheTrackingServersBaseIsNotAnAbsentModel() async throws {
        let server = try await MLflowServer.shared()
        // MLflow's own HTML 404 for an unknown route must not read as "no such model".
        let error = try await withClient(url: server.url + "/not-mlflow") { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .endpointNotFound)
        #expect(error?.httpStatus == 404)
        #expect(error?.message.contains("an HTML page titled \"404 Not Found\"") == true)
        #expect(error?.hint?.contains("base URL of an MLflow tracking server") == true)
    }

    @Test func answersLargerThanTheLimitAreRefused() async throws {
        let server = try await MLflowServer.shared()
        let name = unique("big")
        try await withClient(server) { client in
            _ = try await client.createRegisteredModel(name: name, description: String(repeating: "x", count: 2000))
        }
        let error = try await withClient(server, maxResponseBytes: 1000) { client in
            await mlflowError { _ = try await client.registeredModel(named: name) }
        }
        #expect(error?.kind == .badResponse)
        #expect(error?.message.contains("larger than 1000 bytes") == true)
    }

    @Test func aRedirectIsNotFollowed() async throws {
        let redirect = try ScriptedServer.start(["/": .init(status: 301, headers: ["Location": "https://mlflow.example.com/api/2.0/mlflow/x"])])
        let error = try await withClient(url: "http://127.0.0.1:\(redirect.port)", credentials: .bearer(token: "secret-token-value")) { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .rejected)
        #expect(error?.message == "the server redirects to https://mlflow.example.com/api/2.0/mlflow/x")
    }

    @Test func aCertificateNobodyTrustsIsATLSError() async throws {
        let temp = try TempDir()
        let certificate = temp.sub("cert.pem").path, key = temp.sub("key.pem").path
        let python = try MLflowServer.findPython()
        let made = try Shell.run(python, ["-c", """
            import datetime, sys
            from cryptography import x509
            from cryptography.x509.oid import NameOID
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            import ipaddress
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=1))
                    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                    .sign(key, hashes.SHA256()))
            open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
            open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
            """, certificate, key])
        try #require(made.status == 0, "\(made.stderr)")
        let tls = try ScriptedServer.start(["/": .init(status: 200, headers: ["Content-Type": "application/json"], body: "{}")],
                                           tls: (certificate, key))
        let error = try await withClient(url: "https://127.0.0.1:\(tls.port)") { client in
            await mlflowError { _ = try await client.registeredModel(named: "churn") }
        }
        #expect(error?.kind == .tls)
        #expect(error?.isTransient == false)
        #expect(error?.hint?.contains("TLS is always verified") == true)
    }

    // MARK: Artifacts from a server that lies

    private func hostileListing(_ files: String, fileBody: String = "", fileSize: Int? = nil) throws -> PythonServer {
        try ScriptedServer.start([
            "/api/2.0/mlflow-artifacts/artifacts?": .init(status: 200, headers: ["Content-Type": "application/json"], body: files),
            "/api/2.0/mlflow-artifacts/artifacts/": .init(status: 200, headers: ["Content-Type": "application/octet-stream"], body: fileBody),
        ])
    }

    @Test(arguments: ["../escaped", "/etc/escaped", "a/../../escaped", "..", "a\\\\..\\\\b", "", "a//b", "x\\u0000y"])
    func aListingWithAnUnsafeNameIsRefusedAndNothingIsWritten(name: String) async throws {
        let server = try hostileListing(#"{"files": [{"path": "ok.bin", "is_dir": false, "file_size": 2}, {"path": "\#(name)", "is_dir": false, "file_size": 2}]}"#,
                                        fileBody: "ok")
        let temp = try TempDir()
        try FileManager.default.createDirectory(at: temp.sub("work"), withIntermediateDirectories: true)
        let error = try await withClient(url: "http://127.0.0.1:\(server.port)") { client in
            await mlflowError {
                try await client.downloadArtifacts(from: try MLflowArtifactLocation(proxyPath: "1/run/artifacts/model"), into: temp.sub("work/model").path)
            }
        }
        #expect(error?.kind == .badResponse)
        #expect(error?.message.contains("unsafe name") == true)
        #expect(temp.files() == [])
        #expect(try FileManager.default.contentsOfDirectory(atPath: temp.sub("work").path) == [])
    }

    @Test(arguments: ["short", "much longer than the listing says"])
    func aFileWhoseSizeDiffersFromItsListingIsRefusedAndNothingIsLeft(body: String) async throws {
        let server = try hostileListing(#"{"files": [{"path": "model.bin", "is_dir": false, "file_size": 10}]}"#, fileBody: body)
        let temp = try TempDir()
        let error = try await withClient(url: "http://127.0.0.1:\(server.port)") { client in
            await mlflowError {
                try await client.downloadArtifacts(from: try MLflowArtifactLocation(proxyPath: "1/run/artifacts/model"), into: temp.sub("model").path)
            }
        }
        #expect(error?.kind == .badResponse)
        #expect(error?.message.contains("'1/run/artifacts/model/model.bin'") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: temp.path) == [])
    }
}
