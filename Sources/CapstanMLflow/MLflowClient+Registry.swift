import CapstanCore
import Foundation

// Registered models, model versions and aliases (`/api/2.0/mlflow/registered-models/…`,
// `/api/2.0/mlflow/model-versions/…`).

extension MLflowClient {
    // MARK: Registered models

    /// Creates a registered model. An existing name is `.alreadyExists`.
    @discardableResult
    public func createRegisteredModel(name: String, description: String? = nil, tags: [MLflowTag] = []) async throws -> MLflowRegisteredModel {
        struct Request: Encodable {
            var name: String
            var description: String?
            var tags: [MLflowTag]
        }
        struct Answer: Decodable { var registered_model: MLflowRegisteredModel }
        return try await send(.POST, "registered-models/create", Request(name: name, description: description, tags: tags),
                              as: Answer.self, operation: "create registered model '\(name)'").registered_model
    }

    /// The registered model with its tags and aliases, or nil when there is none.
    public func registeredModel(named name: String) async throws -> MLflowRegisteredModel? {
        struct Answer: Decodable { var registered_model: MLflowRegisteredModel }
        do {
            return try await get("registered-models/get", [("name", name)], as: Answer.self,
                                 operation: "get registered model '\(name)'").registered_model
        } catch let error as MLflowError where error.kind == .notFound {
            return nil
        }
    }

    /// The registered model `name`, created when it does not exist (a concurrent creation is fine).
    public func ensureRegisteredModel(name: String, description: String? = nil, tags: [MLflowTag] = []) async throws -> MLflowRegisteredModel {
        if let found = try await registeredModel(named: name) { return found }
        do {
            return try await createRegisteredModel(name: name, description: description, tags: tags)
        } catch let error as MLflowError where error.kind == .alreadyExists {
            if let found = try await registeredModel(named: name) { return found }
            throw error
        }
    }

    /// Deletes the registered model and all its versions.
    public func deleteRegisteredModel(name: String) async throws {
        struct Request: Encodable { var name: String }
        let _: Empty = try await send(.DELETE, "registered-models/delete", Request(name: name), operation: "delete registered model '\(name)'")
    }

    public func setRegisteredModelTag(name: String, key: String, value: String) async throws {
        struct Request: Encodable { var name: String; var key: String; var value: String }
        let _: Empty = try await send(.POST, "registered-models/set-tag", Request(name: name, key: key, value: value),
                                      operation: "set tag '\(key)' on registered model '\(name)'")
    }

    public func deleteRegisteredModelTag(name: String, key: String) async throws {
        struct Request: Encodable { var name: String; var key: String }
        let _: Empty = try await send(.DELETE, "registered-models/delete-tag", Request(name: name, key: key),
                                      operation: "delete tag '\(key)' of registered model '\(name)'")
    }

    /// Sets the registered model's description (the only field MLflow lets change).
    @discardableResult
    public func updateRegisteredModel(name: String, description: String) async throws -> MLflowRegisteredModel {
        struct Request: Encodable { var name: String; var description: String }
        struct Answer: Decodable { var registered_model: MLflowRegisteredModel }
        return try await send(.PATCH, "registered-models/update", Request(name: name, description: description), as: Answer.self,
                              operation: "update the description of registered model '\(name)'").registered_model
    }

    /// Every registered model that matches `filter` (`name = 'x'`, `name LIKE 'x%'`,
    /// `tags.\`k\` = 'v'`; see `MLflowFilter`), with their tags and aliases: one request per
    /// `pageSize` models (at most 1,000).
    public func searchRegisteredModels(filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000) async throws -> [MLflowRegisteredModel] {
        var all: [MLflowRegisteredModel] = []
        var token: String?
        repeat {
            let page = try await searchRegisteredModelsPage(filter: filter, orderBy: orderBy, pageSize: pageSize, pageToken: token)
            all += page.items
            token = page.nextPageToken
        } while token != nil
        return all
    }

    /// One page of `registered-models/search`.
    public func searchRegisteredModelsPage(filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000,
                                           pageToken: String? = nil) async throws -> MLflowPage<MLflowRegisteredModel> {
        struct Answer: Decodable {
            var registered_models: [MLflowRegisteredModel]?
            var next_page_token: String?
        }
        let answer = try await get("registered-models/search", Self.searchQuery(filter, orderBy, pageSize, pageToken), as: Answer.self,
                                   operation: "search registered models\(filter.map { " where \($0)" } ?? "")")
        return MLflowPage(items: answer.registered_models ?? [], nextPageToken: answer.next_page_token.flatMap { $0.isEmpty ? nil : $0 })
    }

    // MARK: Model versions

