import Foundation
import Prometheus
import Synchronization

/// The controller's Prometheus metrics (`GET /metrics`), documented in docs/controller.md.
///
/// Every series is created on first use and kept; a series whose label set stops being true (the
/// last applied commit, a deployment's rollout phase) is removed, so that a scrape never shows
/// two commits or two phases at once.
public final class ControllerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()

    private let passDuration: DurationHistogram
    private let lastPassTimestamp: Gauge
    private let planChanges: Gauge
    private let planWaiting: Gauge
    private let fetchErrors: Counter

    private struct Labelled {
        var commit: (String, Gauge)?
        /// deployment → (phase, gauge) of `capstan_rollout_phase`.
        var phases: [String: (String, Gauge)] = [:]
        var weights: [String: Gauge] = [:]
        var steps: [String: Gauge] = [:]
    }

    private let labelled = Mutex(Labelled())

    public init() {
        passDuration = registry.makeDurationHistogram(
            descriptor: Self.name("pass_duration", "seconds", "How long reconcile passes took, from the fetch to the report."),
            buckets: [.milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5),
                      .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300), .seconds(900), .seconds(3600)])
        lastPassTimestamp = registry.makeGauge(descriptor: Self.name("last_pass_timestamp", "seconds", "When the last pass finished (Unix time)."))
        planChanges = registry.makeGauge(descriptor: Self.name("plan_changes", "", "Changes in the last pass's plan (registry and deployments)."))
        planWaiting = registry.makeGauge(descriptor: Self.name("plan_waiting", "", "Entries of the last pass's plan that wait or are blocked."))
        fetchErrors = registry.makeCounter(descriptor: Self.name("source_fetch_errors", "total", "Fetches of the Git source that failed."))
        // Series that exist from the start, so that rate() works from the first scrape.
        for outcome in ["converged", "progressing", "failed"] {
            _ = registry.makeCounter(descriptor: Self.name("passes", "total", "Reconcile passes by outcome (converged, progressing, failed)."), labels: [("outcome", outcome)])
        }
        for result in ["accepted", "rejected"] {
            _ = registry.makeCounter(descriptor: Self.name("webhooks", "total", "Git webhooks received: accepted (signature valid) or rejected."), labels: [("result", result)])
        }
    }

    /// One pass ended: its outcome, duration and plan size.
    public func recordPass(outcome: String, duration: Duration, changes: Int, waiting: Int, finishedAt: Date = Date()) {
        registry.makeCounter(descriptor: Self.name("passes", "total", "Reconcile passes by outcome (converged, progressing, failed)."), labels: [("outcome", outcome)]).increment()
        passDuration.record(duration)
        planChanges.set(to: Double(changes))
        planWaiting.set(to: Double(waiting))
        lastPassTimestamp.set(to: finishedAt.timeIntervalSince1970)
    }

    /// One step of a pass ended (`kind` is the plan action: train, validate, move-alias, promote…;
    /// `result` done, failed or skipped).
    public func recordStep(kind: String, result: String) {
        registry.makeCounter(descriptor: Self.name("steps", "total", "Plan steps executed, by kind and result (done, failed, skipped)."), labels: [("kind", kind), ("result", result)]).increment()
    }

    /// A failure with its class and reason (`scope` step: a plan entry of kind `kind` failed;
    /// pass: the pass could not run at all), so that alerts can tell a transient failure from one
    /// that needs a commit.
    public func recordFailure(scope: String, kind: String, failureClass: String, reason: String) {
        registry.makeCounter(descriptor: Self.name("failures", "total", "Failures by scope (step, pass), kind, class (stalled, waiting, transient, terminal) and reason."),
                             labels: [("scope", scope), ("kind", kind), ("class", failureClass), ("reason", reason)]).increment()
    }

    public func recordFetchError() {
        fetchErrors.increment()
    }

    public func recordWebhook(accepted: Bool) {
        registry.makeCounter(descriptor: Self.name("webhooks", "total", "Git webhooks received: accepted (signature valid) or rejected."), labels: [("result", accepted ? "accepted" : "rejected")]).increment()
    }

    /// The commit the last successful pass applied: `capstan_last_applied_commit_info{commit="…"} 1`.
    public func recordAppliedCommit(_ commit: String) {
        labelled.withLock { state in
            if state.commit?.0 == commit { return }
            if let old = state.commit { registry.unregisterGauge(old.1) }
            let gauge = registry.makeGauge(descriptor: Self.name("last_applied_commit", "info", "The commit of the last pass that converged or progressed (value 1)."), labels: [("commit", commit)])
            gauge.set(to: 1.0)
            state.commit = (commit, gauge)
        }
    }

    /// The rollout state of every deployment: `capstan_rollout_phase{deployment,phase} 1` (phase
    /// `stable` without a rollout), the canary's weight and step.
    public func recordRollouts(_ rollouts: [(deployment: String, phase: String, canaryWeight: Double, step: Int)]) {
        labelled.withLock { state in
            let current = Set(rollouts.map(\.deployment))
            for (deployment, (_, gauge)) in state.phases where !current.contains(deployment) {
                registry.unregisterGauge(gauge)
                state.phases[deployment] = nil
                if let g = state.weights.removeValue(forKey: deployment) { registry.unregisterGauge(g) }
                if let g = state.steps.removeValue(forKey: deployment) { registry.unregisterGauge(g) }
            }
            for rollout in rollouts {
                if let (phase, gauge) = state.phases[rollout.deployment], phase != rollout.phase {
                    registry.unregisterGauge(gauge)
                    state.phases[rollout.deployment] = nil
                }
                if state.phases[rollout.deployment] == nil {
                    let gauge = registry.makeGauge(descriptor: Self.name("rollout_phase", "", "The rollout phase of each deployment (value 1): stable, progressing, paused, rolled_back…"), labels: [("deployment", rollout.deployment), ("phase", rollout.phase)])
                    gauge.set(to: 1.0)
                    state.phases[rollout.deployment] = (rollout.phase, gauge)
                }
                let weight = state.weights[rollout.deployment] ?? registry.makeGauge(
                    descriptor: Self.name("rollout_canary_weight", "percent", "The traffic share of the version being rolled out (0 without a rollout)."), labels: [("deployment", rollout.deployment)])
                weight.set(to: rollout.canaryWeight)
                state.weights[rollout.deployment] = weight
                let step = state.steps[rollout.deployment] ?? registry.makeGauge(
                    descriptor: Self.name("rollout_step", "", "The canary step of the rollout in progress (0 without a rollout)."), labels: [("deployment", rollout.deployment)])
                step.set(to: Double(rollout.step))
                state.steps[rollout.deployment] = step
            }
        }
    }

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "capstan", metricName: metric, unitName: unit, helpText: help)
    }

    /// The Prometheus text exposition.
    public func exposition() -> String {
        registry.emitToString()
    }
}
