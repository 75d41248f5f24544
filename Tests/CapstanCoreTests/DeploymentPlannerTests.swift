import CapstanCore
import Testing

/// Golden tests of the deployment planner and the rollout state machine: desired deployments and
/// a serving observation in, one line per entry out (`action id reason`, then the traffic).
struct DeploymentPlannerTests {
    static let now: Int64 = 1_800_000_000_000
    static let second: Int64 = 1000

    static let canary = RolloutStrategy.canary(CanarySpec(
        steps: [CanaryStep(weight: 10, pause: .init(milliseconds: 60_000, text: "1m")),
                CanaryStep(weight: 50, pause: .init(milliseconds: 60_000, text: "1m"))],
        analysis: CanaryAnalysis(interval: .init(milliseconds: 5000, text: "5s"), minRequests: 20, maxErrorRate: 0.05,
                                 maxLatencyP95: .init(milliseconds: 200, text: "200ms"))))

    static func deployment(_ name: String = "churn-prod", target: Int? = 2, strategy: RolloutStrategy = canary, replicas: Int = 1,
                           problem: String? = nil, hash: String = "h1") -> DesiredDeployment {
        let spec = DeploymentSpec(model: "churn", target: .alias("champion"), replicas: replicas, strategy: strategy)
        let manifest = DeploymentManifest(metadata: ObjectMeta(name: name), spec: spec,
                                          origin: ManifestOrigin(file: "deployments/\(name).yaml", documentIndex: 0,
                                                                 location: SourceLocation(file: "deployments/\(name).yaml", line: 1, column: 1)))
        return DesiredDeployment(manifest: manifest, target: target, targetProblem: problem, specHash: hash)
    }

    static func stats(requests: Int64, failures: Int64 = 0, latencyMs: Double = 10) -> BackendStats {
        var h = LatencyHistogram()
        for _ in 0..<requests { h.record(milliseconds: latencyMs) }
        return BackendStats(requests: requests, errors5xx: failures, latency: h)
    }

    static func backend(_ version: Int, _ weight: Int, replicas: Int = 1, health: BackendHealth = .ready, stats: BackendStats = BackendStats(),
                        error: String? = nil) -> BackendStatus {
        BackendStatus(spec: BackendSpec(version: version, weight: weight, replicas: replicas, command: ["python3", "serve.py"],
                                        workdir: "/w", modelDir: "/m", artifactDigest: "sha256:x"),
                      readyReplicas: health == .ready ? replicas : 0, health: health, lastError: error, stats: stats)
    }

    static func endpoint(_ backends: [BackendStatus], boot: String = "boot-1", name: String = "churn-prod") -> EndpointStatus {
        EndpointStatus(deployment: name, model: "churn", backends: backends, bootID: boot)
    }

    static func rollout(from: Int? = 1, to: Int = 2, phase: RolloutPhase = .stepping, step: Int = 0, startedAgo: Int64 = 10,
                        baseline: BackendStats? = BackendStats(), boot: String? = "boot-1", hash: String = "h1") -> RolloutState {
        RolloutState(deployment: "churn-prod", model: "churn", from: from, to: to, phase: phase, step: step,
                     stepStartedAt: now - startedAgo * second, baseline: baseline, baselineBoot: boot, startedAt: now - 600 * second,
                     specHash: hash)
    }

    static func plan(_ deployments: [DesiredDeployment], _ endpoints: [EndpointStatus]?, rollouts: [RolloutState] = [],
                     applied: [String: [BackendWeight]]? = nil, quarantine: [Quarantine] = [], policy: Policy = Policy()) -> [PlanEntry] {
        var appliedWeights = applied ?? [:]
        if applied == nil, let endpoints {
            for e in endpoints {
                appliedWeights[e.deployment] = e.backends.map { BackendWeight(version: $0.spec.version, weight: $0.spec.weight, replicas: $0.spec.replicas) }
            }
        }
        let observation = ServingObservation(
            endpoints: endpoints.map { Dictionary(uniqueKeysWithValues: $0.map { ($0.deployment, $0) }) },
            unavailable: endpoints == nil ? "the serving agent at http://127.0.0.1:7070 cannot be reached" : nil,
            applied: appliedWeights, rollouts: Dictionary(uniqueKeysWithValues: rollouts.map { ($0.deployment, $0) }),
            quarantine: quarantine)
        return DeploymentPlanner.plan(deployments, serving: observation, policy: policy, now: now)
    }

