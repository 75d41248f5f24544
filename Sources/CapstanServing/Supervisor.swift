import AsyncHTTPClient
import CapstanSystem
import Dispatch
import Synchronization

/// Keeps the model servers of every endpoint running as the specs say, and publishes the routes
/// the gateway follows.
///
/// For each backend (one version of one endpoint): the artifact is verified and the secret
/// variables resolved first (a failure refuses the backend: nothing starts); then `replicas`
/// workers each keep one process running (`ReplicaWorker`). Routes change before processes stop:
/// a replica leaves the routes, finishes its requests in flight (bounded), then gets SIGTERM.
///
/// Workers and verifications run as child tasks of `run()` (structured: they are added through a
/// stream), so that when `run()` returns every process has been stopped.
actor Supervisor {
    typealias Job = @Sendable () async -> Void

    let bootID: String
    let routes: RoutingTable
    private let client: HTTPClient
    private let timing: SupervisorTiming
    private let agentEnvironment: [String: String]
    private let logDirectory: String
    private let store: EndpointStore?
    private let onEvent: @Sendable (ServingEvent) -> Void

    private var endpoints: [String: EndpointRecord] = [:]
    private var counters: [BackendKey: BackendCounters] = [:]
    private var slots: [Int: WorkerSlot] = [:]
    private var nextWorkerID = 0

    private let jobs: AsyncStream<Job>
    private let jobsContinuation: AsyncStream<Job>.Continuation

    /// The workers alive, reachable without the actor so that a shutdown can reach them at once.
    private struct Live {
        var shuttingDown = false
        var workers: [Int: ReplicaWorker] = [:]
    }

    private let live = Mutex(Live())

    // MARK: State

    private final class EndpointRecord {
        var spec: EndpointSpec
        var backends: [Int: BackendRecord] = [:]
        init(spec: EndpointSpec) { self.spec = spec }
    }

    private final class BackendRecord {
        enum Phase {
            /// Artifact being verified.
            case verifying
            /// Refused before anything started; the message says why.
            case refused(String)
            case running
        }

        let key: BackendKey
        var spec: BackendSpec
        /// Bumped whenever the processes must be replaced (new definition, retried refusal).
        var generation = 0
        var phase = Phase.verifying
        /// The current processes, index = replica number.
        var workers: [WorkerSlot] = []
        /// Ready processes of the previous definition, serving until the current ones are all ready.
        var retiring: [WorkerSlot] = []
        var restarts = 0
        var lastError: String?

        init(key: BackendKey, spec: BackendSpec) {
            self.key = key
            self.spec = spec
        }

        var readyCount: Int { workers.count { $0.target != nil } }

        var health: BackendHealth {
            if case .refused = phase { return .failing }
            let ready = readyCount
            if case .running = phase, ready >= spec.replicas { return .ready }
            if ready > 0 { return .degraded }
            if workers.contains(where: { $0.failuresSinceReady > 0 }) { return .failing }
            return .starting
        }
    }

    private final class WorkerSlot {
        let worker: ReplicaWorker
        let backend: BackendRecord
        var pid: Int32?
        var target: ReplicaTarget?
        var failuresSinceReady = 0
        var stopping = false

        init(worker: ReplicaWorker, backend: BackendRecord) {
            self.worker = worker
            self.backend = backend
        }
    }

    init(bootID: String, routes: RoutingTable, client: HTTPClient, timing: SupervisorTiming, environment: [String: String],
         logDirectory: String, store: EndpointStore?, onEvent: @escaping @Sendable (ServingEvent) -> Void) {
        self.bootID = bootID
        self.routes = routes
        self.client = client
        self.timing = timing
        self.agentEnvironment = environment
        self.logDirectory = logDirectory
        self.store = store
        self.onEvent = onEvent
        (jobs, jobsContinuation) = AsyncStream.makeStream(of: Job.self)
    }

    // MARK: Running

    /// Runs the workers and verifications until `beginShutdown()`; returns when every process
    /// has been stopped.
    nonisolated func run() async {
        await withDiscardingTaskGroup { group in
            for await job in jobs {
                group.addTask { await job() }
            }
        }
    }

    /// Stops every worker (without draining: the gateway is already closed) and lets `run()`
    /// return once they are done. Idempotent.
    nonisolated func beginShutdown() {
        let workers = live.withLock { live -> [ReplicaWorker] in
            live.shuttingDown = true
            return Array(live.workers.values)
        }
        for worker in workers { worker.requestStop(drain: nil) }
        jobsContinuation.finish()
    }

    nonisolated var isShuttingDown: Bool { live.withLock { $0.shuttingDown } }

    private func submit(_ job: @escaping Job) {
        jobsContinuation.yield(job)
    }

    // MARK: Desired state

    /// Makes `spec` the endpoint's desired state: weights at once, processes asynchronously.
    /// With `persist`, the new set of specs is saved first (a failure changes nothing).
    @discardableResult
    func apply(_ spec: EndpointSpec, persist: Bool = true) throws(ServingAgentError) -> EndpointStatus {
        if persist, let store {
            var all = endpoints.values.map(\.spec).filter { $0.deployment != spec.deployment }
            all.append(spec)
            try store.save(all)
        }
        let record: EndpointRecord
        if let existing = endpoints[spec.deployment] {
            record = existing
        } else {
            record = EndpointRecord(spec: spec)
            endpoints[spec.deployment] = record
        }
        record.spec = spec
        let versions = Set(spec.backends.map(\.version))
        for (version, backend) in record.backends where !versions.contains(version) {
            record.backends[version] = nil
            for slot in backend.workers + backend.retiring { retire(slot) }
            backend.workers = []
            backend.retiring = []
        }
        for b in spec.backends {
            let key = BackendKey(deployment: spec.deployment, version: b.version)
            if counters[key] == nil { counters[key] = BackendCounters() }
            guard let backend = record.backends[b.version] else {
                let backend = BackendRecord(key: key, spec: b)
                record.backends[b.version] = backend
                start(backend)
                continue
            }
            let refused: Bool
            if case .refused = backend.phase { refused = true } else { refused = false }
            if Self.processDefinition(backend.spec) != Self.processDefinition(b) || refused {
                // New processes; the ready old ones serve until the new ones are all ready.
                for slot in backend.workers {
                    if slot.target != nil { backend.retiring.append(slot) } else { retire(slot) }
                }
                backend.workers = []
                backend.spec = b
                backend.lastError = nil
                start(backend)
            } else {
                backend.spec = b
                scale(backend)
            }
        }
        publishRoutes(spec.deployment)
        return status(record)
    }

    /// Removes the endpoint: out of the routes at once, its processes stopped after draining.
    /// False when there is no such endpoint.
    func remove(deployment: String, persist: Bool = true) throws(ServingAgentError) -> Bool {
        guard let record = endpoints[deployment] else { return false }
        if persist, let store {
            try store.save(endpoints.values.map(\.spec).filter { $0.deployment != deployment })
        }
        endpoints[deployment] = nil
        routes.remove(deployment)
        for backend in record.backends.values {
            for slot in backend.workers + backend.retiring { retire(slot) }
            backend.workers = []
            backend.retiring = []
        }
        return true
    }

    func status(deployment: String) -> EndpointStatus? {
        endpoints[deployment].map(status)
    }

    func statuses() -> [EndpointStatus] {
        endpoints.keys.sorted().map { status(endpoints[$0]!) }
    }

    func specs() -> [EndpointSpec] {
        endpoints.keys.sorted().map { endpoints[$0]!.spec }
    }

    private func status(_ record: EndpointRecord) -> EndpointStatus {
        EndpointStatus(deployment: record.spec.deployment, model: record.spec.model, backends: record.spec.backends.map { b in
            let key = BackendKey(deployment: record.spec.deployment, version: b.version)
            let backend = record.backends[b.version]
            return BackendStatus(spec: b, readyReplicas: backend?.readyCount ?? 0, health: backend?.health ?? .starting,
                                 restarts: backend?.restarts ?? 0, lastError: backend?.lastError,
                                 stats: counters[key]?.snapshot ?? BackendStats())
        }, bootID: bootID)
    }

    /// The fields that decide the processes (not weight or replicas).
    private static func processDefinition(_ spec: BackendSpec) -> BackendSpec {
        var s = spec
        s.weight = 0
        s.replicas = 0
        return s
    }

    // MARK: Backends

    /// Verifies a backend (secrets now, the artifact off the actor), then starts its workers.
    private func start(_ backend: BackendRecord) {
        backend.generation += 1
        backend.phase = .verifying
        let generation = backend.generation
        let spec = backend.spec
        let missing = spec.secretEnv.sorted { $0.key < $1.key }.filter { agentEnvironment[$0.value] == nil }
        if let (name, source) = missing.first {
            refuse(backend, "secret variable \(name) comes from \(source), which is not set in the agent's environment; "
                + "set \(source) where `capstan serve` runs and restart the agent. Nothing was started")
            return
        }
        // A value this short cannot be scrubbed from the server's output: refused, not leaked.
        let short = spec.secretEnv.sorted { $0.key < $1.key }.filter { (agentEnvironment[$0.value]?.count ?? 0) < SecretScrubber.minimumLength }
        if let (name, source) = short.first {
            refuse(backend, "secret variable \(name) comes from \(source), whose value is shorter than \(SecretScrubber.minimumLength) "
                + "characters: Capstan could not keep it out of logs and messages. Use a longer secret in \(source) and restart the agent. Nothing was started")
            return
        }
        let key = backend.key
        submit { [weak self] in
            // Nothing to verify for an agent that is stopping (a listener could not be opened).
            guard let self, !self.isShuttingDown else { return }
            let problem = await Self.verifyArtifact(spec)
            await self.verified(key, generation: generation, problem: problem)
        }
    }

    private func verified(_ key: BackendKey, generation: Int, problem: String?) {
        // The spec may have changed while the artifact was read.
        guard let backend = endpoints[key.deployment]?.backends[key.version], backend.generation == generation else { return }
        if let problem {
            refuse(backend, problem)
            return
        }
        backend.phase = .running
        scale(backend)
        publishRoutes(key.deployment)
    }

    private func refuse(_ backend: BackendRecord, _ message: String) {
        backend.phase = .refused(message)
        backend.lastError = message
        onEvent(ServingEvent(kind: .refused, deployment: backend.key.deployment, version: backend.key.version, message: message))
    }

    private static func verifyArtifact(_ spec: BackendSpec) async -> String? {
        await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
            DispatchQueue.global().async {
                let problem: String?
                do throws(ArtifactDigest.Problem) {
                    let actual = try ArtifactDigest.of(spec.modelDir)
                    problem = actual == spec.artifactDigest ? nil
                        : "the artifact at '\(spec.modelDir)' does not match \(spec.artifactDigest) (its contents hash to \(actual)): "
                            + "it was changed after it was registered. Nothing was started; restore the artifact or retrain the version"
                } catch {
                    problem = "the artifact at '\(spec.modelDir)' cannot be verified: \(error.message). It is missing or was changed; nothing was started"
                }
                continuation.resume(returning: problem)
            }
        }
    }

    /// Starts or stops workers until the backend has `replicas`.
    private func scale(_ backend: BackendRecord) {
        guard case .running = backend.phase else { return }
        while backend.workers.count > backend.spec.replicas {
            retire(backend.workers.removeLast())
        }
        while backend.workers.count < backend.spec.replicas {
            guard let slot = makeWorker(backend, replica: backend.workers.count) else { return }
            backend.workers.append(slot)
        }
        if backend.readyCount >= backend.spec.replicas { retireOldGeneration(backend) }
    }

    private func makeWorker(_ backend: BackendRecord, replica: Int) -> WorkerSlot? {
        nextWorkerID += 1
        let spec = backend.spec
        var environment: [String: String] = [:]
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"] {
            if let value = agentEnvironment[name] { environment[name] = value }
        }
        for (name, value) in spec.env { environment[name] = value }
        for (name, source) in spec.secretEnv { environment[name] = agentEnvironment[source] }
        environment["CAPSTAN_MODEL_DIR"] = spec.modelDir
        environment["CAPSTAN_DEPLOYMENT"] = backend.key.deployment
        environment["CAPSTAN_VERSION"] = String(backend.key.version)
        // Lets the next agent stop this server if this agent is killed (LeftoverServers).
        environment[LeftoverServers.marker] = bootID
        let worker = ReplicaWorker(
            id: nextWorkerID, key: backend.key, replica: replica, spec: spec, environment: environment,
            logPath: ServerLogs.path(directory: logDirectory, deployment: backend.key.deployment, version: backend.key.version, replica: replica),
            timing: timing, client: client, supervisor: self)
        let admitted = live.withLock { live -> Bool in
            guard !live.shuttingDown else { return false }
            live.workers[worker.id] = worker
            return true
        }
        guard admitted else { return nil }
        let slot = WorkerSlot(worker: worker, backend: backend)
        slots[worker.id] = slot
        submit { await worker.run() }
        return slot
    }

    /// Takes a worker out of service: out of the routes first (the caller republishes), then
    /// stopped once its requests in flight are done.
    private func retire(_ slot: WorkerSlot) {
        slot.stopping = true
        let drain = slot.target
        slot.target = nil
        let deployment = slot.backend.key.deployment
        publishRoutes(deployment)
        slot.worker.requestStop(drain: drain)
    }

    private func retireOldGeneration(_ backend: BackendRecord) {
        guard !backend.retiring.isEmpty else { return }
        let old = backend.retiring
        backend.retiring = []
        for slot in old { retire(slot) }
    }

    private func publishRoutes(_ deployment: String) {
        guard let record = endpoints[deployment] else {
            routes.remove(deployment)
            return
        }
        var backends: [RouteBackend] = []
        for b in record.spec.backends where b.weight > 0 {
            guard let backend = record.backends[b.version] else { continue }
            let targets = (backend.workers + backend.retiring).compactMap(\.target)
            guard !targets.isEmpty else { continue }
            let key = BackendKey(deployment: deployment, version: b.version)
            backends.append(RouteBackend(version: b.version, weight: b.weight, counters: counters[key] ?? BackendCounters(), replicas: targets))
        }
        routes.set(EndpointRoute(deployment: deployment, backends: backends))
    }

    // MARK: Worker reports

    func workerStarted(_ worker: ReplicaWorker, pid: Int32, port: Int) {
        guard let slot = slots[worker.id] else { return }
        slot.pid = pid
        emit(.started, worker, pid: pid, port: port, message: "pid \(pid) on port \(port): \(worker.commandText)")
    }

    func workerReady(_ worker: ReplicaWorker, pid: Int32, target: ReplicaTarget, after: Duration) {
        guard let slot = slots[worker.id], !slot.stopping else { return }
        slot.target = target
        slot.failuresSinceReady = 0
        emit(.ready, worker, pid: pid, port: target.port, message: "pid \(pid) on port \(target.port), ready after \(after.text)")
        let backend = slot.backend
        if backend.workers.contains(where: { $0 === slot }), backend.readyCount >= backend.spec.replicas {
            retireOldGeneration(backend)
        }
        publishRoutes(worker.key.deployment)
    }

    func workerFailed(_ worker: ReplicaWorker, message: String, delay: Duration) {
        guard let slot = slots[worker.id], !slot.stopping else { return }
        let wasReady = slot.target != nil
        slot.target = nil
        slot.failuresSinceReady += 1
        slot.backend.restarts += 1
        slot.backend.lastError = message
        emit(.crashed, worker, pid: slot.pid, message: message)
        emit(.restarting, worker, delay: delay, message: "restart \(slot.backend.restarts) of this version, in \(delay.text)")
        slot.pid = nil
        if wasReady { publishRoutes(worker.key.deployment) }
    }

    func workerFinished(_ worker: ReplicaWorker, termination: ProcessTermination?, killed: Bool) {
        _ = live.withLock { $0.workers.removeValue(forKey: worker.id) }
        guard let slot = slots.removeValue(forKey: worker.id) else { return }
        if let termination {
            emit(.stopped, worker, pid: slot.pid, message: "pid \(slot.pid.map(String.init) ?? "?") \(termination)\(killed ? " (SIGKILL after \(timing.stopGrace.text))" : "")")
        }
        let backend = slot.backend
        backend.workers.removeAll { $0 === slot }
        backend.retiring.removeAll { $0 === slot }
    }

    private func emit(_ kind: ServingEvent.Kind, _ worker: ReplicaWorker, pid: Int32? = nil, port: Int? = nil, delay: Duration? = nil,
                      message: String) {
        onEvent(ServingEvent(kind: kind, deployment: worker.key.deployment, version: worker.key.version, replica: worker.replica,
                             pid: pid, port: port, delayMilliseconds: delay.map { Int($0.milliseconds) }, message: message))
    }
}
