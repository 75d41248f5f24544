/// Plans the Deployments: `(desired deployments, serving observation, policy, now) → entries`.
/// Pure and deterministic, like `Planner`. Rollouts are state machines: each call looks at the
/// persisted rollout state and the live stats and decides the next move — start, wait out a
/// pause, advance a step, promote, roll back — so a pass from cron moves a canary one step once
/// its pause has elapsed.
public enum DeploymentPlanner {
    public static func plan(_ deployments: [DesiredDeployment], serving: ServingObservation, policy: Policy,
                            now: Int64) -> [PlanEntry] {
        var entries: [PlanEntry] = []
        let sorted = deployments.sorted { $0.name < $1.name }
        guard let endpoints = serving.endpoints else {
            let why = serving.unavailable ?? "the serving layer cannot be reached"
            for d in sorted {
                entries.append(PlanEntry(
                    id: "\(d.name)/serving", action: .servingUnavailable, kind: .deployment, name: d.name,
                    reason: "\(why); what serves now is left as it is",
                    detail: .deployment(DeploymentDetail(model: d.spec.model, from: nil, to: d.target, backends: nil, rollout: nil))))
            }
            return entries
        }
        for d in sorted {
            let step = DeploymentStep(desired: d, endpoint: endpoints[d.name], serving: serving, policy: policy, now: now)
            var planned = step.plan()
            let drift: Set<PlanAction> = [.drift, .revertDrift, .adoptDrift]
            if let move = d.pendingMove, !planned.contains(where: { drift.contains($0.action) }) {
                planned = [step.followingProducedVersion(move)]
            }
            if let after = d.after {
                for i in planned.indices where planned[i].action.isChange && !planned[i].dependsOn.contains(after) {
                    planned[i].dependsOn.append(after)
                }
            }
            entries += planned
        }
        let wanted = Set(sorted.map(\.name))
        for (name, endpoint) in endpoints.sorted(by: { $0.key < $1.key }) where !wanted.contains(name) {
            let versions = endpoint.backends.map { "v\($0.spec.version) \($0.spec.weight)%" }.joined(separator: ", ")
            if policy.prune {
                entries.append(PlanEntry(
                    id: "\(name)/retire", action: .retireEndpoint, kind: .deployment, name: name,
                    reason: "no longer in Git and policy.prune is true: the endpoint (\(versions)) is removed",
                    detail: .deployment(DeploymentDetail(model: endpoint.model, from: heaviest(endpoint), to: nil, backends: nil, rollout: nil))))
            } else {
                entries.append(PlanEntry(
                    id: "\(name)/orphaned", action: .orphaned, kind: .deployment, name: name,
                    reason: "no longer in Git; the endpoint (\(versions)) keeps serving because policy.prune is false",
                    detail: .deployment(DeploymentDetail(model: endpoint.model, from: heaviest(endpoint), to: nil, backends: nil, rollout: nil))))
            }
        }
        return entries
    }

    /// The version with the most traffic (the higher number on a tie).
    static func heaviest(_ endpoint: EndpointStatus) -> Int? {
        endpoint.backends.max { ($0.spec.weight, $0.spec.version) < ($1.spec.weight, $1.spec.version) }?.spec.version
    }

    /// The endpoint's backends as weights.
    public static func weights(_ endpoint: EndpointStatus) -> [BackendWeight] {
        endpoint.backends.map { BackendWeight(version: $0.spec.version, weight: $0.spec.weight, replicas: $0.spec.replicas) }
            .sorted { $0.version < $1.version }
    }
}

private struct DeploymentStep {
    let desired: DesiredDeployment
    let endpoint: EndpointStatus?
    let serving: ServingObservation
    let policy: Policy
    let now: Int64

    var name: String { desired.name }
    var model: String { desired.spec.model }
    var replicas: Int { desired.spec.replicas }

