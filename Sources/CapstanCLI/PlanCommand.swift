import ArgumentParser
import CapstanCore
import CapstanEngine
import Foundation

struct PlanCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, markdown
    }

    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show what apply would change: trainings, validations, alias moves (like terraform plan).",
        discussion: """
            Compares the specs at the commit with what the registry in the state directory holds and \
            prints the plan, each change with its reason. Changes nothing in the registry (it may fetch \
            the repository and cache input hashes).
            Exit status: 0 (with --detailed-exitcode: 0 no changes, 2 changes), 1 error, 64 usage error.
            """)

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .long, help: "text, json (docs/plan.md) or markdown (a pull-request comment).")
    var format: Format = .text

    @Flag(name: .customLong("detailed-exitcode"), help: "Exit with 2 when the plan has changes, 0 when it has none.")
    var detailedExitcode = false

    @Option(name: .long, help: ArgumentHelp("Also save the plan here, for capstan apply FILE.", valueName: "file"))
    var out: String?

    @Flag(name: .customLong("retry-failed"), help: "Plan failed trainings again now, ignoring their backoff.")
    var retryFailed = false

    @Flag(name: .customLong("no-color"), help: "No colour (also NO_COLOR).")
    var noColor = false

    @Flag(name: .customLong("no-cache"), help: "Plan from scratch: neither read nor write the plan cache in the state directory.")
    var noCache = false

    func run() async throws {
        let plan: Plan
        do {
            let store = try Wiring.store(repository.stateDirectory)
            let reconciler = Reconciler(ports: try await Wiring.ports(repository, store: store, actor: "capstan plan"))
            let options = PlanOptions(retryFailed: retryFailed)
            // The plan cache is keyed by the embedded registry's generation; MLflow keeps none.
            if noCache || reconciler.ports.registryConfig != .embedded {
                plan = try await reconciler.plan(at: repository.ref, options: options, fetch: !repository.noFetch,
                                                 events: Wiring.printNote).plan
            } else {
                plan = try await reconciler.cachedPlan(at: repository.ref, cache: Wiring.planCache(repository.stateDirectory, store: store),
                                                       options: options, fetch: !repository.noFetch, events: Wiring.printNote).plan
            }
            if let out { try SavedPlan.write(plan, to: out) }
        } catch {
            throw Self.fail(Wiring.failure(error))
        }
        let renderer = PlanRenderer(plan: plan, color: Terminal(noColor: noColor).color)
        switch format {
        case .text: Terminal.out(renderer.text())
        case .json: Terminal.out(try renderer.json())
        case .markdown: Terminal.out(renderer.markdown())
        }
        if let out, format == .text { Terminal.out("\nSaved the plan to \(out); run `capstan apply \(out)` to execute exactly this plan.\n") }
        if detailedExitcode && plan.hasChanges { throw ExitCode(2) }
    }
}
