/// Resolves a path inside a repository the way the kernel would, one component at a time, but
/// never leaves the repository: a symlink whose target is absolute, climbs above the root, or
/// passes through a hidden name (`.git/config`, `.env`) is refused before anything is read
/// there; so is a dangling link or a loop. Both manifest sources use it (a folder asks `lstat` and
/// `readlink`, a commit asks its tree), so one repository resolves the same way in both.
public enum LinkResolver {
    /// Links followed for one path before it counts as a loop (Linux's MAXSYMLINKS).
    public static let maxHops = 40
    /// A link target longer than this is refused unread (PATH_MAX).
    public static let maxTargetBytes = 4096

    /// What is at a path, without following it.
    public enum Node: Equatable, Sendable {
        case file
        case directory
        /// A Git submodule, or a nested repository in a folder: not entered.
        case submodule
        /// A FIFO, socket or device (its kind, for messages).
        case special(String)
        /// A symlink and its target; nil when the target is not UTF-8 or too long.
        case symlink(target: String?)
        case missing
    }

    public enum Outcome: Equatable, Sendable {
        /// The real path (no symlink in it, `""` for the root) and what is there.
        case found(path: String, node: Node)
        /// Nothing there, and no symlink was followed on the way.
        case missing
        case refused(ManifestRefusal)
    }

    /// Resolves `path` (relative to the root, `/`-separated) by asking `lookup` about each
    /// prefix of the real path it builds. With `throughLinks` false, a symlink that is a folder
    /// of `path` itself (not its last name) is refused (`symlinkInPath`): a path named in a
    /// manifest identifies what is at that exact path, as the engine does.
    public static func resolve(_ path: String, throughLinks: Bool = true, lookup: (String) -> Node) -> Outcome {
        var pending = Array(path.split(separator: "/", omittingEmptySubsequences: true).reversed())
        // How many of `pending`'s bottom entries are still the path's own names.
        var own = pending.count
        var resolved: [Substring] = []
        var last = Node.directory
        var hops = 0
        // The text of the last link followed: what a refusal quotes.
        var through: String?
        while let part = pending.popLast() {
            let isOwn = pending.count < own
            if isOwn { own = pending.count }
            if part == "." { continue }
            if part == ".." {
                guard !resolved.isEmpty else { return .refused(.symlinkEscapes(target: through ?? path)) }
                resolved.removeLast()
                last = .directory
                continue
            }
            guard last == .directory else {
                // Something that is not a folder, with more path after it.
                return through.map { .refused(.symlinkBroken(target: $0)) } ?? .missing
            }
            let candidate = resolved + [part]
            let node = lookup(candidate.joined(separator: "/"))
            switch node {
            case .missing:
                return through.map { .refused(.symlinkBroken(target: $0)) } ?? .missing
            case .symlink(let target):
                if isOwn && own > 0 && !throughLinks {
                    return .refused(.symlinkInPath(link: candidate.joined(separator: "/")))
                }
                hops += 1
                if hops > maxHops { return .refused(.symlinkLoop) }
                guard let target, !target.isEmpty else { return .refused(.symlinkBroken(target: target ?? "")) }
                let parts = target.split(separator: "/", omittingEmptySubsequences: true)
                if target.hasPrefix("/") || parts.contains(where: { $0.hasPrefix(".") && $0 != "." && $0 != ".." }) {
                    return .refused(.symlinkEscapes(target: target))
                }
                through = target
                // The target is relative to the link's folder: `resolved` as it stands.
                pending.append(contentsOf: parts.reversed())
                last = .directory
            default:
                resolved = candidate
                last = node
            }
        }
        return .found(path: resolved.joined(separator: "/"), node: last)
    }
}

extension LinkResolver.Outcome {
    /// What `ManifestSource.kind(of:)` answers for this outcome.
    public var pathKind: PathKind {
        switch self {
        case .found(_, .file): return .file
        case .found(_, .directory): return .directory
        case .found(_, .missing): return .missing
        case .found: return .other
        case .missing: return .missing
        case .refused(let refusal): return .refused(refusal)
        }
    }
}