    func entry(_ suffix: String, _ action: PlanAction, _ reason: String, from: Int?, to: Int?, backends: [BackendWeight]?,
               rollout: RolloutState?, quarantine: Quarantine? = nil, analysis: AnalysisResult? = nil, progress: String? = nil) -> PlanEntry {
        PlanEntry(id: "\(name)/\(suffix)", action: action, kind: .deployment, name: name, reason: reason,
                  detail: .deployment(DeploymentDetail(model: model, from: from, to: to,
                                                       backends: backends.map { $0.sorted { $0.version < $1.version } },
                                                       rollout: rollout, quarantine: quarantine, analysis: analysis, progress: progress)))
    }

    func plan() -> [PlanEntry] {
        let rollout = serving.rollouts[name]
        let current = endpoint.flatMap(DeploymentPlanner.heaviest)
        guard let target = desired.target else {
            return [entry("blocked", .blocked, "\(desired.targetProblem ?? "no version to serve"); \(current.map { "v\($0) keeps serving" } ?? "nothing is served yet")",
                          from: current, to: nil, backends: nil, rollout: rollout)]
        }
        if let q = serving.quarantine.last(where: { $0.deployment == name && $0.version == target && $0.specHash == desired.specHash }),
           rollout?.to != target {
            return [entry("blocked", .blocked,
                          "v\(target) was rolled back from \(name) (\(q.reason)); automation does not roll it out again until the Deployment's spec changes in Git or the target moves to another version",
                          from: current, to: target, backends: nil, rollout: nil)]
        }
        guard let endpoint else {
            return [entry("create", .createEndpoint, "a new endpoint serving v\(target) of \(model) with \(replicas) replica\(replicas == 1 ? "" : "s")",
                          from: nil, to: target, backends: [BackendWeight(version: target, weight: 100, replicas: replicas)], rollout: nil)]
        }
        let actual = DeploymentPlanner.weights(endpoint)
        if let applied = serving.applied[name], actual != applied.sorted(by: { $0.version < $1.version }) {
            let seen = actual.map { "v\($0.version) \($0.weight)% ×\($0.replicas)" }.joined(separator: ", ")
            let want = applied.map { "v\($0.version) \($0.weight)% ×\($0.replicas)" }.joined(separator: ", ")
            switch policy.drift {
            case .revert:
                return [entry("drift", .revertDrift, "the endpoint was changed outside Capstan (now \(seen); Capstan set \(want)); policy.drift is revert",
                              from: current, to: target, backends: applied, rollout: rollout)]
            case .adopt:
                return [entry("drift", .adoptDrift, "the endpoint was changed outside Capstan (now \(seen); Capstan set \(want)); policy.drift is adopt: Capstan takes the endpoint as it is and stops any rollout",
                              from: current, to: target, backends: actual, rollout: nil)]
            case .alert:
                return [entry("drift", .drift, "the endpoint was changed outside Capstan (now \(seen); Capstan set \(want)); policy.drift is alert: reported only",
                              from: current, to: target, backends: nil, rollout: rollout)]
            }
        }
        if let rollout {
            if rollout.to != target || rollout.specHash != desired.specHash {
                let why = rollout.to != target ? "the target changed from v\(rollout.to) to v\(target)" : "the Deployment's spec changed"
                let stable = rollout.from ?? current ?? target
                if stable == target {
                    return [entry("rollout", .abortRollout, "\(why): the rollout of v\(rollout.to) is aborted and v\(target) keeps all traffic",
                                  from: current, to: target, backends: [BackendWeight(version: target, weight: 100, replicas: replicas)], rollout: nil)]
                }
                return [start(from: stable, to: target, reason: "\(why) mid-rollout: the rollout of v\(rollout.to) is aborted and a new one starts from v\(stable) to v\(target)")]
            }
            return advance(rollout)
        }
        if actual == [BackendWeight(version: target, weight: 100, replicas: replicas)] { return [] }
        if let current, current == target, actual.count == 1 {
            return [entry("scale", .scale, "replicas \(actual[0].replicas) → \(replicas)", from: current, to: target,
                          backends: [BackendWeight(version: target, weight: 100, replicas: replicas)], rollout: nil)]
        }
        if let current, current != target {
            return [start(from: current, to: target, reason: "serves v\(current); the spec asks for v\(target)")]
        }
        // The target already has the most traffic but others linger (an interrupted promotion).
        return [entry("promote", .promote, "v\(target) takes all traffic; other versions are stopped", from: current, to: target,
                      backends: [BackendWeight(version: target, weight: 100, replicas: replicas)], rollout: nil)]
    }

