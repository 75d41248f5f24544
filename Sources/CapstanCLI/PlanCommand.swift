import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanRunner
import CapstanStore
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

    func run() async throws {
        let plan: Plan
        do {
            let database = try PassPreparation.openDatabase(repository.stateDirectory)
            let now = StoreTime.systemMilliseconds()
            var pass = try await PassPreparation.prepare(repository, database: database, now: now)
            // A version `training` while another apply holds the lock is being trained, not
            // interrupted (unless that holder is gone: killed, a zombie).
            let lock = StateLock(database: database)
            let running = try? lock.current().first { lease in
                if lease.isExpired(atMilliseconds: now) { return false }
                if case .gone = lock.holderState(lease) { return false }
                return true
            }
            let options = PlanOptions(retryFailed: retryFailed,
                                      applyInProgress: running.map { "pid \($0.pid) on \($0.host), running '\($0.command)'" })
            var computed = try await PassPreparation.plan(&pass, now: now, options: options)
            // Deployments as they stand against the registry now; `apply` decides them again
            // after its registry changes.
            let manifests = pass.state.result.manifests
            let deployments = DeploymentPhase.desired(manifests, registry: pass.actual.registry)
            // Observed even without Deployments in Git when Capstan set endpoints before: those
            // left behind are orphans. A repository that never deployed does not reach out.
            let deployedBefore = !((try? ServingRecords(database: database).applied().isEmpty) ?? true)
            if !deployments.isEmpty || deployedBefore, let serving = PassPreparation.servingTarget(manifests.configSpec) {
                let context = EngineContext(stateDirectory: repository.stateDirectory, database: database, registry: pass.registry,
                                            runner: LocalStepRunner(), actor: "capstan plan")
                let observed = await Result(catching: { try await DeploymentPhase(context: context, serving: serving.target).observe(record: false) })
                await serving.close()
                let observation = try observed.get()
                computed.entries += DeploymentPlanner.plan(deployments, serving: observation, policy: pass.desired.policy, now: now)
            }
            plan = computed
            if let out { try SavedPlan.write(plan, to: out) }
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch {
            throw Self.fail(CommandFailure(message: "\(error)"))
        }
        let report = PlanReport(plan: plan, color: Terminal(noColor: noColor).color)
        switch format {
        case .text: Terminal.out(report.text())
        case .json: Terminal.out(try report.json())
        case .markdown: Terminal.out(report.markdown())
        }
        if let out, format == .text { Terminal.out("\nSaved the plan to \(out); run `capstan apply \(out)` to execute exactly this plan.\n") }
        if detailedExitcode && plan.hasChanges { throw ExitCode(2) }
    }
}
