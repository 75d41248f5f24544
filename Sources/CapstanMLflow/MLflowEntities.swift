// What MLflow's REST API answers, as Swift values. Decoding is lenient the way MLflow's wire
// format needs (docs/mlflow.md): unset fields and empty lists are left out of answers, int64
// fields may come as numbers or strings, `version` is a string, unknown fields are ignored.

/// A key/value tag of an experiment, run, registered model or model version.
public struct MLflowTag: Hashable, Sendable, Codable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decode(String.self, forKey: .key)
        value = try c.decodeIfPresent(String.self, forKey: .value) ?? ""
    }
}

extension [MLflowTag] {
    /// The value of the tag `key` (the last one, should the list repeat a key).
    public func value(of key: String) -> String? { last { $0.key == key }?.value }

    /// The tags as a dictionary (a repeated key keeps its last value).
    public var dictionary: [String: String] {
        Dictionary(map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
    }
}

/// An experiment (`experiments/get-by-name`).
public struct MLflowExperiment: Hashable, Sendable, Decodable {
    public var id: String
    public var name: String
    /// `mlflow-artifacts:/1` when the server proxies artifacts.
    public var artifactLocation: String?
    /// `active` or `deleted`.
    public var lifecycleStage: String
    public var tags: [MLflowTag]

    public var isDeleted: Bool { lifecycleStage == "deleted" }

    enum CodingKeys: String, CodingKey {
        case id = "experiment_id", name, artifactLocation = "artifact_location", lifecycleStage = "lifecycle_stage", tags
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        name = try c.decode(String.self, forKey: .name)
        artifactLocation = try c.decodeIfPresent(String.self, forKey: .artifactLocation)
        lifecycleStage = try c.decodeIfPresent(String.self, forKey: .lifecycleStage) ?? "active"
        tags = try c.list(.tags)
    }
}

/// A run's status. A struct rather than an enum so that a status a newer server adds is read, not
/// refused.
public struct MLflowRunStatus: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    public static let running = Self(rawValue: "RUNNING")
    public static let scheduled = Self(rawValue: "SCHEDULED")
    public static let finished = Self(rawValue: "FINISHED")
    public static let failed = Self(rawValue: "FAILED")
    public static let killed = Self(rawValue: "KILLED")

    public var description: String { rawValue }
}

/// A metric value of a run. Non-finite values travel as the strings `NaN`, `Infinity` and
/// `-Infinity` (proto3 JSON); MLflow's SQL store keeps ±Infinity as ±Double.greatestFiniteMagnitude.
public struct MLflowMetric: Hashable, Sendable, Codable {
    public var key: String
    public var value: Double
    /// Milliseconds since the epoch.
    public var timestamp: Int64
    public var step: Int64

    public init(key: String, value: Double, timestamp: Int64, step: Int64 = 0) {
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.step = step
    }

    enum CodingKeys: String, CodingKey { case key, value, timestamp, step }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decode(String.self, forKey: .key)
        value = try c.lenientDouble(.value) ?? 0
        timestamp = try c.lenientInt64(.timestamp) ?? 0
        step = try c.lenientInt64(.step) ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(key, forKey: .key)
        if value.isFinite {
            try c.encode(value, forKey: .value)
        } else {
            try c.encode(value.isNaN ? "NaN" : (value > 0 ? "Infinity" : "-Infinity"), forKey: .value)
        }
        try c.encode(timestamp, forKey: .timestamp)
        try c.encode(step, forKey: .step)
    }
}

/// A parameter of a run (values are strings in MLflow; a logged value can never change).
public struct MLflowParam: Hashable, Sendable, Codable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decode(String.self, forKey: .key)
        value = try c.decodeIfPresent(String.self, forKey: .value) ?? ""
    }
}