    /// The Deployment follows an alias that this plan moves to the version one of its trains
    /// produces: the apply that trains it rolls it out once it passes its gates.
    func followingProducedVersion(_ move: String) -> PlanEntry {
        let current = endpoint.flatMap(DeploymentPlanner.heaviest)
        // (Only a Deployment that follows an alias gets a pending move.)
        let alias: String
        if case .alias(let name)? = desired.spec.target { alias = "alias \(name)" } else { alias = "the alias it follows" }
        let then = endpoint == nil ? "the same apply creates the endpoint serving it" : "the same apply rolls it out (\(strategyName))"
        var e = entry(endpoint == nil ? "create" : "rollout", endpoint == nil ? .createEndpoint : .startRollout,
                      "\(alias) of model \(model) moves to the version this plan trains; once it passes its gates, \(then)"
                          + (current.map { "; v\($0) serves until then" } ?? ""),
                      from: current, to: nil, backends: nil, rollout: nil)
        e.dependsOn = [move]
        return e
    }

    var strategyName: String {
        if case .canary(let c) = desired.spec.strategy { return "canary (\(c.steps.count) step\(c.steps.count == 1 ? "" : "s"))" }
        return "replace"
    }

    func start(from: Int, to: Int, reason: String) -> PlanEntry {
        let state = RolloutState(deployment: name, model: model, from: from, to: to, phase: .starting, step: 0, stepStartedAt: now,
                                 startedAt: now, specHash: desired.specHash)
        return entry("rollout", .startRollout, "\(reason); \(strategyName): v\(to) starts with no traffic until it is ready",
                     from: from, to: to,
                     backends: [BackendWeight(version: from, weight: 100, replicas: replicas), BackendWeight(version: to, weight: 0, replicas: replicas)],
                     rollout: state, progress: "starting")
    }

    func rollback(_ r: RolloutState, _ why: String, analysis: AnalysisResult? = nil) -> PlanEntry {
        let stable = r.from.map { [BackendWeight(version: $0, weight: 100, replicas: replicas)] } ?? []
        let q = Quarantine(deployment: name, version: r.to, specHash: desired.specHash, reason: why, at: now)
        return entry("rollout", .rollback,
                     "\(why); v\(r.to) is rolled back and quarantined for \(name)\(r.from.map { ", and all traffic returns to v\($0)" } ?? "")",
                     from: r.from, to: r.to, backends: stable, rollout: nil, quarantine: q, analysis: analysis, progress: "rolled back")
    }

