/// Evaluates a version's metric gates (pure): thresholds, and no regression against the version
/// that holds an alias. The validation command, the one gate that runs something, is run by the
/// engine and its result appended to these.
public enum Gates {
    /// Whether higher values of `metric` are better for the regression gate: a metric with only a
    /// `max` bound (a latency, an error rate) is better lower; every other metric is better higher.
    public static func higherIsBetter(_ metric: String, in spec: ValidateSpec) -> Bool {
        guard let gate = spec.metrics.first(where: { $0.metric == metric })?.gate else { return true }
        return !(gate.max != nil && gate.min == nil)
    }

    /// The threshold and regression gates of `spec` for a candidate with `metrics`.
    /// - Parameters:
    ///   - holder: the version that holds `spec.noRegressionAgainst` now (nil: nobody does).
    public static func evaluate(_ spec: ValidateSpec?, candidate: Int, metrics: [String: Double],
                                holder: ModelVersion?) -> [GateResult] {
        guard let spec else { return [] }
        var results: [GateResult] = []
        for g in spec.metrics {
            let value = metrics[g.metric]
            if let lo = g.gate.min {
                let name = "\(g.metric) >= \(Gates.format(lo))"
                if let value {
                    results.append(GateResult(gate: name, passed: value >= lo, detail: "\(g.metric) = \(format(value))"))
                } else {
                    results.append(GateResult(gate: name, passed: false, detail: "the metrics file has no \(g.metric)"))
                }
            }
            if let hi = g.gate.max {
                let name = "\(g.metric) <= \(Gates.format(hi))"
                if let value {
                    results.append(GateResult(gate: name, passed: value <= hi, detail: "\(g.metric) = \(format(value))"))
                } else {
                    results.append(GateResult(gate: name, passed: false, detail: "the metrics file has no \(g.metric)"))
                }
            }
        }
        if let alias = spec.noRegressionAgainst {
            results.append(regression(spec, alias: alias, candidate: candidate, metrics: metrics, holder: holder))
        }
        return results
    }

    static func regression(_ spec: ValidateSpec, alias: String, candidate: Int, metrics: [String: Double],
                           holder: ModelVersion?) -> GateResult {
        let name = "no regression against \(alias)"
        guard let holder else {
            return GateResult(gate: name, passed: true, detail: "no version holds \(alias) yet")
        }
        if holder.number == candidate {
            return GateResult(gate: name, passed: true, detail: "v\(candidate) holds \(alias) itself")
        }
        // The metrics compared: those with gates and those with a tolerance, that both have.
        var names = Set(spec.metrics.map(\.metric)).union(spec.tolerance.keys)
        if names.isEmpty { names = Set(metrics.keys) }
        var worse: [String] = []
        var compared: [String] = []
        for metric in names.sorted() {
            guard let new = metrics[metric], let old = holder.metrics[metric] else { continue }
            let tolerance = spec.tolerance[metric] ?? 0
            let higher = higherIsBetter(metric, in: spec)
            let regressed = higher ? new < old - tolerance : new > old + tolerance
            let line = "\(metric) \(format(new)) vs \(format(old))" + (tolerance > 0 ? " (tolerance \(format(tolerance)))" : "")
            compared.append(line)
            if regressed { worse.append(line) }
        }
        if compared.isEmpty {
            return GateResult(gate: name, passed: true, detail: "v\(holder.number) holds \(alias); no metric to compare")
        }
        if worse.isEmpty {
            return GateResult(gate: name, passed: true, detail: "against v\(holder.number): " + compared.joined(separator: ", "))
        }
        return GateResult(gate: name, passed: false, detail: "worse than v\(holder.number): " + worse.joined(separator: ", "))
    }

    /// A metric value as people read it: up to 6 significant decimals, no trailing zeros.
    public static func format(_ value: Double) -> String {
        guard value.isFinite else { return String(value) }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        var text = String(value)
        if text.contains("e") { return text }
        if let dot = text.firstIndex(of: "."), text.distance(from: dot, to: text.endIndex) > 7 {
            let scale = 1_000_000.0
            text = String((value * scale).rounded() / scale)
        }
        return text
    }
}