/// `run.info`.
public struct MLflowRunInfo: Hashable, Sendable, Decodable {
    public var runID: String
    public var experimentID: String
    public var runName: String?
    public var status: MLflowRunStatus
    /// Milliseconds since the epoch.
    public var startTime: Int64?
    public var endTime: Int64?
    /// Where the run's artifacts live: `mlflow-artifacts:/<experiment>/<run>/artifacts` when the
    /// server proxies artifacts.
    public var artifactURI: String
    /// `active` or `deleted`.
    public var lifecycleStage: String

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", runUUID = "run_uuid", experimentID = "experiment_id", runName = "run_name", status
        case startTime = "start_time", endTime = "end_time", artifactURI = "artifact_uri", lifecycleStage = "lifecycle_stage"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard let id = try c.decodeIfPresent(String.self, forKey: .runID) ?? c.decodeIfPresent(String.self, forKey: .runUUID) else {
            throw DecodingError.keyNotFound(CodingKeys.runID, .init(codingPath: c.codingPath, debugDescription: "a run without run_id"))
        }
        runID = id
        experimentID = try c.decode(String.self, forKey: .experimentID)
        runName = try c.decodeIfPresent(String.self, forKey: .runName)
        status = MLflowRunStatus(rawValue: try c.decodeIfPresent(String.self, forKey: .status) ?? "RUNNING")
        startTime = try c.lenientInt64(.startTime)
        endTime = try c.lenientInt64(.endTime)
        artifactURI = try c.decodeIfPresent(String.self, forKey: .artifactURI) ?? ""
        lifecycleStage = try c.decodeIfPresent(String.self, forKey: .lifecycleStage) ?? "active"
    }
}

/// `run.data`: the latest value of each metric, the params and the tags.
public struct MLflowRunData: Hashable, Sendable, Decodable {
    public var metrics: [MLflowMetric]
    public var params: [MLflowParam]
    public var tags: [MLflowTag]

    enum CodingKeys: String, CodingKey { case metrics, params, tags }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        metrics = try c.list(.metrics)
        params = try c.list(.params)
        tags = try c.list(.tags)
    }

    /// Params as a dictionary.
    public var paramValues: [String: String] {
        Dictionary(params.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
    }

    /// The latest value of each metric.
    public var metricValues: [String: Double] {
        Dictionary(metrics.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
    }
}

/// A run (`runs/get`, `runs/create`, `runs/search`).
public struct MLflowRun: Hashable, Sendable, Decodable {
    public var info: MLflowRunInfo
    public var data: MLflowRunData

    enum CodingKeys: String, CodingKey { case info, data }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        info = try c.decode(MLflowRunInfo.self, forKey: .info)
        data = try c.decodeIfPresent(MLflowRunData.self, forKey: .data) ?? MLflowRunData(metrics: [], params: [], tags: [])
    }
}

extension MLflowRunData {
    init(metrics: [MLflowMetric], params: [MLflowParam], tags: [MLflowTag]) {
        self.metrics = metrics
        self.params = params
        self.tags = tags
    }
}

/// An alias of a registered model: `champion` → version 3.
public struct MLflowAlias: Hashable, Sendable, Decodable {
    public var alias: String
    public var version: Int

    enum CodingKeys: String, CodingKey { case alias, version }

    public init(alias: String, version: Int) {
        self.alias = alias
        self.version = version
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        alias = try c.decode(String.self, forKey: .alias)
        version = try c.versionNumber(.version)
    }
}

/// A registered model. Its `aliases` are the authority on aliases: version searches return none.
public struct MLflowRegisteredModel: Hashable, Sendable, Decodable {
    public var name: String
    public var description: String?
    /// Milliseconds since the epoch. `lastUpdatedTimestamp` does not move when tags or aliases change.
    public var creationTimestamp: Int64?
    public var lastUpdatedTimestamp: Int64?
    public var tags: [MLflowTag]
    public var aliases: [MLflowAlias]

    enum CodingKeys: String, CodingKey {
        case name, description, creationTimestamp = "creation_timestamp", lastUpdatedTimestamp = "last_updated_timestamp", tags, aliases
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        creationTimestamp = try c.lenientInt64(.creationTimestamp)
        lastUpdatedTimestamp = try c.lenientInt64(.lastUpdatedTimestamp)
        tags = try c.list(.tags)
        aliases = try c.list(.aliases)
    }

    /// Alias → version number.
    public var aliasVersions: [String: Int] {
        Dictionary(aliases.map { ($0.alias, $0.version) }, uniquingKeysWith: { _, last in last })
    }
}

/// A model version's registration status.
public struct MLflowModelVersionStatus: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    public static let pendingRegistration = Self(rawValue: "PENDING_REGISTRATION")
    public static let failedRegistration = Self(rawValue: "FAILED_REGISTRATION")
    public static let ready = Self(rawValue: "READY")

    public var description: String { rawValue }
}