    func advance(_ r: RolloutState) -> [PlanEntry] {
        let canary = endpoint?.backend(version: r.to)
        let stableReplicas = replicas
        if let canary, canary.health == .failing {
            return [rollback(r, "v\(r.to) is failing (\(canary.lastError ?? "its processes do not stay up"))")]
        }
        switch r.phase {
        case .starting:
            guard let canary else {
                return [start(from: r.from ?? r.to, to: r.to, reason: "the new version's backend is missing from the endpoint; setting it again")]
            }
            guard canary.health == .ready else {
                return [entry("rollout", .wait, "waiting for v\(r.to) to become ready (\(canary.readyReplicas)/\(canary.spec.replicas) replicas)",
                              from: r.from, to: r.to, backends: nil, rollout: r, progress: "starting")]
            }
            switch desired.spec.strategy {
            case .replace:
                return [entry("rollout", .promote, "v\(r.to) is ready: it takes all traffic and v\(r.from.map(String.init) ?? "-") is stopped",
                              from: r.from, to: r.to, backends: [BackendWeight(version: r.to, weight: 100, replicas: stableReplicas)],
                              rollout: nil, progress: "promoted")]
            case .canary(let c):
                return [stepTo(0, r, c, canary, reason: "v\(r.to) is ready")]
            }
        case .stepping:
            guard case .canary(let c) = desired.spec.strategy, r.step < c.steps.count else {
                // The strategy changed under a running rollout: the spec hash differs, handled above.
                return [entry("rollout", .promote, "v\(r.to) takes all traffic", from: r.from, to: r.to,
                              backends: [BackendWeight(version: r.to, weight: 100, replicas: stableReplicas)], rollout: nil)]
            }
            guard let canary else {
                return [stepTo(r.step, r, c, nil, reason: "the canary backend is missing from the endpoint; restoring the step")]
            }
            let total = c.steps.count
            let step = c.steps[r.step]
            if r.baselineBoot != endpoint?.bootID {
                var rebased = r
                rebased.baseline = canary.stats
                rebased.baselineBoot = endpoint?.bootID
                return [entry("rollout", .advanceRollout,
                              "the serving agent restarted: the analysis of step \(r.step + 1)/\(total) starts again from its new counters",
                              from: r.from, to: r.to, backends: nil, rollout: rebased, progress: "step \(r.step + 1)/\(total)")]
            }
            let window = canary.stats.since(r.baseline ?? BackendStats())
            let result = AnalysisResult.judge(window, c.analysis)
            if let failure = result.failure {
                return [rollback(r, "step \(r.step + 1)/\(total) failed its analysis: \(failure)", analysis: result)]
            }
            let elapsed = now - r.stepStartedAt
            if elapsed < step.pause.milliseconds {
                return [entry("rollout", .wait,
                              "step \(r.step + 1)/\(total): v\(r.to) at \(step.weight)%, pausing \(step.pause) (\(ManifestDuration.format(step.pause.milliseconds - elapsed)) left); analysis so far: \(result.summary)",
                              from: r.from, to: r.to, backends: nil, rollout: r, analysis: result, progress: "step \(r.step + 1)/\(total)")]
            }
            if window.requests < Int64(c.analysis.minRequests) {
                return [entry("rollout", .wait,
                              "step \(r.step + 1)/\(total): the pause is over but v\(r.to) has served \(window.requests) of the \(c.analysis.minRequests) requests the analysis needs; waiting for traffic",
                              from: r.from, to: r.to, backends: nil, rollout: r, analysis: result, progress: "step \(r.step + 1)/\(total)")]
            }
            if r.step + 1 < total {
                return [stepTo(r.step + 1, r, c, canary, reason: "step \(r.step + 1)/\(total) passed (\(result.summary))", analysis: result)]
            }
            return [entry("rollout", .promote,
                          "the last step passed (\(result.summary)): v\(r.to) takes all traffic and v\(r.from.map(String.init) ?? "-") is stopped",
                          from: r.from, to: r.to, backends: [BackendWeight(version: r.to, weight: 100, replicas: stableReplicas)],
                          rollout: nil, analysis: result, progress: "promoted")]
        }
    }

    func stepTo(_ index: Int, _ r: RolloutState, _ c: CanarySpec, _ canary: BackendStatus?, reason: String,
                analysis: AnalysisResult? = nil) -> PlanEntry {
        let weight = min(max(c.steps[index].weight, 0), 100)
        var next = r
        next.phase = .stepping
        next.step = index
        next.stepStartedAt = now
        next.baseline = canary?.stats
        next.baselineBoot = canary == nil ? nil : endpoint?.bootID
        var backends = [BackendWeight(version: r.to, weight: weight, replicas: replicas)]
        if let from = r.from { backends.append(BackendWeight(version: from, weight: 100 - weight, replicas: replicas)) }
        return entry("rollout", .advanceRollout,
                     "\(reason): step \(index + 1)/\(c.steps.count) sends \(weight)% to v\(r.to) for \(c.steps[index].pause)",
                     from: r.from, to: r.to, backends: backends, rollout: next, analysis: analysis,
                     progress: "step \(index + 1)/\(c.steps.count)")
    }
}