    /// Creates a model version from `source` (for example `mlflow-artifacts:/1/<run>/artifacts/model`)
    /// and the run that produced it. Its files must exist first: the server records the source
    /// without looking at it. The version may start `PENDING_REGISTRATION`: see `waitUntilReady`.
    public func createModelVersion(name: String, source: String, runID: String?, tags: [MLflowTag] = [],
                                   description: String? = nil) async throws -> MLflowModelVersion {
        struct Request: Encodable {
            var name: String
            var source: String
            var run_id: String?
            var tags: [MLflowTag]
            var description: String?
        }
        struct Answer: Decodable { var model_version: MLflowModelVersion }
        return try await send(.POST, "model-versions/create", Request(name: name, source: source, run_id: runID, tags: tags, description: description),
                              as: Answer.self, operation: "create model version of '\(name)'").model_version
    }

    /// The version, or nil when there is none (a missing model reads as a missing version).
    public func modelVersion(name: String, version: Int) async throws -> MLflowModelVersion? {
        struct Answer: Decodable { var model_version: MLflowModelVersion }
        do {
            return try await get("model-versions/get", [("name", name), ("version", String(version))], as: Answer.self,
                                 operation: "get version \(version) of '\(name)'").model_version
        } catch let error as MLflowError where error.kind == .notFound {
            return nil
        }
    }

    /// Where the version's files are stored (`model-versions/get-download-uri`): its `source`
    /// resolved, for example `models:/m-…` (MLflow 3's logged models) or `runs:/<run>/model` to
    /// the `mlflow-artifacts:` location the server proxies.
    public func downloadURI(name: String, version: Int) async throws -> String {
        struct Answer: Decodable { var artifact_uri: String }
        return try await get("model-versions/get-download-uri", [("name", name), ("version", String(version))], as: Answer.self,
                             operation: "get where the files of version \(version) of '\(name)' are").artifact_uri
    }

    /// Sets the version's description; returns the version.
    @discardableResult
    public func updateModelVersion(name: String, version: Int, description: String) async throws -> MLflowModelVersion {
        struct Request: Encodable { var name: String; var version: String; var description: String }
        struct Answer: Decodable { var model_version: MLflowModelVersion }
        return try await send(.PATCH, "model-versions/update", Request(name: name, version: String(version), description: description),
                              as: Answer.self, operation: "update the description of version \(version) of '\(name)'").model_version
    }

    public func deleteModelVersion(name: String, version: Int) async throws {
        struct Request: Encodable { var name: String; var version: String }
        let _: Empty = try await send(.DELETE, "model-versions/delete", Request(name: name, version: String(version)),
                                      operation: "delete version \(version) of '\(name)'")
    }

    /// Sets (or overwrites) a tag of the version.
    public func setModelVersionTag(name: String, version: Int, key: String, value: String) async throws {
        struct Request: Encodable { var name: String; var version: String; var key: String; var value: String }
        let _: Empty = try await send(.POST, "model-versions/set-tag", Request(name: name, version: String(version), key: key, value: value),
                                      operation: "set tag '\(key)' on version \(version) of '\(name)'")
    }

    /// Deletes a tag of the version (a tag that is not there is no error).
    public func deleteModelVersionTag(name: String, version: Int, key: String) async throws {
        struct Request: Encodable { var name: String; var version: String; var key: String }
        let _: Empty = try await send(.DELETE, "model-versions/delete-tag", Request(name: name, version: String(version), key: key),
                                      operation: "delete tag '\(key)' of version \(version) of '\(name)'")
    }

    /// Every model version that matches `filter` (`name = 'x'`, `run_id = '…'`,
    /// `tags.\`k\` = 'v'`, joined with AND; see `MLflowFilter`): one request per `pageSize`
    /// versions. Their `aliases` are empty: read aliases from the registered models.
    public func searchModelVersions(filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000) async throws -> [MLflowModelVersion] {
        var all: [MLflowModelVersion] = []
        var token: String?
        repeat {
            let page = try await searchModelVersionsPage(filter: filter, orderBy: orderBy, pageSize: pageSize, pageToken: token)
            all += page.items
            token = page.nextPageToken
        } while token != nil
        return all
    }

    /// One page of `model-versions/search`.
    public func searchModelVersionsPage(filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000,
                                        pageToken: String? = nil) async throws -> MLflowPage<MLflowModelVersion> {
        struct Answer: Decodable {
            var model_versions: [MLflowModelVersion]?
            var next_page_token: String?
        }
        let answer = try await get("model-versions/search", Self.searchQuery(filter, orderBy, pageSize, pageToken), as: Answer.self,
                                   operation: "search model versions\(filter.map { " where \($0)" } ?? "")")
        return MLflowPage(items: answer.model_versions ?? [], nextPageToken: answer.next_page_token.flatMap { $0.isEmpty ? nil : $0 })
    }