/// A model version.
public struct MLflowModelVersion: Hashable, Sendable, Decodable {
    public var name: String
    /// 1, 2, 3… (a string on the wire).
    public var version: Int
    public var creationTimestamp: Int64?
    public var lastUpdatedTimestamp: Int64?
    public var description: String?
    /// Where its files are: `mlflow-artifacts:/1/<run>/artifacts/model`, `runs:/…`, `s3://…`.
    public var source: String?
    /// The run that produced it ("" when none was given).
    public var runID: String?
    public var runLink: String?
    public var status: MLflowModelVersionStatus
    public var statusMessage: String?
    public var tags: [MLflowTag]
    /// Filled by `get` and `alias` lookups; version searches leave it empty.
    public var aliases: [String]

    enum CodingKeys: String, CodingKey {
        case name, version, creationTimestamp = "creation_timestamp", lastUpdatedTimestamp = "last_updated_timestamp"
        case description, source, runID = "run_id", runLink = "run_link", status, statusMessage = "status_message", tags, aliases
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        version = try c.versionNumber(.version)
        creationTimestamp = try c.lenientInt64(.creationTimestamp)
        lastUpdatedTimestamp = try c.lenientInt64(.lastUpdatedTimestamp)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        source = try c.decodeIfPresent(String.self, forKey: .source)
        let run = try c.decodeIfPresent(String.self, forKey: .runID)
        runID = run?.isEmpty == true ? nil : run
        let link = try c.decodeIfPresent(String.self, forKey: .runLink)
        runLink = link?.isEmpty == true ? nil : link
        status = MLflowModelVersionStatus(rawValue: try c.decodeIfPresent(String.self, forKey: .status) ?? "READY")
        let message = try c.decodeIfPresent(String.self, forKey: .statusMessage)
        statusMessage = message?.isEmpty == true ? nil : message
        tags = try c.list(.tags)
        aliases = try c.list(.aliases)
    }
}

/// One entry of an artifact listing.
public struct MLflowArtifactFile: Hashable, Sendable, Decodable {
    /// Relative to the folder listed (or, in results of whole-folder calls, to its root).
    public var path: String
    public var isDirectory: Bool
    /// Bytes; 0 for folders (MLflow leaves the field out for empty files).
    public var size: Int64

    public init(path: String, isDirectory: Bool, size: Int64) {
        self.path = path
        self.isDirectory = isDirectory
        self.size = size
    }

    enum CodingKeys: String, CodingKey { case path, isDirectory = "is_dir", size = "file_size" }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        isDirectory = try c.decodeIfPresent(Bool.self, forKey: .isDirectory) ?? false
        size = try c.lenientInt64(.size) ?? 0
    }
}

/// One page of a search: the items and the token of the next page (nil on the last page).
public struct MLflowPage<Item: Sendable & Hashable>: Sendable, Hashable {
    public var items: [Item]
    public var nextPageToken: String?

    public init(items: [Item], nextPageToken: String?) {
        self.items = items
        self.nextPageToken = nextPageToken
    }
}

// MARK: - Lenient decoding

extension KeyedDecodingContainer {
    /// A list that MLflow leaves out when it is empty.
    func list<T: Decodable>(_ key: Key) throws -> [T] {
        try decodeIfPresent([T].self, forKey: key) ?? []
    }

    /// An int64 written as a JSON number or as a string of digits.
    func lenientInt64(_ key: Key) throws -> Int64? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let n = try? decode(Int64.self, forKey: key) { return n }
        if let d = try? decode(Double.self, forKey: key), d.rounded() == d, abs(d) < 9.2e18 { return Int64(d) }
        let text = try decode(String.self, forKey: key)
        guard let n = Int64(text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "'\(text)' is not an integer")
        }
        return n
    }

    /// A double written as a JSON number, or as `NaN`, `Infinity`, `-Infinity` or a numeric string.
    func lenientDouble(_ key: Key) throws -> Double? {
        guard contains(key), try !decodeNil(forKey: key) else { return nil }
        if let d = try? decode(Double.self, forKey: key) { return d }
        let text = try decode(String.self, forKey: key)
        switch text {
        case "NaN": return .nan
        case "Infinity": return .infinity
        case "-Infinity": return -.infinity
        default:
            guard let d = Double(text) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "'\(text)' is not a number")
            }
            return d
        }
    }

    /// A version number: a string of digits on the wire (a number is accepted too).
    func versionNumber(_ key: Key) throws -> Int {
        if let n = try? decode(Int.self, forKey: key), n > 0 { return n }
        let text = try decode(String.self, forKey: key)
        guard let n = Int(text), n > 0 else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "version '\(text)' is not a positive integer")
        }
        return n
    }
}
