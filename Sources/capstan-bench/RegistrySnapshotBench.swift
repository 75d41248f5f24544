import CapstanCore
import CapstanStore
import Foundation

/// What the planner pays to read the registry: `models` models with one validated version each,
/// written through the registry as a converged `apply` leaves them (params, metrics and a gate
/// result that differ from model to model, the training description, a champion alias); then the
/// snapshot read in full, the generation alone, and a snapshot refreshed when nothing changed and
/// after one or 100 versions changed.
///
///     capstan-bench registry-snapshot --state-dir DIR [--models N]
func registrySnapshotBenchmark(stateDirectory: String, models: Int) async throws {
    let database = try StateDatabase(stateDirectory: stateDirectory)
    let registry = EmbeddedRegistry(database: database)
    let fill = ContinuousClock.now
    for i in 1...models {
        let name = "m\(i)"
        let params: [String: ParamValue] = ["learning_rate": .double(0.05), "epochs": .int(20), "seed": .int(Int64(i))]
        let training = TrainingDescription(command: ["python3", "models/\(name)/train.py"], workdir: ".", params: params, env: [:],
                                           secretEnv: [], inputs: [InputIdentity(input: "data/\(name).csv", identity: "sha256:\(i)")])
        let accuracy = 0.9 + Double(i % 997) / 10_000
        try await registry.upsertModel(name: name, description: nil, labels: [:])
        let v = try await registry.createVersion(NewVersion(model: name, fingerprint: "fp-\(i)", commit: "c1", params: params,
                                                            training: training))
        try await registry.updateVersion(model: name, number: v.number, VersionUpdate(
            status: .validated, metrics: ["accuracy": accuracy, "loss": 1 - accuracy],
            gateResults: [GateResult(gate: "accuracy >= 0.5", passed: true, detail: "accuracy = \(accuracy)")]))
        try await registry.setAlias("champion", of: name, to: v.number, commit: "c1", reason: "bench")
    }
    print(String(format: "embedded registry, %d models with a validated version each (written in %.1f s), SQLite WAL at %@",
                 models, seconds(ContinuousClock.now - fill), database.path))

    var full: [Double] = []
    for _ in 0..<10 {
        let start = ContinuousClock.now
        let snapshot = try await registry.snapshot()
        full.append(milliseconds(ContinuousClock.now - start))
        precondition(snapshot.versions.count == models)
    }
    print(String(format: "full snapshot (10 reads)                          median %8.2f ms   min %8.2f ms", median(full), full.min()!))

    var generation: [Double] = []
    for _ in 0..<200 {
        let start = ContinuousClock.now
        _ = try await registry.generation()
        generation.append(milliseconds(ContinuousClock.now - start))
    }
    print(String(format: "generation alone (200 reads)                      median %8.3f ms", median(generation)))

    var current = try await registry.snapshot(refreshing: nil)
    var unchanged: [Double] = []
    for _ in 0..<200 {
        let start = ContinuousClock.now
        let again = try await registry.snapshot(refreshing: current)
        unchanged.append(milliseconds(ContinuousClock.now - start))
        precondition(again.generation == current.generation)
    }
    print(String(format: "refresh, nothing changed (200 reads)              median %8.3f ms", median(unchanged)))

    for changes in [1, 100] {
        var refresh: [Double] = []
        for round in 0..<20 {
            var last = ""
            for c in 0..<changes {
                last = "m\((round * changes + c) % models + 1)"
                try await registry.updateVersion(model: last, number: 1, VersionUpdate(metrics: ["accuracy": Double(round) / 100]))
            }
            let start = ContinuousClock.now
            current = try await registry.snapshot(refreshing: current)
            refresh.append(milliseconds(ContinuousClock.now - start))
            precondition(current.snapshot.versions[last]?.first?.metrics["accuracy"] == Double(round) / 100)
        }
        print(String(format: "refresh, %3d version(s) changed (20 reads)        median %8.3f ms", changes, median(refresh)))
    }
}

private func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}

private func seconds(_ d: Duration) -> Double { milliseconds(d) / 1000 }

private func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
