/// The registry as a plan's model entries will leave it, for planning the Deployments in the same
/// plan: `capstan apply` runs the model entries first and then plans the Deployments against the
/// registry as they left it, so `capstan plan` plans them against this projection, and both go
/// through `DesiredDeployment.resolve` and `DeploymentPlanner`.
///
/// It assumes every version the plan validates passes its gates (a Deployment's entry then
/// depends on the entry that moves its alias or validates its version), and that archives and
/// alias moves and deletions succeed. An alias that moves to the version a train of this plan
/// produces has no number yet: the alias keeps its holder here, and the move is recorded in
/// `pendingMoves` so that a Deployment following it can say what happens.
public struct RegistryProjection: Hashable, Sendable {
    public var registry: RegistrySnapshot
    /// Model → alias → the id of the plan entry that moves it to a version this plan trains.
    public var pendingMoves: [String: [String: String]]
    /// Model → alias → the id of the plan entry that moves it to a known version.
    public var moves: [String: [String: String]]
    /// Model → version → the id of the plan entry that validates it.
    public var validations: [String: [Int: String]]

    public init(registry: RegistrySnapshot, pendingMoves: [String: [String: String]] = [:], moves: [String: [String: String]] = [:],
                validations: [String: [Int: String]] = [:]) {
        self.registry = registry
        self.pendingMoves = pendingMoves
        self.moves = moves
        self.validations = validations
    }

    /// `registry` after the model entries of `plan`.
    public static func after(_ plan: Plan, from registry: RegistrySnapshot) -> RegistryProjection {
        var p = RegistryProjection(registry: registry)
        func update(_ model: String, _ number: Int, _ change: (inout ModelVersion) -> Void) {
            guard var versions = p.registry.versions[model], let i = versions.firstIndex(where: { $0.number == number }) else { return }
            change(&versions[i])
            p.registry.versions[model] = versions
        }
        for e in plan.entries where e.kind == .model {
            switch e.detail {
            case .validate(let v):
                if case .number(let n) = v.version {
                    p.validations[e.name, default: [:]][n] = e.id
                    update(e.name, n) { $0.status = .validated }
                }
            case .moveAlias(let m):
                switch m.to {
                case .number(let n):
                    p.registry.aliases[e.name, default: [:]][m.alias] = n
                    p.moves[e.name, default: [:]][m.alias] = e.id
                case .produced:
                    p.pendingMoves[e.name, default: [:]][m.alias] = e.id
                }
            case .deleteAlias(let d):
                p.registry.aliases[e.name]?[d.alias] = nil
                p.moves[e.name, default: [:]][d.alias] = e.id
            case .archiveVersions(let a):
                for n in a.versions { update(e.name, n) { $0.archivedAt = plan.createdAt } }
            default:
                break
            }
        }
        return p
    }
}
