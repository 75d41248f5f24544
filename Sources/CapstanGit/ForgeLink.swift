import Foundation

/// Where a pull request for a pushed branch is opened, for the forges Capstan knows by their
/// host: GitHub, GitLab, and Gitea (Forgejo, Codeberg). Self-hosted ones are known by a host name
/// that says which they are (`gitlab.example.com`, `gitea.internal`); for any other the caller
/// shows the branch name.
public enum ForgeLink {
    public enum Forge: String, Sendable, Codable {
        case github, gitlab, gitea
    }

    /// The forge, web base (`https://github.com/owner/repo`) of a remote URL: `https://host/owner/repo(.git)`,
    /// `ssh://git@host[:port]/owner/repo.git` or `git@host:owner/repo.git`. Credentials in the
    /// URL are dropped.
    public static func web(remote: String) -> (forge: Forge, base: String)? {
        var host: Substring
        var path: Substring
        // The web pages of an http(s) remote are at its scheme, host and port; those of an SSH
        // remote at https on the host.
        var web = "https"
        var port = ""
        if let schemeEnd = remote.range(of: "://") {
            let scheme = remote[..<schemeEnd.lowerBound].lowercased()
            guard ["https", "http", "ssh", "git"].contains(scheme) else { return nil }
            let rest = remote[schemeEnd.upperBound...]
            let authority = rest.prefix { $0 != "/" }
            path = rest.dropFirst(authority.count)
            host = authority.split(separator: "@").last ?? authority
            if let colon = host.lastIndex(of: ":"), !host.hasPrefix("[") {
                if scheme == "http" || scheme == "https" { port = String(host[colon...]) }
                host = host[..<colon]
            }
            if scheme == "http" { web = "http" }
            if port == ":443" && web == "https" || port == ":80" && web == "http" { port = "" }
        } else if let colon = remote.firstIndex(of: ":"), !remote.hasPrefix("/") {
            // scp-like: git@host:owner/repo.git
            let authority = remote[..<colon]
            host = authority.split(separator: "@").last ?? authority
            path = remote[remote.index(after: colon)...]
        } else {
            return nil
        }
        var trimmed = path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        if trimmed.hasSuffix(".git") { trimmed.removeLast(4) }
        let parts = trimmed.split(separator: "/")
        guard parts.count >= 2, !host.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else { return nil }
        let name = host.lowercased()
        let forge: Forge
        if name == "github.com" || name.hasPrefix("github.") { forge = .github }
        else if name.contains("gitlab") { forge = .gitlab }
        else if name.contains("gitea") || name.contains("forgejo") || name == "codeberg.org" { forge = .gitea }
        else { return nil }
        return (forge, "\(web)://\(name)\(port)/" + parts.joined(separator: "/"))
    }

    /// The page that opens a pull (merge) request of `branch` into `base`, or nil.
    public static func pullRequest(remote: String, base: String, branch: String) -> String? {
        guard let (forge, web) = web(remote: remote) else { return nil }
        let b = escape(base), h = escape(branch)
        switch forge {
        case .github: return "\(web)/compare/\(b)...\(h)?expand=1"
        case .gitea: return "\(web)/compare/\(b)...\(h)"
        case .gitlab: return "\(web)/-/merge_requests/new?merge_request%5Bsource_branch%5D=\(h)&merge_request%5Btarget_branch%5D=\(b)"
        }
    }

    /// A branch name in a URL: `/` kept (forges take it literally in compare paths), the rest
    /// percent-encoded.
    static func escape(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