    /// Returns the version once it is `READY`, polling `model-versions/get` while it is
    /// `PENDING_REGISTRATION` (every `pollInterval`, doubling up to 5 s) until `timeout` has passed.
    /// `FAILED_REGISTRATION` is `.registrationFailed` with the server's status message; still
    /// pending at the deadline is `.registrationPending` (transient: the next pass looks again).
    public func waitUntilReady(_ version: MLflowModelVersion, timeout: Duration, pollInterval: Duration = .milliseconds(250)) async throws -> MLflowModelVersion {
        let operation = "wait for version \(version.version) of '\(version.name)' to be registered"
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var current = version
        var interval = pollInterval
        while true {
            switch current.status {
            case .ready:
                return current
            case .failedRegistration:
                throw MLflowError(kind: .registrationFailed, server: server, operation: operation,
                                  message: "the registration failed: \(current.statusMessage.map(clean) ?? "the server gave no reason")",
                                  hint: "look at the version's source (\(current.source ?? "none")) and the MLflow server's log")
            case .pendingRegistration:
                break
            default:
                throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                  message: "the version has status '\(current.status)', which this capstan does not know",
                                  hint: "is the server an MLflow version this capstan supports (docs/mlflow.md)?")
            }
            let now = ContinuousClock.now
            guard now < deadline else {
                throw MLflowError(kind: .registrationPending, server: server, operation: operation,
                                  message: "still PENDING_REGISTRATION after \(ManifestDurationText.format(timeout))\(current.statusMessage.map { ": \(clean($0))" } ?? "")",
                                  hint: "the next pass looks again; if it never ends, look at the MLflow server's registry backend")
            }
            try await Task.sleep(until: min(now.advanced(by: interval), deadline), clock: .continuous)
            interval = min(interval * 2, .seconds(5))
            guard let next = try await modelVersion(name: current.name, version: current.version) else {
                throw MLflowError(kind: .notFound, server: server, operation: operation,
                                  message: "the version disappeared while its registration was pending",
                                  hint: "someone deleted it; the next pass creates what is missing")
            }
            current = next
        }
    }

    // MARK: Aliases

    /// Points `alias` at `version` (moving it if it pointed elsewhere).
    public func setAlias(name: String, alias: String, version: Int) async throws {
        struct Request: Encodable { var name: String; var alias: String; var version: String }
        let _: Empty = try await send(.POST, "registered-models/alias", Request(name: name, alias: alias, version: String(version)),
                                      operation: "set alias '\(alias)' of '\(name)' to version \(version)")
    }

    /// Deletes `alias` (an alias that is not set is no error; a missing model is `.notFound`).
    public func deleteAlias(name: String, alias: String) async throws {
        struct Request: Encodable { var name: String; var alias: String }
        let _: Empty = try await send(.DELETE, "registered-models/alias", Request(name: name, alias: alias),
                                      operation: "delete alias '\(alias)' of '\(name)'")
    }

    /// The version `alias` points at, or nil when the alias is not set. A missing model is `.notFound`.
    /// (MLflow answers a missing alias with 400 `INVALID_PARAMETER_VALUE`, not 404.)
    public func modelVersion(name: String, alias: String) async throws -> MLflowModelVersion? {
        struct Answer: Decodable { var model_version: MLflowModelVersion }
        do {
            return try await get("registered-models/alias", [("name", name), ("alias", alias)], as: Answer.self,
                                 operation: "get alias '\(alias)' of '\(name)'").model_version
        } catch let error as MLflowError where Self.isMissingAlias(error, alias: alias) {
            return nil
        }
    }

    static func isMissingAlias(_ error: MLflowError, alias: String) -> Bool {
        guard error.kind == .invalidParameter || error.kind == .notFound else { return false }
        let message = error.message.lowercased()
        return message.contains("alias") && message.contains("not found")
    }

    static func searchQuery(_ filter: String?, _ orderBy: [String], _ pageSize: Int, _ pageToken: String?) -> [(String, String)] {
        var query: [(String, String)] = [("max_results", String(pageSize))]
        if let filter { query.append(("filter", filter)) }
        for o in orderBy { query.append(("order_by", o)) }
        if let pageToken { query.append(("page_token", pageToken)) }
        return query
    }
}

/// Durations in messages: `30s`, `1m30s`, `250ms`.
enum ManifestDurationText {
    static func format(_ d: Duration) -> String {
        ManifestDuration.format(d.nanosecondsClamped / 1_000_000)
    }
}
