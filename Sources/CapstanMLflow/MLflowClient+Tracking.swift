import Foundation

// Experiments and runs (`/api/2.0/mlflow/experiments/…`, `/api/2.0/mlflow/runs/…`).

extension MLflowClient {
    // MARK: Experiments

    /// The experiment named `name` (active or deleted), or nil when there is none.
    public func experiment(named name: String) async throws -> MLflowExperiment? {
        struct Answer: Decodable { var experiment: MLflowExperiment }
        do {
            return try await get("experiments/get-by-name", [("experiment_name", name)], as: Answer.self,
                                 operation: "get experiment '\(name)'").experiment
        } catch let error as MLflowError where error.kind == .notFound {
            return nil
        }
    }

    /// Creates the experiment and returns its id. An existing name is `.alreadyExists`.
    public func createExperiment(named name: String, tags: [MLflowTag] = []) async throws -> String {
        struct Request: Encodable { var name: String; var tags: [MLflowTag] }
        struct Answer: Decodable { var experiment_id: String }
        return try await send(.POST, "experiments/create", Request(name: name, tags: tags), as: Answer.self,
                              operation: "create experiment '\(name)'").experiment_id
    }

    /// The experiment named `name`, created with `tags` when it does not exist (another writer
    /// creating it at the same time is fine). A deleted experiment of that name is an error: MLflow
    /// keeps its name until it is restored or purged.
    public func ensureExperiment(named name: String, tags: [MLflowTag] = []) async throws -> MLflowExperiment {
        if let found = try await experiment(named: name) { return try active(found) }
        do {
            _ = try await createExperiment(named: name, tags: tags)
        } catch let error as MLflowError where error.kind == .alreadyExists {
            // Created by someone else since the lookup (or deleted: the lookup below tells).
        }
        guard let created = try await experiment(named: name) else {
            throw MLflowError(kind: .badResponse, server: server, operation: "create experiment '\(name)'",
                              message: "the experiment was created but cannot be found by its name",
                              hint: "check the MLflow server's backend store")
        }
        return try active(created)
    }

    /// Every active experiment that matches `filter` (`name LIKE 'capstan/%'`), page after page.
    public func searchExperiments(filter: String? = nil, pageSize: Int = 1000) async throws -> [MLflowExperiment] {
        struct Request: Encodable {
            var filter: String?
            var max_results: Int
            var page_token: String?
            var view_type: String
        }
        struct Answer: Decodable {
            var experiments: [MLflowExperiment]?
            var next_page_token: String?
        }
        var all: [MLflowExperiment] = []
        var token: String?
        repeat {
            let answer = try await send(.POST, "experiments/search",
                                        Request(filter: filter, max_results: pageSize, page_token: token, view_type: "ACTIVE_ONLY"),
                                        as: Answer.self, operation: "search experiments\(filter.map { " where \($0)" } ?? "")")
            all += answer.experiments ?? []
            token = answer.next_page_token.flatMap { $0.isEmpty ? nil : $0 }
        } while token != nil
        return all
    }

    private func active(_ experiment: MLflowExperiment) throws -> MLflowExperiment {
        guard experiment.isDeleted else { return experiment }
        throw MLflowError(kind: .rejected, server: server, operation: "use experiment '\(experiment.name)'",
                          message: "experiment '\(experiment.name)' (id \(experiment.id)) is deleted",
                          hint: "restore it (`mlflow experiments restore --experiment-id \(experiment.id)`), purge it (`mlflow gc`), or name another experiment")
    }

    // MARK: Runs

    /// Creates a run (status RUNNING) in the experiment, with its tags.
    public func createRun(experimentID: String, name: String? = nil, startTime: Int64, tags: [MLflowTag] = []) async throws -> MLflowRun {
        struct Request: Encodable {
            var experiment_id: String
            var run_name: String?
            var start_time: Int64
            var tags: [MLflowTag]
        }
        struct Answer: Decodable { var run: MLflowRun }
        return try await send(.POST, "runs/create", Request(experiment_id: experimentID, run_name: name, start_time: startTime, tags: tags),
                              as: Answer.self, operation: "create run\(name.map { " '\($0)'" } ?? "") in experiment \(experimentID)").run
    }