    static func lines(_ entries: [PlanEntry]) -> [String] {
        entries.map { e in
            guard case .deployment(let d) = e.detail else { return "\(e.action.rawValue) \(e.id) \(e.reason)" }
            let traffic = d.backends.map { " | " + $0.map { "v\($0.version)=\($0.weight)x\($0.replicas)" }.joined(separator: ",") } ?? ""
            return "\(e.action.rawValue) \(e.id) \(e.reason)\(traffic)"
        }
    }

    static func rolloutOf(_ entries: [PlanEntry]) -> RolloutState? {
        guard case .deployment(let d)? = entries.first?.detail else { return nil }
        return d.rollout
    }

    // MARK: Endpoints

    @Test func aNewDeploymentCreatesItsEndpointAtTheTarget() {
        #expect(Self.lines(Self.plan([Self.deployment(replicas: 2)], [])) == [
            "create-endpoint churn-prod/create a new endpoint serving v2 of churn with 2 replicas | v2=100x2",
        ])
    }

    @Test func anEndpointServingTheTargetIsLeftAlone() {
        #expect(Self.plan([Self.deployment()], [Self.endpoint([Self.backend(2, 100)])]).isEmpty)
    }

    @Test func replicasAreScaled() {
        #expect(Self.lines(Self.plan([Self.deployment(replicas: 3)], [Self.endpoint([Self.backend(2, 100)])])) == [
            "scale churn-prod/scale replicas 1 → 3 | v2=100x3",
        ])
    }

    @Test func anUnreachableServingLayerTouchesNothing() {
        let entries = Self.plan([Self.deployment()], nil)
        #expect(Self.lines(entries) == [
            "serving-unavailable churn-prod/serving the serving agent at http://127.0.0.1:7070 cannot be reached; what serves now is left as it is",
        ])
        #expect(!entries[0].action.isChange)
    }

    @Test func aDeploymentWithoutAValidatedTargetIsBlocked() {
        let entries = Self.plan([Self.deployment(target: nil, problem: "alias champion of model churn is v3, which is rejected; deployments serve only validated versions")],
                                [Self.endpoint([Self.backend(2, 100)])])
        #expect(Self.lines(entries) == [
            "blocked churn-prod/blocked alias champion of model churn is v3, which is rejected; deployments serve only validated versions; v2 keeps serving",
        ])
    }

    @Test func orphanedEndpointsAreRetiredOnlyWithPrune() {
        let stray = Self.endpoint([Self.backend(4, 100)], name: "old-api")
        #expect(Self.lines(Self.plan([], [stray])) == [
            "orphaned old-api/orphaned no longer in Git; the endpoint (v4 100%) keeps serving because policy.prune is false",
        ])
        #expect(Self.lines(Self.plan([], [stray], policy: Policy(prune: true))) == [
            "retire-endpoint old-api/retire no longer in Git and policy.prune is true: the endpoint (v4 100%) is removed",
        ])
    }

    @Test(arguments: [
        (DriftPolicy.revert, "revert-drift churn-prod/drift the endpoint was changed outside Capstan (now v1 50% ×1, v2 50% ×1; Capstan set v2 100% ×1); policy.drift is revert | v2=100x1"),
        (.adopt, "adopt-drift churn-prod/drift the endpoint was changed outside Capstan (now v1 50% ×1, v2 50% ×1; Capstan set v2 100% ×1); policy.drift is adopt: Capstan takes the endpoint as it is and stops any rollout | v1=50x1,v2=50x1"),
        (.alert, "drift churn-prod/drift the endpoint was changed outside Capstan (now v1 50% ×1, v2 50% ×1; Capstan set v2 100% ×1); policy.drift is alert: reported only"),
    ])
    func driftFollowsThePolicy(_ drift: DriftPolicy, _ line: String) {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 50), Self.backend(2, 50)])],
                                applied: ["churn-prod": [BackendWeight(version: 2, weight: 100, replicas: 1)]],
                                policy: Policy(drift: drift))
        #expect(Self.lines(entries) == [line])
        #expect(entries[0].action.isChange == (drift != .alert))
    }

    // MARK: Rollouts

    @Test func aNewTargetStartsARolloutWithNoTrafficUntilReady() {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 100)])])
        #expect(Self.lines(entries) == [
            "start-rollout churn-prod/rollout serves v1; the spec asks for v2; canary (2 steps): v2 starts with no traffic until it is ready | v1=100x1,v2=0x1",
        ])
        #expect(Self.rolloutOf(entries)?.phase == .starting)
        #expect(Self.rolloutOf(entries)?.from == 1)
    }

    @Test func aStartingVersionIsWaitedForThenGetsTheFirstStep() {
        let starting = Self.rollout(phase: .starting, baseline: nil, boot: nil)
        let waiting = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 100), Self.backend(2, 0, health: .starting)])], rollouts: [starting])
        #expect(Self.lines(waiting) == ["wait churn-prod/rollout waiting for v2 to become ready (0/1 replicas)"])

        let ready = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 100), Self.backend(2, 0, stats: Self.stats(requests: 3))])],
                              rollouts: [starting])
        #expect(Self.lines(ready) == [
            "advance-rollout churn-prod/rollout v2 is ready: step 1/2 sends 10% to v2 for 1m | v1=90x1,v2=10x1",
        ])
        let state = Self.rolloutOf(ready)
        #expect(state?.phase == .stepping)
        #expect(state?.stepStartedAt == Self.now)
        #expect(state?.baseline?.requests == 3)
        #expect(state?.baselineBoot == "boot-1")
    }

    @Test func replaceSwitchesAllTrafficOnceReady() {
        let starting = Self.rollout(phase: .starting, baseline: nil, boot: nil)
        let entries = Self.plan([Self.deployment(strategy: .replace)], [Self.endpoint([Self.backend(1, 100), Self.backend(2, 0)])], rollouts: [starting])
        #expect(Self.lines(entries) == ["promote churn-prod/rollout v2 is ready: it takes all traffic and v1 is stopped | v2=100x1"])
        #expect(Self.rolloutOf(entries) == nil)
    }

    @Test func aStepPausesThenWaitsForEnoughTrafficThenAdvances() {
        let endpoint = { (requests: Int64) in Self.endpoint([Self.backend(1, 90), Self.backend(2, 10, stats: Self.stats(requests: requests))]) }
        let paused = Self.plan([Self.deployment()], [endpoint(12)], rollouts: [Self.rollout(startedAgo: 20)])
        #expect(Self.lines(paused) == [
            "wait churn-prod/rollout step 1/2: v2 at 10%, pausing 1m (40s left); analysis so far: 12 requests, 0% errors, p95 ≤11.369ms",
        ])
        let quiet = Self.plan([Self.deployment()], [endpoint(12)], rollouts: [Self.rollout(startedAgo: 61)])
        #expect(Self.lines(quiet) == [
            "wait churn-prod/rollout step 1/2: the pause is over but v2 has served 12 of the 20 requests the analysis needs; waiting for traffic",
        ])
        let next = Self.plan([Self.deployment()], [endpoint(30)], rollouts: [Self.rollout(startedAgo: 61)])
        #expect(Self.lines(next) == [
            "advance-rollout churn-prod/rollout step 1/2 passed (30 requests, 0% errors, p95 ≤11.369ms): step 2/2 sends 50% to v2 for 1m | v1=50x1,v2=50x1",
        ])
        #expect(Self.rolloutOf(next)?.step == 1)
        #expect(Self.rolloutOf(next)?.baseline?.requests == 30)
    }

    @Test func theLastStepPromotes() {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 50), Self.backend(2, 50, stats: Self.stats(requests: 40))])],
                                rollouts: [Self.rollout(step: 1, startedAgo: 61)])
        #expect(Self.lines(entries) == [
            "promote churn-prod/rollout the last step passed (40 requests, 0% errors, p95 ≤11.369ms): v2 takes all traffic and v1 is stopped | v2=100x1",
        ])
        #expect(Self.rolloutOf(entries) == nil)
    }

    @Test func aFailingAnalysisRollsBackAndQuarantines() {
        let errors = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10, stats: Self.stats(requests: 40, failures: 10))])],
                               rollouts: [Self.rollout(startedAgo: 5)])
        #expect(Self.lines(errors) == [
            "rollback churn-prod/rollout step 1/2 failed its analysis: error rate 25% over 40 requests is above the 5% allowed; v2 is rolled back and quarantined for churn-prod, and all traffic returns to v1 | v1=100x1",
        ])
        guard case .deployment(let d) = errors[0].detail else { Issue.record("no detail"); return }
        #expect(d.quarantine?.version == 2)
        #expect(d.quarantine?.specHash == "h1")
        #expect(d.rollout == nil)

        let slow = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10, stats: Self.stats(requests: 40, latencyMs: 900))])],
                             rollouts: [Self.rollout(startedAgo: 5)])
        #expect(Self.lines(slow).first?.hasPrefix("rollback churn-prod/rollout step 1/2 failed its analysis: p95 latency 986.076ms is above the 200ms allowed") == true)
    }

    @Test func errorsBelowMinRequestsDoNotFailTheStepYet() {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10, stats: Self.stats(requests: 5, failures: 5))])],
                                rollouts: [Self.rollout(startedAgo: 5)])
        #expect(entries.first?.action == .wait)
    }

    @Test func aCrashingCanaryIsRolledBack() {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 100), Self.backend(2, 0, health: .failing, error: "exited with status 1 (3 restarts)")])],
                                rollouts: [Self.rollout(phase: .starting, baseline: nil, boot: nil)])
        #expect(Self.lines(entries) == [
            "rollback churn-prod/rollout v2 is failing (exited with status 1 (3 restarts)); v2 is rolled back and quarantined for churn-prod, and all traffic returns to v1 | v1=100x1",
        ])
    }

    @Test func aQuarantinedVersionIsNotRolledOutAgainUntilTheSpecChanges() {
        let q = Quarantine(deployment: "churn-prod", version: 2, specHash: "h1", reason: "error rate 25%", at: Self.now - 1000)
        let blocked = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 100)])], quarantine: [q])
        #expect(Self.lines(blocked) == [
            "blocked churn-prod/blocked v2 was rolled back from churn-prod (error rate 25%); automation does not roll it out again until the Deployment's spec changes in Git or the target moves to another version",
        ])
        let changed = Self.plan([Self.deployment(hash: "h2")], [Self.endpoint([Self.backend(1, 100)])], quarantine: [q])
        #expect(changed.first?.action == .startRollout)
    }

    @Test func anAgentRestartRebaselinesTheAnalysis() {
        let entries = Self.plan([Self.deployment()], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10, stats: Self.stats(requests: 2))], boot: "boot-2")],
                                rollouts: [Self.rollout(startedAgo: 30, baseline: Self.stats(requests: 50))])
        #expect(Self.lines(entries) == [
            "advance-rollout churn-prod/rollout the serving agent restarted: the analysis of step 1/2 starts again from its new counters",
        ])
        #expect(Self.rolloutOf(entries)?.baselineBoot == "boot-2")
        #expect(Self.rolloutOf(entries)?.baseline?.requests == 2)
    }

    @Test func aTargetChangeMidRolloutRestartsTowardTheNewTarget() {
        let entries = Self.plan([Self.deployment(target: 3)], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10)])], rollouts: [Self.rollout()])
        #expect(Self.lines(entries) == [
            "start-rollout churn-prod/rollout the target changed from v2 to v3 mid-rollout: the rollout of v2 is aborted and a new one starts from v1 to v3; canary (2 steps): v3 starts with no traffic until it is ready | v1=100x1,v3=0x1",
        ])
        let back = Self.plan([Self.deployment(target: 1)], [Self.endpoint([Self.backend(1, 90), Self.backend(2, 10)])], rollouts: [Self.rollout()])
        #expect(Self.lines(back) == [
            "abort-rollout churn-prod/rollout the target changed from v2 to v1: the rollout of v2 is aborted and v1 keeps all traffic | v1=100x1",
        ])
    }

    @Test func analysisJudgesErrorsAndLatencyOnTheWindow() {
        let analysis = CanaryAnalysis(minRequests: 10, maxErrorRate: 0.1, maxLatencyP95: .init(milliseconds: 100, text: "100ms"))
        let before = Self.stats(requests: 100, failures: 50)
        var after = before
        after.requests += 20
        after.errors5xx += 1
        for _ in 0..<20 { after.latency.record(milliseconds: 5) }
        let window = after.since(before)
        #expect(window.requests == 20)
        #expect(AnalysisResult.judge(window, analysis).failure == nil)
        #expect(AnalysisResult.judge(before, analysis).failure?.hasPrefix("error rate 50%") == true)
        var histogram = LatencyHistogram()
        for ms in [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 1000] { histogram.record(milliseconds: ms) }
        #expect(histogram.quantile(0.5)! <= 6)
        #expect(histogram.quantile(0.95)! >= 1000)
    }

    // MARK: Deployments planned against the registry as the plan's model entries leave it

    /// What `capstan plan` does: the model plan, the registry projected after it, the Deployments
    /// resolved against the projection.
    static func planAfterModels(_ model: DesiredModel, _ actual: ActualState, _ endpoints: [EndpointStatus]) -> (Plan, [PlanEntry]) {
        let desired = DesiredState(repository: "repo", ref: "main", commit: "c0ffee", models: [model], policy: Policy())
        let plan = Planner.plan(desired: desired, actual: actual, now: now)
        let projection = RegistryProjection.after(plan, from: actual.registry)
        let d = DesiredDeployment.resolve(deployment(strategy: .replace).manifest, projection: projection, specHash: "h1")
        return (plan, Self.plan([d], endpoints))
    }

    @Test func aPromotionInThePlanStartsTheRolloutItWillTrigger() {
        let model = PlannerTests.model(fingerprint: "fp-2", aliases: [AliasPin(name: "champion", target: .version(2))])
        let actual = PlannerTests.registry([PlannerTests.version(1, .validated), PlannerTests.version(2, .validated)], aliases: ["champion": 1])
        let (plan, entries) = Self.planAfterModels(model, actual, [Self.endpoint([Self.backend(1, 100)])])
        #expect(plan.entries.map(\.id) == ["churn/alias/champion"])
        #expect(Self.lines(entries) == [
            "start-rollout churn-prod/rollout serves v1; the spec asks for v2; replace: v2 starts with no traffic until it is ready | v1=100x1,v2=0x1",
        ])
        #expect(entries.first?.dependsOn == ["churn/alias/champion"])
        // Against the registry as it is (what the plan showed before), nothing would happen.
        let before = DesiredDeployment.resolve(Self.deployment(strategy: .replace).manifest, registry: actual.registry, specHash: "h1")
        #expect(Self.plan([before], [Self.endpoint([Self.backend(1, 100)])]).isEmpty)
    }

    @Test func anAliasMovingToTheVersionATrainProducesIsFollowed() {
        let model = PlannerTests.model(fingerprint: "fp-new", aliases: [AliasPin(name: "champion", target: .latest)])
        let actual = PlannerTests.registry([PlannerTests.version(1, .validated)], aliases: ["champion": 1])
        let (_, entries) = Self.planAfterModels(model, actual, [Self.endpoint([Self.backend(1, 100)])])
        #expect(Self.lines(entries) == [
            "start-rollout churn-prod/rollout alias champion of model churn moves to the version this plan trains; once it passes its gates, the same apply rolls it out (replace); v1 serves until then",
        ])
        #expect(entries.first?.dependsOn == ["churn/alias/champion"])
        guard case .deployment(let d)? = entries.first?.detail else { Issue.record("no deployment entry"); return }
        #expect(d.from == 1 && d.to == nil)
    }
}
