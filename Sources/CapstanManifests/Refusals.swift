import CapstanCore

extension ManifestRefusal {
    /// The diagnostic for an entry that was not read, at `file:1:1` (`file` as displayed). It
    /// quotes the link's own text (repository content), never what is at its target.
    public func diagnostic(at file: String) -> Diagnostic {
        let location = SourceLocation(file: file, line: 1, column: 1)
        let exclude = "or exclude it in capstan.yaml (spec.exclude)"
        switch self {
        case .symlinkEscapes(let target):
            let shown = Self.quoted(target)
            let message: String
            if target.hasPrefix("/") {
                message = "symlink to the absolute path \(shown) leads outside the repository; it is not followed and nothing there is read"
            } else if let hidden = target.split(separator: "/").first(where: { $0.hasPrefix(".") && $0 != "." && $0 != ".." }) {
                message = "symlink to \(shown) leads into the hidden path '\(hidden)' (Capstan never reads hidden files: they may hold credentials, like .git/config); it is not followed"
            } else {
                message = "symlink to \(shown) climbs out of the repository; it is not followed and nothing there is read"
            }
            return .error(.symlinkEscapesRepository, message, at: location,
                          hint: "link to a file or folder inside the repository with a relative path, commit the file itself, \(exclude)")
        case .symlinkBroken(let target):
            let message = target.isEmpty
                ? "symlink whose target is not a path Capstan can read (empty, longer than \(LinkResolver.maxTargetBytes) bytes, or not UTF-8)"
                : "symlink to \(Self.quoted(target)) points at nothing in the repository"
            return .error(.brokenSymlink, message, at: location, hint: "fix or remove the link, \(exclude)")
        case .symlinkLoop:
            return .error(.brokenSymlink, "symlinks lead to each other in a loop (more than \(LinkResolver.maxHops) links followed)",
                          at: location, hint: "fix or remove the links, \(exclude)")
        case .symlinkInPath(let link):
            return .error(.symlinkInPath, "the path goes through the symlink '\(link)'; a path named in a manifest is not followed through symlinked folders (an input is identified by what is at its exact path)",
                          at: location, hint: "name the real path, without the symlinked folder")
        case .notRegularFile(let kind):
            return .error(.notARegularFile, "this is a \(kind), not a regular file; manifests are read only from regular files",
                          at: location, hint: "remove it, \(exclude)")
        case .unsafeName:
            return .error(.unsafeFileName, "the name is not UTF-8 or holds a control character (shown escaped); it is not read, as it cannot be named safely in output",
                          at: location, hint: "rename it (git mv) to printable UTF-8, or remove it")
        case .submodule:
            return .warning(.submoduleNotRead, "a Git submodule or nested repository: its files belong to another repository and are not read",
                            at: location, hint: "move its manifests into this repository, \(exclude)")
        }
    }

    /// A link's text in a message: at most 200 characters.
    static func quoted(_ text: String) -> String {
        let cut = text.unicodeScalars.count > 200 ? String(String.UnicodeScalarView(text.unicodeScalars.prefix(200))) + "…" : text
        return "'\(cut)'"
    }
}