    /// The run, or nil when there is none.
    public func run(id: String) async throws -> MLflowRun? {
        struct Answer: Decodable { var run: MLflowRun }
        do {
            return try await get("runs/get", [("run_id", id)], as: Answer.self, operation: "get run \(id)").run
        } catch let error as MLflowError where error.kind == .notFound {
            return nil
        }
    }

    /// Sets the run's status (and end time); returns its info.
    @discardableResult
    public func updateRun(id: String, status: MLflowRunStatus, endTime: Int64? = nil) async throws -> MLflowRunInfo {
        struct Request: Encodable {
            var run_id: String
            var status: String
            var end_time: Int64?
        }
        struct Answer: Decodable { var run_info: MLflowRunInfo }
        return try await send(.POST, "runs/update", Request(run_id: id, status: status.rawValue, end_time: endTime),
                              as: Answer.self, operation: "set status \(status) on run \(id)").run_info
    }

    /// Logs metrics, params and tags on the run, in as many `runs/log-batch` requests as MLflow's
    /// limits need (1,000 metrics, 100 params, 100 tags, 1,000 entries per request). A param
    /// already logged with another value is `.invalidParameter` (params never change in MLflow).
    public func logBatch(runID: String, metrics: [MLflowMetric] = [], params: [MLflowParam] = [], tags: [MLflowTag] = []) async throws {
        struct Request: Encodable {
            var run_id: String
            var metrics: [MLflowMetric]
            var params: [MLflowParam]
            var tags: [MLflowTag]
        }
        var metrics = metrics[...], params = params[...], tags = tags[...]
        var first = true
        while first || !metrics.isEmpty || !params.isEmpty || !tags.isEmpty {
            first = false
            let p = params.prefix(Self.maxParamsOrTagsPerBatch)
            let t = tags.prefix(Self.maxParamsOrTagsPerBatch)
            let m = metrics.prefix(max(0, min(Self.maxMetricsPerBatch, Self.maxEntriesPerBatch - p.count - t.count)))
            params = params.dropFirst(p.count)
            tags = tags.dropFirst(t.count)
            metrics = metrics.dropFirst(m.count)
            let _: Empty = try await send(.POST, "runs/log-batch", Request(run_id: runID, metrics: Array(m), params: Array(p), tags: Array(t)),
                                          operation: "log \(m.count) metrics, \(p.count) params and \(t.count) tags on run \(runID)")
        }
    }

    /// MLflow's limits of one `runs/log-batch` request (mlflow/utils/validation.py).
    static let maxMetricsPerBatch = 1000
    static let maxParamsOrTagsPerBatch = 100
    static let maxEntriesPerBatch = 1000

    /// Every run of the experiments that matches `filter` (MLflow's search syntax, see
    /// `MLflowFilter`), page after page, `pageSize` runs per request (at most 50,000).
    public func searchRuns(experimentIDs: [String], filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000) async throws -> [MLflowRun] {
        var all: [MLflowRun] = []
        var token: String?
        repeat {
            let page = try await searchRunsPage(experimentIDs: experimentIDs, filter: filter, orderBy: orderBy, pageSize: pageSize, pageToken: token)
            all += page.items
            token = page.nextPageToken
        } while token != nil
        return all
    }

    /// One page of `runs/search`.
    public func searchRunsPage(experimentIDs: [String], filter: String? = nil, orderBy: [String] = [], pageSize: Int = 1000,
                               pageToken: String? = nil) async throws -> MLflowPage<MLflowRun> {
        struct Request: Encodable {
            var experiment_ids: [String]
            var filter: String?
            var order_by: [String]
            var max_results: Int
            var page_token: String?
        }
        struct Answer: Decodable {
            var runs: [MLflowRun]?
            var next_page_token: String?
        }
        let answer = try await send(.POST, "runs/search", Request(experiment_ids: experimentIDs, filter: filter, order_by: orderBy,
                                                                  max_results: pageSize, page_token: pageToken),
                                    as: Answer.self, operation: "search runs\(filter.map { " where \($0)" } ?? "")")
        return MLflowPage(items: answer.runs ?? [], nextPageToken: answer.next_page_token.flatMap { $0.isEmpty ? nil : $0 })
    }
}
