import Testing
@testable import CapstanGit

/// Where a pull request is opened for a pushed branch, per forge.
struct ForgeLinkTests {
    @Test(arguments: [
        ("https://github.com/acme/models.git", "https://github.com/acme/models/compare/main...capstan/promote/churn/champion-v7?expand=1"),
        ("git@github.com:acme/models.git", "https://github.com/acme/models/compare/main...capstan/promote/churn/champion-v7?expand=1"),
        ("ssh://git@github.com/acme/models", "https://github.com/acme/models/compare/main...capstan/promote/churn/champion-v7?expand=1"),
        ("https://x-access-token:s3cr3t@github.com/acme/models.git",
         "https://github.com/acme/models/compare/main...capstan/promote/churn/champion-v7?expand=1"),
        ("https://gitlab.com/acme/ml/models.git",
         "https://gitlab.com/acme/ml/models/-/merge_requests/new?merge_request%5Bsource_branch%5D=capstan/promote/churn/champion-v7&merge_request%5Btarget_branch%5D=main"),
        ("ssh://git@gitlab.example.com:2222/acme/models.git",
         "https://gitlab.example.com/acme/models/-/merge_requests/new?merge_request%5Bsource_branch%5D=capstan/promote/churn/champion-v7&merge_request%5Btarget_branch%5D=main"),
        ("https://codeberg.org/acme/models", "https://codeberg.org/acme/models/compare/main...capstan/promote/churn/champion-v7"),
        ("https://gitea.internal/acme/models.git", "https://gitea.internal/acme/models/compare/main...capstan/promote/churn/champion-v7"),
        // A self-hosted forge keeps the scheme and port of an http(s) remote.
        ("http://gitea.local:3000/acme/models.git", "http://gitea.local:3000/acme/models/compare/main...capstan/promote/churn/champion-v7"),
    ])
    func pullRequestPages(_ remote: String, _ expected: String) {
        let link = ForgeLink.pullRequest(remote: remote, base: "main", branch: "capstan/promote/churn/champion-v7")
        #expect(link == expected)
        #expect(link?.contains("s3cr3t") != true, "credentials never reach the link")
    }

    @Test(arguments: ["/srv/git/models.git", "file:///srv/git/models.git", "https://git.example.com/acme/models.git",
                      "git://127.0.0.1:9418/models.git", "https://github.com/only-owner"])
    func otherRemotesHaveNoLink(_ remote: String) {
        #expect(ForgeLink.pullRequest(remote: remote, base: "main", branch: "capstan/promote/churn/champion-v7") == nil)
    }
}
