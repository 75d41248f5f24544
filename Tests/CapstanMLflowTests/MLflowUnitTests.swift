import Foundation
import Testing
@testable import CapstanMLflow

/// The client's pure parts: URLs, credentials, filters, artifact paths, lenient decoding.
@Suite struct MLflowUnitTests {
    @Test(arguments: [
        ("ftp://mlflow:5000", "the scheme must be http or https"),
        ("http://user:hunter2-password@mlflow:5000", "the URL carries credentials"),
        ("http://mlflow:5000/?x=1", "query or a fragment"),
        ("http://mlflow:5000/api/2.0/mlflow", "includes the API path"),
        ("mlflow:5000", "the scheme must be http or https"),
        ("http://", "the URL has no host"),
    ])
    func unusableURLsAreRefused(url: String, expected: String) {
        #expect {
            _ = try MLflowClient(MLflowClient.Configuration(url: url))
        } throws: { error in
            guard let error = error as? MLflowError else { return false }
            return error.kind == .invalidConfiguration && error.description.contains(expected) && !error.description.contains("hunter2")
        }
    }

    @Test func unusableLimitsAreRefused() {
        for configuration in [MLflowClient.Configuration(url: "http://mlflow", timeout: .zero),
                              MLflowClient.Configuration(url: "http://mlflow", timeout: .seconds(86_401)),
                              MLflowClient.Configuration(url: "http://mlflow", transferTimeout: .seconds(-1)),
                              MLflowClient.Configuration(url: "http://mlflow", maxResponseBytes: 0)] {
            #expect { _ = try MLflowClient(configuration) } throws: { ($0 as? MLflowError)?.kind == .invalidConfiguration }
        }
    }

    @Test func theBaseURLKeepsItsPrefixAndLosesTrailingSlashes() async throws {
        let client = try MLflowClient(MLflowClient.Configuration(url: "https://tools.example.com/mlflow//"))
        #expect(client.server == "https://tools.example.com/mlflow")
        #expect(client.apiURL("registered-models/get") == "https://tools.example.com/mlflow/api/2.0/mlflow/registered-models/get")
        try await client.shutdown()
    }

    @Test func credentialsNeverShowTheirSecrets() throws {
        let token = MLflowCredentials.bearer(token: "tok-SECRET-123")
        let basic = MLflowCredentials.basic(username: "alice", password: "pw-SECRET-456")
        for credentials in [token, basic] {
            var dumped = ""
            dump(credentials, to: &dumped)
            for text in [String(describing: credentials), String(reflecting: credentials), dumped, "\(Mirror(reflecting: credentials).children.map { "\($0.value)" })"] {
                #expect(!text.contains("SECRET"), "\(text)")
            }
        }
        #expect(token.description == "bearer token from $MLFLOW_TRACKING_TOKEN")
        #expect(basic.source == "the username in $MLFLOW_TRACKING_USERNAME and the password in $MLFLOW_TRACKING_PASSWORD")
        #expect(basic.redact("echo: pw-SECRET-456 and \(Data("alice:pw-SECRET-456".utf8).base64EncodedString())") == "echo: *** and ***")
        #expect(try token.authorizationHeader() == "Bearer tok-SECRET-123")
        #expect(try basic.authorizationHeader() == "Basic " + Data("alice:pw-SECRET-456".utf8).base64EncodedString())
    }

    @Test func credentialsAreReadAsMLflowReadsThem() throws {
        let env = ["TOKEN": "t", "USER": "u", "PASS": "p", "EMPTY": ""]
        #expect(try MLflowCredentials.resolve(tokenVariable: "TOKEN", usernameVariable: nil, passwordVariable: nil, environment: env).description
            == "bearer token from $TOKEN")
        // Basic auth wins over a token, as in MLflow's Python client.
        #expect(try MLflowCredentials.resolve(tokenVariable: "TOKEN", usernameVariable: "USER", passwordVariable: "PASS", environment: env).description
            == "basic auth from $USER and $PASS")
        #expect(try MLflowCredentials.resolve(tokenVariable: nil, usernameVariable: nil, passwordVariable: nil, environment: env).description
            == "no credentials")
        #expect(throws: MLflowCredentialsError.unset(variable: "MISSING")) {
            try MLflowCredentials.resolve(tokenVariable: "MISSING", usernameVariable: nil, passwordVariable: nil, environment: env)
        }
        #expect(throws: MLflowCredentialsError.unset(variable: "EMPTY")) {
            try MLflowCredentials.resolve(tokenVariable: "EMPTY", usernameVariable: nil, passwordVariable: nil, environment: env)
        }
        #expect(throws: MLflowCredentialsError.incomplete(present: "USER", missing: "passwordEnv")) {
            try MLflowCredentials.resolve(tokenVariable: nil, usernameVariable: "USER", passwordVariable: nil, environment: env)
        }
        #expect(throws: MLflowCredentialsError.self) { try MLflowCredentials.bearer(token: "a\r\nX-Evil: 1").authorizationHeader() }
        #expect(throws: MLflowCredentialsError.self) { try MLflowCredentials.basic(username: "a:b", password: "p").authorizationHeader() }
        #expect {
            _ = try MLflowClient(MLflowClient.Configuration(url: "http://127.0.0.1:1", credentials: .bearer(token: "bad\ntoken")))
        } throws: { error in
            (error as? MLflowError)?.kind == .invalidConfiguration && !"\(error)".contains("bad\ntoken")
        }
    }

    @Test func filterValuesAreQuotedSoTheyCannotChangeTheCondition() throws {
        #expect(try MLflowFilter.tag("capstan.fingerprint", equals: "abc") == "tags.`capstan.fingerprint` = 'abc'")
        #expect(try MLflowFilter.name(equals: "o'brien") == "name = \"o'brien\"")
        #expect(try MLflowFilter.runID(equals: "r1") == "run_id = 'r1'")
        #expect(MLflowFilter.all(["a = 'x'", "b = 'y'"]) == "a = 'x' AND b = 'y'")
        #expect(throws: MLflowFilter.Unwritable.self) { try MLflowFilter.name(equals: "it's \"both\"") }
        #expect(throws: MLflowFilter.Unwritable.self) { try MLflowFilter.tag("a`b", equals: "x") }
    }

    @Test(arguments: [
        ("model/a.bin", true), ("a", true), ("sub dir/ünï code.json", true), ("100%.npy", true),
        ("", false), ("/abs", false), ("a/../b", false), ("..", false), (".", false), ("a//b", false), ("a/", false),
        ("a\\b", false), ("a\u{0}b", false), ("a\nb", false),
    ])
    func artifactPathsAreSafeRelativePaths(path: String, safe: Bool) {
        #expect((MLflowArtifactPath.components(path) != nil) == safe)
    }

    @Test func uploadNamesThatMLflowWouldRefuseOrRename() {
        #expect(MLflowArtifactPath.uploadProblem("model.bin") == nil)
        #expect(MLflowArtifactPath.uploadProblem("100%.npy") == nil)
        #expect(MLflowArtifactPath.uploadProblem("a%4") == nil)
        #expect(MLflowArtifactPath.uploadProblem("a#1") != nil)
        #expect(MLflowArtifactPath.uploadProblem("a%41") != nil)
        #expect(MLflowArtifactPath.uploadProblem("../x") != nil)
    }

    @Test func artifactLocationsComeFromProxiedArtifactURIsOnly() throws {
        #expect(try MLflowArtifactLocation(artifactURI: "mlflow-artifacts:/1/abc/artifacts").path == "1/abc/artifacts")
        #expect(try MLflowArtifactLocation(artifactURI: "mlflow-artifacts:///1/abc/artifacts").path == "1/abc/artifacts")
        #expect(try MLflowArtifactLocation(artifactURI: "mlflow-artifacts:/1/abc/artifacts").appending("model").uri
            == "mlflow-artifacts:/1/abc/artifacts/model")
        #expect(throws: MLflowArtifactPathError.notProxied("s3://bucket/1/abc/artifacts")) {
            try MLflowArtifactLocation(artifactURI: "s3://bucket/1/abc/artifacts")
        }
        #expect(throws: MLflowArtifactPathError.otherServer("mlflow-artifacts://other:5000/1/abc")) {
            try MLflowArtifactLocation(artifactURI: "mlflow-artifacts://other:5000/1/abc")
        }
        #expect(throws: MLflowArtifactPathError.unsafe("1/../../etc")) { try MLflowArtifactLocation(artifactURI: "mlflow-artifacts:/1/../../etc") }
        #expect(throws: MLflowArtifactPathError.unsafe("../x")) { try MLflowArtifactLocation(proxyPath: "1/a").appending("../x") }
    }

    @Test func answersAreDecodedLeniently() throws {
        // int64 as strings (proto3 JSON), missing lists, version as a string, NaN metrics, unknown fields.
        let version = try JSONDecoder().decode(MLflowModelVersion.self, from: Data("""
            {"name": "churn", "version": "12", "creation_timestamp": "1717000400000", "status": "PENDING_REGISTRATION",
             "run_id": "", "new_field": {"x": 1}}
            """.utf8))
        #expect(version.version == 12)
        #expect(version.creationTimestamp == 1_717_000_400_000)
        #expect(version.tags.isEmpty && version.aliases.isEmpty)
        #expect(version.runID == nil)
        #expect(version.status == .pendingRegistration)

        let model = try JSONDecoder().decode(MLflowRegisteredModel.self, from: Data("""
            {"name": "churn", "aliases": [{"alias": "champion", "version": "3"}], "last_updated_timestamp": 1717000500000}
            """.utf8))
        #expect(model.aliasVersions == ["champion": 3])
        #expect(model.lastUpdatedTimestamp == 1_717_000_500_000)

        let metric = try JSONDecoder().decode([MLflowMetric].self, from: Data("""
            [{"key": "a", "value": "NaN", "timestamp": 1, "step": "2"}, {"key": "b", "value": "-Infinity", "timestamp": 1}, {"key": "c", "value": 0.5}]
            """.utf8))
        #expect(metric[0].value.isNaN && metric[0].step == 2)
        #expect(metric[1].value == -.infinity)
        #expect(metric[2].value == 0.5 && metric[2].timestamp == 0)
        let encoded = String(decoding: try JSONEncoder().encode(MLflowMetric(key: "a", value: .infinity, timestamp: 1)), as: UTF8.self)
        #expect(encoded.contains("\"value\":\"Infinity\""))

        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(MLflowModelVersion.self, from: Data(#"{"name": "churn", "version": "latest"}"#.utf8))
        }
        let file = try JSONDecoder().decode(MLflowArtifactFile.self, from: Data(#"{"path": "empty.bin", "is_dir": false}"#.utf8))
        #expect(file.size == 0)
    }

    @Test func errorsReadAsOneLineNamingServerOperationAndWhatToDo() {
        let error = MLflowError(kind: .notFound, server: "http://mlflow:5000", operation: "create model version of 'churn'", httpStatus: 404,
                                errorCode: "RESOURCE_DOES_NOT_EXIST", message: "Registered Model with name=churn not found",
                                hint: "create it first")
        #expect(error.description
            == "create model version of 'churn' at http://mlflow:5000 failed: HTTP 404 RESOURCE_DOES_NOT_EXIST: Registered Model with name=churn not found; create it first")
        #expect(!error.isTransient)
        for kind in MLflowError.Kind.allCases {
            let transient = MLflowError(kind: kind, server: "s", operation: "o", message: "m").isTransient
            #expect(transient == [.unreachable, .timeout, .serverError, .registrationPending].contains(kind), "\(kind)")
        }
    }

    @Test func queryValuesArePercentEncoded() {
        #expect(MLflowClient.queryString([("filter", "name = 'a&b' AND tags.`x` = \"y#z\""), ("max_results", "3")])
            == "?filter=name%20%3D%20%27a%26b%27%20AND%20tags.%60x%60%20%3D%20%22y%23z%22&max_results=3")
        #expect(MLflowArtifactPath.escaped("1/run/artifacts/sub dir/100%.npy") == "1/run/artifacts/sub%20dir/100%25.npy")
    }
}
